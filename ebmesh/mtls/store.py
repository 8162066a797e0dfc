"""The identity directory: trusted CAs, an optional issuer, and one SVID per local workload.

    DIR/bundle.pem            the CA certificates trusted for every peer (one trust domain)
    DIR/ca.pem, DIR/ca.key    optional: an issuer; ebmesh then issues and renews SVIDs itself
    DIR/svid/NAME.pem, .key   the SVID of local workload NAME (leaf first, then intermediates)
    DIR/revoked.txt           certificates revoked here, by SHA-256 fingerprint

The layout is what an external issuer such as SPIRE (through spiffe-helper)
can deliver: an SVID on disk is used as given. A missing or nearly expired one
(past its half-life) is issued when there is an issuer; without one, the
workload has no SVID and cannot authenticate. A broken SVID (unparsable, a key
that is not its certificate's, another SPIFFE ID, a chain that does not lead to
the bundle, a revoked one) is reported and never overwritten: someone put it
there, and replacing it would hide their mistake. Files are re-read when they
change on disk (`reload()` compares inode, size and mtime).
"""

from __future__ import annotations

import datetime
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from ebmesh.errors import EbmeshError
from ebmesh.mtls import certificates as certs
from ebmesh.mtls import spiffe
from ebmesh.mtls.reasons import AuthFailure, Reason

BUNDLE, ISSUER_CERTIFICATE, ISSUER_KEY, SVIDS, REVOKED = (
    "bundle.pem",
    "ca.pem",
    "ca.key",
    "svid",
    "revoked.txt",
)
DEFAULT_SVID_LIFETIME = 3600.0
DEFAULT_CA_LIFETIME = 365 * 86400.0
_WORKLOAD_FILE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")  # the language's names: safe file names
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


class IdentityDirectoryError(EbmeshError):
    """The identity directory cannot be used as it is; the message says what to do."""


class SvidUnavailable(EbmeshError):
    """A local workload has no usable SVID, for `reason`."""

    def __init__(self, workload: str, reason: Reason, detail: str):
        self.workload, self.reason, self.detail = workload, reason, detail
        super().__init__(f"workload {workload}: {detail}")


@dataclass(frozen=True)
class Svid:
    """A local workload's X.509 SVID with its key, as validated when it was read."""

    workload: str
    spiffe_id: str
    chain: tuple[x509.Certificate, ...]  # leaf first
    chain_pem: bytes
    key_pem: bytes
    fingerprint: str
    not_before: float
    not_after: float
    key_type: str
    issued_here: bool  # made by this store's issuer in this process

    @property
    def renew_at(self) -> float:
        """Half-life: when an issuer replaces it."""
        return self.not_before + (self.not_after - self.not_before) / 2


@dataclass(frozen=True)
class Issuer:
    certificate: x509.Certificate
    key: certs.PrivateKey
    trust_domain: str | None  # from the CA's URI SAN, when it has one

    @property
    def not_after(self) -> float:
        return certs.not_after(self.certificate)


@dataclass(frozen=True)
class Changes:
    """What changed on disk since the previous `reload()`."""

    bundle: bool = False
    issuer: bool = False
    revoked: bool = False
    svids: frozenset[str] = frozenset()  # workload names

    def __bool__(self) -> bool:
        return self.bundle or self.issuer or self.revoked or bool(self.svids)


@dataclass(frozen=True)
class CertificateInfo:
    """One certificate of the directory, as `ebmesh ca show` lists it."""

    path: str  # relative to the directory
    name: str  # the SPIFFE ID, or the subject when it has none
    fingerprint: str
    not_before: float
    not_after: float
    key_type: str
    status: str  # "valid", "expired", "not yet valid", "renewal due", or what is wrong


