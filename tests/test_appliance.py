"""The appliance on a real kernel: two network namespaces, real sockets, the real daemon.

CI runs as root, so these run there; they skip (with the reason) only where namespaces are
impossible.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from support.gwlb_client import (
    GwlbClient,
    checksums_valid,
    http,
    inner_icmp_echo,
    inner_udp,
    wait_healthy,
)
from support.netns import Pair, in_netns, ip, netns_unavailable, pair

from geneve import Packet, Verdict, build_frame
from geneve._appliance import STOP_PER_FLOW, Appliance, ApplianceError

_why = netns_unavailable()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_why is not None, reason=_why or "")]


def daemon(p: Pair, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", p.ap, sys.executable, "-m", "geneve.appliance",
         "--health-port", "8080", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def rules_daemon(
    p: Pair, where: pathlib.Path, monkeypatch: pytest.MonkeyPatch, source: str, workers: int
) -> subprocess.Popen[str]:
    """The daemon with ``--workers`` and a ``--rules`` module written from ``source``."""
    (where / "rules_under_test.py").write_text(source)
    monkeypatch.setenv("PYTHONPATH", str(where))
    return daemon(p, "--workers", str(workers), "--rules", "rules_under_test")


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    return proc.returncode, err


@pytest.fixture
def ns() -> Iterator[Pair]:
    with pair() as p:
        yield p


@pytest.fixture
def running(ns: Pair) -> Iterator[tuple[Pair, subprocess.Popen[str], GwlbClient]]:
    proc = daemon(ns)
    client = GwlbClient(ns)
    try:
        wait_healthy(ns)
        yield ns, proc, client
    finally:
        client.close()
        stop(proc)


def geneve_bytes(frame: bytes) -> bytes:
    ihl = (frame[0] & 0x0F) * 4
    g = ihl + 8
    return frame[g : g + 8 + (frame[g] & 0x3F) * 4]


def check_reply(sent: bytes | bytearray, reply: bytes | bytearray) -> Packet:
    sent, reply = bytes(sent), bytes(reply)
    assert reply[12:16] == sent[16:20] and reply[16:20] == sent[12:16], "addresses not swapped"
    assert reply[20:22] == sent[20:22], "GWLB's source port must be kept"
    assert reply[22:24] == (6081).to_bytes(2, "big")
    assert geneve_bytes(reply) == geneve_bytes(sent), "Geneve header must come back unchanged"
    assert checksums_valid(reply)
    return Packet.parse(bytearray(reply))


def test_reference_rules_on_the_wire(
    running: tuple[Pair, subprocess.Popen[str], GwlbClient],
) -> None:
    _p, _proc, client = running
    plain = client.frame(inner_udp(b"hello", dport=80))
    client.send(plain)
    (reply,) = client.replies(want=1)
    check_reply(plain, reply)
    assert reply[28:] == plain[28:], "an untouched packet comes back byte for byte"

    weak = client.frame(inner_udp(b"a weakly typed and weakly typed language", sport=3000, dport=9))
    client.send(weak)
    (reply,) = client.replies(want=1)
    pkt = check_reply(weak, reply)
    assert bytes(pkt.payload or b"") == b"a strongly typed and strongly typed language"
    assert len(reply) == len(weak) + 4

    client.send(client.frame(inner_udp(b"please drop me now")))
    assert client.replies(timeout=0.5) == []

    for seq in (4, 5, 10, 11):
        client.send(client.frame(inner_icmp_echo(seq)))
    replies = client.replies(timeout=1.0, want=2)
    seqs = sorted(Packet.parse(bytearray(r)).icmp.sequence for r in replies)  # type: ignore[union-attr]
    assert seqs == [4, 11]


def test_no_icmp_port_unreachable(running: tuple[Pair, subprocess.Popen[str], GwlbClient]) -> None:
    p, _proc, client = running
    before = p.snmp(p.ap)["Icmp"]["OutDestUnreachs"]
    for i in range(50):
        client.send(client.frame(inner_udp(b"x" * i, dport=80), src_port=30000 + i))
    assert len(client.replies(timeout=2.0, want=50)) == 50
    assert p.snmp(p.ap)["Icmp"]["OutDestUnreachs"] == before


def test_health_http_tcp_and_metrics(
    running: tuple[Pair, subprocess.Popen[str], GwlbClient],
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    p, _proc, client = running
    client.send(client.frame(inner_udp(b"drop me")))
    client.send(client.frame(inner_udp(b"fine", dport=80)))
    client.replies(timeout=0.5, want=1)
    time.sleep(0.6)  # counters are published twice a second

    answer = http(p, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200")
    doc = json.loads(body)
    assert doc["status"] == "ok" and doc["uptime_seconds"] > 0
    assert doc["counters"]["received"] == 2 and doc["counters"]["drops"] == {"rule": 1}

    head_only = http(p, b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert head_only.startswith(b"HTTP/1.1 200") and head_only.endswith(b"\r\n\r\n")

    tcp = p.gw_socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.settimeout(2)
    tcp.connect((p.ap_addr, 8080))  # a GWLB TCP check: the connect is the whole test
    tcp.close()

    metrics = http(p, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").split(b"\r\n\r\n", 1)[1]
    families = {f.name: f for f in text_string_to_metric_families(metrics.decode())}
    assert families["geneve_up"].samples[0].value == 1
    received = families["geneve_received"].samples[0].value
    assert received == 2
    drops = {s.labels["reason"]: s.value for s in families["geneve_dropped"].samples}
    assert drops == {"rule": 1}

    assert http(p, b"POST / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
    assert http(p, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    # A TLS ClientHello (a TLS health check on the HTTP port) is no request: 400 at once, not
    # a 408 once the 2 s a request may take are over.
    start = time.monotonic()
    assert http(p, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").startswith(b"HTTP/1.1 400")
    assert time.monotonic() - start < 1.0
    big = b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n"
    assert http(p, big).startswith(b"HTTP/1.1 431")


def test_sigterm_exits_zero_quickly(ns: Pair) -> None:
    proc = daemon(ns)
    client = GwlbClient(ns)
    try:
        wait_healthy(ns)
        for i in range(200):
            client.send(client.frame(inner_udp(b"load", dport=80), src_port=20000 + i))
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)
        assert time.monotonic() - start < 2.0
        assert proc.returncode == 0
    finally:
        client.close()
        stop(proc)


def test_two_workers_no_duplicates_no_losses(ns: Pair) -> None:
    proc = daemon(ns, "--workers", "2")
    client = GwlbClient(ns)
    try:
        wait_healthy(ns)
        n = 600
        sent = {}
        for i in range(n):
            frame = client.frame(
                inner_udp(i.to_bytes(4, "big"), dport=80), src_port=10000 + i % 150
            )
            sent[bytes(frame[-4:])] = frame
            client.send(frame)
            if i % 50 == 49:
                time.sleep(0.01)  # bounded bursts: the test is about correctness, not load
        replies = client.replies(timeout=3.0, want=n)
        keys = [r[-4:] for r in replies]
        assert len(keys) == n and len(set(keys)) == n
        time.sleep(0.7)
        doc = json.loads(http(ns, b"GET / HTTP/1.1\r\n\r\n").split(b"\r\n\r\n", 1)[1])
        assert doc["counters"]["received"] == n and doc["workers"] == 2
    finally:
        client.close()
        rc, err = stop(proc)
    assert rc == 0, err


STEERING_RULES = """
import os

