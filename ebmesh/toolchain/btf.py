"""Read BTF: the type information in `.BTF`, and the `.BTF.ext` records next to it.

Format: the kernel's Documentation/bpf/btf.rst. `.BTF` is a header, a type
section (each type a 12-byte `struct btf_type` plus kind-specific data) and a
string section. Type ids count from 1 in order of appearance; 0 is `void`.

Parsing is lazy: opening the 5 MB vmlinux BTF only walks the type headers to
find where each type starts; a type is decoded when first asked for.
"""

from __future__ import annotations

import enum
import os
import struct
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from ebmesh.errors import ToolchainError

BTF_MAGIC = 0xEB9F
POINTER_SIZE = 8  # BPF is a 64-bit target
_MAX_CHAIN = 64  # no sane type chain (typedef -> const -> ...) is longer; a cycle is


class BtfKind(enum.IntEnum):
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


# Bytes of kind-specific data after the common header: (fixed, per vlen entry).
_TRAILER = {
    BtfKind.INT: (4, 0),
    BtfKind.ARRAY: (12, 0),
    BtfKind.STRUCT: (0, 12),
    BtfKind.UNION: (0, 12),
    BtfKind.ENUM: (0, 8),
    BtfKind.FUNC_PROTO: (0, 8),
    BtfKind.VAR: (4, 0),
    BtfKind.DATASEC: (0, 12),
    BtfKind.DECL_TAG: (4, 0),
    BtfKind.ENUM64: (0, 12),
}
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
# Kinds whose third header word is a type id rather than a size.
_REFERRING_KINDS = frozenset(
    {
        BtfKind.PTR,
        BtfKind.TYPEDEF,
        BtfKind.VOLATILE,
        BtfKind.CONST,
        BtfKind.RESTRICT,
        BtfKind.FUNC,
        BtfKind.FUNC_PROTO,
        BtfKind.VAR,
        BtfKind.DECL_TAG,
        BtfKind.TYPE_TAG,
    }
)
# What `resolve` looks through: names and qualifiers that do not change layout.
_TRANSPARENT_KINDS = frozenset(
    {BtfKind.TYPEDEF, BtfKind.VOLATILE, BtfKind.CONST, BtfKind.RESTRICT, BtfKind.TYPE_TAG}
)


class Linkage(enum.IntEnum):
    """FUNC linkage (`vlen`) and VAR linkage share the first values."""

    STATIC = 0
    GLOBAL = 1
    EXTERN = 2


@dataclass(frozen=True)
class BtfMember:
    name: str  # "" for an anonymous struct or union member
    type_id: int
    bit_offset: int
    bitfield_size: int  # in bits; 0 unless the member is a bitfield


@dataclass(frozen=True)
class BtfParam:
    name: str
    type_id: int  # 0 with an empty name marks a variadic `...`


@dataclass(frozen=True)
class BtfEnumerator:
    name: str
    value: int


@dataclass(frozen=True)
class BtfVarSecinfo:
    type_id: int  # a VAR (or, in `.ksyms`, a FUNC)
    offset: int
    size: int


@dataclass(frozen=True)
class BtfArray:
    elem_type_id: int
    index_type_id: int
    nelems: int


@dataclass(frozen=True)
class BtfIntEncoding:
    signed: bool
    char: bool
    bool: bool
    bit_offset: int
    bits: int


@dataclass(frozen=True)
class BtfType:
    """One decoded type. Fields that do not apply to its kind are None or empty."""

    id: int
    kind: BtfKind
    name: str
    kflag: bool
    vlen: int
    size: int | None = None  # INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC
    type_id: int | None = None  # what PTR, TYPEDEF, CONST, FUNC, VAR, ... refer to
    linkage: Linkage | int | None = None  # FUNC and VAR
    int_encoding: BtfIntEncoding | None = None
    array: BtfArray | None = None
    members: tuple[BtfMember, ...] = ()
    enumerators: tuple[BtfEnumerator, ...] = ()
    params: tuple[BtfParam, ...] = ()
    secinfos: tuple[BtfVarSecinfo, ...] = ()
    component_idx: int | None = None  # DECL_TAG: -1 for the decl itself, else member/param

    @property
    def is_composite(self) -> bool:
        return self.kind in (BtfKind.STRUCT, BtfKind.UNION)


