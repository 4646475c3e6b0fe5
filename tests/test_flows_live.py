"""Flows in the daemon, on the wire: the emulator (network namespaces, real TCP and UDP from
Python sockets in the client and server namespaces) and the real ``python -m geneve.appliance``.

The modifiers are docs/flows.md's own examples (its definitions, made into a rules module), so
the doc stays true: the stateful filter, over IPv4 and IPv6, one and two workers, one outer
source port per flow or one per direction; the flow logger with a SIGTERM, one and two workers:
one record per flow, counts matching the emulator's; the same at SIGINT; the flow metrics and
health, a full table's early drops, and ``--no-flows``.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.docs import DOCS, definitions
from support.netns import netns_unavailable

from geneve._appliance import default_max_flows
from geneve._emulator import Emulator, EmulatorConfig

_why = netns_unavailable(tun=True)
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_why is not None, reason=_why or "")]

# Echo servers, IPv4 and IPv6 (one dual-stack socket each): UDP 7000; TCP 7001, which also
# logs what each connection brought (in accept order) and, on "push", writes to every other
# connection, so that a test can see whether the server's side of a flow gets through.
SERVERS = r"""
import socket, sys, threading
log = open(sys.argv[1], "a", buffering=1)
conns = []
tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
tcp.bind(("::", 7001))
tcp.listen()
udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
udp.bind(("::", 7000))
def serve(n, conn):
    while data := conn.recv(2048):
        log.write(f"{n} {data.decode()}\n")
        conn.sendall(data)
        if b"push" in data:
            for other in list(conns):
                if other is not conn:
                    try:
                        other.sendall(b"server push")
                    except OSError:
                        pass
    conns.remove(conn)
    conn.close()
def accept():
    n = 0
    while True:
        conn = tcp.accept()[0]
        conns.append(conn)
        threading.Thread(target=serve, args=(n, conn), daemon=True).start()
        n += 1
threading.Thread(target=accept, daemon=True).start()
while True:
    data, peer = udp.recvfrom(2048)
    udp.sendto(data, peer)
"""


def start(
    emu: Emulator, tmp_path: Path, modifier: str, *flags: str, log: Any = subprocess.DEVNULL
) -> None:
    """The daemon with ``modifier`` (an expression over docs/flows.md's definitions)."""
    (tmp_path / "doc_rules.py").write_text(definitions(DOCS / "flows.md") + f"rules = {modifier}\n")
    argv = ["env", f"PYTHONPATH={tmp_path}", *emu.appliance_command("doc_rules:rules", flags)]
    emu.start_appliance(argv, log=log)
    emu.wait_healthy()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Any]:
    """A function starting the echo servers in an emulator; their log's path."""

    def run(emu: Emulator) -> Path:
        log = tmp_path / "server.log"
        emu.spawn("server", [sys.executable, "-c", SERVERS, str(log)])  # stopped with emu
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not emu.udp_port_bound("server", 7000):
            time.sleep(0.05)  # the TCP listener is made first
        return log

    yield run


def metrics(emu: Emulator) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """/metrics as {family: {labels: value}}."""
    text = emu.http_get("/metrics").body.decode()
    return {
        f.name: {tuple(sorted(s.labels.items())): s.value for s in f.samples}
        for f in text_string_to_metric_families(text)
    }


def published(emu: Emulator, ready: Any) -> dict[str, Any]:
    """The health JSON once ``ready(doc)`` holds (workers publish twice a second)."""
    deadline = time.monotonic() + 5
    doc = emu.http_get("/").json()
    while not ready(doc) and time.monotonic() < deadline:
        time.sleep(0.1)
        doc = emu.http_get("/").json()
    return dict(doc)


# -- the stateful filter ----------------------------------------------------------------------

