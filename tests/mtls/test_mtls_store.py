"""The identity directory: issuing, SVIDs on disk used as given, every broken SVID refused
with its reason, changes picked up, revocations kept."""

from __future__ import annotations

import os
import stat
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from ebmesh.mtls import IdentityDirectoryError, IdentityStore, Reason, SvidUnavailable
from tests.mtls.conftest import TRUST_DOMAIN, spiffe_id
from tests.support import pki

API = spiffe_id("api")


def test_ca_init_makes_an_issuer_and_a_bundle(store):
    directory = store.directory
    assert {p.name for p in directory.iterdir()} == {"bundle.pem", "ca.pem", "ca.key", "svid"}
    assert stat.S_IMODE(os.stat(directory / "ca.key").st_mode) == 0o600
    issuer = store.issuer()
    assert issuer.trust_domain == TRUST_DOMAIN
    assert issuer.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert [c.fingerprint(c.signature_hash_algorithm) for c in store.bundle()] == [
        issuer.certificate.fingerprint(issuer.certificate.signature_hash_algorithm)
    ]


def test_ca_init_refuses_a_directory_that_has_an_issuer(store):
    with pytest.raises(IdentityDirectoryError, match="already has an issuer"):
        IdentityStore.create(store.directory, TRUST_DOMAIN)


def test_ca_init_adds_to_an_existing_bundle(tmp_path):
    foreign = pki.make_ca("other.example")
    (tmp_path / "bundle.pem").write_bytes(foreign.pem)
    store = IdentityStore.create(tmp_path, TRUST_DOMAIN)
    assert len(store.bundle()) == 2


