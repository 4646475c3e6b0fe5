"""HOLD (frames kept in their flow until it is decided) and stream starts (the first bytes of a
TCP direction in sequence order), through the pipeline with both flow tables."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.frames import FLOW_TABLES as TABLES
from support.frames import TCP_ACK, TCP_PSH, TCP_SYN, tcp_segment

import geneve
from geneve import Packet, Pipeline, PipelinePacket, StreamStart, Verdict, stream_start
from geneve._pipeline import HOLD_FLOW_BYTES, HOLD_SECONDS

CLIENT, SERVER = "10.0.0.1", "10.0.0.2"


def segment(
    payload: bytes = b"",
    seq: int = 1000,
    flags: int = TCP_PSH | TCP_ACK,
    *,
    reply: bool = False,
    sport: int = 40000,
) -> bytearray:
    """A GWLB frame around one TCP segment between CLIENT:sport and SERVER:443."""
    return tcp_segment(CLIENT, SERVER, payload, seq, flags, reply=reply, sport=sport)


class Holder:
    """Holds the client's segments until its stream start contains b"\\n", then decides."""

    def __init__(self, deny: bytes = b"deny", action: Verdict = Verdict.DROP) -> None:
        self.deny = deny
        self.action = action
        self.seen: list[bytes] = []

    def __call__(self, packet: Packet) -> Verdict | None:
        assert isinstance(packet, PipelinePacket) and packet.flow is not None
        if packet.flow.direction != "original":
            return None
        data = stream_start(packet)
        self.seen.append(data)
        if b"\n" not in data:
            return Verdict.HOLD
        if self.deny in data:
            packet.flow.verdict = self.action
            return self.action
        packet.flow.verdict = Verdict.FORWARD
        return None


def run(pipeline: Pipeline, frames: list[bytearray], now: float = 1.0) -> list[list[bytes]]:
    """What the pipeline sends for each frame (each handled in a copy: replies are made in
    the buffer they came in)."""
    out = []
    for frame in frames:
        buf = bytearray(frame)
        out.append([bytes(f) for f in pipeline.handle(buf, len(buf), now)])
    return out


def swapped(frame: bytearray) -> bytes:
    out = bytearray(frame)
    out[12:16], out[16:20] = frame[16:20], frame[12:16]
    return bytes(out)


@pytest.mark.parametrize("table", TABLES)
def test_held_segments_are_released_in_order_with_the_deciding_one(table: Any) -> None:
    holder = Holder()
    p = Pipeline(holder, flows=table())
    frames = [segment(b"", 999, TCP_SYN), segment(b"GET / HT", 1000), segment(b"TP/1.1\n", 1008)]
    sent = run(p, frames)
    # The SYN carries no byte: held too (nothing decides it), and released first.
    assert sent == [[], [], [swapped(frames[0]), swapped(frames[1]), swapped(frames[2])]]
    assert holder.seen[-1] == b"GET / HTTP/1.1\n"
    stats = p.stats
    assert (stats.held, stats.held_released, stats.held_bytes) == (2, 2, 0)
    assert stats.forwarded == 3 and stats.dropped == 0
    # Decided: the rest of the flow goes by its verdict without the modifier.
    later = segment(b"more", 1015)
    assert run(p, [later]) == [[swapped(later)]]
    assert len(holder.seen) == 3


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("action", [Verdict.DROP, Verdict.REJECT])
def test_a_denied_flow_never_sends_what_it_held(table: Any, action: Verdict) -> None:
    p = Pipeline(Holder(action=action), flows=table())
    sent = run(p, [segment(b"deny this ", 1000), segment(b"line\n", 1010)])
    assert sent[0] == []
    if action is Verdict.DROP:
        assert sent[1] == []
    else:  # only the refusal, a RST to the client
        (refusal,) = sent[1]
        reset = Packet.parse(refusal)
        assert reset.tcp is not None and reset.tcp.flags & 0x04
    assert p.stats.drops["hold"] == 1 and p.stats.held_bytes == 0
    # The flow stays denied: its data never goes (a REJECT verdict refuses each packet).
    for frame in run(p, [segment(b"x", 1015)])[0]:
        tcp = Packet.parse(frame).tcp
        assert action is Verdict.REJECT and tcp is not None and tcp.flags & 0x04