VOID = BtfType(id=0, kind=BtfKind.UNKN, name="void", kflag=False, vlen=0)


@dataclass(frozen=True)
class StructMember:
    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int  # bits, 0 if not a bitfield
    size: int  # bytes of the member's declared type

    @property
    def offset(self) -> int:
        """Byte offset (of the containing storage unit, for a bitfield)."""
        return self.bit_offset // 8


@dataclass(frozen=True)
class StructInfo:
    type_id: int
    name: str
    kind: BtfKind  # STRUCT or UNION
    size: int
    members: tuple[StructMember, ...]

    def member(self, name: str) -> StructMember:
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError(f"{self.kind.name.lower()} {self.name} has no member {name!r}")


@dataclass(frozen=True)
class DatasecVariable:
    name: str
    type_id: int  # the variable's type (not the VAR's id)
    var_id: int  # the VAR (or FUNC, for kfuncs in `.ksyms`)
    offset: int
    size: int
    linkage: Linkage | int | None


@dataclass(frozen=True)
class Datasec:
    """A DATASEC. In an object straight from clang, offsets and sizes may still
    be 0: libbpf fills them in from the ELF symbols at load time."""

    name: str
    type_id: int
    size: int
    variables: tuple[DatasecVariable, ...]


class Btf:
    """A parsed `.BTF` section (or /sys/kernel/btf/vmlinux)."""

    def __init__(self, data: bytes):
        self._data = bytes(data)
        self._endian = _endianness(self._data, "BTF", BTF_MAGIC)
        header = _unpack(self._endian + "HBBIIIII", self._data, 0, "BTF header")
        _magic, self.version, self.flags, hdr_len, type_off, type_len, str_off, str_len = header
        type_start, str_start = hdr_len + type_off, hdr_len + str_off
        for what, start, length in (("type", type_start, type_len), ("string", str_start, str_len)):
            if start + length > len(self._data):
                raise ToolchainError(
                    f"malformed BTF: {what} section [{start}, {start + length}) "
                    f"is beyond the {len(self._data)} bytes of data"
                )
        self._strings = self._data[str_start : str_start + str_len]
        self._header = struct.Struct(self._endian + "III")
        self._offsets = array("L", [0])  # index = type id; 0 is void
        self._name_offsets = array("L", [0])
        self._index_types(type_start, type_start + type_len)
        self._decoded: dict[int, BtfType] = {0: VOID}
        self._string_cache: dict[int, str] = {}

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Btf:
        with open(path, "rb") as file:
            return cls(file.read())

    def _index_types(self, position: int, end: int) -> None:
        header = self._header
        while position < end:
            if position + header.size > end:
                raise ToolchainError(f"malformed BTF: type {len(self._offsets)} is cut off")
            name_off, info, _ = header.unpack_from(self._data, position)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            try:
                fixed, per_entry = _TRAILER.get(BtfKind(kind), (0, 0))
            except ValueError:
                raise ToolchainError(
                    f"BTF type {len(self._offsets)} has kind {kind}, unknown to ebmesh; "
                    "a newer kernel or clang may need a newer ebmesh"
                ) from None
            self._offsets.append(position)
            self._name_offsets.append(name_off)
            position += header.size + fixed + per_entry * vlen
        if position != end:
            raise ToolchainError("malformed BTF: the last type runs past the type section")

    # -- lookup ------------------------------------------------------------

    def __len__(self) -> int:
        """Number of types, not counting void."""
        return len(self._offsets) - 1

    def type(self, type_id: int) -> BtfType:
        """The type with this id; `VOID` for 0. KeyError for ids out of range."""
        found = self._decoded.get(type_id)
        if found is None:
            if not 0 < type_id < len(self._offsets):
                raise KeyError(f"no BTF type {type_id} (there are {len(self)})")
            found = self._decode(type_id)
            self._decoded[type_id] = found
        return found

    def types(self) -> Iterator[BtfType]:
        """Every type, in id order (void excluded)."""
        for type_id in range(1, len(self._offsets)):
            yield self.type(type_id)

    def string(self, offset: int) -> str:
        cached = self._string_cache.get(offset)
        if cached is None:
            if offset >= len(self._strings) and offset:
                raise ToolchainError(f"malformed BTF: string offset {offset} out of range")
            end = self._strings.find(b"\0", offset)
            raw = self._strings[offset:] if end < 0 else self._strings[offset:end]
            cached = raw.decode("utf-8", errors="replace")
            self._string_cache[offset] = cached
        return cached

    @cached_property
    def _ids_by_name(self) -> dict[str, list[int]]:
        by_name: dict[str, list[int]] = {}
        for type_id in range(1, len(self._offsets)):
            if self._name_offsets[type_id]:
                by_name.setdefault(self.string(self._name_offsets[type_id]), []).append(type_id)
        return by_name

    def find(self, name: str, kind: BtfKind | None = None) -> list[BtfType]:
        """All types called `name` (of `kind`, if given), in id order."""
        found = (self.type(type_id) for type_id in self._ids_by_name.get(name, ()))
        return [t for t in found if kind is None or t.kind == kind]

    def find_struct(self, name: str, kind: BtfKind = BtfKind.STRUCT) -> StructInfo | None:
        """The struct (or, with `kind=BtfKind.UNION`, union) called `name`, or None."""
        for candidate in self.find(name, kind):
            return self.struct_info(candidate.id)
        return None

    def struct_info(self, type_id: int) -> StructInfo:
        composite = self.type(type_id)
        if not composite.is_composite:
            raise ValueError(
                f"BTF type {type_id} is a {composite.kind.name}, not a struct or union"
            )
        members = tuple(
            StructMember(m.name, m.type_id, m.bit_offset, m.bitfield_size, self.sizeof(m.type_id))
            for m in composite.members
        )
        return StructInfo(type_id, composite.name, composite.kind, composite.size or 0, members)

    def datasecs(self) -> list[Datasec]:
        return [self.datasec_info(t.id) for t in self.types() if t.kind == BtfKind.DATASEC]

    def datasec(self, name: str) -> Datasec | None:
        for candidate in self.find(name, BtfKind.DATASEC):
            return self.datasec_info(candidate.id)
        return None

    def datasec_info(self, type_id: int) -> Datasec:
        section = self.type(type_id)
        variables = []
        for info in section.secinfos:
            var = self.type(info.type_id)
            variables.append(
                DatasecVariable(
                    name=var.name,
                    type_id=var.type_id or 0,
                    var_id=var.id,
                    offset=info.offset,
                    size=info.size,
                    linkage=var.linkage,
                )
            )
        return Datasec(section.name, type_id, section.size or 0, tuple(variables))

    # -- type algebra ------------------------------------------------------

    def resolve(self, type_id: int) -> BtfType:
        """Look through typedefs, const, volatile, restrict and type tags."""
        current = self.type(type_id)
        for _ in range(_MAX_CHAIN):
            if current.kind not in _TRANSPARENT_KINDS:
                return current
            current = self.type(current.type_id or 0)
        raise ToolchainError(f"malformed BTF: type {type_id} refers to itself")

    def sizeof(self, type_id: int) -> int:
        """Size in bytes, as C's sizeof. ValueError for void, functions and forward decls."""
        multiplier = 1
        current = self.type(type_id)
        for _ in range(_MAX_CHAIN):
            if current.kind in _SIZED_KINDS:
                return multiplier * (current.size or 0)
            if current.kind == BtfKind.PTR:
                return multiplier * POINTER_SIZE
            if current.kind == BtfKind.ARRAY and current.array is not None:
                multiplier *= current.array.nelems
                current = self.type(current.array.elem_type_id)
            elif current.kind in _TRANSPARENT_KINDS or current.kind == BtfKind.VAR:
                current = self.type(current.type_id or 0)
            else:
                raise ValueError(f"BTF type {type_id} ({self.type_name(type_id)}) has no size")
        raise ToolchainError(f"malformed BTF: type {type_id} refers to itself")

    def type_name(self, type_id: int, _depth: int = 0) -> str:
        """A C-like spelling: `struct sock`, `__u32`, `char[4]`, `const int *`."""
        if _depth > _MAX_CHAIN:
            return "..."
        t = self.type(type_id)
        inner = t.type_id or 0
        if t.kind in (BtfKind.STRUCT, BtfKind.UNION, BtfKind.ENUM, BtfKind.ENUM64):
            keyword = "enum" if t.kind == BtfKind.ENUM64 else t.kind.name.lower()
            return f"{keyword} {t.name or '(anon)'}"
        if t.kind == BtfKind.FWD:
            return f"{'union' if t.kflag else 'struct'} {t.name}"
        if t.kind == BtfKind.PTR:
            return f"{self.type_name(inner, _depth + 1)} *"
        if t.kind in (BtfKind.CONST, BtfKind.VOLATILE, BtfKind.RESTRICT):
            return f"{t.kind.name.lower()} {self.type_name(inner, _depth + 1)}"
        if t.kind == BtfKind.ARRAY and t.array is not None:
            elem = self.type_name(t.array.elem_type_id, _depth + 1)
            return f"{elem}[{t.array.nelems}]"
        if t.kind == BtfKind.FUNC_PROTO:
            params = ", ".join(
                self.type_name(p.type_id, _depth + 1) if p.type_id else "..." for p in t.params
            )
            return f"{self.type_name(inner, _depth + 1)} (*)({params})"
        if t.kind == BtfKind.TYPE_TAG:
            return f"{self.type_name(inner, _depth + 1)} __tag({t.name})"
        return t.name or t.kind.name.lower()

    def core_access_path(self, type_id: int, access: str, kind: CoreRelocKind | None = None) -> str:
        """Spell a CO-RE access string the way libbpf's logs do, e.g.
        `struct sock.__sk_common.skc_family` for type `struct sock` and "0:0:1"."""
        root = self.type_name(type_id)
        try:
            indexes = [int(part) for part in access.split(":")]
        except ValueError:
            return f"{root} ({access})"
        if kind is not None and kind.is_type_based:
            return root
        current = self.resolve(type_id)
        if kind is not None and kind.is_enumval_based:
            values = current.enumerators
            index = indexes[0]
            name = values[index].name if 0 <= index < len(values) else f"#{index}"
            return f"{root}::{name}"
        path = root if indexes[0] == 0 else f"{root}[{indexes[0]}]"
        for index in indexes[1:]:
            if current.is_composite and 0 <= index < len(current.members):
                member = current.members[index]
                path += f".{member.name or '(anon)'}"
                current = self.resolve(member.type_id)
            elif current.kind == BtfKind.ARRAY and current.array is not None:
                path += f"[{index}]"
                current = self.resolve(current.array.elem_type_id)
            else:
                return f"{path} ({access})"
        return path

    # -- decoding ----------------------------------------------------------

    def _decode(self, type_id: int) -> BtfType:
        data, endian = self._data, self._endian
        position = self._offsets[type_id]
        name_off, info, size_or_type = self._header.unpack_from(data, position)
        kind = BtfKind((info >> 24) & 0x1F)
        vlen, kflag = info & 0xFFFF, bool(info >> 31)
        body = position + self._header.size
        common = dict(id=type_id, kind=kind, name=self.string(name_off), kflag=kflag, vlen=vlen)
        if kind in _SIZED_KINDS:
            common["size"] = size_or_type
        elif kind in _REFERRING_KINDS:
            common["type_id"] = size_or_type

        if kind == BtfKind.INT:
            (word,) = struct.unpack_from(endian + "I", data, body)
            encoding = (word >> 24) & 0x0F
            common["int_encoding"] = BtfIntEncoding(
                signed=bool(encoding & 1),
                char=bool(encoding & 2),
                bool=bool(encoding & 4),
                bit_offset=(word >> 16) & 0xFF,
                bits=word & 0xFF,
            )
        elif kind == BtfKind.ARRAY:
            common["array"] = BtfArray(*struct.unpack_from(endian + "III", data, body))
        elif kind in (BtfKind.STRUCT, BtfKind.UNION):
            members = []
            for name, member_type, offset in struct.iter_unpack(
                endian + "III", data[body : body + 12 * vlen]
            ):
                # With kflag set, the top 8 bits of the offset carry the bitfield size.
                bit_offset, bits = (offset & 0xFFFFFF, offset >> 24) if kflag else (offset, 0)
                members.append(BtfMember(self.string(name), member_type, bit_offset, bits))
            common["members"] = tuple(members)
        elif kind == BtfKind.ENUM:
            form = endian + ("Ii" if kflag else "II")  # kflag: signed values
            common["enumerators"] = tuple(
                BtfEnumerator(self.string(name), value)
                for name, value in struct.iter_unpack(form, data[body : body + 8 * vlen])
            )
        elif kind == BtfKind.ENUM64:
            values = []
            for name, low, high in struct.iter_unpack(
                endian + "III", data[body : body + 12 * vlen]
            ):
                value = (high << 32) | low
                if kflag and value >= 1 << 63:
                    value -= 1 << 64
                values.append(BtfEnumerator(self.string(name), value))
            common["enumerators"] = tuple(values)
        elif kind == BtfKind.FUNC_PROTO:
            common["params"] = tuple(
                BtfParam(self.string(name), param_type)
                for name, param_type in struct.iter_unpack(
                    endian + "II", data[body : body + 8 * vlen]
                )
            )
        elif kind == BtfKind.FUNC:
            common["linkage"] = _linkage(vlen)
        elif kind == BtfKind.VAR:
            common["linkage"] = _linkage(struct.unpack_from(endian + "I", data, body)[0])
        elif kind == BtfKind.DATASEC:
            common["secinfos"] = tuple(
                BtfVarSecinfo(*entry)
                for entry in struct.iter_unpack(endian + "III", data[body : body + 12 * vlen])
            )
        elif kind == BtfKind.DECL_TAG:
            common["component_idx"] = struct.unpack_from(endian + "i", data, body)[0]
        return BtfType(**common)


