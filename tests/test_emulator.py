"""The GWLB emulator: its encapsulation and reply checker on crafted frames, its flow and
reply accounting on a data plane without sockets, and, in network namespaces (root), the blog
demo with real ping and nc through the real appliance, broken appliances on the wire, and
teardown after success, exceptions, signals and dead runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.utils import checksum as scapy_checksum
from support.netns import netns_unavailable

import geneve
from geneve import _headers
from geneve._emulator import (
    NETNS_PREFIX,
    Addressing,
    DataPlane,
    Emulator,
    EmulatorConfig,
    EmulatorError,
    Expected,
    Names,
    check_inner,
    check_reply,
    checker,
    cleanup,
    encapsulate,
    flow_key,
    format_summary,
    geneve_header,
    netns,
    netns_list,
)
from geneve._emulator import flows as emu_flows
from geneve._emulator import namespaces as emu_namespaces
from geneve._emulator.checker import checksum, checksum_ok
from geneve.rules.reference import modifier as reference_modifier

GWLB = socket.inet_aton("10.200.3.1")
APPLIANCE = socket.inet_aton("10.200.3.2")
SPORT = 43210
GENEVE = geneve_header(geneve.ETH_P_IPV4, 0x0E1B2C3D4E5F6071, 0x0A77AC4ED00D0001, 0xC0FFEE01)
EXPECTED = Expected(GWLB, APPLIANCE, SPORT, GENEVE)


def udp_inner(payload: bytes = b"weakly typed programming language\n") -> bytes:
    return bytes(IP(src="10.200.1.2", dst="10.200.2.2") / UDP(sport=40000, dport=3000) / payload)


def request(inner: bytes, *, udp_checksum: bool = False, geneve_bytes: bytes = GENEVE) -> bytes:
    return bytes(
        encapsulate(
            inner, geneve_bytes, src=GWLB, dst=APPLIANCE, source_port=SPORT,
            udp_checksum=udp_checksum,
        )
    )  # fmt: skip


def codec_reply(frame: bytes) -> bytes:
    """What the project's pipeline (reference rules) sends back for ``frame``."""
    buf = bytearray(frame)
    packet = geneve.process(buf, len(buf), reference_modifier, geneve.Stats())
    assert packet is not None
    return bytes(packet.data)


def swapped(frame: bytes) -> bytearray:
    """A minimal correct echo: outer addresses swapped, nothing else touched."""
    f = bytearray(frame)
    f[12:16], f[16:20] = frame[16:20], frame[12:16]
    return f


# -- encapsulation as GWLB does it ------------------------------------------------------------


def test_the_checker_states_the_codecs_protocol_constants() -> None:
    """One fact, two statements: the checker keeps its own (it imports no codec), checked here."""
    assert (checker.GENEVE_PORT, checker.GWLB_OPTION_CLASS) == (
        geneve.GENEVE_PORT,
        _headers.GWLB_OPTION_CLASS,
    )
    assert (checker.ETH_P_IPV4, checker.ETH_P_IPV6) == (geneve.ETH_P_IPV4, geneve.ETH_P_IPV6)
    assert checker.GWLB_GENEVE_LENGTH == 40


def test_geneve_header_is_the_gwlb_layout() -> None:
    assert len(GENEVE) == 40
    assert GENEVE[:8] == bytes([8, 0, 0x08, 0x00, 0, 0, 0, 0])  # Opt Len 8, VNI 0, IPv4
    options = [GENEVE[8:20], GENEVE[20:32], GENEVE[32:40]]
    assert [o[:4] for o in options] == [
        bytes.fromhex("01080102"),
        bytes.fromhex("01080202"),
        bytes.fromhex("01080301"),
    ]
    assert options[2][4:] == bytes.fromhex("c0ffee01")


@pytest.mark.parametrize("udp_checksum", [False, True])
def test_encapsulated_frame_reads_back_with_the_codec(udp_checksum: bool) -> None:
    frame = request(udp_inner(), udp_checksum=udp_checksum)
    assert len(frame) == 68 + len(udp_inner())
    packet = geneve.Packet.parse(frame)
    assert packet.gwlb == geneve.GwlbMetadata(0x0E1B2C3D4E5F6071, 0x0A77AC4ED00D0001, 0xC0FFEE01)
    assert packet.outer_udp.dst_port == 6081 and packet.outer_udp.src_port == SPORT
    assert (packet.outer_udp.checksum != 0) is udp_checksum
    assert bytes(frame[68:]) == udp_inner()
    # scapy recomputes both checksums independently.
    decoded = IP(frame)
    rebuilt = decoded.copy()
    del rebuilt.chksum
    if udp_checksum:
        del rebuilt[UDP].chksum
    assert bytes(rebuilt) == frame


def test_checksum_agrees_with_scapy() -> None:
    rnd = random.Random(7)
    for n in [0, 1, 2, 3, *(rnd.randrange(4, 9000) for _ in range(300))]:
        data = rnd.randbytes(n)
        # 0 and 0xFFFF are the same one's-complement value (the all-zero input gives either).
        assert checksum(data) % 0xFFFF == scapy_checksum(data) % 0xFFFF
        if n >= 2 and n % 2 == 0:
            stamped = data[:-2] + b"\0\0"
            stamped = stamped[:-2] + struct.pack("!H", checksum(stamped))
            assert checksum_ok(stamped)
            assert not checksum_ok(stamped[:-1] + bytes([stamped[-1] ^ 1]))


def test_flow_key_is_the_same_both_ways() -> None:
    there = bytes(IP(src="10.200.1.2", dst="10.200.2.2") / UDP(sport=40000, dport=3000) / b"x")
    back = bytes(IP(src="10.200.2.2", dst="10.200.1.2") / UDP(sport=3000, dport=40000) / b"y")
    assert flow_key(there) == flow_key(back) is not None
    ping = bytes(IP(src="10.200.1.2", dst="10.200.2.2") / ICMP(type=8, id=77, seq=1))
    pong = bytes(IP(src="10.200.2.2", dst="10.200.1.2") / ICMP(type=0, id=77, seq=1))
    other = bytes(IP(src="10.200.1.2", dst="10.200.2.2") / ICMP(type=8, id=78, seq=1))
    assert flow_key(ping) == flow_key(pong) != flow_key(other)


# -- the reply checker ----------------------------------------------------------------------


@pytest.mark.parametrize("udp_checksum", [False, True])
@pytest.mark.parametrize(
    "inner",
    [
        udp_inner(),  # the reference rules rewrite this one (2 bytes longer)
        udp_inner(b"nothing to change"),
        bytes(IP(src="10.200.1.2", dst="10.200.2.2") / ICMP(type=8, id=9, seq=1) / b"abc"),
        bytes(IP(src="10.200.1.2", dst="10.200.2.2") / TCP(sport=5555, dport=80) / b"GET /"),
    ],
    ids=["udp-modified", "udp", "icmp", "tcp"],
)
def test_checker_accepts_what_the_pipeline_sends_back(inner: bytes, udp_checksum: bool) -> None:
    reply = codec_reply(request(inner, udp_checksum=udp_checksum))
    assert check_reply(reply, EXPECTED) is None


def test_checker_accepts_ipv6_inner() -> None:
    inner = bytes(IPv6(src="fd00:200:1::2", dst="fd00:200:2::2") / ICMPv6EchoRequest(id=3, seq=1))
    g6 = geneve_header(geneve.ETH_P_IPV6, 1, 2, 3)
    reply = swapped(request(inner, geneve_bytes=g6))
    assert check_reply(reply, Expected(GWLB, APPLIANCE, SPORT, g6)) is None


def _fix_outer_ipv4(f: bytearray) -> None:
    f[10:12] = b"\0\0"
    f[10:12] = struct.pack("!H", checksum(f[:20]))


def _fix_inner_ipv4(f: bytearray) -> None:
    f[78:80] = b"\0\0"
    f[78:80] = struct.pack("!H", checksum(f[68:88]))


