"""What the authenticator reports: one event per outcome of a pair."""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass

from ebmesh.datapath.parties import IPAddress
from ebmesh.mtls.reasons import Reason


class Outcome(enum.Enum):
    AUTHENTICATED = "authenticated"  # granted (first time or again)
    FAILED = "failed"  # a handshake or a check refused it; `reason` says why
    REVOKED = "revoked"  # dropped by revoke(), a revoked certificate, or trust withdrawn
    EXPIRED = "expired"  # its lifetime ended before a fresh handshake


@dataclass(frozen=True)
class AuthEvent:
    """One outcome for a pair. `src`/`dst` are the policy's identity numbers (None when
    this side never learned the peer's, e.g. its certificate failed verification)."""

    time: float
    outcome: Outcome
    src: int | None
    dst: int | None
    host: IPAddress | None  # the peer host; None for a pair of two local workloads
    src_name: str | None = None
    dst_name: str | None = None
    reason: Reason | None = None  # for FAILED, and REVOKED by a failed re-authentication
    detail: str = ""
    expires_at: float | None = None  # for AUTHENTICATED
    side: str = "client"  # "client" (this host initiated) or "listener"

    def __str__(self) -> str:
        when = datetime.datetime.fromtimestamp(self.time).strftime("%H:%M:%S.%f")[:-3]
        pair = f"{self.src_name or self.src or '?'} -> {self.dst_name or self.dst or '?'}"
        where = f" via {self.host}" if self.host is not None else ""
        text = f"{when} mtls {pair}{where}: {self.outcome.value}"
        if self.expires_at is not None:
            text += (
                f" until {datetime.datetime.fromtimestamp(self.expires_at).strftime('%H:%M:%S')}"
            )
        if self.reason is not None:
            text += f" ({self.reason.value})"
        if self.detail:
            text += f": {self.detail}"
        return f"{text} [{self.side}]"