def modifier(packet):
    with open({log!r}, "a") as f:
        f.write(f"{{os.getpid()}} {{packet.inner_src}} {{packet.inner_dst}}\\n")
"""


@pytest.mark.parametrize("workers", [2, 3])
def test_both_directions_of_a_flow_reach_one_worker(
    ns: Pair, workers: int, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6

    log = tmp_path / "seen.txt"
    proc = rules_daemon(ns, tmp_path, monkeypatch, STEERING_RULES.format(log=str(log)), workers)
    client = GwlbClient(ns)
    sent = 0
    try:
        wait_healthy(ns)
        for i in range(24):
            version = IPv6 if i % 2 else IP
            if i % 2:
                a, b = f"2001:db8::{i + 1:x}", f"2001:db8:1::{i % 5 + 1:x}"
            else:
                a, b = f"172.16.{i}.{i + 7}", f"192.0.2.{i % 5 + 1}"
            request, answer = version(src=a, dst=b), version(src=b, dst=a)
            for _ in range(3):  # each direction on its own outer source port, as GWLB may do
                client.send(
                    client.frame(
                        bytes(request / UDP(sport=40000 + i, dport=80) / b"q"),
                        src_port=20000 + 2 * i,
                    )
                )
                client.send(
                    client.frame(
                        bytes(answer / UDP(sport=80, dport=40000 + i) / b"a"),
                        src_port=33333 + 7 * i,
                    )
                )
                sent += 2
        assert len(client.replies(timeout=3.0, want=sent)) == sent
    finally:
        client.close()
        rc, err = stop(proc)
    assert rc == 0, err
    owners: dict[frozenset[str], set[str]] = {}
    lines = log.read_text().splitlines()
    assert len(lines) == sent
    for line in lines:
        pid, src, dst = line.split()
        owners.setdefault(frozenset((src, dst)), set()).add(pid)
    assert len(owners) == 24
    assert all(len(pids) == 1 for pids in owners.values()), owners
    assert len(set().union(*owners.values())) == workers, "every worker owns some flows"


def in_process(p: Pair, modifier: object, **kw: object) -> Appliance:
    app = Appliance(modifier, health_port=8080, **kw)  # type: ignore[arg-type]
    in_netns(p.ap, app.start)
    return app


def test_steering_refused_warns_and_keeps_working(
    ns: Pair, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import geneve._appliance as appliance_module

    def refuse(group: list[socket.socket]) -> None:
        raise OSError(errno.ENOPROTOOPT, "Protocol not available")

    monkeypatch.setattr(appliance_module, "steer", refuse)
    app = in_process(ns, lambda packet: None, workers=2)
    client = GwlbClient(ns)
    try:
        wait_healthy(ns)
        assert client.exchange(inner_udp(b"still here", dport=80)) is not None
    finally:
        client.close()
        app.stop()
    warnings = [r.getMessage() for r in caplog.records if "steer" in r.getMessage()]
    assert len(warnings) == 1 and "Protocol not available" in warnings[0], warnings


@pytest.mark.parametrize("policy", ["drop", "forward"])
def test_modifier_raising(ns: Pair, policy: str) -> None:
    def modifier(packet: Packet) -> Verdict | None:
        if packet.ports == (40000, 3000):
            raise RuntimeError("boom")
        return None

    app = in_process(ns, modifier, on_error=policy)
    client = GwlbClient(ns)
    try:
        wait_healthy(ns)
        for _ in range(3):
            frame = client.frame(inner_udp(b"payload"))
            client.send(frame)
        replies = client.replies(timeout=0.7)
        client.send(client.frame(inner_udp(b"ok", dport=81)))
        assert len(client.replies(timeout=1.0, want=1)) == 1, "the loop must go on"
        if policy == "drop":
            assert replies == []
        else:
            assert len(replies) == 3
            assert all(r[28:] == frame[28:] for r in replies)
        stats = app.stats()
        assert stats["modifier_errors"] == 3
        assert stats["forwarded"] == (1 if policy == "drop" else 4)
        assert app.problems() == []
    finally:
        client.close()
        app.stop()


def test_health_503_when_worker_stops(ns: Pair) -> None:
    app = in_process(ns, lambda packet: None)
    try:
        wait_healthy(ns)
        app._local_workers[0].stop.set()
        time.sleep(0.6)
        answer = http(ns, b"GET / HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503")
        assert b"not running" in answer
        metrics = http(ns, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert b"geneve_up 0" in metrics
    finally:
        app.stop()


def test_health_503_when_a_worker_process_dies(ns: Pair) -> None:
    app = in_process(ns, lambda packet: None, workers=2)
    try:
        wait_healthy(ns)
        proc, _conn = app._processes[1]
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(2)
        assert http(ns, b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 503")
    finally:
        app.stop()


def test_health_503_when_worker_is_stuck(ns: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    import geneve._appliance as appliance_module

    monkeypatch.setattr(appliance_module, "STALE_AFTER", 0.8)

    def slow(packet: Packet) -> None:
        time.sleep(2.5)

    app = in_process(ns, slow)
    client = GwlbClient(ns)
    try:
        wait_healthy(ns)
        client.send(client.frame(inner_udp(b"slow")))
        time.sleep(1.5)
        answer = http(ns, b"GET / HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503") and b"not making progress" in answer
        time.sleep(1.6)
        assert http(ns, b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200")
    finally:
        client.close()
        app.stop()


def test_own_replies_are_never_processed(ns: Pair) -> None:
    app = in_process(ns, lambda packet: None)
    try:
        wait_healthy(ns)

        def send_from_self() -> None:
            from support.gwlb_client import inner_udp as mk

            tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
            frame = build_frame(mk(b"loop"), src=ns.ap_addr, dst=ns.ap_addr, src_port=6081)
            tx.sendto(frame, (ns.ap_addr, 0))
            tx.close()

        in_netns(ns.ap, send_from_self)
        time.sleep(0.3)
        stats = app.stats()
        assert stats["own_replies_ignored"] == 1 and stats["received"] == 0
    finally:
        app.stop()


def test_raw_receive_mode(ns: Pair) -> None:
    proc = daemon(ns, "--receive", "raw")
    client = GwlbClient(ns)
    try:
        wait_healthy(ns)
        before = ns.snmp(ns.ap)["Icmp"]["OutDestUnreachs"]
        frame = client.frame(inner_udp(b"weakly typed"))
        client.send(frame)
        (reply,) = client.replies(want=1)
        pkt = check_reply(frame, reply)
        assert bytes(pkt.payload or b"") == b"strongly typed"
        assert client.replies(timeout=0.3) == [], "exactly one reply"
        assert ns.snmp(ns.ap)["Icmp"]["OutDestUnreachs"] == before
        # A raw socket also sees datagrams whose UDP checksum is wrong, which a UDP socket
        # never does: those stop here; a right one (or 0, above) is answered.
        checked = build_frame(
            inner_udp(b"checked"), src=ns.gw_addr, dst=ns.ap_addr, udp_checksum=True
        )
        broken = bytearray(checked)
        broken[26] ^= 0x5A
        client.send(broken)
        client.send(checked)
        (reply,) = client.replies(want=1)
        check_reply(checked, reply)
        assert client.replies(timeout=0.3) == [], "the broken frame is not answered"
    finally:
        client.close()
        rc, err = stop(proc)
    assert rc == 0, err


@pytest.mark.parametrize(
    "args", [(), ("--workers", "2"), ("--batch", "1"), ("--receive", "raw")], ids=" ".join
)
def test_geneve_to_a_broadcast_address_is_not_answered(ns: Pair, args: tuple[str, ...]) -> None:
    # Every socket on the port receives a broadcast: answering would reply from the broadcast
    # address, once per worker. Unicast to the appliance is answered as ever.
    proc = daemon(ns, *args)
    client = GwlbClient(ns)
    sender = ns.gw_socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        wait_healthy(ns)
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        in_netns(ns.gw, lambda: sender.bind((ns.gw_addr, 50001)))
        geneve_part = bytes(client.frame(inner_udp(b"weakly typed"), src_port=50001))[28:]
        # A local route (AnyIP) makes a whole subnet the appliance's own: unicast too.
        ip("-n", ns.ap, "route", "add", "local", "10.20.0.0/24", "dev", "lo")
        ip("-n", ns.gw, "route", "add", "10.20.0.0/24", "via", ns.ap_addr)
        sender.sendto(geneve_part, ("10.201.0.255", 6081))
        sender.sendto(geneve_part, ("255.255.255.255", 6081))
        sender.sendto(geneve_part, (ns.ap_addr, 6081))
        sender.sendto(geneve_part, ("10.20.0.5", 6081))
        sources = set()
        client.rx.settimeout(1.0)
        with contextlib.suppress(TimeoutError):
            while True:
                data = client.rx.recv(65535)
                if data[16:20] == socket.inet_aton(ns.gw_addr) and data[22:24] == b"\x17\xc1":
                    sources.add(socket.inet_ntoa(data[12:16]))
        assert sources == {ns.ap_addr, "10.20.0.5"}  # one reply each, none from a broadcast
        time.sleep(0.6)  # counters are published twice a second
        _head, body = http(ns, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").split(b"\r\n\r\n", 1)
        drops = json.loads(body)["counters"]["drops"]
        workers = 2 if "--workers" in args else 1
        assert drops.get("not-unicast") == 2 * workers, drops
    finally:
        sender.close()
        client.close()
        rc, err = stop(proc)
    assert rc == 0, err


def one_line_failure(proc: subprocess.Popen[str]) -> str:
    try:
        _out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise AssertionError("the daemon should have refused to start") from None
    rc = proc.returncode
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_startup_port_taken(ns: Pair) -> None:
    holder = in_netns(ns.ap, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    try:
        holder.bind(("0.0.0.0", 6081))
        line = one_line_failure(daemon(ns))
        assert "6081" in line and "in use" in line
    finally:
        holder.close()


def test_startup_port_taken_by_reuseport_user(ns: Pair) -> None:
    holder = in_netns(ns.ap, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("0.0.0.0", 6081))
        assert "in use" in one_line_failure(daemon(ns))
    finally:
        holder.close()


def test_startup_bad_rules(ns: Pair) -> None:
    assert "--rules" in one_line_failure(daemon(ns, "--rules", "no.such.module:thing"))
    assert "--rules" in one_line_failure(daemon(ns, "--rules", "geneve.rules:nothing_here"))


def test_startup_unknown_user_or_unusable_health_address(ns: Pair) -> None:
    # Each is one line and nothing else (no summary of a run that never began).
    assert "no such user" in one_line_failure(daemon(ns, "--user", "no-such-geneve-user"))
    line = one_line_failure(daemon(ns, "--health-host", "192.0.2.1"))  # not an address here
    assert "health endpoint 192.0.2.1:8080" in line


def test_startup_without_raw_socket_permission(ns: Pair) -> None:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns.ap, "setpriv", "--reuid=65534", "--regid=65534",
         "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
         sys.executable, "-m", "geneve.appliance", "--port", "16081", "--health-port", "18080"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = one_line_failure(proc)
    assert "CAP_NET_RAW" in line


def test_constructor_rejects_bad_options() -> None:
    with pytest.raises(ApplianceError):
        Appliance(lambda p: None, workers=0)
    with pytest.raises(ApplianceError):
        Appliance(lambda p: None, receive="raw", workers=2)
    with pytest.raises(ApplianceError):
        Appliance(lambda p: None, on_error="explode")  # type: ignore[arg-type]
    with pytest.raises(ApplianceError):
        Appliance("not callable")  # type: ignore[arg-type]
    with pytest.raises(ApplianceError, match="no such user"):
        Appliance(lambda p: None, user="no-such-geneve-user")


def test_allow_from_refuses_other_sources(ns: Pair) -> None:
    proc = daemon(ns, "--allow-from", "10.201.0.200/32")
    client = GwlbClient(ns)
    try:
        wait_healthy(ns)
        client.send(client.frame(inner_udp(b"spoofed?", dport=80)))
        assert client.replies(timeout=0.5) == [], "a source outside --allow-from gets nothing"
        time.sleep(0.6)
        doc = json.loads(http(ns, b"GET / HTTP/1.1\r\n\r\n").split(b"\r\n\r\n", 1)[1])
        assert doc["counters"]["not_allowed"] == 1 and doc["counters"]["received"] == 0
    finally:
        client.close()
        _rc, err = stop(proc)
    assert "no --allow-from" not in err

    proc = daemon(ns, "--allow-from", "10.201.0.0/24")
    client = GwlbClient(ns)
    try:
        wait_healthy(ns)
        assert client.exchange(inner_udp(b"mine", dport=80)) is not None
    finally:
        client.close()
        stop(proc)


def test_warns_without_allow_from(ns: Pair) -> None:
    proc = daemon(ns)
    try:
        wait_healthy(ns)
    finally:
        _rc, err = stop(proc)
    assert "no --allow-from" in err


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _daemon_pid(ip_netns_pid: int) -> int:
    # `ip netns exec` execs the command in place, so the pid is the daemon's.
    return ip_netns_pid


@pytest.mark.parametrize("workers", ["1", "2"])
def test_user_drops_root_and_keeps_working(ns: Pair, workers: str) -> None:
    # With 2 workers they are forked after the switch, when the interpreter's own files may
    # be out of reach (here, a Python under /root): what forking needs was imported before.
    proc = daemon(ns, "--user", "nobody", "--workers", workers)
    client = GwlbClient(ns)
    try:
        wait_healthy(ns)
        status = _status(_daemon_pid(proc.pid))
        assert status["Uid"].split()[:2] == ["65534", "65534"]
        assert int(status["CapEff"], 16) == 0, "no capability is left after the switch"
        for port in range(50000, 50008):  # flows to both workers
            reply = client.exchange(inner_udp(b"weakly typed"), src_port=port)
            assert reply is not None and b"strongly typed" in reply
    finally:
        client.close()
        rc, err = stop(proc)
    assert rc == 0, err


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_workers_do_not_outlive_the_daemon(ns: Pair, how: signal.Signals) -> None:
    proc = daemon(ns, "--workers", "2")
    try:
        wait_healthy(ns)
        pid = _daemon_pid(proc.pid)
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            workers = [int(x) for x in f.read().split()]
        assert len(workers) == 2
        proc.send_signal(how)
        rc = proc.wait(5)
        assert rc == (-signal.SIGKILL if how == signal.SIGKILL else 0)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{w}") for w in workers):
            time.sleep(0.1)
        left = [w for w in workers if os.path.exists(f"/proc/{w}")]
        for w in left:  # ours: end them so that the namespace can go
            os.kill(w, signal.SIGKILL)
        assert left == [], "workers outlived the daemon"
    finally:
        stop(proc)


def test_runs_with_only_cap_net_raw(ns: Pair) -> None:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns.ap, "setpriv", "--reuid=65534", "--regid=65534",
         "--clear-groups", "--inh-caps=+net_raw", "--ambient-caps=+net_raw",
         sys.executable, "-m", "geneve.appliance", "--health-port", "8080"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    client = GwlbClient(ns)
    try:
        wait_healthy(ns)
        status = _status(proc.pid)
        assert status["Uid"].split()[0] == "65534"
        assert int(status["CapEff"], 16) == 1 << 13  # CAP_NET_RAW only
        assert client.exchange(inner_udp(b"hello", dport=80)) is not None
    finally:
        client.close()
        rc, err = stop(proc)
    assert rc == 0, err


def test_send_error_is_counted_not_fatal(ns: Pair) -> None:
    run_mtu = ["ip", "-n", ns.ap, "link", "set", "gnvt-veth1", "mtu", "1500"]
    subprocess.run(run_mtu, check=True)
    proc = daemon(ns)
    client = GwlbClient(ns)
    try:
        wait_healthy(ns)
        # 1500 bytes on the wire; the rewrite adds 2, which the link cannot carry: EMSGSIZE.
        filler = b"x" * (1500 - 68 - 28 - len(b"weakly typed"))
        frame = client.frame(inner_udp(b"weakly typed" + filler))
        assert len(frame) == 1500
        client.send(frame)
        assert client.replies(timeout=0.5) == []
        assert client.exchange(inner_udp(b"still alive", dport=80)) is not None
        time.sleep(0.6)
        doc = json.loads(http(ns, b"GET / HTTP/1.1\r\n\r\n").split(b"\r\n\r\n", 1)[1])
        assert doc["counters"]["send_errors"] == 1 and doc["status"] == "ok"
    finally:
        client.close()
        rc, err = stop(proc)
    assert rc == 0, err


def test_one_frame_per_system_call_path(ns: Pair) -> None:
    proc = daemon(ns, "--batch", "1")
    client = GwlbClient(ns)
    try:
        wait_healthy(ns)
        frame = client.frame(inner_udp(b"weakly typed"))
        client.send(frame)
        (reply,) = client.replies(want=1)
        assert bytes(check_reply(frame, reply).payload or b"") == b"strongly typed"
        client.send(client.frame(inner_udp(b"drop me")))
        assert client.replies(timeout=0.3) == []
    finally:
        client.close()
        rc, err = stop(proc)
    assert rc == 0, err


def test_fast_path_forwards_what_no_rule_touches(ns: Pair) -> None:
    from geneve import declare_interest

    seen: list[tuple[int, int] | None] = []

    def watcher(packet: Packet) -> None:
        seen.append(packet.ports)

    app = in_process(ns, declare_interest(watcher, udp_ports=[53], tcp_ports=[]))
    client = GwlbClient(ns)
    try:
        wait_healthy(ns)
        # The first frame of a new source goes through Python, which admits the source.
        assert client.exchange(inner_udp(b"first", dport=4000)) is not None
        frames = [client.frame(inner_udp(b"bulk %03d" % i, dport=4000)) for i in range(200)]
        frames.append(client.frame(inner_udp(b"dns", dport=53)))
        for frame in frames:
            client.send(frame)
        replies = client.replies(timeout=2.0, want=len(frames))
        assert len(replies) == len(frames)
        by_payload = {bytes(f[-7:]): f for f in frames}
        for reply in replies:
            sent = by_payload[reply[-7:]] if reply[-3:] != b"dns" else frames[-1]
            check_reply(sent, reply)
            assert reply[24:] == sent[24:]
        # The modifier saw the first frame (admission) and the DNS frame; nothing else.
        assert seen == [(40000, 4000), (40000, 53)]
        stats = app.stats()
        assert stats["forwarded"] == len(frames) + 1 and stats["received"] == len(frames) + 1
    finally:
        client.close()
        app.stop()


def test_fast_path_takes_inner_ipv6_and_refuses_it_malformed(ns: Pair) -> None:
    from support.frames import make_inner, naive_checksum

    from geneve import declare_interest

    seen: list[tuple[int, tuple[int, int] | None]] = []

    def watcher(packet: Packet) -> None:
        seen.append((packet.ip_version, packet.ports))

    app = in_process(ns, declare_interest(watcher, udp_ports=[53], tcp_ports=[80]))
    client = GwlbClient(ns)
    try:
        wait_healthy(ns)
        assert client.exchange(inner_udp(b"first", dport=4000)) is not None  # admits the source
        plain = [make_inner(6, "udp", b"v6 udp %03d" % i, dport=4000) for i in range(40)]
        plain += [make_inner(6, "tcp", b"v6 tcp %03d" % i, dport=8080) for i in range(40)]
        python = [
            make_inner(6, "udp", b"v6 dns", dport=53),
            make_inner(6, "tcp", b"v6 web", dport=80),
            make_inner(6, "icmp", b"v6 ping", icmp_seq=3),
        ]
        frames = [client.frame(inner) for inner in plain + python]
        for frame in frames:
            client.send(frame)
        replies = client.replies(timeout=2.0, want=len(frames))
        assert len(replies) == len(frames)
        sent_by_tail = {bytes(f[-10:]): f for f in frames}
        for reply in replies:
            sent = sent_by_tail[reply[-10:]]
            assert reply[12:16] == sent[16:20] and reply[16:20] == sent[12:16]
            assert reply[20:] == sent[20:] and naive_checksum(reply[:20]) == 0
        # Python saw the admission frame and the three frames of interest, nothing else.
        assert seen == [(4, (40000, 4000)), (6, (40000, 53)), (6, (40000, 80)), (6, None)]

        good = bytearray(make_inner(6, "udp", b"v6 damaged", dport=4000))
        bad_udp_length = bytearray(good)
        bad_udp_length[44:46] = (len(good) - 40 + 2).to_bytes(2, "big")
        long_payload_length = bytearray(good)
        long_payload_length[4:6] = (len(good) - 40 + 8).to_bytes(2, "big")
        short_payload_length = bytearray(good)
        short_payload_length[4:6] = (4).to_bytes(2, "big")
        not_v6 = bytearray(good)
        not_v6[0] = 0x45
        damaged = [bad_udp_length, long_payload_length, short_payload_length, not_v6]
        for inner in damaged:
            client.send(client.frame(bytes(inner), cookie=0x66))
        assert client.replies(timeout=1.0) == [], "a malformed IPv6 frame came back"
        assert len(seen) == 4
        stats = app.stats()
        assert stats["malformed"] == len(damaged), stats["malformed_reasons"]
    finally:
        client.close()
        app.stop()


def test_fast_path_off_calls_the_modifier_for_everything(ns: Pair) -> None:
    from geneve import declare_interest

    seen = []
    modifier = declare_interest(lambda packet: seen.append(1), udp_ports=[], tcp_ports=[])
    app = in_process(ns, modifier, fast_path=False)
    client = GwlbClient(ns)
    try:
        wait_healthy(ns)
        for i in range(50):
            client.send(client.frame(inner_udp(b"x%02d" % i, dport=4000)))
        assert len(client.replies(timeout=2.0, want=50)) == 50
        assert len(seen) == 50
    finally:
        client.close()
        app.stop()


def test_fast_path_never_forwards_a_malformed_frame(ns: Pair) -> None:
    from support.malformed import corpus

    proc = daemon(ns)
    client = GwlbClient(ns)
    try:
        wait_healthy(ns)
        # A valid frame first, so the source is admitted and the C path is live for it.
        assert client.exchange(inner_udp(b"hello", dport=4000)) is not None
        sent = 0
        for name, frame, expected in corpus():
            # Damage behind the outer headers, which the kernel passes on unchanged.
            if expected[0] in ("malformed", "drop") and name.startswith(("inner-", "geneve-")):
                client.send(frame)
                sent += 1
        assert sent >= 10
        assert client.replies(timeout=1.0) == [], "a malformed frame came back"
        assert client.exchange(inner_udp(b"still fine", dport=4000)) is not None
    finally:
        client.close()
        rc, err = stop(proc)
    assert rc == 0, err


def test_fast_path_filters_by_payload_content(ns: Pair) -> None:
    from geneve import declare_interest

    seen: list[bytes] = []

    def watcher(packet: Packet) -> None:
        seen.append(bytes(packet.payload or b""))

    modifier = declare_interest(watcher, udp_ports=[3000], tcp_ports=[], payload_contains=[b"key"])
    app = in_process(ns, modifier)
    client = GwlbClient(ns)
    try:
        wait_healthy(ns)
        assert client.exchange(inner_udp(b"first", dport=3000)) is not None  # admits the source
        payloads = [b"plain %02d" % i for i in range(40)] + [b"has key 1", b"a key again"]
        for payload in payloads:
            client.send(client.frame(inner_udp(payload, dport=3000)))
        assert len(client.replies(timeout=2.0, want=len(payloads))) == len(payloads)
        assert seen == [b"first", b"has key 1", b"a key again"]
    finally:
        client.close()
        app.stop()


def test_reference_rules_with_the_fast_path(ns: Pair) -> None:
    proc = daemon(ns)
    client = GwlbClient(ns)
    try:
        wait_healthy(ns)
        assert client.exchange(inner_udp(b"warm up", dport=4000)) is not None
        frames = {}
        for i in range(60):
            text = (
                b"%02d weakly typed" % i
                if i % 3 == 0
                else b"%02d drop me" % i
                if i % 3 == 1
                else b"%02d plain" % i
            )
            frame = client.frame(inner_udp(text, sport=40000 + i, dport=3000))
            frames[40000 + i] = (text, frame)
            client.send(frame)
        replies = client.replies(timeout=2.0, want=40)
        assert len(replies) == 40 and client.replies(timeout=0.3) == []
        for reply in replies:
            pkt = check_reply(frames[Packet.parse(bytearray(reply)).ports[0]][1], reply)  # type: ignore[index]
            text = frames[pkt.ports[0]][0]  # type: ignore[index]
            assert bytes(pkt.payload or b"") == text.replace(b"weakly", b"strongly")
            assert b"drop me" not in text
    finally:
        client.close()
        rc, err = stop(proc)
    assert rc == 0, err


LIFECYCLE_RULES = """
import os

