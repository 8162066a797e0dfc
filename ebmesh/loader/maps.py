"""BPF maps: configured before load through libbpf, then read and written by fd."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator, Sequence
from functools import cache
from typing import TYPE_CHECKING

from ..errors import LibbpfError
from ._common import OwnedResource, annotate, decode, path_bytes, with_detail
from .constants import BPF_ANY, ENOTSUPP, PERCPU_MAP_TYPES, MapType, to_enum
from .libbpf import BpfMapBatchOpts, BpfMapInfo, lib

if TYPE_CHECKING:
    from .object import BpfObject

# What the kernel answers when a map type has no batch operation.
_NO_BATCH_OP = frozenset({errno.EOPNOTSUPP, ENOTSUPP})


@cache
def possible_cpus() -> int:
    """libbpf_num_possible_cpus(): the number of slots in a per-CPU value."""
    return lib.libbpf_num_possible_cpus()


def _round8(n: int) -> int:
    return (n + 7) & ~7


class MapAccess:
    """Element access to one BPF map by its fd: what every kind of map handle can do.

    Keys and values are raw bytes of exactly `key_size` / `value_size`
    bytes; per-CPU maps use `lookup_percpu` / `update_percpu`. Subclasses say
    where the fd and the map's shape come from.
    """

    fd: int
    name: str
    type: MapType | int
    key_size: int
    value_size: int
    max_entries: int

    _batch_unsupported: set[str]  # batch ops the kernel refused for this map

    @property
    def is_percpu(self) -> bool:
        return self.type in PERCPU_MAP_TYPES

    def __repr__(self) -> str:
        try:
            return f"<{type(self).__name__} {self.name!r} {getattr(self.type, 'name', self.type)}>"
        except ValueError:
            return f"<{type(self).__name__} (closed)>"

    # --- element access -------------------------------------------------------------

    def _key(self, key: bytes) -> bytes:
        key = bytes(key)
        if len(key) != self.key_size:
            raise ValueError(
                f"map {self.name!r}: key must be {self.key_size} bytes, got {len(key)}"
            )
        return key

    def _value(self, value: bytes) -> bytes:
        value = bytes(value)
        if len(value) != self.value_size:
            raise ValueError(
                f"map {self.name!r}: value must be {self.value_size} bytes, got {len(value)}"
            )
        return value

    def _not_percpu(self, what: str) -> None:
        if self.is_percpu:
            raise ValueError(f"map {self.name!r} is per-CPU: use {what}_percpu()")

    @property
    def percpu_stride(self) -> int:
        """Bytes per CPU in a per-CPU value: value_size rounded up to 8."""
        return _round8(self.value_size)

    def lookup(self, key: bytes) -> bytes | None:
        """The value under `key`, or None if there is none."""
        self._not_percpu("lookup")
        key = self._key(key)
        out = ctypes.create_string_buffer(max(self.value_size, 1))
        try:
            lib.bpf_map_lookup_elem(self.fd, key, out)
        except LibbpfError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise with_detail(exc, f"map {self.name!r}") from None
        return out.raw[: self.value_size]

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        self._not_percpu("update")
        key, value = self._key(key), self._value(value)
        with annotate(f"map {self.name!r}"):
            lib.bpf_map_update_elem(self.fd, key, value, flags)

    def delete(self, key: bytes) -> bool:
        """Delete `key`; False if it was not there."""
        key = self._key(key)
        try:
            lib.bpf_map_delete_elem(self.fd, key)
        except LibbpfError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise with_detail(exc, f"map {self.name!r}") from None
        return True

    def lookup_percpu(self, key: bytes) -> list[bytes] | None:
        """One value per possible CPU (each `value_size` bytes), or None."""
        if not self.is_percpu:
            raise ValueError(f"map {self.name!r} is not per-CPU: use lookup()")
        key = self._key(key)
        stride, ncpus = self.percpu_stride, possible_cpus()
        out = ctypes.create_string_buffer(stride * ncpus)
        try:
            lib.bpf_map_lookup_elem(self.fd, key, out)
        except LibbpfError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise with_detail(exc, f"map {self.name!r}") from None
        raw = out.raw
        return [raw[i * stride : i * stride + self.value_size] for i in range(ncpus)]

    def update_percpu(self, key: bytes, values: Sequence[bytes], flags: int = BPF_ANY) -> None:
        """Set every CPU's value; `values` has one `value_size`-byte entry per possible CPU."""
        if not self.is_percpu:
            raise ValueError(f"map {self.name!r} is not per-CPU: use update()")
        key = self._key(key)
        with annotate(f"map {self.name!r}"):
            lib.bpf_map_update_elem(self.fd, key, self.pack_percpu(values), flags)

    def pack_percpu(self, values: Sequence[bytes]) -> bytes:
        """The kernel's layout of one per-CPU value: each CPU's value padded to 8 bytes."""
        ncpus = possible_cpus()
        if len(values) != ncpus:
            raise ValueError(f"map {self.name!r}: need {ncpus} per-CPU values, got {len(values)}")
        stride = self.percpu_stride
        return b"".join(self._value(v).ljust(stride, b"\0") for v in values)

    def keys(self) -> Iterator[bytes]:
        """Every key (bpf_map_get_next_key). Deleting while iterating a hash map may restart it."""
        size = self.key_size
        if size == 0:
            raise ValueError(f"map {self.name!r} has no keys")
        fd = self.fd
        prev = None
        nxt = ctypes.create_string_buffer(size)
        while True:
            try:
                lib.bpf_map_get_next_key(fd, prev, nxt)
            except LibbpfError as exc:
                if exc.errno == errno.ENOENT:
                    return
                raise with_detail(exc, f"map {self.name!r}") from None
            key = nxt.raw
            yield key
            prev = key

    def __iter__(self) -> Iterator[bytes]:
        return self.keys()

    def items(self) -> Iterator[tuple[bytes, bytes | list[bytes]]]:
        """(key, value) pairs; per-CPU maps give the list of per-CPU values."""
        get = self.lookup_percpu if self.is_percpu else self.lookup
        for key in self.keys():
            value = get(key)
            if value is not None:
                yield key, value

    # --- batches --------------------------------------------------------------------

    def _batch_value_size(self) -> int:
        return self.percpu_stride * possible_cpus() if self.is_percpu else self.value_size

    def update_batch(self, keys: bytes, values: bytes, count: int, flags: int = BPF_ANY) -> int:
        """Update `count` elements: `keys` is count*key_size bytes, `values` count*value size.

        For per-CPU maps each value is the packed per-CPU layout (`pack_percpu`).
        Map types without batch support in the kernel (e.g. LPM tries) are
        updated element by element. Returns the number of elements updated.
        """
        ks, vs = self.key_size, self._batch_value_size()
        keys, values = bytes(keys), bytes(values)
        if len(keys) != count * ks or len(values) != count * vs:
            raise ValueError(
                f"map {self.name!r}: {count} elements need {count * ks} key bytes and "
                f"{count * vs} value bytes, got {len(keys)} and {len(values)}"
            )
        fd = self.fd

        def batch(done, opts):
            lib.bpf_map_update_batch(fd, keys, values, done, opts)

        def one(i):
            lib.bpf_map_update_elem(
                fd, keys[i * ks : (i + 1) * ks], values[i * vs : (i + 1) * vs], flags
            )

        return self._batch("update", count, flags, batch, one)

    def array_values(self) -> bytes:
        """Every value of an array map, in index order, in as few syscalls as the kernel
        allows (bpf_map_lookup_batch; element by element where it has none). Per-CPU
        maps give each index's packed per-CPU layout (`percpu_stride` bytes per CPU)."""
        count, key_size, value_size = self.max_entries, self.key_size, self._batch_value_size()
        if key_size != 4:
            raise ValueError(f"map {self.name!r} is not an array")
        if "lookup" not in self._batch_unsupported:
            keys = ctypes.create_string_buffer(count * key_size)
            values = ctypes.create_string_buffer(count * value_size)
            opts = BpfMapBatchOpts(sz=ctypes.sizeof(BpfMapBatchOpts), elem_flags=0, flags=0)
            done = ctypes.c_uint32(count)
            out_batch = ctypes.c_uint32(0)
            try:
                lib.bpf_map_lookup_batch(
                    self.fd, None, ctypes.byref(out_batch), keys, values,
                    ctypes.byref(done), ctypes.byref(opts),
                )  # fmt: skip
            except LibbpfError as exc:
                if exc.errno in _NO_BATCH_OP:
                    self._batch_unsupported.add("lookup")
                elif exc.errno != errno.ENOENT:  # ENOENT: the end was reached, all read
                    raise with_detail(exc, f"map {self.name!r}: batch lookup") from None
            if "lookup" not in self._batch_unsupported:
                if done.value == count:
                    return values.raw
                # fewer than asked: the rest, one by one, from where the batch stopped
                return values.raw[: done.value * value_size] + self._values_from(done.value)
        return self._values_from(0)

    def _values_from(self, start: int) -> bytes:
        get = self.lookup_percpu if self.is_percpu else self.lookup
        stride = self.percpu_stride
        parts = []
        for index in range(start, self.max_entries):
            value = get(index.to_bytes(4, "little"))
            if self.is_percpu:
                parts.append(b"".join(v.ljust(stride, b"\0") for v in value or ()))
            else:
                parts.append(value or bytes(self.value_size))
        return b"".join(parts)

    def _batch(self, op: str, count: int, elem_flags: int, batch, one) -> int:
        if count == 0:
            return 0
        if op not in self._batch_unsupported:
            opts = BpfMapBatchOpts(
                sz=ctypes.sizeof(BpfMapBatchOpts), elem_flags=elem_flags, flags=0
            )
            done = ctypes.c_uint32(count)
            try:
                batch(ctypes.byref(done), ctypes.byref(opts))
                return count
            except LibbpfError as exc:
                # ENOTSUPP/EOPNOTSUPP: the map type has no batch op (count is left as
                # passed). EINVAL with nothing done: refused as a whole. Else: partial.
                missing_op = exc.errno in _NO_BATCH_OP
                if not missing_op and not (exc.errno == errno.EINVAL and done.value == 0):
                    raise with_detail(
                        exc, f"map {self.name!r}: batch {op} stopped after {done.value} of {count}"
                    ) from None
        # The kernel has no batch op for this map type (or refused the batch as a
        # whole): do it element by element, which also pinpoints a bad element.
        for i in range(count):
            with annotate(f"map {self.name!r}: {op} of element {i} of {count}"):
                one(i)
        self._batch_unsupported.add(op)
        return count


