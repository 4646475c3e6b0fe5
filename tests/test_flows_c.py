"""The C flow table where Python's reference cannot follow alone: the fast path counting into
it and deciding by flow verdicts, against the pure-Python pipeline and table; its C contracts.

(tests/test_flows.py holds both tables to the reference model through the Python pipeline.)
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from support.fastpath import through_fast_path
from support.frames import TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, flow_frame

from geneve import Packet, Pipeline, PipelinePacket, Verdict, declare_interest

_flows_c = pytest.importorskip("geneve._flows_cffi", reason="the C flow table is not built")
pytest.importorskip("geneve._batch_cffi", reason="the C batch module is not built")

from geneve._flows import CFlowTable, PyFlowTable  # noqa: E402
from geneve._transport import FastPath, Slots  # noqa: E402

SOURCE = 0x0A000001
PORT = 6081
HOSTS = {4: ["10.0.0.1", "10.0.0.2"], 6: ["2001:db8::1", "2001:db8::2"]}
TIMEOUTS = {"tcp_timeout": 30.0, "other_timeout": 12.0}


class Decider:
    """A modifier that wants port 80 only and decides flows by their payload."""

    def __init__(self) -> None:
        self.calls = 0
        self.ended: list[tuple[bytes, str, tuple[int, int]]] = []

    def __call__(self, packet: Packet) -> Verdict | None:
        assert isinstance(packet, PipelinePacket) and packet.flow is not None
        self.calls += 1
        if 80 not in packet.flow.ports:  # outside its interest: as promised, nothing
            return None
        payload = bytes(packet.buf[packet.payload_offset : packet.ip_end])
        if b"fwd" in payload:
            packet.flow.verdict = Verdict.FORWARD
        elif b"drop" in payload:
            packet.flow.verdict = Verdict.DROP
            return Verdict.DROP
        return None

    def on_flow_end(self, flow: Any, reason: str) -> None:
        self.ended.append((flow.key, reason, flow.packets))


def make_pipeline(table: Any, max_flows: int) -> tuple[Pipeline, Decider]:
    decider = Decider()
    modifier = declare_interest(decider, udp_ports=[80], tcp_ports=[80])
    # declare_interest returns the same object: the hooks are still found on it.
    return Pipeline(modifier, flows=table(max_flows=max_flows, **TIMEOUTS)), decider


class CPath:
    """The appliance's path without sockets: a batch through the fast path, the rest through
    the pipeline, one batch per call."""

    def __init__(self, max_flows: int) -> None:
        self.pipeline, self.decider = make_pipeline(CFlowTable, max_flows)
        table = self.pipeline.flows
        assert isinstance(table, CFlowTable)
        self.slots = Slots(8, c=True)
        self.fast = FastPath(self.slots, self.pipeline.interest, 8500, PORT, table)
        self.fast.trust(SOURCE)

    def batch(self, frames: list[bytes], now: float) -> list[bytes | None]:
        s = self.slots
        for i, frame in enumerate(frames):
            s.bufs[i][: len(frame)] = frame
            s.lens[i] = len(frame)
            s.sources[i] = SOURCE
        done, todo = self.fast.forward(len(frames), now)
        c = self.fast.counts
        self.pipeline.count_fast_path(done, c[0], c[1], c[2], bool(c[3]))
        if currently_in_test_context():
            if c[0] or c[1]:
                event("decided by a flow verdict in C")
            if done > c[0]:
                event("forwarded in C outside the interest")
        sent: list[bytes | None] = [
            bytes(s.bufs[i][: s.out[i]]) if s.out[i] else None for i in range(len(frames))
        ]
        for i in todo:
            out = self.pipeline.handle(s.bufs[i], s.lens[i], now)
            sent[i] = bytes(out[0]) if out else None
        return sent


@st.composite
def frames(draw: st.DrawFn) -> tuple[bytes, float]:
    version = draw(st.sampled_from((4, 6)))
    a, b = draw(st.permutations(HOSTS[version]))
    proto = draw(st.sampled_from(("tcp", "udp")))
    client, server = draw(st.sampled_from((1000, 1001))), draw(st.sampled_from((80, 81)))
    reply = draw(st.booleans())
    frame = flow_frame(
        b if reply else a,
        a if reply else b,
        proto,
        server if reply else client,
        client if reply else server,
        flags=draw(
            st.sampled_from(
                (TCP_SYN, TCP_SYN | TCP_ACK, TCP_ACK, TCP_PSH | TCP_ACK, TCP_FIN | TCP_ACK, TCP_RST)
            )
        ),
        payload=draw(st.sampled_from((b"", b"data", b"fwd", b"drop"))),
        cookie=draw(st.sampled_from((1, 2))),
        endpoint_id=draw(st.sampled_from((5, 6))),
    )
    return bytes(frame), draw(st.sampled_from((0.0, 0.0, 0.5, 4.0, 15.0)))


def flow_state(flows: Any) -> list[tuple[Any, ...]]:
    return sorted(
        (f.key, f.packets, f.bytes, f.cookies, f.tcp_state, f.first_seen, f.last_seen, f.verdict)
        for f in flows
    )


@pytest.mark.parametrize("max_flows", [3, 1000])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=st.lists(frames(), max_size=40))
def test_the_fast_path_and_the_c_table_do_what_python_does(
    max_flows: int, sequence: list[tuple[bytes, float]]
) -> None:
    """One frame a batch: the same replies, flows, counters and ends as the Python pipeline."""
    reference, ref_decider = make_pipeline(PyFlowTable, max_flows)
    path = CPath(max_flows)
    now = 0.0
    for frame, dt in sequence:
        now += dt
        buf = bytearray(frame)
        expected = reference.handle(buf, len(buf), now)
        (got,) = path.batch([frame], now)
        assert got == (bytes(expected[0]) if expected else None)
        reference.tick(now)
        path.pipeline.tick(now)
    assert flow_state(path.pipeline.flows) == flow_state(reference.flows)
    # The C path decides some frames the Python pipeline gives its modifier (those outside
    # the interest), so the modifier's calls and the per-frame counters differ only there.
    assert path.decider.calls <= ref_decider.calls
    mine, theirs = path.pipeline.stats, reference.stats
    for name in ("received", "forwarded", "dropped", "flows_created", "flows_active"):
        assert getattr(mine, name) == getattr(theirs, name), name
    assert mine.flows_ended == theirs.flows_ended
    assert sorted(path.decider.ended) == sorted(ref_decider.ended)
    now += 1000.0
    reference.stop(now)
    path.pipeline.stop(now)
    assert sorted(path.decider.ended) == sorted(ref_decider.ended)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=st.lists(frames(), max_size=40), size=st.integers(1, 8))
def test_batches_count_every_packet_once(sequence: list[tuple[bytes, float]], size: int) -> None:
    """In batches the C path runs before Python sees the batch's other frames, so a verdict
    set in a batch may apply from the next one; every packet is still counted once.

    (Without DROP verdicts: a packet a tombstone drops belongs to no flow.)"""
    sequence = [(frame, dt) for frame, dt in sequence if b"drop" not in frame]
    if not sequence:
        return
    path = CPath(1000)
    now = 0.0
    for start in range(0, len(sequence), size):
        part = sequence[start : start + size]
        now += part[0][1]
        path.batch([frame for frame, _dt in part], now)
    stats = path.pipeline.stats
    assert stats.received == len(sequence)
    assert stats.forwarded + stats.dropped == stats.received
    counted = sum(sum(f.packets) for f in path.pipeline.flows or ())
    ended = sum(sum(packets) for _key, _reason, packets in path.decider.ended)
    assert counted + ended == len(sequence) - stats.drops.get("flow-table-full", 0)


def test_a_flow_verdict_is_kept_in_c_both_ways() -> None:
    path = CPath(100)
    first = bytes(flow_frame("10.0.0.1", "10.0.0.2", "tcp", 1000, 80, payload=b"fwd"))
    later = bytes(flow_frame("10.0.0.1", "10.0.0.2", "tcp", 1000, 80, payload=b"drop"))
    back = bytes(flow_frame("10.0.0.2", "10.0.0.1", "tcp", 80, 1000, payload=b"drop"))
    assert path.batch([first], 1.0) != [None]
    assert path.decider.calls == 1
    assert path.batch([later, back, later], 2.0) == [_swapped(f) for f in (later, back, later)]
    assert path.decider.calls == 1  # decided in C
    stats = path.pipeline.stats
    assert stats.flow_verdict_packets == 3
    (flow,) = list(path.pipeline.flows or [])
    assert flow.packets == (3, 1) and flow.last_seen == 2.0 and flow.verdict is Verdict.FORWARD

    dropper = bytes(flow_frame("10.0.0.3", "10.0.0.2", "udp", 1000, 80, payload=b"drop"))
    other = bytes(flow_frame("10.0.0.2", "10.0.0.3", "udp", 80, 1000, payload=b"fwd"))
    assert path.batch([dropper], 3.0) == [None]
    assert path.batch([other, other], 3.5) == [None, None]
    assert path.decider.calls == 2
    assert stats.drops["flow"] == 2 and stats.flow_verdict_packets == 5


def _swapped(frame: bytes) -> bytes:
    return frame[:12] + frame[16:20] + frame[12:16] + frame[20:]


def test_frames_outside_the_interest_make_and_count_flows_in_c() -> None:
    path = CPath(2)
    frames_ = [
        bytes(flow_frame("10.0.0.1", "10.0.0.2", "udp", 1000 + i, 53, payload=b"q"))
        for i in range(3)
    ]
    assert path.batch(frames_, 5.0) == [_swapped(f) for f in frames_]
    assert path.decider.calls == 0
    stats = path.pipeline.stats
    # Two flows fit; the third evicted the oldest that never had a reply, and its end ran.
    assert stats.flows_created == 3 and stats.flows_active == 2
    assert stats.flows_early_dropped == 1 and stats.flows_ended == {"evicted": 1}
    assert [reason for _key, reason, _packets in path.decider.ended] == ["evicted"]
    path.pipeline.tick(5.0 + 12.0)
    assert stats.flows_active == 0 and stats.flows_ended == {"evicted": 1, "idle": 2}


def test_get_and_iteration_give_the_same_views() -> None:
    pipeline, _decider = make_pipeline(CFlowTable, 10)
    frame = flow_frame("2001:db8::1", "2001:db8::2", "tcp", 1000, 80, flags=TCP_SYN)
    pipeline.handle(frame, len(frame), 1.0)
    table = pipeline.flows
    assert table is not None
    (flow,) = table
    assert table.get(flow.key) is flow
    assert table.get(b"\0" * 45) is None and table.get(b"short") is None
    assert len(flow.key) == 45 and flow.tcp_state == "syn_sent" and flow.src == "2001:db8::1"
    with pytest.raises(TypeError, match="Verdict or None"):
        flow.verdict = "drop"  # type: ignore[assignment]


def test_an_ended_flow_keeps_its_values_after_its_entry_is_reused() -> None:
    pipeline, decider = make_pipeline(CFlowTable, 1)
    kept = []
    for i in range(3):
        frame = flow_frame("10.0.0.1", "10.0.0.2", "udp", 2000 + i, 80)
        pipeline.handle(frame, len(frame), float(i))
        assert pipeline.flows is not None
        kept.append(next(iter(pipeline.flows)))
    assert [f.ports for f in kept] == [(2000, 80), (2001, 80), (2002, 80)]
    assert [f.first_seen for f in kept] == [0.0, 1.0, 2.0]
    assert [reason for _k, reason, _p in decider.ended] == ["evicted", "evicted"]


# -- the C contracts --------------------------------------------------------------------------


def test_impossible_arguments_are_refused() -> None:
    ffi, lib = _flows_c.ffi, _flows_c.lib
    bad = lib.GENEVE_FLOW_BAD_ARGUMENT
    assert lib.geneve_flow_table_new(0, 1.0, 1.0) == ffi.NULL
    assert lib.geneve_flow_table_new(1 << 25, 1.0, 1.0) == ffi.NULL
    assert lib.geneve_flow_table_new(10, 0.0, 1.0) == ffi.NULL
    t = ffi.gc(lib.geneve_flow_table_new(10, 1.0, 1.0), lib.geneve_flow_table_free)
    frame = bytes(flow_frame("10.0.0.1", "10.0.0.2", "udp", 1, 2))
    p = Packet.parse(frame)
    buf = ffi.from_buffer(frame)
    sound = [p.ip_version, p.ip_offset, p.l4_offset, p.ip_end, p.l4_protocol, -1, 0, -1, 1.0]
    assert lib.geneve_flow_track(t, buf, len(frame), *sound) >= 0
    for index, value in [
        (0, 5),  # IP version
        (1, -1),  # ip_off
        (3, len(frame) + 1),  # ip_end past the buffer
        (3, p.ip_offset + 10),  # shorter than an IPv4 header
        (2, p.ip_end + 1),  # l4 past the packet
        (4, 256),  # protocol
        (5, len(frame) - 31),  # GWLB options past the buffer
        (7, 1 << 32),  # cookie
        (8, float("nan")),
    ]:
        args = list(sound)
        args[index] = value
        assert lib.geneve_flow_track(t, buf, len(frame), *args) == bad, (index, value)
    assert lib.geneve_flow_track(t, buf, p.ip_end - 1, *sound) == bad  # the buffer is shorter
    options = list(sound)
    options[5] = p.udp_offset + 16
    assert lib.geneve_flow_track(t, buf, len(frame), *options) >= 0
    options[5] += 1  # not GWLB's options there: Python must read them
    assert lib.geneve_flow_track(t, buf, len(frame), *options) == lib.GENEVE_FLOW_NEED_IDS
    assert lib.geneve_flow_release(t, 0) == bad  # live, not ended
    assert lib.geneve_flow_release(t, 1000) == bad
    assert lib.geneve_flow_entry(t, 1000) == ffi.NULL and lib.geneve_flow_entry(t, -1) == ffi.NULL
    assert lib.geneve_flow_sweep(t, 1.0, 0) == bad
    assert lib.geneve_flow_end_all(t, 9, 10) == bad
    assert lib.geneve_flow_next(t, -1) == bad
    assert lib.geneve_flow_count(t, 99) == bad
    assert lib.geneve_flow_lookup(t, ffi.new("uint8_t[]", 48), 48) == bad
    assert lib.geneve_flow_pop_ended(ffi.NULL) == bad


def test_memory_follows_the_flows_seen() -> None:
    table = CFlowTable(max_flows=100_000)
    empty = table.memory
    pipeline = Pipeline(lambda packet: None, flows=table)
    for i in range(1000):
        frame = flow_frame("10.0.0.1", "10.0.0.2", "udp", 1000 + i, 80)
        pipeline.handle(frame, len(frame), 1.0)
    assert len(table) == 1000
    grown = table.memory - empty
    assert 1000 * 180 <= grown <= 1000 * 190  # one entry a flow: 184 bytes


def test_a_view_keeps_its_table_alive() -> None:
    # flow_key() makes a table of its own and returns a view of a flow in it: the table must
    # outlive the call (it was freed under the view, which then read freed memory).
    import gc

    from geneve._flows import flow_key

    frame = flow_frame("10.0.0.2", "10.0.0.1", "udp", 7, 9)
    packet = Packet.parse(bytes(frame))
    keys = set()
    for _ in range(50):
        view = CFlowTable(max_flows=10).track(packet, 1.0)
        gc.collect()
        for _ in range(20):  # reuse the freed memory, if it were freed
            CFlowTable(max_flows=10)
        assert not isinstance(view, str)
        keys.add((view.key, view.ports, view.first_seen))
        keys.add((flow_key(packet)[0], (7, 9), 1.0))
    assert len(keys) == 1


# -- found by review, each failed before its fix ------------------------------------------------


def udp_packet(src: str, dst: str, sport: int, dport: int) -> Packet:
    return Packet.parse(bytes(flow_frame(src, dst, "udp", sport, dport)))


def both_tables(**options: Any) -> list[Any]:
    return [CFlowTable(**options), PyFlowTable(**options)]


def test_a_sweep_that_stops_at_its_limit_after_a_jump_misses_no_flow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import geneve._flows as flows_module

    monkeypatch.setattr(flows_module, "_CHUNK", 7)  # many calls, each stopping mid-slot
    for table in both_tables(other_timeout=120.0, max_flows=10_000):
        for i in range(100):
            table.track(udp_packet("10.0.0.1", "10.0.0.2", 1000 + i, 53), 0.0)
        table.track(udp_packet("10.0.0.1", "10.0.0.2", 1000, 53), 100.0)  # its deadline moves
        assert table.sweep(4096 * 3 + 200.0) == 100 and len(table) == 0


def test_a_flow_made_after_the_clock_went_back_still_times_out() -> None:
    for table in both_tables(other_timeout=120.0, max_flows=10):
        table.track(udp_packet("10.0.0.1", "10.0.0.2", 1, 2), 990.0)
        table.sweep(1000.0)
        table.track(udp_packet("10.0.0.1", "10.0.0.2", 3, 4), 500.0)  # deadline 620
        for now in range(1001, 1200):
            table.sweep(float(now))
        assert len(table) == 0


def test_ipv4_and_ipv6_keys_that_pad_alike_are_two_flows() -> None:
    table = CFlowTable(max_flows=10)
    a = table.track(udp_packet("0.0.0.0", "0.0.0.0", 0, 0), 1.0)
    b = table.track(udp_packet("::", "::", 0, 0), 2.0)
    assert a is not b and len(table) == 2 and not isinstance(b, str) and len(b.key) == 45


def test_release_takes_only_what_pop_handed_out() -> None:
    ffi, lib = _flows_c.ffi, _flows_c.lib
    t = ffi.gc(lib.geneve_flow_table_new(1, 30.0, 12.0), lib.geneve_flow_table_free)
    first = Packet.parse(bytes(flow_frame("10.0.0.1", "10.0.0.2", "udp", 1, 2)))
    second = Packet.parse(bytes(flow_frame("10.0.0.1", "10.0.0.2", "udp", 3, 4)))
    for packet in (first, second):  # the second evicts the first
        frame = ffi.from_buffer(packet.buf)
        assert (
            lib.geneve_flow_track(
                t,
                frame,
                len(packet.buf),
                4,
                packet.ip_offset,
                packet.l4_offset,
                packet.ip_end,
                17,
                -1,
                0,
                -1,
                1.0,
            )
            >= 0
        )
    assert lib.geneve_flow_release(t, 0) == lib.GENEVE_FLOW_BAD_ARGUMENT  # not popped yet
    assert lib.geneve_flow_pop_ended(t) == 0
    assert lib.geneve_flow_release(t, 0) == 0
    assert lib.geneve_flow_release(t, 0) == lib.GENEVE_FLOW_BAD_ARGUMENT  # once


@pytest.mark.parametrize("now", [float("inf"), float("-inf"), 1e19, float("nan")])
def test_a_time_past_what_the_table_holds_is_refused(now: float) -> None:
    table = CFlowTable(max_flows=10)
    packet = udp_packet("10.0.0.1", "10.0.0.2", 1, 2)
    with pytest.raises(ValueError):
        table.track(packet, now)
    with pytest.raises(ValueError):
        table.sweep(now)


def test_a_flow_holding_frames_is_left_to_python_by_the_fast_path() -> None:
    """A packet outside the interest forwards as if the modifier returned None: in Python that
    releases what the flow held; the fast path must not forward it ahead of them."""

    def holder(packet: Packet) -> Verdict | None:
        assert isinstance(packet, PipelinePacket) and packet.flow is not None
        if b"GET" in bytes(packet.buf[packet.payload_offset : packet.ip_end]):
            return Verdict.HOLD
        return None

    modifier = declare_interest(holder, tcp_ports=[80], payload_contains=[b"GET"])
    pipeline = Pipeline(modifier, flows=CFlowTable())
    table = pipeline.flows
    assert isinstance(table, CFlowTable)
    slots = Slots(4, c=True)
    fast = FastPath(slots, pipeline.interest, 8500, PORT, table)
    fast.trust(SOURCE)
    sent: list[bytes] = []
    for payload in (b"GET / HT", b"TP/1.1\r\n"):
        frame = bytes(flow_frame("10.0.0.1", "10.0.0.2", "tcp", 1000, 80, payload=payload))
        sent += through_fast_path(fast, slots, pipeline, frame, SOURCE, 1.0)[1]
    payloads = (b"GET / HT", b"TP/1.1\r\n")
    # In order: the held segment first.
    assert [bytes(s[-len(p) :]) for s, p in zip(sent, payloads, strict=True)] == list(payloads)
    assert pipeline.stats.held_released == 1 and pipeline.stats.drops == {}