def _linkage(value: int) -> Linkage | int:
    try:
        return Linkage(value)
    except ValueError:
        return value


# -- .BTF.ext ------------------------------------------------------------------


class CoreRelocKind(enum.IntEnum):
    """enum bpf_core_relo_kind; the lower-case names are libbpf's."""

    FIELD_BYTE_OFFSET = 0
    FIELD_BYTE_SIZE = 1
    FIELD_EXISTS = 2
    FIELD_SIGNED = 3
    FIELD_LSHIFT_U64 = 4
    FIELD_RSHIFT_U64 = 5
    TYPE_ID_LOCAL = 6
    TYPE_ID_TARGET = 7
    TYPE_EXISTS = 8
    TYPE_SIZE = 9
    ENUMVAL_EXISTS = 10
    ENUMVAL_VALUE = 11
    TYPE_MATCHES = 12

    @property
    def is_type_based(self) -> bool:
        return self in (
            CoreRelocKind.TYPE_ID_LOCAL,
            CoreRelocKind.TYPE_ID_TARGET,
            CoreRelocKind.TYPE_EXISTS,
            CoreRelocKind.TYPE_SIZE,
            CoreRelocKind.TYPE_MATCHES,
        )

    @property
    def is_enumval_based(self) -> bool:
        return self in (CoreRelocKind.ENUMVAL_EXISTS, CoreRelocKind.ENUMVAL_VALUE)

    @property
    def libbpf_name(self) -> str:
        return _CORE_RELOC_NAMES[self]


