"""`ebmesh apply` as an operator runs it: --pin (the policy outlives the process, as
Cilium's agent dying leaves its policy), `status -o json` and `detach`, an attach
cgroup removed underneath, the attachment's notices (mTLS pairs authenticated,
workloads elsewhere), and twenty edits under a client that never stops connecting.

Every test attaches only to throwaway `ebmesh-test-*` cgroups and leaves no pin:
a pinned policy is detached in `finally` whatever happened. Addresses 127.0.74.x
(clients) and 127.0.75.x (servers), ports 8074/9074, are this file's alone.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.unit.test_cli import (
    Lines,
    attached_programs,
    run_ebmesh,
    start_apply,
)

pytestmark = pytest.mark.kernel

CLIENT, SERVER, SERVER_2 = "127.0.74.1", "127.0.75.1", "127.0.75.2"
VIP = "127.0.74.100"


def loop_policy(mesh: str) -> str:
    return f"""\
mesh {mesh} {{
    workload client {{ cgroup "client" address {CLIENT} }}
    workload server {{ cgroup "server" address 127.0.75.0/24 }}
    service web {VIP}:80/tcp {{
        backend {SERVER}:8074 weight 1
        backend {SERVER_2}:8074 weight 1
    }}
    allow client -> server port 8074/tcp
    allow client -> web
}}
"""


def unique_mesh() -> str:
    """A mesh name no other test (or helper) pins at the same time."""
    return f"clitest{uuid.uuid4().hex[:8]}"


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def forget_pinned(cgroup: Path) -> None:
    """Whatever a test did, no pinned policy of its cgroup stays."""
    from ebmesh.errors import AttachError
    from ebmesh.runtime.status import detach_cgroup

    if cgroup.exists():
        try:
            detach_cgroup(cgroup)
        except AttachError:
            pass  # nothing there: the test detached it


@pytest.fixture
def loop(cgroup_tree, spawn, tmp_path):
    """(root cgroup, client agent, policy file, mesh name), servers listening."""
    root = cgroup_tree("client", "server")
    server, client = spawn(root / "server", name="server"), spawn(root / "client", name="client")
    for address in (SERVER, SERVER_2):
        server.listen("tcp", address, 8074)
    server.listen("tcp", SERVER, 9074)
    mesh = unique_mesh()
    policy = tmp_path / "loop.mesh"
    policy.write_text(loop_policy(mesh))
    yield root, client, policy, mesh
    forget_pinned(root)


def enforcing(client) -> bool:
    """The policy is there: the allowed port passes, the other one is refused."""
    allowed = client.connect(SERVER, 8074, source=CLIENT)
    denied = client.connect(SERVER, 9074, source=CLIENT)
    assert allowed["ok"], allowed
    return not denied["ok"] and denied["errno"] == errno.EPERM


def status_of(cgroup: Path) -> dict | None:
    result = run_ebmesh("status", "-o", "json", timeout=60)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["kind"] == "status"
    mine = [a for a in found["attachments"] if a["cgroup"] == str(cgroup)]
    assert len(mine) <= 1, mine
    return mine[0] if mine else None


def test_apply_pin_outlives_sigterm_until_detach(loop):
    root, client, policy, mesh = loop
    process = start_apply(policy, root, "--pin", "--events", "none")
    try:
        err = Lines(process.stderr)
        Lines(process.stdout)
        started = err.wait_for(lambda line: "attached to" in line, timeout=60)
        assert f"attached to {root} (pinned); Ctrl-C leaves it pinned" in started, started
        assert enforcing(client)
        held = status_of(root)
        assert held["mesh"] == mesh and held["pinned"] is True and held["agent_alive"] is True
        assert held["pid"] == process.pid and "ebmesh_connect4" in held["programs"]

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, err.rest()
        said = err.rest()
        assert (
            f"ebmesh: {mesh} stays pinned on {root}; remove it with ebmesh detach --cgroup {root}"
            in said
        ), said
        assert not any(f"detaching from {root}" in line for line in said), said
    finally:
        stop(process)
    assert enforcing(client), "the pinned policy went with its process"
    left = status_of(root)
    assert left["pinned"] is True and left["agent_alive"] is False and left["mesh"] == mesh
    assert Path(f"/sys/fs/bpf/ebmesh/{mesh}").is_dir()
    text = run_ebmesh("status", timeout=60)
    assert any(str(root) in line and "pinned" in line for line in text.stdout.splitlines())

    detached = run_ebmesh("detach", "--cgroup", root, timeout=60)
    assert detached.returncode == 0, detached.stderr
    assert detached.stdout.startswith(f"ebmesh: detached {mesh} from {root} (")
    assert not enforcing_any(client)
    assert status_of(root) is None
    assert not Path(f"/sys/fs/bpf/ebmesh/{mesh}").exists()
    assert attached_programs(root) == {name: [] for name in attached_programs(root)}


def enforcing_any(client) -> bool:
    denied = client.connect(SERVER, 9074, source=CLIENT)
    return not denied["ok"]


def test_kill_9_of_a_pinned_apply_leaves_the_policy_enforcing(loop):
    root, client, policy, mesh = loop
    process = start_apply(policy, root, "--pin", "--events", "none")
    try:
        err = Lines(process.stderr)
        Lines(process.stdout)
        err.wait_for(lambda line: "attached to" in line, timeout=60)
        process.kill()
        process.wait(timeout=20)
    finally:
        stop(process)
    assert enforcing(client)
    assert status_of(root)["pinned"] is True
    assert run_ebmesh("detach", "--cgroup", root, timeout=60).returncode == 0
    assert not enforcing_any(client)


def test_without_pin_the_policy_goes_with_apply(loop):
    root, client, policy, mesh = loop
    process = start_apply(policy, root, "--no-pin", "--events", "none")
    try:
        err = Lines(process.stderr)
        Lines(process.stdout)
        err.wait_for(lambda line: "attached to" in line, timeout=60)
        assert enforcing(client)
        held = status_of(root)
        assert held["pinned"] is False and held["pid"] == process.pid
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert any(f"detaching from {root}" in line for line in err.rest())
    finally:
        stop(process)
    assert not enforcing_any(client)
    assert status_of(root) is None


@pytest.mark.parametrize("pinned", [False, True], ids=["owned", "pinned"])
def test_the_attach_cgroup_removed_ends_apply_with_exit_2(cgroup_tree, tmp_path, pinned):
    root = cgroup_tree("client")
    mesh = unique_mesh()
    policy = tmp_path / "gone.mesh"
    policy.write_text(
        f'mesh {mesh} {{\n    workload client {{ cgroup "client" address {CLIENT} }}\n'
        "    allow client -> any port 8074/tcp\n}\n"
    )
    process = start_apply(policy, root, "--events", "none", *(["--pin"] if pinned else []))
    try:
        err = Lines(process.stderr)
        Lines(process.stdout)
        err.wait_for(lambda line: "attached to" in line, timeout=60)
        (root / "client").rmdir()
        root.rmdir()
        assert process.wait(timeout=20) == 2, err.rest()
        said = err.rest()
        assert (
            f"ebmesh: the attach cgroup {root} was removed: nothing is left to enforce, so "
            "apply ends" in "\n".join(said)
        ), said
        assert not any(
            word in line for line in said for word in ("Traceback", "Errno", "stays pinned")
        ), said
    finally:
        stop(process)
    assert not Path(f"/sys/fs/bpf/ebmesh/{mesh}").exists()
    assert status_of(root) is None


def test_twenty_edits_under_a_client_that_never_stops(loop, spawn):
    """Each edit swaps the policy (a rule changed) or moves backends in place; a
    client in the cgroup connecting all along, to an allowed address and to the
    service's VIP, sees not one connection fail."""
    root, client, policy, mesh = loop
    second = spawn(root / "client", name="client-vip")
    original = policy.read_text()
    process = start_apply(policy, root, "--events", "none")
    tallies = {"direct": [0, {}], "vip": [0, {}]}
    done = threading.Event()

    def keep_connecting(agent, address, port, tally):
        while not done.is_set():
            result = agent.connect_many(address, port, 25, source=CLIENT, read=False)
            tally[0] += result["succeeded"]
            for code, count in result["errnos"].items():
                tally[1][code] = tally[1].get(code, 0) + count

    threads = []
    try:
        err = Lines(process.stderr)
        Lines(process.stdout)
        err.wait_for(lambda line: "attached to" in line, timeout=60)
        threads = [
            threading.Thread(
                target=keep_connecting, args=(client, SERVER, 8074, tallies["direct"])
            ),
            threading.Thread(target=keep_connecting, args=(second, VIP, 80, tallies["vip"])),
        ]
        for thread in threads:
            thread.start()
        replaced = in_place = 0
        port, weight = 2000, 1
        for edit in range(20):
            seen = len(err.seen)
            if edit % 2:  # a backend's weight: changed in place
                weight += 1
            else:  # a rule: the policy replaced
                port += 1
            text = original.replace("weight 1\n    }", f"weight {weight}\n    }}").replace(
                "allow client -> web",
                f"allow client -> web\n    deny client -> 127.0.76.1 port {port}",
            )
            time.sleep(0.02)  # a new mtime
            policy.write_text(text)
            line = err.wait_for(lambda line: f"{policy} changed:" in line, timeout=30, after=seen)
            replaced += "policy replaced" in line
            in_place += "changed in place" in line
        time.sleep(0.3)  # connections after the last edit too
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=60)
        process.send_signal(signal.SIGINT)
        try:
            assert process.wait(timeout=20) == 0
        finally:
            stop(process)
    assert replaced == 10 and in_place == 10, (replaced, in_place)
    for kind, (succeeded, failures) in tallies.items():
        assert failures == {}, (kind, failures)
        assert succeeded >= 100, (kind, succeeded)


