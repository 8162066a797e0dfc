"""The compiled object: what is in it, and what the kernel makes of it.

Pure inspection tests read the programs, maps, BTF and instructions of
`ebmesh.compile`'s output (ebmesh/loader/inspect.py: libbpf's open step and
pyelftools) and need no root. Tests marked `kernel` load the object into the
running kernel, every program at once, and so run it through the verifier;
they attach nothing anywhere.
"""

from __future__ import annotations

import ctypes
import dataclasses
import io
import re
import subprocess
import textwrap
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

import ebmesh
from ebmesh.datapath import abi
from ebmesh.datapath.limits import MAX_PREFIX_NESTING
from ebmesh.datapath.programs import EVALUATE_PROGRAM, HOOK_PROGRAMS, SHORTCUT
from ebmesh.ir.lowering import lower
from ebmesh.language import load
from ebmesh.language.lower import lower_to_ir
from ebmesh.loader import AttachType, BpfObject, MapType, ProgType
from ebmesh.loader.btf import BtfKind, Linkage
from ebmesh.loader.inspect import RelocationKind
from ebmesh.runtime.instance import load_image
from ebmesh.toolchain.clang import find_clang

REPO = Path(__file__).resolve().parents[2]
SHOP = REPO / "examples" / "shop.mesh"
BPF_SRC = REPO / "bpf_src"

PROGRAMS = {  # name -> (section, program type, expected attach type)
    "ebmesh_connect4": (
        "cgroup/connect4",
        ProgType.CGROUP_SOCK_ADDR,
        AttachType.CGROUP_INET4_CONNECT,
    ),
    "ebmesh_connect6": (
        "cgroup/connect6",
        ProgType.CGROUP_SOCK_ADDR,
        AttachType.CGROUP_INET6_CONNECT,
    ),
    "ebmesh_sendmsg4": (
        "cgroup/sendmsg4",
        ProgType.CGROUP_SOCK_ADDR,
        AttachType.CGROUP_UDP4_SENDMSG,
    ),
    "ebmesh_sendmsg6": (
        "cgroup/sendmsg6",
        ProgType.CGROUP_SOCK_ADDR,
        AttachType.CGROUP_UDP6_SENDMSG,
    ),
    "ebmesh_ingress": (
        "cgroup_skb/ingress",
        ProgType.CGROUP_SKB,
        AttachType.CGROUP_INET_INGRESS,
    ),
    "ebmesh_recorder": (
        "cgroup_skb/egress",
        ProgType.CGROUP_SKB,
        AttachType.CGROUP_INET_EGRESS,
    ),
    "ebmesh_getpeername4": (
        "cgroup/getpeername4",
        ProgType.CGROUP_SOCK_ADDR,
        AttachType.CGROUP_INET4_GETPEERNAME,
    ),
    "ebmesh_getpeername6": (
        "cgroup/getpeername6",
        ProgType.CGROUP_SOCK_ADDR,
        AttachType.CGROUP_INET6_GETPEERNAME,
    ),
    "ebmesh_recvmsg4": (
        "cgroup/recvmsg4",
        ProgType.CGROUP_SOCK_ADDR,
        AttachType.CGROUP_UDP4_RECVMSG,
    ),
    "ebmesh_recvmsg6": (
        "cgroup/recvmsg6",
        ProgType.CGROUP_SOCK_ADDR,
        AttachType.CGROUP_UDP6_RECVMSG,
    ),
    "ebmesh_sockops": ("sockops", ProgType.SOCK_OPS, AttachType.CGROUP_SOCK_OPS),
    "ebmesh_shortcut": ("sk_msg", ProgType.SK_MSG, AttachType.SK_MSG_VERDICT),
    "ebmesh_evaluate": ("syscall", ProgType.SYSCALL, None),
}
# Programs that take a verdict: every one but the egress recorder, which only
# notes who sent a new flow (the egress verdict was taken at connect/sendmsg),
# the reverse translators of service addresses, and the shortcut of `accelerate on`.
DECIDING = set(PROGRAMS) - {
    "ebmesh_recorder",
    "ebmesh_sockops",
    "ebmesh_shortcut",
    "ebmesh_getpeername4",
    "ebmesh_getpeername6",
    "ebmesh_recvmsg4",
    "ebmesh_recvmsg6",
}

