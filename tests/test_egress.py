"""geneve.rules.egress: the domain lists' semantics, each flow classified by its TLS SNI, HTTP
Host or DNS names through a Pipeline with flows on, the REFUSED answer, from_env and reload."""

from __future__ import annotations

import ipaddress
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.frames import FLOW_TABLES as TABLES
from support.frames import (
    TCP_ACK,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    check_frame,
    frame_of,
    make_inner,
    tcp_segment,
)
from support.messages import client_hello, dns_query, http_request

import geneve
from geneve import Packet, Pipeline, Verdict, interest_of
from geneve.inspect import dns_refused, parse_dns_query
from geneve.rules.egress import DomainFilter, DomainList, from_env

CLIENT, SERVER = "10.0.0.1", "10.0.0.2"
CLIENT6, SERVER6 = "2001:db8::1", "2001:db8:1::2"


# -- frames -----------------------------------------------------------------------------------


def tcp(
    payload: bytes = b"",
    seq: int = 1000,
    flags: int = TCP_PSH | TCP_ACK,
    *,
    reply: bool = False,
    sport: int = 40000,
    dport: int = 443,
    v6: bool = False,
) -> bytearray:
    """A GWLB frame around one TCP segment between the client's sport and the server's dport."""
    client, server = (CLIENT6, SERVER6) if v6 else (CLIENT, SERVER)
    return tcp_segment(client, server, payload, seq, flags, reply=reply, sport=sport, dport=dport)


def udp(payload: bytes, sport: int = 40000, dport: int = 53, *, reply: bool = False) -> bytearray:
    """A GWLB frame around one UDP datagram, its checksums right."""
    a, b = ipaddress.ip_address(CLIENT).packed, ipaddress.ip_address(SERVER).packed
    ports, (src, dst) = ((dport, sport), (b, a)) if reply else ((sport, dport), (a, b))
    body = struct.pack("!HHHH", *ports, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(body), 7, 0, 64, 17, 0) + src + dst
    frame = geneve.build_frame(ip + body, endpoint_id=5, flow_cookie=10)
    packet = Packet.parse(frame)
    packet.mark_modified()
    packet.fix_checksums()
    return frame


def run(pipeline: Pipeline, frames: list[bytearray], now: float = 1.0) -> list[list[bytes]]:
    """What the pipeline sends for each frame (each handled in a copy)."""
    out = []
    for frame in frames:
        buf = bytearray(frame)
        out.append([bytes(f) for f in pipeline.handle(buf, len(buf), now)])
    return out


def swapped(frame: bytearray) -> bytes:
    out = bytearray(frame)
    out[12:16], out[16:20] = frame[16:20], frame[12:16]
    return bytes(out)


def handshake(sport: int = 40000, dport: int = 443, v6: bool = False) -> list[bytearray]:
    return [
        tcp(b"", 999, TCP_SYN, sport=sport, dport=dport, v6=v6),
        tcp(b"", 4999, TCP_SYN | TCP_ACK, reply=True, sport=sport, dport=dport, v6=v6),
        tcp(b"", 1000, TCP_ACK, sport=sport, dport=dport, v6=v6),
    ]


def is_reset(frame: bytes) -> bool:
    t = Packet.parse(bytearray(frame)).tcp
    return t is not None and bool(t.flags & TCP_RST)


# -- the domain lists -------------------------------------------------------------------------

