"""The per-CPU verdict cache answers a flow decided before, and only that flow.

White-box on purpose: the cache is invisible from outside when it works, so
the test empties the rule table under it (`rule_pairs`, written as userspace
writes it) and looks at what connects then get. The client is pinned to one
CPU, since each CPU has its own cache.
"""

from __future__ import annotations

import errno
import os

import pytest

import ebmesh

pytestmark = pytest.mark.kernel

SERVER = "127.0.8.5"
POLICY = f"""
mesh cache {{
    workload client {{ cgroup "client" }}
    workload server {{ cgroup "server" address {SERVER} }}
    allow client -> server
}}
"""


@pytest.fixture
def pair(cgroup_tree, spawn):
    root = cgroup_tree("client", "server")
    server = spawn(root / "server", name="server")
    for port in (7100, 7102):
        server.listen("tcp", SERVER, port)
    client = spawn(root / "client", name="client")
    os.sched_setaffinity(client.process.pid, {min(os.sched_getaffinity(0))})
    return root, client


def empty_rule_table(attachment) -> int:
    rule_pairs = attachment._bpf.maps["rule_pairs"]
    keys = list(rule_pairs.keys())
    for key in keys:
        rule_pairs.delete(key)
    return len(keys)


def test_a_flow_decided_before_is_answered_from_the_cache(pair):
    root, client = pair
    with ebmesh.compile(POLICY).attach(root) as attachment:
        assert client.connect(SERVER, 7100)["ok"]  # decided, and cached
        assert client.connect(SERVER, 7100)["ok"]  # the listener is known now: ingress skips
        assert empty_rule_table(attachment) > 0
        # The same flow: the cache answers (decide() would find no rule and deny) ...
        assert client.connect(SERVER, 7100)["ok"]
        # ... and a flow never decided is decided now, by the emptied table: the default.
        refused = client.connect(SERVER, 7102)
        assert not refused["ok"] and refused["errno"] == errno.EPERM, refused


def test_a_replaced_policy_starts_with_an_empty_cache(pair):
    root, client = pair
    denying = POLICY.replace("allow client -> server", "deny client -> server")
    with ebmesh.compile(POLICY).attach(root) as attachment:
        assert client.connect(SERVER, 7100)["ok"]
        attachment.replace(ebmesh.compile(denying).image)
        refused = client.connect(SERVER, 7100)
        assert not refused["ok"] and refused["errno"] == errno.EPERM, refused