def _corrupt(name: str) -> Callable[[bytearray], None]:
    def ports_swapped(f: bytearray) -> None:
        f[20:22], f[22:24] = f[22:24], f[20:22]

    def source_port_changed(f: bytearray) -> None:
        f[20:22] = struct.pack("!H", SPORT + 1)

    def addresses_kept(f: bytearray) -> None:
        f[12:16], f[16:20] = f[16:20], f[12:16]  # swapped back: the request's own addresses

    def ttl_changed_checksum_not(f: bytearray) -> None:
        f[8] -= 1

    def stale_outer_udp_checksum(f: bytearray) -> None:
        f[26:28] = b"\x12\x34"

    def inner_payload_changed(f: bytearray) -> None:
        f[-1] ^= 0x20

    def inner_ttl_changed(f: bytearray) -> None:
        f[76] -= 1

    def trailing_bytes(f: bytearray) -> None:
        f += b"\0" * 4

    def truncated(f: bytearray) -> None:
        del f[-1]

    def outer_udp_length(f: bytearray) -> None:
        f[24:26] = struct.pack("!H", struct.unpack_from("!H", f, 24)[0] - 1)

    def inner_length(f: bytearray) -> None:
        f[70:72] = struct.pack("!H", struct.unpack_from("!H", f, 70)[0] - 1)
        _fix_inner_ipv4(f)

    def inner_udp_length(f: bytearray) -> None:
        f[92:94] = struct.pack("!H", struct.unpack_from("!H", f, 92)[0] + 2)

    def grew_without_lengths(f: bytearray) -> None:
        f += b"!!"  # payload grew; no length or checksum follows
        f[2:4] = struct.pack("!H", len(f))
        _fix_outer_ipv4(f)

    return {
        "outer-udp-ports": ports_swapped,
        "outer-udp-ports/src": source_port_changed,
        "outer-addresses": addresses_kept,
        "outer-ipv4-checksum": ttl_changed_checksum_not,
        "outer-udp-checksum": stale_outer_udp_checksum,
        "inner-udp-checksum": inner_payload_changed,
        "inner-ipv4-checksum": inner_ttl_changed,
        "outer-length": trailing_bytes,
        "outer-truncated": truncated,
        "outer-udp-length": outer_udp_length,
        "inner-length": inner_length,
        "inner-udp-length": inner_udp_length,
        "outer-udp-length/grown": grew_without_lengths,
    }[name]


@pytest.mark.parametrize(
    "case",
    [
        "outer-udp-ports",
        "outer-udp-ports/src",
        "outer-addresses",
        "outer-ipv4-checksum",
        "outer-udp-checksum",
        "inner-udp-checksum",
        "inner-ipv4-checksum",
        "outer-length",
        "outer-truncated",
        "outer-udp-length",
        "inner-length",
        "inner-udp-length",
        "outer-udp-length/grown",
    ],
)
def test_checker_rejects_a_corrupted_reply(case: str) -> None:
    good = bytearray(codec_reply(request(udp_inner(b"plain payload"))))
    assert check_reply(good, EXPECTED) is None
    _corrupt(case)(good)
    assert check_reply(good, EXPECTED) == case.split("/")[0]


@pytest.mark.parametrize("offset", range(40))
def test_checker_rejects_any_changed_geneve_byte(offset: int) -> None:
    reply = bytearray(codec_reply(request(udp_inner(b"plain payload"))))
    reply[28 + offset] ^= 0x01
    assert check_reply(reply, EXPECTED) == "geneve-changed"


def test_checker_rejects_stale_inner_checksums_of_each_protocol() -> None:
    icmp = bytes(IP(src="10.200.1.2", dst="10.200.2.2") / ICMP(type=8, id=9, seq=1) / b"abcd")
    tcp = bytes(IP(src="10.200.1.2", dst="10.200.2.2") / TCP(sport=1, dport=2) / b"abcd")
    v6 = bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=2) / b"abcd")
    for inner, proto_type, reason in (
        (icmp, geneve.ETH_P_IPV4, "inner-icmp-checksum"),
        (tcp, geneve.ETH_P_IPV4, "inner-tcp-checksum"),
        (v6, geneve.ETH_P_IPV6, "inner-udp-checksum"),
    ):
        assert check_inner(inner, proto_type) is None
        assert check_inner(inner[:-1] + b"X", proto_type) == reason
    # Over IPv6 a UDP checksum of 0 is not "no checksum" but an error (RFC 8200 8.1).
    zero = bytearray(v6)
    zero[46:48] = b"\0\0"
    assert check_inner(zero, geneve.ETH_P_IPV6) == "inner-udp-checksum"


# -- the data plane's accounting, without sockets -------------------------------------------


class FakeSender:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        self.frames.append(bytes(data))
        return len(data)

    def close(self) -> None:
        pass


