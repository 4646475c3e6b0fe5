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

from geneve import Interest, Packet, Stats, _layout, build_frame, process
from geneve._transport import _interest_tables

_batch = pytest.importorskip("geneve._batch_cffi", reason="the C batch module is not built")

SOURCE = 0x0A000001  # any value: the test admits it


def fast_forward(
    frame: bytes,
    *,
    ports: set[int] | None = None,
    needles: list[bytes] | None = None,
    interest: Interest | None = None,
    max_inner: int = 8500,
) -> bytes | None:
    """Run one frame through the C fast path; its output, or None when it defers to Python.

    ``ports``: the ports of interest (UDP and TCP alike), none by default; ``needles``: the
    payload strings that make a frame on those ports go to Python (None: any payload does).
    ``interest`` instead of both: the tables the appliance makes of it.
    """
    ffi, lib = _batch.ffi, _batch.lib
    if interest is None:
        wanted = frozenset(ports or ())
        interest = Interest(wanted, wanted, None if needles is None else frozenset(needles))
    buf = bytearray(frame) + bytearray(64)  # room after the frame, like a receive buffer
    view = ffi.from_buffer("uint8_t[]", buf, require_writable=True)
    slots = ffi.new("uint8_t *[]", [view])
    lens = ffi.new("int32_t[]", [len(frame)])
    sources = ffi.new("uint32_t[]", [SOURCE])
    admitted = ffi.new("uint32_t[]", [SOURCE])
    out, todo, fast = ffi.new("int32_t[]", 1), ffi.new("int32_t[]", 1), ffi.new("int32_t *")
    left = lib.geneve_fast_forward(slots, len(buf), lens, sources, 1, admitted, 1,
                                   *_interest_tables(ffi, interest), max_inner, 6081, out, todo,
                                   fast, ffi.NULL, 0.0, ffi.NULL)  # fmt: skip
    assert left + fast[0] == 1
    if fast[0] == 0:
        assert out[0] == 0 and todo[0] == 0
        return None
    assert out[0] == len(frame)
    return bytes(buf[: len(frame)])


def python_forward(frame: bytes, max_inner: int = 8500) -> tuple[bytes | None, Stats]:
    """What the pipeline sends back for a modifier that changes nothing."""
    buf = bytearray(frame)
    stats = Stats()
    packet = process(buf, len(buf), lambda packet: None, stats, max_inner_length=max_inner)
    return (None if packet is None else bytes(packet.data)), stats


def agrees(frame: bytes, **kwargs: Any) -> bool:
    """The fast path's promise for one frame; True when it took the frame."""
    got = fast_forward(frame, **kwargs)
    if got is None:
        return False
    expected, stats = python_forward(frame, kwargs.get("max_inner", 8500))
    assert expected is not None, f"C forwarded what Python refuses: {stats.as_dict()}"
    assert stats.modified == 0 and got == expected
    # The reply is the frame with its outer addresses swapped, nothing else.
    assert got == frame[:12] + frame[16:20] + frame[12:16] + frame[20:]
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


def in_the_usual_layout(frame: bytes) -> bool:
    """Whether a frame has the shape the C path claims (docs/appliance.md), from _layout."""
    if len(frame) < _layout.INNER_OFFSET + 20 or frame[0] != 0x45 or frame[6] & 0x3F:
        return False
    g = _layout.GENEVE_OFFSET
    if frame[g] != _layout.GENEVE_BYTE0 or frame[g + 1] & 0xC0:  # version 0, no O or C bit
        return False
    words = [int.from_bytes(frame[at : at + 4], "big") for at in _layout.GWLB_OPTION_OFFSETS]
    if tuple(words) != _layout.GWLB_OPTION_WORDS:
        return False
    inner, ptype = _layout.INNER_OFFSET, int.from_bytes(frame[g + 2 : g + 4], "big")
    if ptype == 0x0800:  # inner IPv4 without options, not a fragment, UDP or TCP
        frag = int.from_bytes(frame[inner + 6 : inner + 8], "big")
        return frame[inner] == 0x45 and not frag & 0x3FFF and frame[inner + 9] in (6, 17)
    if ptype == 0x86DD and len(frame) >= inner + 40:  # inner IPv6, UDP or TCP right after
        return frame[inner] >> 4 == 6 and frame[inner + 6] in (6, 17)
    return False


@given(
    gwlb_frames(l4s=("udp", "tcp", "icmp"), max_payload=80),
    st.randoms(use_true_random=False),
    st.integers(0, 3),
)
def test_python_forwards_unchanged_in_the_usual_layout_the_fast_path_takes(
    frame: bytearray, rng: random.Random, edits: int
) -> None:
    # The converse of the test above: with nothing of interest, a frame of the usual layout
    # that Python forwards unchanged never waits for Python. Together: exactly those frames.
    data = bytes(mutate(frame, rng, edits) if edits else frame)
    expected, stats = python_forward(data)
    if expected is None or stats.modified or not in_the_usual_layout(data):
        return
    assert fast_forward(data) == expected


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


# -- the C contracts: every size and count is checked, a bad one is an error code ---------------