U32, U64 = ctypes.c_uint32, ctypes.c_uint64
MAPS = {  # name -> (type, key mirror, value mirror); None: no key/value (a ring buffer)
    "address_prefixes": (MapType.HASH, abi.AddressKey, abi.AddressClass),
    "class_links": (MapType.ARRAY, U32, abi.ClassLinks),
    "rule_pairs": (MapType.HASH, abi.RulePairKey, abi.PortTable),
    "port_intervals": (MapType.ARRAY, U32, abi.PortInterval),
    "cgroup_index": (MapType.ARRAY, U32, abi.CgroupSlot),
    "cgroup_workloads": (MapType.HASH, U64, U32),
    "listeners": (MapType.ARRAY, U32, abi.ListenerSlot),
    "verdicts": (MapType.PERCPU_ARRAY, U32, abi.VerdictEntry),
    "identities": (MapType.ARRAY, U32, abi.IdentityInfo),
    "service_index": (MapType.ARRAY, U32, abi.ServiceSlot),
    "services": (MapType.HASH, abi.ServiceKey, U32),
    "service_entries": (MapType.ARRAY, U32, abi.ServiceEntry),
    "backend_slots": (MapType.HASH, abi.SlotKey, abi.BackendSlot),
    "backends": (MapType.ARRAY, U32, abi.Backend),
    "backend_counters": (MapType.PERCPU_ARRAY, U32, U64),
    "socket_states": (MapType.SK_STORAGE, ctypes.c_int32, abi.SocketState),
    "udp_translations": (MapType.LRU_HASH, abi.UdpTranslationKey, abi.Translation),
    "udp_affinity": (MapType.LRU_HASH, abi.AffinityKey, abi.Affinity),
    "flows": (MapType.LRU_HASH, abi.FlowKey, abi.FlowRecord),
    "udp_replies": (MapType.LRU_HASH, abi.ReplyKey, abi.ReplyValue),
    "authenticated_pairs": (MapType.HASH, abi.AuthKey, abi.AuthValue),
    "auth_state": (MapType.ARRAY, U32, abi.AuthState),
    "notices": (MapType.RINGBUF, None, None),
    "signals": (MapType.ARRAY, U32, abi.DatapathSignals),
    "rule_counters": (MapType.PERCPU_ARRAY, U32, abi.RuleCounter),
    "verdict_events": (MapType.RINGBUF, None, None),
    "lost_events": (MapType.PERCPU_ARRAY, U32, U64),
    # accelerate.h: the key is the kernel's alone (netns cookie, family, ports, addresses)
    "shortcuts": (MapType.SOCKHASH, ctypes.c_uint8 * 56, U64),
    "shortcut_counters": (MapType.PERCPU_ARRAY, U32, U64),
}
C_NAME = {mirror: f"struct {name}" for name, mirror in abi.C_STRUCTS.items()}

# The kernel's license_is_gpl_compatible() (include/linux/license.h).
GPL_COMPATIBLE = {
    "GPL",
    "GPL v2",
    "GPL and additional rights",
    "Dual BSD/GPL",
    "Dual MIT/GPL",
    "Dual MPL/GPL",
}


@pytest.fixture(scope="module")
def shop():
    return ebmesh.compile(SHOP)


@pytest.fixture(scope="module")
def info(shop):
    return shop.inspect()


@pytest.fixture(scope="module")
def btf(shop):
    """The object's BTF as libbpf holds it after opening the object."""
    with BpfObject.open(shop.object_bytes, "shop") as bpf:
        yield bpf.btf


# ---- programs -------------------------------------------------------------------


