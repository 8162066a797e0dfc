"""What is inside a compiled eBPF object, read the way libbpf will read it.

Programs and their types come from section names (libbpf's SEC() table),
maps from the BTF-defined `.maps` section, global data from `.rodata*`,
`.data*` and `.bss*`, and what each program's instructions refer to from the
ELF relocations and `.BTF.ext`. Nothing is loaded into the kernel.
"""

from __future__ import annotations

import enum
import io
import struct
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import Section, SymbolTableSection

from ebmesh.errors import ToolchainError
from ebmesh.toolchain.btf import Btf, BtfExt, BtfKind, CoreRelocation, CoreRelocKind
from ebmesh.toolchain.insn import CallKind, Instruction, decode

# -- kernel UAPI enums (include/uapi/linux/bpf.h, kernel 6.18) -----------------

_PROG_TYPES = """UNSPEC SOCKET_FILTER KPROBE SCHED_CLS SCHED_ACT TRACEPOINT XDP PERF_EVENT
CGROUP_SKB CGROUP_SOCK LWT_IN LWT_OUT LWT_XMIT SOCK_OPS SK_SKB CGROUP_DEVICE SK_MSG
RAW_TRACEPOINT CGROUP_SOCK_ADDR LWT_SEG6LOCAL LIRC_MODE2 SK_REUSEPORT FLOW_DISSECTOR
CGROUP_SYSCTL RAW_TRACEPOINT_WRITABLE CGROUP_SOCKOPT TRACING STRUCT_OPS EXT LSM SK_LOOKUP
SYSCALL NETFILTER""".split()

_ATTACH_TYPES = """CGROUP_INET_INGRESS CGROUP_INET_EGRESS CGROUP_INET_SOCK_CREATE CGROUP_SOCK_OPS
SK_SKB_STREAM_PARSER SK_SKB_STREAM_VERDICT CGROUP_DEVICE SK_MSG_VERDICT CGROUP_INET4_BIND
CGROUP_INET6_BIND CGROUP_INET4_CONNECT CGROUP_INET6_CONNECT CGROUP_INET4_POST_BIND
CGROUP_INET6_POST_BIND CGROUP_UDP4_SENDMSG CGROUP_UDP6_SENDMSG LIRC_MODE2 FLOW_DISSECTOR
CGROUP_SYSCTL CGROUP_UDP4_RECVMSG CGROUP_UDP6_RECVMSG CGROUP_GETSOCKOPT CGROUP_SETSOCKOPT
TRACE_RAW_TP TRACE_FENTRY TRACE_FEXIT MODIFY_RETURN LSM_MAC TRACE_ITER
CGROUP_INET4_GETPEERNAME CGROUP_INET6_GETPEERNAME CGROUP_INET4_GETSOCKNAME
CGROUP_INET6_GETSOCKNAME XDP_DEVMAP CGROUP_INET_SOCK_RELEASE XDP_CPUMAP SK_LOOKUP XDP
SK_SKB_VERDICT SK_REUSEPORT_SELECT SK_REUSEPORT_SELECT_OR_MIGRATE PERF_EVENT
TRACE_KPROBE_MULTI LSM_CGROUP STRUCT_OPS NETFILTER TCX_INGRESS TCX_EGRESS TRACE_UPROBE_MULTI
CGROUP_UNIX_CONNECT CGROUP_UNIX_SENDMSG CGROUP_UNIX_RECVMSG CGROUP_UNIX_GETPEERNAME
CGROUP_UNIX_GETSOCKNAME NETKIT_PRIMARY NETKIT_PEER TRACE_KPROBE_SESSION
TRACE_UPROBE_SESSION""".split()

_MAP_TYPES = """UNSPEC HASH ARRAY PROG_ARRAY PERF_EVENT_ARRAY PERCPU_HASH PERCPU_ARRAY STACK_TRACE
CGROUP_ARRAY LRU_HASH LRU_PERCPU_HASH LPM_TRIE ARRAY_OF_MAPS HASH_OF_MAPS DEVMAP SOCKMAP CPUMAP
XSKMAP SOCKHASH CGROUP_STORAGE REUSEPORT_SOCKARRAY PERCPU_CGROUP_STORAGE QUEUE STACK SK_STORAGE
DEVMAP_HASH STRUCT_OPS RINGBUF INODE_STORAGE TASK_STORAGE BLOOM_FILTER USER_RINGBUF
CGRP_STORAGE ARENA""".split()

# Member names are the kernel's, so they read (and grep) like the C.
ProgType = enum.IntEnum("ProgType", [(f"BPF_PROG_TYPE_{n}", i) for i, n in enumerate(_PROG_TYPES)])
AttachType = enum.IntEnum("AttachType", [(f"BPF_{n}", i) for i, n in enumerate(_ATTACH_TYPES)])
MapType = enum.IntEnum("MapType", [(f"BPF_MAP_TYPE_{n}", i) for i, n in enumerate(_MAP_TYPES)])