_CORE_RELOC_NAMES = {
    CoreRelocKind.FIELD_BYTE_OFFSET: "byte_off",
    CoreRelocKind.FIELD_BYTE_SIZE: "byte_sz",
    CoreRelocKind.FIELD_EXISTS: "field_exists",
    CoreRelocKind.FIELD_SIGNED: "signed",
    CoreRelocKind.FIELD_LSHIFT_U64: "lshift_u64",
    CoreRelocKind.FIELD_RSHIFT_U64: "rshift_u64",
    CoreRelocKind.TYPE_ID_LOCAL: "local_type_id",
    CoreRelocKind.TYPE_ID_TARGET: "target_type_id",
    CoreRelocKind.TYPE_EXISTS: "type_exists",
    CoreRelocKind.TYPE_SIZE: "type_size",
    CoreRelocKind.ENUMVAL_EXISTS: "enumval_exists",
    CoreRelocKind.ENUMVAL_VALUE: "enumval_value",
    CoreRelocKind.TYPE_MATCHES: "type_matches",
}


@dataclass(frozen=True)
class FuncInfo:
    section: str
    insn_off: int  # bytes from the start of the ELF section
    type_id: int  # a FUNC


@dataclass(frozen=True)
class LineInfo:
    section: str
    insn_off: int
    file_name: str
    line_text: str
    line: int
    column: int


