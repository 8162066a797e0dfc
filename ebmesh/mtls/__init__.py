"""Mutual TLS identity: SPIFFE SVIDs, TLS 1.3 handshakes between authenticators, pairs.

The run side's userspace half of `mtls` rules and `mtls required`: an identity
directory (`IdentityStore`), the handshake (`handshake`), and the
`Authenticator` that keeps a policy's pairs authenticated and tells the
datapath through a `PairSink`. It knows workloads only as plain data
(`ebmesh.datapath.parties.Workload`) and touches no kernel object: the
datapath implements the sink. See docs/mtls.md and docs/security.md.
"""

from ebmesh.mtls.authenticator import DEFAULT_PORT, Authenticator, StartReport, UnknownIdentity
from ebmesh.mtls.events import AuthEvent, Outcome
from ebmesh.mtls.pairs import AuthenticatedPair, Pair, PairSink, PairTable
from ebmesh.mtls.reasons import AuthFailure, Reason
from ebmesh.mtls.store import (
    Changes,
    IdentityDirectoryError,
    IdentityStore,
    Inventory,
    Svid,
    SvidUnavailable,
)

__all__ = [
    "DEFAULT_PORT",
    "AuthEvent",
    "AuthFailure",
    "AuthenticatedPair",
    "Authenticator",
    "Changes",
    "IdentityDirectoryError",
    "IdentityStore",
    "Inventory",
    "Outcome",
    "Pair",
    "PairSink",
    "PairTable",
    "Reason",
    "StartReport",
    "Svid",
    "SvidUnavailable",
    "UnknownIdentity",
]