def test_apply_prints_the_attachments_notices(cgroup_tree, tmp_path):
    """A workload whose cgroup is not here runs on another host: apply says so."""
    root = cgroup_tree("client")
    policy = tmp_path / "two-hosts.mesh"
    policy.write_text(
        f'mesh {unique_mesh()} {{\n    workload client {{ cgroup "client" address {CLIENT} }}\n'
        f'    workload far {{ cgroup "far" address {SERVER} }}\n'
        "    allow client -> far port 8074/tcp\n}\n"
    )
    process = start_apply(policy, root, "--events", "none")
    try:
        err = Lines(process.stderr)
        Lines(process.stdout)
        err.wait_for(lambda line: "attached to" in line, timeout=60)
        notice = err.wait_for(lambda line: "elsewhere:" in line, timeout=10)
        assert notice == (
            f"ebmesh: elsewhere: workload far has no cgroup below {root}: it is taken to run "
            "on another host, known here by its address"
        ), notice
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        stop(process)


def test_quiet_apply_says_nothing_but_errors(cgroup_tree, tmp_path):
    root = cgroup_tree("client")
    policy = tmp_path / "quiet.mesh"
    policy.write_text(
        f'mesh {unique_mesh()} {{\n    workload client {{ cgroup "client" address {CLIENT} }}\n'
        f'    workload far {{ cgroup "far" address {SERVER} }}\n'
        "    allow client -> far port 8074/tcp\n}\n"
    )
    process = start_apply(policy, root, "-q", "--events", "none")
    try:
        err = Lines(process.stderr)
        Lines(process.stdout)
        deadline = time.monotonic() + 60
        while not attached_programs(root)["CGROUP_INET4_CONNECT"]:
            assert time.monotonic() < deadline and process.poll() is None, err.rest(0.1)
            time.sleep(0.05)
        time.sleep(0.5)  # the first notices (elsewhere) would have been said by now
        policy.write_text("mesh broken { nonsense }\n")
        err.wait_for(lambda line: "has errors; the running policy stays" in line, timeout=30)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
        said = err.rest()
    finally:
        stop(process)
    assert not any(
        "attached to" in line or "elsewhere" in line or "detaching" in line for line in said
    ), said


