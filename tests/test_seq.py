"""TCP rewrites that change the length: sequence adjustment per flow (geneve._seq).

Unit tests through a Pipeline on both flow tables; a property test against a reference model of
the sequence mapping (random segment sizes, rewrites, retransmissions, reordering, SACK); the C
fast path handing the adjusted flows to Python; the MSS clamp; lost state reset both ways.
(tests/test_seq_live.py sends real transfers through the emulator and the daemon.)
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.fastpath import through_fast_path
from support.frames import check_frame

import geneve
from geneve import Packet, Pipeline, UnsupportedError, Verdict, declare_interest
from geneve._flows import PyFlowTable
from geneve._seq import MAX_REGIONS, SeqDirection

try:
    from geneve._flows import CFlowTable
    from geneve._flows import _c as _flows_c
except ImportError:  # pragma: no cover
    _flows_c = None

TABLES = [
    pytest.param(PyFlowTable, id="python"),
    pytest.param(
        CFlowTable,
        id="c",
        marks=pytest.mark.skipif(_flows_c is None, reason="the C flow table is not built"),
    ),
]
CLIENT, SERVER = bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2))
ACK, PSH, SYN, FIN, RST = 0x10, 0x08, 0x02, 0x01, 0x04
MASK = 0xFFFFFFFF


def segment(
    payload: bytes = b"",
    seq: int = 1000,
    ack: int = 5000,
    flags: int = PSH | ACK,
    *,
    reply: bool = True,
    options: bytes = b"",
    cookie: int = 9,
) -> bytearray:
    """A GWLB frame around a TCP segment of 10.0.0.1:40000 <-> 10.0.0.2:80; the server's (the
    reply direction) by default. Inner checksums right, so that check_frame holds."""
    ports = (80, 40000) if reply else (40000, 80)
    src, dst = (SERVER, CLIENT) if reply else (CLIENT, SERVER)
    doff = (20 + len(options)) // 4
    tcp = struct.pack("!HHIIBBHHH", *ports, seq & MASK, ack & MASK, doff << 4, flags, 65535, 0, 0)
    body = tcp + options + payload
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(body), 1, 0, 64, 6, 0) + src + dst
    frame = geneve.build_frame(ip + body, endpoint_id=5, flow_cookie=cookie)
    packet = Packet.parse(frame)
    packet.fix_checksums()
    return frame


def tcp_of(frame: bytes | bytearray | memoryview) -> tuple[int, int, int, bytes, bytes]:
    """(seq, ack, flags, options, payload) of a frame sent, after checking every checksum."""
    facts = check_frame(frame)
    inner = facts.inner
    tcp = inner[20:]
    seq, ack = struct.unpack_from("!II", tcp, 4)
    doff = (tcp[12] >> 4) * 4
    return seq, ack, tcp[13], tcp[20:doff], facts.payload


def links(packet: Packet) -> None:
    packet.replace_in_payload(b"http://", b"https://")


class Run:
    """A pipeline with a rewriting modifier on one flow table, frames in, frames out; with
    ``fast``, through the appliance's C fast path first (the C table)."""

    def __init__(
        self, table: Any, modifier: Any = links, *, fast: bool = False, **kwargs: Any
    ) -> None:
        self.pipeline = Pipeline(modifier, flows=table(), **kwargs)
        self.now = 1.0
        self.fast: Any = None
        if fast:
            from geneve._transport import FastPath, Slots

            table = self.pipeline.flows
            assert isinstance(table, CFlowTable)
            self.slots = Slots(1, c=True)
            self.fast = FastPath(self.slots, self.pipeline.interest, 8500, 6081, table)
            self.fast.trust(0x0A000001)

    def raw(self, frame: bytearray) -> list[bytes]:
        """The frames sent for ``frame``."""
        if self.fast is not None:
            return through_fast_path(
                self.fast, self.slots, self.pipeline, frame, 0x0A000001, self.now
            )[1]
        return [bytes(out) for out in self.pipeline.handle(frame, len(frame), self.now)]

    def send(self, frame: bytearray) -> list[tuple[int, int, int, bytes, bytes]]:
        return [tcp_of(out) for out in self.raw(frame)]

    def one(self, frame: bytearray) -> tuple[int, int, int, bytes, bytes]:
        (out,) = self.send(frame)
        return out


