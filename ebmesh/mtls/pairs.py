"""Where authenticated pairs go: the narrow interface the datapath implements, and a table.

A pair is (source identity, destination identity, host): identities are the
policy's numbers; host is None for two local workloads and otherwise the peer
host's address, part of the key, so that an entry made with one host is no
use to traffic from another (a reused or spoofed address of another host does
not ride it).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from ebmesh.datapath.parties import IPAddress


class Pair(NamedTuple):
    src: int
    dst: int
    host: IPAddress | None  # None: both workloads are local


class PairSink(Protocol):
    """What the authenticator tells the datapath. Calls never overlap (the authenticator
    serializes them), and `expires_at` is wall-clock time (`time.time()` seconds)."""

    def grant(self, src: int, dst: int, host: IPAddress | None, expires_at: float) -> None:
        """(src, dst, host) is authenticated until `expires_at`: connections needing it pass."""

    def revoke(self, src: int, dst: int, host: IPAddress | None) -> None:
        """(src, dst, host) is no longer authenticated (revoked, expired or failed again)."""


@dataclass(frozen=True)
class AuthenticatedPair:
    src: int
    dst: int
    host: IPAddress | None
    expires_at: float


class PairTable:
    """A PairSink in memory: the authenticated pairs with their expiry, for bookkeeping
    (`Attachment.authenticated()`) and wherever no kernel map is wanted."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pairs: dict[Pair, float] = {}
        self.grants = 0  # how many grant() calls: re-authentications count too

    def grant(self, src: int, dst: int, host: IPAddress | None, expires_at: float) -> None:
        with self._lock:
            self._pairs[Pair(src, dst, host)] = expires_at
            self.grants += 1

    def revoke(self, src: int, dst: int, host: IPAddress | None) -> None:
        with self._lock:
            self._pairs.pop(Pair(src, dst, host), None)

    def pairs(self, now: float | None = None) -> list[AuthenticatedPair]:
        """The pairs not expired at `now` (default: the current time)."""
        now = time.time() if now is None else now
        with self._lock:
            return sorted(
                (
                    AuthenticatedPair(*pair, expires_at)
                    for pair, expires_at in self._pairs.items()
                    if expires_at > now
                ),
                key=lambda p: (p.src, p.dst, str(p.host)),
            )

    def expires_at(self, src: int, dst: int, host: IPAddress | None = None) -> float | None:
        """When (src, dst, host) stops being authenticated; None if it is not."""
        with self._lock:
            expires_at = self._pairs.get(Pair(src, dst, host))
        return expires_at if expires_at is not None and expires_at > time.time() else None

    def __contains__(self, pair: tuple) -> bool:
        return self.expires_at(*pair) is not None