@dataclass(frozen=True)
class Inventory:
    directory: Path
    bundle: tuple[CertificateInfo, ...]
    issuer: CertificateInfo | None
    svids: tuple[CertificateInfo, ...]
    revoked: int
    problems: tuple[str, ...]


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return status.st_ino, status.st_size, status.st_mtime_ns


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Readers see the old file or the new one, never half of one."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _time_status(not_before: float, not_after: float, now: float) -> str:
    if now >= not_after:
        return "expired"
    if now < not_before:
        return "not yet valid"
    return "valid"


def _info(path: str, certificate: x509.Certificate, now: float, status: str | None = None):
    uris = certs.uri_sans(certificate)
    return CertificateInfo(
        path=path,
        name=uris[0] if uris else certificate.subject.rfc4514_string(),
        fingerprint=certs.fingerprint(certificate),
        not_before=certs.not_before(certificate),
        not_after=certs.not_after(certificate),
        key_type=certs.key_type_of(certificate.public_key()),
        status=status
        or _time_status(certs.not_before(certificate), certs.not_after(certificate), now),
    )


class IdentityStore:
    """One identity directory. Thread-safe: the authenticator's threads share it."""

    def __init__(
        self,
        directory,
        *,
        lifetime: float = DEFAULT_SVID_LIFETIME,
        key_type: str = "ecdsa-p256",
    ):
        if key_type not in certs.KEY_TYPES:
            raise ValueError(f"key type {key_type!r}: use one of {', '.join(certs.KEY_TYPES)}")
        self.directory = Path(directory)
        self.lifetime, self.key_type = lifetime, key_type
        self._lock = threading.RLock()
        self._cached: dict[str, tuple[object, object]] = {}  # what -> (file signature, value)
        self._seen: dict[str, object] = {}  # relative path -> signature at the last reload()

    # -- creating a directory (`ebmesh ca init`) ------------------------------------------

    @classmethod
    def create(
        cls,
        directory,
        trust_domain: str,
        *,
        key_type: str = "ecdsa-p256",
        ca_lifetime: float = DEFAULT_CA_LIFETIME,
    ) -> IdentityStore:
        """Make an issuer for `trust_domain` in `directory` and add it to the bundle."""
        if not spiffe.is_trust_domain(trust_domain):
            raise IdentityDirectoryError(
                f"{trust_domain!r} is not a SPIFFE trust domain (lowercase letters, digits, '.', '-', '_')"
            )
        directory = Path(directory)
        for name in (ISSUER_CERTIFICATE, ISSUER_KEY):
            if (directory / name).exists():
                raise IdentityDirectoryError(
                    f"{directory / name} exists: {directory} already has an issuer; "
                    "remove ca.pem and ca.key first, or use another directory"
                )
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        (directory / SVIDS).mkdir(mode=0o700, exist_ok=True)
        certificate, key = certs.create_ca(trust_domain, key_type, ca_lifetime, time.time())
        pem = certs.certificates_pem([certificate])
        _write_atomically(directory / ISSUER_KEY, certs.key_pem(key), 0o600)
        _write_atomically(directory / ISSUER_CERTIFICATE, pem, 0o644)
        bundle = directory / BUNDLE
        existing = bundle.read_bytes() if bundle.exists() else b""
        if existing and not existing.endswith(b"\n"):
            existing += b"\n"
        _write_atomically(bundle, existing + pem, 0o644)
        return cls(directory, key_type=key_type)

    @classmethod
    def create_if_absent(cls, directory, trust_domain: str) -> bool:
        """The mesh's issuer made on first use: `create` when `directory` has no bundle.pem
        (nothing was given as files). Returns whether it made one."""
        if (Path(directory) / BUNDLE).exists():
            return False
        cls.create(directory, trust_domain)
        return True

    # -- reading ----------------------------------------------------------------------------

    def _read(self, relative: str, parse):
        """`parse(bytes)` of a file, re-read only when the file changed."""
        path = self.directory / relative
        signature = _signature(path)
        cached = self._cached.get(relative)
        if cached is not None and cached[0] == signature:
            return cached[1]
        value = None if signature is None else parse(path.read_bytes())
        self._cached[relative] = (signature, value)
        return value

    def bundle(self) -> tuple[x509.Certificate, ...]:
        """The trusted CAs. IdentityDirectoryError if there are none."""
        with self._lock:
            try:
                bundle = self._read(BUNDLE, lambda pem: certs.load_certificates(pem, BUNDLE))
            except AuthFailure as failure:
                raise IdentityDirectoryError(
                    f"{self.directory / BUNDLE}: {failure.detail}"
                ) from None
            if not bundle:
                raise IdentityDirectoryError(
                    f"no trusted CAs: {self.directory / BUNDLE} is missing or empty; "
                    f"create an issuer with `ebmesh ca init {self.directory}` or put the trust "
                    "domain's CA certificates there"
                )
            return bundle

    def bundle_pem(self) -> str:
        """The bundle as PEM text, for `ssl.SSLContext.load_verify_locations(cadata=...)`."""
        return certs.certificates_pem(self.bundle()).decode()

    def issuer(self) -> Issuer | None:
        """The CA that issues SVIDs here, or None (SVIDs then come from elsewhere)."""
        with self._lock:
            certificate = self._read(
                ISSUER_CERTIFICATE, lambda pem: certs.load_certificates(pem, ISSUER_CERTIFICATE)
            )
            key = self._read(ISSUER_KEY, lambda pem: certs.load_key(pem, ISSUER_KEY))
            if not certificate and key is None:
                return None
            if not certificate or key is None:
                missing = ISSUER_KEY if key is None else ISSUER_CERTIFICATE
                raise IdentityDirectoryError(
                    f"{self.directory} has half an issuer: {missing} is missing"
                )
            if not certs.key_matches(certificate[0], key):
                raise IdentityDirectoryError(
                    f"{self.directory}: {ISSUER_KEY} is not the key of {ISSUER_CERTIFICATE}"
                )
            uris = [u for u in certs.uri_sans(certificate[0]) if u.startswith("spiffe://")]
            trust_domain = spiffe.trust_domain_of(uris[0]) if uris else None
            return Issuer(certificate[0], key, trust_domain)

    def revoked(self) -> dict[str, str]:
        """Revoked certificates: fingerprint -> the SPIFFE ID it was revoked for."""
        with self._lock:
            return dict(self._read(REVOKED, _parse_revoked) or {})

    # -- SVIDs ----------------------------------------------------------------------------

    def svid(self, workload: str, spiffe_id: str) -> Svid | None:
        """The workload's usable SVID, issuing one if needed and possible; else None
        (`load` says why)."""
        try:
            return self.load(workload, spiffe_id)
        except SvidUnavailable:
            return None

    def load(self, workload: str, spiffe_id: str) -> Svid:
        """The workload's usable SVID; SvidUnavailable says why there is none.

        An SVID on disk is used as given; one that is missing, expired, not yet
        valid or past its half-life is issued anew when there is an issuer.
        """
        if _WORKLOAD_FILE.fullmatch(workload) is None:
            raise SvidUnavailable(workload, Reason.NO_SVID, "not a workload name")
        with self._lock:
            issuer = self.issuer()
            try:
                svid = self._read_svid(workload, spiffe_id)
            except SvidUnavailable as unavailable:
                if issuer is None or unavailable.reason not in _ISSUER_REPLACES:
                    raise
                return self._issue(workload, spiffe_id, issuer)
            if svid is None:
                if issuer is None:
                    raise SvidUnavailable(
                        workload,
                        Reason.NO_SVID,
                        f"no SVID ({self._relative_svid(workload)}.pem and .key) and no issuer "
                        f"({ISSUER_KEY}) in {self.directory} to issue one",
                    )
                return self._issue(workload, spiffe_id, issuer)
            if issuer is not None and time.time() >= svid.renew_at:
                return self._issue(workload, spiffe_id, issuer)
            return svid

    def issue(self, workload: str, spiffe_id: str) -> Svid:
        """A fresh SVID from this directory's issuer, written to disk, replacing any other."""
        if _WORKLOAD_FILE.fullmatch(workload) is None:
            raise SvidUnavailable(workload, Reason.NO_SVID, "not a workload name")
        with self._lock:
            issuer = self.issuer()
            if issuer is None:
                raise SvidUnavailable(
                    workload, Reason.NO_SVID, f"no issuer ({ISSUER_KEY}) in {self.directory}"
                )
            return self._issue(workload, spiffe_id, issuer)

    def _relative_svid(self, workload: str) -> str:
        return f"{SVIDS}/{workload}"

    def _issue(self, workload: str, spiffe_id: str, issuer: Issuer) -> Svid:
        if not spiffe.is_workload_id(spiffe_id):
            raise SvidUnavailable(workload, Reason.NO_SVID, f"{spiffe_id!r} is no SPIFFE ID")
        if issuer.trust_domain not in (None, spiffe.trust_domain_of(spiffe_id)):
            raise SvidUnavailable(
                workload,
                Reason.NO_SVID,
                f"the issuer in {self.directory} signs for trust domain {issuer.trust_domain}, "
                f"not for {spiffe_id}",
            )
        now = time.time()
        if now >= issuer.not_after:
            raise SvidUnavailable(
                workload, Reason.NO_SVID, f"the issuer's certificate ({ISSUER_CERTIFICATE}) expired"
            )
        certificate, key = certs.issue_svid(
            issuer.certificate, issuer.key, spiffe_id, self.key_type, self.lifetime, now
        )
        chain_pem, key_pem = certs.certificates_pem([certificate]), certs.key_pem(key)
        (self.directory / SVIDS).mkdir(mode=0o700, exist_ok=True)
        base = self._relative_svid(workload)
        _write_atomically(self.directory / f"{base}.key", key_pem, 0o600)
        _write_atomically(self.directory / f"{base}.pem", chain_pem, 0o644)
        svid = Svid(
            workload=workload,
            spiffe_id=spiffe_id,
            chain=(certificate,),
            chain_pem=chain_pem,
            key_pem=key_pem,
            fingerprint=certs.fingerprint(certificate),
            not_before=certs.not_before(certificate),
            not_after=certs.not_after(certificate),
            key_type=self.key_type,
            issued_here=True,
        )
        # What this process wrote is not news to its own reload().
        for suffix in (".pem", ".key"):
            self._seen[base + suffix] = _signature(self.directory / (base + suffix))
        self._cached[base] = (self._svid_signature(workload), (spiffe_id, svid))
        return svid

    def _svid_signature(self, workload: str):
        """The files an SVID's validation depends on: its own two, and the bundle."""
        base = self.directory / self._relative_svid(workload)
        return (
            _signature(base.with_suffix(".pem")),
            _signature(base.with_suffix(".key")),
            _signature(self.directory / BUNDLE),
        )

    def _read_svid(self, workload: str, spiffe_id: str) -> Svid | None:
        """The SVID on disk, validated; None if there is none (either file missing)."""
        base = self._relative_svid(workload)
        signature = self._svid_signature(workload)
        if None in signature[:2]:
            return None
        cached = self._cached.get(base)
        if cached is not None and cached[0] == signature and cached[1][0] == spiffe_id:
            svid = cached[1][1]
        else:
            svid = self._parse_svid(workload, spiffe_id)
            self._cached[base] = (signature, (spiffe_id, svid))
        if isinstance(svid, SvidUnavailable):
            raise svid
        # What depends on the time or on revocations, not on the files, is checked every time.
        if svid.fingerprint in self.revoked():
            raise SvidUnavailable(
                workload,
                Reason.REVOKED,
                f"its certificate {svid.fingerprint[:16]}... is revoked; replace {base}.pem "
                f"and .key (or delete them, when there is an issuer)",
            )
        now = time.time()
        if now >= svid.not_after:
            raise SvidUnavailable(workload, Reason.EXPIRED, f"{base}.pem expired")
        if now < svid.not_before:
            raise SvidUnavailable(workload, Reason.NOT_YET_VALID, f"{base}.pem is not yet valid")
        return svid

    def _parse_svid(self, workload: str, spiffe_id: str) -> Svid | SvidUnavailable:
        """The validated SVID, or why it is unusable (kept, so it is parsed once per change)."""
        base = self.directory / self._relative_svid(workload)
        shown = self._relative_svid(workload)
        try:
            chain_pem, key_pem = (
                base.with_suffix(".pem").read_bytes(),
                base.with_suffix(".key").read_bytes(),
            )
            chain = certs.load_certificates(chain_pem, f"{shown}.pem")
            key = certs.load_key(key_pem, f"{shown}.key")
            if not chain:
                raise AuthFailure(Reason.MALFORMED, f"{shown}.pem holds no certificate")
            if not certs.key_matches(chain[0], key):
                raise AuthFailure(Reason.KEY_MISMATCH, f"{shown}.key is not the key of {shown}.pem")
            found = certs.spiffe_id_of_svid(chain[0], f"{shown}.pem:")
            if found != spiffe_id:
                raise AuthFailure(
                    Reason.WRONG_SPIFFE_ID, f"{shown}.pem is an SVID of {found}, not of {spiffe_id}"
                )
            self._check_chain(chain, shown)
        except FileNotFoundError:
            return SvidUnavailable(workload, Reason.NO_SVID, f"{shown} vanished while read")
        except AuthFailure as failure:
            return SvidUnavailable(workload, failure.reason, failure.detail)
        return Svid(
            workload=workload,
            spiffe_id=spiffe_id,
            chain=chain,
            chain_pem=chain_pem,
            key_pem=key_pem,
            fingerprint=certs.fingerprint(chain[0]),
            not_before=certs.not_before(chain[0]),
            not_after=min(certs.not_after(c) for c in chain),
            key_type=certs.key_type_of(key),
            issued_here=False,
        )

    def _check_chain(self, chain, shown: str) -> None:
        """The signatures up to the bundle: a peer with this bundle would refuse it otherwise."""
        bundle = self.bundle()
        if certs.chains_to(chain, bundle):
            return
        signers = [c for c in (*chain[1:], *bundle) if c.subject == chain[0].issuer]
        if signers:
            raise AuthFailure(
                Reason.BAD_SIGNATURE,
                f"{shown}.pem names {chain[0].issuer.rfc4514_string()} as issuer, whose signature "
                "does not verify",
            )
        raise AuthFailure(Reason.UNKNOWN_CA, f"{shown}.pem was not issued by a CA of {BUNDLE}")

    # -- revocation -------------------------------------------------------------------------

    def revoke(self, fingerprints: dict[str, str]) -> None:
        """Add certificates (fingerprint -> SPIFFE ID) to revoked.txt. OSError if the
        directory is read-only (the caller keeps them in memory then)."""
        with self._lock:
            known = self.revoked()
            new = {f: i for f, i in fingerprints.items() if f not in known}
            if not new:
                return
            path = self.directory / REVOKED
            text = path.read_text() if path.exists() else _REVOKED_HEADER
            stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            text += "".join(f"{f} {i} {stamp}\n" for f, i in sorted(new.items()))
            _write_atomically(path, text.encode(), 0o644)
            self._seen[REVOKED] = _signature(path)

    # -- change detection -------------------------------------------------------------------

    def reload(self) -> Changes:
        """What changed on disk since the previous call (the first call sees everything as
        new). The authenticator calls this on a timer; an explicit call works as well. The
        changes are reported once: give each authenticator a store of its own."""
        with self._lock:
            current = {
                name: _signature(self.directory / name)
                for name in (BUNDLE, ISSUER_CERTIFICATE, ISSUER_KEY, REVOKED)
            }
            svid_directory = self.directory / SVIDS
            names = {p.name for p in svid_directory.iterdir()} if svid_directory.is_dir() else set()
            for name in names:
                if name.endswith((".pem", ".key")) and not name.startswith("."):
                    current[f"{SVIDS}/{name}"] = _signature(svid_directory / name)
            changed = {
                name
                for name in current.keys() | self._seen.keys()
                if current.get(name) != self._seen.get(name)
            }
            self._seen = current
            return Changes(
                bundle=BUNDLE in changed,
                issuer=bool({ISSUER_CERTIFICATE, ISSUER_KEY} & changed),
                revoked=REVOKED in changed,
                svids=frozenset(
                    name[len(SVIDS) + 1 : -4] for name in changed if name.startswith(SVIDS + "/")
                ),
            )

    # -- what is there (`ebmesh ca show`) ---------------------------------------------------

    def inventory(self) -> Inventory:
        if not self.directory.is_dir():
            raise IdentityDirectoryError(f"no identity directory at {self.directory}")
        now, problems = time.time(), []
        with self._lock:
            try:
                bundle = self.bundle()
            except IdentityDirectoryError as error:
                bundle = ()
                problems.append(str(error))
            try:
                issuer = self.issuer()
            except (IdentityDirectoryError, AuthFailure) as error:
                issuer = None
                problems.append(str(error))
            svids = []
            svid_directory = self.directory / SVIDS
            paths = sorted(svid_directory.glob("*.pem")) if svid_directory.is_dir() else []
            for path in paths:
                svids.append(self._svid_info(path, bundle, issuer, now, problems))
            revoked = self.revoked()
        return Inventory(
            directory=self.directory,
            bundle=tuple(_info(BUNDLE, c, now) for c in bundle),
            issuer=_info(ISSUER_CERTIFICATE, issuer.certificate, now) if issuer else None,
            svids=tuple(s for s in svids if s is not None),
            revoked=len(revoked),
            problems=tuple(problems),
        )

    def _svid_info(self, path: Path, bundle, issuer, now: float, problems: list[str]):
        shown = f"{SVIDS}/{path.name}"
        try:
            chain = certs.load_certificates(path.read_bytes(), shown)
            if not chain:
                raise AuthFailure(Reason.MALFORMED, f"{shown} holds no certificate")
            key_path = path.with_suffix(".key")
            if not key_path.exists():
                status = "no key file"
            elif not certs.key_matches(
                chain[0], certs.load_key(key_path.read_bytes(), key_path.name)
            ):
                status = "key does not match"
            elif not certs.chains_to(chain, bundle):
                status = f"not issued by a CA of {BUNDLE}"
            elif certs.fingerprint(chain[0]) in self.revoked():
                status = "revoked"
            else:
                status = _time_status(certs.not_before(chain[0]), certs.not_after(chain[0]), now)
                half_life = (certs.not_before(chain[0]) + certs.not_after(chain[0])) / 2
                if status == "valid" and issuer is not None and now >= half_life:
                    status = "renewal due"
        except AuthFailure as failure:
            problems.append(failure.detail)
            return None
        return _info(shown, chain[0], now, status)


# Why an SVID on disk is replaced when there is an issuer: time ran out (or has
# not come); anything else is someone's mistake to see.
_ISSUER_REPLACES = {Reason.EXPIRED, Reason.NOT_YET_VALID}

_REVOKED_HEADER = (
    "# ebmesh: certificates revoked here, one a line: SHA-256 fingerprint, SPIFFE ID, when\n"
)


def _parse_revoked(data: bytes) -> dict[str, str]:
    revoked = {}
    for line in data.decode(errors="replace").splitlines():
        fields = line.split()
        if fields and _FINGERPRINT.fullmatch(fields[0]):
            revoked[fields[0]] = fields[1] if len(fields) > 1 else ""
    return revoked