@pytest.fixture
def plane() -> Iterator[tuple[DataPlane, FakeSender, int]]:
    """A DataPlane whose 'tun' is a pipe (read end returned) and whose sender records."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    sender = FakeSender()
    dp = DataPlane(EmulatorConfig(seed=1), w, a, sender, c)  # type: ignore[arg-type]
    yield dp, sender, r
    dp.stop()
    for s in (b, d):
        s.close()
    os.close(r)


def _delivered(r: int) -> bytes:
    try:
        return os.read(r, 65535)
    except BlockingIOError:
        return b""


def test_data_plane_flows_cookies_and_counts(plane: tuple[DataPlane, FakeSender, int]) -> None:
    dp, sender, tun = plane
    for seq in (1, 2):
        dp._from_tun(bytes(IP(src="10.200.1.2", dst="10.200.2.2") / ICMP(type=8, id=5, seq=seq)))
    dp._from_tun(bytes(IP(src="10.200.2.2", dst="10.200.1.2") / ICMP(type=0, id=5, seq=1)))
    dp._from_tun(udp_inner())
    assert len(sender.frames) == 4
    metas = [geneve.Packet.parse(f) for f in sender.frames]
    ports = [m.outer_udp.src_port for m in metas]
    cookies = [m.flow_cookie for m in metas]
    # One flow for the ICMP exchange (both directions), another for UDP.
    assert cookies[0] == cookies[1] == cookies[2] != cookies[3]
    assert ports[0] == ports[1] == ports[2] != ports[3]
    assert all(m.outer.src == "10.200.3.1" and m.outer.dst == "10.200.3.2" for m in metas)

    # The appliance answers: one ICMP echo unchanged, the UDP one rewritten; drops the rest.
    dp._from_appliance(bytes(swapped(sender.frames[0])))
    assert _delivered(tun) == bytes(sender.frames[0][68:])
    dp._from_appliance(codec_reply(sender.frames[3]))
    assert b"strongly typed" in _delivered(tun)
    s = dp.summary()
    assert (s["sent"], s["returned"], s["verified"], s["modified"]) == (4, 2, 2, 1)
    assert s["not_returned"] == 2 and s["failed"] == 0 and s["delivered"] == 2
    icmp, udp = s["flows"]
    assert (icmp["sent"], icmp["returned"], icmp["not_returned"]) == (3, 1, 2)
    assert (udp["sent"], udp["returned"], udp["modified"]) == (1, 1, 1)


def test_data_plane_never_delivers_a_bad_reply(plane: tuple[DataPlane, FakeSender, int]) -> None:
    dp, sender, tun = plane
    dp._from_tun(udp_inner(b"one"))
    dp._from_tun(udp_inner(b"two"))
    bad = swapped(sender.frames[0])
    bad[20:22], bad[22:24] = bad[22:24], bad[20:22]  # the classic bug: ports swapped too
    dp._from_appliance(bytes(bad))
    stale = swapped(sender.frames[1])
    stale[-1] ^= 1  # payload edited, checksum left stale
    dp._from_appliance(bytes(stale))
    assert _delivered(tun) == b""
    s = dp.summary()
    assert s["failures"] == {"inner-udp-checksum": 1, "outer-udp-ports": 1}
    assert s["verified"] == 0 and s["delivered"] == 0 and s["returned"] == 0
    assert s["not_returned"] == 2


def test_a_failed_reply_takes_no_request(plane: tuple[DataPlane, FakeSender, int]) -> None:
    """A broken reply leaves every request waiting, so the good replies after it pair right."""
    dp, sender, tun = plane
    dp._from_tun(udp_inner(b"one"))
    dp._from_tun(udp_inner(b"two"))
    stale = swapped(sender.frames[1])
    stale[-1] ^= 1
    dp._from_appliance(bytes(stale))
    for frame in (sender.frames[1], sender.frames[0]):
        dp._from_appliance(bytes(swapped(frame)))
        assert _delivered(tun) == frame[68:]
    s = dp.summary()
    assert s["failures"] == {"inner-udp-checksum": 1}
    assert (s["returned"], s["verified"], s["modified"], s["not_returned"]) == (2, 2, 0, 0)


def ipv6_udp(payload: bytes) -> bytes:
    return bytes(
        IPv6(src="fd00:200:1::2", dst="fd00:200:2::2") / UDP(sport=40000, dport=3000) / payload
    )


@pytest.mark.parametrize("family", ["icmp", "ipv6-udp"])
def test_a_duplicate_reply_is_unsolicited(
    plane: tuple[DataPlane, FakeSender, int], family: str
) -> None:
    """An appliance that sends every reply twice: each copy after the first is refused.

    UDP over IPv6 has no identity but its source to pair an edited reply with, the case where
    a copy used to take the next request of the flow.
    """
    dp, sender, tun = plane
    for i in range(3):
        if family == "icmp":
            dp._from_tun(bytes(IP(src="10.200.1.2", dst="10.200.2.2") / ICMP(id=7, seq=i)))
        else:
            dp._from_tun(ipv6_udp(b"message %d" % i))
    for frame in sender.frames:
        for _ in range(2):
            dp._from_appliance(bytes(swapped(frame)))
        assert _delivered(tun) == frame[68:]  # once
    s = dp.summary()
    assert s["failures"] == {"unsolicited": 3}
    assert (s["returned"], s["verified"], s["modified"], s["delivered"]) == (3, 3, 0, 3)
    assert s["not_returned"] == 0 and s["flows"][0]["failed"] == 3


def test_an_edited_duplicate_is_unsolicited(plane: tuple[DataPlane, FakeSender, int]) -> None:
    dp, sender, tun = plane
    dp._from_tun(ipv6_udp(b"weakly typed"))
    dp._from_tun(ipv6_udp(b"weakly typed, again"))
    g6 = sender.frames[0][28:68]
    edited = swapped(request(ipv6_udp(b"strongly typed"), geneve_bytes=g6))
    edited[20:22] = sender.frames[0][20:22]  # the flow's source port
    for _ in range(2):
        dp._from_appliance(bytes(edited))
    assert _delivered(tun) == edited[68:]  # once
    s = dp.summary()
    assert s["failures"] == {"unsolicited": 1}
    assert (s["returned"], s["modified"], s["delivered"], s["not_returned"]) == (1, 1, 1, 1)


def test_a_changed_copy_of_a_reply_takes_no_other_request(
    plane: tuple[DataPlane, FakeSender, int],
) -> None:
    """A copy with a flipped IPv6 flow label (no checksum covers it) passes every check.

    Waiting: the server's echo reply, with the same id and sequence, and the next echo.
    """
    dp, sender, _tun = plane
    client, server = "fd00:200:1::2", "fd00:200:2::2"
    dp._from_tun(bytes(IPv6(src=client, dst=server) / ICMPv6EchoRequest(id=7, seq=1)))
    dp._from_tun(bytes(IPv6(src=server, dst=client) / ICMPv6EchoReply(id=7, seq=1)))
    dp._from_tun(bytes(IPv6(src=client, dst=server) / ICMPv6EchoRequest(id=7, seq=2)))
    dp._from_appliance(bytes(swapped(sender.frames[0])))
    copy = swapped(sender.frames[0])
    copy[68 + 3] ^= 1
    dp._from_appliance(bytes(copy))
    for frame in sender.frames[1:]:
        dp._from_appliance(bytes(swapped(frame)))
    s = dp.summary()
    assert s["failures"] == {"unsolicited": 1}
    assert (s["returned"], s["modified"], s["delivered"], s["not_returned"]) == (3, 0, 3, 0)


def test_the_clients_own_bad_packet_returned_unchanged_is_not_a_failure(
    plane: tuple[DataPlane, FakeSender, int],
) -> None:
    """hping3 --badcksum: the packet was already bad on the tun; echoing it is no fault."""
    dp, sender, tun = plane
    bad = bytearray(udp_inner(b"bad checksum"))
    bad[26:28] = struct.pack("!H", struct.unpack_from("!H", bad, 26)[0] ^ 0x5555)
    dp._from_tun(bytes(bad))
    dp._from_appliance(bytes(swapped(sender.frames[0])))
    assert _delivered(tun) == bad  # on to the server, whose kernel drops it, as without us
    dp._from_appliance(bytes(swapped(sender.frames[0])))  # a second copy is still refused
    # Edited and still bad: that one is the appliance's doing.
    dp._from_tun(bytes(bad))
    edited = swapped(sender.frames[1])
    edited[-1] ^= 1
    dp._from_appliance(bytes(edited))
    s = dp.summary()
    assert s["tun_invalid"] == {"inner-udp-checksum": 2}
    assert s["passed_through_invalid"] == 1 and s["verified"] == 0
    assert s["failures"] == {"inner-udp-checksum": 1, "unsolicited": 1}
    assert (s["returned"], s["delivered"], s["not_returned"]) == (1, 1, 1)


def _numbered_udp(template: bytes, ident: int) -> bytes:
    """``template`` (IPv4/UDP) with another IPv4 ID; the UDP checksum does not cover it."""
    p = bytearray(template)
    p[4:6] = struct.pack("!H", ident)
    p[10:12] = b"\0\0"
    p[10:12] = struct.pack("!H", checksum(p[:20]))
    return bytes(p)


def test_pairing_does_not_slow_down_with_a_backlog(
    plane: tuple[DataPlane, FakeSender, int],
) -> None:
    """Replies in a flow with 4000 dropped requests are paired as fast as in a fresh flow."""
    dp, sender, tun = plane
    dropped = udp_inner(b"dropped")
    for i in range(4000):
        dp._from_tun(_numbered_udp(dropped, i))

    def answer(template: bytes) -> float:
        t0 = time.perf_counter()
        for i in range(4000, 4400):
            dp._from_tun(_numbered_udp(template, i))
            dp._from_appliance(bytes(swapped(sender.frames[-1])))
            assert _delivered(tun)
        return time.perf_counter() - t0

    backlog = answer(dropped)  # the same flow: 4000 requests wait before each of these
    fresh = bytes(IP(src="10.200.1.2", dst="10.200.2.2") / UDP(sport=40001, dport=3000) / b"x")
    assert answer(fresh) * 3 > backlog
    s = dp.summary()
    assert s["verified"] == s["returned"] == 800 and s["modified"] == 0


def test_a_reply_later_than_the_pending_limit_is_not_an_edit(
    plane: tuple[DataPlane, FakeSender, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its request was pushed out of the pending list; no other request pays for it."""
    monkeypatch.setattr(emu_flows, "MAX_PENDING", 8)
    dp, sender, tun = plane
    template = udp_inner(b"late")
    for i in range(10):
        dp._from_tun(_numbered_udp(template, i))
    for frame in sender.frames:  # 0 and 1 were pushed out
        dp._from_appliance(bytes(swapped(frame)))
        assert _delivered(tun) == frame[68:]
    s = dp.summary()
    assert (s["returned"], s["modified"], s["not_returned"], s["failures"]) == (10, 0, 0, {})


