"""The authenticator on one host (loopback): pre-authentication, on demand, two authenticators
as two hosts, revocation, rotation, expiry, and workloads without an SVID."""

from __future__ import annotations

import ipaddress
import shutil
import threading
import time

import pytest

from ebmesh.errors import EnvironmentProblem
from ebmesh.mtls import (
    Authenticator,
    IdentityDirectoryError,
    IdentityStore,
    Outcome,
    PairTable,
    Reason,
    UnknownIdentity,
)
from tests.mtls.conftest import TRUST_DOMAIN, spiffe_id, workload
from tests.support import pki

LOOPBACK = ipaddress.ip_address("127.0.0.1")


def _all_pairs(workloads):
    return [(a.identity, b.identity) for a in workloads for b in workloads if a is not b]


def test_every_local_pair_is_authenticated_before_start_returns(authenticators, store):
    workloads = [workload(i, f"w{i}") for i in range(1, 7)]
    pairs = _all_pairs(workloads)
    authenticator, sink = authenticators(store, workloads, pairs)
    report = authenticator.report
    assert report.authenticated == len(pairs) == 30 and report.failed == ()
    assert report.without_svid == {}
    assert sorted((p.src, p.dst, p.host) for p in sink.pairs()) == sorted(
        (s, d, None) for s, d in pairs
    )
    svids = {w.identity: store.load(w.name, w.spiffe_id) for w in workloads}
    for pair in authenticator.authenticated():
        assert pair.expires_at == min(svids[pair.src].not_after, svids[pair.dst].not_after)
    assert sink.grants == len(pairs)  # one grant each
    events = authenticator.poll_events()
    assert {e.outcome for e in events} == {Outcome.AUTHENTICATED} and len(events) == 30


def test_one_handshake_authenticates_both_directions_when_both_are_needed(authenticators, store):
    """The handshake is mutual: when the policy needs a -> b and b -> a, one serves both."""
    workloads = [workload(1, "a"), workload(2, "b"), workload(3, "c")]
    authenticator, sink = authenticators(store, workloads, [(1, 2), (2, 1), (1, 3)])
    assert sorted((p.src, p.dst) for p in sink.pairs()) == [(1, 2), (1, 3), (2, 1)]
    assert sink.grants == 3 and authenticator.report.authenticated == 3
    event = authenticator.authenticate(2, 1)  # on demand: both directions again
    assert event.outcome is Outcome.AUTHENTICATED
    assert sink.grants == 5 and (3, 1, None) not in sink


def test_only_the_pairs_the_policy_needs(authenticators, store):
    workloads = [workload(1, "a"), workload(2, "b"), workload(3, "c")]
    authenticator, sink = authenticators(store, workloads, [(1, 2)])
    assert [(p.src, p.dst) for p in sink.pairs()] == [(1, 2)]
    event = authenticator.authenticate(2, 1)
    assert event.outcome is Outcome.FAILED and event.reason is Reason.NOT_IN_POLICY
    assert (2, 1, None) not in sink


def test_on_demand_between_two_hosts_is_recorded_on_both(authenticators, store):
    """Two authenticators on loopback as two hosts: frontend lives on one, api on the other.
    The pair is bound to the peer's address on both sides."""
    frontend, api = spiffe_id("frontend"), spiffe_id("api")
    api_host, api_sink = authenticators(
        store, [workload(1, "frontend", local=False), workload(2, "api")], [(1, 2)]
    )
    frontend_host, frontend_sink = authenticators(
        store,
        [workload(1, "frontend"), workload(2, "api", local=False)],
        [(1, 2)],
        peer_port=api_host.port,
    )
    assert frontend_sink.pairs() == [] and api_sink.pairs() == []  # no host known: none dialled
    future = frontend_host.request(1, 2, "127.0.0.1")
    event = future.result(timeout=10)
    assert event.outcome is Outcome.AUTHENTICATED, event
    assert [(p.src, p.dst, p.host) for p in frontend_sink.pairs()] == [(1, 2, LOOPBACK)]
    assert [(p.src, p.dst, p.host) for p in api_sink.pairs()] == [(1, 2, LOOPBACK)]
    assert frontend_sink.pairs()[0].expires_at == api_sink.pairs()[0].expires_at
    # bound to the host: the same identities from another address are not authenticated
    assert (1, 2, ipaddress.ip_address("127.0.0.2")) not in frontend_sink
    assert (1, 2, None) not in api_sink
    listener_events = [e for e in api_host.poll_events() if e.side == "listener"]
    assert [(e.outcome, e.src_name, e.dst_name) for e in listener_events] == [
        (Outcome.AUTHENTICATED, "frontend", "api")
    ]
    assert frontend and api  # the names the SVIDs carry: see the handshake tests


