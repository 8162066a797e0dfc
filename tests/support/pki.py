"""Certificates made by the tests, good and bad, with `cryptography`.

The package's own issuer makes only good SVIDs; the tests need every kind of
bad one (expired, not yet valid, foreign CA, forged or broken signature, no or
several URI SANs, a CA posing as a leaf, a key that is not the certificate's),
made here independently of ebmesh's code, so that a bug in the issuer cannot
hide a bug in the verification.
"""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOUR = datetime.timedelta(hours=1)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _key(kind: str = "ecdsa-p256"):
    return (
        ed25519.Ed25519PrivateKey.generate()
        if kind == "ed25519"
        else ec.generate_private_key(ec.SECP256R1())
    )


def _hash(key):
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,  # a CA posing as a leaf can sign a TLS handshake too
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass
class Ca:
    certificate: x509.Certificate
    key: object

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def make_ca(
    trust_domain: str = "shop.example",
    name: str = "test CA",
    key_type: str = "ecdsa-p256",
    subject: x509.Name | None = None,
) -> Ca:
    """A self-signed CA; `subject`: another CA's name, for an impostor of it."""
    key = _key(key_type)
    subject = subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - HOUR)
        .not_valid_after(now() + 24 * HOUR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .sign(key, _hash(key))
    )
    return Ca(certificate, key)


@dataclass
class Leaf:
    certificate: x509.Certificate
    key: object

    def write(self, directory: Path, workload: str) -> None:
        """As svid/WORKLOAD.pem and .key of an identity directory."""
        svid = directory / "svid"
        svid.mkdir(exist_ok=True)
        (svid / f"{workload}.pem").write_bytes(
            self.certificate.public_bytes(serialization.Encoding.PEM)
        )
        (svid / f"{workload}.key").write_bytes(key_pem(self.key))

    def files(self, directory: Path, name: str) -> tuple[str, str]:
        certificate, key = directory / f"{name}.pem", directory / f"{name}.key"
        certificate.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(key_pem(self.key))
        return str(certificate), str(key)


def key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_leaf(
    ca: Ca,
    uris: tuple[str, ...] | str = (),
    *,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    signer=None,
    is_ca: bool = False,
    key_type: str = "ecdsa-p256",
    purposes=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
) -> Leaf:
    """A leaf issued in `ca`'s name. `signer`: a key other than the CA's signs it (a forgery
    that names the real CA as issuer)."""
    uris = (uris,) if isinstance(uris, str) else uris
    key = _key(key_type)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now() - HOUR)
        .not_valid_after(not_after or now() + HOUR)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(_usage(is_ca), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(purposes)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    signing_key = signer or ca.key
    return Leaf(builder.sign(signing_key, _hash(signing_key)), key)


def with_broken_signature(leaf: Leaf) -> Leaf:
    """The same certificate with one bit of its signature flipped."""
    der = bytearray(leaf.certificate.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01
    return Leaf(x509.load_der_x509_certificate(bytes(der)), leaf.key)


def with_other_key(leaf: Leaf) -> Leaf:
    """The certificate with a private key that is not its own."""
    return Leaf(leaf.certificate, _key())


def client_context(leaf: Leaf, ca_pem: bytes, tmp: Path) -> ssl.SSLContext:
    """A TLS 1.3 client presenting `leaf`, trusting `ca_pem`: what a hostile or foreign
    client would use (plain `ssl`, none of ebmesh's code)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.load_verify_locations(cadata=ca_pem.decode())
    context.load_cert_chain(*leaf.files(tmp, f"client-{id(leaf)}"))
    return context


def server_context(leaf: Leaf, ca_pem: bytes, tmp: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=ca_pem.decode())
    context.load_cert_chain(*leaf.files(tmp, f"server-{id(leaf)}"))
    return context