def test_a_flood_from_the_tun_does_not_starve_the_replies(
    plane: tuple[DataPlane, FakeSender, int],
) -> None:
    """One drain reads a batch, then the poll loop serves the capture socket too."""
    dp, sender, _tun = plane
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)  # keeps packets apart
    tun = dp._tun
    try:
        a.setblocking(False)
        for i in range(200):
            b.send(_numbered_udp(udp_inner(), i))
        dp._tun = a.fileno()
        dp._drain_tun()
        assert 0 < len(sender.frames) < 200
        for _ in range(200):
            dp._drain_tun()
        assert len(sender.frames) == 200
    finally:
        dp._tun = tun
        a.close()
        b.close()


def test_data_plane_ignores_what_is_not_a_reply(plane: tuple[DataPlane, FakeSender, int]) -> None:
    dp, _sender, _tun = plane
    dp._from_appliance(bytes(IP(src="10.200.3.2", dst="10.200.3.1") / TCP(sport=8080, dport=5)))
    dp._from_appliance(bytes(IP(src="10.200.3.2", dst="10.200.3.1") / UDP(sport=53, dport=53)))
    foreign = swapped(request(udp_inner(), geneve_bytes=geneve_header(0x0800, 1, 2, 999)))
    foreign[20:22] = struct.pack("!H", 1)
    dp._from_appliance(bytes(foreign))
    s = dp.summary()
    assert s["other_from_appliance"] == 2
    assert s["failures"] == {"unknown-flow": 1}


# -- refusals an appliance injects (REJECT) ----------------------------------------------------


def refusal_of(frame: bytes) -> bytes:
    """What the project's REJECT sends back for ``frame`` (the codec's reject_frame)."""
    out = geneve.reject_frame(geneve.Packet.parse(bytearray(frame)))
    assert out is not None
    return bytes(out)


def test_an_injected_refusal_is_checked_and_delivered(
    plane: tuple[DataPlane, FakeSender, int],
) -> None:
    dp, sender, tun = plane
    client, server = "10.200.1.2", "10.200.2.2"
    client6, server6 = "fd00:200:1::2", "fd00:200:2::2"
    dp._from_tun(bytes(IP(src=client, dst=server) / TCP(sport=40001, dport=8081, flags="S")))
    dp._from_tun(bytes(IP(src=client, dst=server) / UDP(sport=40002, dport=9999) / (b"x" * 900)))
    dp._from_tun(bytes(IPv6(src=client6, dst=server6) / UDP(sport=40003, dport=9999) / b"y"))
    dp._from_tun(bytes(IPv6(src=client6, dst=server6) / TCP(sport=40004, dport=8081, flags="S")))
    dp._from_tun(bytes(IP(src=client, dst=server) / ICMP(type=8, id=9, seq=1)))
    for frame in sender.frames:
        refusal = refusal_of(frame)
        dp._from_appliance(refusal)
        delivered = _delivered(tun)
        assert delivered == refusal[68:]
        assert delivered[12:16] == socket.inet_aton(server) or delivered[0] >> 4 == 6
    s = dp.summary()
    assert (s["injected"], s["delivered"], s["failed"], s["returned"]) == (5, 5, 0, 0)
    assert s["not_returned"] == 5  # the refused packets themselves never came back
    assert [f["injected"] for f in s["flows"]] == [1] * 5
    assert "injected: 5 refusals" in format_summary(s)


def test_a_dns_refused_answer_in_a_querys_place_is_an_injected_refusal(
    plane: tuple[DataPlane, FakeSender, int],
) -> None:
    from geneve.rules.egress import DomainFilter

    dp, sender, tun = plane
    client, server = "10.200.1.2", "10.200.2.2"
    query = b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03bad\x04test\x00\x00\x01\x00\x01"
    for sport in (40005, 40006, 40007):
        dp._from_tun(bytes(IP(src=client, dst=server) / UDP(sport=sport, dport=53) / query))
    egress = geneve.Pipeline(DomainFilter(deny=["bad.test"], action="reject"), flows=True)
    answers = []
    for frame in sender.frames:
        buf = bytearray(frame)
        (answer,) = egress.handle(buf, len(buf))
        answers.append(bytes(answer))
    good, other_id, not_refused = answers
    dp._from_appliance(good)
    delivered = _delivered(tun)
    assert delivered == good[68:] and delivered[12:16] == socket.inet_aton(server)
    # Not a refusal of a query of its flow: another id; an answer that is not REFUSED (rcode
    # 0). With one outer port for both directions they pass as edited replies.
    changed = bytearray(other_id)
    changed[68 + 28] ^= 1
    udp = geneve.Packet.parse(changed)
    udp.mark_modified()
    udp.fix_checksums()
    dp._from_appliance(bytes(changed))
    changed = bytearray(not_refused)
    changed[68 + 28 + 3] &= 0xF0
    udp = geneve.Packet.parse(changed)
    udp.mark_modified()
    udp.fix_checksums()
    dp._from_appliance(bytes(changed))
    s = dp.summary()
    assert (s["injected"], s["modified"], s["failed"]) == (1, 2, 0), s
    assert "DNS REFUSED" in format_summary(s)


def test_a_broken_refusal_is_a_failure(plane: tuple[DataPlane, FakeSender, int]) -> None:
    dp, sender, tun = plane
    dp._from_tun(bytes(IP(src="10.200.1.2", dst="10.200.2.2") / TCP(dport=8081, flags="S")))
    dp._from_tun(udp_inner(b"to be refused"))
    rst, unreachable = (bytearray(refusal_of(frame)) for frame in sender.frames)
    rst[-3] ^= 1  # the window: the TCP checksum goes stale
    unreachable[28 + 12] ^= 1  # a byte of the endpoint id
    dp._from_appliance(bytes(rst))
    dp._from_appliance(bytes(unreachable))
    assert _delivered(tun) == b""
    s = dp.summary()
    assert s["failures"] == {"geneve-changed": 1, "inner-tcp-checksum": 1}
    assert s["injected"] == 0


def test_a_refusal_must_answer_a_packet_of_the_flow(
    plane: tuple[DataPlane, FakeSender, int],
) -> None:
    dp, sender, tun = plane
    dp._from_tun(udp_inner(b"sent"))
    g = sender.frames[0][28:68]
    # An unreachable quoting a packet of the flow that was never sent.
    other = bytearray(refusal_of(request(udp_inner(b"never sent"), geneve_bytes=g)))
    other[20:22] = sender.frames[0][20:22]  # the flow's source port
    dp._from_appliance(bytes(other))

    # A RST travelling with the flow, not against it: not a refusal (an edited reply, here).
    def tuple_of(packet: bytes) -> checker.FiveTuple:
        t = checker.five_tuple(packet)
        assert t is not None
        return t

    forward = bytes(IP(src="10.200.1.2", dst="10.200.2.2") / UDP(sport=40000, dport=3000))
    assert checker.refuses(forward, {tuple_of(forward)}, lambda q: True) is False
    rst = bytes(IP(src="10.200.1.2", dst="10.200.2.2") / TCP(sport=1, dport=2, flags="R"))
    assert checker.refuses(rst, {tuple_of(rst)}, lambda q: True) is False
    reverse = tuple_of(bytes(IP(src="10.200.2.2", dst="10.200.1.2") / TCP(sport=2, dport=1)))
    assert checker.refuses(rst, {reverse}, lambda q: False) is True
    assert _delivered(tun) == b""
    s = dp.summary()
    assert s["injected"] == 0 and s["failures"] == {"inner-flow-changed": 1}


