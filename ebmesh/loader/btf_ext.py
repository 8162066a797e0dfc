"""The `.BTF.ext` section: func_info, line_info and CO-RE relocation records.

Read by hand because nothing else can: libbpf parses `.BTF.ext` at open but
exposes neither the records nor their counts (btf_ext__new and
btf_ext__get_raw_data only hand back bytes), and neither pyelftools nor any
packaged library knows the format. It is small and stable
(Documentation/bpf/btf.rst): a header, then per info kind a record size and,
per ELF section, a name, a count and the records. Strings (section names,
CO-RE access strings) are offsets into the matching `.BTF`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ToolchainError

if TYPE_CHECKING:
    from .btf import Btf

BTF_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, func/line info off+len
_CORE_PART = struct.Struct("<II")  # core_relo off+len, in headers of 32 bytes or more
_BLOCK_HEAD = struct.Struct("<II")  # section name offset, record count
_FUNC_INFO_SIZE, _LINE_INFO_SIZE = 8, 16
_CORE_RELO = struct.Struct("<IIII")  # insn_off, type_id, access_str_off, kind


@dataclass(frozen=True)
class CoreRelocation:
    """One CO-RE relocation: libbpf rewrites the instruction for the running kernel."""

    section: str  # the ELF section of the instruction
    insn_index: int  # its slot in that section
    type_id: int  # the root type, in the object's own BTF
    type_name: str  # its C spelling, e.g. `struct sock`
    access: str  # e.g. "0:0:1": array index, then member indexes (see libbpf's relo_core.c)
    kind: int  # enum bpf_core_relo_kind: 0 is a field's byte offset


@dataclass(frozen=True)
class BtfExt:
    func_info_count: int
    line_info_count: int
    core_relocations: tuple[CoreRelocation, ...]

    @classmethod
    def parse(cls, data: bytes, btf: Btf) -> BtfExt:
        if len(data) < _HEADER.size:
            raise ToolchainError(f"malformed .BTF.ext: {len(data)} bytes, too short for a header")
        magic, _version, _flags, header_size, *offsets = _HEADER.unpack_from(data)
        if magic != BTF_MAGIC:
            raise ToolchainError(f"malformed .BTF.ext: magic {magic:#06x}, not {BTF_MAGIC:#06x}")
        if header_size < _HEADER.size:
            raise ToolchainError(f"malformed .BTF.ext: a header of {header_size} bytes")
        func_off, func_len, line_off, line_len = offsets
        core_off = core_len = 0
        if header_size >= _HEADER.size + _CORE_PART.size:  # CO-RE came later (kernel 5.11 era)
            core_off, core_len = _CORE_PART.unpack_from(data, _HEADER.size)

        def block(offset: int, length: int, minimum: int, what: str):
            return _records(data, header_size + offset, length, minimum, what, btf)

        func_info_count = sum(1 for _ in block(func_off, func_len, _FUNC_INFO_SIZE, "func_info"))
        line_info_count = sum(1 for _ in block(line_off, line_len, _LINE_INFO_SIZE, "line_info"))
        core = []
        for section, position in block(core_off, core_len, _CORE_RELO.size, "CO-RE"):
            insn_off, type_id, access_off, kind = _CORE_RELO.unpack_from(data, position)
            if not 0 < type_id <= len(btf):
                raise ToolchainError(f"malformed .BTF.ext: a CO-RE record of type {type_id}")
            type_name, access = btf.type_name(type_id), btf.string(access_off)
            core.append(CoreRelocation(section, insn_off // 8, type_id, type_name, access, kind))
        return cls(func_info_count, line_info_count, tuple(core))


def _records(data: bytes, start: int, length: int, minimum: int, what: str, btf: Btf):
    """(section name, offset of the record) for each record of one info block.

    Records may grow in later versions: step by the declared record size and
    read only the fields known here.
    """
    if length == 0:
        return
    end = start + length
    if end > len(data) or length < 4:
        raise ToolchainError(f"malformed .BTF.ext: the {what} block is out of bounds")
    (record_size,) = struct.unpack_from("<I", data, start)
    if record_size < minimum:
        raise ToolchainError(f"malformed .BTF.ext: {what} records of {record_size} bytes")
    position = start + 4
    while position < end:
        if position + _BLOCK_HEAD.size > end:
            raise ToolchainError(f"malformed .BTF.ext: a {what} section header is cut off")
        name_off, count = _BLOCK_HEAD.unpack_from(data, position)
        position += _BLOCK_HEAD.size
        if position + count * record_size > end:
            raise ToolchainError(f"malformed .BTF.ext: {what} records run past their block")
        section = btf.string(name_off)
        for _ in range(count):
            yield section, position
            position += record_size
