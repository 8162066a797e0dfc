"""L4 allow/deny enforced by the running kernel, with real sockets.

Each workload is a throwaway cgroup with agent processes inside and its own
loopback address (127.0.N.1); the policy is attached to their parent.
"""

from __future__ import annotations

import errno
import gc
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from pathlib import Path

import pytest

import ebmesh
from ebmesh.loader import AttachType, query_cgroup
from ebmesh.runtime import keepalive
from ebmesh.runtime.cgroups import cgroup2_mount

pytestmark = pytest.mark.kernel

CLIENT, SERVER, OTHER, OUTSIDE = "127.0.1.1", "127.0.2.1", "127.0.3.1", "127.0.9.9"
AT_ONCE = 0.5  # seconds: a denial is a syscall error, never a timeout


def mesh(rules: str, *, default: str = "deny", mode: str = "enforce", extra: str = "") -> str:
    return textwrap.dedent(
        f"""\
        mesh t {{
            default {default}
            mode {mode}
            workload client {{ cgroup "client" address {CLIENT} }}
            workload server {{ cgroup "server" address {SERVER} }}
            workload other  {{ cgroup "other"  address {OTHER} }}
        {textwrap.indent(textwrap.dedent(extra), "    ")}
        {textwrap.indent(textwrap.dedent(rules), "    ")}
        }}
        """
    )


@pytest.fixture
def world(cgroup_tree, spawn):
    """Three workload cgroups with one agent each; the server listens on 8080, 9090, 1000-1002."""
    root = cgroup_tree("client", "server", "other", "stray", "client/deep/deeper")

    class World:
        pass

    w = World()
    w.root = root
    w.client = spawn(root / "client", name="client")
    w.server = spawn(root / "server", name="server")
    w.other = spawn(root / "other", name="other")
    w.stray = spawn(root / "stray", name="stray")  # under the attach cgroup, in no workload
    w.deep = spawn(root / "client/deep/deeper", name="deep")
    w.outside = spawn(None, name="outside")  # not under the attach cgroup at all
    for port in (8080, 9090, 1000, 1001, 1002, 2000):
        w.server.listen("tcp", SERVER, port)
    for port in (5353, 5354):
        w.server.listen("udp", SERVER, port)
    return w


def attach(world, source: str, **kwargs):
    return ebmesh.compile(source).attach(world.root, **kwargs)


def assert_allowed(result):
    assert result["ok"], result
    assert result.get("greeting", "hello\n") in ("hello\n", None) or "reply" in result


def assert_denied_at_once(result):
    assert not result["ok"], result
    assert result["errno"] == errno.EPERM, errno.errorcode.get(result["errno"])
    assert result["seconds"] < AT_ONCE, result


def test_allow_and_default_deny(world):
    with attach(world, mesh("allow client -> server port 8080/tcp")):
        assert_allowed(world.client.connect(SERVER, 8080, source=CLIENT))
        assert_denied_at_once(world.client.connect(SERVER, 9090, source=CLIENT))
        assert_denied_at_once(world.other.connect(SERVER, 8080, source=OTHER))


def test_default_allow(world):
    with attach(world, mesh("deny other -> server", default="allow")):
        assert_allowed(world.client.connect(SERVER, 9090, source=CLIENT))
        assert_denied_at_once(world.other.connect(SERVER, 9090, source=OTHER))


@pytest.mark.parametrize("order", ["deny first", "allow first"])
def test_deny_beats_allow_whatever_the_order(world, order):
    allow, deny = "allow client -> server", "deny client -> server port 9090/tcp"
    rules = f"{deny}\n{allow}" if order == "deny first" else f"{allow}\n{deny}"
    with attach(world, mesh(rules)):
        assert_allowed(world.client.connect(SERVER, 8080, source=CLIENT))
        assert_denied_at_once(world.client.connect(SERVER, 9090, source=CLIENT))


def test_unaligned_port_range(world):
    with attach(world, mesh("allow client -> server port 1001-2000/tcp")):
        assert_denied_at_once(world.client.connect(SERVER, 1000, source=CLIENT))
        assert_allowed(world.client.connect(SERVER, 1001, source=CLIENT))
        assert_allowed(world.client.connect(SERVER, 2000, source=CLIENT))
        assert_denied_at_once(world.client.connect(SERVER, 9090, source=CLIENT))