def test_without_flows_a_tcp_length_change_is_refused() -> None:
    packet = Packet.parse(segment(b"see http://a"))
    with pytest.raises(UnsupportedError, match=r"needs flows \(Pipeline\(\.\.\., flows=True\)\)"):
        packet.replace_in_payload(b"http://", b"https://")
    with pytest.raises(UnsupportedError, match="needs flows"):
        packet.replace_payload(b"longer than before")
    # The same length needs nothing.
    packet = Packet.parse(segment(b"see http://a"))
    assert packet.replace_in_payload(b"http", b"HTTP") == 1
    stats = geneve.Stats()
    frame = segment(b"see http://a")
    assert geneve.process(frame, len(frame), links, stats) is None
    assert stats.modifier_errors == 1 and isinstance(stats.last_error, UnsupportedError)


@pytest.mark.parametrize("table", TABLES)
def test_later_segments_shift_and_acks_shift_back(table: Any) -> None:
    run = Run(table)
    assert run.one(segment(b"see http://a and http://b.", 1000))[::4] == (
        1000, b"see https://a and https://b.",
    )  # fmt: skip
    seq, _ack, _f, _o, payload = run.one(segment(b"next", 1026))
    assert (seq, payload) == (1028, b"next")
    # The client acknowledges what it saw (1032): the server hears 1030.
    assert run.one(segment(b"", 5000, 1032, ACK, reply=False))[1] == 1030
    # Its own data is not shifted: nothing was rewritten that way.
    assert run.one(segment(b"GET", 5000, 1032, PSH | ACK, reply=False))[:2] == (5000, 1030)
    assert run.pipeline.stats.seq_adjusted == 4
    assert run.pipeline.stats.modified == 4


@pytest.mark.parametrize("table", TABLES)
def test_a_retransmission_is_rewritten_by_position(table: Any) -> None:
    calls = []

    def once(packet: Packet) -> None:
        calls.append(1)
        if len(calls) == 1:  # rewrites the first transmission only
            links(packet)

    run = Run(table, once)
    text = b"0123 http://a 4567 http://b 89"
    first = run.one(segment(text, 1000))
    assert first[4] == text.replace(b"http://", b"https://")
    # The same segment again: the modifier does nothing now, the record rewrites it.
    assert run.one(segment(text, 1000))[::4] == first[::4]
    # Re-cut: [1000, 1010) holds half of the first region, [1010, ...) the rest and the second.
    head = run.one(segment(text[:10], 1000))
    tail = run.one(segment(text[10:], 1010))
    # The rule: a segment covering part of a region loses that part.
    assert head[::4] == (1000, b"0123 ")
    assert tail[::4] == (1000 + 12 + 1, b"a 4567 https://b 89")
    # What both carry agrees with the stream the receiver knows.
    stream = text.replace(b"http://", b"https://")
    for seq, _a, _f, _o, payload in (head, tail):
        assert stream[seq - 1000 : seq - 1000 + len(payload)] == payload


@pytest.mark.parametrize("table", TABLES)
def test_a_match_straddling_segments_is_left_alone(table: Any) -> None:
    run = Run(table)
    assert run.one(segment(b"one http://a htt", 1000))[4] == b"one https://a htt"
    assert run.one(segment(b"p://b two", 1016))[::4] == (1017, b"p://b two")
    # A retransmission holding it whole leaves it alone too: the receiver has the first bytes.
    out = run.one(segment(b"one http://a http://b two", 1000))
    assert out[::4] == (1000, b"one https://a http://b two")


@pytest.mark.parametrize("table", TABLES)
def test_sack_blocks_shift_back_and_lose_partial_regions(table: Any) -> None:
    run = Run(table)
    run.one(segment(b"aaaa http://x bbbb", 1000))  # region at 1005, 7 -> 8 bytes
    run.one(segment(b"cccc http://y dddd", 1018))  # sent at 1019; region at 1023
    run.one(segment(b"eeee", 1036))  # sent at 1038
    # The client SACKs 1019-1038 (the second segment) and 1038-1042, acks 1000.
    sack = struct.pack("!BBBBIIII", 1, 1, 5, 18, 1019, 1038, 1038, 1042)
    _s, ack, _f, options, _p = run.one(segment(b"", 5000, 1000, ACK, reply=False, options=sack))
    assert ack == 1000
    assert options[:2] == b"\x01\x01" and options[2:4] == b"\x05\x12"
    assert struct.unpack_from("!IIII", options, 4) == (1018, 1036, 1036, 1040)
    # A block ending inside a replacement ends at the region's start; one inside, gone.
    sack = struct.pack("!BBBBIIII", 1, 1, 5, 18, 1019, 1025, 1025, 1027)
    _s, _a, _f, options, _p = run.one(segment(b"", 5000, 1000, ACK, reply=False, options=sack))
    assert options == b"\x01\x01\x05\x0a" + struct.pack("!II", 1018, 1023) + b"\x01" * 8