# -- GWLB's flow behaviour: idle timeouts, a cookie per flow instance, ports per direction ----


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def flow_plane() -> Iterator[Callable[..., tuple[DataPlane, FakeSender, int, Clock]]]:
    """Like ``plane``, with an EmulatorConfig of the test's and a clock it moves."""
    made: list[tuple[DataPlane, list[socket.socket], int]] = []

    def make(**config: Any) -> tuple[DataPlane, FakeSender, int, Clock]:
        r, w = os.pipe()
        os.set_blocking(r, False)
        a, b = socket.socketpair()
        c, d = socket.socketpair()
        sender, clock = FakeSender(), Clock()
        cfg = EmulatorConfig(seed=1, **config)
        dp = DataPlane(cfg, w, a, sender, c, clock=clock)  # type: ignore[arg-type]
        made.append((dp, [b, d], r))
        return dp, sender, r, clock

    yield make
    for dp, peers, r in made:
        dp.stop()
        for s in peers:
            s.close()
        os.close(r)


def _meta(frame: bytes) -> tuple[int, int]:
    """(flow cookie, outer UDP source port) of a frame the emulator sent."""
    m = geneve.Packet.parse(bytearray(frame))
    assert m.flow_cookie is not None
    return m.flow_cookie, m.outer_udp.src_port


def tcp(flags: str, *, reply: bool = False, seq: int = 1, payload: bytes = b"") -> bytes:
    src, dst, sport, dport = ("10.200.1.2", "10.200.2.2", 40100, 5000)
    if reply:
        src, dst, sport, dport = dst, src, dport, sport
    segment = TCP(sport=sport, dport=dport, flags=flags, seq=seq) / payload
    return bytes(IP(src=src, dst=dst) / segment)


def test_a_udp_flow_past_its_idle_timeout_is_a_new_flow_with_a_new_cookie(
    flow_plane: Callable[..., tuple[DataPlane, FakeSender, int, Clock]],
) -> None:
    dp, sender, tun, clock = flow_plane(other_idle_timeout=2.0)
    dp._from_tun(udp_inner(b"one"))
    clock.now += 1.5
    dp._from_tun(udp_inner(b"two"))  # within the timeout: the same flow
    clock.now += 1.5
    dp._from_tun(udp_inner(b"three"))  # 1.5 s idle, then 1.5 s: still the same flow
    clock.now += 2.5
    dp._from_tun(udp_inner(b"four"))  # idle past 2 s: a new flow instance
    cookies = [_meta(f)[0] for f in sender.frames]
    assert cookies[0] == cookies[1] == cookies[2] != cookies[3]
    # A late reply with the old cookie is stale (GWLB would drop it): a failure, not delivered.
    dp._from_appliance(bytes(swapped(sender.frames[2])))
    assert _delivered(tun) == b""
    dp._from_appliance(bytes(swapped(sender.frames[3])))
    assert _delivered(tun) == sender.frames[3][68:]
    s = dp.summary()
    assert s["failures"] == {"stale-cookie": 1} and s["verified"] == 1
    old, new = s["flows"]
    assert (old["sent"], old["superseded"], new["sent"], new["returned"]) == (3, True, 1, 1)
    assert old["flow"] == new["flow"] and old["flow_cookie"] != new["flow_cookie"]
    assert "a newer flow took its 5-tuple" in format_summary(s)


def test_an_expired_tcp_flow_drops_all_but_a_syn(
    flow_plane: Callable[..., tuple[DataPlane, FakeSender, int, Clock]],
) -> None:
    dp, sender, _tun, clock = flow_plane(tcp_idle_timeout=2.0, other_idle_timeout=100.0)
    dp._from_tun(tcp("S"))
    dp._from_tun(tcp("SA", reply=True))
    dp._from_tun(tcp("A", seq=2))
    clock.now += 3
    dp._from_tun(tcp("PA", seq=2, payload=b"late"))  # idle past the timeout: dropped
    dp._from_tun(tcp("A", reply=True, seq=2))  # either direction
    assert len(sender.frames) == 3
    dp._from_tun(tcp("SA", reply=True, seq=9))  # a SYN|ACK is not a SYN: dropped too
    dp._from_tun(tcp("S", seq=100))  # a new connection on the same 5-tuple: a new flow
    dp._from_tun(tcp("SA", reply=True, seq=200))
    assert len(sender.frames) == 5
    cookies = [_meta(f)[0] for f in sender.frames]
    assert cookies[0] == cookies[1] == cookies[2] != cookies[3] == cookies[4]
    s = dp.summary()
    assert s["expired_dropped"] == 3 and s["sent"] == 5
    assert [f["expired_dropped"] for f in s["flows"]] == [3, 0]
    assert "expired: 3 non-SYN packets" in format_summary(s)
    # UDP on the same plane has its own (longer) timeout: still one flow after 3 s.
    dp._from_tun(udp_inner(b"a"))
    clock.now += 3
    dp._from_tun(udp_inner(b"b"))
    assert _meta(sender.frames[-1])[0] == _meta(sender.frames[-2])[0]


def test_a_syn_after_fin_both_ways_or_rst_is_a_new_flow(
    flow_plane: Callable[..., tuple[DataPlane, FakeSender, int, Clock]],
) -> None:
    dp, sender, _tun, _clock = flow_plane()
    dp._from_tun(tcp("S"))
    dp._from_tun(tcp("FA", seq=2))
    dp._from_tun(tcp("S"))  # one FIN only: a retransmitted SYN stays in the flow
    dp._from_tun(tcp("FA", reply=True, seq=7))
    dp._from_tun(tcp("A", seq=3))  # the last ACK: still the ended flow's
    dp._from_tun(tcp("S", seq=50))  # the 5-tuple reused: a new flow
    dp._from_tun(tcp("R", reply=True, seq=0))
    dp._from_tun(tcp("S", seq=90))  # after a RST: another one
    cookies = [_meta(f)[0] for f in sender.frames]
    assert len(set(cookies[:5])) == 1
    assert cookies[5] == cookies[6] != cookies[0] and cookies[7] not in cookies[:7]
    assert len(dp.summary()["flows"]) == 3


def test_per_direction_ports(
    flow_plane: Callable[..., tuple[DataPlane, FakeSender, int, Clock]],
) -> None:
    dp, sender, tun, _clock = flow_plane(per_direction_ports=True)
    dp._from_tun(bytes(IP(src="10.200.1.2", dst="10.200.2.2") / ICMP(type=8, id=5, seq=1)))
    dp._from_tun(bytes(IP(src="10.200.2.2", dst="10.200.1.2") / ICMP(type=0, id=5, seq=1)))
    dp._from_tun(tcp("S"))
    (c1, p1), (c2, p2), (c3, _p3) = (_meta(f) for f in sender.frames)
    assert c1 == c2 and p1 != p2 and c3 != c1
    # Each reply keeps its own direction's port.
    for frame in sender.frames[:2]:
        dp._from_appliance(bytes(swapped(frame)))
        assert _delivered(tun) == frame[68:]
    # A reply on the other direction's port fails.
    dp._from_tun(bytes(IP(src="10.200.1.2", dst="10.200.2.2") / ICMP(type=8, id=5, seq=2)))
    wrong = swapped(sender.frames[3])
    wrong[20:22] = struct.pack("!H", p2)
    dp._from_appliance(bytes(wrong))
    assert _delivered(tun) == b""
    # A refusal goes back on the refused packet's port, against the flow: injected.
    dp._from_appliance(refusal_of(sender.frames[2]))
    assert _delivered(tun) != b""
    s = dp.summary()
    assert s["failures"] == {"outer-udp-ports": 1}, s["failures"]
    assert (s["verified"], s["injected"]) == (2, 1)
    icmp = s["flows"][0]
    assert (icmp["source_port"], icmp["reply_source_port"]) == (p1, p2)
    assert f"udp src {p1} (reply direction {p2})" in format_summary(s)


def test_flow_flags_reach_the_config() -> None:
    import argparse

    from geneve import emulator as cli

    args = argparse.Namespace(
        outer_udp_checksum=False, no_ipv6=False, seed=None, tcp_idle_timeout=2.0,
        other_idle_timeout=1.5, per_direction_ports=True,
    )  # fmt: skip
    c = cli._config(args)
    assert (c.tcp_idle_timeout, c.other_idle_timeout, c.per_direction_ports) == (2.0, 1.5, True)
    d = EmulatorConfig()
    assert (d.tcp_idle_timeout, d.other_idle_timeout, d.per_direction_ports) == (350, 120, False)