def test_cidr_with_except(world):
    rules = "allow client -> 127.0.0.0/16 except 127.0.2.0/24, 127.0.3.0/25 port 8080"
    for port in (8080,):
        world.other.listen("tcp", OTHER, port)
    with attach(world, mesh(rules)):
        assert_denied_at_once(world.client.connect(SERVER, 8080, source=CLIENT))  # inside an except
        assert_denied_at_once(world.client.connect(OTHER, 8080, source=CLIENT))
        world.client.listen("tcp", "127.0.3.200", 8080)
        assert_allowed(
            world.client.connect("127.0.3.200", 8080, source=CLIENT)
        )  # outside both excepts


def test_a_workload_is_its_cgroup_not_its_address(world):
    """The sender's cgroup names it, whatever address it binds; at both ends."""
    with attach(world, mesh("allow client -> server port 8080")):
        assert_allowed(world.client.connect(SERVER, 8080, source=OUTSIDE))
        # other borrows client's address: still other, still denied
        assert_denied_at_once(world.other.connect(SERVER, 8080, source=CLIENT))


def test_nested_cgroups_belong_to_their_workload(world):
    with attach(world, mesh("allow client -> server port 8080")):
        assert_allowed(world.deep.connect(SERVER, 8080, source=CLIENT))


def test_most_specific_workload_cgroup_wins(cgroup_tree, spawn):
    root = cgroup_tree("team/b", "server")
    team, inner, server = spawn(root / "team"), spawn(root / "team/b"), spawn(root / "server")
    server.listen("tcp", SERVER, 8080)
    source = """
        mesh t {
            workload team   { cgroup "team" }
            workload b      { cgroup "team/b" }
            workload server { cgroup "server" address 127.0.2.1 }
            allow b -> server port 8080
        }
    """
    with ebmesh.compile(source).attach(root):
        assert_allowed(inner.connect(SERVER, 8080))
        assert_denied_at_once(team.connect(SERVER, 8080))


def test_process_in_no_workload_matches_only_any_and_addresses(world):
    rules = """
        allow any -> server port 8080
        allow 127.0.0.0/8 -> server port 9090
    """
    with attach(world, mesh(rules)):
        assert_allowed(world.stray.connect(SERVER, 8080, source="127.0.7.7"))
        assert_allowed(world.stray.connect(SERVER, 9090, source="127.0.7.7"))
        assert_denied_at_once(world.stray.connect(SERVER, 1000, source="127.0.7.7"))


def test_ingress_judges_traffic_from_outside_the_mesh_by_address(world):
    """A process outside the attach cgroup has no egress hook: its SYN is dropped at the server."""
    rules = "allow 127.0.9.0/24 -> server port 8080"
    with attach(world, mesh(rules)):
        assert_allowed(world.outside.connect(SERVER, 8080, source=OUTSIDE))
        refused = world.outside.connect(SERVER, 8080, source="127.0.8.8", timeout=1.0)
        assert not refused["ok"] and refused["errno"] == errno.ETIMEDOUT, refused


def test_ipv4_options_do_not_hide_a_syn(world):
    """A SYN whose IPv4 header carries options (longer than 20 bytes) is read the
    long way, not the in-place one, and judged like any other."""
    rules = "allow 127.0.9.0/24 -> server port 8080"
    with attach(world, mesh(rules)):
        assert_allowed(world.outside.connect(SERVER, 8080, source=OUTSIDE, ip_options=True))
        refused = world.outside.connect(
            SERVER, 8080, source="127.0.8.8", timeout=1.0, ip_options=True
        )
        assert not refused["ok"] and refused["errno"] == errno.ETIMEDOUT, refused


def test_receiver_known_only_by_cgroup_is_judged_at_connect(world):
    """The server has no address: only its listening socket's cgroup names it.
    Egress finds it, so the denial is EPERM at connect, not a dropped SYN."""
    source = """
        mesh t {
            workload client { cgroup "client" }
            workload server { cgroup "server" }
            allow client -> 127.0.2.0/24
            deny client -> server port 9090
        }
    """
    with attach(world, source):
        assert_allowed(world.client.connect(SERVER, 8080))
        assert_denied_at_once(world.client.connect(SERVER, 9090))