@pytest.mark.parametrize("table", TABLES)
def test_acknowledged_regions_are_pruned(table: Any) -> None:
    run = Run(table)
    for i in range(300):
        seq, _ack, _f, _o, payload = run.one(segment(b"http://", 1000 + 7 * i))
        assert (seq, payload) == (1000 + 8 * i, b"https://")
        # The client acknowledges each: the record stays short.
        assert run.one(segment(b"", 5000, 1000 + 8 * (i + 1), ACK, reply=False))[1] == (
            1000 + 7 * (i + 1)
        )
    (flow,) = list(run.pipeline.flows or ())
    record = next(r for r in flow._seq if r is not None)
    assert isinstance(record, SeqDirection) and record.regions == []
    assert run.pipeline.stats.seq_resets == 0


@pytest.mark.parametrize("table", TABLES)
def test_too_many_unacknowledged_rewrites_reset_the_connection(table: Any) -> None:
    run = Run(table)
    for i in range(MAX_REGIONS):
        assert run.one(segment(b"http://", 1000 + 7 * i))[4] == b"https://"
    out = run.send(segment(b"http://", 1000 + 7 * MAX_REGIONS))
    # RST both ways: to the client (on, shifted) and back to the server.
    assert len(out) == 2
    (fseq, _a, fflags, _o, fpay), (bseq, _b, bflags, _o2, _p) = out
    assert fflags & RST and fpay == b"" and fseq == 1000 + 8 * MAX_REGIONS
    assert bflags & RST and bseq == 5000
    stats = run.pipeline.stats
    assert stats.seq_resets == 1 and stats.rejected == 1
    # The rest of the connection is dropped.
    assert run.send(segment(b"", 5000, 1000, ACK, reply=False)) == []


@pytest.mark.parametrize("table", TABLES)
def test_a_flow_ended_idle_while_adjusted_is_reset_at_its_next_packet(table: Any) -> None:
    run = Run(table)
    run.one(segment(b"x http://a", 1000))
    run.pipeline.tick(400.0)  # past the 350 s idle timeout: the record is gone
    run.now = 401.0
    out = run.send(segment(b"more", 1010))
    assert len(out) == 2
    (fseq, _a, fflags, _o, _p), (bseq, _b, bflags, _o2, _p2) = out
    assert fflags & RST and fseq == 1011  # on to the client, at the shift it had
    assert bflags & RST and bseq == 5000  # back to the server, at its acknowledgment
    assert run.pipeline.stats.seq_resets == 1
    # Once: the stragglers are dropped by the tombstone.
    assert run.send(segment(b"", 5000, 1000, ACK, reply=False)) == []


@pytest.mark.parametrize("table", TABLES)
def test_a_flow_evicted_while_adjusted_is_reset_at_its_next_packet(table: Any) -> None:
    """Only a flow that never saw a reply is evicted: here the server's, rewritten, whose
    client said nothing yet when a new flow needed its place."""
    pipeline = Pipeline(links, flows=table(max_flows=1))
    first = segment(b"x http://a", 1000)
    assert len(pipeline.handle(first, len(first), 1.0)) == 1
    other = segment(b"hello", 1, cookie=10)
    other[68 + 20 : 68 + 22] = (81).to_bytes(2, "big")  # another source port: another flow
    Packet.parse(other).fix_checksums()
    assert len(pipeline.handle(other, len(other), 2.0)) == 1
    assert pipeline.stats.flows_ended == {"evicted": 1}
    again = segment(b"more", 1010)
    out = [tcp_of(f) for f in pipeline.handle(again, len(again), 3.0)]
    assert len(out) == 2 and all(flags & RST for _s, _a, flags, _o, _p in out)
    assert pipeline.stats.seq_resets == 1