class ObjectMap(MapAccess):
    """A map of a `BpfObject` (libbpf's struct bpf_map): configurable until the
    object is loaded, usable by fd after, gone when the object is closed."""

    def __init__(self, handle, owner: BpfObject):
        self._handle = handle  # BpfMapPtr
        self._owner = owner
        self._friendly_name: str | None = None
        self._batch_unsupported = set()

    def _live(self):
        if self._owner.closed:
            raise ValueError(f"map {self._friendly_name or '?'!r}: its BPF object is closed")
        return self._handle

    @property
    def name(self) -> str:
        """The kernel's name of the map (internal maps get libbpf's `<obj>.rodata`-style name)."""
        return decode(lib.bpf_map__name(self._live()))

    @property
    def fd(self) -> int:
        fd = lib.bpf_map__fd(self._live())
        if fd < 0:
            raise LibbpfError(
                "bpf_map__fd",
                errno.EBADF,
                detail=f"map {self.name!r} is not loaded: call BpfObject.load() first",
            )
        return fd

    @property
    def type(self) -> MapType | int:
        return to_enum(MapType, lib.bpf_map__type(self._live()))

    @property
    def key_size(self) -> int:
        return lib.bpf_map__key_size(self._live())

    @property
    def value_size(self) -> int:
        return lib.bpf_map__value_size(self._live())

    @property
    def max_entries(self) -> int:
        return lib.bpf_map__max_entries(self._live())

    @property
    def flags(self) -> int:
        return lib.bpf_map__map_flags(self._live())

    @property
    def btf_key_type_id(self) -> int:
        """The key's type (`__type(key, ...)`) in the object's BTF; 0 if it has none."""
        return lib.bpf_map__btf_key_type_id(self._live())

    @property
    def btf_value_type_id(self) -> int:
        """The value's type (`__type(value, ...)`) in the object's BTF; 0 if it has none."""
        return lib.bpf_map__btf_value_type_id(self._live())

    @property
    def is_internal(self) -> bool:
        """True for the maps libbpf makes of .data/.rodata/.bss/.kconfig sections."""
        return bool(lib.bpf_map__is_internal(self._live()))

    # --- before load ----------------------------------------------------------

    def set_max_entries(self, n: int) -> None:
        """Resize the map; only before BpfObject.load()."""
        with annotate(f"map {self.name!r}: max_entries can only be set before load()"):
            lib.bpf_map__set_max_entries(self._live(), n)

    def reuse_fd(self, fd: int) -> None:
        """Use an existing map (of another object, or pinned) instead of creating this one
        at load; its shape must match. Only before BpfObject.load()."""
        with annotate(f"map {self.name!r}: reusing map fd {fd}"):
            lib.bpf_map__reuse_fd(self._live(), fd)

    def set_initial_value(self, data: bytes) -> None:
        """Initial contents of a .data/.rodata/.bss map (e.g. `const volatile` config); before load."""
        handle = self._live()
        size = ctypes.c_size_t()
        current = lib.bpf_map__initial_value(handle, ctypes.byref(size))
        if current and len(data) != size.value:
            raise ValueError(
                f"map {self.name!r}: initial value must be exactly {size.value} bytes, got {len(data)}"
            )
        buf = ctypes.create_string_buffer(bytes(data), len(data))
        with annotate(f"map {self.name!r}: initial value can only be set before load()"):
            lib.bpf_map__set_initial_value(handle, buf, len(data))  # libbpf copies it

    # --- pinning ----------------------------------------------------------------

    def pin(self, path: str | os.PathLike[str]) -> None:
        with annotate(f"pinning map {self.name!r} at {os.fspath(path)!r}"):
            lib.bpf_map__pin(self._live(), path_bytes(path))

    def unpin(self, path: str | os.PathLike[str] | None = None) -> None:
        with annotate(f"unpinning map {self.name!r}"):
            lib.bpf_map__unpin(self._live(), path_bytes(path) if path is not None else None)


class MapHandle(MapAccess, OwnedResource):
    """A map by fd alone, outside any object (reopened from a pin): owns its fd; close it."""

    def __init__(self, fd: int, info: BpfMapInfo):
        self._fd: int | None = fd
        self._info = info
        self._batch_unsupported = set()

    @classmethod
    def from_pinned(cls, path: str | os.PathLike[str]) -> MapHandle:
        """Open a map pinned in bpffs (bpf_obj_get)."""
        with annotate(f"opening pinned map {os.fspath(path)!r}"):
            fd = lib.bpf_obj_get(path_bytes(path))
        try:
            info = BpfMapInfo()
            size = ctypes.c_uint32(ctypes.sizeof(info))
            with annotate(f"reading map info of {os.fspath(path)!r}"):
                lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size))
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, info)

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise ValueError("map is closed")
        return self._fd

    @property
    def name(self) -> str:
        return decode(self._info.name)

    @property
    def type(self) -> MapType | int:
        return to_enum(MapType, self._info.type)

    @property
    def key_size(self) -> int:
        return self._info.key_size

    @property
    def value_size(self) -> int:
        return self._info.value_size

    @property
    def max_entries(self) -> int:
        return self._info.max_entries

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
