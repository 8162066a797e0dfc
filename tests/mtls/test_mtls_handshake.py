"""Real TLS 1.3 handshakes on loopback against hostile peers: every bad certificate, presented
by a listener or by a client, is never authenticated, and the reason says why.

The hostile side is plain `ssl` with certificates from tests/support/pki.py: none
of ebmesh's code, so it behaves like an attacker's or a misconfigured peer's.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from ebmesh.mtls import Outcome, Reason
from ebmesh.mtls.spiffe import server_name
from tests.mtls.conftest import spiffe_id, workload
from tests.support import pki

FRONTEND, API, OTHER = spiffe_id("frontend"), spiffe_id("api"), spiffe_id("other")


@pytest.fixture
def ca(store) -> pki.Ca:
    """The identity directory's own issuer, to make bad certificates that it trusts."""
    issuer = store.issuer()
    return pki.Ca(issuer.certificate, issuer.key)


# Each case: a certificate made from the trusted CA, and the reason the side that checks
# it must give. Presented by a listener (as D) or by a client (as S).
def _cases(identity: str):
    later, earlier = pki.now() + pki.HOUR, pki.now() - pki.HOUR
    return {
        "expired": (
            lambda ca: pki.make_leaf(
                ca, identity, not_before=earlier - pki.HOUR, not_after=earlier
            ),
            Reason.EXPIRED,
        ),
        "not yet valid": (
            lambda ca: pki.make_leaf(ca, identity, not_before=later, not_after=later + pki.HOUR),
            Reason.NOT_YET_VALID,
        ),
        "foreign CA": (
            lambda ca: pki.make_leaf(pki.make_ca(name="foreign"), identity),
            Reason.UNKNOWN_CA,
        ),
        "foreign CA of the same name": (
            lambda ca: pki.make_leaf(pki.make_ca(subject=ca.certificate.subject), identity),
            Reason.UNKNOWN_CA,  # the name matches, its key identifier does not
        ),
        "forged signature": (
            lambda ca: pki.make_leaf(ca, identity, signer=ec.generate_private_key(ec.SECP256R1())),
            Reason.BAD_SIGNATURE,
        ),
        "broken signature": (
            lambda ca: pki.with_broken_signature(pki.make_leaf(ca, identity)),
            Reason.BAD_SIGNATURE,
        ),
        "wrong SPIFFE ID": (lambda ca: pki.make_leaf(ca, OTHER), None),  # reason: per side
        "no URI SAN": (lambda ca: pki.make_leaf(ca, ()), Reason.NOT_AN_SVID),
        "two URI SANs": (lambda ca: pki.make_leaf(ca, (identity, OTHER)), Reason.NOT_AN_SVID),
        "a CA as leaf": (lambda ca: pki.make_leaf(ca, identity, is_ca=True), Reason.NOT_AN_SVID),
        "no TLS purpose": (
            lambda ca: pki.make_leaf(ca, identity, purposes=(ExtendedKeyUsageOID.CODE_SIGNING,)),
            Reason.UNTRUSTED,
        ),
    }


LISTENER_CASES = _cases(API)
CLIENT_CASES = _cases(FRONTEND)


class HostileListener:
    """A TLS 1.3 listener presenting `leaf`; it accepts anything and says ok (a liar)."""

    def __init__(self, context: ssl.SSLContext):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.context = context
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return  # closed
            try:
                with self.context.wrap_socket(connection, server_side=True) as tls:
                    tls.recv(4096)
                    tls.sendall(json.dumps({"ok": True, "expires_at": 4e9}).encode() + b"\n")
            except (OSError, ssl.SSLError):
                pass

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        self.sock.close()
        self.thread.join(5)


def _client_side(authenticators, store, port):
    """frontend is local here; api is remote, its host's authenticator at 127.0.0.1:port."""
    workloads = [workload(1, "frontend"), workload(2, "api", local=False, addresses=["127.0.0.1"])]
    return authenticators(store, workloads, [(1, 2)], listen=[], peer_port=port)


@pytest.mark.parametrize("case", sorted(LISTENER_CASES))
def test_a_listener_with_a_bad_certificate_is_never_authenticated(
    authenticators, store, ca, tmp_path, case
):
    make, reason = LISTENER_CASES[case]
    hostile = HostileListener(pki.server_context(make(ca), ca.pem, tmp_path))
    try:
        authenticator, sink = _client_side(authenticators, store, hostile.port)
        event = authenticator.authenticate(1, 2, "127.0.0.1")
    finally:
        hostile.close()
    assert event.outcome is Outcome.FAILED
    assert event.reason is (reason or Reason.WRONG_SPIFFE_ID), event.detail
    assert sink.pairs() == [] and authenticator.authenticated() == []
    assert "listener" in event.detail


def test_a_listener_that_answers_with_a_valid_svid_of_another_workload(
    authenticators, store, ca, tmp_path
):
    """A real SVID of the mesh, but not the destination asked for: an impostor."""
    impostor = pki.make_leaf(ca, FRONTEND)
    hostile = HostileListener(pki.server_context(impostor, ca.pem, tmp_path))
    try:
        authenticator, sink = _client_side(authenticators, store, hostile.port)
        event = authenticator.authenticate(1, 2, "127.0.0.1")
    finally:
        hostile.close()
    assert event.reason is Reason.WRONG_SPIFFE_ID
    assert f"presented an SVID of {FRONTEND}, not of {API}" in event.detail
    assert sink.pairs() == []