LISTS: list[tuple[list[str], list[str], str, bool]] = [
    # (allow, deny, name, allowed)
    ([".example.com"], [], "example.com", True),
    ([".example.com"], [], "www.example.com", True),
    ([".example.com"], [], "a.b.example.com", True),
    ([".example.com"], [], "badexample.com", False),
    ([".example.com"], [], "example.com.evil.net", False),
    (["www.example.com"], [], "www.example.com", True),
    (["www.example.com"], [], "example.com", False),
    (["www.example.com"], [], "a.www.example.com", False),
    (["WWW.Example.COM."], [], "www.example.com", True),
    (["www.example.com"], [], "WWW.EXAMPLE.COM.", True),
    ([".example.com"], ["bad.example.com"], "bad.example.com", False),
    ([".example.com"], ["bad.example.com"], "good.example.com", True),
    ([".example.com"], [".example.com"], "example.com", False),  # deny wins
    (["x.example.com"], [".example.com"], "x.example.com", False),
    ([], [".evil.net"], "evil.net", False),
    ([], [".evil.net"], "anything.else", True),  # a deny list alone lets the rest go
    (["a.com"], [], "b.com", False),  # an allow list denies the rest
    ([], [], "anything.at.all", True),
    ([".com"], [], "x.com", True),
]


@pytest.mark.parametrize(("allow", "deny", "name", "allowed"), LISTS)
def test_domain_list_semantics(allow: list[str], deny: list[str], name: str, allowed: bool) -> None:
    assert DomainFilter(allow, deny).allows(name) is allowed


def test_domain_list_membership() -> None:
    listed = DomainList([".example.com", "host.test"])
    assert listed.matches("deep.sub.example.com") and listed.matches("host.test")
    assert not listed.matches("sub.host.test") and not listed.matches("com")
    assert not DomainList() and listed


@pytest.mark.parametrize("bad", ["", " ", "exa mple.com", "a..b", "..com", "http://x.com", "*"])
def test_an_entry_that_is_not_a_name_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a domain name"):
        DomainFilter([bad])


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="action"):
        DomainFilter(action="block")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unclassified"):
        DomainFilter(unclassified="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ports"):
        DomainFilter(ports=[0])
    with pytest.raises(TypeError):
        DomainList("example.com")


def test_an_unnamed_flow_goes_by_the_default() -> None:
    assert not DomainFilter().allows(None)
    assert DomainFilter(unclassified="allow").allows(None)


# -- TLS and HTTP through the pipeline --------------------------------------------------------


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_an_allowed_sni_forwards_the_flow_and_decides_it_once(table: Any, v6: bool) -> None:
    egress = DomainFilter([".example.com"])
    p = Pipeline(egress, flows=table())
    frames = [*handshake(v6=v6), tcp(client_hello("www.example.com"), 1000, v6=v6)]
    assert run(p, frames) == [[swapped(f)] for f in frames]
    assert p.flows is not None
    (flow,) = list(p.flows)
    assert flow.verdict is Verdict.FORWARD
    # The rest of the flow, both ways, goes by its verdict.
    later = [tcp(b"x" * 100, 4000, v6=v6), tcp(b"y" * 100, 5000, reply=True, v6=v6)]
    calls = p.stats.flow_verdict_packets
    assert run(p, later) == [[swapped(f)] for f in later]
    assert p.stats.flow_verdict_packets == calls + 2
    assert egress.counters()["allowed"] == {"tls": 1, "http": 0, "dns": 0, "unclassified": 0}