# libbpf's section_defs[] (libbpf.c, v1.5), in its order, since the first match
# wins. "x+" matches "x" and "x/...", "x/" matches any "x/..." and anything
# else must match exactly. Columns: pattern, program type, expected attach
# type (None where libbpf passes 0 meaning "none").
_SECTION_DEFS: tuple[tuple[str, str, str | None], ...] = (
    ("socket", "SOCKET_FILTER", None),
    ("sk_reuseport/migrate", "SK_REUSEPORT", "SK_REUSEPORT_SELECT_OR_MIGRATE"),
    ("sk_reuseport", "SK_REUSEPORT", "SK_REUSEPORT_SELECT"),
    ("kprobe+", "KPROBE", None),
    ("uprobe+", "KPROBE", None),
    ("uprobe.s+", "KPROBE", None),
    ("kretprobe+", "KPROBE", None),
    ("uretprobe+", "KPROBE", None),
    ("uretprobe.s+", "KPROBE", None),
    ("kprobe.multi+", "KPROBE", "TRACE_KPROBE_MULTI"),
    ("kretprobe.multi+", "KPROBE", "TRACE_KPROBE_MULTI"),
    ("uprobe.multi+", "KPROBE", "TRACE_UPROBE_MULTI"),
    ("uretprobe.multi+", "KPROBE", "TRACE_UPROBE_MULTI"),
    ("uprobe.multi.s+", "KPROBE", "TRACE_UPROBE_MULTI"),
    ("uretprobe.multi.s+", "KPROBE", "TRACE_UPROBE_MULTI"),
    ("ksyscall+", "KPROBE", None),
    ("kretsyscall+", "KPROBE", None),
    ("usdt+", "KPROBE", None),
    ("usdt.s+", "KPROBE", None),
    ("tc/ingress", "SCHED_CLS", "TCX_INGRESS"),
    ("tc/egress", "SCHED_CLS", "TCX_EGRESS"),
    ("tcx/ingress", "SCHED_CLS", "TCX_INGRESS"),
    ("tcx/egress", "SCHED_CLS", "TCX_EGRESS"),
    ("tc", "SCHED_CLS", None),
    ("classifier", "SCHED_CLS", None),
    ("action", "SCHED_ACT", None),
    ("netkit/primary", "SCHED_CLS", "NETKIT_PRIMARY"),
    ("netkit/peer", "SCHED_CLS", "NETKIT_PEER"),
    ("tracepoint+", "TRACEPOINT", None),
    ("tp+", "TRACEPOINT", None),
    ("raw_tracepoint+", "RAW_TRACEPOINT", None),
    ("raw_tp+", "RAW_TRACEPOINT", None),
    ("raw_tracepoint.w+", "RAW_TRACEPOINT_WRITABLE", None),
    ("raw_tp.w+", "RAW_TRACEPOINT_WRITABLE", None),
    ("tp_btf+", "TRACING", "TRACE_RAW_TP"),
    ("fentry+", "TRACING", "TRACE_FENTRY"),
    ("fmod_ret+", "TRACING", "MODIFY_RETURN"),
    ("fexit+", "TRACING", "TRACE_FEXIT"),
    ("fentry.s+", "TRACING", "TRACE_FENTRY"),
    ("fmod_ret.s+", "TRACING", "MODIFY_RETURN"),
    ("fexit.s+", "TRACING", "TRACE_FEXIT"),
    ("freplace+", "EXT", None),
    ("lsm+", "LSM", "LSM_MAC"),
    ("lsm.s+", "LSM", "LSM_MAC"),
    ("lsm_cgroup+", "LSM", "LSM_CGROUP"),
    ("iter+", "TRACING", "TRACE_ITER"),
    ("iter.s+", "TRACING", "TRACE_ITER"),
    ("syscall", "SYSCALL", None),
    ("xdp.frags/devmap", "XDP", "XDP_DEVMAP"),
    ("xdp/devmap", "XDP", "XDP_DEVMAP"),
    ("xdp.frags/cpumap", "XDP", "XDP_CPUMAP"),
    ("xdp/cpumap", "XDP", "XDP_CPUMAP"),
    ("xdp.frags", "XDP", "XDP"),
    ("xdp", "XDP", "XDP"),
    ("perf_event", "PERF_EVENT", None),
    ("lwt_in", "LWT_IN", None),
    ("lwt_out", "LWT_OUT", None),
    ("lwt_xmit", "LWT_XMIT", None),
    ("lwt_seg6local", "LWT_SEG6LOCAL", None),
    ("sockops", "SOCK_OPS", "CGROUP_SOCK_OPS"),
    ("sk_skb/stream_parser", "SK_SKB", "SK_SKB_STREAM_PARSER"),
    ("sk_skb/stream_verdict", "SK_SKB", "SK_SKB_STREAM_VERDICT"),
    ("sk_skb", "SK_SKB", None),
    ("sk_msg", "SK_MSG", "SK_MSG_VERDICT"),
    ("lirc_mode2", "LIRC_MODE2", "LIRC_MODE2"),
    ("flow_dissector", "FLOW_DISSECTOR", "FLOW_DISSECTOR"),
    ("cgroup_skb/ingress", "CGROUP_SKB", "CGROUP_INET_INGRESS"),
    ("cgroup_skb/egress", "CGROUP_SKB", "CGROUP_INET_EGRESS"),
    ("cgroup/skb", "CGROUP_SKB", None),
    ("cgroup/sock_create", "CGROUP_SOCK", "CGROUP_INET_SOCK_CREATE"),
    ("cgroup/sock_release", "CGROUP_SOCK", "CGROUP_INET_SOCK_RELEASE"),
    ("cgroup/sock", "CGROUP_SOCK", "CGROUP_INET_SOCK_CREATE"),
    ("cgroup/post_bind4", "CGROUP_SOCK", "CGROUP_INET4_POST_BIND"),
    ("cgroup/post_bind6", "CGROUP_SOCK", "CGROUP_INET6_POST_BIND"),
    ("cgroup/bind4", "CGROUP_SOCK_ADDR", "CGROUP_INET4_BIND"),
    ("cgroup/bind6", "CGROUP_SOCK_ADDR", "CGROUP_INET6_BIND"),
    ("cgroup/connect4", "CGROUP_SOCK_ADDR", "CGROUP_INET4_CONNECT"),
    ("cgroup/connect6", "CGROUP_SOCK_ADDR", "CGROUP_INET6_CONNECT"),
    ("cgroup/connect_unix", "CGROUP_SOCK_ADDR", "CGROUP_UNIX_CONNECT"),
    ("cgroup/sendmsg4", "CGROUP_SOCK_ADDR", "CGROUP_UDP4_SENDMSG"),
    ("cgroup/sendmsg6", "CGROUP_SOCK_ADDR", "CGROUP_UDP6_SENDMSG"),
    ("cgroup/sendmsg_unix", "CGROUP_SOCK_ADDR", "CGROUP_UNIX_SENDMSG"),
    ("cgroup/recvmsg4", "CGROUP_SOCK_ADDR", "CGROUP_UDP4_RECVMSG"),
    ("cgroup/recvmsg6", "CGROUP_SOCK_ADDR", "CGROUP_UDP6_RECVMSG"),
    ("cgroup/recvmsg_unix", "CGROUP_SOCK_ADDR", "CGROUP_UNIX_RECVMSG"),
    ("cgroup/getpeername4", "CGROUP_SOCK_ADDR", "CGROUP_INET4_GETPEERNAME"),
    ("cgroup/getpeername6", "CGROUP_SOCK_ADDR", "CGROUP_INET6_GETPEERNAME"),
    ("cgroup/getpeername_unix", "CGROUP_SOCK_ADDR", "CGROUP_UNIX_GETPEERNAME"),
    ("cgroup/getsockname4", "CGROUP_SOCK_ADDR", "CGROUP_INET4_GETSOCKNAME"),
    ("cgroup/getsockname6", "CGROUP_SOCK_ADDR", "CGROUP_INET6_GETSOCKNAME"),
    ("cgroup/getsockname_unix", "CGROUP_SOCK_ADDR", "CGROUP_UNIX_GETSOCKNAME"),
    ("cgroup/sysctl", "CGROUP_SYSCTL", "CGROUP_SYSCTL"),
    ("cgroup/getsockopt", "CGROUP_SOCKOPT", "CGROUP_GETSOCKOPT"),
    ("cgroup/setsockopt", "CGROUP_SOCKOPT", "CGROUP_SETSOCKOPT"),
    ("cgroup/dev", "CGROUP_DEVICE", "CGROUP_DEVICE"),
    ("struct_ops+", "STRUCT_OPS", None),
    ("struct_ops.s+", "STRUCT_OPS", None),
    ("sk_lookup", "SK_LOOKUP", "SK_LOOKUP"),
    ("netfilter", "NETFILTER", "NETFILTER"),
)