def test_the_destination_host_can_ask_the_source_host(authenticators, store):
    """When only the destination's ingress lacks a pair (it restarted, say), it dials the
    source's host: the roles in TLS swap, the pair does not."""
    frontend_host, frontend_sink = authenticators(
        store, [workload(1, "frontend"), workload(2, "api", local=False)], [(1, 2)]
    )
    api_host, api_sink = authenticators(
        store,
        [workload(1, "frontend", local=False), workload(2, "api")],
        [(1, 2)],
        peer_port=frontend_host.port,
    )
    event = api_host.authenticate(1, 2, "127.0.0.1")
    assert event.outcome is Outcome.AUTHENTICATED, event
    assert [(p.src, p.dst, p.host) for p in api_sink.pairs()] == [(1, 2, LOOPBACK)]
    assert [(p.src, p.dst, p.host) for p in frontend_sink.pairs()] == [(1, 2, LOOPBACK)]


def test_a_remote_pair_is_pre_authenticated_when_its_host_answers(authenticators, store):
    api_host, api_sink = authenticators(
        store, [workload(1, "frontend", local=False), workload(2, "api")], [(1, 2)]
    )
    frontend_host, frontend_sink = authenticators(
        store,
        [workload(1, "frontend"), workload(2, "api", local=False, addresses=["127.0.0.1"])],
        [(1, 2)],
        peer_port=api_host.port,
    )
    deadline = time.monotonic() + 10
    while (1, 2, LOOPBACK) not in api_sink and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (1, 2, LOOPBACK) in frontend_sink and (1, 2, LOOPBACK) in api_sink


def test_an_unreachable_host_fails_fast_with_its_reason(authenticators, store):
    authenticator, sink = authenticators(
        store, [workload(1, "frontend"), workload(2, "api", local=False)], [(1, 2)], peer_port=1
    )
    began = time.monotonic()
    event = authenticator.authenticate(1, 2, "127.0.0.1")
    assert time.monotonic() - began < 1.0  # refused, not timed out
    assert event.reason is Reason.UNREACHABLE and "port 1" in event.detail
    assert authenticator.request(1, 2, "127.0.0.1") is None  # backs off after a failure
    no_host = authenticator.authenticate(1, 2, None)
    assert no_host.reason is Reason.UNREACHABLE and "host's address is needed" in no_host.detail


def test_requests_for_a_pair_in_flight_are_joined(authenticators, store):
    """The kernel may signal a pair on every refused connection: while one handshake for it
    is under way (held here in its event callback), more requests start nothing."""
    armed, reached, release = threading.Event(), threading.Event(), threading.Event()

    def hold(event):
        if armed.is_set():
            reached.set()
            assert release.wait(10)

    authenticator, sink = authenticators(
        store, [workload(1, "a"), workload(2, "b")], [(1, 2)], on_event=hold
    )
    grants = sink.grants
    armed.set()
    first = authenticator.request(1, 2)
    assert first is not None and reached.wait(10)
    assert [authenticator.request(1, 2) for _ in range(19)] == [None] * 19
    release.set()
    assert first.result(timeout=10).outcome is Outcome.AUTHENTICATED
    assert sink.grants - grants == 1


def test_a_workload_without_svid_cannot_authenticate_and_is_named(authenticators, tmp_path):
    """No issuer, and SVIDs delivered for a and b only: c is reported, its pairs fail with
    the reason, the others are authenticated."""
    ca = pki.make_ca(TRUST_DOMAIN)
    (tmp_path / "bundle.pem").write_bytes(ca.pem)
    for name in ("a", "b"):
        pki.make_leaf(ca, spiffe_id(name)).write(tmp_path, name)
    workloads = [workload(1, "a"), workload(2, "b"), workload(3, "c")]
    authenticator, sink = authenticators(
        IdentityStore(tmp_path), workloads, [(1, 2), (1, 3), (3, 2)]
    )
    report = authenticator.report
    assert list(report.without_svid) == ["c"]
    assert "no SVID (svid/c.pem and .key) and no issuer" in report.without_svid["c"]
    assert report.authenticated == 1
    assert sorted((e.src, e.dst, e.reason) for e in report.failed) == [
        (1, 3, Reason.NO_SVID),
        (3, 2, Reason.NO_SVID),
    ]
    assert [(p.src, p.dst) for p in sink.pairs()] == [(1, 2)]