@pytest.mark.parametrize("table", TABLES)
def test_a_denied_sni_is_dropped_or_reset(table: Any) -> None:
    hello = client_hello("evil.example.net")
    dropper = Pipeline(DomainFilter([".example.com"]), flows=table())
    assert run(dropper, [*handshake(), tcp(hello)])[-1] == []
    assert dropper.stats.drops == {"rule": 1}
    egress = DomainFilter([".example.com"], action="reject")
    rejecter = Pipeline(egress, flows=table())
    (refusal,) = run(rejecter, [*handshake(), tcp(hello)])[-1]
    assert is_reset(refusal)
    # The flow stays refused: the server's reply is refused too, never forwarded.
    for frame in run(rejecter, [tcp(b"late", 5000, reply=True)])[0]:
        assert is_reset(frame)
    assert egress.counters()["denied"]["tls"] == 1


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("allowed", [True, False])
def test_a_hello_in_small_segments_is_held_then_released_in_order_or_dropped(
    table: Any, allowed: bool
) -> None:
    hello = client_hello("api.example.com" if allowed else "api.other.org", key_share=1216)
    assert len(hello) > 1400
    pieces = [hello[i : i + 200] for i in range(0, len(hello), 200)]
    segments = [tcp(piece, 1000 + 200 * i) for i, piece in enumerate(pieces)]
    # The server's segments in between (none before the hello, in TCP; here a stray one)
    # go on and release nothing.
    stray = tcp(b"", 5000, TCP_ACK, reply=True)
    p = Pipeline(DomainFilter([".example.com"]), flows=table())
    sent = run(p, [*handshake(), *segments[:2], stray, *segments[2:]])
    assert sent[:3] == [[swapped(f)] for f in handshake()]
    assert sent[3:5] == [[], []] and sent[5] == [swapped(stray)]
    assert all(out == [] for out in sent[6:-1])
    if allowed:
        assert sent[-1] == [swapped(f) for f in segments]
        assert p.stats.held_released == len(segments) - 1
    else:
        assert sent[-1] == []
        assert p.stats.drops == {"hold": len(segments) - 1, "rule": 1}
    assert p.stats.held_bytes == 0


@pytest.mark.parametrize("port", [8443, 80, 5000])
def test_the_port_is_not_the_classifier(port: int) -> None:
    p = Pipeline(DomainFilter(["ok.test"]), flows=True)
    assert run(p, [tcp(client_hello("ok.test"), dport=port, sport=41000)]) != [[]]
    assert run(p, [tcp(client_hello("no.test"), dport=port, sport=41001)]) == [[]]
    ok = tcp(http_request(host="ok.test:8080"), dport=port, sport=41002)
    assert run(p, [ok]) == [[swapped(ok)]]
    assert run(p, [tcp(http_request(host="no.test"), dport=port, sport=41003)]) == [[]]


@pytest.mark.parametrize("action", ["drop", "reject"])
def test_http_by_its_host_in_two_segments(action: str) -> None:
    egress = DomainFilter([".example.com"], action=action)  # type: ignore[arg-type]
    p = Pipeline(egress, flows=True)
    good = http_request(host="www.example.com")
    first, second = tcp(good[:10], 1000, dport=80), tcp(good[10:], 1010, dport=80)
    assert run(p, [first, second]) == [[], [swapped(first), swapped(second)]]
    bad = tcp(http_request(host="www.example.org"), 1000, dport=80, sport=40001)
    (out,) = run(p, [bad])
    assert out == [] if action == "drop" else len(out) == 1 and is_reset(out[0])
    assert egress.counters() == {
        "allowed": {"tls": 0, "http": 1, "dns": 0, "unclassified": 0},
        "denied": {"tls": 0, "http": 1, "dns": 0, "unclassified": 0},
    }


@pytest.mark.parametrize(
    ("first", "why"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "another protocol"),
        (client_hello(None), "a ClientHello without SNI"),
        (http_request(host=None, version="HTTP/1.0"), "a request without Host"),
        (b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", "a malformed hello"),
    ],
)
@pytest.mark.parametrize("default", ["deny", "allow"])
def test_an_unclassified_flow_goes_by_the_default(first: bytes, why: str, default: str) -> None:
    egress = DomainFilter(["example.com"], unclassified=default)  # type: ignore[arg-type]
    p = Pipeline(egress, flows=True)
    frame = tcp(first)
    expected = [[swapped(frame)]] if default == "allow" else [[]]
    assert run(p, [frame]) == expected, why
    outcome = "allowed" if default == "allow" else "denied"
    assert egress.counters()[outcome]["unclassified"] == 1


