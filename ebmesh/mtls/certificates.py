"""Keys and X.509 certificates, through the `cryptography` package.

What an SVID is (the SPIFFE X.509-SVID specification): a leaf certificate,
not a CA, whose only URI SAN is the workload's SPIFFE ID, with the digital
signature key usage; ebmesh's SVIDs also carry both TLS purposes (a workload
authenticates as a client towards its destinations and as a server towards
its sources). A signing certificate (the issuer) is a CA whose URI SAN is the
trust domain's ID.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ebmesh.mtls import spiffe
from ebmesh.mtls.reasons import AuthFailure, Reason

KEY_TYPES = ("ecdsa-p256", "ed25519")
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
# Issued certificates start a little in the past, so that a peer whose clock is
# slightly behind does not find them not yet valid (SPIRE backdates by 10 s too).
BACKDATE_SECONDS = 10.0


def new_key(key_type: str) -> PrivateKey:
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"key type {key_type!r}: use one of {', '.join(KEY_TYPES)}")


def key_type_of(key) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return f"ecdsa-{key.curve.name}".replace("secp256r1", "p256")
    return type(key).__name__


def _signature_hash(key: PrivateKey):
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def create_ca(
    trust_domain: str, key_type: str, lifetime: float, now: float
) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed CA for `trust_domain`: the issuer `ebmesh ca init` writes."""
    key = new_key(key_type)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ebmesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"ebmesh CA {trust_domain}"),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now - BACKDATE_SECONDS))
        .not_valid_after(_utc(now + lifetime))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(spiffe.trust_domain_id(trust_domain))]
            ),
            critical=False,
        )
        .sign(key, _signature_hash(key))
    )
    return certificate, key


def issue_svid(
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    spiffe_id: str,
    key_type: str,
    lifetime: float,
    now: float,
) -> tuple[x509.Certificate, PrivateKey]:
    """An X.509 SVID for `spiffe_id`, valid `lifetime` seconds, never past its issuer."""
    key = new_key(key_type)
    not_after = min(now + lifetime, issuer.not_valid_after_utc.timestamp())
    backdate = min(BACKDATE_SECONDS, lifetime / 10)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ebmesh")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now - backdate))
        .not_valid_after(_utc(not_after))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
            critical=False,  # the subject is not empty (RFC 5280 4.2.1.6)
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, _signature_hash(issuer_key))
    )
    return certificate, key


def certificates_pem(certificates: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_certificates(pem: bytes, what: str) -> tuple[x509.Certificate, ...]:
    try:
        certificates = tuple(x509.load_pem_x509_certificates(pem))
    except ValueError as error:
        raise AuthFailure(Reason.MALFORMED, f"{what}: {error}") from None
    return certificates


def load_key(pem: bytes, what: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise AuthFailure(Reason.MALFORMED, f"{what}: {error}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise AuthFailure(
            Reason.MALFORMED, f"{what}: a {key_type_of(key)} key; use ECDSA or Ed25519"
        )
    return key


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, in hex: how revocation names a certificate."""
    return certificate.fingerprint(hashes.SHA256()).hex()


def fingerprint_der(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def not_before(certificate: x509.Certificate) -> float:
    return certificate.not_valid_before_utc.timestamp()


def not_after(certificate: x509.Certificate) -> float:
    return certificate.not_valid_after_utc.timestamp()


def uri_sans(certificate: x509.Certificate) -> list[str]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return names.value.get_values_for_type(x509.UniformResourceIdentifier)


def is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def spiffe_id_of_svid(certificate: x509.Certificate, whose: str) -> str:
    """The SPIFFE ID of a workload SVID, or AuthFailure(NOT_AN_SVID) saying what is wrong."""
    if is_ca(certificate):
        raise AuthFailure(Reason.NOT_AN_SVID, f"{whose} certificate is a CA, not an SVID")
    uris = uri_sans(certificate)
    if len(uris) != 1:
        raise AuthFailure(
            Reason.NOT_AN_SVID,
            f"{whose} certificate has {len(uris)} URI SANs ({', '.join(uris) or 'none'}); "
            "an SVID has exactly one",
        )
    if not spiffe.is_workload_id(uris[0]):
        raise AuthFailure(
            Reason.NOT_AN_SVID,
            f"{whose} certificate's URI SAN {uris[0]!r} is no workload SPIFFE ID",
        )
    return uris[0]


def key_matches(certificate: x509.Certificate, key: PrivateKey) -> bool:
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return certificate.public_key().public_bytes(*raw) == key.public_key().public_bytes(*raw)


def issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether `issuer` signed `certificate` (names match and the signature verifies)."""
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def chains_to(chain: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate]) -> bool:
    """Whether each certificate of `chain` (leaf first) is signed by the next, the last
    by one of `anchors`. Signatures only: the TLS handshake checks the rest."""
    for certificate, signer in zip(chain, chain[1:]):
        if not issued_by(certificate, signer):
            return False
    return any(issued_by(chain[-1], anchor) for anchor in anchors)