def test_udp_send_and_reply(world):
    with attach(world, mesh("allow client -> server port 5353/udp")):
        answer = world.client.send(SERVER, 5353, source=CLIENT)
        assert answer["ok"] and answer["reply"] == "echo:ping", answer
        assert_denied_at_once(world.client.send(SERVER, 5354, source=CLIENT))
        assert_denied_at_once(world.client.send(SERVER, 5354, source=CLIENT, connected=True))
        assert_denied_at_once(world.client.connect(SERVER, 5353, source=CLIENT))  # TCP not allowed


def test_a_udp_stream_outlives_the_window_of_the_datagram_that_started_it(world):
    """One allowed request, then 33 s of answers the policy alone would deny (server ->
    client): each datagram keeps the flow alive, as in conntrack, so the stream goes on
    past the 30 s that the request alone would open it for."""
    with attach(world, mesh("allow client -> server port 5360/udp")):
        stream = {}
        server = threading.Thread(
            target=lambda: stream.update(
                world.server.call("stream_udp", address=SERVER, port=5360, seconds=33, every=0.5)
            )
        )
        server.start()
        got = world.client.call("receive_stream", address=SERVER, port=5360, source=CLIENT, quiet=3)
        server.join()
        assert stream["ok"] and stream["sent"] >= 60, stream
        assert got == {"ok": True, "received": stream["sent"]}, (got, stream)
        assert_denied_at_once(
            world.server.send(CLIENT, 5361, source=SERVER)
        )  # no new flow that way


def test_udp_ingress_from_outside_is_dropped_unless_allowed(world):
    with attach(world, mesh("allow 127.0.9.0/24 -> server port 5353/udp")):
        assert world.outside.send(SERVER, 5353, source=OUTSIDE)["reply"] == "echo:ping"
        assert world.outside.send(SERVER, 5353, source="127.0.8.8", timeout=0.5)["reply"] is None


def test_audit_rule_reports_and_does_not_enforce(world):
    rules = """
        allow client -> server
        deny client -> server port 8080 audit
    """
    with attach(world, mesh(rules)) as attachment:
        assert_allowed(world.client.connect(SERVER, 8080, source=CLIENT))
        events = [e for e in attachment.events(timeout=1.0) if e.direction == "egress"]
        assert events and events[0].verdict == "allow"
        assert events[0].rule_id == 1 and events[0].audit_rule_id == 2
        assert attachment.counters()[2].audited >= 1


def test_mode_audit_lets_denials_through_and_reports_them(world):
    with attach(world, mesh("allow client -> server port 8080", mode="audit")) as attachment:
        assert_allowed(world.client.connect(SERVER, 9090, source=CLIENT))
        events = [e for e in attachment.events(timeout=1.0) if e.direction == "egress"]
        assert events[0].verdict == "allow" and events[0].would_deny and events[0].rule_id == 0


def test_events_name_the_rule_and_its_line(world):
    source = mesh("allow client -> server port 8080\ndeny client -> server port 9090")
    line_of_deny = next(
        n for n, text in enumerate(source.splitlines(), 1) if text.strip().startswith("deny")
    )
    with attach(world, source) as attachment:
        world.client.connect(SERVER, 9090, source=CLIENT)
        event = next(e for e in attachment.events(timeout=2.0) if e.verdict == "deny")
        assert (event.direction, event.protocol, event.dst_port) == ("egress", "tcp", 9090)
        assert (event.src_name, event.dst_name) == ("client", "server")
        assert str(event.src_address) == CLIENT and str(event.dst_address) == SERVER
        assert event.rule_id == 2 and event.rule.line == line_of_deny
        assert "deny client -> server port 9090" in event.rule.text
        assert "DENY" in str(event) and f":{line_of_deny}" in str(event)


def test_counters_count_each_deciding_rule(world):
    with attach(world, mesh("allow client -> server port 8080")) as attachment:
        for _ in range(3):
            world.client.connect(SERVER, 8080, source=CLIENT)
        world.client.connect(SERVER, 9090, source=CLIENT)
        counters = attachment.counters()
        # Between two local workloads a connection is decided once, at connect(); only the
        # first one to a listener is decided at ingress too: connect() found the listener
        # by a socket lookup, which ingress cannot tell, and from then on by the listener
        # table that ingress keeps.
        assert counters[1].decided == 4
        assert counters[0].decided == 1  # the default denied one


