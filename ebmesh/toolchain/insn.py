"""eBPF instructions: decode the encoding, name the parts, print them like llvm-objdump.

An instruction is 8 bytes: opcode, dst and src registers (4 bits each),
a signed 16-bit offset and a signed 32-bit immediate, little-endian. `lddw`
(load a 64-bit immediate) takes two slots: the second one only carries the
high 32 bits. Indexes count 8-byte slots, as the kernel, libbpf relocations
and llvm-objdump do.

The text follows `llvm-objdump -d` (e.g. `r1 = *(u32 *)(r6 + 4)`,
`if r0 == 0 goto +5`, `call 12`, `r1 = 0 ll`); for encodings clang 14's
disassembler does not know (cpu v4 instructions, 32-bit atomics without
`--mattr=+alu32`, pseudo lddw) it follows newer LLVM or bpftool.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ebmesh.errors import ToolchainError

INSN_SIZE = 8
_UNPACK = struct.Struct("<BBhi")


class InsnClass(enum.IntEnum):
    LD = 0
    LDX = 1
    ST = 2
    STX = 3
    ALU = 4
    JMP = 5
    JMP32 = 6
    ALU64 = 7


class PseudoLoad(enum.IntEnum):
    """What the src register of `lddw` says the immediate is (set by libbpf)."""

    MAP_FD = 1
    MAP_VALUE = 2
    BTF_ID = 3
    FUNC = 4
    MAP_IDX = 5
    MAP_IDX_VALUE = 6


class CallKind(enum.IntEnum):
    """What the src register of `call` says the immediate is."""

    HELPER = 0  # imm is a helper id
    BPF_TO_BPF = 1  # imm is the callee's offset in instructions, minus one
    KFUNC = 2  # imm is the kfunc's BTF id (0 and relocated in an unloaded object)


# ALU operation (opcode & 0xf0) -> (name, operator)
_ALU_OPS = {
    0x00: ("ADD", "+="),
    0x10: ("SUB", "-="),
    0x20: ("MUL", "*="),
    0x30: ("DIV", "/="),
    0x40: ("OR", "|="),
    0x50: ("AND", "&="),
    0x60: ("LSH", "<<="),
    0x70: ("RSH", ">>="),
    0x80: ("NEG", None),
    0x90: ("MOD", "%="),
    0xA0: ("XOR", "^="),
    0xB0: ("MOV", "="),
    0xC0: ("ARSH", "s>>="),
    0xD0: ("END", None),
}

# JMP operation (opcode & 0xf0) -> (name, comparison)
_JMP_OPS = {
    0x00: ("JA", None),
    0x10: ("JEQ", "=="),
    0x20: ("JGT", ">"),
    0x30: ("JGE", ">="),
    0x40: ("JSET", "&"),
    0x50: ("JNE", "!="),
    0x60: ("JSGT", "s>"),
    0x70: ("JSGE", "s>="),
    0x80: ("CALL", None),
    0x90: ("EXIT", None),
    0xA0: ("JLT", "<"),
    0xB0: ("JLE", "<="),
    0xC0: ("JSLT", "s<"),
    0xD0: ("JSLE", "s<="),
    0xE0: ("JCOND", None),
}

# size field (opcode & 0x18) -> (name, C type, bytes)
_SIZES = {
    0x00: ("W", "u32", 4),
    0x08: ("H", "u16", 2),
    0x10: ("B", "u8", 1),
    0x18: ("DW", "u64", 8),
}

# mode field (opcode & 0xe0) of LD/LDX/ST/STX
_MODES = {0x00: "IMM", 0x20: "ABS", 0x40: "IND", 0x60: "MEM", 0x80: "MEMSX", 0xC0: "ATOMIC"}

# atomic operation (imm of an ATOMIC store, without the FETCH bit) -> (name, operator)
_ATOMIC_FETCH = 0x01
_ATOMIC_OPS = {
    0x00: ("ADD", "+="),
    0x40: ("OR", "|="),
    0x50: ("AND", "&="),
    0xA0: ("XOR", "^="),
    0xE0: ("XCHG", None),
    0xF0: ("CMPXCHG", None),
    0x100: ("LOAD_ACQ", None),
    0x110: ("STORE_REL", None),
}

# Helper ids are positions in this list (the kernel's enum bpf_func_id).
# Helpers were frozen after id 211; new functionality comes as kfuncs.
_HELPER_NAMES = tuple(
    "bpf_" + name
    for name in """
