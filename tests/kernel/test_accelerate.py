"""`accelerate on`: established TCP between local workloads goes socket to socket.

Every byte arrives, in order, whatever the message sizes, both ways, with
half-closes and many connections at once; a connection outlives a policy
change and a detach; policy still decides every connection; a full shortcut
map sends connections through the stack; nothing is left when it ends.
"""

from __future__ import annotations

import errno
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

import ebmesh
from ebmesh.loader import AttachType, query_cgroup
from ebmesh.runtime import instance

pytestmark = pytest.mark.kernel

SERVER = "127.0.3.5"


def policy(accelerate: str = "on", rules: str = "allow client -> server port 7000") -> str:
    return textwrap.dedent(
        f"""\
        mesh fast {{
            accelerate {accelerate}
            workload client {{ cgroup "client" }}
            workload server {{ cgroup "server" address {SERVER} }}
            {rules}
        }}
        """
    )


@pytest.fixture
def pair(cgroup_tree, spawn):
    root = cgroup_tree("client", "server")
    server = spawn(root / "server", name="server")
    server.listen_echo(SERVER, 7000)
    server.listen_echo(SERVER, 7001)
    client = spawn(root / "client", name="client")
    return root, client, server


SIZES = {
    "small": [1, 2, 3, 7, 64, 1, 100] * 50,
    "large": [1 << 20, 3 << 20, 65537],
    "mixed": [1, 1 << 16, 5, 200_000, 2, 9000, 1],
}


@pytest.mark.parametrize("sizes", sorted(SIZES))
def test_every_byte_arrives_both_ways_through_the_shortcut(pair, sizes):
    root, client, _ = pair
    with ebmesh.compile(policy()).attach(root) as attachment:
        result = client.exchange(SERVER, 7000, SIZES[sizes])
        assert result["ok"] and result["intact"], result
        assert result["received"] == result["sent"] == sum(SIZES[sizes])
        carried = attachment.shortcut_counters()
        assert carried["shortcut"] > 0, carried  # it did go socket to socket


def test_many_connections_at_once(pair):
    root, client, _ = pair
    with ebmesh.compile(policy()).attach(root) as attachment:
        results = client.exchange_many(SERVER, 7000, [[1000 + i, 70_000, i + 1] for i in range(40)])
        assert attachment.shortcut_counters()["shortcut"] > 40
    assert all(r["ok"] and r["intact"] for r in results), results


def test_policy_still_decides_every_connection(pair):
    root, client, _ = pair
    with ebmesh.compile(policy()).attach(root) as attachment:
        refused = client.exchange(SERVER, 7001, [10])  # no rule allows 7001
        assert not refused["ok"] and refused["errno"] == errno.EPERM, refused
        assert attachment.shortcut_counters() == {"shortcut": 0, "stack": 0}


def test_a_connection_outlives_a_policy_change_and_the_detach(pair):
    """Open connections keep working, shortcut or stack: a replacement's map is
    new (the old one goes, and its sockets back to the stack), a detach ends
    the shortcut; new connections follow the policy then in force."""
    root, client, server = pair
    results = {}
    with ebmesh.compile(policy()).attach(root) as attachment:
        with ThreadPoolExecutor(1) as pool:
            # a slow exchange: a megabyte at a time, long enough to span the replacement
            running = pool.submit(client.exchange, SERVER, 7000, [1 << 20] * 40, 30.0)
            attachment.replace(ebmesh.compile(policy("on", "deny client -> server")).image)
            results["replaced"] = running.result()
        denied = client.exchange(SERVER, 7000, [10])
        assert not denied["ok"] and denied["errno"] == errno.EPERM
        attachment.replace(ebmesh.compile(policy()).image)
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(client.exchange, SERVER, 7000, [1 << 20] * 40, 30.0)
            attachment.detach()
            results["detached"] = running.result()
    for when, result in results.items():
        assert result["ok"] and result["intact"], (when, result)
    assert query_cgroup(root, AttachType.CGROUP_SOCK_OPS) == []
    assert client.exchange(SERVER, 7001, [10])["intact"]  # nothing left in the way


def test_a_full_shortcut_map_sends_connections_through_the_stack(pair, monkeypatch):
    root, client, _ = pair
    # room for one connection and one end of another, whose messages then find no peer
    monkeypatch.setattr(instance, "SHORTCUT_CAPACITY", 3)
    with ebmesh.compile(policy()).attach(root) as attachment:
        results = client.exchange_many(SERVER, 7000, [[50_000] * 20] * 4)
        assert all(r["ok"] and r["intact"] for r in results), results
        counters = attachment.shortcut_counters()
        assert counters["shortcut"] > 0 and counters["stack"] > 0, counters


def test_without_accelerate_nothing_takes_the_shortcut(pair):
    root, client, _ = pair
    with ebmesh.compile(policy("off")).attach(root) as attachment:
        assert client.exchange(SERVER, 7000, [100])["intact"]
        assert "ebmesh_sockops" not in attachment.attached_programs
        assert attachment.shortcut_counters() == {"shortcut": 0, "stack": 0}


def test_a_pinned_policy_taken_over_keeps_its_shortcut(pair):
    """Adopting a pinned `accelerate on` policy keeps sock_ops attached and the
    shortcut working: the adopting attachment needs the same hooks as the first."""
    root, client, _ = pair
    first = ebmesh.compile(policy()).attach(root, pin=True)
    second = None
    try:
        first.close()  # lets go: the pins keep it enforcing
        second = ebmesh.compile(policy()).attach(root, pin=True)
        assert "ebmesh_sockops" in second.attached_programs
        assert len(query_cgroup(root, AttachType.CGROUP_SOCK_OPS)) == 1
        result = client.exchange(SERVER, 7000, [64] * 20)
        assert result["ok"] and result["intact"], result
        assert second.shortcut_counters()["shortcut"] > 0
    finally:
        (second or first).detach()  # the pinned policy, whoever holds it
    assert query_cgroup(root, AttachType.CGROUP_SOCK_OPS) == []