@pytest.mark.parametrize("table", TABLES)
def test_forward_verdict_flows_are_still_adjusted(table: Any) -> None:
    def once_then_forward(packet: Packet) -> None:
        links(packet)
        assert isinstance(packet, geneve.PipelinePacket) and packet.flow is not None
        packet.flow.verdict = Verdict.FORWARD

    run = Run(table, once_then_forward)
    assert run.one(segment(b"http://a", 1000))[4] == b"https://a"
    assert run.one(segment(b"http://b", 1008))[::4] == (1009, b"http://b")
    assert run.one(segment(b"", 5000, 1017, ACK, reply=False))[1] == 1016
    assert run.one(segment(b"http://a", 1000))[::4] == (1017, b"")  # acknowledged: cut


@pytest.mark.parametrize("table", TABLES)
def test_replace_payload_on_tcp_changes_the_length(table: Any) -> None:
    def redact(packet: Packet) -> None:
        if packet.payload_contains(b"secret"):
            packet.replace_payload(b"[redacted]")

    run = Run(table, redact)
    assert run.one(segment(b"a secret of 28 bytes, hidden", 1000))[::4] == (1000, b"[redacted]")
    assert run.one(segment(b"after", 1028))[::4] == (1010, b"after")
    assert run.one(segment(b"", 5000, 1015, ACK, reply=False))[1] == 1033


def mss_syn(mss: int, flags: int, reply: bool) -> bytearray:
    options = struct.pack("!BBH", 2, 4, mss) + b"\x01\x03\x03\x07"  # MSS, NOP, window scale
    return segment(b"", 1000 if reply else 4999, 0 if not reply else 5000, flags, reply=reply,
                   options=options)  # fmt: skip


@pytest.mark.parametrize("table", TABLES)
def test_the_mss_is_clamped_by_the_declared_growth(table: Any) -> None:
    modifier = declare_interest(lambda p: links(p), tcp_ports=[80], payload_contains=[b"http://"],
                                max_growth=40)  # fmt: skip
    run = Run(table, modifier)
    syn = run.one(mss_syn(1460, SYN, reply=False))
    assert syn[3][:4] == struct.pack("!BBH", 2, 4, 1420) and syn[3][4:] == b"\x01\x03\x03\x07"
    synack = run.one(mss_syn(1460, SYN | ACK, reply=True))
    assert synack[3][:4] == struct.pack("!BBH", 2, 4, 1420)
    # Never below 536 (RFC 9293's default); nothing without a declared growth.
    assert run.one(mss_syn(560, SYN, reply=False))[3][:4] == struct.pack("!BBH", 2, 4, 536)
    plain = Run(table)
    assert plain.one(mss_syn(1460, SYN, reply=False))[3][:4] == struct.pack("!BBH", 2, 4, 1460)
    with pytest.raises(ValueError, match="max_growth"):
        geneve.Interest(max_growth=-1)
    assert (geneve.Interest(max_growth=3) | geneve.Interest(max_growth=4)).max_growth == 7
    assert (geneve.Interest(max_growth=3) & geneve.Interest(max_growth=4)).max_growth == 4


@pytest.mark.parametrize("table", TABLES)
def test_a_full_size_segment_grown_fits_the_clamped_mss(table: Any) -> None:
    modifier = declare_interest(lambda p: links(p), tcp_ports=[80], max_growth=40)
    run = Run(table, modifier)
    mss = int.from_bytes(run.one(mss_syn(1460, SYN, reply=False))[3][2:4], "big")
    text = (b"see http://example.org/ " * 100)[:mss]
    grown = run.one(segment(text, 1000))[4]
    # 59 links in it: the 40 the declared growth allows are rewritten, the rest left alone.
    assert text.count(b"http://") == 59
    assert len(grown) == len(text) + 40 == 1460 and grown.count(b"https://") == 40
    assert grown == text.replace(b"http://", b"https://", 40)
    # The next segment goes on from the record.
    assert run.one(segment(b"http://x", 1000 + len(text)))[::4] == (1000 + 1460, b"https://x")


# -- the reference model -----------------------------------------------------------------------

NEEDLE, REPLACEMENT = b"http://", b"https://"