def test_exactly_the_expected_programs(info):
    found = {p.name: (p.section, p.prog_type, p.attach_type) for p in info.programs}
    assert found == PROGRAMS
    # the decision, the lookups it repeats, and what would otherwise be verified once per
    # hook and call site or weigh on the hooks' stack are global: each verified once
    assert sorted(p.name for p in info.subprograms) == [
        "decide",
        "identify_local_sender",
        "local_destination",
        "match_pair",
        "match_port_intervals",
        "read_packet",
        "report",
        "verdict_fill",
        "verdict_lookup",
    ]
    assert all(not p.is_subprogram for p in info.programs)


def test_decide_is_one_global_function_called_by_every_deciding_program(info, btf):
    decide = info.program("decide")
    assert decide.is_subprogram and decide.section == ".text"
    # Global linkage: the verifier checks it once, against its BTF prototype,
    # instead of once per call site.
    (function,) = [t for t in btf.types() if t.kind == BtfKind.FUNC and t.name == "decide"]
    assert function.linkage == Linkage.GLOBAL
    prototype = btf.type(function.type_id)
    assert [btf.type_name(p.type_id) for p in prototype.params] == [
        "struct flow *",
        "struct decision *",
    ]

    callers = {
        p.name
        for p in info.programs
        if any(
            r.kind == RelocationKind.SUBPROG_CALL and r.target == "decide" for r in p.relocations
        )
    }
    assert callers == DECIDING == {p.name for p in info.programs if "decide" in p.calls}
    assert EVALUATE_PROGRAM in callers  # the test harness runs the very same code


def test_every_program_ends_as_the_kernel_requires(info):
    """The verifier wants the last instruction of each function to be an exit
    or an unconditional jump (clang often places a loop's back edge last), every
    jump to land on an instruction of the same function, and an exit somewhere."""
    for program in (*info.programs, *info.subprograms):
        instructions = program.instructions
        assert instructions, program.name
        last = instructions[-1]
        assert last.is_exit or last.opcode in (0x05, 0x06), f"{program.name} ends with {last}"
        assert any(insn.is_exit for insn in instructions), f"{program.name} has no exit"
        starts = {insn.index for insn in instructions}
        for insn in instructions:
            assert insn.is_known, f"{program.name}: not an instruction of the set: {insn}"
            if insn.is_jump:
                assert insn.jump_target in starts, f"{program.name}: {insn} leaves the function"
    # In the object straight from clang: programs start at slot 0 of their own section.
    assert all(p.first_index == 0 for p in info.programs)


# ---- maps -----------------------------------------------------------------------


def test_maps_match_maps_h(info):
    declared = [
        name
        for header in ("maps.h", "accelerate.h")
        for name in re.findall(
            r"^\}\s*(\w+)\s+SEC\(\"\.maps\"\);", (BPF_SRC / header).read_text(), re.M
        )
    ]
    assert sorted(declared) == sorted(MAPS), "the headers and this test disagree on the maps"
    assert sorted(m.name for m in info.maps) == sorted(MAPS)
    for name, (map_type, key, value) in MAPS.items():
        found = info.map(name)
        assert found.type == map_type, name
        assert found.key_size == (ctypes.sizeof(key) if key else 0), name
        assert found.value_size == (ctypes.sizeof(value) if value else 0), name
        # socket storage must not be preallocated (the kernel insists); everything else is plain
        expected_flags = 1 if map_type == MapType.SK_STORAGE else 0  # BPF_F_NO_PREALLOC
        assert found.flags == expected_flags, name
        if key in C_NAME:
            assert found.key_type == C_NAME[key], name
        if value in C_NAME:
            assert found.value_type == C_NAME[value], name


def test_lru_percpu_and_ringbuf_maps(info):
    assert info.map("flows").type == MapType.LRU_HASH
    assert info.map("udp_replies").type == MapType.LRU_HASH
    assert info.map("rule_counters").type == MapType.PERCPU_ARRAY
    ring = info.map("verdict_events")
    assert ring.type == MapType.RINGBUF
    # A ring buffer's size is a power of two number of pages.
    assert ring.max_entries >= 4096 and ring.max_entries & (ring.max_entries - 1) == 0


