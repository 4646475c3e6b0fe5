"""The steering program: symmetric in the inner addresses, in range, and the kernel agrees.

The program is run by ``geneve._steering.run``, an interpreter with the kernel's semantics, and
held to an independent statement of the hash; one test attaches it to a real ``SO_REUSEPORT``
group in a namespace and checks that the kernel picks the socket the interpreter predicts.
"""

from __future__ import annotations

import functools
import operator
import random
import select
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.netns import netns_unavailable, pair

from geneve._sockets import steer
from geneve._steering import FALLBACK, LD, MISC, RET, RET_A, TAX, Instruction, program, run

IPV4, IPV6 = 0x0800, 0x86DD


def payload(
    src: bytes, dst: bytes, *, opt_len: int = 8, options: bytes = b"", rest: bytes = b""
) -> bytes:
    """A Geneve header with ``opt_len`` words of options, then an inner IPv4/IPv6 header."""
    options = (options + bytes(4 * opt_len))[: 4 * opt_len]
    if len(src) == 4:
        head = bytes([opt_len, 0]) + struct.pack("!H", IPV4) + bytes(4) + options
        return head + bytes([0x45]) + bytes(11) + src + dst + rest
    head = bytes([opt_len, 0]) + struct.pack("!H", IPV6) + bytes(4) + options
    return head + bytes([0x60]) + bytes(7) + src + dst + rest


def expected(src: bytes, dst: bytes, workers: int) -> int:
    """The hash the program promises, written plainly."""

    def fold(address: bytes) -> int:
        words: tuple[int, ...] = struct.unpack(f"!{len(address) // 4}I", address)
        return functools.reduce(operator.xor, words)

    lo, hi = sorted((fold(src), fold(dst)))
    h = (lo * 0x85EBCA6B) & 0xFFFFFFFF ^ hi
    h ^= h >> 16
    h = (h * 0x9E3779B1) & 0xFFFFFFFF
    h ^= h >> 16
    return h % workers


addresses = st.one_of(
    st.tuples(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4)),
    st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16)),
)


@given(
    addresses,
    st.integers(2, 16),
    st.sampled_from([0, 1, 8, 63]) | st.integers(0, 63),
    st.binary(max_size=252),
    st.binary(max_size=64),
)
def test_symmetric_in_range_and_as_stated(
    pair_of: tuple[bytes, bytes], workers: int, opt_len: int, options: bytes, rest: bytes
) -> None:
    src, dst = pair_of
    prog = program(workers)
    forward = run(prog, payload(src, dst, opt_len=opt_len, options=options, rest=rest))
    backward = run(prog, payload(dst, src, opt_len=opt_len, options=options, rest=rest))
    assert forward == backward == expected(src, dst, workers)
    assert 0 <= forward < workers


@given(addresses, st.integers(2, 8), st.integers(0, 63), st.data())
def test_truncated_frames_fall_back_to_the_kernels_hash(
    pair_of: tuple[bytes, bytes], workers: int, opt_len: int, data: st.DataObject
) -> None:
    whole = payload(*pair_of, opt_len=opt_len)
    cut = data.draw(st.integers(0, len(whole) - 1))
    # Never 0 from a load past the end (which would send every short frame to worker 0).
    assert run(program(workers), whole[:cut]) == FALLBACK
    assert run(program(workers), whole) != FALLBACK


@given(st.integers(0, 0xFFFF).filter(lambda t: t not in (IPV4, IPV6)), st.binary(max_size=300))
def test_other_protocols_fall_back_to_the_kernels_hash(protocol: int, body: bytes) -> None:
    frame = bytes([8, 0]) + struct.pack("!H", protocol) + body
    assert run(program(3), frame) == FALLBACK


def test_the_interpreter_returns_0_for_a_load_past_the_end() -> None:
    # As the kernel does: the reason the program checks the length before it loads.
    prog = [
        Instruction(LD | 0x20, 0, 0, 10),  # ld [10]
        Instruction(MISC | TAX, 0, 0, 0),
        Instruction(RET | RET_A, 0, 0, 0),
    ]
    assert run(prog, bytes(14)) == 0
    assert run(prog, bytes(13)) == 0
    assert run(prog, bytes(10) + b"\x00\x00\x00\x07") == 7
    with pytest.raises(ValueError, match="unsupported"):
        run([Instruction(0x04 | 0x30, 0, 0, 2)], b"")  # div: not one the program uses


@pytest.mark.parametrize("workers", [0, 1, 0x10000])
def test_a_group_needs_two_workers_or_more(workers: int) -> None:
    with pytest.raises(ValueError, match="steering needs"):
        program(workers)


def test_addresses_that_vary_together_still_spread() -> None:
    # 10.0.0.k <-> 10.1.0.k: source ^ destination is the same for every flow.
    prog = program(2)
    counts = [0, 0]
    for k in range(256):
        counts[run(prog, payload(bytes([10, 0, 0, k]), bytes([10, 1, 0, k])))] += 1
    assert min(counts) > 96, counts


def test_balance_over_random_flows() -> None:
    rnd = random.Random(14)
    for workers in range(2, 9):
        prog = program(workers)
        counts = [0] * workers
        for _ in range(2000):
            size = rnd.choice((4, 16))
            src, dst = rnd.randbytes(size), rnd.randbytes(size)
            counts[run(prog, payload(src, dst))] += 1
        assert max(counts) < 1.25 * 2000 / workers, counts


_why = netns_unavailable()


@pytest.mark.netns
@pytest.mark.skipif(_why is not None, reason=_why or "")
@pytest.mark.parametrize("workers", [2, 3])
def test_the_kernel_picks_the_socket_the_interpreter_predicts(workers: int) -> None:
    rnd = random.Random(workers)
    frames = []
    for _ in range(150):
        size = rnd.choice((4, 16))
        frames.append(payload(rnd.randbytes(size), rnd.randbytes(size), opt_len=rnd.randrange(64)))
    frames += [b"", b"\x08\x00", payload(bytes(4), bytes(4))[:40], b"\x00\x00\x12\x34" + bytes(60)]
    with pair() as p:
        group = [p.gw_socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(workers)]
        sender = p.gw_socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for sock in group:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(("127.0.0.1", 6081))
            steer(group)
            prog = program(workers)
            for i, frame in enumerate(frames):
                sender.sendto(frame, ("127.0.0.1", 6081))
                readable, _, _ = select.select(group, [], [], 2.0)
                got = [(group.index(sock), sock.recv(65535)) for sock in readable]
                assert [data for _index, data in got] == [frame], i
                predicted = run(prog, frame)
                if predicted != FALLBACK:
                    assert got[0][0] == predicted, (i, frame.hex())
        finally:
            for sock in (*group, sender):
                sock.close()