class Reference:
    """The rules, from the segments in the order they reach the pipeline (start, end in the
    sender's stream): the high mark is the end of the data forwarded; a direction's record
    starts with the first segment holding a whole match; from then on a data segment beyond
    the high mark is dropped; a whole match at or after the high mark (or the segment's start,
    for the segment that starts the record) and the last region's end is rewritten; the rest
    is left alone."""

    def __init__(self, text: bytes) -> None:
        self.text = text
        self.high = 0
        self.record = False
        self.regions: list[tuple[int, int]] = []

    def arrive(self, start: int, end: int) -> bool:
        """Whether the segment is forwarded."""
        if self.record and end > start and start > self.high:
            return False
        at = self.text.find(NEEDLE, start, end)
        limit = self.high if self.record else max(self.high, start)
        while at >= 0:
            self.record = True
            last = self.regions[-1][1] if self.regions else 0
            if at + len(NEEDLE) <= end and at >= limit and at >= last:
                self.regions.append((at, at + len(NEEDLE)))
            at = self.text.find(NEEDLE, at + len(NEEDLE), end)
        self.high = max(self.high, end)
        return True


def receiver_stream(text: bytes, regions: list[tuple[int, int]]) -> bytes:
    out = bytearray()
    at = 0
    for start, end in regions:
        out += text[at:start] + REPLACEMENT
        at = end
    return bytes(out + text[at:])


@st.composite
def transfers(draw: st.DrawFn) -> tuple[bytes, list[int], list[int], int]:
    pieces = draw(st.lists(st.sampled_from([b"ab", b"http://", b"x", b"http:/", b" "]),
                           min_size=5, max_size=60))  # fmt: skip
    text = b"".join(pieces)
    cuts = sorted(set(draw(st.lists(st.integers(1, len(text) - 1), max_size=20))))
    order = draw(st.permutations(range(len(cuts) + 1)))
    isn = draw(st.sampled_from([1000, 0xFFFFFFF0, 0x7FFFFFFF]))
    return text, cuts, list(order), isn


PATHS = [
    *TABLES,
    pytest.param(
        "fast",
        id="c-fast-path",
        marks=pytest.mark.skipif(_flows_c is None, reason="the C flow table is not built"),
    ),
]


