"""Prometheus metrics of an attachment, read from its maps at each scrape.

A custom prometheus_client Collector: nothing is counted per event in
userspace; each scrape reads the datapath's own counters (one batch read of
the rule counters, however many rules) and the authenticator's. Names and
labels are documented in docs/observability.md. The kernel counts rules'
verdicts without their direction, so the verdict metric has no direction
label.

A rule's series appear with the first flow it decides (as Hubble's flow
metrics appear with their first flow), the default's from the start: the
scrape costs what the rules in use cost, not what the policy holds (formatting
10,000 idle series takes prometheus_client about 70 ms; bench/metrics_scrape.py).
"""

from __future__ import annotations

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

from ebmesh.errors import EbmeshError


def rule_verdict(action: str, default_allow: bool | None = None) -> str:
    """What a rule's decisions are: `allow`, `allow mtls` -> allow; `deny`, `deny audit` -> deny."""
    if default_allow is not None:
        return "allow" if default_allow else "deny"
    return "allow" if action.startswith("allow") else "deny"


class AttachmentCollector:
    """Every metric of one attachment, from its maps as they are now."""

    def __init__(self, attachment):
        self._attachment = attachment

    def describe(self):
        return []  # names are known only when collected: no check at registration

    def collect(self):
        attachment = self._attachment
        if not attachment.attached:
            return
        image = attachment._image  # the running policy (replace() changes it)
        shape, naming = image.shape, image.naming
        actions = {r.rule_id: r.action for r in shape.rules}

        info = GaugeMetricFamily(
            "ebmesh_policy_info",
            "The policy attached: its mesh, attach cgroup and digest (value 1)",
            labels=["mesh", "cgroup", "digest", "rules"],
        )
        info.add_metric(
            [image.mesh, str(attachment.cgroup), image.digest[:16], str(image.rule_count)], 1
        )
        yield info

        verdicts = CounterMetricFamily(
            "ebmesh_verdicts",
            "Connections and UDP flows decided, by the rule that decided them (rule "
            '"default": no rule matched) and the verdict it gives',
            labels=["rule", "line", "verdict"],
        )
        audits = CounterMetricFamily(
            "ebmesh_audit_matches",
            "Flows an audit rule matched: reported as denied, let through",
            labels=["rule", "line"],
        )
        default_verdict = rule_verdict("", shape.default_allow)
        for rule_id, (decided, audited) in enumerate(attachment.counter_totals()):
            if rule_id == 0:
                verdicts.add_metric(
                    ["default", str(shape.default_line or ""), default_verdict], decided
                )
                continue
            if not (decided or audited):
                continue  # a rule's series appears with its first flow (see the module)
            where = naming.rule(rule_id)
            line = str(where.line) if where else ""
            action = actions.get(rule_id, "")
            if decided:
                verdicts.add_metric([str(rule_id), line, rule_verdict(action)], decided)
            if audited:
                audits.add_metric([str(rule_id), line], audited)
        yield verdicts
        yield audits

        backends = CounterMetricFamily(
            "ebmesh_backend_connections",
            "Connections (TCP) and sockets (UDP) sent to each backend of a service",
            labels=["service", "backend"],
        )
        for service, counts in attachment.backend_counters().items():
            for backend, connections in counts.items():
                backends.add_metric([service, backend], connections)
        yield backends

        yield CounterMetricFamily(
            "ebmesh_events_lost",
            "Verdict events the ring buffer had no room for (its reader fell behind)",
            value=attachment.lost_events(),
        )

        if shape.accelerate:
            shortcut = CounterMetricFamily(
                "ebmesh_shortcut_messages",
                "`accelerate on`: messages of accelerated sockets, by the path they took "
                '("shortcut": socket to socket; "stack": the peer was not accelerated)',
                labels=["path"],
            )
            for path, count in attachment.shortcut_counters().items():
                shortcut.add_metric([path], count)
            yield shortcut

        if shape.has_mtls:
            yield GaugeMetricFamily(
                "ebmesh_mtls_authenticated_pairs",
                "Pairs of identities authenticated now (their grant not expired)",
                value=len(attachment.authenticated()),
            )
            handshakes = CounterMetricFamily(
                "ebmesh_mtls_handshakes",
                'mTLS handshakes, by side ("client": this host asked; "listener": a remote '
                "host asked) and outcome",
                labels=["side", "outcome"],
            )
            done = attachment.handshakes()
            for side in ("client", "listener"):
                for outcome in ("authenticated", "failed"):
                    handshakes.add_metric([side, outcome], done.get((side, outcome), 0))
            yield handshakes


class MetricsServer:
    """The HTTP server of one attachment's metrics (prometheus_client's, in a thread)."""

    def __init__(self, attachment, address: str, port: int):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AttachmentCollector(attachment))
        try:
            self._server, self._thread = start_http_server(
                port, addr=address, registry=self.registry
            )
        except OSError as error:
            raise EbmeshError(
                f"cannot serve metrics on {address}:{port}: {error.strerror or error}"
            ) from None
        host, bound = self._server.server_address[:2]
        self.address = (host, bound)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve(attachment, address: str, port: int) -> MetricsServer:
    return MetricsServer(attachment, address, port)


def parse_address(text: str) -> tuple[str, int]:
    """`ADDR:PORT`, `[V6]:PORT` or `:PORT` (every address) for --metrics."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--metrics wants ADDR:PORT (e.g. 127.0.0.1:9090), not {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)