def test_a_policy_with_mtls_and_no_bundle_fails_to_start(tmp_path):
    authenticator = Authenticator(tmp_path, [workload(1, "a")], [], listen=[])
    with pytest.raises(IdentityDirectoryError, match="no trusted CAs"):
        authenticator.start()


def test_a_port_in_use_is_a_clear_error(authenticators, store):
    first, _ = authenticators(store, [workload(1, "a")], [])
    second = Authenticator(store, [workload(1, "a")], [], listen=["127.0.0.1"], port=first.port)
    with pytest.raises(EnvironmentProblem, match=f"cannot listen on 127.0.0.1 port {first.port}"):
        second.start()


def test_revoke_drops_every_pair_at_once_and_refuses_the_certificate(authenticators, store):
    workloads = [workload(1, "a"), workload(2, "b"), workload(3, "c")]
    authenticator, sink = authenticators(store, workloads, _all_pairs(workloads))
    old = store.load("b", spiffe_id("b"))
    dropped = authenticator.revoke("b")
    assert sorted((k.src, k.dst) for k in dropped) == [(1, 2), (2, 1), (2, 3), (3, 2)]
    assert sorted((p.src, p.dst) for p in sink.pairs()) == [(1, 3), (3, 1)]
    assert {e.outcome for e in authenticator.poll_events() if e.dst == 2 or e.src == 2} >= {
        Outcome.REVOKED
    }
    again = authenticator.authenticate(1, 2)
    assert again.outcome is Outcome.FAILED
    assert again.reason is Reason.REVOKED and "revoked" in again.detail
    assert old.fingerprint in store.revoked()  # written down: a restart does not forget
    assert authenticator.without_svid() == {"b": "its SVID was revoked; a new one must replace it"}
    # The issuer does not hand out a new one behind the operator's back...
    authenticator.reload()
    assert (1, 2, None) not in sink
    # ... until asked: then the pairs come back with the new SVID.
    fresh = authenticator.renew("b")
    assert fresh.fingerprint != old.fingerprint
    assert len(sink.pairs()) == 6  # the local pairs are back when renew() returns


def test_revoke_by_spiffe_id_of_a_remote_workload(authenticators, store):
    api_host, api_sink = authenticators(
        store, [workload(1, "frontend", local=False), workload(2, "api")], [(1, 2)]
    )
    frontend_host, frontend_sink = authenticators(
        store,
        [workload(1, "frontend"), workload(2, "api", local=False)],
        [(1, 2)],
        peer_port=api_host.port,
        retry_after_failure=0.0,
    )
    assert frontend_host.authenticate(1, 2, "127.0.0.1").outcome is Outcome.AUTHENTICATED
    dropped = frontend_host.revoke(spiffe_id("api"))
    assert [(k.src, k.dst, k.host) for k in dropped] == [(1, 2, LOOPBACK)]
    assert frontend_sink.pairs() == []
    refused = frontend_host.authenticate(1, 2, "127.0.0.1")
    assert refused.reason is Reason.REVOKED and "is revoked" in refused.detail
    api_host.renew("api")  # the api host replaces its SVID: the new one is accepted
    assert frontend_host.authenticate(1, 2, "127.0.0.1").outcome is Outcome.AUTHENTICATED


def test_revoke_of_an_unknown_identity_says_so(authenticators, store):
    authenticator, _ = authenticators(store, [workload(1, "a")], [])
    with pytest.raises(UnknownIdentity, match="no workload or SPIFFE ID 'nobody'"):
        authenticator.revoke("nobody")


def _watch(sink: PairTable, pair, seconds: float) -> tuple[int, float, set[float]]:
    """Sample `pair` in the sink every 10 ms for `seconds`: (samples where it was missing,
    total samples, the expiries seen)."""
    missing, samples, expiries = 0, 0, set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        expires_at = sink.expires_at(*pair)
        samples += 1
        if expires_at is None:
            missing += 1
        else:
            expiries.add(expires_at)
        time.sleep(0.01)
    return missing, samples, expiries


