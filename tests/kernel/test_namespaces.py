"""IPv6, dual-stack sockets, and traffic between network namespaces.

The processes live in throwaway network namespaces (entered with setns, which
keeps the cgroup2 mount visible, unlike `ip netns exec`) and in throwaway
cgroups under the attach point.
"""

from __future__ import annotations

import errno
import textwrap

import pytest

import ebmesh
from tests.support import throwaway_netns, veth_pair

pytestmark = pytest.mark.kernel

CLIENT6, SERVER6, OTHER6 = "fd00:1::1", "fd00:2::1", "fd00:3::1"


def client_namespace(agent) -> str:
    return agent.netns


def denied_at_once(result) -> bool:
    return not result["ok"] and result["errno"] == errno.EPERM and result["seconds"] < 0.5


@pytest.fixture
def v6(cgroup_tree, spawn):
    root = cgroup_tree("client", "server")
    with throwaway_netns(
        (f"{CLIENT6}/128", f"{SERVER6}/128", f"{OTHER6}/128", "127.0.2.1/32")
    ) as ns:
        client = spawn(root / "client", netns=ns, name="client")
        server = spawn(root / "server", netns=ns, name="server")
        for port in (8080, 9090):
            server.listen("tcp", SERVER6, port)
        server.listen("udp", SERVER6, 5353)
        server.listen("tcp", "127.0.2.1", 8080)
        client.netns = ns
        yield root, client, server


POLICY6 = textwrap.dedent(
    f"""\
    mesh six {{
        workload client {{ cgroup "client" address {CLIENT6} }}
        workload server {{ cgroup "server" address fd00:2::/64, 127.0.2.1 }}
        allow client -> server port 8080/tcp
        allow client -> fd00:2::/64 port 5353/udp
        deny  client -> ::/0 port 9090
    }}
    """
)


def test_ipv6_allow_and_deny(v6):
    root, client, server = v6
    with ebmesh.compile(POLICY6).attach(root) as attachment:
        allowed = client.connect(SERVER6, 8080, source=CLIENT6)
        assert allowed["ok"] and allowed["greeting"] == "hello\n", allowed
        assert denied_at_once(client.connect(SERVER6, 9090, source=CLIENT6))
        reply = client.send(SERVER6, 5353, source=CLIENT6)
        assert reply["ok"] and reply["reply"] == "echo:ping", reply
        denial = next(e for e in attachment.events(timeout=1.0) if e.verdict == "deny")
        assert str(denial.dst_address) == SERVER6 and denial.rule_id == 3


def test_dual_stack_socket_is_judged_as_ipv4(v6):
    """A v6 socket connecting to ::ffff:a.b.c.d talks IPv4, and is judged so."""
    root, client, server = v6
    with ebmesh.compile(POLICY6).attach(root) as attachment:
        result = client.connect("::ffff:127.0.2.1", 8080)
        assert result["ok"], result
        egress = next(e for e in attachment.events(timeout=1.0) if e.direction == "egress")
        assert str(egress.dst_address) == "127.0.2.1" and egress.dst_name == "server"


def test_traffic_from_another_host_is_judged_by_address(cgroup_tree, spawn):
    """A peer in another namespace, outside the mesh, reaches the server over veth:
    only the server's ingress sees it, and knows it by its address."""
    root = cgroup_tree("server")
    with (
        throwaway_netns() as host,
        throwaway_netns() as remote,
        veth_pair(host, "10.9.0.1/24", remote, "10.9.0.2/24"),
    ):
        server = spawn(root / "server", netns=host)
        server.listen("tcp", "10.9.0.1", 8080)
        server.listen("tcp", "10.9.0.1", 9090)
        peer = spawn(None, netns=remote)
        source = """
            mesh hosts {
                workload server { cgroup "server" }
                workload peer   { address 10.9.0.2 }
                allow peer -> server port 8080
            }
        """
        with ebmesh.compile(source).attach(root) as attachment:
            assert peer.connect("10.9.0.1", 8080)["ok"]
            dropped = peer.connect("10.9.0.1", 9090, timeout=1.0)
            assert not dropped["ok"] and dropped["errno"] == errno.ETIMEDOUT
            seen = [
                (e.direction, e.src_name, e.verdict, e.dst_port)
                for e in attachment.events(timeout=1.0)
            ]
            assert ("ingress", "peer", "allow", 8080) in seen
            assert ("ingress", "peer", "deny", 9090) in seen


def test_a_local_workload_in_another_namespace_is_known_by_its_cgroup(cgroup_tree, spawn):
    """Across namespaces the sender's address is not the one it was declared
    with, but its cgroup still names it at the receiver's ingress."""
    root = cgroup_tree("client", "server")
    with (
        throwaway_netns() as host,
        throwaway_netns() as remote,
        veth_pair(host, "10.9.0.1/24", remote, "10.9.0.2/24"),
    ):
        server = spawn(root / "server", netns=host)
        server.listen("tcp", "10.9.0.1", 8080)
        client = spawn(root / "client", netns=remote)
        outsider = spawn(None, netns=remote)
        source = """
            mesh hosts {
                workload client { cgroup "client" address 192.0.2.1 }
                workload server { cgroup "server" address 10.9.0.1 }
                allow client -> server port 8080
            }
        """
        with ebmesh.compile(source).attach(root):
            assert client.connect("10.9.0.1", 8080)["ok"]
            dropped = outsider.connect("10.9.0.1", 8080, timeout=1.0)
            assert not dropped["ok"] and dropped["errno"] == errno.ETIMEDOUT


def test_ipv6_extension_headers_do_not_hide_a_syn(v6, spawn):
    """A SYN behind a destination options header is judged like any other."""
    root, client, server = v6
    source = f"""
        mesh six {{
            workload server {{ cgroup "server" address {SERVER6} }}
            allow {OTHER6} -> server port 8080
        }}
    """
    outsider = spawn(None, netns=client_namespace(client))
    with ebmesh.compile(source).attach(root):
        allowed = outsider.connect(SERVER6, 8080, source=OTHER6, destination_options=True)
        assert allowed["ok"], allowed
        dropped = outsider.connect(
            SERVER6, 9090, source=OTHER6, destination_options=True, timeout=1.0
        )
        assert not dropped["ok"] and dropped["errno"] == errno.ETIMEDOUT, dropped
