"""The appliance's C fast path (geneve_fast_forward) against the Python pipeline, without sockets.

The C path may forward a frame only if the pipeline would forward the same bytes unchanged; it
must take the common frames (inner IPv4 or IPv6 without extension headers, UDP or TCP) so that
the promise is not kept by taking nothing.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from support.frames import gwlb_frames, make_inner

from geneve import Stats, build_frame, process

_batch = pytest.importorskip("geneve._batch_cffi", reason="the C batch module is not built")

SOURCE = 0x0A000001  # any value: the test admits it


def fast_forward(
    frame: bytes, *, ports: set[int] | None = None, needles: list[bytes] | None = None
) -> bytes | None:
    """Run one frame through the C fast path; its output, or None when it defers to Python.

    ``ports``: the ports of interest (UDP and TCP alike), none by default; ``needles``: the
    payload strings that make a frame on those ports go to Python (None: any payload does).
    """
    ffi, lib = _batch.ffi, _batch.lib
    buf = bytearray(frame) + bytearray(64)  # room after the frame, like a receive buffer
    view = ffi.from_buffer("uint8_t[]", buf, require_writable=True)
    slots = ffi.new("uint8_t *[]", [view])
    lens = ffi.new("int32_t[]", [len(frame)])
    sources = ffi.new("uint32_t[]", [SOURCE])
    admitted = ffi.new("uint32_t[]", [SOURCE])
    table = ffi.new("uint8_t[]", 65536)
    for port in ports or ():
        table[port] = 1
    joined = b"".join(needles or []) or b"\0"
    needle_bytes = ffi.new("uint8_t[]", joined)
    needle_lens = ffi.new("int32_t[]", [len(n) for n in needles or []] or [0])
    n_needles = -1 if needles is None else len(needles)
    out, todo, fast = ffi.new("int32_t[]", 1), ffi.new("int32_t[]", 1), ffi.new("int32_t *")
    left = lib.geneve_fast_forward(slots, lens, sources, 1, admitted, 1, table, table,
                                   needle_bytes, needle_lens, n_needles, 8500, 6081, out, todo,
                                   fast)  # fmt: skip
    assert left + fast[0] == 1
    if fast[0] == 0:
        assert out[0] == 0 and todo[0] == 0
        return None
    assert out[0] == len(frame)
    return bytes(buf[: len(frame)])


def python_forward(frame: bytes) -> tuple[bytes | None, Stats]:
    """What the pipeline sends back for a modifier that changes nothing."""
    buf = bytearray(frame)
    stats = Stats()
    packet = process(buf, len(buf), lambda packet: None, stats)
    return (None if packet is None else bytes(packet.data)), stats


def agrees(frame: bytes, **kwargs: Any) -> bool:
    """The fast path's promise for one frame; True when it took the frame."""
    got = fast_forward(frame, **kwargs)
    if got is None:
        return False
    expected, stats = python_forward(frame)
    assert expected is not None, f"C forwarded what Python refuses: {stats.malformed_reasons}"
    assert stats.modified == 0 and got == expected
    return True


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("l4", ["udp", "tcp"])
def test_usual_frames_take_the_fast_path(version: int, l4: str) -> None:
    frame = bytes(build_frame(make_inner(version, l4, b"payload", dport=4000)))
    assert agrees(frame)
    assert fast_forward(frame, ports={4000}) is None  # of interest: Python
    assert fast_forward(frame, ports={4000}, needles=[b"zz"]) is not None  # needle absent
    assert fast_forward(frame, ports={4000}, needles=[b"zz", b"load"]) is None


@pytest.mark.parametrize(
    "inner",
    [
        make_inner(4, "icmp"),
        make_inner(6, "icmp"),
        make_inner(4, "udp", b"x", flags=1),  # a fragment (more fragments)
        bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() / UDP(dport=9)),
    ],
    ids=["icmp", "icmpv6", "ipv4-fragment", "ipv6-extension-header"],
)
def test_other_frames_go_to_python(inner: bytes) -> None:
    assert fast_forward(bytes(build_frame(inner))) is None


def mutate(frame: bytearray, rng: random.Random, edits: int) -> bytearray:
    data = bytearray(frame)
    for _ in range(edits):
        pos = rng.randrange(len(data))
        if rng.random() < 0.8:
            data[pos] ^= 1 << rng.randrange(8)
        else:
            data[pos] = rng.choice((0, 0xFF, rng.randrange(256)))
    if rng.random() < 0.5:  # keep the outer lengths right, so the damage is further in
        struct.pack_into("!H", data, 2, len(data))
        struct.pack_into("!H", data, 24, len(data) - 20)
    return data


@given(
    gwlb_frames(l4s=("udp", "tcp", "icmp"), max_payload=80),
    st.randoms(use_true_random=False),
    st.integers(0, 4),
    st.sampled_from([None, [b"a"], [b"zz", b"\0\0"]]),
)
def test_what_the_fast_path_forwards_python_forwards_unchanged(
    frame: bytearray, rng: random.Random, edits: int, needles: list[bytes] | None
) -> None:
    data = mutate(frame, rng, edits) if edits else frame
    ports = {rng.randrange(65536) for _ in range(3)} | {4000}
    agrees(bytes(data), ports=ports, needles=needles)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("l4", ["udp", "tcp"])
def test_every_header_byte_damaged(version: int, l4: str) -> None:
    # Each byte of the headers (outer, Geneve, inner IP, L4), changed in a few ways: wherever
    # C still takes the frame, Python agrees.
    frame = build_frame(make_inner(version, l4, b"some payload bytes", dport=4000))
    headers = 68 + (20 if version == 4 else 40) + (8 if l4 == "udp" else 20)
    taken = 0
    for pos in range(headers):
        for change in (0x01, 0x80, 0xFF):
            data = bytearray(frame)
            data[pos] ^= change
            taken += agrees(bytes(data))
    assert taken > 0  # damage to addresses, ports, ids and checksums is not the fast path's
