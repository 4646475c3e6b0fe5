"""Hostile input and faults: malformed corpus, flood, health endpoint abuse, SIGTERM under load.

The corpus runs through the pipeline everywhere; the rest runs in network namespaces (CI is
root) and skips with the reason where namespaces are impossible.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from support.gwlb_client import GwlbClient, checksums_valid, http, inner_udp, wait_healthy
from support.malformed import corpus, valid_frame
from support.netns import Pair, netns_unavailable, pair
from test_appliance import daemon, stop

from geneve import Packet, Stats, Verdict, build_frame, process
from geneve.rules.reference import modifier as reference

_why = netns_unavailable()
needs_netns = pytest.mark.skipif(_why is not None, reason=_why or "")


def outcome(stats: Stats) -> tuple[str, str]:
    if stats.forwarded:
        return ("forward", "")
    if stats.skipped:
        return ("skipped", "")
    if stats.malformed:
        (reason,) = stats.malformed_reasons
        return ("malformed", reason)
    (reason,) = stats.drops
    return ("drop", reason)


@pytest.mark.parametrize(("name", "frame", "expected"), corpus(), ids=[c[0] for c in corpus()])
def test_corpus_outcome(name: str, frame: bytes, expected: tuple[str, str]) -> None:
    stats = Stats()
    buf = bytearray(frame)
    before = bytes(buf)
    packet = process(buf, len(buf), reference, stats)
    assert stats.received == 1
    assert outcome(stats) == expected
    if expected[0] == "forward":
        assert packet is not None
        sent = bytes(packet.data)
        # Forwarded unchanged apart from the outer address swap.
        assert sent[:12] == before[:12] and sent[20:] == before[20:]
        assert sent[12:16] == before[16:20] and sent[16:20] == before[12:16]
    else:
        assert packet is None


def test_modifier_returning_garbage_is_an_error_not_a_crash() -> None:
    stats = Stats()
    frame = valid_frame()
    assert process(frame, len(frame), lambda p: "yes please", stats) is None  # type: ignore[arg-type,return-value]
    assert stats.modifier_errors == 1 and stats.drops == {"modifier-error": 1}
    frame = valid_frame()
    sent = process(frame, len(frame), lambda p: 42, stats, on_error="forward")  # type: ignore[arg-type,return-value]
    assert sent is not None and stats.modifier_errors == 2


def test_rewrite_beyond_the_inner_mtu_is_dropped() -> None:
    stats = Stats()
    frame = valid_frame(b"weakly typed " * 10)

    def grow(packet: Packet) -> Verdict | None:
        packet.replace_payload(b"x" * 200)
        return None

    limit = len(frame) - 68 + 50
    assert process(frame, len(frame), grow, stats, max_inner_length=limit) is None
    assert stats.drops == {"too-large": 1}


@pytest.fixture
def ns() -> Iterator[Pair]:
    with pair() as p:
        yield p


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@needs_netns
@pytest.mark.parametrize("receive", ["udp", "raw"])
def test_flood_of_malformed_frames(ns: Pair, receive: str) -> None:
    proc = daemon(ns, "--receive", receive)
    client = GwlbClient(ns)
    candidates = [c[1] for c in corpus() if c[2][0] != "forward" and len(c[1]) >= 20]
    try:
        wait_healthy(ns)
        bad = []
        for frame in candidates:  # the kernel refuses some outright (an IHL below 5, say)
            try:
                client.send(frame)
                bad.append(frame)
            except OSError:
                pass
        assert len(bad) > 100
        # Warm up, then take the memory baseline.
        for i in range(2000):
            client.send(bad[i % len(bad)])
        time.sleep(0.5)
        baseline = rss_kib(proc.pid)
        valid = {}
        for i in range(120_000):
            client.send(bad[i % len(bad)])
            if i % 100 == 0:
                good = client.frame(
                    inner_udp(b"valid %07d weakly typed" % i), src_port=20000 + i % 500
                )
                valid[bytes(good[-20:-13])] = good  # the 7 digits
                client.send(good)
            if i % 400 == 399:
                time.sleep(0.002)  # bounded rate: the socket buffers must not be what drops
        # Some damage is repaired by the kernel on the way out (it rewrites the total length
        # of what a raw socket sends), making a corpus frame valid again: keep ours only.
        replies = [r for r in client.replies(timeout=3.0) if r[-28:-22] == b"valid "]
        assert len(replies) == len(valid), f"{len(valid) - len(replies)} valid frames lost"
        for reply in replies:
            sent = valid[reply[-22:-15]]
            assert checksums_valid(reply)
            assert reply[-14:] == b"strongly typed"
            assert reply[12:16] == sent[16:20] and reply[20:24] == sent[20:24]
        assert proc.poll() is None, "the daemon must stay up"
        answer = http(ns, b"GET / HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200")
        growth = rss_kib(proc.pid) - baseline
        assert growth < 20_000, f"memory grew by {growth} KiB"
        time.sleep(0.6)
        counters = json.loads(http(ns, b"GET / HTTP/1.1\r\n\r\n").split(b"\r\n\r\n", 1)[1])[
            "counters"
        ]
        assert counters["forwarded"] >= len(valid)
        assert counters["malformed"] + counters["dropped"] > 0
    finally:
        client.close()
        rc, err = stop(proc)
    assert rc == 0, err


@needs_netns
def test_health_endpoint_under_abuse(ns: Pair) -> None:
    proc = daemon(ns)
    held: list[socket.socket] = []
    try:
        wait_healthy(ns)
        # Many idle connections, and slow ones that trickle a request.
        for _ in range(300):
            s = ns.gw_socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect((ns.ap_addr, 8080))
            held.append(s)
        for s in held[:20]:
            s.send(b"GET / HT")
        for _ in range(5):
            start = time.monotonic()
            answer = http(ns, b"GET / HTTP/1.1\r\nHost: gwlb\r\n\r\n", timeout=5.0)
            assert answer.startswith(b"HTTP/1.1 200")
            assert time.monotonic() - start < 5.0, "GWLB's check times out after 5 s"
        assert http(ns, b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 3000 + b"\r\n").startswith(
            b"HTTP/1.1 431"
        )
        assert http(ns, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\r\n\r\n").startswith(b"HTTP/1.1 400")
        for method in (b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"):
            assert http(ns, method + b" / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
        assert http(ns, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200")
        # A request that never finishes is cut off; it does not hold the endpoint.
        slow = ns.gw_socket(socket.AF_INET, socket.SOCK_STREAM)
        slow.settimeout(6)
        slow.connect((ns.ap_addr, 8080))
        slow.send(b"GET / HTTP/1.1\r\n")
        start = time.monotonic()
        data = slow.recv(1000)
        assert data.startswith(b"HTTP/1.1 408") or data == b""
        assert time.monotonic() - start < 5
        slow.close()
    finally:
        for s in held:
            s.close()
        rc, err = stop(proc)
    assert rc == 0, err


@needs_netns
def test_sigterm_under_load_loses_nothing_accepted(ns: Pair) -> None:
    proc = daemon(ns)
    client = GwlbClient(ns)
    got: list[bytes] = []
    done = threading.Event()

    def collect() -> None:
        while not done.is_set():
            got.extend(client.replies(timeout=0.2))

    reader = threading.Thread(target=collect)
    try:
        wait_healthy(ns)
        reader.start()
        for i in range(3000):
            client.send(client.frame(inner_udp(b"n%05d" % i, dport=80), src_port=30000 + i % 64))
            if i == 1500:
                proc.send_signal(signal.SIGTERM)
            if i % 200 == 199:
                time.sleep(0.005)
        rc, err = stop(proc)
        assert rc == 0, err
        time.sleep(0.5)
    finally:
        done.set()
        if reader.is_alive():
            reader.join()
        client.close()
        stop(proc)
    m = re.search(r"stopped: received (\d+), forwarded (\d+)", err)
    assert m, err
    assert int(m.group(2)) == len(got), "every frame the appliance accepted was sent back"
    assert int(m.group(2)) > 0


def test_reference_rewrite_past_8500_is_refused_before_any_change() -> None:
    # An inner packet of 8499 bytes: growing by 2 would pass GWLB's 8500-byte limit.
    payload = b"weakly typed " + b"x" * (8499 - 28 - 13)
    for policy, forwarded in (("drop", False), ("forward", True)):
        stats = Stats()
        frame = build_frame(inner_udp(payload))  # to port 3000: the reference rules apply
        original = bytes(frame)
        assert len(frame) - 68 == 8499
        sent = process(frame, len(frame), reference, stats, on_too_large=policy)  # type: ignore[arg-type]
        if forwarded:
            assert sent is not None and stats.too_large_forwarded == 1
            out = bytes(sent.data)
            assert out[20:] == original[20:], "forwarded unchanged"
            assert out[12:16] == original[16:20]
        else:
            assert sent is None and stats.drops == {"too-large": 1}


def test_configured_inner_limit_applies_to_rewrites() -> None:
    stats = Stats()
    frame = build_frame(inner_udp(b"weakly typed"))
    limit = len(frame) - 68  # no room to grow at all
    assert process(frame, len(frame), reference, stats, max_inner_length=limit) is None
    assert stats.drops == {"too-large": 1}