unspec map_lookup_elem map_update_elem map_delete_elem probe_read ktime_get_ns
trace_printk get_prandom_u32 get_smp_processor_id skb_store_bytes l3_csum_replace
l4_csum_replace tail_call clone_redirect get_current_pid_tgid get_current_uid_gid
get_current_comm get_cgroup_classid skb_vlan_push skb_vlan_pop skb_get_tunnel_key
skb_set_tunnel_key perf_event_read redirect get_route_realm perf_event_output
skb_load_bytes get_stackid csum_diff skb_get_tunnel_opt skb_set_tunnel_opt
skb_change_proto skb_change_type skb_under_cgroup get_hash_recalc get_current_task
probe_write_user current_task_under_cgroup skb_change_tail skb_pull_data csum_update
set_hash_invalid get_numa_node_id skb_change_head xdp_adjust_head probe_read_str
get_socket_cookie get_socket_uid set_hash setsockopt skb_adjust_room redirect_map
sk_redirect_map sock_map_update xdp_adjust_meta perf_event_read_value
perf_prog_read_value getsockopt override_return sock_ops_cb_flags_set msg_redirect_map
msg_apply_bytes msg_cork_bytes msg_pull_data bind xdp_adjust_tail skb_get_xfrm_state
get_stack skb_load_bytes_relative fib_lookup sock_hash_update msg_redirect_hash
sk_redirect_hash lwt_push_encap lwt_seg6_store_bytes lwt_seg6_adjust_srh lwt_seg6_action
rc_repeat rc_keydown skb_cgroup_id get_current_cgroup_id get_local_storage
sk_select_reuseport skb_ancestor_cgroup_id sk_lookup_tcp sk_lookup_udp sk_release
map_push_elem map_pop_elem map_peek_elem msg_push_data msg_pop_data rc_pointer_rel
spin_lock spin_unlock sk_fullsock tcp_sock skb_ecn_set_ce get_listener_sock
skc_lookup_tcp tcp_check_syncookie sysctl_get_name sysctl_get_current_value
sysctl_get_new_value sysctl_set_new_value strtol strtoul sk_storage_get
sk_storage_delete send_signal tcp_gen_syncookie skb_output probe_read_user
probe_read_kernel probe_read_user_str probe_read_kernel_str tcp_send_ack
send_signal_thread jiffies64 read_branch_records get_ns_current_pid_tgid xdp_output
get_netns_cookie get_current_ancestor_cgroup_id sk_assign ktime_get_boot_ns seq_printf
seq_write sk_cgroup_id sk_ancestor_cgroup_id ringbuf_output ringbuf_reserve
ringbuf_submit ringbuf_discard ringbuf_query csum_level skc_to_tcp6_sock skc_to_tcp_sock
skc_to_tcp_timewait_sock skc_to_tcp_request_sock skc_to_udp6_sock get_task_stack
load_hdr_opt store_hdr_opt reserve_hdr_opt inode_storage_get inode_storage_delete d_path
copy_from_user snprintf_btf seq_printf_btf skb_cgroup_classid redirect_neigh per_cpu_ptr
this_cpu_ptr redirect_peer task_storage_get task_storage_delete get_current_task_btf
bprm_opts_set ktime_get_coarse_ns ima_inode_hash sock_from_file check_mtu
for_each_map_elem snprintf sys_bpf btf_find_by_name_kind sys_close timer_init
timer_set_callback timer_start timer_cancel get_func_ip get_attach_cookie task_pt_regs
get_branch_snapshot trace_vprintk skc_to_unix_sock kallsyms_lookup_name find_vma loop
strncmp get_func_arg get_func_ret get_func_arg_cnt get_retval set_retval
xdp_get_buff_len xdp_load_bytes xdp_store_bytes copy_from_user_task skb_set_tstamp
ima_file_hash kptr_xchg map_lookup_percpu_elem skc_to_mptcp_sock dynptr_from_mem
ringbuf_reserve_dynptr ringbuf_submit_dynptr ringbuf_discard_dynptr dynptr_read
dynptr_write dynptr_data tcp_raw_gen_syncookie_ipv4 tcp_raw_gen_syncookie_ipv6
tcp_raw_check_syncookie_ipv4 tcp_raw_check_syncookie_ipv6 ktime_get_tai_ns
user_ringbuf_drain cgrp_storage_get cgrp_storage_delete
""".split()
)


def helper_name(helper_id: int) -> str | None:
    """`bpf_map_lookup_elem` for 1; None for ids this table does not know."""
    if 0 < helper_id < len(_HELPER_NAMES):
        return _HELPER_NAMES[helper_id]
    return None


@dataclass(frozen=True, slots=True)
class Instruction:
    """One decoded instruction. For `lddw`, `imm` is the whole signed 64-bit value."""

    index: int  # in 8-byte slots, from the start of the decoded code (its ELF section)
    opcode: int
    dst: int
    src: int
    off: int
    imm: int
    raw: bytes  # 8 bytes, or 16 for lddw

    @property
    def cls(self) -> InsnClass:
        return InsnClass(self.opcode & 0x07)

    @property
    def slots(self) -> int:
        return len(self.raw) // INSN_SIZE

    @property
    def operation(self) -> str:
        """ALU/JMP: the operation (`ADD`, `JEQ`, `CALL`...); loads and stores: the mode (`MEM`...)."""
        if self.cls in (InsnClass.ALU, InsnClass.ALU64):
            return _ALU_OPS.get(self.opcode & 0xF0, ("?", None))[0]
        if self.cls in (InsnClass.JMP, InsnClass.JMP32):
            return _JMP_OPS.get(self.opcode & 0xF0, ("?", None))[0]
        return _MODES.get(self.opcode & 0xE0, "?")

    @property
    def uses_src_register(self) -> bool:
        """ALU/JMP: the X (register) rather than K (immediate) form."""
        return bool(self.opcode & 0x08) and self.cls in (
            InsnClass.ALU,
            InsnClass.ALU64,
            InsnClass.JMP,
            InsnClass.JMP32,
        )

    @property
    def access_size(self) -> int | None:
        """Bytes moved by a load or store; None for ALU and JMP instructions."""
        if self.cls in (InsnClass.LD, InsnClass.LDX, InsnClass.ST, InsnClass.STX):
            return _SIZES[self.opcode & 0x18][2]
        return None

    @property
    def is_lddw(self) -> bool:
        return self.opcode == 0x18

    @property
    def is_atomic(self) -> bool:
        return self.cls == InsnClass.STX and self.opcode & 0xE0 == 0xC0

    @property
    def is_call(self) -> bool:
        return self.opcode == 0x85

    @property
    def is_exit(self) -> bool:
        return self.opcode == 0x95

    @property
    def call_kind(self) -> CallKind | None:
        if not self.is_call:
            return None
        try:
            return CallKind(self.src)
        except ValueError:
            return None

    @property
    def helper_id(self) -> int | None:
        return self.imm if self.call_kind == CallKind.HELPER else None

    @property
    def helper_name(self) -> str | None:
        return helper_name(self.imm) if self.call_kind == CallKind.HELPER else None

    @property
    def pseudo(self) -> PseudoLoad | None:
        """For `lddw`, what libbpf made of the immediate (map fd, map value...)."""
        if not self.is_lddw or self.src == 0:
            return None
        try:
            return PseudoLoad(self.src)
        except ValueError:
            return None

    @property
    def is_jump(self) -> bool:
        """A conditional or unconditional jump (not call or exit)."""
        if self.cls not in (InsnClass.JMP, InsnClass.JMP32):
            return False
        return self.opcode & 0xF0 not in (0x80, 0x90) and self.is_valid

    @property
    def jump_target(self) -> int | None:
        """Index of the instruction a jump or a BPF-to-BPF call goes to."""
        if self.call_kind == CallKind.BPF_TO_BPF:
            return self.index + 1 + self.imm
        if not self.is_jump:
            return None
        if self.opcode == 0x06:  # gotol: the offset is too big for `off`, it lives in imm
            return self.index + 1 + self.imm
        return self.index + 1 + self.off

    @property
    def is_valid(self) -> bool:
        return _format(self) is not None

    @property
    def text(self) -> str:
        """The instruction as llvm-objdump prints it, or `<unknown>`."""
        return _format(self) or "<unknown>"

    def __str__(self) -> str:
        return self.text


def decode(code: bytes, first_index: int = 0) -> list[Instruction]:
    """Decode a whole program or ELF section."""
    return list(iter_decode(code, first_index))


def iter_decode(code: bytes, first_index: int = 0) -> Iterator[Instruction]:
    if len(code) % INSN_SIZE:
        raise ToolchainError(f"eBPF code is {len(code)} bytes, not a multiple of {INSN_SIZE}")
    position = 0
    while position < len(code):
        opcode, regs, off, imm = _UNPACK.unpack_from(code, position)
        length = INSN_SIZE
        if opcode == 0x18:
            length = 2 * INSN_SIZE
            if position + length > len(code):
                raise ToolchainError(
                    f"lddw at instruction {first_index + position // INSN_SIZE} is cut off"
                )
            high = _UNPACK.unpack_from(code, position + INSN_SIZE)[3]
            imm = ((high & 0xFFFFFFFF) << 32) | (imm & 0xFFFFFFFF)
            if imm >= 1 << 63:
                imm -= 1 << 64
        yield Instruction(
            index=first_index + position // INSN_SIZE,
            opcode=opcode,
            dst=regs & 0x0F,
            src=regs >> 4,
            off=off,
            imm=imm,
            raw=bytes(code[position : position + length]),
        )
        position += length


def _memory(base: int, off: int) -> str:
    return f"r{base} + {off}" if off >= 0 else f"r{base} - {-off}"


def _relative(offset: int) -> str:
    return f"+{offset}" if offset >= 0 else str(offset)


def _format(insn: Instruction) -> str | None:
    if insn.dst > 10 or insn.src > 10:
        return None
    formatter = _FORMATTERS[insn.cls]
    return formatter(insn)


def _format_alu(insn: Instruction) -> str | None:
    operation = insn.opcode & 0xF0
    if operation not in _ALU_OPS:
        return None
    register = "w" if insn.cls == InsnClass.ALU else "r"
    dst, src = f"{register}{insn.dst}", f"{register}{insn.src}"
    by_register = bool(insn.opcode & 0x08)
    if operation == 0x80:  # NEG
        return None if by_register else f"{dst} = -{dst}"
    if operation == 0xD0:  # END: byte swap; llvm names the registers r even in ALU32
        if insn.imm not in (16, 32, 64):
            return None
        if insn.cls == InsnClass.ALU:
            swap = "be" if by_register else "le"
        elif by_register:
            return None
        else:
            swap = "bswap"  # cpu v4 unconditional swap
        return f"r{insn.dst} = {swap}{insn.imm} r{insn.dst}"
    if operation == 0xB0:  # MOV
        if not by_register:
            return f"{dst} = {insn.imm}"
        if insn.off == 0:
            return f"{dst} = {src}"
        if insn.off in (8, 16, 32):  # cpu v4 sign-extending move
            return f"{dst} = (s{insn.off}){src}"
        if insn.off == 1 and insn.cls == InsnClass.ALU64:  # arena pointer cast
            return f"{dst} = addr_space_cast({src}, {insn.imm >> 16}, {insn.imm & 0xFFFF})"
        return None
    operator = _ALU_OPS[operation][1]
    if operation in (0x30, 0x90) and insn.off == 1:  # cpu v4 signed division and modulo
        operator = "s" + operator
    right = src if by_register else str(insn.imm)
    return f"{dst} {operator} {right}"


def _format_jmp(insn: Instruction) -> str | None:
    operation = insn.opcode & 0xF0
    if operation not in _JMP_OPS:
        return None
    by_register = bool(insn.opcode & 0x08)
    is_jmp32 = insn.cls == InsnClass.JMP32
    if operation == 0x00:  # JA
        if by_register:
            return None
        return f"gotol {_relative(insn.imm)}" if is_jmp32 else f"goto {_relative(insn.off)}"
    if operation in (0x80, 0x90, 0xE0) and is_jmp32:
        return None
    if operation == 0x80:
        return f"callx r{insn.dst}" if by_register else f"call {insn.imm}"
    if operation == 0x90:
        return None if by_register else "exit"
    if operation == 0xE0:
        return None if by_register or insn.src else f"may_goto {_relative(insn.off)}"
    register = "w" if is_jmp32 else "r"
    right = f"{register}{insn.src}" if by_register else str(insn.imm)
    comparison = _JMP_OPS[operation][1]
    return f"if {register}{insn.dst} {comparison} {right} goto {_relative(insn.off)}"


def _format_ld(insn: Instruction) -> str | None:
    mode, size = insn.opcode & 0xE0, insn.opcode & 0x18
    ctype = _SIZES[size][1]
    if mode == 0x00 and size == 0x18:
        return _format_lddw(insn)
    if mode == 0x20 and size != 0x18:  # legacy packet access, result always in r0
        return f"r0 = *({ctype} *)skb[{insn.imm}]"
    if mode == 0x40 and size != 0x18:
        return f"r0 = *({ctype} *)skb[r{insn.src}]"
    return None


def _format_lddw(insn: Instruction) -> str | None:
    if len(insn.raw) != 2 * INSN_SIZE:
        return None
    low = _UNPACK.unpack_from(insn.raw, 0)[3]
    high = _UNPACK.unpack_from(insn.raw, INSN_SIZE)[3]
    dst = f"r{insn.dst}"
    if insn.src == 0:
        return f"{dst} = {insn.imm} ll"
    # After libbpf: bpftool's notation, as llvm's `ld_pseudo` says nothing useful.
    formats = {
        PseudoLoad.MAP_FD: f"{dst} = map[fd:{low}] ll",
        PseudoLoad.MAP_VALUE: f"{dst} = map[fd:{low}][0]+{high} ll",
        PseudoLoad.BTF_ID: f"{dst} = btf_id[{low}] ll",
        PseudoLoad.FUNC: f"{dst} = func[{_relative(low)}] ll",
        PseudoLoad.MAP_IDX: f"{dst} = map[idx:{low}] ll",
        PseudoLoad.MAP_IDX_VALUE: f"{dst} = map[idx:{low}][0]+{high} ll",
    }
    pseudo = insn.pseudo
    return formats[pseudo] if pseudo is not None else None


def _format_ldx(insn: Instruction) -> str | None:
    mode, size = insn.opcode & 0xE0, insn.opcode & 0x18
    _, ctype, width = _SIZES[size]
    source = _memory(insn.src, insn.off)
    if mode == 0x60:
        return f"r{insn.dst} = *({ctype} *)({source})"
    if mode == 0x80 and size != 0x18:  # cpu v4 sign-extending load
        return f"r{insn.dst} = *(s{width * 8} *)({source})"
    return None


def _format_st(insn: Instruction) -> str | None:
    if insn.opcode & 0xE0 != 0x60:
        return None
    ctype = _SIZES[insn.opcode & 0x18][1]
    return f"*({ctype} *)({_memory(insn.dst, insn.off)}) = {insn.imm}"


def _format_stx(insn: Instruction) -> str | None:
    mode, size = insn.opcode & 0xE0, insn.opcode & 0x18
    ctype = _SIZES[size][1]
    target = _memory(insn.dst, insn.off)
    if mode == 0x60:
        return f"*({ctype} *)({target}) = r{insn.src}"
    if mode != 0xC0:
        return None
    register = "r" if size == 0x18 else "w"
    src = f"{register}{insn.src}"
    if insn.imm == 0x100:
        return f"{register}{insn.dst} = load_acquire(({ctype} *)({_memory(insn.src, insn.off)}))"
    if insn.imm == 0x110:
        return f"store_release(({ctype} *)({target}), {src})"
    if size not in (0x00, 0x18):
        return None
    fetch = bool(insn.imm & _ATOMIC_FETCH)
    operation = insn.imm & ~_ATOMIC_FETCH
    if operation not in _ATOMIC_OPS or insn.imm & ~0xF1:
        return None
    name, operator = _ATOMIC_OPS[operation]
    if operation == 0xE0:
        suffix = "_64" if size == 0x18 else "32_32"
        return f"{src} = xchg{suffix}({target}, {src})" if fetch else None
    if operation == 0xF0:
        suffix = "_64" if size == 0x18 else "32_32"
        zero = f"{register}0"
        return f"{zero} = cmpxchg{suffix}({target}, {zero}, {src})" if fetch else None
    if fetch:
        return f"{src} = atomic_fetch_{name.lower()}(({ctype} *)({target}), {src})"
    return f"lock *({ctype} *)({target}) {operator} {src}"


_FORMATTERS = {
    InsnClass.LD: _format_ld,
    InsnClass.LDX: _format_ldx,
    InsnClass.ST: _format_st,
    InsnClass.STX: _format_stx,
    InsnClass.ALU: _format_alu,
    InsnClass.ALU64: _format_alu,
    InsnClass.JMP: _format_jmp,
    InsnClass.JMP32: _format_jmp,
}