def test_config_is_read_only_global_data(info):
    (config,) = [d for d in info.data_sections if d.name == ".rodata.config"]
    assert config.readonly
    assert [(v.name, v.offset, v.size) for v in config.variables] == [
        ("CONFIG", 0, ctypes.sizeof(abi.RuntimeConfig))
    ]
    # Nothing else is global data: every policy number lives in maps or in the config.
    assert [d.name for d in info.data_sections] == [".rodata.config"]


# ---- license, BTF, CO-RE, kfuncs ------------------------------------------------------


def test_license_btf_core_and_kfunc(info):
    assert info.license in GPL_COMPATIBLE
    assert info.has_btf and info.has_btf_ext
    assert ".BTF" in info.sections and ".BTF.ext" in info.sections
    assert info.func_info_count >= len(PROGRAMS) + 1 and info.line_info_count > 0
    assert info.core_relocations
    # The cgroup walk reads kernel structs through CO-RE: relocations name them.
    core_types = {r.type_name for p in info.programs for r in p.core_relocations}
    assert {"struct sock", "struct cgroup"} <= core_types
    assert [(e.name, e.kind) for e in info.externs] == [("bpf_rdonly_cast", "kfunc")]
    users = {p.name for p in info.programs if "bpf_rdonly_cast" in p.kfuncs}
    # every hook that judges or records finds the socket's cgroup; the reverse
    # translators only read what their socket was translated to, and the shortcut's
    # programs key sockets by their addresses alone
    reverse = {"ebmesh_getpeername4", "ebmesh_getpeername6", "ebmesh_recvmsg4", "ebmesh_recvmsg6"}
    shortcut = {"ebmesh_sockops", "ebmesh_shortcut"}
    assert users == set(PROGRAMS) - {EVALUATE_PROGRAM} - reverse - shortcut


# ---- the ABI: the object's types against the ctypes mirrors ------------------------------
#
# Each side becomes the same plain tree, compared whole:
#   ("struct", size, ((member, byte offset, tree), ...)) | ("array", size, length, tree) | ("uint", size)


def layout_of_mirror(mirror):
    size = ctypes.sizeof(mirror)
    if issubclass(mirror, ctypes.Structure):
        return (
            "struct",
            size,
            tuple(
                (name, getattr(mirror, name).offset, layout_of_mirror(field_type))
                for name, field_type in mirror._fields_
            ),
        )
    if issubclass(mirror, ctypes.Array):
        return ("array", size, mirror._length_, layout_of_mirror(mirror._type_))
    assert mirror in (ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64), mirror
    return ("uint", size)


def layout_from_btf(btf, type_id: int):
    resolved = btf.resolve(type_id)
    size = btf.sizeof(type_id)
    if resolved.kind == BtfKind.STRUCT:
        members = []
        for member in resolved.members:
            where = (
                member.offset
                if member.bitfield_size == 0 and member.bit_offset % 8 == 0
                else f"bit {member.bit_offset}"
            )
            members.append((member.name, where, layout_from_btf(btf, member.type_id)))
        return ("struct", size, tuple(members))
    if resolved.kind == BtfKind.ARRAY:
        return (
            "array",
            size,
            resolved.array.nelems,
            layout_from_btf(btf, resolved.array.elem_type_id),
        )
    if resolved.kind == BtfKind.INT and not resolved.signed:
        return ("uint", size)
    return (resolved.kind.name.lower(), size)  # matches no mirror


_TRANSPARENT_DIES = ("DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type")
_UNSIGNED_ENCODINGS = (0x07, 0x08)  # DW_ATE_unsigned, DW_ATE_unsigned_char