class Batch:
    """The arguments of a one-frame geneve_fast_forward call, each replaceable by a test."""

    def __init__(self, frame: bytes) -> None:
        ffi = _batch.ffi
        self.buf = bytearray(frame)
        self.view = ffi.from_buffer("uint8_t[]", self.buf, require_writable=True)
        self.args: dict[str, Any] = {
            "slots": ffi.new("uint8_t *[]", [self.view]),
            "slot_size": len(self.buf),
            "lens": ffi.new("int32_t[]", [len(frame)]),
            "sources": ffi.new("uint32_t[]", [SOURCE]),
            "n": 1,
            "admitted": ffi.new("uint32_t[]", [SOURCE]),
            "n_admitted": 1,
            "udp_interest": ffi.new("uint8_t[]", 65536),
            "udp_interest_size": 65536,
            "tcp_interest": ffi.NULL,
            "tcp_interest_size": 0,
            "needles": ffi.new("uint8_t[]", b"abcd"),
            "needles_size": 4,
            "needle_lens": ffi.new("int32_t[]", [1, 3]),
            "n_needles": 2,
            "max_inner": 8500,
            "port": 6081,
            "out": ffi.new("int32_t[]", [-7]),
            "todo": ffi.new("int32_t[]", [-7]),
            "fast": ffi.new("int32_t *", -7),
            "flows": ffi.NULL,
            "now": 0.0,
            "counts": ffi.NULL,
        }

    def call(self, **changes: Any) -> int:
        args = {**self.args, **changes}
        rc: int = _batch.lib.geneve_fast_forward(*args.values())
        return rc


USUAL = bytes(build_frame(make_inner(4, "udp", b"payload", dport=4000)))


def test_sound_arguments_are_accepted() -> None:
    batch = Batch(USUAL)
    assert batch.call() == 0 and batch.args["fast"][0] == 1
    assert batch.buf[12:16] == USUAL[16:20]  # swapped


@pytest.mark.parametrize(
    "change",
    [
        {"max_inner": -1},  # was: an unsigned cast that disabled the size check
        {"max_inner": -(2**31)},
        {"n": -1},
        {"n": 65},  # above GENEVE_BATCH_MAX
        {"n_admitted": -1},
        {"slot_size": len(USUAL) - 1},  # the frame's length runs past its slot
        {"slot_size": -1},
        {"udp_interest_size": 65535},
        {"udp_interest_size": 0},
        {"needles_size": 3},  # the needles' lengths add up to 4
        {"n_needles": -2},
        {"port": -1},
        {"port": 65536},
        {"fast": _batch.ffi.NULL},
    ],
    ids=str,
)
def test_impossible_arguments_are_refused_before_anything_is_touched(
    change: dict[str, Any],
) -> None:
    batch = Batch(USUAL)
    assert batch.call(**change) == _batch.lib.GENEVE_BATCH_BAD_ARGUMENT
    assert batch.buf == USUAL
    assert batch.args["out"][0] == batch.args["todo"][0] == batch.args["fast"][0] == -7


@pytest.mark.parametrize("lens", [[0, 3], [-1, 5], [2, 2, 0]])
def test_empty_or_overrunning_needles_are_refused(lens: list[int]) -> None:
    # An empty needle would match every payload in Python and none in C: neither takes one.
    ffi = _batch.ffi
    batch = Batch(USUAL)
    rc = batch.call(needle_lens=ffi.new("int32_t[]", lens), n_needles=len(lens))
    assert rc == _batch.lib.GENEVE_BATCH_BAD_ARGUMENT
    assert batch.buf == USUAL


def test_recv_and_send_check_slot_sizes_and_counts() -> None:
    ffi, lib = _batch.ffi, _batch.lib
    bad = lib.GENEVE_BATCH_BAD_ARGUMENT
    buf = bytearray(USUAL)
    slots = ffi.new("uint8_t *[]", [ffi.from_buffer("uint8_t[]", buf, require_writable=True)])
    lens, sources = ffi.new("int32_t[]", [len(buf)]), ffi.new("uint32_t[]", 1)
    for slot_size, n, port in ((28, 1, 6081), (100, 0, 6081), (100, 65, 6081), (100, 1, -1)):
        assert lib.geneve_recv_batch(-1, slots, slot_size, n, port, lens, sources) == bad
    # Sound arguments reach the kernel, which refuses the descriptor.
    assert lib.geneve_recv_batch(-1, slots, len(buf), 1, 6081, lens, sources) < 0
    last_errno = ffi.new("int32_t *")
    for slot_size, n in ((len(buf) - 1, 1), (len(buf), -1), (len(buf), 65)):
        assert lib.geneve_send_batch(-1, slots, slot_size, lens, n, last_errno) == bad
    assert last_errno[0] == 0  # nothing was sent
    assert lib.geneve_send_batch(-1, slots, len(buf), lens, 1, last_errno) == 1  # EBADF
    assert buf == USUAL


# -- Interest: what Python says it means, and the tables C reads -------------------------------