def test_a_stream_start_full_without_a_name_is_unclassified() -> None:
    # An HTTP head that never ends: the stream start fills before a decision.
    egress = DomainFilter(["example.com"])
    p = Pipeline(egress, flows=True)
    head = b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * 1300
    frames = [tcp(head, 1000)] + [
        tcp(b"b" * 1300, 1000 + len(head) + 1300 * i) for i in range(geneve.STREAM_LIMIT // 1300)
    ]
    sent = run(p, frames)
    assert all(out == [] for out in sent)
    assert egress.counters()["denied"]["unclassified"] == 1 and p.stats.held_bytes == 0


def test_tcp_without_flows_is_unclassified() -> None:
    egress = DomainFilter(["example.com"], unclassified="deny")
    p = Pipeline(egress)
    assert run(p, [tcp(client_hello("example.com"))]) == [[]]
    assert egress.counters()["denied"]["unclassified"] == 1


def test_ports_limit_which_tcp_flows_are_inspected() -> None:
    egress = DomainFilter(["ok.test"], ports=[443])
    interest = interest_of(egress)
    assert interest.tcp_ports == frozenset({443, 53}) and interest.udp_ports == frozenset({53})
    assert interest_of(DomainFilter()).tcp_ports is None
    p = Pipeline(egress, flows=True)
    other = tcp(b"SSH-2.0-x\r\n", dport=22)
    assert run(p, [other]) == [[swapped(other)]]
    assert run(p, [tcp(b"SSH-2.0-x\r\n", dport=443)]) == [[]]


# -- DNS --------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", TABLES)
def test_dns_over_udp_query_by_query(table: Any) -> None:
    egress = DomainFilter([".example.com"])
    p = Pipeline(egress, flows=table())
    good, bad = udp(dns_query((("www.example.com", 1, 1),))), udp(dns_query((("x.org", 1, 1),)))
    answer = udp(b"\x12\x34\x81\x80" + bytes(8), reply=True)
    # Decided query by query, on the same flow: a denied one leaves the next allowed one be.
    assert run(p, [good, bad, good, answer]) == [[swapped(good)], [], [swapped(good)], [
        swapped(answer)]]  # fmt: skip
    assert egress.counters()["allowed"]["dns"] == 2 and egress.counters()["denied"]["dns"] == 1
    # A query with two questions is denied when either name is.
    both = udp(dns_query((("a.example.com", 1, 1), ("x.org", 28, 1))), sport=40001)
    assert run(p, [both]) == [[]]


def test_a_denied_udp_query_is_answered_refused() -> None:
    query = dns_query((("tracker.example.net", 28, 1),), ident=0xBEEF, edns=True)
    frame = udp(query, sport=51000)
    p = Pipeline(DomainFilter([".example.com"], action="reject"), flows=True)
    (out,) = run(p, [frame])
    (answer,) = out
    facts = check_frame(answer)  # every length and checksum right
    assert facts.outer_dst == bytes(frame[12:16])  # back to GWLB
    inner = facts.inner
    assert inner[12:16] == ipaddress.ip_address(SERVER).packed
    assert inner[16:20] == ipaddress.ip_address(CLIENT).packed
    assert struct.unpack_from("!HH", inner, 20) == (53, 51000)
    assert facts.payload == dns_refused(query)
    ident, flags, qdcount = struct.unpack_from("!HHH", facts.payload)
    assert (ident, flags & 0x8000, flags & 0xF, qdcount) == (0xBEEF, 0x8000, 5, 1)
    assert facts.payload[12:] == query[12 : 12 + len(facts.payload) - 12]
    assert p.stats.forwarded == 1 and p.stats.dropped == 0


def test_a_denied_query_over_ipv6_is_answered_refused_too() -> None:
    query = dns_query((("x.org", 1, 1),), ident=7)
    inner = make_inner(6, "udp", query, src=CLIENT6, dst=SERVER6, sport=40000, dport=53)
    p = Pipeline(DomainFilter(deny=["x.org"], action="reject"), flows=True)
    (out,) = run(p, [frame_of(inner)])
    (answer,) = out
    facts = check_frame(answer)
    assert facts.inner[8:24] == ipaddress.ip_address(SERVER6).packed
    assert facts.inner[24:40] == ipaddress.ip_address(CLIENT6).packed
    assert struct.unpack_from("!HH", facts.inner, 40) == (53, 40000)
    assert facts.payload == dns_refused(query)


@pytest.mark.parametrize("action", ["drop", "reject"])
def test_dns_over_tcp_by_its_first_query(action: str) -> None:
    egress = DomainFilter([".example.com"], action=action)  # type: ignore[arg-type]
    p = Pipeline(egress, flows=True)
    query = dns_query((("ns.example.com", 1, 1),), tcp=True)
    a, b = tcp(query[:5], 1000, dport=53), tcp(query[5:], 1005, dport=53)
    assert run(p, [a, b]) == [[], [swapped(a), swapped(b)]]
    denied = tcp(dns_query((("x.org", 1, 1),), tcp=True), 1000, dport=53, sport=40001)
    (out,) = run(p, [denied])
    assert out == [] if action == "drop" else len(out) == 1 and is_reset(out[0])
    assert egress.counters()["allowed"]["dns"] == 1 and egress.counters()["denied"]["dns"] == 1


def test_udp_other_than_dns_and_malformed_queries() -> None:
    egress = DomainFilter(["example.com"])
    p = Pipeline(egress, flows=True)
    other = udp(b"anything", dport=123)
    assert run(p, [other]) == [[swapped(other)]]
    assert run(p, [udp(b"\x00\x01\x00\x00\x00\x01\xff")]) == [[]]  # cut short: unclassified
    assert egress.counters()["denied"]["unclassified"] == 1
    assert parse_dns_query(dns_query()).questions[0].name == "example.com"


# -- configuration ----------------------------------------------------------------------------


def test_reload_reads_the_file_again(tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("# allowed\n.example.com\n-bad.example.com  # denied\n\n")
    egress = DomainFilter(["given.test"], file=names)
    assert egress.allows("www.example.com") and not egress.allows("bad.example.com")
    assert egress.allows("given.test") and not egress.allows("other.test")
    names.write_text("other.test\n")
    egress.reload()
    assert egress.allows("other.test") and egress.allows("given.test")
    assert not egress.allows("www.example.com")
    names.write_text("not a name\n")
    with pytest.raises(ValueError, match=r"names\.txt:1"):
        egress.reload()
    assert egress.allows("other.test")  # a failed reload keeps the lists in use


def test_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = tmp_path / "names.txt"
    names.write_text("-deny.example.com\nfile.test\n")
    monkeypatch.setenv("GENEVE_EGRESS_ALLOW", ".example.com, api.test ,")
    monkeypatch.setenv("GENEVE_EGRESS_DENY", "x.example.com")
    monkeypatch.setenv("GENEVE_EGRESS_ACTION", "reject")
    monkeypatch.setenv("GENEVE_EGRESS_FILE", str(names))
    egress = from_env()
    assert egress.action == "reject" and egress.unclassified == "deny"
    allowed = {n: egress.allows(n) for n in ("a.example.com", "api.test", "file.test")}
    assert allowed == {"a.example.com": True, "api.test": True, "file.test": True}
    assert not egress.allows("x.example.com") and not egress.allows("deny.example.com")


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("GENEVE_EGRESS_ACTION", "block", "GENEVE_EGRESS_ACTION"),
        ("GENEVE_EGRESS_ALLOW", "ok.test,not a name", "GENEVE_EGRESS_ALLOW"),
        ("GENEVE_EGRESS_DENY", "a..b", "GENEVE_EGRESS_DENY"),
        ("GENEVE_EGRESS_FILE", "/nonexistent/names.txt", "GENEVE_EGRESS_FILE"),
        ("GENEVE_EGRESS_UNCLASSIFIED", "perhaps", "GENEVE_EGRESS_UNCLASSIFIED"),
    ],
)
def test_the_daemon_says_a_bad_setting_in_one_line(name: str, value: str, says: str) -> None:
    env = {"PATH": "/usr/bin:/bin", name: value}
    done = subprocess.run(
        [sys.executable, "-m", "geneve.appliance", "--rules", "geneve.rules.egress:from_env"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and says in lines[0], done.stderr