# -- in network namespaces ------------------------------------------------------------------


_UNAVAILABLE = netns_unavailable(tun=True)
needs_netns = pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or "")
needs_tools = pytest.mark.skipif(
    not (shutil.which("ping") and shutil.which("nc")), reason="needs ping and nc (netcat-openbsd)"
)


def _mine(pid: int | None = None) -> list[str]:
    prefix = f"{NETNS_PREFIX}-{os.getpid() if pid is None else pid}-"
    return [n for n in netns_list() if n.startswith(prefix)]


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    yield
    assert _mine() == [], "the emulator left namespaces behind"


@needs_netns
@needs_tools
@pytest.mark.netns
def test_demo_through_the_real_appliance() -> None:
    """``python -m geneve.emulator demo``: the blog demo with ping and nc, via the CLI."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "geneve.emulator", "demo", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = json.loads(stdout)
    report = "\n".join(("✓ " if c["ok"] else "✗ ") + c["text"] for c in result["checks"])
    assert proc.returncode == 0 and result["ok"], f"{report}\n{result['error']}\n{stderr}"
    texts = " | ".join(c["text"] for c in result["checks"])
    assert "8 of 10 answered, lost seq 5, 10" in texts
    assert "'drop me': dropped" in texts
    assert "received ['strongly typed programming language']" in texts
    assert "health GET http://10.200.3.2:8080/: 200" in texts
    s = result["summary"]
    assert s["failed"] == 0 and s["tun_invalid"] == {} and s["errors"] == {}
    flows = {f["protocol"]: f for f in s["flows"]}
    # 10 requests of which 5 and 10 dropped, 8 replies; 2 datagrams, 1 dropped, 1 rewritten.
    assert (flows["icmp"]["sent"], flows["icmp"]["returned"]) == (18, 16)
    assert (flows["udp"]["sent"], flows["udp"]["returned"], flows["udp"]["modified"]) == (2, 1, 1)
    assert result["seconds"] < 30
    assert _mine(proc.pid) == []


@needs_netns
@needs_tools
@pytest.mark.netns
def test_tcp_and_ipv6_through_the_real_appliance(tmp_path: Path, no_leftovers: None) -> None:
    data = random.Random(3).randbytes(40000)
    received = tmp_path / "received"
    with Emulator() as emu:
        a = emu.addressing
        emu.start_appliance()
        emu.wait_healthy()
        # ping -6: the reference rule drops ICMPv6 echo with a sequence multiple of 5 too.
        ping6 = emu.run(
            "client", ["ping", "-6", "-n", "-c", "6", "-i", "0.2", "-W", "1", a.server6], timeout=15
        )
        replies = re.findall(r"bytes from .*icmp_seq=(\d+)", ping6.stdout)
        answered = sorted({int(seq) for seq in replies})
        assert answered == [1, 2, 3, 4, 6], ping6.stdout + ping6.stderr
        # ping -s 2000, over IPv4 and IPv6: each echo is fragmented (inner MTU 1500), and the
        # rule drops the first fragment of seq 5, which takes the whole echo with it.
        for server in (a.server, a.server6):
            big = emu.run(
                "client", ["ping", "-n", "-s", "2000", "-c", "6", "-i", "0.2", "-W", "1", server],
                timeout=15,
            )  # fmt: skip
            replies = re.findall(r"bytes from .*icmp_seq=(\d+)", big.stdout)
            answered = sorted({int(seq) for seq in replies})
            assert answered == [1, 2, 3, 4, 6], big.stdout + big.stderr
        # UDP over IPv6 to port 3000: rewritten (2 bytes longer, IPv6 pseudo-header checksum).
        listener = emu.spawn(
            "server", ["nc", "-6", "-u", "-l", "3000"], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not emu.udp_port_bound("server", 3000):
            time.sleep(0.05)
        emu.run(
            "client", ["nc", "-6", "-u", "-q", "0", a.server6, "3000"],
            input=b"weakly typed over IPv6\n", timeout=5,
        )  # fmt: skip
        assert listener.stdout is not None
        os.set_blocking(listener.stdout.fileno(), False)
        got = b""
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and b"IPv6" not in got:
            got += listener.stdout.read() or b""
            time.sleep(0.05)
        listener.terminate()
        listener.wait(5)
        assert got == b"strongly typed over IPv6\n"
        with received.open("wb") as sink:
            listener = emu.spawn("server", ["nc", "-l", "5000"], stdout=sink)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and not _tcp_listening(emu, 5000):
                time.sleep(0.05)
            emu.run("client", ["nc", "-N", a.server, "5000"], input=data, timeout=10)
            listener.wait(10)
        time.sleep(0.2)
        s = emu.summary()
    assert received.read_bytes() == data
    assert s["failed"] == 0 and s["tun_invalid"] == {}, s
    flows = {f["protocol"]: f for f in s["flows"]}
    assert flows["tcp"]["returned"] == flows["tcp"]["sent"] > 30
    assert flows["tcp"]["modified"] == 0
    # 6 echo requests (seq 5 dropped) and 5 replies; every reply checked by the emulator.
    assert (flows["icmpv6"]["sent"], flows["icmpv6"]["returned"]) == (11, 10)
    udp6 = [f for f in s["flows"] if f["protocol"] == "udp" and f["ip_version"] == 6]
    assert [(f["sent"], f["returned"], f["modified"]) for f in udp6] == [(1, 1, 1)], s["flows"]


REJECT_RULES = """
from geneve import rules

modifier = rules.chain(
    rules.when(rules.tcp_port(8081), rules.reject),
    rules.when(rules.udp_port(9999), rules.reject),
)
"""

# Servers that would answer: what the client sees comes from the appliance, not from them.
SERVERS = r"""
import socket, sys
family = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
tcp = socket.socket(family, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 8081))
tcp.listen()
udp = socket.socket(family, socket.SOCK_DGRAM)
udp.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 9999))
while True:
    data, peer = udp.recvfrom(2048)
    udp.sendto(b"answer", peer)
"""

CLIENT = r"""
import errno, socket, sys, time
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
server = sys.argv[1]
out = []
t0 = time.monotonic()
tcp = socket.socket(family, socket.SOCK_STREAM)
tcp.settimeout(5)
try:
    tcp.connect((server, 8081))
    out.append("tcp connected")
except OSError as err:
    out.append(f"tcp {errno.errorcode.get(err.errno, err)} {time.monotonic() - t0:.3f}")
udp = socket.socket(family, socket.SOCK_DGRAM)
udp.settimeout(5)
udp.connect((server, 9999))
t0 = time.monotonic()
udp.send(b"question")
try:
    out.append(f"udp answered {udp.recv(2048)!r}")
except OSError as err:
    out.append(f"udp {errno.errorcode.get(err.errno, err)} {time.monotonic() - t0:.3f}")