def test_detach_restores_traffic_and_leaves_nothing_attached(world):
    attachment = attach(world, mesh("allow client -> server port 8080"))
    assert query_cgroup(world.root, AttachType.CGROUP_INET4_CONNECT)
    assert_denied_at_once(world.client.connect(SERVER, 9090, source=CLIENT))
    attachment.detach()
    assert_allowed(world.client.connect(SERVER, 9090, source=CLIENT))
    assert query_cgroup(world.root, AttachType.CGROUP_INET4_CONNECT) == []
    assert query_cgroup(world.root, AttachType.CGROUP_INET_INGRESS) == []
    attachment.detach()  # idempotent


def test_a_bare_attach_statement_keeps_enforcing_until_detach(world):
    """`ebmesh.compile(p).attach(cg)` with nothing kept: the attachment is held
    alive (not collected, not detached) until its own `detach()`."""
    ebmesh.compile(mesh("allow client -> server port 8080")).attach(world.root)
    gc.collect()
    assert_denied_at_once(world.client.connect(SERVER, 9090, source=CLIENT))
    assert_allowed(world.client.connect(SERVER, 8080, source=CLIENT))
    (attachment,) = [a for a in keepalive.held() if a.cgroup == world.root]
    attachment.detach()
    assert attachment not in keepalive.held()
    assert_allowed(world.client.connect(SERVER, 9090, source=CLIENT))
    assert query_cgroup(world.root, AttachType.CGROUP_INET4_CONNECT) == []

    forgotten = weakref.ref(attachment)
    del attachment
    gc.collect()
    assert forgotten() is None, "a detached attachment is not held any more"


BARE_ATTACH_THEN_WAIT = """
import gc, sys
import ebmesh
ebmesh.compile(sys.argv[1]).attach(sys.argv[2])
gc.collect()
print("attached", flush=True)
sys.stdin.readline()
sys.exit(int(sys.argv[3]))
"""


@pytest.mark.parametrize("how", ["exit", "exception", "kill -9"])
def test_a_bare_attach_lasts_as_long_as_its_process(world, how):
    """The end of the process ends what it attached and kept no reference to:
    through the exit handlers, or (kill -9) the kernel closing its links."""
    script = (
        BARE_ATTACH_THEN_WAIT
        if how != "exception"
        else BARE_ATTACH_THEN_WAIT.replace(
            "sys.exit(int(sys.argv[3]))", "raise RuntimeError('the program fails')"
        )
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, mesh("allow client -> server port 8080"), world.root, "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],  # this checkout's ebmesh
    )
    try:
        assert process.stdout.readline() == "attached\n", process.stderr.read()
        time.sleep(0.2)
        assert_denied_at_once(world.client.connect(SERVER, 9090, source=CLIENT))
        if how == "kill -9":
            process.kill()
        else:
            process.stdin.write("\n")
            process.stdin.flush()
        status = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = process.stderr.read()
    expected = {"exit": 0, "exception": 1, "kill -9": -signal.SIGKILL}[how]
    assert status == expected, stderr
    assert "Exception ignored" not in stderr, stderr
    # A killed process's links are released as its files close, maybe a moment after it is reaped.
    deadline = time.monotonic() + 5
    while query_cgroup(world.root, AttachType.CGROUP_INET4_CONNECT) and time.monotonic() < deadline:
        time.sleep(0.05)
    for attach_type in AttachType.CGROUP_INET4_CONNECT, AttachType.CGROUP_INET_INGRESS:
        assert query_cgroup(world.root, attach_type) == []
    assert_allowed(world.client.connect(SERVER, 9090, source=CLIENT))


FORK_THEN_EXIT = """
import gc, os, sys
import ebmesh
ebmesh.compile(sys.argv[1]).attach(sys.argv[2])
child = os.fork()
if child == 0:
    gc.collect()
    sys.exit(0)  # a normal exit: exit handlers and finalisers run in the child
os.waitpid(child, 0)
print("child gone", flush=True)
sys.stdin.readline()
"""


