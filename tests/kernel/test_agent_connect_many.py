"""The agent's `connect_many` (used by bench/run.py): a loop of connects inside the agent."""

from __future__ import annotations

import errno

import pytest

import ebmesh

pytestmark = pytest.mark.kernel

CLIENT, SERVER = "127.0.1.1", "127.0.2.1"


def test_connect_many_counts_successes_and_denials(cgroup_tree, spawn):
    root = cgroup_tree("client", "server")
    client, server = spawn(root / "client"), spawn(root / "server")
    server.listen("tcp", SERVER, 8080)
    server.listen("tcp", SERVER, 9090)
    source = f"""
        mesh t {{
            workload client {{ cgroup "client" address {CLIENT} }}
            workload server {{ cgroup "server" address {SERVER} }}
            allow client -> server port 8080/tcp
        }}
    """
    with ebmesh.compile(source).attach(root, events="none"):
        allowed = client.connect_many(SERVER, 8080, 50, source=CLIENT)
        assert allowed["ok"] and allowed["succeeded"] == 50 and allowed["errnos"] == {}, allowed
        assert allowed["seconds"] > 0
        denied = client.connect_many(SERVER, 9090, 5, source=CLIENT)
        assert not denied["ok"] and denied["succeeded"] == 0, denied
        assert denied["errnos"] == {str(errno.EPERM): 5}, denied