@pytest.fixture
def mtls_loop(cgroup_tree, spawn, tmp_path):
    root = cgroup_tree("client", "server")
    server, client = spawn(root / "server", name="server"), spawn(root / "client", name="client")
    server.listen("tcp", SERVER, 8074)
    mesh = unique_mesh()
    policy = tmp_path / "mtls.mesh"
    policy.write_text(
        f'mesh {mesh} {{\n    trust_domain "cli.example"\n'
        f'    workload client {{ cgroup "client" address {CLIENT} }}\n'
        f'    workload server {{ cgroup "server" address {SERVER} }}\n'
        "    allow client -> server port 8074/tcp mtls\n}\n"
    )
    identity = tmp_path / "identity"
    made = run_ebmesh("ca", "init", identity, "--trust-domain", "cli.example")
    assert made.returncode == 0, made.stderr
    return root, client, policy, identity


def test_apply_with_mtls_takes_the_identity_dir_and_port_and_tells_the_pairs(mtls_loop):
    root, client, policy, identity = mtls_loop
    process = start_apply(
        policy, root, "--identity-dir", identity, "--authenticator-port", "0", "--events", "none"
    )
    try:
        err = Lines(process.stderr)
        Lines(process.stdout)
        err.wait_for(lambda line: "attached to" in line, timeout=60)
        told = err.wait_for(lambda line: line.startswith("ebmesh: authenticated:"), timeout=10)
        assert "client" in told and "server" in told, told
        assert (identity / "svid" / "client.pem").exists()  # its SVIDs, in the directory given
        assert client.connect(SERVER, 8074, source=CLIENT)["ok"]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0, err.rest()
    finally:
        stop(process)