def test_a_forked_child_ending_leaves_its_parent_enforcing(world):
    """A child made by fork() holds copies of its parent's links: its normal exit
    must not detach them."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            FORK_THEN_EXIT,
            mesh("allow client -> server port 8080"),
            world.root,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert process.stdout.readline() == "child gone\n", process.stderr.read()
        assert query_cgroup(world.root, AttachType.CGROUP_INET4_CONNECT)
        assert_denied_at_once(world.client.connect(SERVER, 9090, source=CLIENT))
        process.stdin.write("\n")
        process.stdin.flush()
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert query_cgroup(world.root, AttachType.CGROUP_INET4_CONNECT) == []


def test_refuses_the_root_cgroup(root):
    compiled = ebmesh.compile(mesh("allow any -> any"))
    with pytest.raises(ebmesh.AttachError, match="root cgroup.*pass force=True"):
        compiled.attach(cgroup2_mount())
    with pytest.raises(ebmesh.AttachError, match="root cgroup"):
        compiled.attach("")


def test_missing_workload_cgroup_is_an_error(cgroup):
    compiled = ebmesh.compile(mesh("allow client -> server"))
    with pytest.raises(ebmesh.AttachError, match="client"):
        compiled.attach(cgroup)
    assert query_cgroup(cgroup, AttachType.CGROUP_INET4_CONNECT) == []


def test_a_socket_nested_deep_stays_in_its_workload(cgroup_tree, spawn):
    """A process that nests its cgroup deeper than the datapath walks (32
    levels) cannot slip out of its workload's rules: every cgroup below the
    attach cgroup is mapped to its workload, however deep."""
    deep = "/".join(["client"] + [f"n{level}" for level in range(33)])
    within = "/".join(["client"] + [f"n{level}" for level in range(20)])
    root = cgroup_tree(deep, "server")
    server = spawn(root / "server")
    server.listen("tcp", SERVER, 8080)
    source = f"""
        mesh t {{
            default allow
            workload client {{ cgroup "client" }}
            workload server {{ cgroup "server" address {SERVER} }}
            deny client -> server
        }}
    """
    with ebmesh.compile(source).attach(root) as attachment:
        assert_denied_at_once(spawn(root / within).connect(SERVER, 8080))  # still client: the deny
        assert_denied_at_once(spawn(root / deep).connect(SERVER, 8080))  # 34 deep: still client
        denials = [e for e in attachment.events(timeout=1.0) if e.verdict == "deny"]
        assert [(e.src_name, e.rule_id, e.too_deep) for e in denials] == [("client", 1, False)] * 2


def test_an_old_record_lends_no_identity_to_a_port_reuser(world):
    """After a workload's connection ends, a process outside the mesh that
    reuses its address and port is judged by address, not as the workload."""
    source = f"""
        mesh t {{
            workload client {{ cgroup "client" }}
            workload server {{ cgroup "server" address {SERVER} }}
            allow client -> server port 8080
        }}
    """
    with attach(world, source):
        assert_allowed(world.client.connect(SERVER, 8080, source=CLIENT, source_port=24680))
        time.sleep(2.5)  # longer than a sender's record is believed
        reused = world.outside.connect(SERVER, 8080, source=CLIENT, source_port=24680, timeout=1.0)
        assert not reused["ok"] and reused["errno"] == errno.ETIMEDOUT, reused


def test_replace_swaps_the_policy_without_a_gap(world):
    allow_both = mesh("allow client -> server port 8080, 9090")
    allow_one = mesh("allow client -> server port 8080")
    compiled_both, compiled_one = ebmesh.compile(allow_both), ebmesh.compile(allow_one)
    outcome = {}
    with compiled_both.attach(world.root, events="none") as attachment:
        loader = threading.Thread(
            target=lambda: outcome.update(world.client.connect_many(SERVER, 8080, 10000))
        )
        loader.start()
        swaps = 0
        while loader.is_alive():
            attachment.replace((compiled_one if swaps % 2 else compiled_both).image)
            swaps += 1
        loader.join()
        assert swaps >= 2 and outcome["succeeded"] == 10000, (swaps, outcome)
        attachment.replace(compiled_one.image)
        assert_denied_at_once(world.client.connect(SERVER, 9090, source=CLIENT))
        with pytest.raises(ebmesh.AttachError, match="extra"):
            attachment.replace(
                ebmesh.compile(mesh("", extra='workload extra { cgroup "extra" }')).image
            )
        assert_denied_at_once(
            world.client.connect(SERVER, 9090, source=CLIENT)
        )  # the running policy stayed
        assert_allowed(world.client.connect(SERVER, 8080, source=CLIENT))