def test_rotation_keeps_pairs_authenticated_past_the_first_certificates_expiry(
    authenticators, store
):
    """4 s SVIDs, renewed at half-life by the issuer: over 9 s the pair never lapses."""
    short = IdentityStore(store.directory, lifetime=4.0)
    workloads = [workload(1, "a"), workload(2, "b")]
    authenticator, sink = authenticators(short, workloads, [(1, 2)], reload_interval=0.2)
    first = short.load("a", spiffe_id("a"))
    missing, samples, expiries = _watch(sink, (1, 2, None), 9.0)
    assert missing == 0, f"the pair lapsed in {missing} of {samples} samples"
    assert max(expiries) > first.not_after + 4  # renewed more than once
    assert short.load("a", spiffe_id("a")).fingerprint != first.fingerprint


def test_a_replaced_svid_on_disk_is_picked_up(authenticators, tmp_path):
    """No issuer: an external one replaces the files; the pairs move to the new certificate
    without a restart."""
    ca = pki.make_ca(TRUST_DOMAIN)
    (tmp_path / "bundle.pem").write_bytes(ca.pem)
    for name in ("a", "b"):
        pki.make_leaf(ca, spiffe_id(name), not_after=pki.now() + pki.HOUR).write(tmp_path, name)
    store = IdentityStore(tmp_path)
    authenticator, sink = authenticators(
        store, [workload(1, "a"), workload(2, "b")], [(1, 2)], reload_interval=0.1
    )
    before = sink.expires_at(1, 2)
    pki.make_leaf(ca, spiffe_id("a"), not_after=pki.now() + 2 * pki.HOUR).write(tmp_path, "b-tmp")
    later = pki.make_leaf(ca, spiffe_id("a"), not_after=pki.now() + 2 * pki.HOUR)
    later.write(tmp_path, "a")
    # b's certificate (1 h) now decides the expiry; replace it too
    pki.make_leaf(ca, spiffe_id("b"), not_after=pki.now() + 2 * pki.HOUR).write(tmp_path, "b")
    deadline = time.monotonic() + 10
    while (sink.expires_at(1, 2) or 0) < before + 1800 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sink.expires_at(1, 2) > before + 1800


def test_an_expired_pair_needs_a_fresh_handshake(authenticators, tmp_path):
    """Certificates delivered with 3 s to live and no issuer: the pair ends with them."""
    ca = pki.make_ca(TRUST_DOMAIN)
    (tmp_path / "bundle.pem").write_bytes(ca.pem)
    ends = pki.now() + pki.HOUR / 1200  # 3 s
    for name in ("a", "b"):
        pki.make_leaf(ca, spiffe_id(name), not_after=ends).write(tmp_path, name)
    authenticator, sink = authenticators(
        IdentityStore(tmp_path), [workload(1, "a"), workload(2, "b")], [(1, 2)]
    )
    assert (1, 2, None) in sink
    time.sleep(max(0.0, ends.timestamp() - time.time()) + 0.3)
    assert (1, 2, None) not in sink
    deadline = time.monotonic() + 5
    events = []
    while not any(e.outcome is Outcome.EXPIRED for e in events) and time.monotonic() < deadline:
        events += authenticator.poll_events(timeout=0.1)
    assert any(e.outcome is Outcome.EXPIRED and (e.src, e.dst) == (1, 2) for e in events)
    assert authenticator.authenticated() == []
    again = authenticator.authenticate(1, 2)
    assert again.outcome is Outcome.FAILED and again.reason is Reason.EXPIRED
    assert "svid/a.pem expired" in again.detail


def test_a_bundle_that_no_longer_trusts_the_ca_ends_the_pairs(authenticators, store):
    workloads = [workload(1, "a"), workload(2, "b")]
    authenticator, sink = authenticators(store, workloads, [(1, 2)], reload_interval=0.1)
    assert (1, 2, None) in sink
    (store.directory / "bundle.pem").write_bytes(pki.make_ca(name="new").pem)
    deadline = time.monotonic() + 10
    while (1, 2, None) in sink and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (1, 2, None) not in sink
    assert "not issued by a CA of bundle.pem" in authenticator.without_svid()["a"]


def test_events_reach_a_callback_too(store):
    seen, arrived = [], threading.Event()

    def on_event(event):
        seen.append(event)
        arrived.set()

    authenticator = Authenticator(
        store, [workload(1, "a"), workload(2, "b")], [(1, 2)], listen=[], on_event=on_event
    )
    with authenticator:
        assert arrived.wait(5)
    assert [(e.outcome, e.src_name, e.dst_name) for e in seen] == [
        (Outcome.AUTHENTICATED, "a", "b")
    ]
    assert "mtls a -> b: authenticated until" in str(seen[0])


