"""Enforcement that outlives its process, and one policy per cgroup tree.

A pinned attachment keeps enforcing when its process is killed (-9: no
chance to clean up); a new process of the same mesh takes it over with no
moment unenforced, counters going on; `detach` removes it, pins and all.
A second policy on a cgroup, or on its ancestor or descendant, is refused.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import pytest

import ebmesh
from ebmesh.runtime import registry
from ebmesh.runtime.status import attachments, detach_cgroup

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
SERVER = "127.0.3.5"


def policy(mesh: str, extra: str = "") -> str:
    return textwrap.dedent(
        f"""\
        mesh {mesh} {{
            workload client {{ cgroup "client" }}
            workload server {{ cgroup "server" address {SERVER} }}
            allow client -> server port 8080
            {extra}
        }}
        """
    )


@pytest.fixture
def world(cgroup_tree, spawn):
    root = cgroup_tree("client", "server")
    server = spawn(root / "server", name="server")
    for port in (8080, 9090):
        server.listen("tcp", SERVER, port)
    client = spawn(root / "client", name="client")
    mesh = f"pin{uuid.uuid4().hex[:8]}"
    yield root, client, mesh
    if registry.pin_dir(mesh).exists():  # the test failed half-way: leave nothing pinned
        detach_cgroup(root)


def denied(result) -> bool:
    return not result["ok"] and result["errno"] == errno.EPERM


ATTACH_AND_WAIT = """
import sys, time, ebmesh
attachment = ebmesh.compile(sys.stdin.read()).attach(sys.argv[1], pin=True)
print("attached", flush=True)
time.sleep(600)
"""


def test_a_pinned_policy_outlives_its_killed_process_and_is_taken_over(world):
    root, client, mesh = world
    text = policy(mesh)
    holder = subprocess.Popen(
        [sys.executable, "-c", ATTACH_AND_WAIT, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    holder.stdin.write(text)
    holder.stdin.close()
    assert holder.stdout.readline().strip() == "attached"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    holder.stdout.close()

    # No process holds it: still enforced, both ways.
    assert client.connect(SERVER, 8080)["ok"]
    assert denied(client.connect(SERVER, 9090))
    (status,) = [s for s in attachments() if s.mesh == mesh]
    assert status.pinned and not status.agent_alive and status.cgroup == str(root)

    # Taken over while a client keeps connecting: not one connect fails.
    outcome = {}
    loop = threading.Thread(target=lambda: outcome.update(client.connect_many(SERVER, 8080, 3000)))
    loop.start()
    adopted = ebmesh.compile(text).attach(root, pin=True)
    loop.join()
    assert outcome["succeeded"] == 3000, outcome
    assert any(n.kind == "adopted" for n in adopted.poll_notices())
    # The very same policy: the maps are the pinned ones, and the counters go on.
    assert adopted.counters()[1].decided >= 1 + 1  # the first connect's, and the loop's
    assert denied(client.connect(SERVER, 9090))
    adopted.detach()
    assert not registry.pin_dir(mesh).exists()
    assert client.connect(SERVER, 9090)["ok"]
    assert not [s for s in attachments() if s.mesh == mesh]


def test_an_edited_policy_takes_over_a_pinned_one(world):
    root, client, mesh = world
    first = ebmesh.compile(policy(mesh)).attach(root, pin=True)
    first.close()
    assert denied(client.connect(SERVER, 9090))
    edited = ebmesh.compile(policy(mesh, "allow client -> server port 9090")).attach(root, pin=True)
    try:
        assert client.connect(SERVER, 9090)["ok"]
    finally:
        edited.detach()


def test_detach_removes_a_pinned_policy_from_outside(world):
    root, client, mesh = world
    ebmesh.compile(policy(mesh)).attach(root, pin=True).close()
    assert denied(client.connect(SERVER, 9090))
    assert "detached" in detach_cgroup(root)
    assert client.connect(SERVER, 9090)["ok"]
    assert not registry.pin_dir(mesh).exists()
    with pytest.raises(ebmesh.AttachError, match="no ebmesh policy"):
        detach_cgroup(root)


def test_an_unpinned_attachment_leaves_nothing_pinned(world):
    root, client, mesh = world
    with ebmesh.compile(policy(mesh)).attach(root):
        assert not registry.pin_dir(mesh).exists()
        (status,) = [s for s in attachments() if s.mesh == mesh]
        assert not status.pinned and status.pid == os.getpid() and status.agent_alive
    assert not [s for s in attachments() if s.mesh == mesh]


@pytest.mark.parametrize("where", ["same", "ancestor", "descendant"])
def test_a_second_policy_on_the_tree_is_refused_by_name(cgroup_tree, where):
    root = cgroup_tree("client", "server", "client/inner/client", "client/inner/server")
    inner = root / "client" / "inner"
    first_on, second_on = {
        "same": (root, root),
        "ancestor": (inner, root),  # the second would sit above the first
        "descendant": (root, inner),  # the second would sit below the first
    }[where]
    mesh = f"stack{uuid.uuid4().hex[:6]}"
    with ebmesh.compile(policy(mesh)).attach(first_on):
        with pytest.raises(ebmesh.AttachError, match=mesh) as refused:
            ebmesh.compile(policy(mesh + "b")).attach(second_on)
        assert "already carries ebmesh policy" in str(refused.value)
        assert "detach" in str(refused.value)
