"""An object's BTF, read through libbpf's BTF API (btf__type_by_id and friends).

A `Btf` borrows the `struct btf` of an open `BpfObject`: libbpf's copy, after
its open step filled in DATASEC offsets and rewrote extern declarations, so
what is read here is what libbpf will hand to the kernel. Types are decoded
into plain values on first use; only the kinds ebmesh reads have their
records decoded (struct and union members, arrays, integers, functions and
their prototypes, variables and data sections).
"""

from __future__ import annotations

import ctypes
import enum
import errno
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import LibbpfError, ToolchainError
from ._common import decode
from .libbpf import (
    BtfArrayRecord,
    BtfMemberRecord,
    BtfParamRecord,
    BtfTypeRecord,
    BtfVarRecord,
    BtfVarSecinfoRecord,
    lib,
)

if TYPE_CHECKING:
    from .object import BpfObject


class BtfKind(enum.IntEnum):
    """BTF_KIND_* (linux/btf.h)."""

    UNKN = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


class Linkage(enum.IntEnum):
    """Of a FUNC (its vlen) or a VAR; the two enums share these values."""

    STATIC = 0
    GLOBAL = 1
    EXTERN = 2


# Kinds whose third header word is a size; for the others it is a type id.
_SIZED_KINDS = frozenset(
    {
        BtfKind.INT,
        BtfKind.STRUCT,
        BtfKind.UNION,
        BtfKind.ENUM,
        BtfKind.FLOAT,
        BtfKind.DATASEC,
        BtfKind.ENUM64,
    }
)
_INT_SIGNED = 1 << 24  # BTF_INT_SIGNED, in the encoding word after an INT
# No C type nests deeper than this; a cycle in malformed BTF would.
_MAX_NESTING = 32


@dataclass(frozen=True)
class BtfMember:
    name: str  # "" for an anonymous struct or union member
    type_id: int
    bit_offset: int
    bitfield_size: int  # bits; 0 unless the member is a bitfield

    @property
    def offset(self) -> int:
        """Byte offset (of the storage unit holding it, for a bitfield)."""
        return self.bit_offset // 8


@dataclass(frozen=True)
class BtfParam:
    name: str
    type_id: int  # 0 (with no name) marks a variadic `...`


@dataclass(frozen=True)
class BtfArray:
    elem_type_id: int
    nelems: int


@dataclass(frozen=True)
class BtfVariable:
    """One entry of a DATASEC: a VAR (or, in `.ksyms`, a FUNC) at an offset."""

    type_id: int
    offset: int
    size: int


@dataclass(frozen=True)
class BtfType:
    """One type. Fields that do not apply to its kind are None or empty."""

    id: int
    kind: BtfKind | int
    name: str
    kflag: bool = False  # FWD: of a union; STRUCT, UNION: members carry bitfield sizes
    size: int | None = None  # INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC
    type_id: int | None = None  # what PTR, TYPEDEF, CONST, FUNC, VAR, ... refer to
    signed: bool | None = None  # INT
    linkage: Linkage | int | None = None  # FUNC, VAR
    array: BtfArray | None = None
    members: tuple[BtfMember, ...] = ()
    params: tuple[BtfParam, ...] = ()  # FUNC_PROTO; its return type is `type_id`
    variables: tuple[BtfVariable, ...] = ()  # DATASEC


def _records(record_type, after: BtfTypeRecord, count: int):
    """The `count` records of `record_type` that follow a btf_type in libbpf's memory."""
    address = ctypes.addressof(after) + ctypes.sizeof(BtfTypeRecord)
    return (record_type * count).from_address(address)


def _enum_or_int(enum_cls, value: int):
    try:
        return enum_cls(value)
    except ValueError:
        return value