TEXT_SECTION = ".text"
_SHF_EXECINSTR = 0x4
_MAPS_SECTION = ".maps"
_DATA_PREFIXES = (".rodata", ".data", ".bss")


@dataclass(frozen=True)
class SectionType:
    prog_type: ProgType
    attach_type: AttachType | None  # None: libbpf sets no expected attach type


def section_program_type(section: str) -> SectionType | None:
    """Program and expected attach type for a SEC() name, as libbpf derives them."""
    for pattern, prog_type, attach_type in _SECTION_DEFS:
        if _section_matches(pattern, section):
            return SectionType(
                ProgType[f"BPF_PROG_TYPE_{prog_type}"],
                AttachType[f"BPF_{attach_type}"] if attach_type else None,
            )
    return None


def _section_matches(pattern: str, section: str) -> bool:
    if pattern.endswith("/"):
        return section.startswith(pattern)
    if pattern.endswith("+"):
        stem = pattern[:-1]
        return section == stem or section.startswith(stem + "/")
    return section == pattern


def short_name(value: enum.IntEnum | int | None) -> str:
    """`cgroup_sock_addr` for BPF_PROG_TYPE_CGROUP_SOCK_ADDR, as bpftool prints them."""
    if value is None:
        return "-"
    if not isinstance(value, enum.IntEnum):
        return str(value)
    name = value.name
    for prefix in ("BPF_PROG_TYPE_", "BPF_MAP_TYPE_", "BPF_"):
        if name.startswith(prefix):
            return name[len(prefix) :].lower()
    return name.lower()