class Recorder:
    def _write(self, what):
        with open({log!r}, "a") as f:
            f.write(f"{{os.getpid()}} {{what}}\\n")

    def __call__(self, packet):
        return None

    def on_start(self):
        self._write("start")

    def on_tick(self, now):
        self._write("tick")

    def on_stop(self):
        self._write("stop")

modifier = Recorder()
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_every_worker_runs_on_start_on_tick_and_on_stop_at_sigterm(
    ns: Pair, workers: int, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Forked workers never run atexit: the stop hook is how a modifier keeps what it holds.
    log = tmp_path / "hooks.txt"
    proc = rules_daemon(ns, tmp_path, monkeypatch, LIFECYCLE_RULES.format(log=str(log)), workers)
    try:
        wait_healthy(ns)
        time.sleep(1.6)  # long enough for a tick in every worker
    finally:
        rc, err = stop(proc)
    assert rc == 0, err
    lines = [line.split() for line in log.read_text().splitlines()]
    by_pid: dict[str, list[str]] = {}
    for pid, what in lines:
        by_pid.setdefault(pid, []).append(what)
    assert len(by_pid) == workers, by_pid
    for events in by_pid.values():
        assert events[0] == "start" and events[-1] == "stop" and "tick" in events, events
        assert events.count("start") == events.count("stop") == 1


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("inf"), float("nan")])
def test_a_stop_timeout_must_be_a_positive_number(timeout: float) -> None:
    with pytest.raises(ApplianceError, match="stop_timeout"):
        Appliance(lambda packet: None, stop_timeout=timeout)