# Two connections to one server; the first carries "forbidden"; then the server pushes to it
# (the other direction) and the second goes on.
FILTER_CLIENT = r"""
import socket, sys
server = sys.argv[1]
out = []
def exchange(conn, name, data):
    conn.sendall(data)
    try:
        got = conn.recv(2048).decode()
    except TimeoutError:
        got = "timed out"
    out.append(f"{name} {data.decode()}: {got}")
a = socket.create_connection((server, 7001), timeout=3)
b = socket.create_connection((server, 7001), timeout=3)
a.settimeout(1.0)
exchange(a, "a", b"one")
exchange(b, "b", b"one")
exchange(a, "a", b"forbidden")
exchange(b, "b", b"push")
try:
    out.append(f"a after push: {a.recv(2048).decode()}")
except TimeoutError:
    out.append("a after push: timed out")
exchange(b, "b", b"two")
print(a.getsockname()[1], b.getsockname()[1])
print("\n".join(out))
"""


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("per_direction_ports", [False, True], ids=["one-port", "two-ports"])
def test_the_stateful_filter_stops_one_connection_both_ways(
    workers: int, per_direction_ports: bool, tmp_path: Path, servers: Any
) -> None:
    config = EmulatorConfig(per_direction_ports=per_direction_ports)
    with Emulator(config) as emu:
        a = emu.addressing
        start(emu, tmp_path, "stateful_filter", "--workers", str(workers))
        server_log = servers(emu)
        results = {}
        for server in (a.server, a.server6):
            done = emu.run("client", [sys.executable, "-c", FILTER_CLIENT, server], timeout=30)
            assert done.returncode == 0, done.stderr
            port_line, *lines = done.stdout.splitlines()
            results[server] = (tuple(map(int, port_line.split())), lines)
        seen = metrics(emu)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and seen["geneve_flows_verdict_packets"][()] == 0:
            time.sleep(0.1)
            seen = metrics(emu)
        time.sleep(0.5)  # the clients' last FINs and ACKs, on their way back when they exited
        s = emu.summary()
    for server, (_ports, lines) in results.items():
        assert lines == [
            "a one: one",
            "b one: one",
            "a forbidden: timed out",  # dropped (and every retransmission of it)
            "b push: push",
            "a after push: timed out",  # the server's side of the stopped flow: dropped too
            "b two: two",  # the other connection to the same server goes on
        ], (server, lines)
    # The server heard "forbidden" from neither family, and everything else.
    heard = sorted(server_log.read_text().splitlines())
    assert heard == ["0 one", "1 one", "1 push", "1 two", "2 one", "3 one", "3 push", "3 two"]
    assert s["failed"] == 0 and s["errors"] == {}, s
    for server, (ports, _lines) in results.items():
        (stopped,) = [f for f in s["flows"] if f["src_port"] == ports[0] and f["dst"] == server]
        (going,) = [f for f in s["flows"] if f["src_port"] == ports[1] and f["dst"] == server]
        # Sent to the appliance and never returned: "forbidden", its retransmissions, the push.
        assert stopped["sent"] - stopped["returned"] >= 3, stopped
        assert going["returned"] == going["sent"], going
        if per_direction_ports:
            assert stopped["source_port"] != stopped["reply_source_port"], stopped
    assert seen["geneve_flows_verdict_packets"][()] >= 4
    assert seen["geneve_dropped"][(("reason", "rule"),)] == 2  # each "forbidden" itself


# -- the flow logger, a SIGTERM, the metrics ----------------------------------------------------

# Flows that end before the SIGTERM ("fin", "idle") and flows still live at it ("shutdown").
LOGGER_CLIENT = r"""
import json, os, socket, sys, time
server4, server6, ready, wait = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
ports = {}
def tcp(name, server, words):
    conn = socket.create_connection((server, 7001), timeout=3)
    ports[name] = conn.getsockname()[1]
    for word in words:
        conn.sendall(word)
        assert conn.recv(2048) == word
    return conn
def udp(name, server, words):
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(3)
    sock.connect((server, 7000))
    ports[name] = sock.getsockname()[1]
    for word in words:
        sock.send(word)
        assert sock.recv(2048) == word
t1 = tcp("t1", server4, [b"t1-a", b"t1-b", b"t1-c"])
t1.shutdown(socket.SHUT_WR)
assert t1.recv(2048) == b""  # the server closed too: FIN both ways
t1.close()
udp("u1", server4, [b"u1-a", b"u1-b"])
udp("u2", server6, [b"u2-a"])
time.sleep(wait)  # t1's linger and the UDP flows' idle timeout pass
t2 = tcp("t2", server6, [b"t2-a", b"t2-b"])
udp("u3", server4, [b"u3-a", b"u3-b", b"u3-c"])
with open(ready + ".tmp", "w") as f:
    json.dump(ports, f)
os.rename(ready + ".tmp", ready)
time.sleep(60)  # t2 stays open until the daemon has stopped
"""

