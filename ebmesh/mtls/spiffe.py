"""SPIFFE IDs: what a valid one looks like, and the TLS server name that asks for one.

The rules are the SPIFFE ID specification's: `spiffe://TRUST_DOMAIN/PATH`, a
lowercase trust domain of [a-z0-9._-], path segments of [A-Za-z0-9._-] that are
neither `.` nor `..`, at most 2048 bytes. A workload's ID has a path; a trust
domain's own ID (a CA's) has none.
"""

from __future__ import annotations

import hashlib
import re

_ID = re.compile(r"spiffe://([a-z0-9._-]+)((?:/[A-Za-z0-9._-]+)*)")
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
MAX_LENGTH = 2048
# Server names end in a label of the reserved `.invalid` TLD (RFC 6761): a name
# ebmesh sends can never be mistaken for, or resolve to, a real host.
_SERVER_NAME_SUFFIX = ".ebmesh.invalid"


def is_workload_id(text: str) -> bool:
    """A SPIFFE ID with a path: what an X.509 SVID of a workload carries."""
    match = _ID.fullmatch(text)
    return (
        match is not None
        and bool(match.group(2))
        and len(text.encode()) <= MAX_LENGTH
        and not any(segment in (".", "..") for segment in match.group(2).split("/")[1:])
    )


def is_trust_domain(text: str) -> bool:
    return _TRUST_DOMAIN.fullmatch(text) is not None and len(text) <= 255


def trust_domain_of(spiffe_id: str) -> str:
    """`shop.example` for `spiffe://shop.example/api` (the ID must be valid)."""
    return spiffe_id[len("spiffe://") :].split("/", 1)[0]


def trust_domain_id(trust_domain: str) -> str:
    return f"spiffe://{trust_domain}"


def server_name(spiffe_id: str) -> str:
    """The SNI a client sends to ask a listener for the workload with this ID.

    A SPIFFE ID does not fit DNS syntax (slashes, upper case, up to 2048 bytes,
    while SNI allows 253), so the name is a digest of it: 128 bits of SHA-256,
    as 32 hex digits, one DNS label. The listener computes the same digest of
    each workload it hosts. The name travels in the clear, like every SNI; it
    says no more than which destination is being authenticated, which an
    observer of the connection that follows learns anyway.
    """
    digest = hashlib.sha256(spiffe_id.encode()).hexdigest()[:32]
    return digest + _SERVER_NAME_SUFFIX
