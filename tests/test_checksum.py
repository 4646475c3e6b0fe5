"""geneve.checksum: the C routine, the pure-Python fallback and a naive loop agree everywhere."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.frames import gwlb_frames, naive_checksum, naive_sum, sized_bytes

import geneve
from geneve import MalformedError, TruncatedError, _fixup, _pychecksum, checksum

PURE_PYTHON = geneve.checksum.IMPLEMENTATION == "python"
needs_c = pytest.mark.skipif(
    PURE_PYTHON, reason="C checksum module not in use (GENEVE_PURE_PYTHON=1 or not built)"
)

offsets = st.integers(0, 7)
initials = st.one_of(st.just(0), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF))


def at_offset(data: bytes, offset: int) -> memoryview:
    """``data`` as a slice of a larger buffer starting ``offset`` bytes in (any alignment)."""
    buf = bytearray(random.randbytes(offset)) + data + random.randbytes(8)
    return memoryview(buf)[offset : offset + len(data)]


# -- sums -------------------------------------------------------------------------------------


def test_rfc1071_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert checksum.ones_complement_sum(data) == 0xDDF2
    assert _pychecksum.ones_sum(data) == 0xDDF2
    assert checksum.internet_checksum(data) == 0x220D


@pytest.mark.parametrize(
    ("data", "initial", "expected"),
    [
        (b"", 0, 0),
        (b"", 0x1234, 0x1234),
        (b"\0\0\0", 0, 0),
        (b"\xff\xff", 0, 0xFFFF),
        (b"\xff\xff\xff\xff", 0, 0xFFFF),
        (b"\x01", 0, 0x0100),  # an odd byte is the high half of a zero-padded word
        (b"\x00\x01", 0xFFFF, 0x0001),  # end-around carry
        (b"", 0xFFFFFFFF, 0xFFFF),
        (b"\x12\x34", 0x10000, 0x1235),
    ],
)
def test_sum_edge_cases(data: bytes, initial: int, expected: int) -> None:
    assert naive_sum(data, initial) == expected
    assert _pychecksum.ones_sum(data, initial) == expected
    assert checksum.ones_complement_sum(data, initial) == expected
    assert checksum.internet_checksum(data, initial) == ~expected & 0xFFFF


@given(sized_bytes(9000), offsets, initials)
def test_sum_matches_naive_loop(data: bytes, offset: int, initial: int) -> None:
    view = at_offset(data, offset)
    expected = naive_sum(data, initial)
    assert _pychecksum.ones_sum(view, initial) == expected
    assert checksum.ones_complement_sum(view, initial) == expected
    assert checksum.internet_checksum(view, initial) == naive_checksum(data, initial)


@needs_c
@given(sized_bytes(9000), offsets, initials)
def test_c_sum_matches_python(data: bytes, offset: int, initial: int) -> None:
    from geneve._checksum_cffi import ffi, lib

    view = at_offset(data, offset)
    assert checksum.IMPLEMENTATION == "c"
    got = lib.geneve_sum(ffi.from_buffer(view), len(view), initial)
    assert got == _pychecksum.ones_sum(view, initial)


@pytest.mark.parametrize(
    "data", [bytearray(b"\x01\x02\x03\x04\x05"), memoryview(b"\x01\x02\x03\x04\x05\x06")]
)
def test_sum_accepts_every_buffer_type(data: bytearray | memoryview) -> None:
    for kind in (bytes, bytearray, memoryview):
        assert checksum.ones_complement_sum(kind(data)) == naive_sum(bytes(data))


def test_sum_counts_bytes_of_a_wide_memoryview() -> None:
    # len() of a memoryview counts items, not bytes: the sum must still cover every byte.
    data = bytes(range(1, 9))
    wide = memoryview(bytearray(data)).cast("H")
    assert checksum.ones_complement_sum(wide) == naive_sum(data)
    assert checksum.internet_checksum(wide) == naive_checksum(data)


@pytest.mark.parametrize("initial", [-1, 2**32, 2**64])
def test_initial_outside_a_partial_sum_is_a_value_error(initial: int) -> None:
    for function in (checksum.ones_complement_sum, checksum.internet_checksum):
        with pytest.raises(ValueError):
            function(b"ab", initial)


# -- incremental update (RFC 1624) ------------------------------------------------------------


@given(
    sized_bytes(200).map(lambda b: b + b"\0" if len(b) % 2 else b),
    st.data(),
)
def test_incremental_update_matches_recomputation(data: bytes, draw: st.DataObject) -> None:
    if not data:
        data = b"\0\0"
    words = len(data) // 2
    start = draw.draw(st.integers(0, words - 1)) * 2
    stop = draw.draw(st.integers(start // 2 + 1, words)) * 2
    new = draw.draw(st.binary(min_size=stop - start, max_size=stop - start))
    before = checksum.internet_checksum(data)
    after = data[:start] + new + data[stop:]
    got = checksum.incremental_update(before, data[start:stop], new)
    if any(after):
        assert got == checksum.internet_checksum(after)
    else:
        # All-zero data: 0x0000 and 0xFFFF are the two one's-complement zeros.
        assert got in (0, 0xFFFF)
    # Either way the result verifies: the sum with the checksum is a one's-complement zero.
    assert naive_sum(after + got.to_bytes(2, "big")) in (0, 0xFFFF)


@given(st.integers(1, 255), st.integers(1, 255), st.binary(min_size=20, max_size=20))
def test_incremental_update_ttl_of_an_ipv4_header(ttl: int, new_ttl: int, header: bytes) -> None:
    hdr = bytearray(header)
    hdr[0] = 0x45
    hdr[8] = ttl
    hdr[10:12] = b"\0\0"
    hdr[10:12] = checksum.internet_checksum(hdr).to_bytes(2, "big")
    old_word = bytes(hdr[8:10])
    hdr[8] = new_ttl
    updated = checksum.incremental_update(int.from_bytes(hdr[10:12], "big"), old_word, hdr[8:10])
    hdr[10:12] = b"\0\0"
    assert updated == checksum.internet_checksum(hdr)


@pytest.mark.parametrize(("old", "new"), [(b"\0", b"\0"), (b"\0\0", b"\0"), (b"\0\0", b"")])
def test_incremental_update_rejects_unequal_or_odd(old: bytes, new: bytes) -> None:
    with pytest.raises(ValueError):
        checksum.incremental_update(0x1234, old, new)


# -- fix_frame --------------------------------------------------------------------------------


@contextmanager
def python_fix() -> Iterator[None]:
    """Route geneve.fix_frame through the pure-Python routine (same wrapper)."""
    with (
        mock.patch.object(_fixup, "_fix", _pychecksum.fix),
        mock.patch.object(_fixup, "_fix_target_checked", lambda buf: buf),
    ):
        yield


ROUTES: tuple[Callable[[], AbstractContextManager[None]], ...] = (python_fix, nullcontext)


def offsets_of(frame: bytes | bytearray) -> tuple[int, int, int]:
    """(inner IP offset, L4 offset, L4 protocol) of a frame made by build_frame."""
    ip = 28 + 8 + (frame[28] & 0x3F) * 4
    if frame[ip] >> 4 == 4:
        return ip, ip + (frame[ip] & 0x0F) * 4, frame[ip + 9]
    return ip, ip + 40, frame[ip + 6]


def scramble_checksums(frame: bytearray, rng: random.Random) -> bytearray:
    """The frame with every checksum field replaced by noise (a zero outer UDP one kept)."""
    bad = bytearray(frame)
    ip, l4, proto = offsets_of(frame)
    at = [10]
    if bad[26:28] != b"\0\0":
        at.append(26)
    if bad[ip] >> 4 == 4:
        at.append(ip + 10)
    at.append(l4 + {17: 6, 6: 16, 1: 2, 58: 2}[proto])
    for pos in at:
        bad[pos : pos + 2] = rng.randrange(1, 0x10000).to_bytes(2, "big")
    return bad


def run_fix(buf: bytearray | memoryview, *args: Any, **kwargs: Any) -> object:
    """The outcome of fix_frame: its return value or the type of what it raised."""
    try:
        return geneve.fix_frame(buf, *args, **kwargs)
    except geneve.GeneveError as err:
        return type(err)


@given(gwlb_frames(), st.randoms(use_true_random=False))
def test_fix_frame_restores_every_checksum(frame: bytearray, rng: random.Random) -> None:
    ip, l4, proto = offsets_of(frame)
    for route in ROUTES:
        bad = scramble_checksums(frame, rng)
        with route():
            assert geneve.fix_frame(bad, ip, l4, proto) is True
        assert bad == frame


@given(gwlb_frames(), st.randoms(use_true_random=False), st.sampled_from(["zero", "compute"]))
def test_fix_frame_outer_udp_modes(frame: bytearray, rng: random.Random, mode: Any) -> None:
    ip, l4, proto = offsets_of(frame)
    results = []
    for route in ROUTES:
        bad = scramble_checksums(frame, rng)
        with route():
            geneve.fix_frame(bad, ip, l4, proto, outer_udp=mode)
        results.append(bad)
        if mode == "zero":
            assert bad[26:28] == b"\0\0"
        else:
            assert bad[26:28] != b"\0\0"
            assert naive_sum(bad[20:], naive_sum(bad[12:20]) + 17 + len(bad) - 20) == 0xFFFF
        assert bad[:26] == frame[:26] and bad[28:] == frame[28:]
    assert results[0] == results[1]


def test_fix_frame_keeps_a_zero_outer_udp_checksum() -> None:
    from support.frames import make_inner

    frame = geneve.build_frame(make_inner(4, "udp", b"abc"))
    bad = bytearray(frame)
    bad[10:12] = b"\xde\xad"
    geneve.fix_frame(bad, *offsets_of(frame))
    assert bad == frame and bad[26:28] == b"\0\0"


def test_fix_frame_computed_zero_udp_checksum_is_sent_as_ones() -> None:
    # RFC 768: a computed UDP checksum of 0 goes on the wire as 0xFFFF. Search for a payload
    # whose UDP checksum computes to 0 by adjusting two payload bytes.
    from support.frames import make_inner

    inner = bytearray(make_inner(4, "udp", b"\0\0"))
    frame = geneve.build_frame(bytes(inner))
    ip, l4, proto = offsets_of(frame)
    geneve.fix_frame(frame, ip, l4, proto)
    current = int.from_bytes(frame[l4 + 6 : l4 + 8], "big")
    # Adding `current` to the sum makes it all ones, so the checksum becomes 0 (sent as FFFF).
    frame[l4 + 8 : l4 + 10] = current.to_bytes(2, "big")
    for route in ROUTES:
        copy = bytearray(frame)
        with route():
            geneve.fix_frame(copy, ip, l4, proto)
        assert copy[l4 + 6 : l4 + 8] == b"\xff\xff"


def test_fix_frame_fragment_fixes_only_the_ip_header() -> None:
    from support.frames import make_inner

    frame = geneve.build_frame(make_inner(4, "udp", b"x" * 16, flags=1))  # MF
    ip, l4, proto = offsets_of(frame)
    bad = bytearray(frame)
    bad[ip + 10 : ip + 12] = b"\0\0"
    bad[l4 + 6 : l4 + 8] = b"\x12\x34"
    for route in ROUTES:
        copy = bytearray(bad)
        with route():
            assert geneve.fix_frame(copy, ip, l4, proto) is False
        assert copy[ip + 10 : ip + 12] == frame[ip + 10 : ip + 12]
        assert copy[l4 + 6 : l4 + 8] == b"\x12\x34"


def bad_case(frame: bytearray, what: str) -> tuple[bytearray, int, int, int]:
    f = bytearray(frame)
    ip, l4, proto = offsets_of(f)
    if what == "short":
        return f[:27], ip, l4, proto
    if what == "outer-version":
        f[0] = 0x65
    elif what == "outer-ihl":
        f[0] = 0x44
    elif what == "outer-total":
        f[2:4] = (len(f) + 1).to_bytes(2, "big")
    elif what == "outer-udp-length":
        f[24:26] = (len(f) - 19).to_bytes(2, "big")
    elif what == "outer-udp-short":
        f[24:26] = (7).to_bytes(2, "big")
    elif what == "ip-past-end":
        ip = len(f)
    elif what == "inner-version":
        f[ip] = 0x55
    elif what == "inner-ihl":
        f[ip] = 0x44
    elif what == "inner-total-past-end":
        f[ip + 2 : ip + 4] = (len(f) - ip + 1).to_bytes(2, "big")
    elif what == "inner-total-below-ihl":
        f[ip + 2 : ip + 4] = (19).to_bytes(2, "big")
    elif what == "l4-inside-ip-header":
        l4 = ip + 4
    elif what == "l4-past-end":
        l4 = len(f) + 1
    elif what == "l4-too-short":
        l4 = len(f) - 4
    return f, ip, l4, proto


@pytest.mark.parametrize(
    ("what", "error"),
    [
        ("short", TruncatedError),
        ("outer-version", MalformedError),
        ("outer-ihl", MalformedError),
        ("outer-total", TruncatedError),
        ("outer-udp-length", MalformedError),
        ("outer-udp-short", MalformedError),
        ("ip-past-end", TruncatedError),
        ("inner-version", MalformedError),
        ("inner-ihl", MalformedError),
        ("inner-total-past-end", TruncatedError),
        ("inner-total-below-ihl", MalformedError),
        ("l4-inside-ip-header", MalformedError),
        ("l4-past-end", MalformedError),
        ("l4-too-short", TruncatedError),
    ],
)
def test_fix_frame_rejects_bad_fields_without_writing(what: str, error: type) -> None:
    from support.frames import make_inner

    frame = geneve.build_frame(make_inner(4, "udp", b"payload!"), udp_checksum=True)
    ip_orig, l4_orig, _ = offsets_of(frame)
    for route in ROUTES:
        f, ip, l4, proto = bad_case(frame, what)
        # Stale checksums at every level: an error must leave all of them as they are.
        f[10:12] = f[26:28] = b"\x55\x55"
        if len(f) > l4_orig + 8:
            f[ip_orig + 10 : ip_orig + 12] = f[l4_orig + 6 : l4_orig + 8] = b"\x55\x55"
        before = bytes(f)
        with route(), pytest.raises(error):
            geneve.fix_frame(f, ip, l4, proto)
        assert bytes(f) == before


@pytest.mark.parametrize(
    "kwargs",
    [
        {"length": -1},
        {"length": 10**6},
        {"ip_offset": -1},
        {"ip_offset": 2**64},
        {"l4_offset": 2**63},
        {"l4_offset": -(2**63) - 5},
        {"l4_protocol": 2**40},
        {"l4_protocol": -(2**40)},
    ],
)
def test_fix_frame_argument_extremes_raise_codec_errors(kwargs: dict[str, int]) -> None:
    from support.frames import make_inner

    frame = geneve.build_frame(make_inner(4, "udp", b"payload!"))
    ip, l4, proto = offsets_of(frame)
    args: dict[str, Any] = {"ip_offset": ip, "l4_offset": l4, "l4_protocol": proto}
    args.update(kwargs)
    outcomes = []
    for route in ROUTES:
        f = bytearray(frame)
        with route():
            outcomes.append((run_fix(f, **args), bytes(f)))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] in (True, TruncatedError, MalformedError)


@given(
    st.one_of(
        gwlb_frames(max_payload=100).map(bytes),
        st.binary(max_size=160),
    ),
    st.data(),
)
def test_fix_frame_on_garbage_agrees_and_stays_in_bounds(frame: bytes, data: st.DataObject) -> None:
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    mutated = bytearray(frame)
    for _ in range(data.draw(st.integers(0, 4))):
        if mutated:
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
    n = len(mutated)
    near = st.integers(-2, n + 2)
    ip = data.draw(near)
    l4 = data.draw(st.one_of(near, st.just(-1)))
    proto = data.draw(st.sampled_from([0, 1, 6, 17, 58, 255]))
    length = data.draw(st.one_of(st.none(), near))
    outer = data.draw(st.sampled_from(["keep", "zero", "compute"]))
    guard = random.Random(n).randbytes(16)
    results = []
    for route in ROUTES:
        # The frame is a window of a larger buffer: guard bytes either side must stay intact,
        # and a routine reading them would compute different checksums from the other one.
        buf = bytearray(guard + mutated + guard)
        window = memoryview(buf)[16 : 16 + n]
        with route():
            outcome = run_fix(window, ip, l4, proto, length=length, outer_udp=outer)
        assert outcome in (True, False, TruncatedError, MalformedError)
        assert buf[:16] == guard and buf[16 + n :] == guard
        results.append((outcome, bytes(buf)))
    assert results[0] == results[1]


@needs_c
def test_c_module_is_in_use() -> None:
    assert checksum.IMPLEMENTATION == "c"
    assert checksum.ffi is not None


@pytest.mark.skipif(not PURE_PYTHON, reason="only meaningful under GENEVE_PURE_PYTHON=1")
def test_pure_python_is_in_use() -> None:
    assert checksum.IMPLEMENTATION == "python"
    assert checksum.ones_complement_sum(b"\x12\x34") == 0x1234


def test_fix_frame_on_a_valid_frame_changes_nothing() -> None:
    from support.frames import make_inner

    for version in (4, 6):
        for l4 in ("udp", "tcp", "icmp"):
            frame = geneve.build_frame(make_inner(version, l4, b"abc" * 5), udp_checksum=True)
            copy = bytearray(frame)
            assert geneve.fix_frame(copy, *offsets_of(frame)) is True
            assert copy == frame


def test_unusable_buffers_and_initial_sums_raise_the_same_in_both_implementations() -> None:
    # This file runs once with C and once with GENEVE_PURE_PYTHON=1: the same errors either way,
    # and nothing written before them.
    frame = geneve.build_frame(bytes(20) + bytes(8))
    frame[68] = 0x45
    spread = bytearray(x for b in frame for x in (b, 0))
    before = bytes(spread)
    for buf in (bytes(frame), memoryview(bytes(frame)), memoryview(spread)[::2]):
        with pytest.raises(BufferError):
            geneve.fix_frame(buf, 68, 88, 17)  # type: ignore[arg-type]
    assert bytes(spread) == before
    with pytest.raises(BufferError):
        checksum.internet_checksum(memoryview(bytes(range(10)))[::2])
    for call in (checksum.internet_checksum, checksum.ones_complement_sum):
        with pytest.raises(TypeError):
            call(b"\x01\x02", 1.0)  # type: ignore[arg-type]


@needs_c
@given(gwlb_frames(max_payload=100), st.data())
def test_c_fix_never_passes_the_size_it_is_given(frame: bytearray, data: st.DataObject) -> None:
    # geneve_fix(frame, size, len, ...): a len past size is TRUNCATED, and nothing is written,
    # whatever the length fields say; within the size, it agrees with the fallback.
    ffi, lib = checksum.ffi, checksum.lib
    ip, l4, proto = offsets_of(frame)
    size = data.draw(st.integers(0, len(frame)))
    length = data.draw(st.integers(0, len(frame) + 8))
    buf = bytearray(frame)
    window = memoryview(buf)[:size]
    rc = lib.geneve_fix(ffi.from_buffer("uint8_t[]", window, True), size, length, ip, l4, proto, 0)
    expected = _pychecksum.fix(bytearray(frame[:size]), size, length, ip, l4, proto, 0)
    assert rc == expected
    if length > size:
        assert rc == lib.GENEVE_FIX_TRUNCATED and buf == frame