small_bytes = st.binary(min_size=1, max_size=3).map(lambda b: bytes(x % 3 for x in b))
port_sets = st.one_of(st.none(), st.frozensets(st.sampled_from([53, 80, 3000, 4000]), max_size=3))
interests = st.builds(
    Interest, port_sets, port_sets, st.one_of(st.none(), st.frozensets(small_bytes, max_size=3))
)


def of_interest(interest: Interest, l4: str, sport: int, dport: int, payload: bytes) -> bool:
    """Interest's docstring, stated in Python for an inner UDP or TCP packet."""
    ports = interest.udp_ports if l4 == "udp" else interest.tcp_ports
    if ports is not None and sport not in ports and dport not in ports:
        return False
    return interest.needles is None or any(n in payload for n in interest.needles)


@given(
    interests,
    st.sampled_from([4, 6]),
    st.sampled_from(["udp", "tcp"]),
    st.sampled_from([53, 80, 3000, 4000, 40000]),
    st.sampled_from([53, 80, 3000, 4000, 40000]),
    st.binary(max_size=12).map(lambda b: bytes(x % 3 for x in b)),
)
def test_interest_and_the_c_tables_agree(
    interest: Interest, version: int, l4: str, sport: int, dport: int, payload: bytes
) -> None:
    frame = bytes(build_frame(make_inner(version, l4, payload, sport=sport, dport=dport)))
    taken = fast_forward(frame, interest=interest)
    assert (taken is None) == of_interest(interest, l4, sport, dport, payload)
    if taken is not None:
        assert agrees(frame, interest=interest)


# -- the fast path's promise over many kinds of frames and damage ------------------------------


def _u16(data: bytearray, at: int, value: int) -> None:
    if at + 2 <= len(data):
        struct.pack_into("!H", data, at, value & 0xFFFF)


def damage(frame: bytearray, rng: random.Random, kind: str) -> bytearray:
    """One kind of damage a frame from the wire may carry, or an edit that keeps it valid."""
    data = bytearray(frame)
    if len(data) < 70:  # cut short already: only more bits to flip
        kind = "bits"
    ip6 = len(data) > 68 and data[68] >> 4 == 6
    l4 = 108 if ip6 else 68 + (data[68] & 0x0F) * 4 if len(data) > 68 else 88
    if kind == "bits":
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del data[rng.randrange(1, len(data)) :]
        if rng.random() < 0.5:  # with outer lengths that agree, so the cut is further in
            _u16(data, 2, len(data))
            _u16(data, 24, len(data) - 20)
    elif kind == "pad":  # bytes after the inner packet, with the outer lengths grown to match
        data += rng.randbytes(rng.randint(1, 8))
        _u16(data, 2, len(data))
        _u16(data, 24, len(data) - 20)
    elif kind == "length":
        at = rng.choice([2, 24, 72 if ip6 else 70, l4 + 4])
        old = struct.unpack_from("!H", data, at)[0] if at + 2 <= len(data) else 0
        _u16(data, at, rng.choice([old + rng.randint(-9, 9), 0, 0xFFFF, rng.randrange(65536)]))
    elif kind == "options":
        at = rng.choice([28, 29, 36, 37, 38, 39, 48, 50, 51, 60, 62, 63])
        data[at] = rng.choice([data[at] ^ 0x80, data[at] ^ 0x40, data[at] ^ 1, rng.randrange(256)])
    elif kind == "protocol":  # Geneve protocol type or the inner IP protocol
        if rng.random() < 0.5:
            _u16(data, 30, rng.choice([0x0800, 0x86DD, 0x6558, 0x0806]))
        elif len(data) > (74 if ip6 else 77):  # a truncation may have cut it off
            data[74 if ip6 else 77] = rng.choice([1, 6, 17, 58, 0, 43, 44, 60])
    elif kind == "tcp-offset" and l4 + 13 <= len(data):
        data[l4 + 12] = rng.randrange(16) << 4
    return data


@given(
    gwlb_frames(l4s=("udp", "tcp", "icmp"), max_payload=60),
    st.lists(
        st.sampled_from(["bits", "truncate", "pad", "length", "options", "protocol", "tcp-offset"]),
        max_size=3,
    ),
    st.randoms(use_true_random=False),
    st.one_of(st.none(), interests),
    st.sampled_from([8500, 0, 40, 60, 100]),
)
def test_the_fast_path_forwards_only_what_python_forwards_unchanged(
    frame: bytearray,
    kinds: list[str],
    rng: random.Random,
    interest: Interest | None,
    max_inner: int,
) -> None:
    data = frame
    for kind in kinds:
        data = damage(data, rng, kind)
    interest = interest or Interest(frozenset(), frozenset())
    if not agrees(bytes(data), interest=interest, max_inner=max_inner):
        return
    # What C took is, for Python too, a UDP or TCP packet outside the interest.
    packet = Packet.parse(bytes(data))
    ports, payload = packet.ports, packet.payload
    assert ports is not None and payload is not None
    l4 = {17: "udp", 6: "tcp"}[packet.l4_protocol]
    assert not of_interest(interest, l4, *ports, bytes(payload))
