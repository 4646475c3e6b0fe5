"""Steering: both directions of an inner flow reach the same worker.

With several workers each one has a UDP socket bound to the Geneve port with ``SO_REUSEPORT``.
Left alone, the kernel picks a socket by hashing the *outer* 4-tuple, and GWLB may use a
different outer source port for each direction of a flow, so the two directions could land on
different workers. A classic BPF program attached to the group with
``SO_ATTACH_REUSEPORT_CBPF`` picks the socket instead, from the *inner* addresses only:

- it sees the UDP payload at offset 0, i.e. the Geneve header (RFC 8926 section 3.4: Opt Len,
  the low 6 bits of byte 0, in 4-byte words; Protocol Type in bytes 2-3);
- inner IPv4 (0x0800): the source and destination at 8 + options + 12 and + 16;
  inner IPv6 (0x86DD): at 8 + options + 8 and + 24, 16 bytes each;
- it folds each address to 32 bits (IPv6: the xor of its four words), orders the two (lower,
  higher: swapping source and destination gives the same pair, so the result is symmetric),
  combines them as ``lower * MIX_LOW ^ higher`` (a plain ``source ^ destination`` would send
  every flow to one worker when both addresses vary together, as in 10.0.0.k <-> 10.1.0.k),
  mixes the 32 bits (fold the halves, multiply by an odd constant, fold again: so that
  addresses differing only in a high octet still spread over a power-of-two worker count),
  and returns the value modulo the worker count: the socket's position in bind order.

Frames with another protocol type, or too short to hold the inner addresses, get an index out
of range (``FALLBACK``), and the kernel falls back to its hash of the outer 4-tuple. Such a
frame belongs to no flow (a short one is malformed; a non-IP inner packet has no flow), so any
worker may take it, and a flood of them is spread rather than piled onto one worker. The
program checks the length before every load: a classic BPF load past the end of the packet
would end the program with 0, silently sending the frame to worker 0.

:func:`run` interprets exactly the instructions :func:`program` uses, with the kernel's
semantics (32-bit arithmetic, a load out of bounds returns 0), so tests can hold the program
to its promises without a kernel.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = ["FALLBACK", "Instruction", "encode", "program", "run"]

# Classic BPF encoding (linux/filter.h, linux/bpf_common.h).
LD, LDX, ST, STX, ALU, JMP, RET, MISC = range(8)
W, H, B = 0x00, 0x08, 0x10  # load size: word, half word, byte
IMM, ABS, IND, MEM, LEN = 0x00, 0x20, 0x40, 0x60, 0x80  # load mode
ADD, MUL, AND, LSH, RSH, MOD, XOR = 0x00, 0x20, 0x50, 0x60, 0x70, 0x90, 0xA0  # ALU operation
JA, JEQ, JGE = 0x00, 0x10, 0x30  # jump
K, X = 0x00, 0x08  # operand: the constant k, or register X
RET_A = 0x10  # BPF_RET | BPF_A: return register A
TAX, TXA = 0x00, 0x80  # BPF_MISC: copy A to X, X to A

ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
GENEVE_BASE = 8  # bytes before the options
FALLBACK = 0xFFFFFFFF  # out of range for any group: the kernel hashes the outer 4-tuple
MIX = 0x9E3779B1  # odd, about 2**32 / golden ratio: spreads low bits upward
MIX_LOW = 0x85EBCA6B  # another odd constant, for the lower address of the pair
M_OPTIONS = 15  # scratch cell holding the options length


class Instruction(NamedTuple):
    """One ``struct sock_filter``: jt and jf are offsets from the next instruction."""

    code: int
    jt: int
    jf: int
    k: int


def _assemble(lines: list[tuple[str, int, str, str, int]]) -> list[Instruction]:
    """Resolve labels: each line is (label, code, jump-if-true, jump-if-false, k)."""
    where = {label: i for i, (label, *_rest) in enumerate(lines) if label}
    out = []
    for i, (_label, code, jt, jf, k) in enumerate(lines):
        rel_t = where[jt] - i - 1 if jt else 0
        rel_f = where[jf] - i - 1 if jf else 0
        if code == JMP | JA:
            k, rel_t = rel_t, 0
        out.append(Instruction(code, rel_t, rel_f, k))
    return out


def _check_length(label: str, end: int) -> list[tuple[str, int, str, str, int]]:
    """Lines from ``label`` on: go to "other" unless ``end`` bytes after the options are there.

    They leave the options length in X, for the indirect loads that follow.
    """
    return [
        (label, LD | MEM, "", "", M_OPTIONS),  # A = options length
        ("", ALU | ADD | K, "", "", end),  # A = bytes needed
        ("", MISC | TAX, "", "", 0),  # X = bytes needed
        ("", LD | W | LEN, "", "", 0),  # A = UDP payload length
        ("", JMP | JGE | X, f"{label}_load", "other", 0),  # long enough?
        (f"{label}_load", LDX | MEM, "", "", M_OPTIONS),  # X = options length
    ]


def program(workers: int) -> list[Instruction]:
    """The steering program for a group of ``workers`` sockets (at least 2)."""
    if not 2 <= workers <= 0xFFFF:
        raise ValueError(f"steering needs 2 to 65535 workers, not {workers}")
    v4_end = GENEVE_BASE + 20  # the IPv4 header up to its destination address
    v6_end = GENEVE_BASE + 40  # the IPv6 header up to its destination address
    lines: list[tuple[str, int, str, str, int]] = [
        ("", LD | W | LEN, "", "", 0),  # A = UDP payload length
        ("", JMP | JGE | K, "base", "other", GENEVE_BASE),  # a whole Geneve base header?
        ("base", LD | B | ABS, "", "", 0),  # A = ver | opt_len
        ("", ALU | AND | K, "", "", 0x3F),  # A = opt_len, in 4-byte words
        ("", ALU | LSH | K, "", "", 2),  # A = options length in bytes
        ("", ST, "", "", M_OPTIONS),  # keep it for the indirect loads
        ("", LD | H | ABS, "", "", 2),  # A = protocol type
        ("", JMP | JEQ | K, "v4", "", ETH_P_IP),
        ("", JMP | JEQ | K, "v6", "other", ETH_P_IPV6),
    ]
    lines += _check_length("v4", v4_end)  # inner IPv4: both addresses inside the packet?
    lines += [
        ("", LD | W | IND, "", "", GENEVE_BASE + 12),  # A = inner source
        ("", ST, "", "", 0),  # M[0] = source
        ("", LD | W | IND, "", "", GENEVE_BASE + 16),  # A = inner destination
        ("", LDX | MEM, "", "", 0),  # X = source
        ("", JMP | JA, "order", "", 0),
    ]
    lines += _check_length("v6", v6_end)  # inner IPv6: the same, each address folded to 32 bits
    # M[i] = word i of source then destination (inner offsets 8 to 39), X untouched.
    for i in range(8):
        lines += [
            ("", LD | W | IND, "", "", GENEVE_BASE + 8 + 4 * i),  # A = address word i
            ("", ST, "", "", i),  # M[i] = A
        ]
    for first in (0, 4):  # the source's words, then the destination's
        lines.append(("", LD | MEM, "", "", first))  # A = its first word
        for i in range(first + 1, first + 4):
            lines += [
                ("", LDX | MEM, "", "", i),  # X = its next word
                ("", ALU | XOR | X, "", "", 0),  # A ^= X
            ]
        if first == 0:
            lines.append(("", ST, "", "", 0))  # M[0] = the folded source
    lines += [
        ("", LDX | MEM, "", "", 0),  # X = the folded source; A = the folded destination
        # Symmetric: order the two addresses (lo, hi), then hash the pair in that order. Unlike
        # source ^ destination, this does not cancel when both addresses vary together.
        ("order", JMP | JGE | X, "ordered", "", 0),  # A >= X: already A = hi, X = lo
        ("", ST, "", "", 0),  # M[0] = A, the smaller
        ("", MISC | TXA, "", "", 0),  # A = the larger
        ("", LDX | MEM, "", "", 0),  # X = the smaller
        ("ordered", ST, "", "", 1),  # M[1] = hi
        ("", MISC | TXA, "", "", 0),  # A = lo
        ("", ALU | MUL | K, "", "", MIX_LOW),  # A = lo * MIX_LOW: lo and hi weigh differently
        ("", LDX | MEM, "", "", 1),  # X = hi
        ("", ALU | XOR | X, "", "", 0),  # h = lo * MIX_LOW ^ hi
        # Mix A's 32 bits so that every bit reaches the low ones the modulo looks at.
        ("", MISC | TAX, "", "", 0),  # X = h
        ("", ALU | RSH | K, "", "", 16),  # A = h >> 16
        ("", ALU | XOR | X, "", "", 0),  # h ^= h >> 16: the high half into the low
        ("", ALU | MUL | K, "", "", MIX),  # h *= MIX (mod 2**32)
        ("", MISC | TAX, "", "", 0),  # X = h
        ("", ALU | RSH | K, "", "", 16),  # A = h >> 16
        ("", ALU | XOR | X, "", "", 0),  # h ^= h >> 16: the well-mixed high bits down
        ("", ALU | MOD | K, "", "", workers),  # A = h % workers
        ("", RET | RET_A, "", "", 0),  # the socket at this position in bind order
        ("other", RET | K, "", "", FALLBACK),  # not IP, or too short: the kernel's hash
    ]
    return _assemble(lines)


def encode(instructions: list[Instruction]) -> bytes:
    """The instructions as an array of ``struct sock_filter`` (u16 code, u8 jt, u8 jf, u32 k)."""
    return b"".join(struct.pack("HBBI", *insn) for insn in instructions)


def run(instructions: list[Instruction], packet: bytes) -> int:
    """What the kernel's classic BPF would return for ``packet`` (the UDP payload).

    Implements only the instructions :func:`program` uses; any other raises ``ValueError``.
    A load past the end of the packet returns 0, as the kernel's does.
    """
    a = x = 0
    mem = [0] * 16
    pc = 0
    size = len(packet)
    while True:
        code, jt, jf, k = instructions[pc]
        pc += 1
        cls = code & 0x07
        if cls in (LD, LDX) and code & 0xE0 == LEN:
            value = size
        elif cls in (LD, LDX) and code & 0xE0 == MEM:
            value = mem[k]
        elif cls == LD and code & 0xE0 in (ABS, IND):
            offset = k + (x if code & 0xE0 == IND else 0)
            width = {W: 4, H: 2, B: 1}[code & 0x18]
            if offset + width > size:
                return 0  # the kernel ends the program with 0
            value = int.from_bytes(packet[offset : offset + width], "big")
        elif cls == ST:
            mem[k] = a
            continue
        elif cls == STX:
            mem[k] = x
            continue
        elif cls == ALU:
            operand = x if code & X else k
            op = code & 0xF0
            if op == ADD:
                a = (a + operand) & 0xFFFFFFFF
            elif op == MUL:
                a = (a * operand) & 0xFFFFFFFF
            elif op == AND:
                a &= operand
            elif op == LSH:
                a = (a << operand) & 0xFFFFFFFF
            elif op == RSH:
                a >>= operand
            elif op == XOR:
                a ^= operand
            elif op == MOD and operand:
                a %= operand
            else:
                raise ValueError(f"unsupported ALU instruction {code:#x}")
            continue
        elif cls == JMP:
            op = code & 0xF0
            operand = x if code & X else k
            if op == JA:
                pc += k
            elif op == JEQ:
                pc += jt if a == operand else jf
            elif op == JGE:
                pc += jt if a >= operand else jf
            else:
                raise ValueError(f"unsupported jump {code:#x}")
            continue
        elif cls == RET:
            return a if code & RET_A else k
        elif cls == MISC:
            if code == MISC | TAX:
                x = a
            elif code == MISC | TXA:
                a = x
            else:
                raise ValueError(f"unsupported instruction {code:#x}")
            continue
        else:
            raise ValueError(f"unsupported instruction {code:#x}")
        if cls == LD:
            a = value
        else:
            x = value
