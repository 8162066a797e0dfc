"""eBPF instructions, decoded as far as inspection needs: fields, jumps, calls, exits.

An instruction is 8 bytes, little-endian: opcode, dst and src registers (4 bits
each), a signed 16-bit offset and a signed 32-bit immediate. `lddw` (a 64-bit
immediate) takes two slots, the second carrying the high 32 bits. Indexes
count 8-byte slots, as the kernel, ELF relocations and llvm-objdump do. For
the text of the code, `llvm-objdump -d` prints it.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from ..errors import ToolchainError

INSN_SIZE = 8
_FIELDS = struct.Struct("<BBhi")
_MAX_REGISTER = 10

# Opcode classes (the low 3 bits) and the parts of an opcode above them.
_LD, _LDX, _ST, _STX, _ALU, _JMP, _JMP32, _ALU64 = range(8)
_K, _X = 0x00, 0x08  # operand: the immediate, or the src register
_W, _H, _B, _DW = 0x00, 0x08, 0x10, 0x18  # access sizes
_ABS, _IND, _MEM, _MEMSX, _ATOMIC = 0x20, 0x40, 0x60, 0x80, 0xC0
_LDDW, _JA, _GOTOL, _CALL, _EXIT = 0x18, 0x05, 0x06, 0x85, 0x95
_ALU_OPS = (0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x90, 0xA0, 0xB0, 0xC0)
_NEG, _END = 0x80, 0xD0
_CONDITIONS = (0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0xA0, 0xB0, 0xC0, 0xD0)

# Every opcode of the instruction set (kernel Documentation/bpf/standardization).
_KNOWN_OPCODES = frozenset(
    [cls | op | src for cls in (_ALU, _ALU64) for op in _ALU_OPS for src in (_K, _X)]
    + [_ALU | _NEG, _ALU64 | _NEG, _ALU | _END | _K, _ALU | _END | _X, _ALU64 | _END | _K]
    + [cls | op | src for cls in (_JMP, _JMP32) for op in _CONDITIONS for src in (_K, _X)]
    + [_JA, _GOTOL, _CALL, _CALL | _X, _EXIT]
    + [_LDDW]
    + [_LD | mode | size for mode in (_ABS, _IND) for size in (_W, _H, _B)]
    + [_LDX | _MEM | size for size in (_W, _H, _B, _DW)]
    + [_LDX | _MEMSX | size for size in (_W, _H, _B)]
    + [cls | _MEM | size for cls in (_ST, _STX) for size in (_W, _H, _B, _DW)]
    + [_STX | _ATOMIC | _W, _STX | _ATOMIC | _DW]
)


class CallKind(enum.IntEnum):
    """What the src register of a `call` says its immediate is."""

    HELPER = 0  # a helper id
    BPF_TO_BPF = 1  # BPF_PSEUDO_CALL: the callee's offset in slots, minus one
    # BPF_PSEUDO_KFUNC_CALL: the kfunc's BTF id. Set by libbpf at load: clang
    # emits a kfunc call as a BPF-to-BPF call with a relocation against the extern.
    KFUNC = 2


@dataclass(frozen=True, slots=True)
class Instruction:
    """One instruction; for `lddw`, `imm` is the whole signed 64-bit value."""

    index: int  # slot, from the start of its ELF section
    opcode: int
    dst: int
    src: int
    off: int
    imm: int

    @property
    def slots(self) -> int:
        return 2 if self.is_lddw else 1

    @property
    def is_known(self) -> bool:
        """An opcode of the instruction set, on registers that exist."""
        return (
            self.opcode in _KNOWN_OPCODES
            and self.dst <= _MAX_REGISTER
            and self.src <= _MAX_REGISTER
        )

    @property
    def is_lddw(self) -> bool:
        return self.opcode == _LDDW

    @property
    def is_call(self) -> bool:
        return self.opcode == _CALL

    @property
    def is_exit(self) -> bool:
        return self.opcode == _EXIT

    @property
    def call_kind(self) -> CallKind | None:
        if not self.is_call:
            return None
        try:
            return CallKind(self.src)
        except ValueError:
            return None

    @property
    def is_jump(self) -> bool:
        """A conditional or unconditional jump (not a call, not an exit)."""
        if self.opcode & 0x07 not in (_JMP, _JMP32) or not self.is_known:
            return False
        return self.opcode not in (_CALL, _CALL | _X, _EXIT)

    @property
    def jump_target(self) -> int | None:
        """The slot a jump, or a BPF-to-BPF call, goes to."""
        if self.call_kind == CallKind.BPF_TO_BPF or self.opcode == _GOTOL:
            return self.index + 1 + self.imm  # too far for `off`: the distance is in imm
        if self.is_jump:
            return self.index + 1 + self.off
        return None

    def __str__(self) -> str:
        return (
            f"{self.index}: opcode {self.opcode:#04x} dst r{self.dst} src r{self.src} "
            f"off {self.off} imm {self.imm}"
        )


def decode(code: bytes, first_index: int = 0) -> list[Instruction]:
    """The instructions of a function or a whole ELF section, numbered from `first_index`."""
    if len(code) % INSN_SIZE:
        raise ToolchainError(f"eBPF code is {len(code)} bytes, not a multiple of {INSN_SIZE}")
    found = []
    position = 0
    while position < len(code):
        opcode, registers, off, imm = _FIELDS.unpack_from(code, position)
        index = first_index + position // INSN_SIZE
        position += INSN_SIZE
        if opcode == _LDDW:
            if position == len(code):
                raise ToolchainError(f"the lddw at instruction {index} is cut off")
            high = _FIELDS.unpack_from(code, position)[3]
            imm = ((high & 0xFFFFFFFF) << 32) | (imm & 0xFFFFFFFF)
            imm -= (imm >> 63) << 64  # to signed
            position += INSN_SIZE
        found.append(Instruction(index, opcode, registers & 0x0F, registers >> 4, off, imm))
    return found