def test_an_issued_svid_is_a_spiffe_x509_svid(store):
    svid = store.load("api", API)
    leaf = svid.chain[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [API]
    assert len(list(sans)) == 1  # the SPIFFE ID is the only SAN
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    purposes = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(purposes) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert leaf.public_key().curve.name == "secp256r1"
    lifetime = svid.not_after - time.time()
    assert 3500 < lifetime <= 3600  # default 1 h
    assert svid.renew_at == pytest.approx((svid.not_before + svid.not_after) / 2)
    assert (store.directory / "svid" / "api.pem").exists()
    assert stat.S_IMODE(os.stat(store.directory / "svid" / "api.key").st_mode) == 0o600


def test_ed25519_svids(tmp_path):
    store = IdentityStore.create(tmp_path, TRUST_DOMAIN, key_type="ed25519")
    svid = IdentityStore(tmp_path, key_type="ed25519").load("api", API)
    assert isinstance(svid.chain[0].public_key(), ed25519.Ed25519PublicKey)
    assert svid.key_type == "ed25519"
    assert store.issuer().certificate.signature_hash_algorithm is None  # an Ed25519 CA


def test_an_svid_on_disk_is_used_as_given(store):
    """An external issuer (SPIRE) delivered it: ebmesh neither replaces nor renews it, even
    past its half-life, as long as there is no issuer here."""
    ca = pki.make_ca()
    (store.directory / "bundle.pem").write_bytes(ca.pem)
    for name in ("ca.pem", "ca.key"):
        (store.directory / name).unlink()
    delivered = pki.make_leaf(
        ca, API, not_before=pki.now() - 50 * pki.HOUR / 60, not_after=pki.now() + pki.HOUR / 6
    )
    delivered.write(store.directory, "api")
    svid = store.load("api", API)
    assert svid.chain[0] == delivered.certificate
    assert not svid.issued_here
    assert time.time() > svid.renew_at  # past half-life, still the one given


def test_no_svid_and_no_issuer_means_no_svid(tmp_path):
    (tmp_path / "bundle.pem").write_bytes(pki.make_ca().pem)
    store = IdentityStore(tmp_path)
    assert store.svid("api", API) is None
    with pytest.raises(SvidUnavailable) as caught:
        store.load("api", API)
    assert caught.value.reason is Reason.NO_SVID
    assert "no SVID (svid/api.pem and .key) and no issuer" in str(caught.value)


def test_a_missing_or_nearly_expired_svid_is_issued_when_there_is_an_issuer(store):
    issued = store.load("api", API)
    assert store.load("api", API) == issued  # valid: kept
    short = IdentityStore(store.directory, lifetime=2.0)
    first = short.issue("api", API)
    time.sleep(max(0.0, first.renew_at - time.time()) + 0.05)
    renewed = short.load("api", API)
    assert renewed.fingerprint != first.fingerprint  # past half-life: issued anew
    assert renewed.not_before >= first.not_before


def test_an_expired_svid_is_reissued_with_an_issuer_and_refused_without(store):
    ca_signed = store.issuer()
    expired = pki.make_leaf(
        pki.Ca(ca_signed.certificate, ca_signed.key),
        API,
        not_before=pki.now() - 3 * pki.HOUR,
        not_after=pki.now() - 2 * pki.HOUR,
    )
    expired.write(store.directory, "api")
    assert store.load("api", API).fingerprint != expired.certificate.fingerprint(
        expired.certificate.signature_hash_algorithm
    )
    expired.write(store.directory, "api")
    for name in ("ca.pem", "ca.key"):
        (store.directory / name).unlink()
    with pytest.raises(SvidUnavailable) as caught:
        store.load("api", API)
    assert caught.value.reason is Reason.EXPIRED


def _issuer_ca(store) -> pki.Ca:
    issuer = store.issuer()
    return pki.Ca(issuer.certificate, issuer.key)


BROKEN = {
    "key of another certificate": (
        lambda ca: pki.with_other_key(pki.make_leaf(ca, API)),
        Reason.KEY_MISMATCH,
        "svid/api.key is not the key of svid/api.pem",
    ),
    "another SPIFFE ID": (
        lambda ca: pki.make_leaf(ca, spiffe_id("db")),
        Reason.WRONG_SPIFFE_ID,
        f"an SVID of {spiffe_id('db')}, not of {API}",
    ),
    "two URI SANs": (
        lambda ca: pki.make_leaf(ca, (API, spiffe_id("db"))),
        Reason.NOT_AN_SVID,
        "2 URI SANs",
    ),
    "no URI SAN": (lambda ca: pki.make_leaf(ca, ()), Reason.NOT_AN_SVID, "0 URI SANs"),
    "a CA certificate": (
        lambda ca: pki.make_leaf(ca, API, is_ca=True),
        Reason.NOT_AN_SVID,
        "is a CA, not an SVID",
    ),
    "a foreign CA": (
        lambda ca: pki.make_leaf(pki.make_ca(name="foreign"), API),
        Reason.UNKNOWN_CA,
        "not issued by a CA of bundle.pem",
    ),
    "a forged signature": (
        lambda ca: pki.make_leaf(ca, API, signer=ec.generate_private_key(ec.SECP256R1())),
        Reason.BAD_SIGNATURE,
        "whose signature does not verify",
    ),
    "a broken signature": (
        lambda ca: pki.with_broken_signature(pki.make_leaf(ca, API)),
        Reason.BAD_SIGNATURE,
        "whose signature does not verify",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_svid_is_refused_with_its_reason_and_never_overwritten(store, case):
    make, reason, message = BROKEN[case]
    broken = make(_issuer_ca(store))
    broken.write(store.directory, "api")
    before = (store.directory / "svid" / "api.pem").read_bytes()
    with pytest.raises(SvidUnavailable) as caught:
        store.load("api", API)
    assert caught.value.reason is reason
    assert message in caught.value.detail
    assert store.svid("api", API) is None
    assert (store.directory / "svid" / "api.pem").read_bytes() == before


def test_unparsable_files_are_reported(store):
    (store.directory / "svid" / "api.pem").write_text("not a certificate")
    (store.directory / "svid" / "api.key").write_text("not a key")
    with pytest.raises(SvidUnavailable) as caught:
        store.load("api", API)
    assert caught.value.reason is Reason.MALFORMED


def test_no_bundle_is_a_clear_error(tmp_path):
    with pytest.raises(
        IdentityDirectoryError, match=r"bundle.pem is missing or empty.*ebmesh ca init"
    ):
        IdentityStore(tmp_path).bundle()


def test_a_workload_name_cannot_leave_the_directory(store):
    with pytest.raises(SvidUnavailable):
        store.load("../ca", API)


def test_reload_sees_replaced_files_and_not_its_own_writes(store):
    store.load("api", API)
    assert store.reload()  # first call: everything is new
    store.load("db", spiffe_id("db"))  # issued by the store itself
    assert not store.reload()
    # fresh: with an issuer, one past its half-life would be renewed at once
    replacement = pki.make_leaf(_issuer_ca(store), API, not_before=pki.now())
    replacement.write(store.directory, "api")
    changes = store.reload()
    assert changes.svids == {"api"} and not changes.bundle
    assert store.load("api", API).chain[0] == replacement.certificate
    bundle = store.directory / "bundle.pem"
    bundle.write_bytes(bundle.read_bytes() + pki.make_ca().pem)
    changes = store.reload()
    assert changes.bundle and len(store.bundle()) == 2


def test_revocations_are_written_and_refuse_the_svid(store):
    svid = store.load("api", API)
    store.revoke({svid.fingerprint: API})
    assert store.revoked() == {svid.fingerprint: API}
    assert IdentityStore(store.directory).revoked() == {svid.fingerprint: API}  # on disk
    with pytest.raises(SvidUnavailable) as caught:
        store.load("api", API)
    assert caught.value.reason is Reason.REVOKED  # and, issuer or not, not replaced silently
    fresh = store.issue("api", API)
    assert store.load("api", API) == fresh


def test_inventory_lists_everything_with_expiries(store):
    store.load("api", API)
    pki.with_other_key(pki.make_leaf(_issuer_ca(store), spiffe_id("db"))).write(
        store.directory, "db"
    )
    inventory = store.inventory()
    assert [c.path for c in inventory.bundle] == ["bundle.pem"]
    assert inventory.issuer.name == f"spiffe://{TRUST_DOMAIN}"
    statuses = {c.path: (c.name, c.status) for c in inventory.svids}
    assert statuses == {
        "svid/api.pem": (API, "valid"),
        "svid/db.pem": (spiffe_id("db"), "key does not match"),
    }
    assert all(c.not_after > time.time() for c in inventory.svids)


def test_a_new_bundle_revalidates_the_svids_read_before(store):
    store.load("api", API)
    (store.directory / "bundle.pem").write_bytes(pki.make_ca(name="new").pem)
    for name in ("ca.pem", "ca.key"):
        (store.directory / name).unlink()
    with pytest.raises(SvidUnavailable) as caught:
        store.load("api", API)
    assert caught.value.reason is Reason.UNKNOWN_CA