FLOW_LOG_RULES = 'FlowLogFiles("{where}/flows-{{pid}}.jsonl")'


@pytest.mark.parametrize("workers", [1, 2])
def test_the_flow_logger_keeps_every_flow_through_a_sigterm(
    workers: int, tmp_path: Path, servers: Any
) -> None:
    ready, daemon_log = tmp_path / "ready.json", tmp_path / "daemon.log"
    # 1 s past LINGER_SECONDS (10 s, docs/flows.md) and a tick: t1 ends "fin" before the stop.
    wait = 12.0
    with Emulator() as emu, daemon_log.open("wb") as log:
        a = emu.addressing
        start(emu, tmp_path, FLOW_LOG_RULES.format(where=tmp_path), "--workers", str(workers),
              "--flow-timeout-other", "2", log=log)  # fmt: skip
        servers(emu)
        client = emu.spawn(
            "client", [sys.executable, "-c", LOGGER_CLIENT, a.server, a.server6, str(ready),
                       str(wait)],
        )  # fmt: skip
        deadline = time.monotonic() + wait + 15
        while not ready.exists() and client.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), f"the client did not finish: {client.poll()}"
        ports = json.loads(ready.read_text())
        doc = published(emu, lambda d: d["flows"]["created"] >= 5)
        seen = metrics(emu)
        rc, took = emu.stop_appliance(timeout=15)
        s = emu.summary()
    assert rc == 0 and took < 5, (rc, took)
    assert "were lost" not in daemon_log.read_text()

    # Health and metrics, before the stop: 5 flows made, 3 of them over, 2 live.
    flows = doc["flows"]
    assert flows["tracking"] is True
    assert flows["max_flows"] == default_max_flows() // workers * workers
    assert (flows["created"], flows["active"]) == (5, 2), flows
    assert flows["ended"] == {"fin": 1, "rst": 0, "idle": 2, "evicted": 0, "shutdown": 0}
    assert (flows["verdict_packets"], flows["early_dropped"], flows["rejects"]) == (0, 0, 0)
    assert seen["geneve_flows_enabled"][()] == 1
    assert seen["geneve_flows_created"][()] == 5 and seen["geneve_flows_active"][()] == 2
    assert seen["geneve_flows_ended"][(("reason", "idle"),)] == 2
    assert seen["geneve_flows_ended"][(("reason", "fin"),)] == 1
    assert seen["geneve_flows_ended"][(("reason", "shutdown"),)] == 0

    # One file per worker, one record per flow the emulator saw, none lost.
    files = sorted(tmp_path.glob("flows-*.jsonl"))
    assert len(files) == workers, files
    records = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert s["failed"] == 0 and len(s["flows"]) == len(records) == 5, (s, records)
    reasons = {"t1": "fin", "u1": "idle", "u2": "idle", "t2": "shutdown", "u3": "shutdown"}
    names = {port: name for name, port in ports.items()}
    config = EmulatorConfig()
    for flow in s["flows"]:
        ends = (ipaddress.ip_address(flow["src"]), flow["src_port"],
                ipaddress.ip_address(flow["dst"]), flow["dst_port"])  # fmt: skip
        (record,) = [
            r for r in records
            if (ipaddress.ip_address(r["src"]), r["sport"], ipaddress.ip_address(r["dst"]),
                r["dport"]) == ends
        ]  # fmt: skip
        name = names[flow["src_port"]]
        assert record["reason"] == reasons[name], (name, record)
        assert record["endpoint_id"] == f"{config.endpoint_id:016x}"
        assert record["cookie"] == int(flow["flow_cookie"], 16)
        assert record["protocol"] == {"tcp": 6, "udp": 17}[flow["protocol"]]
        # Every packet the emulator sent the appliance counted once, in its direction.
        assert sum(record["packets"]) == flow["sent"] == flow["returned"], (record, flow)
        assert record["end"] >= record["start"]
        # The worker's clock is Unix time: the records read as dates of this test's run.
        assert time.time() - 600 < record["start"] <= time.time(), record
        if flow["protocol"] == "udp":
            words = {"u1": 2, "u2": 1, "u3": 3}[name]
            size = (20 if flow["ip_version"] == 4 else 40) + 8 + 4  # "u1-a": 4 bytes
            assert record["packets"] == [words, words]
            assert record["bytes"] == [words * size, words * size]
        else:
            assert record["packets"][0] > 3 and record["packets"][1] > 3, record


