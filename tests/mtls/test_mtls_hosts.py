"""Two hosts: two network namespaces joined by a veth pair, an authenticator process in each.

frontend runs on host A (10.231.0.1), api on host B (10.231.0.2); the policy needs
(frontend, api) authenticated. Host A has the issuer; host B has only the bundle and
an SVID for api carried over (as an external issuer would deliver it).
"""

from __future__ import annotations

import time

import pytest

from ebmesh.mtls import IdentityStore
from tests.mtls.conftest import TRUST_DOMAIN, spiffe_id
from tests.support import throwaway_netns, veth_pair
from tests.support.authenticator_process import AuthenticatorProcess, workload_config
from tests.support.identity import second_host

pytestmark = pytest.mark.kernel

HOST_A, HOST_B = "10.231.0.1", "10.231.0.2"
FRONTEND, API = 1, 2


@pytest.fixture
def hosts(root, tmp_path):
    """(namespace of A, namespace of B, directory of A, directory of B)."""
    store = IdentityStore.create(tmp_path / "a", TRUST_DOMAIN)
    b = second_host(store, tmp_path / "b", "api", spiffe_id("api"))
    with throwaway_netns() as ns_a, throwaway_netns() as ns_b:
        with veth_pair(ns_a, f"{HOST_A}/24", ns_b, f"{HOST_B}/24"):
            yield ns_a, ns_b, str(store.directory), str(b)


def _host_a(directory, api_address=True):
    return {
        "directory": directory,
        "workloads": [
            workload_config(FRONTEND, "frontend", spiffe_id("frontend"), True),
            workload_config(
                API, "api", spiffe_id("api"), False, [f"{HOST_B}/32"] if api_address else []
            ),
        ],
        "pairs": [[FRONTEND, API]],
        "listen": [HOST_A],
    }


def _host_b(directory, frontend_address=True):
    return {
        "directory": directory,
        "workloads": [
            workload_config(
                FRONTEND,
                "frontend",
                spiffe_id("frontend"),
                False,
                [f"{HOST_A}/32"] if frontend_address else [],
            ),
            workload_config(API, "api", spiffe_id("api"), True),
        ],
        "pairs": [[FRONTEND, API]],
        "listen": [HOST_B],
    }


def _eventually(check, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    return check()


def test_a_remote_pair_is_pre_authenticated_when_its_host_is_up(hosts):
    ns_a, ns_b, dir_a, dir_b = hosts
    with AuthenticatorProcess(_host_b(dir_b), ns_b) as b:
        assert [f["reason"] for f in b.started["failed"]] == []
        with AuthenticatorProcess(_host_a(dir_a), ns_a) as a:
            expected_a = [FRONTEND, API, HOST_B]
            expected_b = [FRONTEND, API, HOST_A]
            assert _eventually(lambda: [p[:3] for p in a.authenticated()] == [expected_a])
            assert _eventually(lambda: [p[:3] for p in b.authenticated()] == [expected_b])
            # both hosts keep it until the earlier certificate expiry: the same instant
            assert a.authenticated()[0][3] == b.authenticated()[0][3]


def test_a_host_that_comes_up_later_is_authenticated_on_demand_on_both_sides(hosts):
    """A starts while B is down: its pre-authentication fails (unreachable). B's policy
    knows no address of frontend, so it cannot dial back: the pair waits for demand, and
    the first request after B is up authenticates it on both hosts."""
    ns_a, ns_b, dir_a, dir_b = hosts
    with AuthenticatorProcess(_host_a(dir_a), ns_a) as a:
        assert _eventually(lambda: any(e["reason"] == "unreachable" for e in a.events()), seconds=5)
        assert a.authenticated() == []
        with AuthenticatorProcess(_host_b(dir_b, frontend_address=False), ns_b) as b:
            assert b.authenticated() == []
            time.sleep(0.3)  # past the back-off of A's failed attempt
            answer = a.authenticate(FRONTEND, API, HOST_B)
            assert answer["event"]["outcome"] == "authenticated", answer
            assert answer["seconds"] < 1.0  # the goal is 50 ms: bench/mtls.py measures it
            assert [p[:3] for p in a.authenticated()] == [[FRONTEND, API, HOST_B]]
            assert [p[:3] for p in b.authenticated()] == [[FRONTEND, API, HOST_A]]
            listener = [e for e in b.events() if e["side"] == "listener"]
            assert [(e["outcome"], e["host"]) for e in listener] == [("authenticated", HOST_A)]


def test_revoking_a_remote_identity_cuts_it_on_this_host(hosts):
    ns_a, ns_b, dir_a, dir_b = hosts
    with AuthenticatorProcess(_host_b(dir_b, frontend_address=False), ns_b) as b:
        with AuthenticatorProcess(_host_a(dir_a, api_address=False), ns_a) as a:
            assert a.authenticate(FRONTEND, API, HOST_B)["event"]["outcome"] == "authenticated"
            assert a.revoke(spiffe_id("api")) == [[FRONTEND, API, HOST_B]]
            assert a.authenticated() == []
            time.sleep(0.3)
            refused = a.authenticate(FRONTEND, API, HOST_B)["event"]
            assert (refused["outcome"], refused["reason"]) == ("failed", "revoked")
            assert b.authenticated() != []  # B did not revoke anything: its own decision


def test_a_host_whose_svid_is_from_another_ca_is_refused(hosts, tmp_path):
    """B's api SVID comes from a CA that A does not trust: never authenticated, either way."""
    ns_a, ns_b, dir_a, _ = hosts
    foreign = IdentityStore.create(tmp_path / "foreign", TRUST_DOMAIN)
    with AuthenticatorProcess(_host_b(str(foreign.directory), frontend_address=False), ns_b) as b:
        with AuthenticatorProcess(_host_a(dir_a, api_address=False), ns_a) as a:
            answer = a.authenticate(FRONTEND, API, HOST_B)["event"]
            assert (answer["outcome"], answer["reason"]) == ("failed", "unknown-ca")
            assert a.authenticated() == [] and b.authenticated() == []