class Btf:
    """The BTF of an open `BpfObject`; valid until the object is closed."""

    def __init__(self, handle, owner: BpfObject):
        self._handle = handle  # BtfPtr, owned by the object
        self._owner = owner
        self._decoded: dict[int, BtfType] = {}

    def _live(self):
        if self._owner.closed:
            raise ValueError("BTF of a closed BPF object")
        return self._handle

    def __len__(self) -> int:
        """The number of types, void not counted."""
        return lib.btf__type_cnt(self._live()) - 1

    def string(self, offset: int) -> str:
        """A string of the BTF's string section (names; .BTF.ext's file names and CO-RE access strings)."""
        raw = lib.btf__name_by_offset(self._live(), offset)
        if raw is None:
            raise ToolchainError(f"malformed BTF: no string at offset {offset}")
        return decode(raw)

    def type(self, type_id: int) -> BtfType:
        """The type with this id (0 is void). KeyError for an id out of range."""
        found = self._decoded.get(type_id)
        if found is None:
            found = self._decode(type_id)
            self._decoded[type_id] = found
        return found

    def types(self) -> Iterator[BtfType]:
        """Every type but void, in id order."""
        for type_id in range(1, len(self) + 1):
            yield self.type(type_id)

    def find(self, name: str, kind: BtfKind) -> BtfType | None:
        """The first type of `kind` called `name`, or None."""
        try:
            type_id = lib.btf__find_by_name_kind(self._live(), name.encode(), int(kind))
        except LibbpfError as err:
            if err.errno == errno.ENOENT:
                return None
            raise
        return self.type(type_id)

    def resolve(self, type_id: int) -> BtfType:
        """Through typedefs, qualifiers and variables to the type that has a layout."""
        return self.type(lib.btf__resolve_type(self._live(), type_id))

    def sizeof(self, type_id: int) -> int:
        """Bytes, as C's sizeof. LibbpfError (EINVAL) for void, functions and forward declarations."""
        return lib.btf__resolve_size(self._live(), type_id)

    def type_name(self, type_id: int) -> str:
        """A C spelling: `struct sock`, `__u32`, `char[4]`, `const volatile __u32`, `struct flow *`."""
        return self._spell(type_id, _MAX_NESTING)

    def _spell(self, type_id: int, depth: int) -> str:
        if type_id == 0:
            return "void"
        if depth == 0:
            return "..."
        try:
            t = self.type(type_id)
        except KeyError:
            raise ToolchainError(
                f"malformed BTF: a reference to type {type_id}, which is not there"
            ) from None
        inner = t.type_id or 0
        if t.kind in (BtfKind.STRUCT, BtfKind.UNION, BtfKind.ENUM, BtfKind.ENUM64):
            keyword = "enum" if t.kind == BtfKind.ENUM64 else t.kind.name.lower()
            return f"{keyword} {t.name or '(anon)'}"
        if t.kind == BtfKind.FWD:
            return f"{'union' if t.kflag else 'struct'} {t.name}"
        if t.kind == BtfKind.PTR:
            return f"{self._spell(inner, depth - 1)} *"
        if t.kind in (BtfKind.CONST, BtfKind.VOLATILE, BtfKind.RESTRICT):
            return f"{t.kind.name.lower()} {self._spell(inner, depth - 1)}"
        if t.kind == BtfKind.ARRAY and t.array is not None:
            return f"{self._spell(t.array.elem_type_id, depth - 1)}[{t.array.nelems}]"
        if t.kind == BtfKind.FUNC_PROTO:
            params = ", ".join(
                self._spell(p.type_id, depth - 1) if p.type_id else "..." for p in t.params
            )
            return f"{self._spell(inner, depth - 1)} (*)({params})"
        return t.name or (t.kind.name.lower() if isinstance(t.kind, BtfKind) else str(t.kind))

    def _decode(self, type_id: int) -> BtfType:
        handle = self._live()
        if not 0 <= type_id <= len(self):
            raise KeyError(f"no BTF type {type_id} (there are {len(self)})")
        record = lib.btf__type_by_id(handle, type_id).contents
        kind = _enum_or_int(BtfKind, (record.info >> 24) & 0x1F)
        vlen, kflag = record.info & 0xFFFF, bool(record.info >> 31)
        name = self.string(record.name_off)
        fields: dict = {"id": type_id, "kind": kind, "name": name, "kflag": kflag}
        if kind in _SIZED_KINDS:
            fields["size"] = record.size_or_type
        else:
            fields["type_id"] = record.size_or_type
        if kind == BtfKind.INT:
            (encoding,) = _records(ctypes.c_uint32, record, 1)
            fields["signed"] = bool(encoding & _INT_SIGNED)
        elif kind == BtfKind.ARRAY:
            (array,) = _records(BtfArrayRecord, record, 1)
            fields["array"] = BtfArray(array.type, array.nelems)
        elif kind in (BtfKind.STRUCT, BtfKind.UNION):
            fields["members"] = tuple(
                # With kflag set, the top 8 bits of the offset are a bitfield's size.
                BtfMember(
                    self.string(m.name_off),
                    m.type,
                    m.offset & 0xFFFFFF if kflag else m.offset,
                    m.offset >> 24 if kflag else 0,
                )
                for m in _records(BtfMemberRecord, record, vlen)
            )
        elif kind == BtfKind.FUNC_PROTO:
            fields["params"] = tuple(
                BtfParam(self.string(p.name_off), p.type)
                for p in _records(BtfParamRecord, record, vlen)
            )
        elif kind == BtfKind.FUNC:
            fields["linkage"] = _enum_or_int(Linkage, vlen)
        elif kind == BtfKind.VAR:
            (var,) = _records(BtfVarRecord, record, 1)
            fields["linkage"] = _enum_or_int(Linkage, var.linkage)
        elif kind == BtfKind.DATASEC:
            fields["variables"] = tuple(
                BtfVariable(v.type, v.offset, v.size)
                for v in _records(BtfVarSecinfoRecord, record, vlen)
            )
        return BtfType(**fields)