# -- what an object contains ---------------------------------------------------


class RelocationKind(enum.Enum):
    MAP = "map"  # lddw of a BTF-defined map
    GLOBAL_DATA = "global_data"  # lddw of a variable in .rodata/.data/.bss
    SUBPROG_CALL = "subprog_call"  # BPF-to-BPF call into .text
    SUBPROG_ADDR = "subprog_addr"  # address of a .text function (a callback)
    KFUNC_CALL = "kfunc_call"  # call of an `extern ... __ksym` function
    KSYM = "ksym"  # address of an `extern ... __ksym` kernel variable
    KCONFIG = "kconfig"  # value of an `extern ... __kconfig` variable
    OTHER = "other"


@dataclass(frozen=True)
class Relocation:
    insn_index: int  # slot in the ELF section, as llvm-objdump numbers it
    kind: RelocationKind
    symbol: str  # the ELF symbol named by the relocation
    target: str  # the map, variable, function or extern meant
    section: str | None  # ELF section of the symbol; None for externs
    offset: int = 0  # GLOBAL_DATA: byte offset in the section


@dataclass(frozen=True)
class Program:
    name: str
    section: str
    prog_type: ProgType | None  # None: libbpf does not know the section name
    attach_type: AttachType | None
    is_subprogram: bool  # a .text function, only ever called by programs
    first_index: int  # slot of the first instruction in its section
    instructions: tuple[Instruction, ...]
    relocations: tuple[Relocation, ...]
    core_relocations: tuple[CoreRelocation, ...]

    @property
    def insn_count(self) -> int:
        """Size in 8-byte slots (lddw counts twice), the number the kernel limits."""
        return sum(insn.slots for insn in self.instructions)

    @property
    def maps(self) -> tuple[str, ...]:
        return _unique(r.target for r in self.relocations if r.kind == RelocationKind.MAP)

    @property
    def kfuncs(self) -> tuple[str, ...]:
        return _unique(r.target for r in self.relocations if r.kind == RelocationKind.KFUNC_CALL)

    @property
    def helpers(self) -> tuple[int, ...]:
        return tuple(sorted({i.imm for i in self.instructions if i.call_kind == CallKind.HELPER}))


@dataclass(frozen=True)
class MapInfo:
    name: str
    type: MapType | int
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int
    key_type: str | None = None  # C spelling from BTF, when given by __type(key, ...)
    value_type: str | None = None
    key_type_id: int | None = None
    value_type_id: int | None = None
    pinning: int = 0
    numa_node: int = 0
    map_extra: int = 0
    inner_map: MapInfo | None = None  # map-in-map templates (__array(values, ...))

    @property
    def type_name(self) -> str:
        return self.type.name if isinstance(self.type, MapType) else f"BPF_MAP_TYPE_{self.type}"


@dataclass(frozen=True)
class GlobalVariable:
    name: str
    offset: int
    size: int
    type: str | None = None  # C spelling from BTF


@dataclass(frozen=True)
class DataSection:
    """A global-data section; libbpf turns each into an array map of one element."""

    name: str
    size: int
    readonly: bool
    variables: tuple[GlobalVariable, ...]


@dataclass(frozen=True)
class Extern:
    name: str
    kind: str  # "kfunc", "ksym", "kconfig", or "unknown" if BTF does not say
    weak: bool


