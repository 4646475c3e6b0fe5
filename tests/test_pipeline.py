"""geneve.process and the bound Pipeline: verdicts, policies, control packets, limits, counters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.frames import check_frame, gwlb_frames, make_inner, naive_sum

from geneve import (
    MAX_INNER_LENGTH,
    Interest,
    Packet,
    ReceiveBuffer,
    Stats,
    Verdict,
    build_frame,
    process,
)
from geneve._pipeline import Pipeline, declare_interest, interest_of


def frame_udp(payload: bytes = b"payload", **kwargs: Any) -> bytearray:
    return build_frame(make_inner(4, "udp", payload), src="10.0.0.1", dst="10.0.0.2", **kwargs)


def run(
    frame: bytearray, modifier: Callable[[Packet], Any], **kwargs: Any
) -> tuple[Packet | None, Stats]:
    stats = Stats()
    packet = process(frame, len(frame), modifier, stats, **kwargs)
    assert_consistent(stats)
    return packet, stats


def assert_consistent(stats: Stats) -> None:
    """Every received frame ends in exactly one outcome; the by-reason counts add up."""
    assert stats.received == stats.forwarded + stats.dropped + stats.malformed + stats.skipped
    assert sum(stats.drops.values()) == stats.dropped
    assert sum(stats.malformed_reasons.values()) == stats.malformed
    assert stats.modified <= stats.forwarded


def counters(stats: Stats) -> dict[str, object]:
    d = stats.as_dict()
    return {k: v for k, v in d.items() if v}


def returned(original: bytes, packet: Packet) -> None:
    """The packet is the original with the outer addresses swapped, nothing else."""
    out = bytes(packet.data)
    assert out[12:16] == original[16:20] and out[16:20] == original[12:16]
    assert out[:12] + out[20:] == original[:12] + original[20:]


@pytest.mark.parametrize("verdict", [None, Verdict.FORWARD])
def test_forward_unchanged(verdict: Verdict | None) -> None:
    frame = frame_udp(udp_checksum=True)
    original = bytes(frame)
    seen: list[Packet] = []

    def modifier(p: Packet) -> Verdict | None:
        seen.append(p)
        return verdict

    packet, stats = run(frame, modifier)
    assert packet is not None and seen == [packet]
    returned(original, packet)
    check_frame(packet.data)
    assert counters(stats) == {"received": 1, "forwarded": 1}


def test_drop() -> None:
    packet, stats = run(frame_udp(), lambda p: Verdict.DROP)
    assert packet is None
    assert counters(stats) == {"received": 1, "dropped": 1, "drops": {"rule": 1}}


@pytest.mark.parametrize("garbage", ["drop", 0, 1, True, Verdict, object()])
def test_garbage_verdict_is_a_modifier_error(garbage: object) -> None:
    packet, stats = run(frame_udp(), lambda p: garbage)
    assert packet is None
    assert counters(stats) == {
        "received": 1, "dropped": 1, "modifier_errors": 1, "drops": {"modifier-error": 1}
    }  # fmt: skip
    assert isinstance(stats.last_error, TypeError)
    frame = frame_udp()
    original = bytes(frame)
    packet, stats = run(frame, lambda p: garbage, on_error="forward")
    assert packet is not None
    returned(original, packet)
    assert counters(stats) == {"received": 1, "forwarded": 1, "modifier_errors": 1}


def boom(p: Packet) -> None:
    raise RuntimeError("modifier bug")


def test_raising_modifier_with_each_policy() -> None:
    packet, stats = run(frame_udp(), boom)
    assert packet is None and stats.drops == {"modifier-error": 1}
    assert isinstance(stats.last_error, RuntimeError)
    frame = frame_udp()
    original = bytes(frame)
    packet, stats = run(frame, boom, on_error="forward")
    assert packet is not None
    returned(original, packet)
    assert counters(stats) == {"received": 1, "forwarded": 1, "modifier_errors": 1}


def test_a_modifier_that_edits_then_raises_is_dropped_even_when_forwarding() -> None:
    def edit_then_raise(p: Packet) -> None:
        p.replace_payload(b"half-done")
        raise RuntimeError("too late to undo")

    for policy in ("drop", "forward"):
        packet, stats = run(frame_udp(), edit_then_raise, on_error=policy)
        assert packet is None
        assert counters(stats) == {
            "received": 1, "dropped": 1, "modifier_errors": 1, "drops": {"modifier-error": 1}
        }  # fmt: skip


def test_modified_packets_get_lengths_and_checksums_fixed() -> None:
    for udp_checksum in (False, True):
        frame = frame_udp(b"short", udp_checksum=udp_checksum)

        def grow(p: Packet) -> None:
            p.replace_payload(b"a considerably longer payload")

        packet, stats = run(frame, grow)
        assert packet is not None
        facts = check_frame(packet.data)
        assert facts.payload == b"a considerably longer payload"
        assert (facts.outer_udp_checksum != 0) == udp_checksum
        assert facts.outer_src == bytes([10, 0, 0, 2]) and facts.outer_dst == bytes([10, 0, 0, 1])
        assert counters(stats) == {"received": 1, "forwarded": 1, "modified": 1}
        assert not packet.modified


def test_a_direct_header_edit_is_fixed_too() -> None:
    def retag(p: Packet) -> None:
        udp = p.udp
        assert udp is not None
        udp.dst_port = 4000  # through a view: marks the packet modified

    packet, stats = run(frame_udp(udp_checksum=True), retag)
    assert packet is not None and packet.ports == (40000, 4000)
    check_frame(packet.data)
    assert stats.modified == 1


def test_control_packets_are_dropped_before_the_modifier() -> None:
    frame = frame_udp()
    frame[29] |= 0x80  # Geneve O bit
    calls: list[Packet] = []
    packet, stats = run(frame, calls.append)
    assert packet is None and calls == []
    assert counters(stats) == {"received": 1, "dropped": 1, "drops": {"control": 1}}


def test_too_large_rewrites_are_dropped() -> None:
    frame = frame_udp(b"")
    inner_fixed = len(frame) - 68  # inner IP + UDP headers

    def grow_to(n: int) -> Callable[[Packet], None]:
        return lambda p: p.replace_payload(b"x" * (n - inner_fixed))

    packet, stats = run(frame_udp(b""), grow_to(MAX_INNER_LENGTH))
    assert packet is not None and packet.inner_length == MAX_INNER_LENGTH
    check_frame(packet.data)
    packet, stats = run(frame_udp(b""), grow_to(MAX_INNER_LENGTH + 1))
    assert packet is None
    assert counters(stats) == {"received": 1, "dropped": 1, "drops": {"too-large": 1}}
    packet, stats = run(frame_udp(b""), grow_to(1001), max_inner_length=1000)
    assert packet is None and stats.drops == {"too-large": 1}


def test_a_modifier_that_breaks_a_length_is_dropped() -> None:
    def break_length(p: Packet) -> None:
        ip = p.inner_ipv4
        assert ip is not None
        ip.total_length = 9000  # past the frame: the checksum fix-up refuses

    packet, stats = run(frame_udp(), break_length, on_error="forward")
    assert packet is None
    assert counters(stats) == {
        "received": 1, "dropped": 1, "modifier_errors": 1, "drops": {"modifier-error": 1}
    }  # fmt: skip


def test_malformed_and_not_geneve_are_counted() -> None:
    stats = Stats()
    calls: list[Packet] = []
    bad_version = frame_udp()
    bad_version[28] |= 0x40
    bad_inner = frame_udp()
    bad_inner[68] = 0x41  # inner IHL 1
    not_geneve = frame_udp()
    not_geneve[22:24] = (53).to_bytes(2, "big")
    for frame in (bad_version, bad_inner, not_geneve, bytearray(b"\x45" + bytes(10))):
        assert process(frame, len(frame), calls.append, stats) is None
    assert calls == []
    assert_consistent(stats)
    assert counters(stats) == {
        "received": 4,
        "malformed": 3,
        "skipped": 1,
        "malformed_reasons": {"geneve-version": 1, "inner-length": 1, "outer-truncated": 1},
    }


@given(gwlb_frames(), st.one_of(st.none(), st.just(-1), st.integers(0, 0xFFFF)))
def test_verify_outer_udp_refuses_a_wrong_checksum_only(
    frame: bytearray, wrong: int | None
) -> None:
    # What a kernel UDP socket checks, for frames read from a raw socket: 0 or right passes,
    # and so does the pseudo-header's sum alone, which a sender on the same host leaves for
    # checksum offload (veth) and the kernel trusts.
    pseudo = naive_sum(frame[12:20], 17 + len(frame) - 20)
    if wrong is not None:
        frame[26:28] = (pseudo if wrong == -1 else wrong).to_bytes(2, "big")
    field = int.from_bytes(frame[26:28], "big")
    ok = field in (0, pseudo) or naive_sum(frame[20:], pseudo) == 0xFFFF
    stats = Stats()
    out = process(bytearray(frame), len(frame), lambda p: None, stats, verify_outer_udp=True)
    assert (out is not None) == ok
    assert stats.malformed_reasons == ({} if ok else {"outer-udp-checksum": 1})
    # Without the flag (UDP sockets: the kernel checked), the frame is not looked at again.
    assert process(bytearray(frame), len(frame), lambda p: None, Stats()) is not None


def test_process_a_prefix_of_a_receive_buffer() -> None:
    frame = frame_udp()
    buf = bytearray(frame) + b"\xee" * 100
    stats = Stats()
    packet = process(buf, len(frame), lambda p: None, stats)
    assert packet is not None and len(packet.data) == len(frame)
    assert packet.buf is buf  # in place, no copy


def test_process_honours_another_port() -> None:
    frame = frame_udp(dst_port=7000)
    packet, stats = run(bytearray(frame), lambda p: None)
    assert packet is None and stats.skipped == 1
    packet, stats = run(bytearray(frame), lambda p: None, port=7000)
    assert packet is not None and stats.forwarded == 1


def test_stats_merge() -> None:
    a, b = Stats(), Stats()
    process(frame_udp(), 0, lambda p: None, a)  # length 0: malformed (truncated)
    process(frame_udp(), len(frame_udp()), lambda p: Verdict.DROP, a)
    process(frame_udp(), len(frame_udp()), lambda p: None, b)
    process(frame_udp(), len(frame_udp()), lambda p: Verdict.DROP, b)
    a.merge(b)
    assert_consistent(a)
    assert counters(a) == {
        "received": 4,
        "forwarded": 1,
        "dropped": 2,
        "malformed": 1,
        "drops": {"rule": 2},
        "malformed_reasons": {"outer-truncated": 1},
    }



def test_stats_merge_sums_flow_counters_and_ends_per_reason() -> None:
    # As the appliance sums its workers: each one's counters sent as a dict, then merged.
    a, b = Stats(), Stats()
    a.flows_active, a.flows_created, a.flows_ended = 2, 5, {"fin": 1, "idle": 2}
    b.flows_active, b.flows_created, b.flows_ended = 3, 4, {"idle": 1}
    a.flows_early_dropped, b.flow_verdict_packets = 6, 7
    total = Stats()
    for part in (a, b):
        total.merge(Stats.from_dict(part.as_dict()))
    assert (total.flows_active, total.flows_created) == (5, 9)
    assert total.flows_ended == {"fin": 1, "idle": 3}
    assert (total.flows_early_dropped, total.flow_verdict_packets) == (6, 7)
    assert a.flows_ended == {"fin": 1, "idle": 2}, "merging leaves the parts alone"

actions = st.sampled_from(["none", "forward", "drop", "garbage", "raise", "grow", "shrink"])


def scripted(action: str) -> Callable[[Packet], Any]:
    def modifier(p: Packet) -> Any:
        if action == "forward":
            return Verdict.FORWARD
        if action == "drop":
            return Verdict.DROP
        if action == "garbage":
            return "forward"
        if action == "raise":
            raise ValueError("scripted failure")
        if action in ("grow", "shrink") and p.l4_protocol != 6:
            payload = p.payload
            assert payload is not None
            p.replace_payload(bytes(payload) + b"++" if action == "grow" else b"")
        return None

    return modifier


@given(
    st.lists(
        st.tuples(gwlb_frames(max_payload=200), actions, st.sampled_from([-1, 0, 1])), max_size=8
    ),
    st.sampled_from(["drop", "forward"]),
)
def test_counters_are_exact(script: list[tuple[bytearray, str, int]], on_error: Any) -> None:
    stats = Stats()
    expected = {"forwarded": 0, "dropped": 0, "malformed": 0, "modified": 0, "errors": 0}
    for frame, action, damage in script:
        if damage == 1:
            frame[28] |= 0xC0  # Geneve version 3: malformed
        elif damage == 0:
            frame[29] |= 0x80  # a control packet
        packet = process(frame, len(frame), scripted(action), stats, on_error=on_error)
        if damage == 1:
            expected["malformed"] += 1
            outcome = "none"
        elif damage == 0 or action == "drop":
            outcome = "dropped"
        elif action in ("garbage", "raise"):
            expected["errors"] += 1
            outcome = "forwarded" if on_error == "forward" else "dropped"
        else:
            outcome = "forwarded"
        if outcome == "forwarded":
            expected["forwarded"] += 1
            assert packet is not None
            check_frame(packet.data)
            if action in ("grow", "shrink") and packet.l4_protocol != 6:
                expected["modified"] += 1
        else:
            expected["dropped"] += outcome == "dropped"
            assert packet is None
    assert_consistent(stats)
    assert stats.received == len(script)
    assert (stats.forwarded, stats.dropped, stats.malformed, stats.modifier_errors) == (
        expected["forwarded"], expected["dropped"], expected["malformed"], expected["errors"]
    )  # fmt: skip
    assert stats.modified == expected["modified"]


@pytest.mark.parametrize("needles", [frozenset({b""}), frozenset({b"a", b""})])
def test_an_interest_with_an_empty_needle_is_refused(needles: frozenset[bytes]) -> None:
    # An empty needle is in every payload; C refuses one too (GENEVE_BATCH_BAD_ARGUMENT).
    with pytest.raises(ValueError, match="non-empty"):
        Interest(frozenset({53}), None, needles)


# -- the bound pipeline -------------------------------------------------------------------------


def test_pipeline_returns_the_reply_in_the_callers_buffer() -> None:
    frame = frame_udp(b"weakly")
    original = bytes(frame)
    buf = ReceiveBuffer()
    buf[: len(frame)] = frame
    pipeline = Pipeline(lambda p: None)
    (reply,) = pipeline.handle(buf, len(frame))
    assert reply.obj is buf and bytes(reply) == bytes(buf[: len(frame)])
    # A whole outer IPv4 datagram, addressed by its bytes 16:20: back to GWLB.
    assert bytes(reply[16:20]) == original[12:16] and bytes(reply[12:16]) == original[16:20]
    assert pipeline.stats.received == pipeline.stats.forwarded == 1


@pytest.mark.parametrize(
    ("length", "modifier", "outcome"),
    [
        (None, lambda p: Verdict.DROP, {"drops": {"rule": 1}}),
        (20, lambda p: None, {"malformed_reasons": {"outer-truncated": 1}}),
        (None, lambda p: 1 / 0, {"drops": {"modifier-error": 1}}),
    ],
)
def test_pipeline_returns_nothing_to_send(
    length: int | None, modifier: Callable[[Packet], Any], outcome: dict[str, object]
) -> None:
    frame = frame_udp()
    pipeline = Pipeline(modifier)
    assert pipeline.handle(frame, len(frame) if length is None else length) == ()
    assert_consistent(pipeline.stats)
    assert {k: v for k, v in counters(pipeline.stats).items() if isinstance(v, dict)} == outcome


def test_pipeline_binds_the_policies_once() -> None:
    def grow(p: Packet) -> None:
        p.replace_in_payload(b"a", b"aaaa")

    frame = frame_udp(b"a")
    limit = len(frame) - 68  # exactly what arrives, so growing by 3 bytes is too large
    pipeline = Pipeline(grow, on_too_large="forward", max_inner_length=limit, port=6081)
    assert len(pipeline.handle(bytearray(frame), len(frame))) == 1
    assert pipeline.stats.too_large_forwarded == 1
    bad = bytearray(frame)
    bad[26:28] = b"\x12\x34"  # a wrong outer UDP checksum: seen only with verify_outer_udp
    assert len(Pipeline(lambda p: None).handle(bytearray(bad), len(bad))) == 1
    checking = Pipeline(lambda p: None, verify_outer_udp=True)
    assert checking.handle(bad, len(bad)) == ()
    assert checking.stats.malformed_reasons == {"outer-udp-checksum": 1}


@given(frame=gwlb_frames())
def test_pipeline_agrees_with_process(frame: bytes) -> None:
    def edit(p: Packet) -> None:
        if p.l4_protocol == 17:
            p.replace_in_payload(b"a", b"bb")

    stats = Stats()
    packet = process(bytearray(frame), len(frame), edit, stats)
    pipeline = Pipeline(edit)
    frames = pipeline.handle(bytearray(frame), len(frame))
    assert [bytes(f) for f in frames] == ([] if packet is None else [bytes(packet.data)])
    assert pipeline.stats.as_dict() == stats.as_dict()


def test_pipeline_counts_what_the_receiver_refused() -> None:
    pipeline = Pipeline(lambda p: None)
    pipeline.count_not_unicast()
    pipeline.count_too_long()
    pipeline.count_fast_forwarded(5)
    assert_consistent(pipeline.stats)
    assert counters(pipeline.stats) == {
        "received": 7,
        "forwarded": 5,
        "dropped": 1,
        "malformed": 1,
        "drops": {"not-unicast": 1},
        "malformed_reasons": {"oversized": 1},
    }


def test_pipeline_holds_the_modifiers_interest() -> None:
    modifier = declare_interest(lambda p: None, udp_ports=[53])
    assert Pipeline(modifier).interest.udp_ports == frozenset({53})
    assert Pipeline(lambda p: None).interest.everything
    stats = Stats()
    assert Pipeline(modifier, stats).stats is stats


@pytest.mark.parametrize("ports", [frozenset({70000}), frozenset({-1}), frozenset({True})])
def test_an_interest_with_a_port_out_of_range_is_refused(ports: frozenset[int]) -> None:
    # Python would never match it and C's 65536-flag tables have no place for it.
    with pytest.raises(ValueError, match="65535"):
        Interest(ports, None)
    with pytest.raises(ValueError, match="65535"):
        Interest(None, ports)


def test_declare_interest_takes_an_interest_made_already() -> None:
    def modifier(packet: Packet) -> None:
        return None

    interest = Interest(frozenset({53}), frozenset())
    assert declare_interest(modifier, interest=interest) is modifier
    assert interest_of(modifier) is interest
    with pytest.raises(ValueError, match="alone"):
        declare_interest(modifier, interest=interest, udp_ports=[53])
