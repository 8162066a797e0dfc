"""ebmesh.toolchain: building eBPF objects with clang and reading them back.

These tests run the real clang, bpftool and llvm-objdump (installed by
`make setup`) and read the running kernel's BTF; nothing is loaded into the
kernel.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import threading
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from ebmesh.errors import EnvironmentProblem, ToolchainError
from ebmesh.toolchain import cache
from ebmesh.toolchain.btf import Btf, BtfExt, BtfKind, CoreRelocKind
from ebmesh.toolchain.clang import build_object
from ebmesh.toolchain.insn import CallKind, InsnClass, PseudoLoad, decode, helper_name
from ebmesh.toolchain.inspect import (
    AttachType,
    MapType,
    ProgType,
    RelocationKind,
    inspect_object,
    section_program_type,
)
from ebmesh.toolchain.vmlinux import VMLINUX_BTF, vmlinux_header

DATA = Path(__file__).parent / "data" / "toolchain"
SAMPLE_SOURCE = (DATA / "sample.bpf.c").read_text()
SAMPLE_INCLUDE = DATA / "include"


@pytest.fixture(scope="module", autouse=True)
def module_cache(tmp_path_factory):
    """One cache for the module, so vmlinux.h and the sample are built once."""
    with pytest.MonkeyPatch.context() as patch:
        path = tmp_path_factory.mktemp("ebmesh-cache")
        patch.setenv("EBMESH_CACHE_DIR", str(path))
        for variable in ("EBMESH_CLANG", "EBMESH_BPFTOOL"):
            patch.delenv(variable, raising=False)
        yield path


@pytest.fixture(scope="module")
def sample(module_cache):
    return build_object(SAMPLE_SOURCE, include_dirs=[SAMPLE_INCLUDE], name="sample")


@pytest.fixture(scope="module")
def info(sample):
    return inspect_object(sample.object)


@pytest.fixture(scope="module")
def sample_path(sample, tmp_path_factory):
    path = tmp_path_factory.mktemp("objects") / "sample.o"
    path.write_bytes(sample.object)
    return path


# -- programs -----------------------------------------------------------------

EXPECTED_PROGRAMS = {
    "connect4": ("cgroup/connect4", "CGROUP_SOCK_ADDR", "CGROUP_INET4_CONNECT"),
    "sendmsg6": ("cgroup/sendmsg6", "CGROUP_SOCK_ADDR", "CGROUP_UDP6_SENDMSG"),
    "recvmsg4": ("cgroup/recvmsg4", "CGROUP_SOCK_ADDR", "CGROUP_UDP4_RECVMSG"),
    "getpeername4": ("cgroup/getpeername4", "CGROUP_SOCK_ADDR", "CGROUP_INET4_GETPEERNAME"),
    "sock_create": ("cgroup/sock_create", "CGROUP_SOCK", "CGROUP_INET_SOCK_CREATE"),
    "skb_ingress": ("cgroup_skb/ingress", "CGROUP_SKB", "CGROUP_INET_INGRESS"),
    "skb_egress": ("cgroup_skb/egress", "CGROUP_SKB", "CGROUP_INET_EGRESS"),
    "sock_ops": ("sockops", "SOCK_OPS", "CGROUP_SOCK_OPS"),
    "msg_verdict": ("sk_msg", "SK_MSG", "SK_MSG_VERDICT"),
    "refresh": ("syscall", "SYSCALL", None),
}


def test_programs_have_libbpf_types_from_their_sections(info):
    found = {
        p.name: (
            p.section,
            p.prog_type.name.removeprefix("BPF_PROG_TYPE_"),
            p.attach_type.name.removeprefix("BPF_") if p.attach_type is not None else None,
        )
        for p in info.programs
    }
    assert found == EXPECTED_PROGRAMS
    assert info.program("connect4").prog_type == ProgType.BPF_PROG_TYPE_CGROUP_SOCK_ADDR
    assert int(info.program("connect4").attach_type) == 10  # uapi BPF_CGROUP_INET4_CONNECT
    assert all(not p.is_subprogram for p in info.programs)
    for section, *_ in EXPECTED_PROGRAMS.values():
        assert section in info.sections


def test_text_functions_are_subprograms(info):
    assert {p.name for p in info.subprograms} == {"count", "loop_step"}
    for sub in info.subprograms:
        assert sub.section == ".text" and sub.is_subprogram and sub.prog_type is None


def test_every_function_ends_with_exit(info):
    for program in (*info.programs, *info.subprograms):
        assert program.instructions, program.name
        assert program.instructions[-1].text == "exit", program.name
        assert program.insn_count == sum(i.slots for i in program.instructions)


def test_relocations_name_maps_data_subprograms_and_kfuncs(info):
    connect4 = info.program("connect4")
    assert connect4.maps == ("cidrs", "events")
    assert connect4.kfuncs == ("bpf_rdonly_cast",)
    kinds = {(r.kind, r.target) for r in connect4.relocations}
    assert (RelocationKind.SUBPROG_CALL, "count") in kinds
    assert (RelocationKind.GLOBAL_DATA, "cfg_enforce") in kinds
    assert (RelocationKind.GLOBAL_DATA, "cfg_policy_generation") in kinds
    assert info.program("sock_ops").maps == ("sock_identity",)
    assert info.program("skb_ingress").maps == ("identities",)
    assert info.program("count").maps == ("counters",)
    refresh = {(r.kind, r.target) for r in info.program("refresh").relocations}
    assert refresh == {(RelocationKind.SUBPROG_ADDR, "loop_step")}
    # Each relocation sits on the instruction it patches.
    for program in info.programs:
        by_index = {i.index: i for i in program.instructions}
        for relocation in program.relocations:
            insn = by_index[relocation.insn_index]
            assert insn.is_call if relocation.kind.name.endswith("CALL") else insn.is_lddw


def test_helper_calls_are_named(info):
    assert 1 in info.program("count").helpers  # bpf_map_lookup_elem
    calls = [i for i in info.program("skb_egress").instructions if i.call_kind == CallKind.HELPER]
    names = {i.helper_name for i in calls}
    assert {"bpf_ringbuf_reserve", "bpf_ringbuf_submit"} <= names


def test_kfunc_and_core_relocations(info):
    assert [(e.name, e.kind) for e in info.externs] == [("bpf_rdonly_cast", "kfunc")]
    assert info.core_relocations > 0
    connect4 = info.program("connect4")
    described = {
        (r.kind, info.btf.core_access_path(r.type_id, r.access, r.kind))
        for r in connect4.core_relocations
    }
    assert (CoreRelocKind.TYPE_ID_TARGET, "struct sock") in described
    assert (CoreRelocKind.FIELD_BYTE_OFFSET, "struct sock.__sk_common.skc_family") in described
    assert (CoreRelocKind.FIELD_BYTE_OFFSET, "struct bpf_sock_addr.user_ip4") in described
    assert (
        sum(len(p.core_relocations) for p in info.programs)
        + sum(len(p.core_relocations) for p in info.subprograms)
        == info.core_relocations
    )


# -- maps and data ---------------------------------------------------------------


def test_btf_defined_maps(info):
    maps = {m.name: m for m in info.maps}
    assert set(maps) == {"identities", "cidrs", "counters", "events", "sock_identity"}

    def attributes(name):
        m = maps[name]
        return (m.type, m.key_size, m.value_size, m.max_entries, m.map_flags)

    no_prealloc = 1  # BPF_F_NO_PREALLOC
    assert attributes("identities") == (MapType.BPF_MAP_TYPE_HASH, 8, 4, 1024, 0)
    assert attributes("cidrs") == (MapType.BPF_MAP_TYPE_LPM_TRIE, 8, 4, 512, no_prealloc)
    assert attributes("counters") == (MapType.BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 8, 0)
    assert attributes("events") == (MapType.BPF_MAP_TYPE_RINGBUF, 0, 0, 65536, 0)
    assert attributes("sock_identity") == (MapType.BPF_MAP_TYPE_SK_STORAGE, 4, 8, 0, no_prealloc)
    assert maps["cidrs"].key_type == "struct lpm_v4_key"
    assert maps["identities"].type_name == "BPF_MAP_TYPE_HASH" and int(maps["identities"].type) == 1


def test_global_data_sections(info):
    sections = {d.name: d for d in info.data_sections}
    assert set(sections) == {".rodata", ".data", ".bss"}
    rodata = sections[".rodata"]
    assert rodata.readonly and rodata.size == 16
    assert [(v.name, v.offset, v.size) for v in rodata.variables] == [
        ("cfg_enforce", 0, 4),
        ("cfg_policy_generation", 8, 8),
    ]
    assert rodata.variables[0].type == "const volatile __u32"
    assert [(v.name, v.size) for v in sections[".data"].variables] == [("audit_sample_rate", 4)]
    assert sections[".bss"].size == 8 and not sections[".bss"].readonly


def test_license_btf_and_btf_ext(info):
    assert info.license == "GPL"
    assert info.kern_version is None
    assert info.has_btf and info.has_btf_ext
    # One func_info per function, programs and subprograms alike.
    assert info.func_info_count == len(info.programs) + len(info.subprograms)
    assert info.line_info_count > info.func_info_count


def test_describe_reads_like_bpftool_and_objdump(info):
    text = str(info)
    assert "connect4" in text and "cgroup_sock_addr" in text and "cgroup_inet4_connect" in text
    assert "lpm_trie" in text and "kfunc_call bpf_rdonly_cast" in text
    assert "CO-RE byte_off struct sock.__sk_common.skc_family" in text
    assert "; bpf_map_lookup_elem" in text
    assert "exit" not in info.describe(disassembly=False)


# -- the decoder against llvm-objdump ---------------------------------------------

_OBJDUMP_LINE = re.compile(r"^\s*(\d+):\t((?:[0-9a-f]{2} ?)+)\t(.*)$")


def _objdump(path: Path, *options: str) -> dict[str, list[tuple[int, bytes, str]]]:
    tool = shutil.which("llvm-objdump")
    assert tool, "llvm-objdump is installed by `make setup` (package llvm)"
    output = subprocess.run(
        [tool, "-d", *options, str(path)], capture_output=True, text=True, check=True
    ).stdout
    sections: dict[str, list[tuple[int, bytes, str]]] = {}
    current: list[tuple[int, bytes, str]] = []
    for line in output.splitlines():
        if line.startswith("Disassembly of section "):
            current = sections.setdefault(line.removeprefix("Disassembly of section ")[:-1], [])
        elif match := _OBJDUMP_LINE.match(line):
            text = re.sub(r" <[^<>]*>$", "", match.group(3).strip())  # drop jump labels
            raw = bytes.fromhex(match.group(2).replace(" ", ""))
            current.append((int(match.group(1)), raw, text))
    return sections


def test_decoder_agrees_with_llvm_objdump_on_whole_object(sample_path):
    plain = _objdump(sample_path)
    # clang 14's objdump only decodes 32-bit atomics with the alu32 feature on.
    alu32 = _objdump(sample_path, "--mattr=+alu32")
    with open(sample_path, "rb") as file:
        elf = ELFFile(file)
        code = {s.name: s.data() for s in elf.iter_sections() if s["sh_flags"] & 0x4}
    assert set(code) == set(plain)
    total = 0
    for name, data in code.items():
        ours = decode(data)
        theirs = plain[name]
        assert len(ours) == len(theirs), name
        for insn, (index, raw, text), (_, _, text32) in zip(ours, theirs, alu32[name]):
            assert (insn.index, insn.opcode, insn.raw) == (index, raw[0], raw), (name, index)
            expected = text32 if insn.is_atomic and insn.access_size == 4 else text
            assert insn.text == expected, (name, index, raw.hex())
            total += 1
    assert total > 100


# -- the decoder on hand-made instructions -----------------------------------------


def _insn(opcode, dst=0, src=0, off=0, imm=0) -> bytes:
    return struct.pack("<BBhi", opcode, (src << 4) | dst, off, imm)


def test_decoder_names_classes_operations_and_targets():
    code = b"".join(
        [
            _insn(0x61, dst=1, src=6, off=4),  # r1 = *(u32 *)(r6 + 4)
            _insn(0x85, imm=12),  # call 12
            _insn(0x15, dst=0, off=5),  # if r0 == 0 goto +5
            _insn(0x18, dst=1, src=1, imm=7),  # lddw with a map fd (after libbpf)
            _insn(0x00, imm=0),
            _insn(0x85, src=1, imm=-4),  # BPF-to-BPF call
            _insn(0x85, src=2, imm=1234),  # kfunc call
            _insn(0xDB, dst=1, src=2, off=8, imm=0x01),  # atomic fetch-add
            _insn(0x7A, dst=10, off=-8, imm=-1),  # *(u64 *)(r10 - 8) = -1
            _insn(0x95),
        ]
    )
    insns = decode(code)
    assert [i.text for i in insns] == [
        "r1 = *(u32 *)(r6 + 4)",
        "call 12",
        "if r0 == 0 goto +5",
        "r1 = map[fd:7] ll",
        "call -4",
        "call 1234",
        "r2 = atomic_fetch_add((u64 *)(r1 + 8), r2)",
        "*(u64 *)(r10 - 8) = -1",
        "exit",
    ]
    load, call, branch, lddw, local_call, kfunc, atomic, store, exit_ = insns
    assert (load.cls, load.operation, load.access_size) == (InsnClass.LDX, "MEM", 4)
    assert call.helper_id == 12 and call.helper_name == helper_name(12) == "bpf_tail_call"
    assert (branch.cls, branch.operation, branch.jump_target) == (InsnClass.JMP, "JEQ", 8)
    assert lddw.slots == 2 and lddw.pseudo == PseudoLoad.MAP_FD and lddw.index == 3
    assert local_call.index == 5 and local_call.call_kind == CallKind.BPF_TO_BPF
    assert local_call.jump_target == 2
    assert kfunc.call_kind == CallKind.KFUNC and kfunc.helper_id is None
    assert atomic.is_atomic and store.cls == InsnClass.ST and exit_.is_exit


def test_decoder_rejects_malformed_code():
    assert decode(_insn(0xFF))[0].text == "<unknown>"
    assert not decode(_insn(0xFF))[0].is_valid
    with pytest.raises(ToolchainError, match="multiple of 8"):
        decode(b"\x95\x00\x00")
    with pytest.raises(ToolchainError, match="cut off"):
        decode(_insn(0x18, dst=1))


# -- BTF ---------------------------------------------------------------------------


def test_btf_parser_agrees_with_bpftool(sample_path, info):
    dumped = subprocess.run(
        [str(_bpftool()), "-j", "btf", "dump", "file", str(sample_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = json.loads(dumped.stdout)["types"]
    btf = info.btf
    assert len(btf) == len(theirs)
    for entry in theirs:
        ours = btf.type(entry["id"])
        assert ours.kind.name == entry["kind"]
        assert (ours.name or "(anon)") == entry["name"]
        if "size" in entry:
            assert ours.size == entry["size"]
        if "type_id" in entry and ours.kind != BtfKind.ARRAY:
            assert ours.type_id == entry["type_id"]
        if "ret_type_id" in entry:
            assert ours.type_id == entry["ret_type_id"]
            assert [(p.name or "(anon)", p.type_id) for p in ours.params] == [
                (p["name"], p["type_id"]) for p in entry["params"]
            ]
        if "nr_elems" in entry:
            assert (ours.array.elem_type_id, ours.array.nelems) == (
                entry["type_id"],
                entry["nr_elems"],
            )
        if "members" in entry:
            assert [(m.name or "(anon)", m.type_id, m.bit_offset) for m in ours.members] == [
                (m["name"], m["type_id"], m["bits_offset"]) for m in entry["members"]
            ]
        if "vars" in entry:
            assert [(v.type_id, v.offset, v.size) for v in ours.secinfos] == [
                (v["type_id"], v["offset"], v["size"]) for v in entry["vars"]
            ]


def test_btf_parser_agrees_with_bpftool_on_the_whole_kernel():
    """vmlinux has the kinds a small object lacks: ENUM64, FLOAT, DECL_TAG, bitfields..."""
    dumped = subprocess.run(
        [str(_bpftool()), "-j", "btf", "dump", "file", str(VMLINUX_BTF)],
        capture_output=True,
        check=True,
    )
    theirs = json.loads(dumped.stdout)["types"]
    btf = Btf.from_file(VMLINUX_BTF)
    assert len(btf) == len(theirs)
    for entry in theirs:
        ours = btf.type(entry["id"])
        assert (ours.kind.name, ours.name or "(anon)") == (entry["kind"], entry["name"])
        assert ours.size == entry.get("size", ours.size)
        if "values" in entry:
            # bpftool's JSON sign-extends unsigned 32-bit enum values (its text
            # output does not); compare them modulo the enum's width.
            mask = (1 << (8 * ours.size)) - 1
            assert [(v.name, v.value & mask) for v in ours.enumerators] == [
                (v["name"], v["val"] & mask) for v in entry["values"]
            ]
        if "members" in entry:
            assert [
                (m.name or "(anon)", m.type_id, m.bit_offset, m.bitfield_size) for m in ours.members
            ] == [
                (m["name"], m["type_id"], m["bits_offset"], m.get("bitfield_size", 0))
                for m in entry["members"]
            ]
        if entry["kind"] == "INT":
            assert ours.int_encoding.bits == entry["nr_bits"]
            assert ours.int_encoding.signed == (entry["encoding"] == "SIGNED")
        if entry["kind"] == "DECL_TAG":
            assert ours.component_idx == entry["component_idx"]


def test_btf_of_the_running_kernel():
    btf = Btf.from_file(VMLINUX_BTF)
    sock = btf.find_struct("sock")
    assert sock is not None and sock.kind == BtfKind.STRUCT
    assert sock.member("__sk_common").offset == 0
    assert btf.sizeof(sock.type_id) == sock.size
    sock_common = btf.find_struct("sock_common")
    family = sock_common.member("skc_family")
    assert family.size == 2 and family.bitfield_size == 0
    u32 = btf.find("__u32", BtfKind.TYPEDEF)[0]
    resolved = btf.resolve(u32.id)
    assert resolved.kind == BtfKind.INT and resolved.size == 4
    assert not resolved.int_encoding.signed
    assert btf.find_struct("no_such_struct_in_any_kernel") is None
    assert btf.find_struct("bpf_sock_addr").member("user_ip4").offset == 4
    with pytest.raises(ValueError):
        btf.sizeof(0)  # void


def test_btf_datasecs_and_ext_records(info):
    datasecs = {d.name: d for d in info.btf.datasecs()}
    assert {".maps", ".rodata", ".data", ".bss", ".ksyms", "license"} <= set(datasecs)
    assert [v.name for v in datasecs[".rodata"].variables] == [
        "cfg_enforce",
        "cfg_policy_generation",
    ]
    ext = info.btf_ext
    assert {f.section for f in ext.func_info} == {p.section for p in info.programs} | {".text"}
    assert {line.file_name for line in ext.line_info} == {"./sample.c"}
    kfunc_lines = [line for line in ext.line_info if "bpf_rdonly_cast(bsk" in line.line_text]
    assert kfunc_lines and kfunc_lines[0].section == "cgroup/connect4"
    source_line = SAMPLE_SOURCE.splitlines()[kfunc_lines[0].line - 1]
    assert source_line == kfunc_lines[0].line_text


def test_malformed_btf_is_a_toolchain_error(info):
    with pytest.raises(ToolchainError, match="magic"):
        Btf(b"\x00" * 32)
    truncated = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 100, 100, 10)
    with pytest.raises(ToolchainError, match="beyond"):
        Btf(truncated)
    with pytest.raises(ToolchainError):
        BtfExt.parse(b"\x9f\xeb\x01\x00\x20\x00\x00\x00" + b"\xff" * 24, info.btf)
    with pytest.raises(ToolchainError):
        inspect_object(b"not an elf file at all")


# -- section names -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("cgroup/connect4", ("CGROUP_SOCK_ADDR", "CGROUP_INET4_CONNECT")),
        ("cgroup/getsockname6", ("CGROUP_SOCK_ADDR", "CGROUP_INET6_GETSOCKNAME")),
        ("cgroup/sock", ("CGROUP_SOCK", "CGROUP_INET_SOCK_CREATE")),
        ("cgroup/sock_release", ("CGROUP_SOCK", "CGROUP_INET_SOCK_RELEASE")),
        ("kprobe/tcp_connect", ("KPROBE", None)),
        ("kprobe", ("KPROBE", None)),
        ("xdp.frags", ("XDP", "XDP")),
        ("tc", ("SCHED_CLS", None)),
        ("kprobetcp", None),
        ("cgroup/connect4x", None),
        (".text", None),
    ],
)
def test_section_names_map_to_types_like_libbpf(section, expected):
    found = section_program_type(section)
    if expected is None:
        assert found is None
        return
    prog_type, attach_type = expected
    assert found.prog_type == ProgType[f"BPF_PROG_TYPE_{prog_type}"]
    assert found.attach_type == (AttachType[f"BPF_{attach_type}"] if attach_type else None)


# -- the cache ------------------------------------------------------------------------


def test_second_build_is_a_cache_hit_with_identical_bytes(sample):
    again = build_object(SAMPLE_SOURCE, include_dirs=[SAMPLE_INCLUDE], name="sample")
    assert again.cache_hit and not sample.cache_hit
    assert again.object == sample.object and again.key == sample.key
    assert again.path.read_bytes() == sample.object
    assert again.seconds < sample.seconds


def test_rebuilds_are_byte_identical(sample, tmp_path, monkeypatch):
    monkeypatch.setenv("EBMESH_CACHE_DIR", str(tmp_path / "elsewhere"))
    fresh = build_object(SAMPLE_SOURCE, include_dirs=[SAMPLE_INCLUDE], name="sample")
    assert not fresh.cache_hit
    assert fresh.object == sample.object and fresh.key == sample.key


def test_changing_a_header_misses_the_cache(module_cache, tmp_path):
    include = tmp_path / "include"
    shutil.copytree(SAMPLE_INCLUDE, include)
    first = build_object(SAMPLE_SOURCE, include_dirs=[include], name="sample")
    header = include / "sample_policy.h"
    header.write_text(
        header.read_text().replace("#define VERDICT_ALLOW 1", "#define VERDICT_ALLOW 1\n")
    )
    changed = build_object(SAMPLE_SOURCE, include_dirs=[include], name="sample")
    assert not changed.cache_hit and changed.key != first.key
    (include / "unused.h").write_text("/* not included, still part of the key */\n")
    added = build_object(SAMPLE_SOURCE, include_dirs=[include], name="sample")
    assert not added.cache_hit and added.key != changed.key
    assert build_object(SAMPLE_SOURCE, include_dirs=[include], name="sample").cache_hit


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("EBMESH_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("EBMESH_CACHE_DIR")
    assert cache.cache_dir() == tmp_path / "xdg" / "ebmesh"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # invalid per the XDG spec
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "ebmesh"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "ebmesh"


def test_atomic_writes_race_safely(tmp_path):
    target = tmp_path / "entry"
    payloads = [bytes([n]) * 100_000 for n in range(8)]
    threads = [threading.Thread(target=cache.write_atomically, args=(target, p)) for p in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert target.read_bytes() in payloads
    assert os.listdir(tmp_path) == ["entry"]  # no temporary files left behind


def test_vmlinux_header_is_generated_once_per_kernel(monkeypatch):
    header = vmlinux_header()
    assert header.name == "vmlinux.h" and header.parent.parent.name == "vmlinux"
    assert "struct sock {" in header.read_text()
    # Cached: bpftool is not needed a second time.
    monkeypatch.setenv("EBMESH_BPFTOOL", "/nonexistent/bpftool")
    assert vmlinux_header() == header


# -- errors ---------------------------------------------------------------------------


def test_c_that_does_not_compile_raises_toolchain_error_with_clang_output():
    broken = SAMPLE_SOURCE.replace("count(0);", "count(0, undeclared_thing);")
    with pytest.raises(ToolchainError) as raised:
        build_object(broken, include_dirs=[SAMPLE_INCLUDE], name="broken")
    assert "undeclared_thing" in raised.value.output
    assert "broken.c:" in raised.value.output and "error:" in raised.value.output
    assert "undeclared_thing" in str(raised.value)


def test_warnings_fail_the_build():
    sloppy = SAMPLE_SOURCE.replace("count(1);", "int unused_variable; count(1);")
    with pytest.raises(ToolchainError, match="unused_variable"):
        build_object(sloppy, include_dirs=[SAMPLE_INCLUDE], name="sloppy")


def test_missing_clang_is_an_environment_problem(monkeypatch, tmp_path):
    monkeypatch.setenv("EBMESH_CLANG", str(tmp_path / "no-such-clang"))
    with pytest.raises(EnvironmentProblem, match="make setup"):
        build_object("int x;", include_dirs=[])
    monkeypatch.delenv("EBMESH_CLANG")
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory
    with pytest.raises(EnvironmentProblem, match="clang not found.*make setup"):
        build_object("int x;", include_dirs=[])


def test_old_clang_is_an_environment_problem(monkeypatch, tmp_path):
    fake = tmp_path / "clang-10"
    fake.write_text("#!/bin/sh\necho 'clang version 10.0.1'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("EBMESH_CLANG", str(fake))
    with pytest.raises(EnvironmentProblem, match=">= 11"):
        build_object("int x;", include_dirs=[])


def test_missing_kernel_btf_or_bpftool_is_an_environment_problem(monkeypatch, tmp_path):
    with pytest.raises(EnvironmentProblem, match="CONFIG_DEBUG_INFO_BTF"):
        vmlinux_header(tmp_path / "no-btf")
    monkeypatch.setenv("EBMESH_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("EBMESH_BPFTOOL", str(tmp_path / "no-bpftool"))
    with pytest.raises(EnvironmentProblem, match="make setup"):
        vmlinux_header()


def test_missing_include_dir_is_reported(tmp_path):
    with pytest.raises(EnvironmentProblem, match="does not exist"):
        build_object("int x;", include_dirs=[tmp_path / "missing"])


def _bpftool() -> Path:
    from ebmesh.toolchain.vmlinux import find_bpftool

    return find_bpftool()
