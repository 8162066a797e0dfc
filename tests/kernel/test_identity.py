"""Identity that cannot be borrowed, and cgroups that come and go.

A local workload is its cgroup. A process on this host outside the mesh may
bind any local address, and on IPv6 loopback the kernel even picks the
destination's own address for it: whatever its address, it is "a local
process of no workload" at a workload's ingress, matching `any` and CIDRs,
never a workload by address. A workload's cgroup removed and made again (a
service or container restart) gets a new id, which the running attachment
learns by itself.
"""

from __future__ import annotations

import errno
import time

import pytest

import ebmesh
from tests.support import throwaway_netns

pytestmark = pytest.mark.kernel

SERVER4, SERVER6, PEER4, PEER6 = "127.0.2.1", "fd00:2::1", "127.0.4.1", "fd00:4::1"


def dropped(result) -> bool:
    return not result["ok"] and result["errno"] == errno.ETIMEDOUT


@pytest.fixture
def host(cgroup_tree, spawn):
    """A server workload and a process outside the mesh, in a namespace with IPv6 on lo."""
    root = cgroup_tree("server", "client")
    with throwaway_netns((f"{SERVER6}/128", f"{PEER6}/128")) as ns:
        server = spawn(root / "server", netns=ns, name="server")
        client = spawn(root / "client", netns=ns, name="client")
        outsider = spawn(None, netns=ns, name="outsider")
        for address in (SERVER4, SERVER6):
            server.listen("tcp", address, 8080)
            server.listen("udp", address, 5353)
        yield root, server, client, outsider


POLICY = f"""
mesh m {{
    workload server {{ cgroup "server" address {SERVER4}, {SERVER6} }}
    workload client {{ cgroup "client" }}
    workload peer   {{ address {PEER4}, {PEER6} }}
    allow server -> server
    allow peer -> server
    allow client -> server port 8080/tcp
}}
"""


@pytest.mark.parametrize("peer", [PEER4, PEER6], ids=["ipv4", "ipv6"])
def test_a_process_bound_to_a_workload_address_is_not_that_workload(host, peer):
    """`peer` is a workload known by address: from another host, that address
    is who it is. On this host a process outside the mesh that binds it is not
    `peer`: it is refused, TCP and UDP, and the verdict names no workload."""
    root, server, _, outsider = host
    target = SERVER4 if "." in peer else SERVER6
    with ebmesh.compile(POLICY).attach(root) as attachment:
        assert dropped(outsider.connect(target, 8080, source=peer, timeout=0.5))
        sent = outsider.send(target, 5353, source=peer, timeout=0.5)
        assert sent["ok"] and sent["reply"] is None  # dropped at the server's ingress
        denials = [e for e in attachment.events(timeout=0.5) if e.verdict == "deny"]
        assert {(e.direction, e.protocol, e.src_name) for e in denials} == {
            ("ingress", "tcp", "-"),
            ("ingress", "udp", "-"),
        }


def test_on_ipv6_loopback_an_unbound_outsider_is_not_the_destination(host):
    """Unbound, connecting to the server's IPv6 address, the kernel gives the
    outsider the server's own address as its source: it still is not the
    server. The server itself, by its cgroup, is."""
    root, server, _, outsider = host
    with ebmesh.compile(POLICY).attach(root) as attachment:
        assert dropped(outsider.connect(SERVER6, 8080, timeout=0.5))
        assert server.connect(SERVER6, 8080)["ok"]
        seen = {(e.direction, e.src_name, e.verdict) for e in attachment.events(timeout=0.5)}
        assert ("ingress", "-", "deny") in seen
        assert ("egress", "server", "allow") in seen


def test_a_recreated_workload_cgroup_is_enforced_again_within_100_ms(cgroup_tree, spawn):
    """rmdir then mkdir of a workload's cgroup, as a restart does: the new
    cgroup (a new id) is mapped to its workload by the running attachment, and
    it says so. Until then its sockets are a local process of no workload."""
    root = cgroup_tree("frontend", "db")
    db = spawn(root / "db", name="db")
    db.listen("tcp", "127.0.3.5", 5432)
    source = """
        mesh m {
            default allow
            workload frontend { cgroup "frontend" }
            workload db       { cgroup "db" address 127.0.3.5 }
            deny frontend -> db
        }
    """
    with ebmesh.compile(source).attach(root) as attachment:
        first = spawn(root / "frontend", name="frontend")
        assert first.connect("127.0.3.5", 5432)["errno"] == errno.EPERM
        first.stop()
        (root / "frontend").rmdir()
        made = time.time()
        (root / "frontend").mkdir()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            notices = [n for n in attachment.poll_notices() if n.kind == "cgroup-mapped"]
            if notices:
                break
            time.sleep(0.005)
        assert notices, "the new cgroup was never mapped"
        mapped_after = notices[0].time - made
        assert notices and notices[0].path == root / "frontend", notices
        assert "frontend" in str(notices[0])
        assert mapped_after < 0.1, f"mapped {mapped_after * 1000:.0f} ms after mkdir"
        again = spawn(root / "frontend", name="frontend again")
        refused = again.connect("127.0.3.5", 5432)
        assert not refused["ok"] and refused["errno"] == errno.EPERM, refused


def test_a_cgroup_made_below_a_workload_belongs_to_it(cgroup_tree, spawn):
    root = cgroup_tree("frontend", "db")
    db = spawn(root / "db", name="db")
    db.listen("tcp", "127.0.3.5", 5432)
    source = """
        mesh m {
            default allow
            workload frontend { cgroup "frontend" }
            workload db       { cgroup "db" address 127.0.3.5 }
            deny frontend -> db
        }
    """
    with ebmesh.compile(source).attach(root):
        (root / "frontend" / "worker" / "deeper").mkdir(parents=True)
        nested = spawn(root / "frontend" / "worker" / "deeper", name="nested")
        assert nested.connect("127.0.3.5", 5432)["errno"] == errno.EPERM
