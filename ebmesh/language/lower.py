"""A checked syntax tree becomes the IR: names resolved to identities.

This is the last phase that knows the language; everything after it sees
numbers, networks and port ranges. It assumes `checks.check` passed.
"""

from __future__ import annotations

from ebmesh.ir import model
from ebmesh.language import ast

_PROTOCOLS = {"tcp": model.Protocol.TCP, "udp": model.Protocol.UDP}
_BOTH = frozenset(model.Protocol)


class _Lowering:
    def __init__(self, tree: ast.PolicyFile):
        self.tree = tree
        self.lines = tree.text.split("\n")  # lines as the parser counts them: on \n only
        self.identities: dict[str, int] = {}

    def origin(self, span: ast.Span | None) -> model.SourceRef | None:
        if span is None:
            return None
        text = self.lines[span.line - 1] if 0 < span.line <= len(self.lines) else ""
        return model.SourceRef(self.tree.filename, span.line, span.column, text.strip())

    def policy(self) -> model.Policy:
        mesh = self.tree.mesh
        settings = {s.key: s for s in mesh.settings}

        def setting(key: str, default: str) -> str:
            return settings[key].value if key in settings else default

        trust_domain = setting("trust_domain", mesh.name.value)
        for number, item in enumerate([*mesh.workloads, *mesh.services], start=1):
            self.identities[item.name.value] = number

        workloads = tuple(self.workload(w, trust_domain) for w in mesh.workloads)
        services = tuple(self.service(s) for s in mesh.services)
        rules = tuple(self.rule(r, number) for number, r in enumerate(mesh.rules, start=1))
        return model.Policy(
            name=mesh.name.value,
            trust_domain=trust_domain,
            default=model.Verdict.ALLOW
            if setting("default", "deny") == "allow"
            else model.Verdict.DENY,
            mode=model.Mode(setting("mode", "enforce")),
            accelerate=setting("accelerate", "off") == "on",
            workloads=workloads,
            services=services,
            rules=rules,
            source_name=self.tree.filename,
            settings_origin={key: self.origin(s.span) for key, s in settings.items() if s.span},
        )

    def workload(self, workload: ast.Workload, trust_domain: str) -> model.Workload:
        name = workload.name.value
        identity = (
            workload.identities[0].value
            if workload.identities
            else f"spiffe://{trust_domain}/{name}"
        )
        return model.Workload(
            identity=self.identities[name],
            name=name,
            cgroup=workload.cgroups[0].value.strip("/") if workload.cgroups else None,
            prefixes=tuple(cidr.network for cidr in workload.addresses),
            spiffe_id=identity,
            mtls_required=workload.mtls_required,
            source=self.origin(workload.span),
        )

    def service(self, service: ast.Service) -> model.Service:
        return model.Service(
            identity=self.identities[service.name.value],
            name=service.name.value,
            vip=service.vip,
            port=service.port,
            protocol=_PROTOCOLS[service.protocol],
            backends=tuple(
                model.Backend(b.address, b.port, b.weight, self.origin(b.span))
                for b in service.backends
            ),
            source=self.origin(service.span),
        )

    def selector(self, peers: list[ast.Peer]) -> model.Selector:
        any_peer = False
        identities: set[int] = set()
        addresses: list[model.AddressMatch] = []
        for peer in peers:
            if isinstance(peer, ast.AnyPeer):
                any_peer = True
            elif isinstance(peer, ast.NamedPeer):
                identities.add(self.identities[peer.name.value])
            else:
                addresses.append(
                    model.AddressMatch(peer.cidr.network, tuple(e.network for e in peer.excepts))
                )
        return model.Selector(any_peer, frozenset(identities), tuple(addresses))

    def rule(self, rule: ast.Rule, number: int) -> model.Rule:
        if rule.ports is None:
            ports = model.ALL_PORTS
        else:
            ports = tuple(
                model.PortMatch(
                    p.low, p.high, frozenset({_PROTOCOLS[p.protocol]}) if p.protocol else _BOTH
                )
                for p in rule.ports
            )
        return model.Rule(
            id=number,
            action=model.Action(rule.action),
            source=self.selector(rule.sources),
            destination=self.selector(rule.destinations),
            ports=ports,
            mtls=rule.mtls,
            audit=rule.audit,
            origin=self.origin(rule.span),
        )


def lower_to_ir(tree: ast.PolicyFile) -> model.Policy:
    """The IR of a checked policy."""
    return _Lowering(tree).policy()
