"""Authenticated pairs in the kernel: the datapath's side of the authenticator's PairSink.

A grant writes (src, dst, host) -> expiry into `authenticated_pairs`, a revoke
deletes it; either way `auth_state.epoch` moves on, so that the verdicts the
hooks cached with the old pairs are taken afresh (bpf_src/tables.h). The
kernel counts time on CLOCK_MONOTONIC; the authenticator in wall-clock seconds.
"""

from __future__ import annotations

import threading
import time

from ebmesh.datapath import abi
from ebmesh.datapath.parties import IPAddress
from ebmesh.mtls import PairTable


class KernelPairs(PairTable):
    """A PairTable whose every change is also written to one loaded copy's maps."""

    def __init__(self, maps):
        super().__init__()
        self._pairs_map = maps["authenticated_pairs"]
        self._state = maps["auth_state"]
        self._kernel_lock = threading.Lock()
        self._epoch = 0

    def grant(self, src: int, dst: int, host: IPAddress | None, expires_at: float) -> None:
        super().grant(src, dst, host, expires_at)
        expires_ns = time.monotonic_ns() + int((expires_at - time.time()) * 1e9)
        with self._kernel_lock:
            self._pairs_map.update(_key(src, dst, host), abi.AuthValue.packer().pack(expires_ns))
            self._next_epoch()

    def revoke(self, src: int, dst: int, host: IPAddress | None) -> None:
        super().revoke(src, dst, host)
        with self._kernel_lock:
            self._pairs_map.delete(_key(src, dst, host))
            self._next_epoch()

    def _next_epoch(self) -> None:
        self._epoch = (self._epoch + 1) & 0xFFFFFFFF
        self._state.update(bytes(4), abi.AuthState.packer().pack(self._epoch, 0))


def _key(src: int, dst: int, host: IPAddress | None) -> bytes:
    if host is None:
        return abi.AuthKey.packer().pack(src, dst, 0, 0, 0, 0, 0, 0, 0, 0)
    family = abi.FAMILY_IPV4 if host.version == 4 else abi.FAMILY_IPV6
    return abi.AuthKey.packer().pack(src, dst, *abi.address_words(host.packed), family, 0, 0, 0)