def layout_from_dwarf(die):
    while die.tag in _TRANSPARENT_DIES:
        die = die.get_DIE_from_attribute("DW_AT_type")
    if die.tag == "DW_TAG_structure_type":
        members = tuple(
            (
                child.attributes["DW_AT_name"].value.decode(),
                child.attributes["DW_AT_data_member_location"].value
                if "DW_AT_bit_size" not in child.attributes
                else "bits",
                layout_from_dwarf(child.get_DIE_from_attribute("DW_AT_type")),
            )
            for child in die.iter_children()
            if child.tag == "DW_TAG_member"
        )
        return ("struct", die.attributes["DW_AT_byte_size"].value, members)
    if die.tag == "DW_TAG_array_type":
        (subrange,) = [c for c in die.iter_children() if c.tag == "DW_TAG_subrange_type"]
        attributes = subrange.attributes
        length = (
            attributes["DW_AT_count"].value
            if "DW_AT_count" in attributes
            else attributes["DW_AT_upper_bound"].value + 1
        )
        element = layout_from_dwarf(die.get_DIE_from_attribute("DW_AT_type"))
        return ("array", length * element[1], length, element)
    if (
        die.tag == "DW_TAG_base_type"
        and die.attributes["DW_AT_encoding"].value in _UNSIGNED_ENCODINGS
    ):
        return ("uint", die.attributes["DW_AT_byte_size"].value)
    return (die.tag, None)


@pytest.fixture(scope="module")
def dwarf_structs(shop):
    """Struct definitions from the object's DWARF, by name."""
    found = {}
    for unit in ELFFile(io.BytesIO(shop.object_bytes)).get_dwarf_info().iter_CUs():
        for die in unit.iter_DIEs():
            if (
                die.tag == "DW_TAG_structure_type"
                and "DW_AT_name" in die.attributes
                and "DW_AT_declaration" not in die.attributes
            ):
                found.setdefault(die.attributes["DW_AT_name"].value.decode(), die)
    return found


def structs_named(btf, name: str) -> list:
    return [t for t in btf.types() if t.kind == BtfKind.STRUCT and t.name == name]


def object_layout(btf, dwarf_structs, name: str):
    """The struct as BTF has it; from DWARF for the few types BTF leaves out
    (clang's BTF keeps only what signatures, globals, maps and CO-RE refer to:
    `struct verdict_event` is only ever behind a local pointer)."""
    found = structs_named(btf, name)
    assert len(found) <= 1, f"struct {name}: {len(found)} definitions in the object's BTF"
    if found:
        assert btf.find(name, BtfKind.STRUCT) == found[0]
        return layout_from_btf(btf, found[0].id)
    assert name in dwarf_structs, f"struct {name} is in neither the BTF nor the DWARF of the object"
    return layout_from_dwarf(dwarf_structs[name])


@pytest.mark.parametrize("name", sorted(abi.C_STRUCTS))
def test_abi_mirror_matches_the_object(btf, dwarf_structs, name):
    assert object_layout(btf, dwarf_structs, name) == layout_of_mirror(abi.C_STRUCTS[name])


def test_abi_structs_of_the_maps_and_the_harness_are_in_btf(btf):
    """What libbpf and the verifier check against must be in BTF itself."""
    needed = {
        "address_key",
        "address_class",
        "class_links",
        "rule_pair_key",
        "port_table",
        "port_interval",
        "rule_set",
        "identity_info",
        "service_key",
        "service_slot",
        "service_entry",
        "cgroup_slot",
        "listener_slot",
        "verdict_entry",
        "socket_state",
        "auth_state",
        "datapath_signals",
        "flow_key",
        "flow_record",
        "reply_key",
        "reply_value",
        "auth_key",
        "auth_value",
        "rule_counter",
        "flow",
        "decision",
        "evaluate_request",
        "runtime_config",
    }
    assert {name for name in needed if len(structs_named(btf, name)) == 1} == needed


def test_btf_and_dwarf_agree(btf, dwarf_structs):
    """The DWARF fallback reads the same layouts as BTF where both have a type."""
    compared = 0
    for name in abi.C_STRUCTS:
        found = structs_named(btf, name)
        if found:
            assert layout_from_dwarf(dwarf_structs[name]) == layout_from_btf(btf, found[0].id), name
            compared += 1
    assert compared >= 20


def test_abi_covers_every_struct_of_ebmesh_types_h():
    declared = set(re.findall(r"^struct (\w+) \{", (BPF_SRC / "ebmesh_types.h").read_text(), re.M))
    assert declared == set(abi.C_STRUCTS)


