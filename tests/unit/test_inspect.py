"""ebmesh.loader.inspect: reading an eBPF object back, without loading it.

The sample object (data/toolchain/sample.bpf.c) is built by the real clang;
libbpf opens it (no root needed) and pyelftools reads its ELF. The decoder is
checked against llvm-objdump and the BTF reader against bpftool, both
installed by `make setup`.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from ebmesh.errors import LibbpfError, ToolchainError
from ebmesh.loader import AttachType, BpfObject, MapType, ProgType
from ebmesh.loader.btf import BtfKind, Linkage
from ebmesh.loader.btf_ext import BtfExt
from ebmesh.loader.insn import CallKind, decode
from ebmesh.loader.inspect import RelocationKind, inspect_object
from ebmesh.toolchain.clang import build_object
from ebmesh.toolchain.vmlinux import find_bpftool

DATA = Path(__file__).parent / "data" / "toolchain"


@pytest.fixture(scope="module")
def sample() -> bytes:
    source = (DATA / "sample.bpf.c").read_text()
    return build_object(source, include_dirs=[DATA / "include"], name="sample").object


@pytest.fixture(scope="module")
def sample_path(sample, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("objects") / "sample.o"
    path.write_bytes(sample)
    return path


@pytest.fixture(scope="module")
def info(sample):
    return inspect_object(sample)


@pytest.fixture(scope="module")
def bpf(sample):
    with BpfObject.open(sample, "sample") as opened:
        yield opened


@pytest.fixture(scope="module")
def btf(bpf):
    return bpf.btf


# -- programs ------------------------------------------------------------------------

EXPECTED_PROGRAMS = {
    "connect4": ("cgroup/connect4", ProgType.CGROUP_SOCK_ADDR, AttachType.CGROUP_INET4_CONNECT),
    "sendmsg6": ("cgroup/sendmsg6", ProgType.CGROUP_SOCK_ADDR, AttachType.CGROUP_UDP6_SENDMSG),
    "recvmsg4": ("cgroup/recvmsg4", ProgType.CGROUP_SOCK_ADDR, AttachType.CGROUP_UDP4_RECVMSG),
    "getpeername4": (
        "cgroup/getpeername4",
        ProgType.CGROUP_SOCK_ADDR,
        AttachType.CGROUP_INET4_GETPEERNAME,
    ),
    "sock_create": ("cgroup/sock_create", ProgType.CGROUP_SOCK, AttachType.CGROUP_INET_SOCK_CREATE),
    "skb_ingress": ("cgroup_skb/ingress", ProgType.CGROUP_SKB, AttachType.CGROUP_INET_INGRESS),
    "skb_egress": ("cgroup_skb/egress", ProgType.CGROUP_SKB, AttachType.CGROUP_INET_EGRESS),
    "sock_ops": ("sockops", ProgType.SOCK_OPS, AttachType.CGROUP_SOCK_OPS),
    "msg_verdict": ("sk_msg", ProgType.SK_MSG, AttachType.SK_MSG_VERDICT),
    # libbpf's expected attach type is 0 here, which is also CGROUP_INET_INGRESS
    "refresh": ("syscall", ProgType.SYSCALL, None),
}


def test_programs_have_the_types_libbpf_gives_their_sections(info):
    found = {p.name: (p.section, p.prog_type, p.attach_type) for p in info.programs}
    assert found == EXPECTED_PROGRAMS
    assert int(info.program("connect4").attach_type) == 10  # uapi BPF_CGROUP_INET4_CONNECT
    assert all(not p.is_subprogram for p in info.programs)
    assert {section for section, *_ in EXPECTED_PROGRAMS.values()} <= set(info.sections)


def test_text_functions_are_subprograms(info):
    assert {p.name for p in info.subprograms} == {"count", "loop_step"}
    for sub in info.subprograms:
        assert sub.section == ".text" and sub.is_subprogram
        assert sub.prog_type is None and sub.attach_type is None


def test_functions_are_cut_where_libbpf_cuts_them(info, bpf, sample):
    for program in info.programs:
        assert program.insn_count == bpf.programs[program.name].insn_count, program.name
    for program in (*info.programs, *info.subprograms):
        assert program.instructions[-1].is_exit, program.name
    # The subprograms cover .text whole, one after the other.
    text = ELFFile(io.BytesIO(sample)).get_section_by_name(".text")
    count, loop_step = info.program("count"), info.program("loop_step")
    assert count.first_index == 0 and loop_step.first_index == count.insn_count
    assert count.insn_count + loop_step.insn_count == text["sh_size"] // 8


def test_relocations_name_maps_data_subprograms_and_kfuncs(info):
    connect4 = info.program("connect4")
    assert connect4.maps == ("cidrs", "events")
    assert connect4.kfuncs == ("bpf_rdonly_cast",)
    assert connect4.calls == ("count",)
    kinds = {(r.kind, r.target) for r in connect4.relocations}
    assert (RelocationKind.GLOBAL_DATA, "cfg_enforce") in kinds
    assert (RelocationKind.GLOBAL_DATA, "cfg_policy_generation") in kinds
    assert info.program("sock_ops").maps == ("sock_identity",)
    assert info.program("skb_ingress").maps == ("identities",)
    assert info.program("count").maps == ("counters",)
    assert info.program("loop_step").relocations[0].target == "decisions"  # .bss
    assert {p.name for p in info.programs if p.calls == ("count",)} == {
        "connect4",
        "sendmsg6",
        "recvmsg4",
        "getpeername4",
        "skb_egress",
    }
    # Each relocation sits on the instruction it patches.
    for program in (*info.programs, *info.subprograms):
        by_index = {i.index: i for i in program.instructions}
        for relocation in program.relocations:
            insn = by_index[relocation.insn_index]
            if relocation.kind in (RelocationKind.SUBPROG_CALL, RelocationKind.KFUNC_CALL):
                assert insn.is_call, (program.name, relocation)
            elif relocation.kind in (RelocationKind.MAP, RelocationKind.GLOBAL_DATA):
                assert insn.is_lddw, (program.name, relocation)
    # clang emits a kfunc call as a BPF-to-BPF call relocated against the extern;
    # libbpf makes it a kfunc call (src 2) when it loads the program.
    by_index = {i.index: i for i in connect4.instructions}
    (kfunc_call,) = [r for r in connect4.relocations if r.kind == RelocationKind.KFUNC_CALL]
    assert by_index[kfunc_call.insn_index].call_kind == CallKind.BPF_TO_BPF
    calls = [i for i in connect4.instructions if i.is_call]
    assert {i.call_kind for i in calls} == {CallKind.HELPER, CallKind.BPF_TO_BPF}


# -- maps and global data ------------------------------------------------------------


def test_maps_are_as_libbpf_defines_them(info):
    maps = {m.name: m for m in info.maps}
    assert set(maps) == {"identities", "cidrs", "counters", "events", "sock_identity"}

    def attributes(name):
        m = maps[name]
        return (m.type, m.key_size, m.value_size, m.max_entries, m.flags)

    no_prealloc = 1  # BPF_F_NO_PREALLOC
    assert attributes("identities") == (MapType.HASH, 8, 4, 1024, 0)
    assert attributes("cidrs") == (MapType.LPM_TRIE, 8, 4, 512, no_prealloc)
    assert attributes("counters") == (MapType.PERCPU_ARRAY, 4, 8, 8, 0)
    assert attributes("events") == (MapType.RINGBUF, 0, 0, 65536, 0)
    assert attributes("sock_identity") == (MapType.SK_STORAGE, 4, 8, 0, no_prealloc)
    assert (maps["cidrs"].key_type, maps["cidrs"].value_type) == ("struct lpm_v4_key", "__u32")
    assert (maps["identities"].key_type, maps["sock_identity"].key_type) == ("__u64", "int")
    assert maps["events"].key_type is maps["events"].value_type is None


def test_global_data_sections(info):
    sections = {d.name: d for d in info.data_sections}
    assert set(sections) == {".rodata", ".data", ".bss"}
    rodata = sections[".rodata"]
    assert rodata.readonly and rodata.size == 16
    assert [(v.name, v.offset, v.size, v.type) for v in rodata.variables] == [
        ("cfg_enforce", 0, 4, "const volatile __u32"),
        ("cfg_policy_generation", 8, 8, "const volatile __u64"),
    ]
    assert [(v.name, v.size, v.type) for v in sections[".data"].variables] == [
        ("audit_sample_rate", 4, "__u32")
    ]
    assert sections[".bss"].size == 8 and not sections[".bss"].readonly


def test_license_externs_btf_and_btf_ext(info, btf):
    assert info.license == "GPL"
    assert [(e.name, e.kind) for e in info.externs] == [("bpf_rdonly_cast", "kfunc")]
    assert info.has_btf and info.btf_types == len(btf) and info.has_btf_ext
    # One func_info per function, programs and subprograms alike.
    assert info.func_info_count == len(info.programs) + len(info.subprograms)
    assert info.line_info_count > info.func_info_count


def follow(btf, type_id: int, access: str) -> list[str]:
    """The member names a CO-RE access string walks through ("0:0:3": sock.__sk_common.x)."""
    names, current = [], btf.resolve(type_id)
    for index in [int(part) for part in access.split(":")][1:]:
        member = current.members[index]
        names.append(member.name)
        current = btf.resolve(member.type_id)
    return names


def test_core_relocations_reach_the_fields_the_source_reads(info, btf):
    connect4 = info.program("connect4")
    read = {
        (r.type_name, ".".join(follow(btf, r.type_id, r.access)))
        for r in connect4.core_relocations
        if r.kind == 0  # BPF_CORE_FIELD_BYTE_OFFSET
    }
    assert ("struct sock", "__sk_common.skc_family") in read
    assert ("struct bpf_sock_addr", "user_ip4") in read
    # bpf_core_type_id_kernel(struct sock): a type-based relocation of the root type alone
    assert ("struct sock", "0", 7) in {
        (r.type_name, r.access, r.kind) for r in connect4.core_relocations
    }
    per_function = sum(len(p.core_relocations) for p in (*info.programs, *info.subprograms))
    assert per_function == len(info.core_relocations) > 0


def test_describe_summarises_programs_maps_and_data(info):
    text = str(info)
    assert re.search(
        r"^  connect4 +cgroup/connect4 +cgroup_sock_addr +cgroup_inet4_connect +57 insns",
        text,
        re.M,
    )
    assert re.search(r"^  refresh +syscall +syscall +- ", text, re.M)
    assert "calls count" in text and "kfuncs bpf_rdonly_cast" in text
    assert re.search(r"^  cidrs +lpm_trie +key 8 +value 4 +max_entries 512 +flags 0x1$", text, re.M)
    assert re.search(r"^  \.rodata +16 bytes read-only +cfg_enforce@0 \(4\)", text, re.M)
    assert "CO-RE types: " in text and "struct sock (2)" in text
    assert "license 'GPL'" in text and "exit" not in text  # no disassembly: llvm-objdump -d has it


# -- the decoder against llvm-objdump ----------------------------------------------------

_OBJDUMP_LINE = re.compile(r"^\s*(\d+):\t(?:[0-9a-f]{2} ?)+\t(.*)$")


def _objdump(path: Path) -> dict[str, list[tuple[int, str]]]:
    tool = shutil.which("llvm-objdump")
    assert tool, "llvm-objdump is installed by `make setup` (package llvm)"
    output = subprocess.run([tool, "-d", str(path)], capture_output=True, text=True, check=True)
    sections: dict[str, list[tuple[int, str]]] = {}
    current: list[tuple[int, str]] = []
    for line in output.stdout.splitlines():
        if line.startswith("Disassembly of section "):
            current = sections.setdefault(line.removeprefix("Disassembly of section ")[:-1], [])
        elif match := _OBJDUMP_LINE.match(line):
            current.append((int(match.group(1)), re.sub(r" <[^<>]*>$", "", match.group(2).strip())))
    return sections


def test_decoder_agrees_with_llvm_objdump(sample_path):
    theirs = _objdump(sample_path)
    with open(sample_path, "rb") as file:
        code = {s.name: s.data() for s in ELFFile(file).iter_sections() if s["sh_flags"] & 0x4}
    assert set(code) == set(theirs)
    total = 0
    for name, data in code.items():
        ours = decode(data)
        assert [i.index for i in ours] == [index for index, _ in theirs[name]], name
        for insn, (index, text) in zip(ours, theirs[name]):
            where = (name, index, text)
            assert insn.is_known, where
            assert insn.is_exit == (text == "exit"), where
            assert insn.is_call == text.startswith("call "), where
            assert insn.is_lddw == text.endswith(" ll"), where
            if insn.is_lddw:
                assert insn.imm == int(text.split(" = ")[1].removesuffix(" ll")), where
            jump = re.search(r"goto ([+-]\d+)$", text)
            assert insn.is_jump == bool(jump), where
            if jump:
                assert insn.jump_target == index + 1 + int(jump.group(1)), where
            total += 1
    assert total > 100


def _insn(opcode, dst=0, src=0, off=0, imm=0) -> bytes:
    return struct.pack("<BBhi", opcode, (src << 4) | dst, off, imm)


def test_decoder_on_hand_made_instructions():
    code = b"".join(
        [
            _insn(0x61, dst=1, src=6, off=4),  # r1 = *(u32 *)(r6 + 4)
            _insn(0x85, imm=12),  # call 12 (a helper)
            _insn(0x15, dst=0, off=-2),  # if r0 == 0 goto -2
            _insn(0x18, dst=1, imm=-1),  # r1 = -4294967297 ll (two slots)
            _insn(0x00, imm=-2),
            _insn(0x85, src=1, imm=-4),  # a BPF-to-BPF call
            _insn(0x85, src=2, imm=1234),  # a kfunc call
            _insn(0x06, imm=-7),  # gotol -7: the distance is in imm
            _insn(0xFF),  # no such opcode
            _insn(0x07, dst=11),  # no such register
            _insn(0x95),
        ]
    )
    load, helper, branch, lddw, local_call, kfunc, gotol, junk, r11, exit_ = decode(code, 100)
    assert (load.index, load.dst, load.src, load.off) == (100, 1, 6, 4) and not load.is_jump
    assert helper.call_kind == CallKind.HELPER and helper.imm == 12 and helper.jump_target is None
    assert branch.is_jump and branch.jump_target == 101
    assert lddw.slots == 2 and lddw.imm == -4294967297 and lddw.index == 103
    assert local_call.index == 105 and local_call.call_kind == CallKind.BPF_TO_BPF
    assert local_call.jump_target == 102 and not local_call.is_jump
    assert kfunc.call_kind == CallKind.KFUNC and kfunc.jump_target is None
    assert gotol.is_jump and gotol.jump_target == 101
    assert not junk.is_known and not junk.is_jump and not r11.is_known
    assert exit_.is_exit and exit_.index == 110 and all(i.is_known for i in (load, lddw, gotol))


def test_decoder_rejects_cut_code():
    with pytest.raises(ToolchainError, match="multiple of 8"):
        decode(b"\x95\x00\x00")
    with pytest.raises(ToolchainError, match="cut off"):
        decode(_insn(0x18, dst=1))


# -- BTF through libbpf ------------------------------------------------------------------


def test_btf_reader_agrees_with_bpftool(sample_path, btf):
    """bpftool dumps the BTF of the file; libbpf's open step then fills in DATASEC
    sizes and offsets and rewrites extern declarations (so those are compared
    against the ELF elsewhere), and appends its own types after the file's."""
    dumped = subprocess.run(
        [str(find_bpftool()), "-j", "btf", "dump", "file", str(sample_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = json.loads(dumped.stdout)["types"]
    assert len(btf) >= len(theirs) > 200
    linkages = {"static": Linkage.STATIC, "global": Linkage.GLOBAL, "extern": Linkage.EXTERN}
    for entry in theirs:
        ours = btf.type(entry["id"])
        assert (ours.kind.name, ours.name or "(anon)") == (entry["kind"], entry["name"])
        if entry["kind"] == "DATASEC":
            assert len(ours.variables) == len(entry["vars"])
            continue
        if "size" in entry:
            assert ours.size == entry["size"]
        if entry["kind"] in ("PTR", "TYPEDEF", "CONST", "VOLATILE", "VAR", "FUNC"):
            assert ours.type_id == entry["type_id"]
        if "linkage" in entry and entry["linkage"] != "extern":
            assert ours.linkage == linkages[entry["linkage"]]
        if "ret_type_id" in entry:
            assert ours.type_id == entry["ret_type_id"]
            assert [p.type_id for p in ours.params] == [p["type_id"] for p in entry["params"]]
            # libbpf names the unnamed parameters of extern functions
            assert all(
                p.name == q["name"]
                for p, q in zip(ours.params, entry["params"])
                if q["name"] != "(anon)"
            )
        if "nr_elems" in entry:
            assert (ours.array.elem_type_id, ours.array.nelems) == (
                entry["type_id"],
                entry["nr_elems"],
            )
        if "members" in entry:
            assert [
                (m.name or "(anon)", m.type_id, m.bit_offset, m.bitfield_size) for m in ours.members
            ] == [
                (m["name"], m["type_id"], m["bits_offset"], m.get("bitfield_size", 0))
                for m in entry["members"]
            ]
        if entry["kind"] == "INT":
            assert ours.signed == (entry["encoding"] == "SIGNED")
        if entry["kind"] == "FWD":
            assert btf.type_name(ours.id) == f"{entry['fwd_kind']} {entry['name']}"


def test_btf_lookups_and_c_spellings(btf):
    key = btf.find("lpm_v4_key", BtfKind.STRUCT)
    assert [(m.name, m.offset, btf.type_name(m.type_id)) for m in key.members] == [
        ("prefixlen", 0, "__u32"),
        ("addr", 4, "__u32"),
    ]
    assert btf.sizeof(key.id) == key.size == 8
    assert btf.find("no_such_struct_anywhere", BtfKind.STRUCT) is None
    u32 = btf.resolve(btf.find("__u32", BtfKind.TYPEDEF).id)
    assert (u32.kind, u32.size, u32.signed) == (BtfKind.INT, 4, False)
    assert btf.resolve(btf.find("__s64", BtfKind.TYPEDEF).id).signed
    count = btf.find("count", BtfKind.FUNC)
    connect4 = btf.find("connect4", BtfKind.FUNC)
    assert (count.linkage, connect4.linkage) == (Linkage.STATIC, Linkage.GLOBAL)
    assert btf.type_name(connect4.type_id) == "int (*)(struct bpf_sock_addr *)"
    assert [p.name for p in btf.type(connect4.type_id).params] == ["ctx"]
    license_var = btf.find("LICENSE", BtfKind.VAR)
    assert btf.type_name(license_var.type_id) == "char[4]" and btf.sizeof(license_var.id) == 4
    # libbpf's open step placed the variables of .rodata as the ELF symbols say.
    rodata = btf.find(".rodata", BtfKind.DATASEC)
    assert [(btf.type(v.type_id).name, v.offset, v.size) for v in rodata.variables] == [
        ("cfg_enforce", 0, 4),
        ("cfg_policy_generation", 8, 8),
    ]
    assert btf.type_name(0) == "void"
    with pytest.raises(LibbpfError):
        btf.sizeof(0)  # void has no size
    with pytest.raises(KeyError):
        btf.type(len(btf) + 1)


def test_btf_of_a_closed_object_is_refused(sample):
    with BpfObject.open(sample, "sample") as bpf:
        btf = bpf.btf
        assert len(btf) > 0
    with pytest.raises(ValueError, match="closed"):
        len(btf)


# -- what is not an eBPF object ------------------------------------------------------------


def test_what_is_not_an_elf_object_is_a_toolchain_error():
    for data in (b"", b"not an elf file at all", b"\x7fELF"):
        with pytest.raises(ToolchainError, match="not an ELF object"):
            inspect_object(data)


def test_an_elf_object_of_another_machine_is_a_toolchain_error():
    with pytest.raises(ToolchainError, match="not an eBPF object: the ELF machine is EM_"):
        inspect_object(Path(sys.executable).resolve().read_bytes())


def test_truncated_objects_are_toolchain_errors(sample):
    cuts = sorted(
        {*range(0, 256, 16), *range(256, len(sample), len(sample) // 50), len(sample) - 1}
    )
    for length in cuts:
        with pytest.raises(ToolchainError):
            inspect_object(sample[:length])


def _with_btf_ext(sample: bytes, replace) -> bytes:
    """The sample with its .BTF.ext section's bytes passed through `replace` (same length)."""
    section = ELFFile(io.BytesIO(sample)).get_section_by_name(".BTF.ext")
    start, end = section["sh_offset"], section["sh_offset"] + section["sh_size"]
    changed = replace(bytearray(sample[start:end]))
    assert len(changed) == end - start
    return sample[:start] + bytes(changed) + sample[end:]


def test_a_malformed_btf_ext_is_a_toolchain_error(sample, btf):
    """libbpf refuses some damage to .BTF.ext at open; either way inspection raises
    a ToolchainError naming the section. The reader checks for itself as well."""
    intact = ELFFile(io.BytesIO(sample)).get_section_by_name(".BTF.ext").data()

    def bad_magic(ext: bytearray) -> bytearray:
        ext[0:2] = b"\x00\x00"
        return ext

    def core_block_past_the_end(ext: bytearray) -> bytearray:
        struct.pack_into("<I", ext, 28, len(ext))  # core_relo_len
        return ext

    def record_count_past_the_block(ext: bytearray) -> bytearray:
        header_size, func_info_off = struct.unpack_from("<II", ext, 4)
        struct.pack_into("<I", ext, header_size + func_info_off + 8, 0xFFFF)  # 1st section's count
        return ext

    for damage, message in (
        (bad_magic, "magic"),
        (core_block_past_the_end, "out of bounds"),
        (record_count_past_the_block, "run past"),
    ):
        with pytest.raises(ToolchainError, match=r"\.BTF\.ext"):
            inspect_object(_with_btf_ext(sample, damage))
        with pytest.raises(ToolchainError, match=message):
            BtfExt.parse(damage(bytearray(intact)), btf)
    assert BtfExt.parse(intact, btf).func_info_count == 12  # the damage made the difference
    with pytest.raises(ToolchainError, match="too short"):
        BtfExt.parse(b"\x9f\xeb\x01\x00", btf)
