"""The contract's verdict rules, written as plainly as possible.

This evaluator scans every rule for every flow: slow, obviously right, and
independent of the tables the datapath uses. Tests hold the kernel's answers
(`CompiledPolicy.evaluate` and real connects) against it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ebmesh.ir.model import (
    NO_IDENTITY,
    Action,
    IPAddress,
    Mode,
    Policy,
    Protocol,
    Rule,
    Selector,
    Verdict,
)


@dataclass(frozen=True)
class Flow:
    """A flow as the datapath sees it at one end.

    An identity of None is to be found from the address ("an address matches
    the most specific workload it belongs to"); NO_IDENTITY is a local process
    of no workload, or a service-less, workload-less peer.
    """

    dst_address: IPAddress
    port: int
    protocol: Protocol
    src_identity: int | None = None
    src_address: IPAddress | None = None
    dst_identity: int | None = None


@dataclass(frozen=True)
class Decision:
    verdict: Verdict  # what the kernel does
    rule: int  # deciding rule id; 0: the default decided
    audit_rule: int = 0  # earliest matching audit rule, 0 if none
    by_default: bool = False
    would_deny: bool = False  # mode audit let a denial through
    needs_mtls: bool = False  # mTLS was required (verdict says whether it held)
    src_identity: int = NO_IDENTITY
    dst_identity: int = NO_IDENTITY


def workload_by_address(policy: Policy, address: IPAddress | None) -> int:
    """The identity of the most specific workload whose addresses contain `address`."""
    if address is None:
        return NO_IDENTITY
    best, best_length = NO_IDENTITY, -1
    for workload in policy.workloads:
        for network in workload.prefixes:
            if (
                network.version == address.version
                and address in network
                and network.prefixlen > best_length
            ):
                best, best_length = workload.identity, network.prefixlen
    return best


def selector_matches(selector: Selector, identity: int, address: IPAddress | None) -> bool:
    if selector.any:
        return True
    if identity != NO_IDENTITY and identity in selector.identities:
        return True
    return address is not None and any(match.contains(address) for match in selector.addresses)


def rule_matches(rule: Rule, src_identity: int, flow: Flow, dst_identity: int) -> bool:
    return (
        selector_matches(rule.source, src_identity, flow.src_address)
        and selector_matches(rule.destination, dst_identity, flow.dst_address)
        and any(port.contains(flow.port, flow.protocol) for port in rule.ports)
    )


def decide(
    policy: Policy, flow: Flow, authenticated: frozenset[tuple[int, int]] = frozenset()
) -> Decision:
    src = (
        flow.src_identity
        if flow.src_identity is not None
        else workload_by_address(policy, flow.src_address)
    )
    dst = (
        flow.dst_identity
        if flow.dst_identity is not None
        else workload_by_address(policy, flow.dst_address)
    )
    matching = [rule for rule in policy.rules if rule_matches(rule, src, flow, dst)]

    denies = [r.id for r in matching if r.action is Action.DENY and not r.audit]
    audits = [r.id for r in matching if r.action is Action.DENY and r.audit]
    allows = [r.id for r in matching if r.action is Action.ALLOW and not r.mtls]
    mtls_allows = [r.id for r in matching if r.action is Action.ALLOW and r.mtls]

    needs_mtls = by_default = False
    if denies:
        verdict, rule = Verdict.DENY, min(denies)
    elif allows:
        verdict, rule = Verdict.ALLOW, min(allows)
    elif mtls_allows:
        verdict, rule, needs_mtls = Verdict.ALLOW, min(mtls_allows), True
    else:
        verdict, rule, by_default = policy.default, 0, True

    if verdict is Verdict.ALLOW and dst != NO_IDENTITY:
        target = next((w for w in policy.workloads if w.identity == dst), None)
        if target is not None and target.mtls_required:
            needs_mtls = True
    if needs_mtls and (src == NO_IDENTITY or dst == NO_IDENTITY or (src, dst) not in authenticated):
        verdict = Verdict.DENY

    would_deny = False
    if policy.mode is Mode.AUDIT and verdict is Verdict.DENY:
        verdict, would_deny = Verdict.ALLOW, True

    return Decision(
        verdict=verdict,
        rule=rule,
        audit_rule=min(audits) if audits else 0,
        by_default=by_default,
        would_deny=would_deny,
        needs_mtls=needs_mtls,
        src_identity=src,
        dst_identity=dst,
    )