def test_layout_check_catches_a_moved_field(btf, dwarf_structs):
    """The comparison above is not vacuous: a mirror with two fields swapped, or
    one field too narrow, fails it."""

    class Swapped(abi.Struct):
        _fields_ = [
            ("workload", abi.u32),
            ("class_id", abi.u32),
            ("src_start", abi.u32),
            ("dst_start", abi.u32),
        ]

    class Narrow(abi.Struct):
        _fields_ = [
            ("timestamp_ns", abi.u64),
            ("cgroup_id", abi.u32),
            ("pad", abi.u32),
            ("flow", abi.Flow),
            ("decision", abi.Decision),
        ]

    assert object_layout(btf, dwarf_structs, "address_class") != layout_of_mirror(Swapped)
    assert object_layout(btf, dwarf_structs, "verdict_event") != layout_of_mirror(Narrow)


# ---- rules live in maps -------------------------------------------------------------------


def many_rules(count: int) -> str:
    """One shape, `count` rules: allows and denies to distinct /24s, one port each."""
    rules = []
    for i in range(count):
        action = "deny" if i % 7 == 3 else "allow"
        rules.append(f"    {action} client -> 10.{i // 200}.{i % 200}.0/24 port {1000 + i}/tcp")
    head = 'mesh t {\n    workload client { cgroup "client" address 127.0.1.1 }\n'
    return head + "\n".join(rules) + "\n}\n"


def code_of(info) -> dict[str, list[tuple]]:
    return {
        p.name: [(i.opcode, i.dst, i.src, i.off, i.imm) for i in p.instructions]
        for p in (*info.programs, *info.subprograms)
    }


def test_the_code_does_not_grow_with_rules():
    small, large = ebmesh.compile(many_rules(10)), ebmesh.compile(many_rules(2000))
    # The premise: same shape, only the number of rules differs.
    assert dataclasses.replace(small.shape, rules=()) == dataclasses.replace(large.shape, rules=())
    assert len(large.shape.rules) == 2000

    small_code, large_code = code_of(small.inspect()), code_of(large.inspect())
    assert small_code.keys() == large_code.keys()
    for name in small_code:
        assert len(small_code[name]) == len(large_code[name]), name
        assert small_code[name] == large_code[name], name
    # The generated C differs only in comments.
    assert strip_comments(small.generated_header) == strip_comments(large.generated_header).replace(
        "POLICY_RULE_COUNT 2000", "POLICY_RULE_COUNT 10"
    )

    # The 2,000 rules are in the tables instead: one (client, /24) pair each, one interval each.
    tables = large.tables
    assert len(tables.rule_pairs) == 2000
    assert len(tables.port_intervals) == 2000
    held = set()
    for low, high, deny, allow, mtls, audit in tables.port_intervals:
        assert low == high
        held |= {r for r in (deny, allow, mtls, audit) if r != abi.NO_RULE}
    assert held == set(range(1, 2001))
    assert large.image.maps["rule_pairs"].count == 2000
    assert len(large.image.maps["port_intervals"].values) == 2000 * ctypes.sizeof(abi.PortInterval)


# ---- names never reach C ------------------------------------------------------------------

NAMED = textwrap.dedent(
    """\
    # a comment naming wombat_comment_93
    mesh platypus_mesh_77 {
        trust_domain "echidna.example"
        workload zebra_unicorn_42 { cgroup "zebra_unicorn_42" address 10.9.0.0/16 }
        workload narwhal-7 { address 10.8.0.1 identity "spiffe://echidna.example/axolotl" }
        service quokka-svc 10.96.0.77:80/tcp { backend 10.8.0.1:8080 }
        allow zebra_unicorn_42 -> quokka-svc
        allow zebra_unicorn_42 -> narwhal-7 port 443/tcp
        deny narwhal-7 -> zebra_unicorn_42 port 22 audit
        deny any -> 10.0.0.0/8 except 10.8.0.0/16 port 25
    }
    """
)
NAMES = [
    "zebra_unicorn_42",
    "quokka-svc",
    "quokka",
    "narwhal-7",
    "narwhal",
    "platypus_mesh_77",
    "platypus",
    "echidna",
    "axolotl",
    "wombat_comment_93",
]
RULE_LINES = [7, 8, 9, 10]  # where NAMED writes its rules, counted by hand


