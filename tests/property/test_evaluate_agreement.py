"""Random policies x random flows: the kernel's decision code (run through the
SEC("syscall") harness by `evaluate`) agrees with the reference evaluator
written from the contract. Zero disagreements: verdict, deciding rule, audit rule."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import ebmesh
from ebmesh.ir.model import Protocol, Verdict
from tests.property.policies import PORTS, interesting_addresses, policies
from tests.support import reference

pytestmark = pytest.mark.kernel


def compile_or_reject(text: str):
    try:
        return ebmesh.compile(text)
    except ebmesh.PolicyError:
        assume(False)


def reference_flow(compiled, source, destination, port, protocol, source_address=None):
    """The reference's view of what `CompiledPolicy.evaluate` is asked."""
    policy = compiled.policy
    proto = Protocol[protocol.upper()]
    by_name = {item.name: item for item in (*policy.workloads, *policy.services)}

    if source is None:
        src_identity, src_address = 0, source_address
    elif source in by_name:
        src_identity, src_address = by_name[source].identity, source_address
    else:
        src_identity, src_address = None, ipaddress.ip_address(source)

    dst_identity = None
    if destination in by_name and hasattr(by_name[destination], "vip"):
        dst_address = by_name[destination].vip
    elif destination in by_name:
        workload = by_name[destination]
        dst_identity = workload.identity
        dst_address = (
            workload.prefixes[0].network_address
            if workload.prefixes
            else ipaddress.ip_address("127.0.0.1")
        )
    else:
        dst_address = ipaddress.ip_address(destination)
    if dst_identity is None:
        for service in policy.services:
            if (service.vip, service.port, service.protocol) == (dst_address, port, proto):
                dst_identity = service.identity
    return reference.Flow(
        dst_address, port, proto, src_identity, src_address, dst_identity
    ), dst_address


@st.composite
def cases(draw):
    text, universe = draw(policies())
    family = draw(st.sampled_from([4, 6]))
    addresses = interesting_addresses(universe, family)
    flows = []
    for _ in range(draw(st.integers(20, 60))):
        kind = draw(st.sampled_from(["workload", "address", "none"]))
        if kind == "workload" and universe.names:
            source = draw(st.sampled_from(universe.names))
        elif kind == "address":
            source = str(draw(st.sampled_from(addresses)))
        else:
            source = None
        destinations = [str(a) for a in addresses] + universe.names + universe.services
        destination = draw(st.sampled_from(destinations))
        port = draw(st.sampled_from(PORTS))
        protocol = draw(st.sampled_from(["tcp", "udp"]))
        source_address = draw(st.sampled_from([None, *addresses])) if kind == "workload" else None
        flows.append((source, destination, port, protocol, source_address))
    return text, flows


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(cases())
def test_evaluate_agrees_with_the_reference(root, case):
    text, flows = case
    compiled = compile_or_reject(text)
    disagreements = []
    with compiled:
        for source, destination, port, protocol, source_address in flows:
            flow, dst_address = reference_flow(
                compiled, source, destination, port, protocol, source_address
            )
            if flow.src_address is not None and flow.src_address.version != dst_address.version:
                continue  # a flow cannot mix families
            expected = reference.decide(compiled.policy, flow)
            got = compiled.evaluate(
                source, destination, port, protocol, source_address=source_address
            )
            want = (
                "allow" if expected.verdict is Verdict.ALLOW else "deny",
                expected.rule,
                expected.audit_rule,
            )
            if (got.verdict, got.rule_id, got.audit_rule_id) != want:
                disagreements.append(
                    (source, source_address, destination, port, protocol, want, got)
                )
    assert not disagreements, (
        f"{len(disagreements)} disagreements in\n{text}\nfirst: {disagreements[:3]}"
    )
