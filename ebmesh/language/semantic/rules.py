"""Rules: known names, sound ports, `mtls`/`audit` where they mean something, enforceable."""

from __future__ import annotations

from dataclasses import dataclass, field

from ebmesh.language.ast import PortRange, Rule, Service, Workload
from ebmesh.language.semantic.addresses import check_address_peer
from ebmesh.language.semantic.names import Declarations
from ebmesh.language.semantic.nesting import PrefixNesting
from ebmesh.language.semantic.report import Report
from ebmesh.language.suggest import did_you_mean, quoted_list

# Finding a did-you-mean among thousands of names is slow; past this many
# distinct unknown names, they are reported without one.
MAX_SUGGESTED_NAMES = 100


@dataclass
class Side:
    """What one side of a rule resolves to."""

    local: bool = (
        False  # may be a local workload or process: `any`, an address, a workload with a cgroup
    )
    unresolved: bool = False  # an unknown name, or a service as a source (already reported)
    workloads: list[Workload] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)


class RuleChecker:
    def __init__(self, declared: Declarations, report: Report):
        self.workloads = declared.workloads
        self.services = declared.services
        self.declared = declared
        self.report = report
        self.nesting = PrefixNesting()
        self._suggestions: dict[str, str | None] = {}

    def check(self, rule: Rule) -> None:
        sources = self._side(rule, rule.sources, "source")
        destinations = self._side(rule, rule.destinations, "destination")
        if rule.ports is not None:
            self._check_ports(rule.ports)
            self._check_service_ports(rule)
        if rule.mtls:
            self._check_mtls(rule)
        if rule.audit and rule.action != "deny":
            self.report.error(
                rule.audit_span or rule.span,
                "'audit' only applies to deny rules",
                hint="an audited rule is a trial deny: reported, never enforced",
            )
        if not (
            sources.local or destinations.local or sources.unresolved or destinations.unresolved
        ):
            self._report_unenforceable(rule, sources, destinations)

    # ---- sides ------------------------------------------------------------

    def _side(self, rule: Rule, peers: list, role: str) -> Side:
        side = Side()
        if not peers:
            self.report.error(rule.span, f"the rule has no {role}")
            side.unresolved = True
            return side
        for peer in peers:
            kind = peer.kind
            if kind == "name":
                name = peer.name.value
                workload = self.workloads.get(name)
                if workload is not None:
                    side.workloads.append(workload)
                    if workload.cgroups:
                        side.local = True
                elif name in self.services:
                    if role == "source":
                        self.report.error(
                            peer.name.span,
                            f"'{name}' is a service; a service can only be a destination",
                            hint="to match traffic from its backends, name their workloads or addresses",
                        )
                        side.unresolved = True
                    else:
                        side.services.append(self.services[name])
                else:
                    self.report.error(
                        peer.name.span, f"unknown name '{name}'", hint=self._suggest(name)
                    )
                    side.unresolved = True
            elif kind == "any":
                side.local = True
            else:
                check_address_peer(peer, self.report)
                self.nesting.add(role, peer, rule)
                side.local = True
        return side

    def _suggest(self, name: str) -> str | None:
        if name not in self._suggestions:
            if len(self._suggestions) >= MAX_SUGGESTED_NAMES:
                return None
            self._suggestions[name] = did_you_mean(name, [*self.declared.all_names(), "any"]) or (
                f"declare it: workload {name} {{ ... }}"
            )
        return self._suggestions[name]

    # ---- ports ------------------------------------------------------------

    def _check_ports(self, ports: list[PortRange]) -> None:
        for port_range in ports:
            low, high = port_range.low, port_range.high
            if 0 <= low <= high <= 65535:
                continue
            outside = [p for p in dict.fromkeys((low, high)) if not 0 <= p <= 65535]
            for port in outside:
                self.report.error(port_range.span, f"port {port} is outside 0-65535")
            if low > high:
                self.report.error(
                    port_range.span,
                    f"port range {low}-{high} runs backwards",
                    hint=f"did you mean {high}-{low}?",
                )

    def _check_service_ports(self, rule: Rule) -> None:
        """A port clause must let through the port traffic to a service is judged at."""
        for peer in rule.destinations:
            if peer.kind != "name" or peer.name.value not in self.services:
                continue
            service = self.services[peer.name.value]
            if any(_covers(r, service.port, service.protocol) for r in rule.ports or ()):
                continue
            self.report.error(
                peer.name.span,
                f"the rule's ports do not include {service.port}/{service.protocol}, the port of service "
                f"'{service.name.value}': it can never match traffic to the service",
                hint=(
                    f"traffic to a service is judged at its address, {_endpoint(service)}, before a backend "
                    f"is chosen: write 'port {service.port}/{service.protocol}' or drop the port clause"
                ),
            )

    # ---- mtls ---------------------------------------------------------------

    def _check_mtls(self, rule: Rule) -> None:
        if rule.action != "allow":
            self.report.error(
                rule.mtls_span or rule.span,
                "'mtls' only applies to allow rules",
                hint="a deny rule denies whether or not the peers are authenticated: remove 'mtls'",
            )
            return
        for peer in (*rule.sources, *rule.destinations):
            if peer.kind == "any":
                self.report.error(
                    peer.span, "'mtls' needs a named workload on both sides: 'any' has no identity"
                )
            elif peer.kind == "address":
                self.report.error(
                    peer.span,
                    f"'mtls' needs a named workload on both sides: {peer.cidr.text} has no identity",
                )
            elif peer.name.value in self.services:
                self.report.error(
                    peer.name.span,
                    f"'mtls' needs a named workload on both sides: '{peer.name.value}' is a service",
                    hint="name the workloads behind it instead",
                )
            else:
                workload = self.workloads.get(peer.name.value)
                if workload is not None and not workload.cgroups:
                    self.report.error(
                        peer.name.span,
                        f"'mtls' with workload '{workload.name.value}', which has no cgroup: "
                        "no SVID can be issued to it",
                        hint="give it a cgroup, or remove 'mtls'",
                    )

    # ---- enforceability ------------------------------------------------------

    def _report_unenforceable(self, rule: Rule, sources: Side, destinations: Side) -> None:
        remote = list(
            dict.fromkeys(w.name.value for w in (*sources.workloads, *destinations.workloads))
        )
        reason = f"{quoted_list(remote, 'and')} {'has' if len(remote) == 1 else 'have'} no cgroup"
        if destinations.services:
            names = quoted_list((s.name.value for s in destinations.services), "and")
            reason += f", and traffic to {names} is only redirected at a local sender's socket"
        self.report.error(
            rule.span,
            f"this rule can never be enforced: {reason}, so none of its traffic passes a local socket",
            hint="give one of them a cgroup" if len(remote) > 1 else f"give '{remote[0]}' a cgroup",
        )


def check_rules(rules: list[Rule], declared: Declarations, report: Report) -> None:
    checker = RuleChecker(declared, report)
    for rule in rules:
        checker.check(rule)
    checker.nesting.check(report)


def _covers(port_range: PortRange, port: int, protocol: str) -> bool:
    return port_range.low <= port <= port_range.high and port_range.protocol in (None, protocol)


def _endpoint(service: Service) -> str:
    address = f"[{service.vip}]" if service.vip.version == 6 else str(service.vip)
    return f"{address}:{service.port}/{service.protocol}"