print("\n".join(out))
"""


@needs_netns
@pytest.mark.netns
def test_reject_refuses_tcp_and_udp_through_the_real_appliance(
    tmp_path: Path, no_leftovers: None
) -> None:
    """REJECT on the wire: a TCP connect is refused at once; a UDP send gets the ICMP error,
    over IPv4 and IPv6, though servers listen; the emulator checks every injected packet."""
    (tmp_path / "reject_rules.py").write_text(REJECT_RULES)
    results: dict[int, list[str]] = {}
    with Emulator() as emu:
        a = emu.addressing
        emu.start_appliance(
            ["env", f"PYTHONPATH={tmp_path}", *emu.appliance_command("reject_rules:modifier")]
        )
        emu.wait_healthy()
        for version, server in ((4, a.server), (6, a.server6)):
            servers = emu.spawn("server", [sys.executable, "-c", SERVERS, str(version)])
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not emu.udp_port_bound("server", 9999):
                time.sleep(0.05)
            time.sleep(0.2)  # the TCP listener was made first
            done = emu.run("client", [sys.executable, "-c", CLIENT, server], timeout=30)
            assert done.returncode == 0, done.stderr
            results[version] = done.stdout.split("\n")
            servers.kill()
            servers.wait(5)
        time.sleep(0.2)
        s = emu.summary()
        # The workers publish their counters twice a second.
        deadline = time.monotonic() + 5
        metrics = ""
        while time.monotonic() < deadline and "\ngeneve_rejects_total 4\n" not in metrics:
            metrics = emu.http_get("/metrics").body.decode()
            time.sleep(0.1)
    for version, lines in results.items():
        tcp, udp = lines[0].split(), lines[1].split()
        # A RST|ACK answering the SYN: "connection refused", well under a second.
        assert tcp[:2] == ["tcp", "ECONNREFUSED"], (version, lines)
        assert float(tcp[2]) < 0.5, (version, lines)
        # ICMP 3/13 on a connected UDP socket is EHOSTUNREACH on Linux; ICMPv6 1/1, EACCES.
        want = "EHOSTUNREACH" if version == 4 else "EACCES"
        assert udp[:2] == ["udp", want], (version, lines)
        assert float(udp[2]) < 0.5, (version, lines)
    assert s["failed"] == 0 and s["errors"] == {}, s
    assert s["injected"] == 4, s
    assert sum(f["injected"] for f in s["flows"]) == 4
    assert "\ngeneve_rejects_total 4\n" in metrics, metrics
    assert "\ngeneve_flows_rejects_total 4\n" in metrics, metrics


ECHO_SERVERS = r"""
import socket, threading
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", 7000))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("0.0.0.0", 7001))
tcp.listen()
def echo(conn):
    while data := conn.recv(2048):
        conn.sendall(data)
def accept():
    while True:
        threading.Thread(target=echo, args=(tcp.accept()[0],), daemon=True).start()
threading.Thread(target=accept, daemon=True).start()
while True:
    data, peer = udp.recvfrom(2048)
    udp.sendto(data, peer)
"""

# A UDP exchange, idle, another; a TCP connection that idles, then sends; a new connection.
IDLE_CLIENT = r"""
import socket, sys, time
server, idle, tcp_too = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "tcp"
out = []
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.settimeout(2)
udp.bind(("0.0.0.0", 41000))
udp.connect((server, 7000))
for word in (b"before", b"after"):
    udp.send(word)
    out.append(f"udp {udp.recv(2048).decode()}")
    time.sleep(idle)
if tcp_too:
    tcp = socket.create_connection((server, 7001), timeout=2)
    tcp.sendall(b"hello")
    out.append(f"tcp {tcp.recv(2048).decode()}")
    time.sleep(idle)
    tcp.sendall(b"late")
    try:
        out.append(f"tcp late {tcp.recv(2048).decode()}")
    except TimeoutError:
        out.append("tcp late timed out")
    tcp.close()
    again = socket.create_connection((server, 7001), timeout=2)
    again.sendall(b"again")
    out.append(f"tcp {again.recv(2048).decode()}")
    again.close()
print("\n".join(out))
"""


@needs_netns
@needs_tools
@pytest.mark.netns
def test_flow_timeouts_and_per_direction_ports_through_the_real_appliance(
    no_leftovers: None,
) -> None:
    """GWLB's flow behaviour with short timeouts, through the daemon: a UDP flow idle past its
    timeout comes back with a new cookie and passes; a TCP connection idle past its timeout is
    dropped by the emulator while a new one works; with a port per direction, ping and UDP pass.
    """
    idle = 2.0
    config = EmulatorConfig(tcp_idle_timeout=idle, other_idle_timeout=idle)
    with Emulator(config) as emu:
        a = emu.addressing
        emu.start_appliance()
        emu.wait_healthy()
        servers = emu.spawn("server", [sys.executable, "-c", ECHO_SERVERS])
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not _tcp_listening(emu, 7001):
                time.sleep(0.05)
            done = emu.run(
                "client", [sys.executable, "-c", IDLE_CLIENT, a.server, str(idle + 1), "tcp"],
                timeout=30,
            )  # fmt: skip
        finally:
            servers.kill()
            servers.wait(5)
        time.sleep(0.2)
        s = emu.summary()
    assert done.stdout.split("\n")[:5] == [
        "udp before", "udp after", "tcp hello", "tcp late timed out", "tcp again",
    ], done.stdout + done.stderr  # fmt: skip
    assert s["failed"] == 0 and s["errors"] == {}, s
    udp = [f for f in s["flows"] if f["dst_port"] == 7000]
    assert [(f["sent"], f["returned"]) for f in udp] == [(2, 2), (2, 2)], udp
    assert udp[0]["flow_cookie"] != udp[1]["flow_cookie"] and udp[0]["superseded"]
    tcp = [f for f in s["flows"] if f["dst_port"] == 7001]
    assert len(tcp) == 2 and tcp[0]["src_port"] != tcp[1]["src_port"], tcp
    # "late", its retransmissions and the FIN: never sent to the appliance.
    assert tcp[0]["expired_dropped"] >= 2 and s["expired_dropped"] == tcp[0]["expired_dropped"]
    assert tcp[0]["returned"] == tcp[0]["sent"] and tcp[1]["returned"] == tcp[1]["sent"] >= 5

    with Emulator(EmulatorConfig(per_direction_ports=True)) as emu:
        a = emu.addressing
        emu.start_appliance()
        emu.wait_healthy()
        servers = emu.spawn("server", [sys.executable, "-c", ECHO_SERVERS])
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not emu.udp_port_bound("server", 7000):
                time.sleep(0.05)
            ping = emu.run("client", ["ping", "-n", "-c", "3", "-i", "0.2", a.server], timeout=15)
            done = emu.run(
                "client", [sys.executable, "-c", IDLE_CLIENT, a.server, "0", "udp"], timeout=30
            )
        finally:
            servers.kill()
            servers.wait(5)
        time.sleep(0.2)
        s = emu.summary()
    assert ping.returncode == 0 and "3 received" in ping.stdout, ping.stdout
    assert done.stdout.split("\n")[:2] == ["udp before", "udp after"], done.stdout + done.stderr
    assert s["failed"] == 0 and s["errors"] == {}, s
    flows = {f["protocol"]: f for f in s["flows"]}
    for f in (flows["icmp"], flows["udp"]):
        assert f["source_port"] != f["reply_source_port"], f
        assert f["returned"] == f["sent"] == (6 if f["protocol"] == "icmp" else 4), f


def _tcp_listening(emu: Emulator, port: int) -> bool:
    with netns(emu.names.server), open("/proc/thread-self/net/tcp") as f:
        return any(f":{port:04X} " in line and " 0A " in line for line in f)


# An appliance with one bug each, in the spirit of the known broken ones (GWLB.md).
BROKEN_APPLIANCE = r"""
import socket, sys
bug = sys.argv[1]
rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
hold = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
hold.bind(("0.0.0.0", 6081))
while True:
    f = bytearray(rx.recv(65535))
    if f[22:24] != b"\x17\xc1":
        continue
    f[12:16], f[16:20] = f[16:20], f[12:16]
    if bug == "swap-ports":
        f[20:22], f[22:24] = f[22:24], f[20:22]
    elif bug == "stale-checksum":
        f[-1] ^= 0x20  # edits the payload, fixes nothing
    elif bug == "change-geneve":
        f[28 + 12] ^= 0x01  # one byte of the endpoint id
    tx.sendto(f, (socket.inet_ntoa(bytes(f[16:20])), 0))