@dataclass(frozen=True)
class CoreRelocation:
    section: str
    insn_off: int
    type_id: int  # the root type, in the object's own BTF
    access: str  # e.g. "0:1:2": array index, then member/element indexes
    kind: CoreRelocKind | int

    @property
    def insn_index(self) -> int:
        return self.insn_off // 8


@dataclass(frozen=True)
class BtfExt:
    """The parsed `.BTF.ext` section. Strings live in the matching `.BTF`."""

    func_info: tuple[FuncInfo, ...]
    line_info: tuple[LineInfo, ...]
    core_relocations: tuple[CoreRelocation, ...]

    @classmethod
    def parse(cls, data: bytes, btf: Btf) -> BtfExt:
        endian = _endianness(data, "BTF.ext", BTF_MAGIC)
        _magic, _version, _flags, hdr_len = _unpack(endian + "HBBI", data, 0, "BTF.ext header")
        offsets = _unpack(endian + "IIII", data, 8, "BTF.ext header")
        core = (0, 0)
        if hdr_len >= 32:  # the CO-RE part of the header came later (kernel 5.11 era)
            core = _unpack(endian + "II", data, 24, "BTF.ext header")

        def records(offset: int, length: int, minimum: int, what: str):
            return _ext_records(data, endian, hdr_len + offset, length, minimum, what, btf)

        func_info = tuple(
            FuncInfo(section, insn_off, type_id)
            for section, (insn_off, type_id) in records(offsets[0], offsets[1], 8, "func_info")
        )
        line_info = tuple(
            LineInfo(
                section,
                insn_off,
                btf.string(file_off),
                btf.string(line_off),
                line_col >> 10,
                line_col & 0x3FF,
            )
            for section, (insn_off, file_off, line_off, line_col) in records(
                offsets[2], offsets[3], 16, "line_info"
            )
        )
        core_relocations = tuple(
            CoreRelocation(section, insn_off, type_id, btf.string(access_off), _core_kind(kind))
            for section, (insn_off, type_id, access_off, kind) in records(
                core[0], core[1], 16, "core_relo"
            )
        )
        return cls(func_info, line_info, core_relocations)