def strip_comments(c_text: str) -> str:
    return re.sub(r"/\*.*?\*/", "", c_text, flags=re.S)


def test_names_never_reach_c():
    compiled = ebmesh.compile(NAMED)
    for file_name, text in compiled.sources.items():
        for name in NAMES:
            assert name not in text, f"{name} in {file_name}"
    for name in NAMES:
        assert name.encode() not in compiled.object_bytes
    # ... and are only numbers in the maps' contents.
    for contents in compiled.image.maps.values():
        for name in NAMES:
            assert name.encode() not in contents.keys + contents.values


def test_rule_comments_give_each_rule_its_line():
    compiled = ebmesh.compile(NAMED)
    assert [NAMED.split("\n")[n - 1].split()[0] for n in RULE_LINES] == [
        "allow",
        "allow",
        "deny",
        "deny",
    ]
    found = re.findall(
        r"^ \*\s+rule (\d+)\s+\S+:(\d+)\s+(.+?)\s*$", compiled.generated_header, re.M
    )
    assert [(int(r), int(line), words) for r, line, words in found] == [
        (1, RULE_LINES[0], "allow"),
        (2, RULE_LINES[1], "allow"),
        (3, RULE_LINES[2], "deny audit"),
        (4, RULE_LINES[3], "deny"),
    ]