def test_no_flows_shows_tracking_off() -> None:
    with Emulator() as emu:
        a = emu.addressing
        emu.start_appliance(emu.appliance_command(None, ["--no-flows"]))
        emu.wait_healthy()
        ping = emu.run("client", ["ping", "-n", "-c", "3", "-i", "0.2", a.server], timeout=15)
        doc = published(emu, lambda d: d["counters"]["received"] >= 6)
        seen = metrics(emu)
    assert ping.returncode == 0, ping.stdout
    assert doc["counters"]["received"] >= 6
    assert doc["flows"] == {
        "tracking": False, "max_flows": 0, "active": 0, "created": 0,
        "ended": {"fin": 0, "rst": 0, "idle": 0, "evicted": 0, "shutdown": 0},
        "verdict_packets": 0, "early_dropped": 0, "rejects": 0,
    }  # fmt: skip
    assert seen["geneve_flows_enabled"][()] == 0 and seen["geneve_flows_max"][()] == 0
    assert seen["geneve_flows_created"][()] == 0 and seen["geneve_flows_active"][()] == 0


# Datagrams to ports where nothing listens: flows that never see a reply (the server's ICMP
# errors are flows of their own).
UNANSWERED_CLIENT = r"""
import socket, sys
for port in range(9001, 9011):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.sendto(b"anyone?", (sys.argv[1], port))
"""


def test_a_full_table_ends_flows_early_and_says_so(tmp_path: Path) -> None:
    with Emulator() as emu:
        a = emu.addressing
        start(emu, tmp_path, "modifier", "--max-flows", "2")  # the doc's: forwards everything
        done = emu.run("client", [sys.executable, "-c", UNANSWERED_CLIENT, a.server])
        assert done.returncode == 0, done.stderr
        doc = published(emu, lambda d: d["counters"]["received"] >= 10)
        seen = metrics(emu)
    flows = doc["flows"]
    # 10 flows (and the ICMP errors' own) through a table of 2: the oldest unanswered ones go.
    assert flows["max_flows"] == 2 and flows["active"] <= 2, flows
    assert flows["created"] >= 10 and flows["early_dropped"] >= 8, flows
    assert flows["ended"]["evicted"] == flows["early_dropped"]
    assert seen["geneve_flows_early_dropped"][()] == flows["early_dropped"]
    assert seen["geneve_flows_ended"][(("reason", "evicted"),)] == flows["early_dropped"]


ECHO_ONCE = r"""
import socket, sys
sock = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(3)
sock.sendto(b"hi", (sys.argv[1], 7000))
print(sock.recv(2048).decode())
"""


def test_sigint_ends_every_flow_too(tmp_path: Path, servers: Any) -> None:
    """SIGINT (Ctrl-C) stops the daemon as SIGTERM does: every live flow ends "shutdown"."""
    with Emulator() as emu:
        a = emu.addressing
        start(emu, tmp_path, FLOW_LOG_RULES.format(where=tmp_path), "--workers", "2")
        servers(emu)
        for server in (a.server, a.server6):
            done = emu.run("client", [sys.executable, "-c", ECHO_ONCE, server])
            assert done.stdout == "hi\n", done
        assert emu.appliance is not None
        emu.appliance.send_signal(signal.SIGINT)  # by pid: the daemon this test started
        assert emu.appliance.wait(10) == 0
    records = [json.loads(line) for f in tmp_path.glob("flows-*.jsonl") for line in f.open()]
    assert sorted((r["dport"], r["packets"], r["reason"]) for r in records) == [
        (7000, [1, 1], "shutdown"), (7000, [1, 1], "shutdown"),
    ]  # fmt: skip