"""


@needs_netns
@pytest.mark.netns
@pytest.mark.parametrize(
    ("bug", "reason"),
    [
        ("swap-ports", "outer-udp-ports"),
        ("stale-checksum", "inner-udp-checksum"),
        ("change-geneve", "geneve-changed"),
        ("none", None),
    ],
)
def test_broken_appliance_on_the_wire(bug: str, reason: str | None, no_leftovers: None) -> None:
    """The checker on real frames: each bug is named, and nothing broken reaches the server."""
    with Emulator() as emu:
        a = emu.addressing
        emu.start_appliance([sys.executable, "-c", BROKEN_APPLIANCE, bug])
        deadline = time.monotonic() + 5
        while not emu.udp_port_bound("appliance", 6081):
            assert time.monotonic() < deadline, "the test appliance did not start"
            time.sleep(0.05)
        with netns(emu.names.server):
            server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with netns(emu.names.client):
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with server, client:
            server.bind((a.server, 7000))
            server.settimeout(0.5)
            for i in range(3):
                client.sendto(b"message %d" % i, (a.server, 7000))
            got = []
            with contextlib.suppress(TimeoutError):
                while True:
                    got.append(server.recv(100))
        s = emu.summary()
    assert s["sent"] == 3 and s["received"] == 3
    if reason is None:
        assert got == [b"message 0", b"message 1", b"message 2"]
        assert s["verified"] == s["returned"] == 3 and s["failures"] == {}
    else:
        assert got == []
        assert s["failures"] == {reason: 3} and s["delivered"] == 0
        assert s["returned"] == 0 and s["not_returned"] == 3  # no correct reply to any


@needs_netns
@pytest.mark.netns
def test_exception_inside_leaves_no_namespace(no_leftovers: None) -> None:
    names = Names()
    with pytest.raises(RuntimeError, match="boom"), Emulator(names=names):
        assert set(names.all()) <= set(netns_list())
        raise RuntimeError("boom")
    assert not set(names.all()) & set(netns_list())


@needs_netns
@pytest.mark.netns
def test_failed_start_leaves_no_namespace(no_leftovers: None) -> None:
    bad = EmulatorConfig(addressing=Addressing(server="10.200.2.300"))
    names = Names()
    with pytest.raises(EmulatorError, match=r"10\.200\.2\.300"):
        Emulator(bad, names).start()
    assert not set(names.all()) & set(netns_list())


@needs_netns
@pytest.mark.netns
def test_cleanup_removes_only_namespaces_of_dead_runs() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = Names(pid=dead.pid, index=0)
    live = Names(index=999)
    for name in (stale.gwlb, stale.client, live.gwlb):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        removed = cleanup()
        assert {stale.gwlb, stale.client} <= set(removed)
        assert live.gwlb not in removed
        present = set(netns_list())
        assert stale.gwlb not in present and stale.client not in present
        assert live.gwlb in present
    finally:
        for name in (stale.gwlb, stale.client, live.gwlb):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@needs_netns
@pytest.mark.netns
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_tears_down_on_signal(signum: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "geneve.emulator", "run", "--no-appliance", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        seen = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            seen.append(line)
            if not line or "Ctrl-C to stop" in line:
                break
        assert "Ctrl-C to stop" in seen[-1], "".join(seen)
        assert len(_mine(proc.pid)) == 4
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert json.loads(out)["sent"] == 0
    assert _mine(proc.pid) == []


# -- the command line -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--duration", "-1"], "--duration: -1 is not a positive number of seconds"),
        (["run", "--duration", "nan"], "--duration: nan is not a positive number of seconds"),
        (["run", "--duration", "0"], "--duration: 0 is not a positive number of seconds"),
        (["run", "--duration", "soon"], "--duration: soon is not a positive number of seconds"),
        # --duration 1 so that a parser that accepts the rest ends on its own.
        (["run", "--duration", "1", "--no-appliance", "--rules", "m:f"], "not allowed with"),
        (
            ["run", "--duration", "1", "--appliance-command", "true", "--rules", "m:f"],
            "not allowed with",
        ),
        (
            ["run", "--duration", "1", "--appliance-command", "true", "--no-appliance"],
            "not allowed with",
        ),
        (["demo", "--appliance-command", "false", "--rules", "m:f"], "not allowed with"),
        (["run", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["run", "--tcp-idle-timeout", "0"], "0 is not a positive number of seconds"),
        (["demo", "--other-idle-timeout", "x"], "x is not a positive number of seconds"),
        (["run", "--duration", "1", "--appliance-command", '"unclosed'], "No closing quotation"),
        (["demo", "--appliance-command", " "], "--appliance-command ' ': empty"),
        ([], "the following arguments are required: command"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from geneve.emulator import main

    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("geneve.emulator: ") and err.endswith(" (see --help)\n"), err
    assert err.count("\n") == 1 and message in err, err


@needs_netns
@pytest.mark.netns
@pytest.mark.parametrize(
    ("command", "status"),
    [
        ("sh -c 'sleep 0.5; kill -9 $$'", "was killed by SIGKILL"),
        ("/nonexistent", "exited with status"),  # ip netns exec could not run it
        ("true", "exited with status 0"),
    ],
)
def test_run_fails_when_the_appliance_exits(command: str, status: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "geneve.emulator", "run", "--json", "--duration", "20",
         "--appliance-command", command],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    assert err.splitlines()[-1].startswith(f"geneve.emulator: the appliance {status}"), err
    assert json.loads(out)["sent"] == 0  # the summary is still printed
    assert _mine(proc.pid) == []


@needs_netns
@pytest.mark.netns
@pytest.mark.parametrize("when", ["before", "after"])
def test_interrupt_around_netns_add_leaves_no_namespace(
    when: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (KeyboardInterrupt) just before or just after ``ip netns add`` returns."""
    real_ip = emu_namespaces.ip

    def ip(*args: str) -> None:
        if args[:2] == ("netns", "add") and args[2].endswith("-gwlb"):
            if when == "before":
                raise KeyboardInterrupt
            real_ip(*args)
            raise KeyboardInterrupt
        real_ip(*args)

    monkeypatch.setattr(emu_namespaces, "ip", ip)
    names = Names()
    try:
        with pytest.raises(KeyboardInterrupt):
            Emulator(names=names).start()
        assert not set(names.all()) & set(netns_list())
    finally:
        for name in set(names.all()) & set(netns_list()):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@needs_netns
@pytest.mark.netns
def test_replies_the_emulator_could_not_read_are_counted_as_its_own(no_leftovers: None) -> None:
    """Overload: what overflows the capture socket is the emulator's loss, not a drop."""
    with Emulator() as emu:
        dp = emu.data_plane
        assert dp is not None
        with netns(emu.names.appliance):
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with tx, dp._lock:  # the data plane stalls at its next frame
            for _ in range(4000):
                tx.sendto(bytes(1400), (emu.addressing.gwlb, 6081))
        s = emu.summary()
        for _ in range(50):  # until the data plane has read what is left
            time.sleep(0.1)
            before, s = s, emu.summary()
            if s["received"] == before["received"]:
                break
    assert s["capture_dropped"] > 0
    assert s["received"] + s["capture_dropped"] <= 4000
    assert "capture socket" in format_summary(s)


def test_run_fails_when_the_data_plane_died(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # No namespaces needed: an emulator whose data plane thread died, as its summary says.
    import argparse

    from geneve import emulator as cli

    class Dead:
        appliance = None

        def __init__(self, config: object) -> None:
            self.final_summary = {"data_plane_error": "OSError(5, 'Input/output error')"}

        def __enter__(self) -> Dead:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(cli, "Emulator", Dead)
    monkeypatch.setattr(cli, "serve", lambda *a, **k: None)
    monkeypatch.setattr(cli, "format_summary", lambda s: "summary")
    args = argparse.Namespace(
        json=False, appliance_command=None, no_appliance=True, rules=None, duration=1.0,
        outer_udp_checksum=False, no_ipv6=False, seed=None, tcp_idle_timeout=350.0,
        other_idle_timeout=120.0, per_direction_ports=False,
    )  # fmt: skip
    assert cli._run(args) == 1
    assert "the data plane died" in capsys.readouterr().err