class EndsSlowly:
    """Forwards everything; ending a flow takes (nearly) forever."""

    def __call__(self, packet: Packet) -> None:
        return None

    def on_flow_end(self, flow: object, reason: str) -> None:
        time.sleep(3600)


def test_a_worker_past_its_stop_allowance_is_killed_and_says_how_many_flows(
    ns: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    # One pair of inner addresses: every flow is steered to the same one of the two workers.
    flows, stop_timeout = 300, 0.3
    app = in_process(ns, EndsSlowly(), workers=2, stop_timeout=stop_timeout)
    client = GwlbClient(ns)
    try:
        for i in range(flows):
            client.send(client.frame(inner_udp(b"x", sport=20000 + i)))
        assert len(client.replies(timeout=3.0, want=flows)) == flows
        deadline = time.monotonic() + 3
        while app.stats()["flows_active"] < flows and time.monotonic() < deadline:
            time.sleep(0.1)
        live = sorted(s["stats"]["flows_active"] for s in app._worker_states())
        assert live == [0, flows]
        start = time.monotonic()
        with caplog.at_level("ERROR", logger="geneve.appliance"):
            app.stop()
        took = time.monotonic() - start
    finally:
        client.close()
        app.stop()
    # The worker with the flows had its allowance, stop_timeout + 1 ms per live flow, and
    # not much more; the other stopped by itself.
    assert stop_timeout + flows * STOP_PER_FLOW <= took < stop_timeout + flows * STOP_PER_FLOW + 1.5
    (line,) = [r.getMessage() for r in caplog.records if "were lost" in r.getMessage()]
    assert "killed" in line and f"up to {flows} flows" in line, line


def _health(p: Pair) -> tuple[int, dict[str, object]]:
    answer = http(p, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", timeout=2.0)
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize("second", [False, True], ids=["drain", "second-sigterm"])
def test_sigterm_drains_then_stops(ns: Pair, second: bool) -> None:
    """--drain-seconds: at SIGTERM health answers 503 "draining" at once while frames are
    still answered; the daemon stops after the drain, or at once on a second SIGTERM."""
    proc = daemon(ns, "--drain-seconds", "3")
    client = GwlbClient(ns)
    try:
        wait_healthy(ns)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        status, body = _health(ns)
        assert status == 503 and body["status"] == "draining"
        frame = client.frame(inner_udp(b"still here", dport=80))
        client.send(frame)
        (reply,) = client.replies(want=1)
        check_reply(frame, reply)
        assert proc.poll() is None
        if second:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        took = time.monotonic() - start
        assert proc.returncode == 0
        assert took < 2.5 if second else 3.0 <= took < 6.0, took
        _out, err = proc.communicate()
        assert "draining" in err and "stopped:" in err
    finally:
        client.close()
        stop(proc)


def test_drain_seconds_is_checked() -> None:
    with pytest.raises(ApplianceError, match="drain_seconds"):
        Appliance(lambda packet: None, drain_seconds=-1)


RULES_V1 = """
from geneve import Verdict

class Rules:
    def __call__(self, packet):
        payload = bytes(packet.buf[packet.payload_offset:packet.ip_end])
        if payload.startswith(b"stick") and packet.flow is not None:
            packet.flow.verdict = Verdict.DROP  # this flow: dropped from now on, both ways
        if b"v1-drops" in payload or payload.startswith(b"stick"):
            return Verdict.DROP
        return None

modifier = Rules()
"""
RULES_V2 = RULES_V1.replace('b"v1-drops"', 'b"v2-drops"') + "\n# v2\n"


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_the_rules_and_keeps_flows(
    ns: Pair, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    rules = tmp_path / "rules_under_test.py"
    rules.write_text(RULES_V1)
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")  # the file is read again, not a cache
    proc = rules_daemon(ns, tmp_path, monkeypatch, RULES_V1, workers)
    client = GwlbClient(ns)

    def answered(payload: bytes, sport: int) -> bool:
        client.send(client.frame(inner_udp(payload, sport=sport, dport=4000), src_port=sport))
        return bool(client.replies(want=1, timeout=0.5))

    try:
        wait_healthy(ns)
        # Several flows (so both workers have some), each checked before and after.
        ports = range(41000, 41008)
        assert not any(answered(b"v1-drops", p) for p in ports)
        assert all(answered(b"v2-drops", p) for p in ports)
        assert not answered(b"stick", 42000)  # a flow with a DROP verdict
        rules.write_text(RULES_V2)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while answered(b"v2-drops", 41000) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(answered(b"v1-drops", p) for p in ports)
        assert not any(answered(b"v2-drops", p) for p in ports)
        assert not answered(b"fine", 42000)  # the verdict set before the reload holds
        assert answered(b"fine", 42001)
        # A reload that fails keeps the rules running, says so and counts it.
        rules.write_text("raise RuntimeError('broken on purpose')\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert not answered(b"v2-drops", 41003) and answered(b"v1-drops", 41003)
        status, body = _health(ns)
        assert status == 200
        assert body["reloads"] == {"done": 1, "failed": 1}
        metrics = http(ns, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").decode()
        assert "geneve_reloads_total 1" in metrics
        assert "geneve_reload_failures_total 1" in metrics
        code, err = stop(proc)
        assert code == 0
        assert "reload failed, the old rules stay" in err and "broken on purpose" in err
    finally:
        client.close()
        stop(proc)


def test_start_after_stop_is_healthy_and_counts_afresh(ns: Pair) -> None:
    for workers in (1, 2):
        app = in_process(ns, lambda packet: None, workers=workers)
        client = GwlbClient(ns)
        try:
            wait_healthy(ns)
            assert client.exchange(inner_udp(b"one", dport=80)) is not None
            app.stop()
            in_netns(ns.ap, app.start)
            wait_healthy(ns)
            time.sleep(0.6)  # past a heartbeat: a stale old worker would show now
            assert app.problems() == []
            assert app.stats()["received"] == 0
            assert client.exchange(inner_udp(b"two", dport=80)) is not None
            deadline = time.monotonic() + 2
            while app.stats()["received"] < 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert app.stats()["received"] == 1
        finally:
            client.close()
            app.stop()


def test_set_modifier_swaps_at_run_time(ns: Pair, tmp_path: pathlib.Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    app = in_process(ns, lambda packet: None)
    client = GwlbClient(ns)
    try:
        wait_healthy(ns)
        assert client.exchange(inner_udp(b"a", dport=80)) is not None
        assert app.set_modifier(lambda packet: Verdict.DROP)
        deadline = time.monotonic() + 3
        while client.exchange(inner_udp(b"b", dport=80)) is not None:
            assert time.monotonic() < deadline, "the new modifier never took over"
        (tmp_path / "swapped_rules.py").write_text("def modifier(packet):\n    return None\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        assert app.set_modifier("swapped_rules:modifier")
        deadline = time.monotonic() + 3
        while client.exchange(inner_udp(b"c", dport=80)) is None:
            assert time.monotonic() < deadline, "the imported modifier never took over"
        with pytest.raises(ApplianceError, match="cannot import"):
            app.set_modifier("no_such_module_here:modifier")
    finally:
        client.close()
        app.stop()


def test_a_modifier_raising_on_most_frames_fails_health_and_logs_tracebacks(
    ns: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    def modifier(packet: Packet) -> None:
        raise ValueError("boom in the rules")

    app = in_process(ns, modifier)
    client = GwlbClient(ns)
    try:
        wait_healthy(ns)
        for i in range(40):
            client.send(client.frame(inner_udp(b"x", dport=80), src_port=30000 + i))
        deadline = time.monotonic() + 3
        while app.stats()["modifier_errors"] < 40 and time.monotonic() < deadline:
            time.sleep(0.1)
        answer = http(ns, b"GET / HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503") and b"the modifier raised on 100%" in answer
    finally:
        client.close()
        app.stop()
    logged = [r for r in caplog.records if "modifier error" in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert "boom in the rules" in caplog.text and "Traceback" in caplog.text
    assert "in modifier" in caplog.text  # the frame of the user's function


def test_max_error_share_is_checked() -> None:
    for share in (0, 1.5, -1):
        with pytest.raises(ApplianceError, match="max_error_share"):
            Appliance(lambda packet: None, max_error_share=share)


def test_the_modifiers_own_reasons_and_counters_reach_metrics(ns: Pair) -> None:
    import geneve

    denied = Verdict.drop("policy-x")

    def modifier(packet: Packet) -> geneve.Drop | None:
        geneve.count("live-seen")
        return denied if bytes(packet.payload or b"") == b"no" else None

    before = geneve._pipeline.rule_counters().get("live-seen", 0)
    app = in_process(ns, modifier)
    client = GwlbClient(ns)
    try:
        wait_healthy(ns)
        assert client.exchange(inner_udp(b"no", dport=80)) is None
        assert client.exchange(inner_udp(b"yes", dport=80)) is not None
        metrics = http(ns, b"GET /metrics HTTP/1.1\r\n\r\n").decode()
        assert 'geneve_dropped_total{reason="rule:policy-x"} 1' in metrics
        assert f'geneve_rule_counter_total{{name="live-seen"}} {before + 2}' in metrics
        _status, body = _health(ns)
        assert body["rule_counters"] == {"live-seen": before + 2}
    finally:
        client.close()
        app.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reads_the_rules_config_again(
    ns: Pair, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    (tmp_path / "ported_rules.py").write_text(
        "from geneve import Verdict\n"
        "def make(table):\n"
        "    blocked = set(table['blocked_ports'])\n"
        "    return lambda packet: Verdict.DROP if packet.ports[1] in blocked else None\n"
    )
    config = tmp_path / "rules.toml"
    config.write_text("blocked_ports = [4001]\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    proc = daemon(ns, "--workers", str(workers), "--rules-factory", "ported_rules:make",
                  "--rules-config", str(config))  # fmt: skip
    client = GwlbClient(ns)

    def answered(dport: int, sport: int) -> bool:
        client.send(client.frame(inner_udp(b"x", sport=sport, dport=dport), src_port=sport))
        return bool(client.replies(want=1, timeout=0.5))

    try:
        wait_healthy(ns)
        ports = range(41000, 41006)
        assert not any(answered(4001, p) for p in ports) and all(answered(4002, p) for p in ports)
        config.write_text("blocked_ports = [4002]\n")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while answered(4002, 41000) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(answered(4001, p) for p in ports) and not any(answered(4002, p) for p in ports)
    finally:
        client.close()
        code, err = stop(proc)
    assert code == 0, err


def test_the_daemon_tells_systemd_ready_reloading_stopping(
    ns: Pair, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    proc = daemon(ns)

    def message() -> set[str]:
        return set(sock.recv(4096).decode().splitlines())

    try:
        ready = message()
        assert "READY=1" in ready and any(line.startswith("MAINPID=") for line in ready)
        assert http(ns, b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200")  # ready means ready
        proc.send_signal(signal.SIGHUP)
        reloading = message()
        assert "RELOADING=1" in reloading
        assert any(line.startswith("MONOTONIC_USEC=") for line in reloading)
        assert "READY=1" in message()
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in message()
        assert proc.wait(5) == 0
    finally:
        sock.close()
        stop(proc)


@pytest.mark.parametrize("name", ["geneve-appliance.service", "geneve-appliance-tun.service"])
def test_the_shipped_systemd_unit_verifies(tmp_path: pathlib.Path, name: str) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: systemd)")
    unit = pathlib.Path(__file__).parents[1] / "deploy" / "systemd" / name
    text = unit.read_text()
    assert "Type=notify" in text and "ExecReload=/bin/kill -HUP $MAINPID" in text
    # verify wants ExecStart to exist: point it at this checkout's command.
    command = pathlib.Path(sys.executable).with_name("geneve-appliance")
    copy = tmp_path / unit.name
    copy.write_text(text.replace("/opt/geneve/.venv/bin/geneve-appliance", str(command)))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result
    drain = int(text.split("GENEVE_DRAIN_SECONDS=")[1].split()[0])
    assert int(text.split("TimeoutStopSec=")[1].split()[0]) > drain + 5