def test_apply_with_an_identity_dir_that_has_no_bundle_exits_2(mtls_loop, tmp_path):
    root, client, policy, identity = mtls_loop
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_ebmesh("apply", policy, "--cgroup", root, "--identity-dir", empty, timeout=60)
    assert result.returncode == 2
    assert f"{empty} has no bundle.pem" in result.stderr and "ebmesh ca init" in result.stderr
    assert attached_programs(root) == {name: [] for name in attached_programs(root)}


@pytest.mark.parametrize("port", ["-1", "65536", "http"])
def test_a_bad_authenticator_port_is_a_usage_error(port):
    result = run_ebmesh("apply", "x.mesh", "--cgroup", "x", "--authenticator-port", port)
    assert result.returncode == 2 and "a port from 0 (any free one) to 65535" in result.stderr


def test_status_json_of_a_running_apply(loop):
    root, client, policy, mesh = loop
    process = start_apply(policy, root, "--events", "denied")
    try:
        err = Lines(process.stderr)
        Lines(process.stdout)
        err.wait_for(lambda line: "attached to" in line, timeout=60)
        held = status_of(root)
        assert held == {
            "mesh": mesh,
            "cgroup": str(root),
            "pinned": False,
            "pid": process.pid,
            "agent_alive": True,
            "since": held["since"],
            "rules": 2,
            "events": "denied",
            "programs": held["programs"],
        }
        assert (
            held["programs"] == sorted(held["programs"]) and "ebmesh_connect4" in held["programs"]
        )
        since = time.mktime(time.strptime(held["since"][:19], "%Y-%m-%dT%H:%M:%S"))
        assert abs(since - time.time()) < 120
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        stop(process)


def test_status_with_nothing_attached_here_is_still_a_document():
    """Whatever runs elsewhere on the machine, the shape holds."""
    result = run_ebmesh("status", "-o", "json", timeout=60)
    assert result.returncode == 0
    found = json.loads(result.stdout)
    assert set(found) == {"kind", "attachments"} and isinstance(found["attachments"], list)
    for entry in found["attachments"]:
        assert isinstance(entry["pinned"], bool) and isinstance(entry["pid"], int)


def test_status_is_a_table_with_colour_on_a_terminal(loop):
    from tests.unit.test_cli_conventions import ANSI, in_a_terminal

    root, client, policy, mesh = loop
    process = start_apply(policy, root, "--events", "none")
    try:
        err = Lines(process.stderr)
        Lines(process.stdout)
        err.wait_for(lambda line: "attached to" in line, timeout=60)
        status, output = in_a_terminal("status", env={"COLUMNS": "250"})
        assert status == 0, output
        assert ANSI.search(output), output
        plain = ANSI.sub("", output)
        assert "CGROUP" in plain and mesh in plain and str(root) in plain
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
    finally:
        stop(process)
    assert os.path.exists(root)