def _core_kind(value: int) -> CoreRelocKind | int:
    try:
        return CoreRelocKind(value)
    except ValueError:
        return value


def _ext_records(
    data: bytes, endian: str, start: int, length: int, minimum: int, what: str, btf: Btf
):
    """Yield (section name, record fields) from one `.BTF.ext` info block.

    A block is a record size, then per ELF section: name offset, record count,
    records. Records may grow in later versions, so step by the declared size
    and read only the fields known here.
    """
    if length == 0:
        return
    end = start + length
    if end > len(data) or length < 4:
        raise ToolchainError(f"malformed BTF.ext: {what} block is out of bounds")
    (record_size,) = struct.unpack_from(endian + "I", data, start)
    if record_size < minimum:
        raise ToolchainError(f"malformed BTF.ext: {what} records of {record_size} bytes")
    fields = struct.Struct(endian + "I" * (minimum // 4))
    position = start + 4
    while position < end:
        name_off, count = _unpack(endian + "II", data, position, f"BTF.ext {what}")
        position += 8
        if position + count * record_size > end:
            raise ToolchainError(f"malformed BTF.ext: {what} records run past their block")
        section = btf.string(name_off)
        for _ in range(count):
            yield section, fields.unpack_from(data, position)
            position += record_size


def _endianness(data: bytes, what: str, magic: int) -> str:
    if len(data) < 8:
        raise ToolchainError(f"malformed {what}: {len(data)} bytes is too short for a header")
    (little,) = struct.unpack_from("<H", data, 0)
    if little == magic:
        return "<"
    if little == struct.unpack("<H", struct.pack(">H", magic))[0]:
        return ">"
    raise ToolchainError(f"malformed {what}: bad magic {little:#06x}")


def _unpack(form: str, data: bytes, offset: int, what: str) -> tuple:
    try:
        return struct.unpack_from(form, data, offset)
    except struct.error as err:
        raise ToolchainError(f"malformed {what}: {err}") from err