@pytest.mark.parametrize("table", PATHS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(transfer=transfers(), data=st.data())
def test_the_mapping_agrees_with_a_reference_model(
    table: Any, transfer: tuple[bytes, list[int], list[int], int], data: st.DataObject
) -> None:
    """Segments reach the pipeline in a random order, then the receiver acknowledges (with SACK)
    and the sender retransmits random re-cuts from what it is told; every segment the receiver
    gets agrees with one stream, the reference's, and the transfer completes."""
    text, cuts, order, isn = transfer
    bounds = [0, *cuts, len(text)]
    pieces = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
    # Reorder only a little (a neighbour swap here and there), as a network does.
    arrivals = [pieces[i] for i in sorted(range(len(pieces)), key=lambda i: i + order[i] % 2 * 1.5)]
    model = Reference(text)
    if table == "fast":  # what has no link in it, and the ACKs, go through C first
        wants = declare_interest(lambda p: links(p), tcp_ports=[80], payload_contains=[NEEDLE])
        run = Run(CFlowTable, wants, fast=True)
    else:
        run = Run(table)
    got: dict[int, int] = {}  # receiver: byte position -> byte

    # Some segments are lost after the pipeline (the receiver never gets them).
    lost = data.draw(st.sets(st.integers(0, len(arrivals) - 1), max_size=3), label="lost")

    def deliver(start: int, end: int, lose: bool = False) -> None:
        forwarded = model.arrive(start, end)
        stream = receiver_stream(text, model.regions)
        sent = run.send(segment(text[start:end], isn + start))
        assert forwarded == bool(sent)
        for seq, _ack, _flags, _opt, payload in sent:
            if lose:
                continue
            pos = (seq - isn) & MASK
            assert stream[pos : pos + len(payload)] == payload
            for i, byte in enumerate(payload):
                got[pos + i] = byte

    for i, (start, end) in enumerate(arrivals):
        deliver(start, end, i in lost)
    for _round in range(4 * len(text) + 8):
        stream = receiver_stream(text, model.regions)
        rcv_nxt = 0
        while rcv_nxt in got:
            rcv_nxt += 1
        if rcv_nxt >= len(stream):
            break
        # The receiver's ACK and one SACK block past the hole, through the pipeline.
        beyond = sorted(p for p in got if p > rcv_nxt)
        options = b""
        if beyond:
            left = right = beyond[0]
            while right in got:
                right += 1
            options = struct.pack("!BBBBII", 1, 1, 5, 10, (isn + left) & MASK, (isn + right) & MASK)
        (told,) = run.send(segment(b"", 7000, isn + rcv_nxt, ACK, reply=False, options=options))
        una = (told[1] - isn) & MASK
        assert una <= len(text)
        if told[3][2:3]:  # SACK blocks, in the sender's stream, past what it was told
            for left, right in struct.iter_unpack("!II", told[3][4:]):
                assert una <= (left - isn) & MASK < (right - isn) & MASK <= len(text)
        # The sender retransmits from there, one MSS-sized or smaller random cut.
        size = data.draw(st.integers(len(NEEDLE) + 1, 40), label="retransmission size")
        deliver(una, min(len(text), una + size))
    else:
        pytest.fail("the transfer did not complete")
    stream = receiver_stream(text, model.regions)
    assert bytes(got[i] for i in range(len(stream))) == stream


@pytest.mark.skipif(_flows_c is None, reason="the C flow table is not built")
def test_the_fast_path_adjusts_what_it_can_and_hands_the_rest_to_python() -> None:
    """Segments without the needle pass C: once their flow has a record, C shifts those past
    its last region and hands the rest to Python; a SYN goes to Python for its MSS when a
    growth is declared."""
    pytest.importorskip("geneve._batch_cffi", reason="the C batch module is not built")
    from geneve._transport import FastPath, Slots

    modifier = declare_interest(lambda p: links(p), tcp_ports=[80], payload_contains=[b"http://"],
                                max_growth=8)  # fmt: skip
    pipeline = Pipeline(modifier, flows=CFlowTable())
    table = pipeline.flows
    assert isinstance(table, CFlowTable)
    slots = Slots(4, c=True)
    fast = FastPath(slots, pipeline.interest, 8500, 6081, table)
    source = 0x0A000001
    fast.trust(source)

    def through(frame: bytearray) -> tuple[bool, list[tuple[int, int, int, bytes, bytes]]]:
        in_c, sent = through_fast_path(fast, slots, pipeline, frame, source, 1.0)
        return in_c, [tcp_of(f) for f in sent]

    fast_syn, (syn,) = through(mss_syn(1460, SYN, reply=False))
    assert not fast_syn and syn[3][:4] == struct.pack("!BBH", 2, 4, 1452)
    # Before any rewrite, a segment without the needle stays in C.
    assert through(segment(b"hello", 995))[0]
    in_c, (out,) = through(segment(b"see http://a", 1000))
    assert not in_c and out[::4] == (1000, b"see https://a")
    # After it, C shifts what lies past the last region itself, checksum kept right
    # (tcp_of checks it); so are the client's ACKs past it shifted back.
    in_c, (out,) = through(segment(b"plain", 1012))
    assert in_c and out[::4] == (1013, b"plain")
    in_c, (ack,) = through(segment(b"", 5000, 1018, ACK, reply=False))
    assert in_c and ack[1] == 1017
    # What needs the whole record goes to Python: data before the last region's end, an ACK
    # before its replacement's end, SACK blocks.
    in_c, (old,) = through(segment(b"hello", 995))
    # (acknowledged already, by the ACK C saw: an empty segment at the acknowledged point)
    assert not in_c and old[::4] == (1018, b"")
    # (an old ACK, inside the replacement: the region is pruned already, it goes on as 1007)
    in_c, (inside,) = through(segment(b"", 5000, 1008, ACK, reply=False))
    assert not in_c and inside[1] == 1007
    sack = struct.pack("!BBBBII", 1, 1, 5, 10, 1013, 1018)
    in_c, (sacked,) = through(segment(b"", 5000, 1000, ACK, reply=False, options=sack))
    assert not in_c and sacked[3][4:] == struct.pack("!II", 1012, 1017)
    # The record knows what C forwarded and what it saw acknowledged.
    flow = next(iter(table))
    record = next(r for r in flow._seq if r is not None)
    assert record.high == 17 and record.base == 17


@pytest.mark.parametrize("table", TABLES)
def test_data_on_a_syn_is_left_alone(table: Any) -> None:
    run = Run(table)
    assert run.one(segment(b"http://a", 999, 0, SYN, reply=False))[::4] == (999, b"http://a")
    assert run.pipeline.stats.modifier_errors == 0


@pytest.mark.parametrize("path", PATHS)
def test_window_and_timestamps_are_left_as_they_are(path: Any) -> None:
    """The shift touches the sequence and acknowledgment numbers only: the window field and
    the timestamp option (RFC 7323) go through as they came, and every checksum is right."""
    if path == "fast":
        wants = declare_interest(lambda p: links(p), tcp_ports=[80], payload_contains=[NEEDLE])
        run = Run(CFlowTable, wants, fast=True)
    else:
        run = Run(path)
    ts = b"\x01\x01\x08\x0a" + struct.pack("!II", 0x11223344, 0x55667788)
    run.one(segment(b"see http://a", 1000, options=ts))
    for frame in (segment(b"more", 1012, options=ts),
                  segment(b"", 5000, 1017, ACK, reply=False, options=ts)):  # fmt: skip
        (out,) = run.raw(frame)
        sent = check_frame(out).inner[20:]
        assert sent[14:16] == b"\xff\xff"  # the window
        assert sent[20:32] == ts
    assert run.pipeline.stats.modifier_errors == 0


@pytest.mark.parametrize("table", TABLES)
def test_the_replace_rule_declares_its_growth(table: Any) -> None:
    from geneve import rules

    modifier = rules.replace(b"http://", b"https://", max_growth=20)
    assert geneve.interest_of(modifier).max_growth == 20
    assert geneve.interest_of(modifier).needles == frozenset((b"http://",))
    run = Run(table, modifier)
    assert run.one(mss_syn(1460, SYN, reply=False))[3][:4] == struct.pack("!BBH", 2, 4, 1440)
    assert run.one(segment(b"see http://a", 1000))[4] == b"see https://a"
    assert run.one(segment(b"x", 1012))[0] == 1013


def segment6(payload: bytes, seq: int, ack: int = 5000, flags: int = PSH | ACK) -> bytearray:
    """The server's segment of segment(), over IPv6."""
    server, client = (
        bytes.fromhex("20010db8" + "00" * 11 + "02"),
        bytes.fromhex("20010db8" + "00" * 11 + "01"),
    )
    tcp = struct.pack("!HHIIBBHHH", 80, 40000, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
    ip = struct.pack("!IHBB", 0x60000000, len(tcp), 6, 64) + server + client
    frame = geneve.build_frame(ip + tcp, endpoint_id=5, flow_cookie=9)
    Packet.parse(frame).fix_checksums()
    return frame


@pytest.mark.parametrize("table", TABLES)
def test_ipv6_segments_are_adjusted_too(table: Any) -> None:
    pipeline = Pipeline(links, flows=table())
    sent = []
    for frame in (segment6(b"see http://a", 1000), segment6(b"more", 1012)):
        (out,) = pipeline.handle(frame, len(frame), 1.0)
        facts = check_frame(out)
        sent.append((struct.unpack_from("!I", facts.inner, 40 + 4)[0], facts.payload))
    assert sent == [(1000, b"see https://a"), (1013, b"more")]


@pytest.mark.parametrize("table", TABLES)
def test_a_second_rewrite_earlier_in_the_segment_counts_too(table: Any) -> None:
    def both(packet: Packet) -> None:
        packet.replace_in_payload(b"http://", b"https://")
        packet.replace_in_payload(b"foo", b"foobar")  # before the link: recorded before it

    run = Run(table, both)
    assert run.one(segment(b"foo http://a foo", 1000))[4] == b"foobar https://a foobar"
    assert run.one(segment(b"x", 1016))[0] == 1016 + 7
    assert run.one(segment(b"", 5000, 1024, ACK, reply=False))[1] == 1017

    # Overlapping rewrites: the second is left alone.
    def overlapping(packet: Packet) -> None:
        links(packet)
        packet.replace_in_payload(b"p://a", b"P://A!")

    run = Run(table, overlapping)
    assert run.one(segment(b"http://a", 1000))[4] == b"https://a"


@pytest.mark.parametrize("table", TABLES)
def test_the_declared_growth_bounds_the_whole_segment(table: Any) -> None:
    def twice(packet: Packet) -> None:
        packet.replace_in_payload(b"a", b"aa")
        packet.replace_in_payload(b"b", b"bb")

    run = Run(table, declare_interest(twice, max_growth=3))
    assert run.one(segment(b"aabb", 1000))[4] == b"aaaabbb"