def test_an_identity_directory_can_be_copied_to_another_host(tmp_path, store):
    """What a second host needs: the bundle, and an SVID of its own workloads (here issued by
    the first host's issuer and carried over, as SPIRE would deliver it)."""
    other = tmp_path / "other-host"
    (other / "svid").mkdir(parents=True)
    shutil.copy(store.directory / "bundle.pem", other / "bundle.pem")
    store.issue("api", spiffe_id("api"))
    for suffix in (".pem", ".key"):
        shutil.copy(store.directory / "svid" / f"api{suffix}", other / "svid" / f"api{suffix}")
    svid = IdentityStore(other).load("api", spiffe_id("api"))
    assert svid.fingerprint == store.load("api", spiffe_id("api")).fingerprint


def test_two_hosts_over_ipv6(authenticators, store):
    api_host, api_sink = authenticators(
        store, [workload(1, "frontend", local=False), workload(2, "api")], [(1, 2)], listen=["::1"]
    )
    frontend_host, frontend_sink = authenticators(
        store,
        [workload(1, "frontend"), workload(2, "api", local=False)],
        [(1, 2)],
        listen=[],
        peer_port=api_host.port,
    )
    event = frontend_host.authenticate(1, 2, "::1")
    assert event.outcome is Outcome.AUTHENTICATED, event
    assert [p.host for p in api_sink.pairs()] == [ipaddress.ip_address("::1")]
    assert [p.host for p in frontend_sink.pairs()] == [ipaddress.ip_address("::1")]


def test_the_default_listener_takes_ipv4_peers_as_ipv4_addresses(authenticators, store):
    """listen=None: one dual-stack socket; an IPv4 peer arrives as ::ffff:a.b.c.d and is
    recorded as the IPv4 address the datapath sees."""
    api_host, api_sink = authenticators(
        store, [workload(1, "frontend", local=False), workload(2, "api")], [(1, 2)], listen=None
    )
    assert api_host.addresses == ["::"]
    frontend_host, _ = authenticators(
        store,
        [workload(1, "frontend"), workload(2, "api", local=False)],
        [(1, 2)],
        listen=[],
        peer_port=api_host.port,
    )
    assert frontend_host.authenticate(1, 2, "127.0.0.1").outcome is Outcome.AUTHENTICATED
    assert [p.host for p in api_sink.pairs()] == [LOOPBACK]


class _HeldSink(PairTable):
    """A sink whose grants wait until released: a handshake held at its last step."""

    def __init__(self):
        super().__init__()
        self.reached, self.release = threading.Event(), threading.Event()

    def grant(self, src, dst, host, expires_at):
        self.reached.set()
        assert self.release.wait(10)
        super().grant(src, dst, host, expires_at)


def test_a_revocation_during_a_handshake_wins(authenticators, store):
    """frontend's host has checked api's certificate; api's host is about to answer ok. A
    revocation of api now must keep the pair from being granted when the answer lands."""
    held = _HeldSink()
    api_host, _ = authenticators(
        store, [workload(1, "frontend", local=False), workload(2, "api")], [(1, 2)], sink=held
    )
    frontend_host, frontend_sink = authenticators(
        store,
        [workload(1, "frontend"), workload(2, "api", local=False)],
        [(1, 2)],
        listen=[],
        peer_port=api_host.port,
    )
    future = frontend_host.request(1, 2, "127.0.0.1")
    assert held.reached.wait(10)
    frontend_host.revoke(spiffe_id("api"))
    held.release.set()
    event = future.result(timeout=10)
    assert (event.outcome, event.reason) == (Outcome.FAILED, Reason.REVOKED)
    assert frontend_sink.pairs() == []


def test_serve_forever_runs_in_the_foreground_until_stopped(store):
    authenticator = Authenticator(store, [workload(1, "a"), workload(2, "b")], [(1, 2)], listen=[])
    foreground = threading.Thread(target=authenticator.serve_forever)
    foreground.start()
    deadline = time.monotonic() + 10
    while not authenticator.authenticated() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [(p.src, p.dst) for p in authenticator.authenticated()] == [(1, 2)]
    assert foreground.is_alive()
    authenticator.stop()
    foreground.join(5)
    assert not foreground.is_alive()
    with pytest.raises(RuntimeError, match="starts once"):
        authenticator.start()
