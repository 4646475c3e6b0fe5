"""Flows: keys, directions, counters, TCP ends, timeouts, cookies, tombstones, eviction, hooks,
verdicts; a reference model of the table under random packet sequences; replay twice."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from support.frames import (
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    flow_frame,
    make_inner,
)
from support.vectors import vector_files

from geneve import (
    Flow,
    FlowTable,
    Packet,
    Pipeline,
    PipelinePacket,
    ReceiveBuffer,
    Verdict,
    build_frame,
)
from geneve._flows import (
    LINGER_SECONDS,
    TOMBSTONE_SECONDS,
    CFlowTable,
    PyFlowTable,
    flow_key,
)
from geneve._flows import _c as flows_c_module
from geneve.replay import replay

A, B, C = "10.0.0.1", "10.0.0.2", "10.0.0.3"


class Recorder:
    """A modifier that sees every packet and records every hook call."""

    def __init__(self, verdict: Verdict | None = None) -> None:
        self.seen: list[PipelinePacket] = []
        self.flows: list[Flow | None] = []
        self.ended: list[tuple[Flow, str]] = []
        self.calls: list[str] = []
        self.verdict = verdict

    def __call__(self, packet: Packet) -> Verdict | None:
        assert isinstance(packet, PipelinePacket)
        self.flows.append(packet.flow)
        return self.verdict

    def on_flow_end(self, flow: Flow, reason: str) -> None:
        self.ended.append((flow, reason))

    def on_start(self) -> None:
        self.calls.append("start")

    def on_stop(self) -> None:
        self.calls.append("stop")

    def on_tick(self, now: float) -> None:
        self.calls.append(f"tick {now:g}")


def pipeline(modifier: Any = None, **table: Any) -> tuple[Pipeline, Recorder]:
    recorder = modifier if modifier is not None else Recorder()
    return Pipeline(recorder, flows=FlowTable(**table)), recorder


def send(p: Pipeline, frame: bytearray, now: float) -> bool:
    """Whether the pipeline sends ``frame`` back."""
    return bool(p.handle(frame, len(frame), now))


# -- keys and directions ------------------------------------------------------------------------


def test_both_directions_share_one_flow_and_count_apart() -> None:
    p, rec = pipeline()
    send(p, flow_frame(A, B, "tcp", 1000, 80, flags=TCP_SYN, payload=b"xx"), 1.0)
    send(p, flow_frame(B, A, "tcp", 80, 1000, flags=TCP_SYN | TCP_ACK), 2.0)
    send(p, flow_frame(A, B, "tcp", 1000, 80, flags=TCP_ACK), 3.0)
    first, second, third = rec.flows
    assert first is not None and first is second is third
    assert first.packets == (2, 1)
    assert first.bytes == (40 + 2 + 40, 40)
    assert (first.first_seen, first.last_seen) == (1.0, 3.0)
    assert first.direction == "original"
    assert first.tcp_state == "established"
    assert (first.src, first.dst, first.ports, first.protocol) == (A, B, (1000, 80), 6)
    assert p.stats.flows_created == 1 and p.stats.flows_active == 1


def test_the_direction_is_the_first_packets() -> None:
    p, rec = pipeline()
    send(p, flow_frame(B, A, "udp", 53, 5000), 0.0)  # the server's packet first: original
    send(p, flow_frame(A, B, "udp", 5000, 53), 0.0)
    flow = rec.flows[1]
    assert flow is not None and flow.direction == "reply" and flow.src == B


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (dict(sport=1000), dict(sport=1001)),  # another port
        (dict(dst=B), dict(dst=C)),  # another address
        (dict(endpoint_id=1), dict(endpoint_id=2)),  # same addresses behind another endpoint
        (dict(proto="tcp"), dict(proto="udp")),
    ],
)
def test_keys_tell_flows_apart(one: dict[str, Any], other: dict[str, Any]) -> None:
    def frame(**kw: Any) -> bytearray:
        args: dict[str, Any] = dict(src=A, dst=B, proto="udp", sport=1000, dport=80)
        args.update(kw)
        return flow_frame(**args)

    p, rec = pipeline()
    send(p, frame(**one), 0.0)
    send(p, frame(**other), 0.0)
    assert rec.flows[0] is not rec.flows[1]
    assert len(p.flows or ()) == 2


def test_icmp_echo_is_keyed_on_its_identifier() -> None:
    p, rec = pipeline()
    send(p, flow_frame(A, B, "icmp", 7, icmp_type=8), 0.0)
    send(p, flow_frame(B, A, "icmp", 7, icmp_type=0), 0.0)
    send(p, flow_frame(A, B, "icmp", 8, icmp_type=8), 0.0)
    send(p, flow_frame("2001:db8::1", "2001:db8::2", "icmp", 7, icmp_type=128), 0.0)
    send(p, flow_frame("2001:db8::2", "2001:db8::1", "icmp", 7, icmp_type=129), 0.0)
    f = rec.flows
    assert f[0] is f[1] and f[0] is not f[2] and f[3] is f[4]
    assert f[0] is not None and f[0].ports == (7, 7) and f[0].packets == (1, 1)
    assert f[3] is not None and f[3].src == "2001:db8::1"


def test_key_is_compact_bytes_and_symmetric() -> None:
    for src, dst in ((A, B), ("2001:db8::1", "2001:db8::2")):
        out = Packet.parse(flow_frame(src, dst, "tcp", 1, 2))
        back = Packet.parse(flow_frame(dst, src, "tcp", 2, 1))
        (k1, low1), (k2, low2) = flow_key(out), flow_key(back)
        assert k1 == k2 and isinstance(k1, bytes) and low1 != low2
        assert len(k1) == (21 if ":" not in src else 45)
        table = FlowTable()
        flow = table.track(out, 0.0)
        assert isinstance(flow, Flow) and flow.key == k1 and table.get(k1) is flow


def test_no_gwlb_options_means_endpoint_zero() -> None:
    p, rec = pipeline()
    send(p, flow_frame(A, B, "udp", endpoint_id=None, cookie=None), 0.0)
    flow = rec.flows[0]
    assert flow is not None and flow.endpoint_id == 0 and flow.cookies == (None, None)


def test_non_ip_inner_frames_have_no_flow() -> None:
    p, rec = pipeline()
    frame = build_frame(b"\xff" * 60, protocol_type=0x0806)  # ARP-like: not IP
    send(p, frame, 0.0)
    assert rec.flows == [None] and p.stats.flows_created == 0


def test_flows_off_by_default_packet_flow_none_and_timestamp() -> None:
    seen: list[tuple[object, float]] = []

    def modifier(packet: Packet) -> None:
        assert isinstance(packet, PipelinePacket)
        seen.append((packet.flow, packet.timestamp))

    p = Pipeline(modifier)
    frame = flow_frame(A, B)
    p.handle(frame, len(frame), 12.5)
    assert p.flows is None and seen == [(None, 12.5)]


def test_a_receive_buffer_refills_the_pipeline_packet() -> None:
    kept: list[PipelinePacket] = []
    def keep(packet: Packet) -> None:
        assert isinstance(packet, PipelinePacket)
        kept.append(packet)

    p = Pipeline(keep, flows=True)
    buf = ReceiveBuffer()
    for sport in (1, 2):
        frame = build_frame(make_inner(4, "udp", b"x", sport=sport))
        buf[: len(frame)] = frame
        p.handle(buf, len(frame), 0.0)
    assert kept[0] is kept[1] and type(kept[0]) is PipelinePacket


def test_malformed_inner_is_counted_not_tracked() -> None:
    p, rec = pipeline()
    frame = flow_frame(A, B, "udp")
    frame[68 + 2 : 68 + 4] = (9999).to_bytes(2, "big")  # inner total length past the frame
    assert not send(p, frame, 0.0)
    assert p.stats.malformed == 1 and p.stats.flows_created == 0 and rec.flows == []


# -- cookies ----------------------------------------------------------------------------------


def test_latest_cookie_per_direction() -> None:
    p, rec = pipeline()
    send(p, flow_frame(A, B, cookie=1), 0.0)
    send(p, flow_frame(B, A, "tcp", 80, 40000, cookie=2), 0.0)
    send(p, flow_frame(A, B, cookie=3), 0.0)  # not a SYN: the same flow, its latest cookie
    flow = rec.flows[-1]
    assert flow is rec.flows[0] and flow is not None and flow.cookies == (3, 2)


def test_a_syn_with_another_cookie_starts_a_new_flow() -> None:
    p, rec = pipeline()
    send(p, flow_frame(A, B, flags=TCP_SYN, cookie=1), 0.0)
    send(p, flow_frame(A, B, flags=TCP_SYN, cookie=1), 1.0)  # a retransmission: same flow
    send(p, flow_frame(A, B, flags=TCP_SYN, cookie=2), 2.0)
    f = rec.flows
    assert f[0] is f[1] and f[2] is not f[0]
    assert rec.ended == [(f[0], "idle")]
    assert p.stats.flows_ended == {"idle": 1} and p.stats.flows_active == 1


# -- TCP ends, linger -------------------------------------------------------------------------


def test_fin_both_ways_ends_after_the_linger() -> None:
    p, rec = pipeline()
    send(p, flow_frame(A, B, flags=TCP_ACK), 0.0)
    send(p, flow_frame(A, B, flags=TCP_FIN | TCP_ACK), 1.0)
    flow = rec.flows[0]
    assert flow is not None and flow.tcp_state == "fin_wait"
    send(p, flow_frame(B, A, "tcp", 80, 40000, flags=TCP_FIN | TCP_ACK), 2.0)
    assert flow.tcp_state == "time_wait"
    send(p, flow_frame(A, B, flags=TCP_ACK), 3.0)  # the last ACK: still the flow's
    assert rec.flows[-1] is flow and flow.packets == (3, 1)
    p.tick(2.0 + LINGER_SECONDS - 0.5)
    assert rec.ended == []
    p.tick(2.0 + LINGER_SECONDS)
    assert rec.ended == [(flow, "fin")] and len(p.flows or ()) == 0


def test_rst_ends_and_a_later_packet_starts_a_new_flow() -> None:
    p, rec = pipeline()
    send(p, flow_frame(A, B, flags=TCP_ACK), 0.0)
    send(p, flow_frame(B, A, "tcp", 80, 40000, flags=TCP_RST), 1.0)
    flow = rec.flows[0]
    assert flow is not None and flow.tcp_state == "close"
    send(p, flow_frame(A, B, flags=TCP_ACK), 1.0 + LINGER_SECONDS + 1)  # no tick came first
    assert rec.flows[-1] is not flow and rec.ended == [(flow, "rst")]


def test_another_cookie_after_the_end_starts_a_new_flow() -> None:
    p, rec = pipeline()
    send(p, flow_frame(A, B, flags=TCP_ACK, cookie=1), 0.0)
    send(p, flow_frame(A, B, flags=TCP_RST, cookie=1), 1.0)
    send(p, flow_frame(A, B, flags=TCP_ACK, cookie=1), 2.0)  # a straggler: same flow
    send(p, flow_frame(A, B, flags=TCP_ACK, cookie=9), 3.0)
    f = rec.flows
    assert f[0] is f[1] is f[2] and f[3] is not f[0]
    assert rec.ended == [(f[0], "rst")]


def test_mid_stream_tcp_is_established_and_the_handshake_is_followed() -> None:
    p, rec = pipeline()
    send(p, flow_frame(A, B, flags=TCP_PSH | TCP_ACK), 0.0)
    assert rec.flows[0] is not None and rec.flows[0].tcp_state == "established"
    send(p, flow_frame(A, C, flags=TCP_SYN), 0.0)
    flow = rec.flows[1]
    assert flow is not None and flow.tcp_state == "syn_sent"
    send(p, flow_frame(C, A, "tcp", 80, 40000, flags=TCP_SYN | TCP_ACK), 0.0)
    assert flow.tcp_state == "syn_recv"
    send(p, flow_frame(A, C, flags=TCP_ACK), 0.0)
    assert flow.tcp_state == "established"
    send(p, flow_frame(A, B, "udp"), 0.0)
    assert rec.flows[-1] is not None and rec.flows[-1].tcp_state is None


# -- timeouts ---------------------------------------------------------------------------------


def test_idle_timeouts_tcp_and_other() -> None:
    p, rec = pipeline(tcp_timeout=350, other_timeout=120)
    send(p, flow_frame(A, B, "tcp"), 0.0)
    send(p, flow_frame(A, B, "udp"), 0.0)
    tcp, udp = rec.flows
    p.tick(119.9)
    assert rec.ended == []
    p.tick(120.0)
    assert rec.ended == [(udp, "idle")]
    send(p, flow_frame(A, B, "tcp"), 300.0)  # a packet puts the TCP deadline back
    p.tick(649.0)
    assert len(rec.ended) == 1
    p.tick(650.0)
    assert rec.ended[-1] == (tcp, "idle") and p.stats.flows_active == 0
    assert p.stats.flows_ended == {"idle": 2}


def test_an_expired_flow_ends_at_its_next_packet_without_a_tick() -> None:
    p, rec = pipeline(other_timeout=10)
    send(p, flow_frame(A, B, "udp"), 0.0)
    send(p, flow_frame(A, B, "udp"), 10.0)
    assert rec.flows[0] is not rec.flows[1] and rec.ended == [(rec.flows[0], "idle")]


def test_tombstone_keeps_dropping_a_dropped_flow_after_it_idles_out() -> None:
    def filter_(packet: Packet) -> Verdict:
        assert isinstance(packet, PipelinePacket) and packet.flow is not None
        packet.flow.verdict = Verdict.DROP
        return Verdict.DROP

    p = Pipeline(filter_, flows=FlowTable(tcp_timeout=100))
    assert not send(p, flow_frame(A, B, cookie=5), 0.0)
    p.tick(100.0)
    assert p.stats.flows_ended == {"idle": 1} and p.flows is not None and p.flows.tombstones == 1
    assert not send(p, flow_frame(A, B, cookie=5), 101.0)  # a straggler: still dropped
    assert p.stats.flows_created == 1 and p.stats.drops["flow"] == 1
    assert p.stats.flow_verdict_packets == 1
    # GWLB's next flow on the same addresses has a new cookie: it is a new flow.
    assert not send(p, flow_frame(A, B, cookie=6), 102.0)
    assert p.stats.flows_created == 2
    # After the tombstone's time, even the old cookie makes a new flow.
    p.tick(102.0 + 100)
    assert not send(p, flow_frame(A, B, cookie=6), 202.0 + TOMBSTONE_SECONDS + 1)
    assert p.stats.flows_created == 3


# -- bounded memory ---------------------------------------------------------------------------


def test_early_drop_evicts_the_oldest_unreplied_flow_and_keeps_established_ones() -> None:
    p, rec = pipeline(max_flows=3)
    send(p, flow_frame(A, B, "udp", 1), 0.0)
    send(p, flow_frame(B, A, "udp", 80, 1), 0.0)  # replied: kept
    send(p, flow_frame(A, B, "udp", 2), 1.0)
    send(p, flow_frame(A, B, "udp", 3), 2.0)
    send(p, flow_frame(A, B, "udp", 4), 3.0)  # full: the oldest unreplied (port 2) goes
    assert [(f.ports[0], r) for f, r in rec.ended] == [(2, "evicted")]
    send(p, flow_frame(A, B, "udp", 5), 4.0)
    assert [(f.ports[0], r) for f, r in rec.ended] == [(2, "evicted"), (3, "evicted")]
    assert p.stats.flows_early_dropped == 2 and p.stats.flows_active == 3
    assert sorted(f.ports[0] for f in p.flows or ()) == [1, 4, 5]


def test_when_nothing_can_be_evicted_the_new_flow_is_refused() -> None:
    p, rec = pipeline(max_flows=1)
    send(p, flow_frame(A, B, "udp", 1), 0.0)
    send(p, flow_frame(B, A, "udp", 80, 1), 0.0)
    assert not send(p, flow_frame(A, B, "udp", 2), 0.0)
    assert p.stats.drops == {"flow-table-full": 1} and len(rec.flows) == 2
    assert send(p, flow_frame(A, B, "udp", 1), 0.0)  # the established flow goes on


# -- verdicts and hooks -----------------------------------------------------------------------


def test_a_flow_verdict_skips_the_modifier_both_ways() -> None:
    calls = []

    def modifier(packet: Packet) -> None:
        assert isinstance(packet, PipelinePacket) and packet.flow is not None
        calls.append(packet.flow.direction)
        packet.flow.verdict = Verdict.FORWARD

    p = Pipeline(modifier, flows=True)
    frame = flow_frame(A, B)
    out = p.handle(frame, len(frame), 0.0)
    assert out and bytes(out[0][12:16]) == bytes(frame[12:16])  # swapped in place
    for _ in range(3):
        back = flow_frame(B, A, "tcp", 80, 40000)
        assert send(p, back, 1.0)
    assert calls == ["original"]
    assert p.stats.flow_verdict_packets == 3 and p.stats.forwarded == 4


def test_a_reject_verdict_refuses_the_rest_of_the_flow_without_the_modifier() -> None:
    calls = []

    def modifier(packet: Packet) -> Verdict:
        assert isinstance(packet, PipelinePacket) and packet.flow is not None
        calls.append(packet.flow.direction)
        packet.flow.verdict = Verdict.REJECT
        return Verdict.REJECT

    p = Pipeline(modifier, flows=True)
    for now in (0.0, 0.1):
        frame = flow_frame(A, B, payload=b"data")
        (refusal,) = p.handle(frame, len(frame), now)
        assert refusal.obj is not frame  # a frame of its own: the RST
        back = Packet.parse(bytes(refusal))
        assert back.tcp is not None and back.tcp.flags & TCP_RST
        assert back.inner_src == B and back.inner_dst == A
    assert calls == ["original"]  # the second packet: decided by the flow, not the modifier
    assert p.stats.rejected == 2 and p.stats.flow_verdict_packets == 1


def test_the_stateful_filter_drops_the_rest_of_a_forbidden_connection() -> None:
    def stateful_filter(packet: Packet) -> Verdict | None:
        assert isinstance(packet, PipelinePacket)
        if packet.flow is not None and packet.payload_contains(b"forbidden"):
            packet.flow.verdict = Verdict.DROP
            return Verdict.DROP
        return None

    p = Pipeline(stateful_filter, flows=True)
    bad, good = 40001, 40002
    assert send(p, flow_frame(A, B, "tcp", bad, 80, payload=b"hello"), 0.0)
    assert send(p, flow_frame(A, B, "tcp", good, 80, payload=b"hello"), 0.0)
    assert not send(p, flow_frame(A, B, "tcp", bad, 80, payload=b"a forbidden word"), 1.0)
    assert not send(p, flow_frame(A, B, "tcp", bad, 80, payload=b"innocent"), 2.0)
    assert not send(p, flow_frame(B, A, "tcp", 80, bad, payload=b"answer"), 2.0)
    assert send(p, flow_frame(A, B, "tcp", good, 80, payload=b"still fine"), 3.0)
    assert send(p, flow_frame(B, A, "tcp", 80, good, payload=b"answer"), 3.0)
    assert p.stats.drops == {"rule": 1, "flow": 2} and p.stats.flow_verdict_packets == 2


def test_hooks_run_in_order_and_a_failing_hook_is_counted() -> None:
    class Failing(Recorder):
        def on_flow_end(self, flow: Flow, reason: str) -> None:
            super().on_flow_end(flow, reason)
            raise RuntimeError("a user's bug")

        def on_tick(self, now: float) -> None:
            raise RuntimeError("another")

    rec = Failing()
    p = Pipeline(rec, flows=FlowTable(other_timeout=5))
    p.start()
    send(p, flow_frame(A, B, "udp", 1), 0.0)
    send(p, flow_frame(A, B, "udp", 2), 0.0)
    p.tick(5.0)  # both end idle; on_flow_end raises twice, on_tick once
    send(p, flow_frame(A, B, "udp", 3), 6.0)
    p.stop(7.0)
    assert rec.calls == ["start", "stop"]
    assert [r for _f, r in rec.ended] == ["idle", "idle", "shutdown"]
    assert p.stats.modifier_errors == 4 and p.stats.flows_active == 0
    assert p.stats.flows_ended == {"idle": 2, "shutdown": 1}
    assert send(p, flow_frame(A, B, "udp", 4), 8.0)  # nothing stopped the pipeline


def test_hooks_are_optional() -> None:
    p = Pipeline(lambda packet: None, flows=True)
    p.start()
    send(p, flow_frame(A, B), 0.0)
    p.tick(1.0)
    p.stop(2.0)
    assert p.stats.flows_ended == {"shutdown": 1} and p.stats.modifier_errors == 0


def test_table_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="positive"):
        FlowTable(tcp_timeout=0)
    with pytest.raises(ValueError, match="max_flows"):
        FlowTable(max_flows=0)


# -- a reference model under random sequences ---------------------------------------------------
#
# The model keeps a list of flows and scans it: a key is a frozenset of the two ends, time
# checks are spelled out, eviction picks the lowest creation number. Nothing is shared with
# geneve._flows but the constants.

HOSTS = {4: ["10.0.0.1", "10.0.0.2", "10.0.0.3"], 6: ["2001:db8::1", "2001:db8::2"]}
TCP_TO, OTHER_TO, MAX = 30.0, 12.0, 3


@dataclass
class MFlow:
    number: int
    key: Any
    orig: tuple[str, int]
    timeout: float
    first: float
    last: float
    packets: list[int] = field(default_factory=lambda: [0, 0])
    bytes: list[int] = field(default_factory=lambda: [0, 0])
    cookies: list[int | None] = field(default_factory=lambda: [None, None])
    tcp: str | None = None
    fins: set[int] = field(default_factory=set)
    end_at: float | None = None
    reason: str = "idle"
    verdict: Verdict | None = None

    def deadline(self) -> float:
        return self.end_at + LINGER_SECONDS if self.end_at is not None else self.last + self.timeout


class Model:
    def __init__(self) -> None:
        self.flows: list[MFlow] = []
        self.ended: list[tuple[int, str]] = []
        self.tombstones: list[tuple[Any, float, tuple[int | None, int | None]]] = []
        self.created = 0

    def end(self, flow: MFlow, reason: str) -> None:
        self.flows.remove(flow)
        self.ended.append((flow.number, reason))
        if reason == "idle" and flow.verdict is Verdict.DROP:
            self.tombstones.append(
                (flow.key, flow.deadline() + TOMBSTONE_SECONDS, (flow.cookies[0], flow.cookies[1]))
            )
            if len(self.tombstones) > MAX:
                del self.tombstones[0]

    def packet(self, op: dict[str, Any], now: float) -> MFlow | str:
        src, dst = (op["src"], op["sport"]), (op["dst"], op["dport"])
        key = (op["endpoint"], op["proto"], frozenset((src, dst)))
        cookie, flags = op["cookie"], op["flags"] if op["proto"] == "tcp" else 0
        syn = flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        flow = next((f for f in self.flows if f.key == key), None)
        if flow is not None:
            d = 0 if src == flow.orig else 1
            seen = flow.cookies[d]
            if flow.end_at is not None:
                if (
                    now >= flow.end_at + LINGER_SECONDS
                    or syn
                    or (cookie not in (None, seen) and seen is not None)
                ):
                    self.end(flow, flow.reason)
                    flow = None
            elif now >= flow.last + flow.timeout or (
                syn and cookie is not None and seen is not None and cookie != seen
            ):
                self.end(flow, "idle")
                flow = None
        if flow is None:
            for i, (k, expires, cookies) in enumerate(self.tombstones):
                if k == key:
                    if now < expires and (cookie is None or cookie in cookies):
                        return "flow"
                    del self.tombstones[i]
                    break
            if len(self.flows) >= MAX:
                unreplied = [f for f in self.flows if f.packets[1] == 0]
                if not unreplied:
                    return "flow-table-full"
                self.end(min(unreplied, key=lambda f: f.number), "evicted")
            self.created += 1
            tcp = op["proto"] == "tcp"
            flow = MFlow(self.created, key, src, TCP_TO if tcp else OTHER_TO, now, now)
            if tcp:
                flow.tcp = "syn_sent" if syn else "established"
            self.flows.append(flow)
        d = 0 if src == flow.orig else 1
        flow.packets[d] += 1
        flow.bytes[d] += op["length"]
        if cookie is not None:
            flow.cookies[d] = cookie
        flow.last = max(flow.last, now)
        if flags and flow.end_at is None:
            if flags & TCP_RST:
                flow.tcp, flow.end_at, flow.reason = "close", now, "rst"
            elif flags & TCP_FIN:
                flow.fins.add(d)
                if flow.fins == {0, 1}:
                    flow.tcp, flow.end_at, flow.reason = "time_wait", now, "fin"
                else:
                    flow.tcp = "fin_wait"
            elif (
                flow.tcp == "syn_sent"
                and d == 1
                and flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
            ):
                flow.tcp = "syn_recv"
            elif flow.tcp == "syn_recv" and d == 0 and flags & (TCP_SYN | TCP_ACK) == TCP_ACK:
                flow.tcp = "established"
        return flow

    def tick(self, now: float) -> None:
        for flow in sorted(self.flows, key=lambda f: (f.deadline(), f.number)):
            if flow.deadline() <= now:
                self.end(flow, flow.reason)
        while self.tombstones and self.tombstones[0][1] <= now:
            del self.tombstones[0]


@st.composite
def packet_ops(draw: st.DrawFn) -> dict[str, Any]:
    version = draw(st.sampled_from((4, 6)))
    hosts = HOSTS[version]
    proto = draw(st.sampled_from(("tcp", "udp", "icmp")))
    src, dst = draw(st.sampled_from(hosts)), draw(st.sampled_from(hosts))
    sport = draw(st.sampled_from((1, 2)))
    dport = sport if proto == "icmp" else draw(st.sampled_from((1, 80)))
    flags = draw(
        st.sampled_from(
            (TCP_SYN, TCP_SYN | TCP_ACK, TCP_ACK, TCP_PSH | TCP_ACK)
            + (TCP_FIN | TCP_ACK,) * 3
            + (TCP_RST,)
        )
    )
    return {
        "version": version,
        "proto": proto,
        "src": src,
        "dst": dst,
        "sport": sport,
        "dport": dport,
        "flags": flags,
        "payload": draw(st.sampled_from((b"", b"abc"))),
        "cookie": draw(st.sampled_from((None, 1, 2))),
        "endpoint": draw(st.sampled_from((0, 1))),
        "dt": draw(st.sampled_from((0.0, 0.0, 0.5, 3.0, 11.0, 40.0))),
        "verdict": draw(st.sampled_from((None, None, None, Verdict.FORWARD, Verdict.DROP))),
        "reverse": draw(st.booleans()),  # answer the packet before: the flow's other direction
    }


ops = st.lists(
    st.one_of(packet_ops(), st.builds(lambda dt: {"tick": dt}, st.sampled_from((1.0, 5.0, 20.0)))),
    max_size=60,
)


def frame_for(op: dict[str, Any]) -> bytearray:
    icmp_type = None
    if op["proto"] == "icmp":  # request one way, reply the other, as the model's key assumes
        request = op["src"] < op["dst"] or op["src"] == op["dst"]
        icmp_type = (8 if request else 0) if op["version"] == 4 else (128 if request else 129)
    return flow_frame(
        op["src"],
        op["dst"],
        op["proto"],
        op["sport"],
        op["dport"],
        flags=op["flags"],
        payload=op["payload"],
        cookie=op["cookie"],
        endpoint_id=op["endpoint"] if op["endpoint"] else None,
        icmp_type=icmp_type,
    )


# Both tables: the C one (what FlowTable makes when it is built) and the pure-Python one.
_C_TABLE = (
    pytest.param(CFlowTable, id="c")
    if flows_c_module is not None
    else pytest.param(
        None, id="c", marks=pytest.mark.skip(reason="the C flow table is off (GENEVE_PURE_PYTHON)")
    )
)
TABLES = [pytest.param(PyFlowTable, id="python"), _C_TABLE]


def test_flow_table_is_the_c_one_when_built() -> None:
    table = FlowTable(max_flows=10)
    assert type(table) is (CFlowTable if flows_c_module is not None else FlowTable)
    assert type(PyFlowTable(max_flows=10)) is PyFlowTable


@pytest.mark.parametrize("table_class", TABLES)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=ops)
def test_the_table_follows_the_reference_model(
    table_class: type[FlowTable], sequence: list[dict[str, Any]]
) -> None:
    model = Model()
    state: dict[str, Any] = {}
    real_ended: list[tuple[Flow, str]] = []

    class Modifier:
        def __call__(self, packet: Packet) -> None:
            assert isinstance(packet, PipelinePacket) and packet.flow is not None
            state["called"] = packet.flow
            if state["verdict"] is not None:
                packet.flow.verdict = state["verdict"]

        def on_flow_end(self, flow: Flow, reason: str) -> None:
            real_ended.append((flow, reason))

    p = Pipeline(
        Modifier(), flows=table_class(tcp_timeout=TCP_TO, other_timeout=OTHER_TO, max_flows=MAX)
    )
    numbers: dict[int, int] = {}  # id(real flow) -> model number
    keep: list[Flow] = []  # keeps ids unique
    now = 0.0
    last: dict[str, Any] | None = None
    for op in sequence:
        if "tick" not in op:
            if op["reverse"] and last is not None:
                op.update(
                    {k: last[k] for k in ("version", "proto", "endpoint")},
                    src=last["dst"],
                    dst=last["src"],
                    sport=last["dport"],
                    dport=last["sport"],
                )
            last = op
        if "tick" in op:
            now += op["tick"]
            model.tick(now)
            p.tick(now)
        else:
            now += op["dt"]
            frame = frame_for(op)
            inner = Packet.parse(bytes(frame))
            op["length"] = inner.ip_end - inner.ip_offset
            state["called"] = None
            state["verdict"] = op["verdict"]
            expected = model.packet(op, now)
            sent = send(p, frame, now)
            if isinstance(expected, str):
                event(f"dropped: {expected}")
                assert state["called"] is None and not sent
                assert p.stats.drops.get(expected, 0) > 0
            else:
                decided = expected.verdict
                if decided is None:
                    real = state["called"]
                    assert real is not None, "the modifier was not called"
                    expected.verdict = op["verdict"]
                    assert sent
                else:
                    assert state["called"] is None
                    assert sent is (decided is Verdict.FORWARD)
                    real = next(
                        f
                        for f in p.flows or ()
                        if f.verdict is not None and numbers.get(id(f)) == expected.number
                    )
                if id(real) not in numbers:
                    numbers[id(real)] = expected.number
                    keep.append(real)
                assert numbers[id(real)] == expected.number
                assert real.direction == (
                    "original" if (op["src"], op["sport"]) == expected.orig else "reply"
                )
                assert list(real.packets) == expected.packets
                assert list(real.bytes) == expected.bytes
                assert list(real.cookies) == expected.cookies
                assert real.tcp_state == expected.tcp
                assert (real.first_seen, real.last_seen) == (expected.first, expected.last)
        got = [(numbers[id(f)], r) for f, r in real_ended]
        assert sorted(got) == sorted(model.ended)
        assert p.stats.flows_active == len(model.flows) == len(p.flows or ())
        assert p.stats.flows_created == model.created
    now += 1000.0  # everything times out
    model.tick(now)
    p.tick(now)
    assert sorted((numbers[id(f)], r) for f, r in real_ended) == sorted(model.ended)
    assert p.stats.flows_active == len(model.flows) == 0
    for reason in {reason for _number, reason in model.ended}:
        event(f"ended {reason}")
    p.stop(now)
    assert len(real_ended) == len(model.ended) + len(model.flows)


# -- replay -----------------------------------------------------------------------------------


def flow_records(capture: bytes) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []

    class Logger:
        def __call__(self, packet: Packet) -> None:
            return None

        def on_flow_end(self, flow: Flow, reason: str) -> None:
            records.append({**flow.as_dict(), "reason": reason})

    replay(io.BytesIO(capture), io.BytesIO(), Logger())
    return records


def _captures() -> Iterator[Any]:
    files = vector_files()
    if not files:
        yield pytest.param(None, marks=pytest.mark.skip(reason="no captures in ../shared/vectors"))
    for path in files:
        yield pytest.param(path, id=path.name)


@pytest.mark.parametrize("path", list(_captures()))
def test_replaying_a_capture_twice_gives_identical_flow_records(path: Any) -> None:
    data = path.read_bytes()
    first, second = flow_records(data), flow_records(data)
    assert first == second
    assert all(r["reason"] in ("fin", "rst", "idle", "evicted", "shutdown") for r in first)


def test_replay_tracks_flows_on_the_capture_clock(tmp_path: Any) -> None:
    from geneve._pcap import LINKTYPE_RAW, PcapWriter

    buf = io.BytesIO()
    writer = PcapWriter(buf, LINKTYPE_RAW)
    writer.write(bytes(flow_frame(A, B, "udp")), 1_000_000_000)
    writer.write(bytes(flow_frame(A, B, "udp")), 2_000_000_000)
    writer.write(bytes(flow_frame(A, C, "udp")), 200_000_000_000)  # the first flow idled out
    records = flow_records(buf.getvalue())
    assert [
        (r["dst"], r["packets"], r["first_seen"], r["last_seen"], r["reason"]) for r in records
    ] == [
        (B, [2, 0], 1.0, 2.0, "idle"),
        (C, [1, 0], 200.0, 200.0, "shutdown"),
    ]
