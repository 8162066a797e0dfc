"""What is inside a compiled eBPF object, read without loading it (no kernel, no root).

libbpf's own open step (bpf_object__open_mem) says what it will make of the
object: the programs with their program and attach types, the maps with their
definitions, the BTF. What libbpf keeps to itself comes from the ELF, read
with pyelftools: each function's code (the `.text` subprograms included), the
relocations saying what it refers to, global data and the license; and from
`.BTF.ext` (btf_ext.py), the CO-RE relocations. The result is plain data: the
object is closed again before `inspect_object` returns.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import io
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, replace

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import Section, SymbolTableSection

from ..errors import LibbpfError, ToolchainError
from .btf import Btf, BtfKind
from .btf_ext import BtfExt, CoreRelocation
from .constants import AttachType, MapType, ProgType
from .insn import INSN_SIZE, Instruction, decode
from .libbpf import lib
from .object import BpfObject
from .programs import BpfProgram

TEXT_SECTION = ".text"  # where subprograms live: functions only programs call
_MAPS_SECTION = ".maps"
_DATA_PREFIXES = (".rodata", ".data", ".bss")
_SHF_EXECINSTR = 0x4


class RelocationKind(enum.Enum):
    MAP = "map"  # the address of a map of `.maps`
    GLOBAL_DATA = "global data"  # the address of a variable of .rodata*, .data* or .bss*
    SUBPROG_CALL = "call"  # a BPF-to-BPF call
    KFUNC_CALL = "kfunc call"  # a call of an `extern ... __ksym` function
    OTHER = "other"  # a function's address (a callback), a __ksym variable, ...


@dataclass(frozen=True)
class Relocation:
    insn_index: int  # the slot of the instruction patched, in its ELF section
    kind: RelocationKind
    target: str  # the map, variable, function or extern meant


@dataclass(frozen=True)
class Program:
    name: str
    section: str
    prog_type: ProgType | int | None  # None for a subprogram
    attach_type: AttachType | int | None  # None: it attaches without one (or is a subprogram)
    is_subprogram: bool
    first_index: int  # the slot of its first instruction in its section
    instructions: tuple[Instruction, ...]
    relocations: tuple[Relocation, ...]
    core_relocations: tuple[CoreRelocation, ...]

    @property
    def insn_count(self) -> int:
        """In 8-byte slots (lddw counts twice), the number the kernel limits."""
        return sum(insn.slots for insn in self.instructions)

    def _targets(self, kind: RelocationKind) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.target for r in self.relocations if r.kind == kind))

    @property
    def maps(self) -> tuple[str, ...]:
        return self._targets(RelocationKind.MAP)

    @property
    def kfuncs(self) -> tuple[str, ...]:
        return self._targets(RelocationKind.KFUNC_CALL)

    @property
    def calls(self) -> tuple[str, ...]:
        """The subprograms it calls."""
        return self._targets(RelocationKind.SUBPROG_CALL)


@dataclass(frozen=True)
class MapInfo:
    name: str
    type: MapType | int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    key_type: str | None  # the C spelling, from `__type(key, ...)`
    value_type: str | None


@dataclass(frozen=True)
class GlobalVariable:
    name: str
    offset: int
    size: int
    type: str | None  # the C spelling, from BTF


@dataclass(frozen=True)
class DataSection:
    """A section of global data; libbpf makes each into an array map of one element."""

    name: str
    size: int
    readonly: bool
    variables: tuple[GlobalVariable, ...]


@dataclass(frozen=True)
class Extern:
    name: str
    kind: str  # "kfunc", or "variable" for a __ksym or __kconfig variable


@dataclass(frozen=True)
class ObjectInfo:
    programs: tuple[Program, ...]  # entry points, as libbpf lists them
    subprograms: tuple[Program, ...]  # the functions of .text
    maps: tuple[MapInfo, ...]  # as libbpf defines them; global data is in data_sections
    data_sections: tuple[DataSection, ...]
    externs: tuple[Extern, ...]
    license: str | None
    sections: tuple[str, ...]  # every ELF section name
    btf_types: int  # 0 without BTF
    has_btf_ext: bool
    func_info_count: int
    line_info_count: int
    core_relocations: tuple[CoreRelocation, ...]

    @property
    def has_btf(self) -> bool:
        return self.btf_types > 0

    def program(self, name: str) -> Program:
        for program in (*self.programs, *self.subprograms):
            if program.name == name:
                return program
        raise KeyError(
            f"no program {name!r} in the object (it has {[p.name for p in self.programs]})"
        )

    def map(self, name: str) -> MapInfo:
        for info in self.maps:
            if info.name == name:
                return info
        raise KeyError(f"no map {name!r} in the object (it has {[m.name for m in self.maps]})")

    def describe(self) -> str:
        return _describe(self)

    def __str__(self) -> str:
        return self.describe()


def inspect_object(data: bytes, name: str = "ebmesh") -> ObjectInfo:
    """Everything ebmesh tells about an eBPF object. `name` names it in libbpf's messages.

    ToolchainError for data that is not an eBPF object libbpf can open.
    """
    data = bytes(data)
    elf = _open_elf(data)
    try:
        bpf = BpfObject.open(data, name)
    except LibbpfError as err:
        raise ToolchainError(f"libbpf cannot open the eBPF object: {err}") from None
    with bpf:
        try:
            return _Reader(elf, bpf).read()
        except ELFError as err:
            raise ToolchainError(f"malformed eBPF object: {err}") from None


def _open_elf(data: bytes) -> ELFFile:
    try:
        elf = ELFFile(io.BytesIO(data))
    except ELFError as err:
        raise ToolchainError(f"not an ELF object: {err}") from None
    if elf["e_machine"] != "EM_BPF":
        raise ToolchainError(f"not an eBPF object: the ELF machine is {elf['e_machine']}")
    return elf


def _attaches_by_type(section: str) -> bool:
    """Whether programs of this SEC() attach with an attach type.

    libbpf says 0 as the expected attach type of sections that have none
    (`syscall`), and 0 is also BPF_CGROUP_INET_INGRESS; its section table
    tells the two apart.
    """
    attach_type = ctypes.c_int()
    try:
        lib.libbpf_attach_type_by_name(section.encode(), ctypes.byref(attach_type))
    except LibbpfError as err:
        if err.errno == errno.EINVAL:
            return False
        raise
    return True


@dataclass(frozen=True)
class _Symbol:
    name: str
    value: int
    size: int
    type: str  # STT_*
    bind: str  # STB_*
    section_index: int | None  # None: undefined (an extern), absolute or common


class _Reader:
    def __init__(self, elf: ELFFile, bpf: BpfObject):
        self.bpf = bpf
        self.btf: Btf | None = bpf.btf
        self.elf = elf
        self.sections: list[Section] = list(elf.iter_sections())
        self.symbols = self._symbols()
        self.btf_ext = self._btf_ext()

    def read(self) -> ObjectInfo:
        functions: dict[tuple[str, str], Program] = {}
        for index, section in enumerate(self.sections):
            if section["sh_type"] == "SHT_PROGBITS" and section["sh_flags"] & _SHF_EXECINSTR:
                for function in self._functions(index, section):
                    functions[function.section, function.name] = function
        ext = self.btf_ext
        return ObjectInfo(
            programs=tuple(self._program(p, functions) for p in self.bpf.programs.values()),
            subprograms=tuple(
                f for (section, _), f in functions.items() if section == TEXT_SECTION
            ),
            maps=tuple(self._maps()),
            data_sections=tuple(self._data_sections()),
            externs=tuple(self._externs()),
            license=self._license(),
            sections=tuple(s.name for s in self.sections if s.name),
            btf_types=len(self.btf) if self.btf else 0,
            has_btf_ext=ext is not None,
            func_info_count=ext.func_info_count if ext else 0,
            line_info_count=ext.line_info_count if ext else 0,
            core_relocations=ext.core_relocations if ext else (),
        )

    # -- the ELF -----------------------------------------------------------------

    def _symbols(self) -> list[_Symbol]:
        table = self.elf.get_section_by_name(".symtab")
        if not isinstance(table, SymbolTableSection):
            raise ToolchainError("the eBPF object has no symbol table (was it stripped?)")
        symbols = []
        for symbol in table.iter_symbols():
            index = symbol["st_shndx"]
            index = index if isinstance(index, int) else None
            if index is not None and index >= len(self.sections):
                raise ToolchainError(
                    f"symbol {symbol.name!r} is in section {index}, which is not there"
                )
            kind = symbol["st_info"]["type"]
            is_section = kind == "STT_SECTION" and index is not None
            name = self.sections[index].name if is_section else symbol.name
            value, size, bind = symbol["st_value"], symbol["st_size"], symbol["st_info"]["bind"]
            symbols.append(_Symbol(name, value, size, kind, bind, index))
        return symbols

    def _section_data(self, name: str) -> bytes | None:
        section = self.elf.get_section_by_name(name)
        return None if section is None else section.data()

    def _btf_ext(self) -> BtfExt | None:
        data = self._section_data(".BTF.ext")
        if data is None or self.btf is None:
            return None
        return BtfExt.parse(data, self.btf)

    def _license(self) -> str | None:
        data = self._section_data("license")
        return None if data is None else data.split(b"\0", 1)[0].decode(errors="replace")

    # -- functions and what they refer to ----------------------------------------------

    def _functions(self, index: int, section: Section) -> list[Program]:
        code = section.data()
        instructions = decode(code)
        starts = [insn.index for insn in instructions]
        relocations = self._relocations(index, {insn.index: insn for insn in instructions})
        core = (
            [r for r in self.btf_ext.core_relocations if r.section == section.name]
            if self.btf_ext
            else []
        )
        symbols = sorted(
            (s for s in self.symbols if s.section_index == index and s.type == "STT_FUNC"),
            key=lambda s: s.value,
        )
        functions = []
        is_text = section.name == TEXT_SECTION
        for symbol in symbols:
            start = symbol.value // INSN_SIZE
            end = start + symbol.size // INSN_SIZE  # clang sizes every function symbol
            inside = range(start, end)
            functions.append(
                Program(
                    name=symbol.name,
                    section=section.name,
                    prog_type=None,  # libbpf's to say, for entry points; see _program
                    attach_type=None,
                    is_subprogram=is_text,
                    first_index=start,
                    instructions=tuple(
                        instructions[bisect_left(starts, start) : bisect_left(starts, end)]
                    ),
                    relocations=tuple(r for r in relocations if r.insn_index in inside),
                    core_relocations=tuple(r for r in core if r.insn_index in inside),
                )
            )
        return functions

    def _program(self, program: BpfProgram, functions: dict[tuple[str, str], Program]) -> Program:
        name, section = program.name, program.section
        function = functions.get((section, name))
        if function is None:
            raise ToolchainError(
                f"libbpf has a program {name} in {section}, but the ELF has no such function"
            )
        attach_type = program.expected_attach_type if _attaches_by_type(section) else None
        return replace(function, prog_type=program.type, attach_type=attach_type)

    def _relocations(self, index: int, by_slot: dict[int, Instruction]) -> list[Relocation]:
        found = []
        for section in self.sections:
            if not isinstance(section, RelocationSection) or section["sh_info"] != index:
                continue
            for entry in section.iter_relocations():
                slot = entry["r_offset"] // INSN_SIZE
                insn = by_slot.get(slot)
                if insn is None:
                    raise ToolchainError(f"a relocation of {section.name} is not on an instruction")
                if entry["r_info_sym"] >= len(self.symbols):
                    raise ToolchainError(f"a relocation of {section.name} names no symbol")
                found.append(self._classify(insn, self.symbols[entry["r_info_sym"]]))
        return sorted(found, key=lambda r: r.insn_index)

    def _classify(self, insn: Instruction, symbol: _Symbol) -> Relocation:
        def relocation(kind: RelocationKind, target: str) -> Relocation:
            return Relocation(insn.index, kind, target)

        if symbol.section_index is None:  # an extern
            return relocation(
                RelocationKind.KFUNC_CALL if insn.is_call else RelocationKind.OTHER, symbol.name
            )
        section = self.sections[symbol.section_index]
        # REL relocations: the addend is in the instruction, for lddw its imm.
        offset = symbol.value + (insn.imm if insn.is_lddw else 0)
        if section.name == _MAPS_SECTION:
            return relocation(
                RelocationKind.MAP, self._object_at(symbol.section_index, offset, symbol.name)
            )
        if _is_data_section(section.name):
            target = self._object_at(symbol.section_index, offset, section.name)
            return relocation(RelocationKind.GLOBAL_DATA, target)
        if section["sh_flags"] & _SHF_EXECINSTR and insn.is_call:
            target_slot = symbol.value // INSN_SIZE + insn.imm + 1
            callee = self._function_at(symbol.section_index, target_slot)
            return relocation(
                RelocationKind.SUBPROG_CALL, callee or f"{section.name}+{target_slot}"
            )
        return relocation(RelocationKind.OTHER, symbol.name)

    def _object_at(self, section_index: int, offset: int, default: str) -> str:
        for symbol in self.symbols:
            if (
                symbol.section_index == section_index
                and symbol.type == "STT_OBJECT"
                and symbol.value <= offset < symbol.value + max(symbol.size, 1)
            ):
                return symbol.name
        return default

    def _function_at(self, section_index: int, slot: int) -> str | None:
        for symbol in self.symbols:
            if (
                symbol.section_index == section_index
                and symbol.type == "STT_FUNC"
                and symbol.value // INSN_SIZE == slot
            ):
                return symbol.name
        return None

    def _externs(self) -> Iterable[Extern]:
        for symbol in self.symbols:
            if (
                symbol.section_index is None
                and symbol.name
                and symbol.bind in ("STB_GLOBAL", "STB_WEAK")
            ):
                is_function = self.btf is not None and self.btf.find(symbol.name, BtfKind.FUNC)
                yield Extern(symbol.name, "kfunc" if is_function else "variable")

    # -- maps and global data ---------------------------------------------------------

    def _maps(self) -> Iterable[MapInfo]:
        for bpf_map in self.bpf.maps.values():
            if bpf_map.is_internal:  # global data: see _data_sections
                continue
            yield MapInfo(
                name=bpf_map.name,
                type=bpf_map.type,
                key_size=bpf_map.key_size,
                value_size=bpf_map.value_size,
                max_entries=bpf_map.max_entries,
                flags=bpf_map.flags,
                key_type=self._type_name(bpf_map.btf_key_type_id),
                value_type=self._type_name(bpf_map.btf_value_type_id),
            )

    def _type_name(self, type_id: int) -> str | None:
        return self.btf.type_name(type_id) if self.btf and type_id else None

    def _data_sections(self) -> Iterable[DataSection]:
        for index, section in enumerate(self.sections):
            if section["sh_type"] not in ("SHT_PROGBITS", "SHT_NOBITS"):
                continue
            if not _is_data_section(section.name):
                continue
            types = self._variable_types(section.name)
            variables = tuple(
                GlobalVariable(s.name, s.value, s.size, types.get(s.name))
                for s in sorted(self.symbols, key=lambda s: s.value)
                if s.section_index == index and s.type == "STT_OBJECT" and s.name
            )
            readonly = section.name.startswith(".rodata")
            yield DataSection(section.name, section["sh_size"], readonly, variables)

    def _variable_types(self, section_name: str) -> dict[str, str]:
        datasec = self.btf.find(section_name, BtfKind.DATASEC) if self.btf else None
        if datasec is None or self.btf is None:
            return {}
        found = {}
        for variable in datasec.variables:
            var = self.btf.type(variable.type_id)
            found[var.name] = self.btf.type_name(var.type_id or 0)
        return found


def _is_data_section(name: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in _DATA_PREFIXES)


# -- describing ------------------------------------------------------------------


def _short(value) -> str:
    """`cgroup_sock_addr` for ProgType.CGROUP_SOCK_ADDR, as bpftool prints them."""
    if value is None:
        return "-"
    return value.name.lower() if isinstance(value, enum.Enum) else str(value)


def _count(items, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _describe(info: ObjectInfo) -> str:
    lines = [
        f"eBPF object: {_count(info.programs, 'program')}, "
        f"{_count(info.subprograms, 'subprogram')}, {_count(info.maps, 'map')}, "
        f"license {info.license!r}",
        f"BTF: {info.btf_types} types; BTF.ext: "
        + (
            f"{info.func_info_count} func_info, {info.line_info_count} line_info, "
            f"{_count(info.core_relocations, 'CO-RE relocation')}"
            if info.has_btf_ext
            else "none"
        ),
    ]
    if info.core_relocations:
        relocated: dict[str, int] = {}
        for r in info.core_relocations:
            relocated[r.type_name] = relocated.get(r.type_name, 0) + 1
        lines.append(
            "CO-RE types: " + ", ".join(f"{t} ({n})" for t, n in sorted(relocated.items()))
        )
    if info.programs:
        lines += ["", "programs:"]
        for p in info.programs:
            uses = [f"calls {','.join(p.calls)}"] if p.calls else []
            uses += [f"maps {','.join(p.maps)}"] if p.maps else []
            uses += [f"kfuncs {','.join(p.kfuncs)}"] if p.kfuncs else []
            lines.append(
                f"  {p.name:<20} {p.section:<20} {_short(p.prog_type):<18} "
                f"{_short(p.attach_type):<26} {p.insn_count:>5} insns  {'  '.join(uses)}".rstrip()
            )
    if info.subprograms:
        lines += ["", f"subprograms ({TEXT_SECTION}):"]
        for p in info.subprograms:
            uses = f"  maps {','.join(p.maps)}" if p.maps else ""
            lines.append(f"  {p.name:<20} {p.insn_count:>5} insns{uses}")
    if info.maps:
        lines += ["", "maps:"]
        for m in info.maps:
            lines.append(
                f"  {m.name:<20} {_short(m.type):<16} key {m.key_size:<4} value {m.value_size:<5} "
                f"max_entries {m.max_entries:<8} flags {m.flags:#x}"
            )
    if info.data_sections:
        lines += ["", "global data:"]
        for d in info.data_sections:
            variables = ", ".join(f"{v.name}@{v.offset} ({v.size})" for v in d.variables)
            access = "read-only" if d.readonly else "writable"
            lines.append(f"  {d.name:<20} {d.size:>6} bytes {access}  {variables}".rstrip())
    if info.externs:
        lines += ["", "externs:"]
        lines += [f"  {e.name:<20} {e.kind}" for e in info.externs]
    return "\n".join(lines)
