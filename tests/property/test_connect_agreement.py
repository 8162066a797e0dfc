"""Random policies x real connects: what the kernel does to real sockets agrees
with the reference evaluator, flow by flow (zero disagreements).

A fixed set of processes lives in workload cgroups on loopback addresses;
each example attaches a random policy over them and tries TCP connects and
UDP request/response between every kind of party: local workloads, a local
process of no workload, and processes outside the mesh (known by address).
"""

from __future__ import annotations

import errno
import ipaddress

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import ebmesh
from ebmesh.ir.model import Mode, Protocol, Verdict
from tests.property.policies import Universe, policies
from tests.support import reference

pytestmark = pytest.mark.kernel

# name: (cgroup below the attach point or None for outside the mesh, address it binds)
PARTIES = {
    "a": ("a", "127.0.1.1"),
    "b": ("b", "127.0.2.1"),
    "c": ("c", "127.0.3.1"),
    "stray": ("stray", "127.0.5.1"),  # under the attach cgroup, in no workload
    "outside": (None, "127.0.9.9"),  # outside the mesh
    "posing": (None, "127.0.4.1"),  # outside the mesh, with the address of remote workload d
}
SERVERS = ("a", "b", "c", "stray")
TCP_PORTS, UDP_PORTS = (80, 443, 8080), (53, 5353)
WORKLOADS = {"a", "b", "c"}

UNIVERSE = Universe(
    local=["a", "b", "c"],
    remote=["d"],
    declarations=[
        'workload a { cgroup "a" address 127.0.1.1 }',
        'workload b { cgroup "b" address 127.0.2.0/24 }',
        'workload c { cgroup "c" }',
        "workload d { address 127.0.4.1 }",
    ],
    prefixes=[
        ipaddress.ip_network(p)
        for p in (
            "127.0.0.0/8",
            "127.0.0.0/16",
            "127.0.1.0/24",
            "127.0.1.1/32",
            "127.0.2.0/24",
            "127.0.2.0/25",
            "127.0.2.1/32",
            "127.0.3.0/24",
            "127.0.4.1/32",
            "127.0.5.0/24",
            "127.0.9.0/24",
        )
    ],
)


@pytest.fixture
def parties(cgroup_tree, spawn):
    root = cgroup_tree("a", "b", "c", "stray")
    agents = {}
    for name, (cgroup, _) in PARTIES.items():
        agents[name] = spawn(root / cgroup if cgroup else None, name=name)
    for name in SERVERS:
        for port in TCP_PORTS:
            agents[name].listen("tcp", PARTIES[name][1], port)
        for port in UDP_PORTS:
            agents[name].listen("udp", PARTIES[name][1], port)
    return root, agents


def expected_outcome(policy, client: str, server: str, port: int, protocol: str) -> str:
    cgroup, source_address = PARTIES[client]
    identity = {w.name: w.identity for w in policy.workloads}
    in_mesh = cgroup is not None
    flow = reference.Flow(
        dst_address=ipaddress.ip_address(PARTIES[server][1]),
        port=port,
        protocol=Protocol[protocol.upper()],
        # Outside the mesh but on this host: a local process of no workload, which matches
        # `any` and CIDRs, never a workload by its address (it may bind any local address).
        src_identity=identity.get(client, 0) if in_mesh else 0,
        src_address=ipaddress.ip_address(source_address),
        dst_identity=identity.get(server, 0),  # the receiver, by its cgroup
    )
    if reference.decide(policy, flow).verdict is Verdict.ALLOW:
        return "allowed"
    assert policy.mode is Mode.ENFORCE
    return "denied at once" if in_mesh else "dropped"


def observed_outcome(agent, server: str, port: int, protocol: str, source: str) -> str:
    address = PARTIES[server][1]
    if protocol == "tcp":
        result = agent.connect(address, port, source=source, timeout=0.3)
        if result["ok"]:
            return "allowed" if result["greeting"] == "hello\n" else f"odd: {result}"
    else:
        result = agent.send(address, port, source=source, timeout=0.3)
        if result["ok"]:
            return "allowed" if result["reply"] == "echo:ping" else "dropped"
    if result["errno"] == errno.EPERM and result["seconds"] < 0.2:
        return "denied at once"
    if result["errno"] == errno.ETIMEDOUT:
        return "dropped"
    return f"odd: {result}"


@st.composite
def cases(draw):
    text, _ = draw(policies(families=(4,), max_rules=8, universe=UNIVERSE))
    flows = []
    for _ in range(draw(st.integers(10, 24))):
        client = draw(st.sampled_from(list(PARTIES)))
        server = draw(st.sampled_from(SERVERS))
        protocol = draw(st.sampled_from(["tcp", "udp"]))
        port = draw(st.sampled_from(TCP_PORTS if protocol == "tcp" else UDP_PORTS))
        flows.append((client, server, port, protocol))
    return text, flows


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(cases())
def test_real_connects_agree_with_the_reference(parties, case):
    root, agents = parties
    text, flows = case
    try:
        compiled = ebmesh.compile(text)
    except ebmesh.PolicyError:
        assume(False)
    disagreements = []
    with compiled.attach(root):
        for client, server, port, protocol in flows:
            want = expected_outcome(compiled.policy, client, server, port, protocol)
            got = observed_outcome(agents[client], server, port, protocol, PARTIES[client][1])
            if got != want:
                disagreements.append(
                    f"{client} -> {server}:{port}/{protocol}: expected {want}, got {got}"
                )
    assert not disagreements, f"in\n{text}\n" + "\n".join(disagreements)
