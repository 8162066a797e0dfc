"""The handshake of two local workloads, both halves in one thread over memory: the same
verification as between hosts. The store never hands it a bad SVID, so these tests build
the SVIDs themselves, to show that OpenSSL and the checks would refuse them anyway."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization

from ebmesh.mtls import Reason, tls
from ebmesh.mtls import certificates as certs
from ebmesh.mtls.handshake import Role, ServedWorkloads, mutual_in_memory
from ebmesh.mtls.reasons import AuthFailure
from ebmesh.mtls.store import Svid
from tests.mtls.conftest import spiffe_id
from tests.support import pki

A, B = spiffe_id("a"), spiffe_id("b")


def _svid(leaf: pki.Leaf, workload: str) -> Svid:
    """An Svid as the store would make it, without the store's checks."""
    certificate = leaf.certificate
    return Svid(
        workload=workload,
        spiffe_id=(certs.uri_sans(certificate) or [""])[0],
        chain=(certificate,),
        chain_pem=certificate.public_bytes(serialization.Encoding.PEM),
        key_pem=pki.key_pem(leaf.key),
        fingerprint=certs.fingerprint(certificate),
        not_before=certs.not_before(certificate),
        not_after=certs.not_after(certificate),
        key_type="ecdsa-p256",
        issued_here=False,
    )


def _handshake(
    ca: pki.Ca, client_leaf: pki.Leaf, listener_leaf: pki.Leaf, expected=B, checked=None
):
    bundle = ca.pem.decode()
    client, listener = _svid(client_leaf, "a"), _svid(listener_leaf, "b")
    served = ServedWorkloads(bundle, {B: (listener, tls.server_context(listener, bundle))})
    check = checked.append if checked is not None else (lambda peer: None)
    return mutual_in_memory(
        tls.client_context(client, bundle), client, expected, Role.SOURCE, served, check
    )


@pytest.fixture
def ca() -> pki.Ca:
    return pki.make_ca()


def test_two_good_svids_authenticate_and_both_leaves_are_checked(ca):
    checked = []
    result = _handshake(ca, pki.make_leaf(ca, A), pki.make_leaf(ca, B), checked=checked)
    assert (result.source_id, result.destination_id) == (A, B)
    assert sorted(peer.spiffe_id for peer in checked) == [A, B]  # each half checked the other


EXPIRED = {"not_before": pki.now() - 3 * pki.HOUR, "not_after": pki.now() - 2 * pki.HOUR}


@pytest.mark.parametrize(
    "client, listener, expected, reason",
    [
        ("good", "expired", B, Reason.EXPIRED),
        ("expired", "good", B, Reason.EXPIRED),  # found by the listener's half
        ("foreign", "good", B, Reason.UNKNOWN_CA),
        ("good", "foreign", B, Reason.UNKNOWN_CA),
        ("good", "good", spiffe_id("c"), Reason.UNKNOWN_DESTINATION),
        ("good", "wrong id", B, Reason.WRONG_SPIFFE_ID),
    ],
)
def test_bad_svids_are_refused_in_memory_too(ca, client, listener, expected, reason):
    foreign = pki.make_ca(name="foreign")
    make = {
        "good": lambda identity: pki.make_leaf(ca, identity),
        "expired": lambda identity: pki.make_leaf(ca, identity, **EXPIRED),
        "foreign": lambda identity: pki.make_leaf(foreign, identity),
        "wrong id": lambda identity: pki.make_leaf(ca, spiffe_id("c")),
    }
    with pytest.raises(AuthFailure) as caught:
        _handshake(ca, make[client](A), make[listener](B), expected=expected)
    assert caught.value.reason is reason, caught.value.detail
