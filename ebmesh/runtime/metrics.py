"""Prometheus metrics of an attachment, read from its maps at each scrape.

A custom prometheus_client Collector: nothing is counted per event in
userspace; each scrape reads the datapath's own counters (one batch read of
the rule counters, however many rules) and the authenticator's. Names and
labels are documented in docs/observability.md. The kernel counts rules'
verdicts without their direction, so the verdict metric has no direction
label.

A rule's series appear with the first flow it decides (as Hubble's flow
metrics appear with their first flow), the default's from the start: the
scrape costs what the rules in use cost, not what the policy holds.

The HTTP server writes the per-rule families itself, from label text made once
per policy: prometheus_client formats each sample anew (about 5 µs), so 10,000
rules in use took it 60-80 ms, past the 50 ms a scrape may take
(bench/metrics_scrape.py). Everything else is prometheus_client's, and so is
the whole of AttachmentCollector, for a registry of the caller's own.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from ebmesh.errors import EbmeshError


def rule_verdict(action: str, default_allow: bool | None = None) -> str:
    """What a rule's decisions are: `allow`, `allow mtls` -> allow; `deny`, `deny audit` -> deny."""
    if default_allow is not None:
        return "allow" if default_allow else "deny"
    return "allow" if action.startswith("allow") else "deny"


VERDICTS_HELP = (
    "Connections and UDP flows decided, by the rule that decided them (rule "
    '"default": no rule matched) and the verdict it gives'
)
AUDITS_HELP = "Flows an audit rule matched: reported as denied, let through"


class AttachmentCollector:
    """Every metric of one attachment, from its maps as they are now; without the
    per-rule families when `rules` is False (the server writes those itself)."""

    def __init__(self, attachment, rules: bool = True):
        self._attachment = attachment
        self._rules = rules

    def describe(self):
        return []  # names are known only when collected: no check at registration

    def collect(self):
        attachment = self._attachment
        if not attachment.attached:
            return
        image = attachment.image
        shape = image.shape

        info = GaugeMetricFamily(
            "ebmesh_policy_info",
            "The policy attached: its mesh, attach cgroup and digest (value 1)",
            labels=["mesh", "cgroup", "digest", "rules"],
        )
        info.add_metric(
            [image.mesh, str(attachment.cgroup), image.digest[:16], str(image.rule_count)], 1
        )
        yield info

        if self._rules:
            verdicts = CounterMetricFamily(
                "ebmesh_verdicts", VERDICTS_HELP, labels=["rule", "line", "verdict"]
            )
            audits = CounterMetricFamily(
                "ebmesh_audit_matches", AUDITS_HELP, labels=["rule", "line"]
            )
            for labels, decided, audited in _rule_samples(attachment):
                if decided is not None:
                    verdicts.add_metric(list(labels), decided)
                if audited:
                    audits.add_metric(list(labels[:2]), audited)
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


def _actions(image) -> dict[int, str]:
    return {r.rule_id: r.action for r in image.shape.rules}


def _rule_labels(image, actions: dict[int, str], rule_id: int) -> tuple[str, str, str]:
    """(rule, line, verdict) of a rule id of the image; rule 0 is the default."""
    shape = image.shape
    if rule_id == 0:
        return "default", str(shape.default_line or ""), rule_verdict("", shape.default_allow)
    where = image.naming.rule(rule_id)
    return str(rule_id), str(where.line) if where else "", rule_verdict(actions.get(rule_id, ""))


def _rule_counts(attachment):
    """(rule id, decided, audited) of the default always, and of each rule that has
    counted something (see the module)."""
    for rule_id, (decided, audited) in enumerate(attachment.counter_totals()):
        if rule_id == 0 or decided or audited:
            yield rule_id, decided, audited


def _rule_samples(attachment):
    image = attachment.image
    actions = _actions(image)
    for rule_id, decided, audited in _rule_counts(attachment):
        labels = _rule_labels(image, actions, rule_id)
        yield labels, decided if (decided or rule_id == 0) else None, audited


class RuleSeriesText:
    """The per-rule families in the text exposition format, each rule's label text made
    once per policy (keyed by its digest): a scrape formats only the numbers."""

    def __init__(self):
        self._digest = None
        self._actions: dict[int, str] = {}
        self._prefixes: dict[int, tuple[str, str]] = {}

    def _prefix(self, image, rule_id: int) -> tuple[str, str]:
        known = self._prefixes.get(rule_id)
        if known is None:
            # digits, "default", allow/deny: nothing to escape
            rule, line, verdict = _rule_labels(image, self._actions, rule_id)
            known = (
                f'ebmesh_verdicts_total{{line="{line}",rule="{rule}",verdict="{verdict}"}} ',
                f'ebmesh_audit_matches_total{{line="{line}",rule="{rule}"}} ',
            )
            self._prefixes[rule_id] = known
        return known

    def render(self, attachment) -> str:
        image = attachment.image
        if image.digest != self._digest:
            self._digest, self._actions, self._prefixes = image.digest, _actions(image), {}
        verdicts = [
            "# HELP ebmesh_verdicts_total " + VERDICTS_HELP,
            "# TYPE ebmesh_verdicts_total counter",
        ]
        audits = [
            "# HELP ebmesh_audit_matches_total " + AUDITS_HELP,
            "# TYPE ebmesh_audit_matches_total counter",
        ]
        for rule_id, decided, audited in _rule_counts(attachment):
            verdict_prefix, audit_prefix = self._prefix(image, rule_id)
            # counts are whole numbers, which the text format takes as they are
            if decided or rule_id == 0:
                verdicts.append(verdict_prefix + str(decided))
            if audited:
                audits.append(audit_prefix + str(audited))
        return "\n".join(verdicts + audits) + "\n"


class MetricsServer:
    """The HTTP server of one attachment's metrics, in a thread: GET /metrics."""

    def __init__(self, attachment, address: str, port: int):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AttachmentCollector(attachment, rules=False))
        rules = RuleSeriesText()
        rules.render(attachment)  # the label text of the rules in use, before the first scrape
        registry, lock = self.registry, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                if self.path.split("?")[0] not in ("/", "/metrics"):
                    self.send_error(404)
                    return
                if not attachment.attached:
                    body = b""
                else:
                    with lock:  # one scrape at a time reads the maps
                        body = generate_latest(registry) + rules.render(attachment).encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *arguments):
                pass  # a scrape every few seconds is not news

        try:
            server = ThreadingHTTPServer((address, port), Handler)
        except OSError as error:
            raise EbmeshError(
                f"cannot serve metrics on {address}:{port}: {error.strerror or error}"
            ) from None
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="ebmesh-metrics", daemon=True
        )
        self._thread.start()
        host, bound = server.server_address[:2]
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