def test_openssl_refuses_a_key_that_is_not_the_certificates(ca):
    """Why no peer can present an SVID whose key it lacks: the handshake signs with the key
    (CertificateVerify), and OpenSSL will not even load a pair that does not match."""
    mismatched = pki.with_other_key(pki.make_leaf(ca, API))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as directory:
        with pytest.raises(ssl.SSLError, match="KEY_VALUES_MISMATCH|key values mismatch"):
            context.load_cert_chain(*mismatched.files(Path(directory), "mismatched"))


def _listener_side(authenticators, store, pairs=((1, 2),)):
    """api is local here, with its listener; frontend is remote (of no known host: this side
    does not dial it)."""
    workloads = [workload(1, "frontend", local=False), workload(2, "api")]
    return authenticators(store, workloads, list(pairs))


def _hostile_client(port: int, context: ssl.SSLContext, destination: str = API) -> dict | str:
    """What a plain TLS client learns: the listener's answer, or the TLS error."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            with context.wrap_socket(sock, server_hostname=server_name(destination)) as tls:
                tls.sendall(json.dumps({"v": 1, "role": "source"}).encode() + b"\n")
                data = tls.recv(4096)
        except ssl.SSLError as error:
            return f"TLS error: {error.reason}"
    return json.loads(data) if data else "closed"


def _listener_failure(authenticator):
    """The one failure the listener reported (it may land just after the client is done)."""
    events, deadline = [], time.monotonic() + 5
    while time.monotonic() < deadline:
        events += authenticator.poll_events(timeout=0.1)
        failures = [e for e in events if e.outcome is Outcome.FAILED and e.side == "listener"]
        if failures:
            break
    assert len(failures) == 1, events
    return failures[0]


@pytest.mark.parametrize("case", sorted(CLIENT_CASES))
def test_a_client_with_a_bad_certificate_is_never_authenticated(
    authenticators, store, ca, tmp_path, case
):
    make, reason = CLIENT_CASES[case]
    authenticator, sink = _listener_side(authenticators, store)
    answer = _hostile_client(authenticator.port, pki.client_context(make(ca), ca.pem, tmp_path))
    assert not (isinstance(answer, dict) and answer.get("ok")), answer
    failure = _listener_failure(authenticator)
    assert failure.reason is (reason or Reason.UNKNOWN_IDENTITY), failure.detail
    assert sink.pairs() == [] and authenticator.authenticated() == []


def test_a_client_without_a_certificate_is_refused(authenticators, store, ca):
    authenticator, sink = _listener_side(authenticators, store)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=ca.pem.decode())
    answer = _hostile_client(authenticator.port, context)
    assert not isinstance(answer, dict)
    assert _listener_failure(authenticator).reason is Reason.NOT_AN_SVID
    assert sink.pairs() == []


def test_a_valid_client_for_a_pair_the_policy_does_not_need_is_refused(
    authenticators, store, ca, tmp_path
):
    authenticator, sink = _listener_side(authenticators, store, pairs=[])
    answer = _hostile_client(
        authenticator.port, pki.client_context(pki.make_leaf(ca, FRONTEND), ca.pem, tmp_path)
    )
    assert answer["ok"] is False and answer["reason"] == "not-in-policy"
    assert _listener_failure(authenticator).reason is Reason.NOT_IN_POLICY
    assert sink.pairs() == []


def test_an_unknown_destination_is_refused_in_the_handshake(authenticators, store, ca, tmp_path):
    authenticator, sink = _listener_side(authenticators, store)
    context = pki.client_context(pki.make_leaf(ca, FRONTEND), ca.pem, tmp_path)
    answer = _hostile_client(authenticator.port, context, destination=spiffe_id("nobody"))
    assert "UNRECOGNIZED_NAME" in answer
    assert _listener_failure(authenticator).reason is Reason.UNKNOWN_DESTINATION


def test_a_good_client_gets_tls13_and_the_destinations_own_svid(
    authenticators, store, ca, tmp_path
):
    """The positive control of the hostile client: the same client with a good SVID passes,
    over TLS 1.3, and sees exactly the SVID of the destination it named."""
    authenticator, sink = _listener_side(authenticators, store)
    context = pki.client_context(pki.make_leaf(ca, FRONTEND), ca.pem, tmp_path)
    with socket.create_connection(("127.0.0.1", authenticator.port), timeout=5) as sock:
        with context.wrap_socket(sock, server_hostname=server_name(API)) as tls:
            assert tls.version() == "TLSv1.3"
            from cryptography import x509

            presented = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
            tls.sendall(b'{"v": 1, "role": "source"}\n')
            answer = json.loads(tls.recv(4096))
    assert presented.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier) == [API]
    assert answer["ok"] is True
    [pair] = sink.pairs()
    assert (pair.src, pair.dst, str(pair.host)) == (1, 2, "127.0.0.1")
    assert pair.expires_at == pytest.approx(answer["expires_at"])


def test_a_tls12_client_is_refused(authenticators, store, ca, tmp_path):
    authenticator, sink = _listener_side(authenticators, store)
    context = pki.client_context(pki.make_leaf(ca, FRONTEND), ca.pem, tmp_path)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    answer = _hostile_client(authenticator.port, context)
    assert isinstance(answer, str) and answer.startswith("TLS error")
    assert _listener_failure(authenticator).reason is Reason.PROTOCOL
    assert sink.pairs() == []