@dataclass(frozen=True)
class ObjectInfo:
    programs: tuple[Program, ...]  # entry points, in section order
    subprograms: tuple[Program, ...]  # .text functions
    maps: tuple[MapInfo, ...]
    data_sections: tuple[DataSection, ...]
    externs: tuple[Extern, ...]
    license: str | None
    kern_version: int | None  # the legacy "version" section
    has_btf: bool
    has_btf_ext: bool
    func_info_count: int
    line_info_count: int
    core_relocations: int  # CO-RE relocation records in .BTF.ext
    sections: tuple[str, ...]  # every ELF section name
    btf: Btf | None = field(default=None, repr=False, compare=False)
    btf_ext: BtfExt | None = field(default=None, repr=False, compare=False)

    def program(self, name: str) -> Program:
        for program in (*self.programs, *self.subprograms):
            if program.name == name:
                return program
        raise KeyError(f"no program {name!r} in object (has {[p.name for p in self.programs]})")

    def map(self, name: str) -> MapInfo:
        for info in self.maps:
            if info.name == name:
                return info
        raise KeyError(f"no map {name!r} in object (has {[m.name for m in self.maps]})")

    def describe(self, disassembly: bool = True) -> str:
        return _describe(self, disassembly)

    def __str__(self) -> str:
        return self.describe()


# -- reading -------------------------------------------------------------------


def inspect_object(data: bytes) -> ObjectInfo:
    """Everything ebmesh needs to know about an eBPF object, without loading it."""
    try:
        return _Reader(data).read()
    except ELFError as err:
        raise ToolchainError(f"not a valid ELF object: {err}") from err


@dataclass
class _Symbol:
    name: str
    value: int
    size: int
    type: str  # STT_*
    bind: str  # STB_*
    section_index: int | None  # None: undefined (an extern), absolute or common
    undefined: bool


@dataclass
class _Function:
    name: str
    start: int  # slot
    end: int  # slot, exclusive


