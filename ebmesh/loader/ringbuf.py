"""Consuming BPF_MAP_TYPE_RINGBUF maps (libbpf's ring_buffer)."""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Callable

from ..errors import LibbpfError
from ._common import OwnedResource, annotate
from .libbpf import RingBufferSampleFn, lib
from .maps import MapAccess

# Returned to libbpf when a Python callback raised: stops the poll; poll() re-raises.
_STOP = -errno.ECANCELED


class RingBuffer(OwnedResource):
    """Reads the records of one ring buffer map.

    `callback(record: bytes)` runs inside `poll()`/`consume()`, on the calling
    thread. If it raises, consuming stops and `poll()`/`consume()` re-raise it.
    """

    def __init__(self, map: MapAccess, callback: Callable[[bytes], object]):
        self._callback = callback
        self._map = map  # keeps the map (and its object) alive
        self._error: BaseException | None = None
        self._c_callback = RingBufferSampleFn(self._on_sample)
        self._handle = None
        with annotate(f"creating ring buffer for map {map.name!r}"):
            self._handle = lib.ring_buffer__new(map.fd, self._c_callback, None, None)

    def _on_sample(self, ctx: int | None, data: int | None, size: int) -> int:
        try:
            self._callback(ctypes.string_at(data, size))
        except BaseException as exc:  # noqa: BLE001 - re-raised by poll()/consume()
            self._error = exc
            return _STOP
        return 0

    def _live(self):
        if self._handle is None:
            raise ValueError("ring buffer is closed")
        return self._handle

    def _run(self, fn, *args) -> int:
        self._error = None
        count = 0
        try:
            count = fn(self._live(), *args)
        except LibbpfError as exc:
            if self._error is None and exc.errno != errno.EINTR:
                raise
            # EINTR: a signal arrived; Python runs its handler after we return.
        if self._error is not None:  # a callback raised: it stopped the consuming
            error, self._error = self._error, None
            raise error
        return count

    def poll(self, timeout_ms: int = -1) -> int:
        """Wait up to `timeout_ms` (-1: forever) for records; returns how many were consumed."""
        return self._run(lib.ring_buffer__poll, timeout_ms)

    def consume(self) -> int:
        """Consume what is there without waiting; returns how many records."""
        return self._run(lib.ring_buffer__consume)

    @property
    def epoll_fd(self) -> int:
        """An fd to put in your own event loop; readable when records arrive."""
        return lib.ring_buffer__epoll_fd(self._live())

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            lib.ring_buffer__free(handle)
        self._map = None