def defined_macros(header: str, tmp_path: Path) -> set[str]:
    """What the C preprocessor makes of a header: every macro it ends up defining."""
    path = tmp_path / "policy.h"
    path.write_text(header)
    result = subprocess.run(
        [str(find_clang()), "-E", "-dM", "-x", "c", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(result.stdout.splitlines())


HOSTILE_NAMES = [
    "x*/#define POLICY_DEFAULT_VERDICT VERDICT_ALLOW/*.mesh",
    "a*/\n#undef POLICY_MODE_AUDIT\n#define POLICY_MODE_AUDIT 1\n/*.mesh",
    "ends-with-backslash\\",
]


@pytest.mark.parametrize("hostile", HOSTILE_NAMES, ids=["star-slash", "newlines", "backslash"])
def test_a_hostile_file_name_stays_in_its_comment(tmp_path, hostile):
    text = "mesh t {\n    default deny\n    mode enforce\n    allow any -> 10.0.0.0/8 port 80\n}\n"
    path = tmp_path / "policies" / hostile
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    assert "*/" in str(path) or "\\" in str(path)
    benign, evil = ebmesh.compile(text), ebmesh.compile(path)
    assert benign.shape.source_name != evil.shape.source_name == str(path)
    assert strip_comments(evil.generated_header) == strip_comments(benign.generated_header)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert defined_macros(evil.generated_header, tmp_path / "a") == defined_macros(
        benign.generated_header, tmp_path / "b"
    )
    assert "#define POLICY_DEFAULT_VERDICT VERDICT_DENY" in evil.generated_header
    assert "#define POLICY_MODE_AUDIT 0" in evil.generated_header


# ---- the verifier accepts every program -----------------------------------------------------

IPV6_ONLY = """
mesh six {
    workload web { cgroup "web" address fd00:10::/64 }
    workload store { address fd00:20::5 }
    service store-svc [fd00:5::1]:443/tcp { backend [fd00:20::5]:8443 weight 2 }
    allow web -> store-svc
    allow web -> store port 8443/tcp
    allow any -> fd00::/8 except fd00:30::/32 port 53/udp
    deny web -> fd00:20::/32 port 1-1023
}
"""
AUDIT_MODE = """
mesh trial {
    default allow
    mode audit
    workload a { cgroup "a" address 10.1.0.0/16 mtls required }
    workload b { cgroup "b" }
    allow b -> a port 80/tcp mtls
    deny any -> a port 22
    deny b -> 10.1.2.0/24 port 443 audit
}
"""
NO_RULES = 'mesh empty { workload lonely { cgroup "lonely" } }'


def nested(count: int) -> str:
    """`count` destination prefixes nesting around 10.0.0.0, and as many source prefixes."""
    dst = "\n".join(
        f"    allow client -> 10.0.0.0/{8 + i} port {1000 + i}/tcp" for i in range(count)
    )
    src = "\n".join(
        f"    allow 12.0.0.0/{8 + i} -> client port {2000 + i}/udp" for i in range(count)
    )
    return f'mesh deep {{\n    workload client {{ cgroup "client" }}\n{dst}\n{src}\n}}\n'


VERIFIER_CASES = {
    "shop": SHOP,
    "ipv6-only": IPV6_ONLY,
    "audit-mode": AUDIT_MODE,
    "no-rules": NO_RULES,
    "16-nested": nested(MAX_PREFIX_NESTING),
}


def test_the_nesting_cases_are_what_they_claim():
    shape, _ = lower(lower_to_ir(load(nested(MAX_PREFIX_NESTING))))
    assert (shape.max_src_prefix_nesting, shape.max_dst_prefix_nesting) == (
        MAX_PREFIX_NESTING,
        MAX_PREFIX_NESTING,
    )
    with pytest.raises(ebmesh.PolicyError, match="cannot be enforced"):
        ebmesh.compile(nested(MAX_PREFIX_NESTING + 1))


@pytest.mark.kernel
@pytest.mark.parametrize("case", sorted(VERIFIER_CASES))
def test_the_verifier_accepts_every_program(root, case):
    compiled = ebmesh.compile(VERIFIER_CASES[case])
    everything = (*HOOK_PROGRAMS, SHORTCUT, EVALUATE_PROGRAM)
    info = compiled.inspect()
    assert set(everything) == {p.name for p in info.programs}
    bpf = load_image(compiled.image, programs=everything, events="all").bpf
    try:
        for name in everything:
            program = bpf.programs[name]
            kernel = program.info()
            assert program.fd >= 0 and kernel.id > 0, name
            assert kernel.verified_insns > 0 and kernel.xlated_prog_len > 0, name
            # The kernel took each program as the type inspection reports; libbpf
            # kept the attach type it reported before load.
            expected = info.program(name)
            assert int(kernel.type) == int(expected.prog_type), name
            if expected.attach_type is not None:
                assert int(program.expected_attach_type) == int(expected.attach_type), name
        # The maps were sized from the policy and filled before the programs could run.
        for name, contents in compiled.image.maps.items():
            assert bpf.maps[name].max_entries == contents.max_entries, name
        assert bpf.maps["rule_counters"].max_entries == compiled.image.rule_count + 1
    finally:
        bpf.close()


@pytest.mark.kernel
def test_evaluate_runs_on_the_deepest_nesting(root):
    """The 16-deep walk is not only accepted: it finds the rule at the bottom of it."""
    with ebmesh.compile(nested(MAX_PREFIX_NESTING)) as compiled:
        deepest = compiled.evaluate("client", "10.0.0.1", 1000 + MAX_PREFIX_NESTING - 1)
        assert deepest.allowed and deepest.rule_id == MAX_PREFIX_NESTING
        # The outermost prefix, reached from the innermost: all 16 steps of the walk.
        outermost = compiled.evaluate("client", "10.0.0.1", 1000)
        assert outermost.allowed and outermost.rule_id == 1
        assert compiled.evaluate("client", "10.255.0.1", 1000).rule_id == 1  # held by the /8 alone
        assert not compiled.evaluate(
            "client", "10.255.0.1", 1001
        ).allowed  # 10.0.0.0/9 does not hold it
        from_deep = compiled.evaluate("12.0.0.9", "client", 2000 + MAX_PREFIX_NESTING - 1, "udp")
        assert from_deep.allowed and from_deep.rule_id == 2 * MAX_PREFIX_NESTING
        from_top = compiled.evaluate("12.0.0.9", "client", 2000, "udp")
        assert from_top.allowed and from_top.rule_id == MAX_PREFIX_NESTING + 1