class _Reader:
    def __init__(self, data: bytes):
        self.elf = ELFFile(io.BytesIO(bytes(data)))
        if self.elf["e_machine"] != "EM_BPF":
            raise ToolchainError(f"not an eBPF object: ELF machine is {self.elf['e_machine']}")
        self.sections: list[Section] = list(self.elf.iter_sections())
        self.symbols = self._read_symbols()
        self.btf = self._read_btf()
        self.btf_ext = self._read_btf_ext()
        self.extern_kinds = self._extern_kinds()

    def read(self) -> ObjectInfo:
        programs: list[Program] = []
        for index, section in enumerate(self.sections):
            if section["sh_type"] == "SHT_PROGBITS" and section["sh_flags"] & _SHF_EXECINSTR:
                programs.extend(self._programs_in(index, section))
        ext = self.btf_ext
        return ObjectInfo(
            programs=tuple(p for p in programs if not p.is_subprogram),
            subprograms=tuple(p for p in programs if p.is_subprogram),
            maps=tuple(self._maps()),
            data_sections=tuple(self._data_sections()),
            externs=tuple(self._externs()),
            license=self._license(),
            kern_version=self._kern_version(),
            has_btf=self.btf is not None,
            has_btf_ext=ext is not None,
            func_info_count=len(ext.func_info) if ext else 0,
            line_info_count=len(ext.line_info) if ext else 0,
            core_relocations=len(ext.core_relocations) if ext else 0,
            sections=tuple(s.name for s in self.sections if s.name),
            btf=self.btf,
            btf_ext=ext,
        )

    # ELF basics

    def _read_symbols(self) -> list[_Symbol]:
        table = self.elf.get_section_by_name(".symtab")
        if not isinstance(table, SymbolTableSection):
            raise ToolchainError("eBPF object has no symbol table (was it stripped?)")
        symbols = []
        for symbol in table.iter_symbols():
            shndx = symbol["st_shndx"]
            section_index = shndx if isinstance(shndx, int) else None
            name = symbol.name
            if symbol["st_info"]["type"] == "STT_SECTION" and section_index is not None:
                name = self.sections[section_index].name
            symbols.append(
                _Symbol(
                    name=name,
                    value=symbol["st_value"],
                    size=symbol["st_size"],
                    type=symbol["st_info"]["type"],
                    bind=symbol["st_info"]["bind"],
                    section_index=section_index,
                    undefined=shndx == "SHN_UNDEF",
                )
            )
        return symbols

    def _section_data(self, name: str) -> bytes | None:
        section = self.elf.get_section_by_name(name)
        return None if section is None else section.data()

    def _read_btf(self) -> Btf | None:
        data = self._section_data(".BTF")
        return Btf(data) if data is not None else None

    def _read_btf_ext(self) -> BtfExt | None:
        data = self._section_data(".BTF.ext")
        if data is None or self.btf is None:
            return None
        return BtfExt.parse(data, self.btf)

    def _license(self) -> str | None:
        data = self._section_data("license")
        return None if data is None else data.split(b"\0", 1)[0].decode(errors="replace")

    def _kern_version(self) -> int | None:
        data = self._section_data("version")
        if data is None or len(data) != 4:
            return None
        return struct.unpack("<I" if self.elf.little_endian else ">I", data)[0]

    # programs

    def _functions_in(self, index: int, slots: int) -> list[_Function]:
        found = sorted(
            (s for s in self.symbols if s.section_index == index and s.type == "STT_FUNC"),
            key=lambda s: s.value,
        )
        functions = []
        for position, symbol in enumerate(found):
            start = symbol.value // 8
            following = found[position + 1].value // 8 if position + 1 < len(found) else slots
            end = start + symbol.size // 8 if symbol.size else following
            functions.append(_Function(symbol.name, start, end))
        if not functions and slots:  # hand-written code without symbols: one anonymous program
            functions.append(_Function(self.sections[index].name, 0, slots))
        return functions

    def _programs_in(self, index: int, section: Section) -> list[Program]:
        code = section.data()
        instructions = decode(code)
        by_slot = {insn.index: insn for insn in instructions}
        starts = [insn.index for insn in instructions]
        relocations = self._relocations_of(index, by_slot)
        core = self.btf_ext.core_relocations if self.btf_ext else ()
        is_text = section.name == TEXT_SECTION
        section_type = None if is_text else section_program_type(section.name)
        programs = []
        for function in self._functions_in(index, len(code) // 8):
            inside = range(function.start, function.end)
            first, last = bisect_left(starts, function.start), bisect_left(starts, function.end)
            programs.append(
                Program(
                    name=function.name,
                    section=section.name,
                    prog_type=section_type.prog_type if section_type else None,
                    attach_type=section_type.attach_type if section_type else None,
                    is_subprogram=is_text,
                    first_index=function.start,
                    instructions=tuple(instructions[first:last]),
                    relocations=tuple(r for r in relocations if r.insn_index in inside),
                    core_relocations=tuple(
                        r for r in core if r.section == section.name and r.insn_index in inside
                    ),
                )
            )
        return programs

    def _relocations_of(self, index: int, by_slot: dict[int, Instruction]) -> list[Relocation]:
        found = []
        for section in self.sections:
            if not isinstance(section, RelocationSection) or section["sh_info"] != index:
                continue
            for entry in section.iter_relocations():
                insn = by_slot.get(entry["r_offset"] // 8)
                symbol = self.symbols[entry["r_info_sym"]]
                found.append(self._classify(entry["r_offset"] // 8, insn, symbol))
        return sorted(found, key=lambda r: r.insn_index)

    def _classify(self, slot: int, insn: Instruction | None, symbol: _Symbol) -> Relocation:
        def relocation(kind: RelocationKind, target: str, section: str | None, offset: int = 0):
            return Relocation(slot, kind, symbol.name, target, section, offset)

        if symbol.undefined:
            kind = self.extern_kinds.get(symbol.name)
            if insn is not None and insn.is_call:
                return relocation(RelocationKind.KFUNC_CALL, symbol.name, None)
            if kind == "kconfig":
                return relocation(RelocationKind.KCONFIG, symbol.name, None)
            return relocation(RelocationKind.KSYM, symbol.name, None)
        if symbol.section_index is None:
            return relocation(RelocationKind.OTHER, symbol.name, None)
        section = self.sections[symbol.section_index]
        if insn is None:
            return relocation(RelocationKind.OTHER, symbol.name, section.name)
        if section.name == _MAPS_SECTION:
            offset = symbol.value + (insn.imm if insn.is_lddw else 0)
            return relocation(
                RelocationKind.MAP, self._symbol_at(symbol.section_index, offset), section.name
            )
        if section.name.startswith(_DATA_PREFIXES):
            offset = symbol.value + (insn.imm if insn.is_lddw else 0)
            target = self._symbol_at(symbol.section_index, offset, default=section.name)
            return relocation(RelocationKind.GLOBAL_DATA, target, section.name, offset)
        if section["sh_flags"] & _SHF_EXECINSTR:
            if insn.is_call:
                target_slot = symbol.value // 8 + insn.imm + 1
                kind = RelocationKind.SUBPROG_CALL
            else:
                target_slot = (symbol.value + insn.imm) // 8
                kind = RelocationKind.SUBPROG_ADDR
            name = self._function_at(symbol.section_index, target_slot)
            return relocation(kind, name or f"{section.name}+{target_slot}", section.name)
        return relocation(RelocationKind.OTHER, symbol.name, section.name)

    def _symbol_at(self, section_index: int, offset: int, default: str = "?") -> str:
        """The named object symbol covering `offset` in a section."""
        for symbol in self.symbols:
            if symbol.section_index != section_index or not symbol.name:
                continue
            if symbol.type not in ("STT_OBJECT", "STT_NOTYPE"):
                continue
            if symbol.value <= offset < symbol.value + max(symbol.size, 1):
                return symbol.name
        return default

    def _function_at(self, section_index: int, slot: int) -> str | None:
        for symbol in self.symbols:
            if (
                symbol.section_index == section_index
                and symbol.type == "STT_FUNC"
                and symbol.value // 8 == slot
            ):
                return symbol.name
        return None

    # externs

    def _extern_kinds(self) -> dict[str, str]:
        kinds: dict[str, str] = {}
        if self.btf is None:
            return kinds
        for section_name in (".ksyms", ".kconfig"):
            datasec = self.btf.datasec(section_name)
            for variable in datasec.variables if datasec else ():
                if section_name == ".kconfig":
                    kinds[variable.name] = "kconfig"
                else:
                    is_func = self.btf.type(variable.var_id).kind == BtfKind.FUNC
                    kinds[variable.name] = "kfunc" if is_func else "ksym"
        return kinds

    def _externs(self) -> Iterable[Extern]:
        for symbol in self.symbols:
            if symbol.undefined and symbol.name and symbol.bind in ("STB_GLOBAL", "STB_WEAK"):
                # Neither __ksym nor __kconfig (say, an implicitly declared
                # function): libbpf will refuse to load the object.
                kind = self.extern_kinds.get(symbol.name, "unknown")
                yield Extern(symbol.name, kind, symbol.bind == "STB_WEAK")

    # maps and data

    def _maps(self) -> list[MapInfo]:
        if self.btf is None:
            return []
        datasec = self.btf.datasec(_MAPS_SECTION)
        if datasec is None:
            return []
        # BTF order, not ELF order: it is the order libbpf creates (and numbers) maps in.
        return [_map_from_btf(self.btf, v.name, v.type_id) for v in datasec.variables]

    def _data_sections(self) -> list[DataSection]:
        found = []
        for index, section in enumerate(self.sections):
            name = section.name
            if section["sh_type"] not in ("SHT_PROGBITS", "SHT_NOBITS"):
                continue
            if not any(
                name == prefix or name.startswith(prefix + ".") for prefix in _DATA_PREFIXES
            ):
                continue
            types = self._variable_types(name)
            variables = tuple(
                GlobalVariable(s.name, s.value, s.size, types.get(s.name))
                for s in sorted(self.symbols, key=lambda s: s.value)
                if s.section_index == index and s.type == "STT_OBJECT" and s.name
            )
            found.append(
                DataSection(name, section["sh_size"], name.startswith(".rodata"), variables)
            )
        return found

    def _variable_types(self, section_name: str) -> dict[str, str]:
        datasec = self.btf.datasec(section_name) if self.btf else None
        if datasec is None or self.btf is None:
            return {}
        return {v.name: self.btf.type_name(v.type_id) for v in datasec.variables}


def _map_from_btf(btf: Btf, name: str, type_id: int) -> MapInfo:
    """Decode a BTF map definition the way libbpf's parse_btf_map_def does:
    `__uint(field, N)` is `int (*field)[N]`, `__type(field, T)` is `T *field`."""
    definition = btf.resolve(type_id)
    if definition.kind != BtfKind.STRUCT:
        raise ToolchainError(f"map {name}: definition is a {definition.kind.name}, not a struct")
    numbers: dict[str, int] = {}
    types: dict[str, int] = {}
    inner: MapInfo | None = None
    for member in definition.members:
        pointer = btf.resolve(member.type_id)
        if member.name == "values":  # __array(values, struct inner_def): inner map template
            element = btf.resolve(pointer.array.elem_type_id) if pointer.array else None
            if element is not None and element.kind == BtfKind.PTR:
                inner = _map_from_btf(btf, f"{name}.inner", element.type_id or 0)
            continue
        if pointer.kind != BtfKind.PTR:
            raise ToolchainError(
                f"map {name}: field {member.name} is not a pointer, not a map definition"
            )
        target = btf.resolve(pointer.type_id or 0)
        if member.name in ("key", "value"):
            types[member.name] = pointer.type_id or 0
        elif target.kind == BtfKind.ARRAY and target.array is not None:
            numbers[member.name] = target.array.nelems
        else:
            raise ToolchainError(f"map {name}: field {member.name} is neither __uint nor __type")
    key_id, value_id = types.get("key"), types.get("value")
    raw_type = numbers.get("type", 0)
    try:
        map_type: MapType | int = MapType(raw_type)
    except ValueError:
        map_type = raw_type
    return MapInfo(
        name=name,
        type=map_type,
        key_size=btf.sizeof(key_id) if key_id else numbers.get("key_size", 0),
        value_size=btf.sizeof(value_id) if value_id else numbers.get("value_size", 0),
        max_entries=numbers.get("max_entries", 0),
        map_flags=numbers.get("map_flags", 0),
        key_type=btf.type_name(key_id) if key_id else None,
        value_type=btf.type_name(value_id) if value_id else None,
        key_type_id=key_id,
        value_type_id=value_id,
        pinning=numbers.get("pinning", 0),
        numa_node=numbers.get("numa_node", 0),
        map_extra=numbers.get("map_extra", 0),
        inner_map=inner,
    )


def _unique(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


# -- describing ----------------------------------------------------------------


def _describe(info: ObjectInfo, disassembly: bool) -> str:
    lines = [
        f"eBPF object: {_count(info.programs, 'program')}, "
        f"{_count(info.subprograms, 'subprogram')}, {_count(info.maps, 'map')}, "
        f"license {info.license!r}"
        + (f", kernel version {info.kern_version:#x}" if info.kern_version is not None else ""),
        f"BTF: {len(info.btf) if info.btf else 'none'} types; BTF.ext: "
        + (
            f"{info.func_info_count} func_info, {info.line_info_count} line_info, "
            f"{info.core_relocations} CO-RE relocations"
            if info.has_btf_ext
            else "none"
        ),
    ]
    if info.programs:
        lines += ["", "programs:"]
        for p in info.programs:
            uses = [f"maps {','.join(p.maps)}"] if p.maps else []
            uses += [f"kfuncs {','.join(p.kfuncs)}"] if p.kfuncs else []
            lines.append(
                f"  {p.name:<20} {p.section:<24} {short_name(p.prog_type):<18} "
                f"{short_name(p.attach_type):<24} {p.insn_count:>5} insns  {'  '.join(uses)}".rstrip()
            )
    if info.subprograms:
        lines += ["", "subprograms (.text):"]
        lines += [f"  {p.name:<20} {p.insn_count:>5} insns" for p in info.subprograms]
    if info.maps:
        lines += ["", "maps:"]
        for m in info.maps:
            lines.append(
                f"  {m.name:<20} {short_name(m.type) if isinstance(m.type, MapType) else m.type:<16} "
                f"key {m.key_size:<4} value {m.value_size:<5} max_entries {m.max_entries:<8} "
                f"flags {m.map_flags:#x}"
            )
    if info.data_sections:
        lines += ["", "global data:"]
        for d in info.data_sections:
            variables = ", ".join(f"{v.name}@{v.offset} ({v.size})" for v in d.variables)
            lines.append(f"  {d.name:<20} {d.size:>6} bytes  {variables}".rstrip())
    if info.externs:
        lines += ["", "externs:"]
        lines += [f"  {e.name:<20} {e.kind}{' (weak)' if e.weak else ''}" for e in info.externs]
    if disassembly:
        functions = {
            (p.section, p.first_index): p.name for p in (*info.programs, *info.subprograms)
        }
        for p in (*info.programs, *info.subprograms):
            lines += ["", f"{p.name} ({p.section}):"]
            lines += _disassemble(p, info.btf, functions)
    return "\n".join(lines)


def _count(items: tuple, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _disassemble(
    program: Program, btf: Btf | None, functions: dict[tuple[str, int], str]
) -> list[str]:
    notes: dict[int, list[str]] = {}
    for r in program.relocations:
        notes.setdefault(r.insn_index, []).append(f"{r.kind.value} {r.target}")
    for r in program.core_relocations:
        if isinstance(r.kind, CoreRelocKind) and btf is not None:
            note = f"CO-RE {r.kind.libbpf_name} {btf.core_access_path(r.type_id, r.access, r.kind)}"
        else:
            note = f"CO-RE kind {int(r.kind)} type {r.type_id} access {r.access}"
        notes.setdefault(r.insn_index, []).append(note)
    lines = []
    for insn in program.instructions:
        extra = list(notes.get(insn.index, ()))
        if insn.helper_name:
            extra.append(insn.helper_name)
        elif insn.call_kind == CallKind.BPF_TO_BPF and not extra:
            callee = functions.get((program.section, insn.jump_target or 0))
            extra.append(f"subprog {callee or insn.jump_target}")
        comment = f"  ; {'; '.join(extra)}" if extra else ""
        lines.append(f"  {insn.index:>5}: {insn.text:<40}{comment}".rstrip())
    return lines