@pytest.mark.parametrize("table", TABLES)
def test_the_other_direction_is_not_held(table: Any) -> None:
    p = Pipeline(Holder(), flows=table())
    client, server = segment(b"abc", 1000), segment(b"hello", 5000, reply=True)
    assert run(p, [client, server]) == [[], [swapped(server)]]


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("policy", ["drop", "forward"])
def test_a_flow_holding_too_much_is_decided_by_the_policy(table: Any, policy: str) -> None:
    p = Pipeline(Holder(), flows=table(), on_hold_limit=policy)  # type: ignore[arg-type]
    chunk = b"x" * 1400
    frames = [segment(chunk, 1000 + i * len(chunk)) for i in range(HOLD_FLOW_BYTES // 1400 + 2)]
    sent = run(p, frames)
    flat = [f for out in sent for f in out]
    if policy == "drop":
        assert flat == [] and p.stats.drops["hold-limit"] >= HOLD_FLOW_BYTES // 1500
        assert p.flows is not None
        (flow,) = list(p.flows)
        assert flow.verdict is Verdict.DROP
    else:  # fail open: everything, in order, and the flow goes on
        assert flat == [swapped(f) for f in frames]
        assert p.flows is not None
        (flow,) = list(p.flows)
        assert flow.verdict is Verdict.FORWARD
    assert p.stats.held_bytes == 0


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("policy", ["drop", "forward"])
def test_a_hold_past_its_time_is_decided_at_the_tick(table: Any, policy: str) -> None:
    p = Pipeline(Holder(), flows=table(), on_hold_limit=policy)  # type: ignore[arg-type]
    frame = segment(b"no newline yet", 1000)
    assert run(p, [frame], now=10.0) == [[]]
    assert p.tick(10.0 + HOLD_SECONDS / 2) == ()
    released = [bytes(f) for f in p.tick(10.0 + HOLD_SECONDS)]
    if policy == "drop":
        assert released == [] and p.stats.drops["hold-limit"] == 1
    else:
        assert released == [swapped(frame)] and p.stats.held_released == 1


@pytest.mark.parametrize("table", TABLES)
def test_a_flow_that_ends_drops_what_it_held(table: Any) -> None:
    p = Pipeline(Holder(), flows=table(tcp_timeout=2.0))
    run(p, [segment(b"partial", 1000)], now=1.0)
    p.tick(3.5)  # idle past its 2 s
    assert p.stats.drops["hold"] == 1 and p.stats.held_bytes == 0
    assert p._streams.used == 0  # its stream start went with it


def test_hold_without_flows_is_a_drop() -> None:
    p = Pipeline(lambda packet: Verdict.HOLD)
    frame = segment(b"x")
    assert run(p, [frame]) == [[]]
    assert p.stats.drops == {"hold-limit": 1}


# -- stream starts ----------------------------------------------------------------------------


def test_out_of_order_overlaps_and_retransmissions() -> None:
    s = StreamStart(limit=100)
    s.add(999, True, b"")  # SYN: the start is 1000
    s.add(1005, False, b"56789")  # after a gap: waits
    assert bytes(s.data) == b""
    s.add(1000, False, b"01234")
    assert bytes(s.data) == b"0123456789"
    s.add(1003, False, b"XXXXXXXXab")  # overlaps: the first bytes win, the new tail is kept
    assert bytes(s.data) == b"0123456789Xab"
    s.add(990, False, b"y" * 10 + b"----------..CD")  # from before the start: its part after
    assert bytes(s.data) == b"0123456789XabD"  # it counts, what is there already wins


def test_a_start_without_syn_is_its_first_segment_and_wraps_around() -> None:
    s = StreamStart(limit=100)
    s.add(2**32 - 3, False, b"abc")
    s.add(0, False, b"def")  # the sequence space wrapped
    assert bytes(s.data) == b"abcdef"


def reader(limit: int = geneve.STREAM_LIMIT) -> Any:
    """A modifier that only reads each packet's stream start."""

    def modifier(packet: Packet) -> None:
        stream_start(packet, limit=limit)

    return modifier


def test_the_cap_per_direction_keeps_the_first_bytes_and_counts() -> None:
    p = Pipeline(reader(8), flows=True)
    for i in range(3):
        frame = segment(b"abcd", 1000 + 4 * i)
        p.handle(frame, len(frame), 1.0)
    assert p.stats.stream_flow_limits == 1
    assert p.flows is not None
    (flow,) = list(p.flows)
    assert bytes(flow.state["geneve.stream"]["original"].data) == b"abcdabcd"


def test_the_pipeline_budget_bounds_every_flow_together() -> None:
    p = Pipeline(reader(), flows=True)
    p._streams.total = 10
    for sport in (1, 2, 3):
        frame = segment(b"abcdef", sport=sport)
        p.handle(frame, len(frame), 1.0)
    assert p._streams.used == 6  # the first flow's; the others found no room
    assert p.stats.stream_total_limits == 2


def test_stream_start_needs_a_tcp_flow() -> None:
    packet = Packet.parse(bytes(segment(b"x")))
    with pytest.raises(ValueError, match="TCP packet of a flow"):
        stream_start(packet)


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=300),
    cuts=st.lists(st.integers(0, 300), max_size=12),
    seed=st.integers(0, 2**32 - 1),
    isn=st.integers(0, 2**32 - 1),
    limit=st.integers(1, 400),
)
def test_any_segmentation_in_any_order_gives_the_stream_prefix(
    data: bytes, cuts: list[int], seed: int, isn: int, limit: int
) -> None:
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    pieces = [(bounds[i], data[bounds[i] : bounds[i + 1]]) for i in range(len(bounds) - 1)]
    rng = random.Random(seed)
    order = pieces + rng.sample(pieces, k=min(len(pieces), 3))  # with retransmissions
    rng.shuffle(order)
    s = StreamStart(limit=limit)
    s.add(isn, True, b"")
    for offset, piece in order:
        s.add((isn + 1 + offset) % 2**32, False, piece)
        assert data.startswith(bytes(s.data))  # only ever a prefix of the stream
    assert bytes(s.data) == data[:limit]
    assert s.full == (len(data) >= limit)
