"""Reload (SIGHUP) and upgrade (SIGUSR2) under a steady stream: every frame answered once.

The pipeline's hand-over is checked without a kernel (both kinds of flow table, each way);
the daemon's in network namespaces, where CI runs as root.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import pickle
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support.frames import FLOW_TABLES, TCP_ACK, TCP_SYN, flow_frame, tcp_segment
from support.gwlb_client import GwlbClient, http, inner_udp, wait_healthy
from support.netns import Pair, in_netns, netns_unavailable, pair
from test_appliance import check_reply

from geneve import Packet, Pipeline, Verdict, stream_start
from geneve._appliance import Appliance
from geneve._flows import CFlowTable, Flow, FlowTable, PyFlowTable

_why = netns_unavailable()
live = pytest.mark.skipif(_why is not None, reason=_why or "")


class Sticky:
    """Payload "stick": the flow's verdict becomes DROP; "hold": the frame is held."""

    def __call__(self, packet: Packet) -> Verdict | None:
        payload = bytes(packet.buf[packet.payload_offset : packet.ip_end])
        flow = packet.flow  # type: ignore[attr-defined]
        flow.state["seen"] = flow.state.get("seen", 0) + 1
        if payload.startswith(b"stick"):
            flow.verdict = Verdict.DROP
            return Verdict.DROP
        if payload.startswith(b"hold"):
            return Verdict.HOLD
        if payload.startswith(b"stream"):
            stream_start(packet)
        return None


def _handle(p: Pipeline, frame: bytearray, now: float) -> tuple[bytes, ...]:
    return tuple(bytes(f) for f in p.handle(frame, len(frame), now))


@pytest.mark.parametrize("old_table", FLOW_TABLES)
@pytest.mark.parametrize("new_table", FLOW_TABLES)
def test_a_pipeline_goes_on_where_another_handed_over(
    old_table: type[FlowTable], new_table: type[FlowTable]
) -> None:
    old = Pipeline(Sticky(), flows=old_table(max_flows=100))
    for i in range(5):
        assert _handle(old, flow_frame("10.0.0.1", "10.0.0.2", "udp", sport=1000 + i), 10.0)
    assert not _handle(old, flow_frame("10.0.0.1", "10.0.0.2", "udp", sport=2000,
                                       payload=b"stick"), 10.0)  # fmt: skip
    assert not _handle(old, flow_frame("10.0.0.1", "10.0.0.2", "udp", sport=3000,
                                       payload=b"hold"), 10.0)  # fmt: skip
    syn = tcp_segment("10.0.0.1", "10.0.0.3", flags=TCP_SYN, seq=99)
    assert _handle(old, syn, 10.0)
    assert _handle(old, tcp_segment("10.0.0.1", "10.0.0.3", b"stream-abc", seq=100), 10.5)
    # A reply: that flow is no longer an early-drop candidate.
    assert _handle(old, flow_frame("10.0.0.2", "10.0.0.1", "udp", sport=80, dport=1000,
                                   payload=b"x"), 10.0)  # fmt: skip
    before = {f.key: _facts(f) for f in old.flows or ()}
    handed = pickle.loads(pickle.dumps(old.hand_over()))  # as it travels between processes
    assert handed["states_lost"] == 0

    new = Pipeline(Sticky(), flows=new_table(max_flows=100))
    assert new.take_over(handed, 11.0) == len(before) == 8
    assert new.stats.flows_active == 8 and new.stats.flows_created == 0
    after = {f.key: _facts(f) for f in new.flows or ()}
    assert after == before
    # The DROP verdict holds without the modifier; the held frame goes out with its flow's next.
    assert not _handle(new, flow_frame("10.0.0.1", "10.0.0.2", "udp", sport=2000,
                                       payload=b"fine"), 11.0)  # fmt: skip
    assert new.stats.flow_verdict_packets == 1
    assert new.stats.held_bytes == old.stats.held_bytes > 0
    # The stream start goes on from the bytes the old pipeline had.
    segment = tcp_segment("10.0.0.1", "10.0.0.3", b"-def", seq=110)
    packet = new.packet(segment, len(segment), 11.0)
    assert packet is not None
    flow = new.flows.get(packet.flow.key) if new.flows is not None else None  # type: ignore[attr-defined]
    assert flow is not None and flow.state["seen"] == 3
    # Idle timeouts count from the flows' own last packets, not from the hand-over.
    assert new.flows is not None
    new.tick(11.0 + 120.0 + 0.5)  # the last UDP packets came at 11.0
    assert len(new.flows) == 1  # the TCP flow (350 s) is left


def _facts(flow: Flow) -> tuple[Any, ...]:
    """What a flow is, to compare across tables (a stream start by its bytes)."""
    state = {k: v for k, v in flow.state.items() if k != "geneve.stream"}
    starts = {k: bytes(v.data) for k, v in flow.state.get("geneve.stream", {}).items()}
    return (flow.packets, flow.bytes, flow.verdict, flow.cookies, flow.tcp_state,
            flow.first_seen, flow.last_seen, state, starts)  # fmt: skip


def test_a_state_that_cannot_travel_is_left_behind_and_counted() -> None:
    class Unpicklable:
        def __call__(self, packet: Packet) -> None:
            packet.flow.state["lock"] = threading.Lock()  # type: ignore[attr-defined]

    old = Pipeline(Unpicklable(), flows=True)
    frame = flow_frame("10.0.0.1", "10.0.0.2", "udp", payload=b"x")
    _handle(old, frame, 1.0)
    handed = old.hand_over()
    assert handed["states_lost"] == 1
    new = Pipeline(Unpicklable(), flows=True)
    assert new.take_over(handed, 2.0) == 1
    (flow,) = list(new.flows or ())
    assert flow.packets == (1, 0) and not flow.state


@pytest.mark.parametrize("table", FLOW_TABLES)
def test_a_table_takes_what_it_has_room_for_and_no_key_twice(table: type[FlowTable]) -> None:
    old = PyFlowTable(max_flows=10)
    for i in range(6):
        frame = flow_frame("10.0.0.1", "10.0.0.2", "udp", sport=1000 + i)
        old.track(Packet.parse(frame), 1.0)
    records = old.export()
    new = table(max_flows=4)
    assert new.restore(records, 2.0) == 4
    assert new.restore(records, 2.0) == 0  # the keys are live, and the table is full anyway
    assert len(new) == 4


def test_the_c_table_refuses_records_no_table_could_make() -> None:
    if CFlowTable not in [p.values[0] for p in FLOW_TABLES]:
        pytest.skip("the C flow table is not built")
    table = CFlowTable(max_flows=10)
    good = PyFlowTable(max_flows=10)
    good.track(Packet.parse(flow_frame("10.0.0.1", "10.0.0.2", "tcp", flags=TCP_ACK)), 1.0)
    (record,) = good.export()
    bad = [
        dict(record, key=record["key"][:20]),
        dict(record, first_seen=float("nan")),
        dict(record, last_seen=1e300),
        dict(record, first_seen=5.0, last_seen=1.0),
        dict(record, end_at=float("inf")),
        dict(record, fins=7),
        dict(record, tcp_state=None),  # a TCP flow has a state
    ]
    for entry in bad:
        assert table.restore([entry], 2.0) == 0, entry
    assert len(table) == 0
    assert table.restore([record], 2.0) == 1


# -- the daemon ----------------------------------------------------------------------------------

RULES = """
from geneve import Verdict

class Rules:
    def __call__(self, packet):
        payload = bytes(packet.buf[packet.payload_offset:packet.ip_end])
        if payload.startswith(b"stick") and packet.flow is not None:
            packet.flow.verdict = Verdict.DROP  # dropped from now on, both ways
            return Verdict.DROP
        return None

modifier = Rules()
"""


@pytest.fixture
def ns() -> Iterator[Pair]:
    if _why is not None:
        pytest.skip(_why)
    with pair() as p:
        yield p


def _daemon(p: Pair, where: pathlib.Path, workers: int, *args: str) -> subprocess.Popen[str]:
    (where / "rules_under_test.py").write_text(RULES)
    env = dict(os.environ, PYTHONPATH=str(where), PYTHONDONTWRITEBYTECODE="1")
    log = (where / "daemon.log").open("w")  # the new copy writes here too, after the old exits
    return subprocess.Popen(
        ["ip", "netns", "exec", p.ap, sys.executable, "-m", "geneve.appliance",
         "--health-port", "8080", "--workers", str(workers), "--rules",
         "rules_under_test:modifier", *args],
        stdout=subprocess.DEVNULL, stderr=log, text=True, env=env,
    )  # fmt: skip


class Stream:
    """Numbered UDP frames over many flows at a steady rate; the replies, as they come."""

    def __init__(self, client: GwlbClient, flows: int = 64) -> None:
        self.client = client
        self.flows = flows
        self.sent: dict[int, bytearray] = {}
        self.replies: list[bytes] = []
        self.done = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self.done.is_set():
            self.replies += self.client.replies(timeout=0.2)

    def send(self, count: int, per_second: float) -> None:
        start = len(self.sent)
        began = time.monotonic()
        for n in range(start, start + count):
            sport = 20000 + n % self.flows
            frame = self.client.frame(inner_udp(b"seq:%08d" % n, sport=sport, dport=4000),
                                      src_port=sport)  # fmt: skip
            self.sent[n] = frame
            self.client.send(frame)
            wait = began + (n - start + 1) / per_second - time.monotonic()
            if wait > 0:
                time.sleep(wait)

    def finish(self, settle: float = 1.5) -> dict[int, list[bytes]]:
        time.sleep(settle)
        self.done.set()
        self._reader.join(5)
        answered: dict[int, list[bytes]] = {}
        for reply in self.replies:
            match = re.search(rb"seq:(\d{8})", reply)
            if match:
                answered.setdefault(int(match.group(1)), []).append(reply)
        return answered


class HealthWatch:
    """Asks the health endpoint every 50 ms; every status it answered."""

    def __init__(self, p: Pair) -> None:
        self.p = p
        self.codes: list[int | str] = []
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                answer = http(self.p, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", timeout=5.0)
                self.codes.append(int(answer.split()[1]))
            except (OSError, IndexError, ValueError) as err:
                self.codes.append(f"{type(err).__name__}: {err}")
            time.sleep(0.05)

    def finish(self) -> list[int | str]:
        self.stop.set()
        self._thread.join(10)
        return self.codes


def _wait_log(path: pathlib.Path, pattern: str, timeout: float = 30.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, path.read_text())
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} not logged:\n{path.read_text()}")


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@live
@pytest.mark.netns
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("action", ["reload", "upgrade"])
def test_every_frame_is_answered_once_through_a_reload_or_an_upgrade(
    ns: Pair, tmp_path: pathlib.Path, action: str, workers: int
) -> None:
    proc = _daemon(ns, tmp_path, workers)
    client = GwlbClient(ns)
    log = tmp_path / "daemon.log"
    new_pid: int | None = None
    try:
        wait_healthy(ns)
        # A flow whose verdict (DROP) is set before: it must still hold after.
        stick = client.frame(inner_udp(b"stick", sport=30000, dport=4000), src_port=30000)
        client.send(stick)
        assert not client.replies(timeout=0.3)
        stream = Stream(client)
        health = HealthWatch(ns)
        stream.send(600, 1000)
        proc.send_signal(signal.SIGHUP if action == "reload" else signal.SIGUSR2)
        stream.send(2400, 1000)
        if action == "upgrade":
            found = _wait_log(log, r"upgrade: pid (\d+) took over the sockets and (\d+) flows")
            new_pid = int(found.group(1))
            assert int(found.group(2)) == 65  # the stream's 64 flows and the sticky one
            assert proc.wait(15) == 0  # the old copy is gone, exit status 0
            os.kill(new_pid, 0)  # the new one runs
        else:
            _wait_log(log, r"rules reloaded")
        stream.send(300, 1000)
        answered = stream.finish()
        codes = health.finish()
        assert set(answered) == set(stream.sent), (
            f"{len(set(stream.sent) - set(answered))} frames never answered"
        )
        twice = {n: len(r) for n, r in answered.items() if len(r) != 1}
        assert not twice, f"answered more than once: {twice}"
        for n in range(0, len(stream.sent), 97):
            check_reply(stream.sent[n], answered[n][0])
        assert codes and all(code == 200 for code in codes), codes
        # The verdict set before: the flow is still dropped, another one is not.
        client.send(client.frame(inner_udp(b"fine", sport=30000, dport=4000), src_port=30000))
        assert not client.replies(timeout=0.5)
        assert client.exchange(inner_udp(b"fine", sport=30001, dport=4000), 30001) is not None
    finally:
        client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if new_pid is not None:
            _kill(new_pid)
    text = log.read_text()
    assert "Traceback" not in text, text
    if action == "upgrade":
        assert "(sockets and flows taken over)" in text and "handed over:" in text


@live
@pytest.mark.netns
def test_an_upgrade_that_fails_leaves_the_running_daemon_as_it_was(
    ns: Pair, tmp_path: pathlib.Path
) -> None:
    proc = _daemon(ns, tmp_path, 1)
    client = GwlbClient(ns)
    log = tmp_path / "daemon.log"
    try:
        wait_healthy(ns)
        (tmp_path / "rules_under_test.py").write_text("raise RuntimeError('broken on purpose')\n")
        proc.send_signal(signal.SIGUSR2)
        _wait_log(log, r"upgrade failed, this process goes on")
        assert proc.poll() is None
        assert client.exchange(inner_udp(b"still here", dport=4000)) is not None
        answer = http(ns, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").decode()
        assert answer.startswith("HTTP/1.1 200") and "geneve_upgrade_failures_total 1" in answer
        assert "geneve_up 1" in answer
    finally:
        client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert "broken on purpose" in log.read_text()


@live
@pytest.mark.netns
def test_an_upgrade_to_other_workers_is_refused_with_the_reason(ns: Pair) -> None:
    app = Appliance(lambda packet: None, health_port=8080, workers=1)
    in_netns(ns.ap, app.start)
    try:
        wait_healthy(ns)
        # A reload just before: it must not be lost to the upgrade's pause.
        app.reload(lambda packet: None)
        command = [sys.executable, "-m", "geneve.appliance", "--health-port", "8080",
                   "--workers", "2"]  # fmt: skip
        assert app.upgrade(command, timeout=30) is False
        assert app.upgrade_failures == 1
        wait_healthy(ns)
        assert app.report().healthy
        deadline = time.monotonic() + 5
        while app._local_workers[0].reloads != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app._local_workers[0].reloads == 1
    finally:
        app.stop()


def test_the_channel_carries_descriptors_and_big_messages() -> None:
    from geneve._handover import Channel

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    left, right = Channel(a, 5), Channel(b, 5)
    r, w = os.pipe()
    try:
        big = {"type": "flows", "data": os.urandom(3 << 20)}
        def send() -> None:
            left.send({"type": "x"}, [w])
            left.send(big)

        sender = threading.Thread(target=send)
        sender.start()
        first, fds = right.receive()
        second, none = right.receive()
        sender.join()
        assert first == {"type": "x"} and len(fds) == 1 and not none
        assert second == big
        os.write(fds[0], b"!")
        assert os.read(r, 1) == b"!"
        os.close(fds[0])
    finally:
        for fd in (r, w):
            os.close(fd)
        left.close()
        right.close()


def test_c_entries_from_another_build_are_read_by_their_layout() -> None:
    if CFlowTable not in [p.values[0] for p in FLOW_TABLES]:
        pytest.skip("the C flow table is not built")
    old = CFlowTable(max_flows=10)
    for i in range(3):
        frame = flow_frame("10.0.0.1", "fd00::2" if i == 2 else "10.0.0.2", "tcp",
                           sport=1000 + i, flags=TCP_SYN)  # fmt: skip
        if i == 2:
            frame = flow_frame("fd00::1", "fd00::2", "tcp", sport=1000 + i, flags=TCP_SYN)
        old.track(Packet.parse(frame), 1.0)
    exported = old.export_flows()
    exported["layout"] = dict(exported["layout"], build="another")  # not this build's: decode
    new = CFlowTable(max_flows=10)
    assert new.restore_flows(exported, 2.0) == 3
    assert sorted((f.key, f.tcp_state, f.packets) for f in new) == sorted(
        (f.key, f.tcp_state, f.packets) for f in old
    )


@live
@pytest.mark.netns
def test_under_systemd_the_new_copy_announces_its_pid_and_the_old_never_says_stopping(
    ns: Pair, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    proc = _daemon(ns, tmp_path, 2)
    new_pid: int | None = None
    try:
        first = set(sock.recv(4096).decode().splitlines())
        assert "READY=1" in first and f"MAINPID={proc.pid}" in first
        proc.send_signal(signal.SIGUSR2)
        seen: list[set[str]] = []
        while new_pid is None:
            message = set(sock.recv(4096).decode().splitlines())
            seen.append(message)
            pids = [int(line[8:]) for line in message if line.startswith("MAINPID=")]
            if pids and pids[0] != proc.pid:
                assert "READY=1" in message
                new_pid = pids[0]
        assert proc.wait(15) == 0
        sock.settimeout(0.5)
        with contextlib.suppress(TimeoutError):
            while True:
                seen.append(set(sock.recv(4096).decode().splitlines()))
        assert not any("STOPPING=1" in message for message in seen), seen
        wait_healthy(ns)
    finally:
        sock.close()
        if proc.poll() is None:
            proc.kill()
        if new_pid is not None:
            _kill(new_pid)


def test_a_retired_pipeline_ends_no_flow_and_says_handover() -> None:
    calls: list[str] = []

    class Hooks:
        def __call__(self, packet: Packet) -> None:
            return None

        def on_flow_end(self, flow: Flow, reason: str) -> None:
            calls.append(f"end:{reason}")

        def on_handover(self) -> None:
            calls.append("handover")

        def on_stop(self) -> None:
            calls.append("stop")

    old = Pipeline(Hooks(), flows=True)
    _handle(old, flow_frame("10.0.0.1", "10.0.0.2", "udp", payload=b"x"), 1.0)
    old.hand_over()
    old.retire()
    assert calls == ["handover", "stop"]
    assert old.stats.flows_ended == {} and old.stats.flows_active == 1


@pytest.mark.parametrize("old_table", FLOW_TABLES)
@pytest.mark.parametrize("new_table", FLOW_TABLES)
def test_tombstones_and_the_early_drop_order_go_over(
    old_table: type[FlowTable], new_table: type[FlowTable]
) -> None:
    old = Pipeline(Sticky(), flows=old_table(max_flows=3))
    # e0 (no verdict) and a flow with a DROP verdict; both end idle at 121 s.
    _handle(old, flow_frame("10.0.0.1", "10.0.0.3", "udp", sport=5, payload=b"x"), 1.0)
    dropped = flow_frame("10.0.0.1", "10.0.0.9", "udp", sport=9, payload=b"stick", cookie=7)
    assert not _handle(old, dropped, 1.0)
    # Three flows never replied to, made in this order: b, c, then d after the sweep, which
    # frees e0's entry, the first in the C table: d takes it.
    _handle(old, flow_frame("10.0.0.1", "10.0.0.2", "udp", sport=100, payload=b"x"), 100.0)
    _handle(old, flow_frame("10.0.0.1", "10.0.0.2", "udp", sport=101, payload=b"x"), 101.0)
    old.tick(130.0)  # e0 ends, the dropped flow leaves a tombstone until 181 s
    assert old.flows is not None and old.flows.tombstones == 1
    _handle(old, flow_frame("10.0.0.1", "10.0.0.2", "udp", sport=102, payload=b"x"), 131.0)
    handed = pickle.loads(pickle.dumps(old.hand_over()))
    new = Pipeline(Sticky(), flows=new_table(max_flows=3))
    assert new.take_over(handed, 134.0) == 3
    assert new.flows is not None and new.flows.tombstones == 1
    # A straggler of the dropped flow, with its cookie: still dropped, not a new flow.
    straggler = flow_frame("10.0.0.1", "10.0.0.9", "udp", sport=9, payload=b"late", cookie=7)
    assert not _handle(new, straggler, 135.0)
    assert new.stats.drops.get("flow") == 1
    # A new flow at the bound evicts the oldest never replied to: sport 100.
    _handle(new, flow_frame("10.0.0.1", "10.0.0.2", "udp", sport=200, payload=b"x"), 136.0)
    assert sorted(f.ports[0] for f in new.flows) == [101, 102, 200]


@live
@pytest.mark.netns
def test_a_stop_during_an_upgrade_stops_the_service(ns: Pair, tmp_path: pathlib.Path) -> None:
    proc = _daemon(ns, tmp_path, 1)
    client = GwlbClient(ns)
    log = tmp_path / "daemon.log"
    try:
        wait_healthy(ns)
        proc.send_signal(signal.SIGUSR2)
        time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        # Either the upgrade was called off (this process stopped) or the stop was passed on
        # to the new copy: after a while nothing answers, and nothing holds the port.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if client.exchange(inner_udp(b"anyone?", dport=4000), timeout=0.3) is None:
                break
        assert client.exchange(inner_udp(b"anyone?", dport=4000), timeout=0.5) is None
        text = log.read_text()
        assert "upgrade called off" in text or "passing it on" in text, text
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
        found = re.search(r"passing it on to pid (\d+)", log.read_text())
        if found:
            _kill(int(found.group(1)))
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize("old_table", FLOW_TABLES)
@pytest.mark.parametrize("new_table", FLOW_TABLES)
def test_a_connection_whose_length_was_rewritten_goes_on_the_same_after_a_handover(
    old_table: type[FlowTable], new_table: type[FlowTable]
) -> None:
    """The sequence adjustment travels: the pipeline that took over answers the rest of the
    connection byte for byte as the one that handed over would have."""
    from test_seq import ACK, links, segment

    old = Pipeline(links, flows=old_table(max_flows=10))
    before = [
        segment(b"see http://a and http://b\n", seq=1000, ack=5000),  # grows by 2
        segment(seq=5000, ack=1000 + 26 + 2, flags=ACK, reply=False),
    ]
    for frame in before:
        assert _handle(old, frame, 1.0)
    handed = pickle.loads(pickle.dumps(old.hand_over()))
    new = Pipeline(links, flows=new_table(max_flows=10))
    assert new.take_over(handed, 2.0) == 1
    after = [
        segment(b"then http://c\n", seq=1026, ack=5000),  # shifted by 2, grows by 1
        segment(b"see http://a and http://b\n", seq=1000, ack=5000),  # a retransmission
        segment(seq=5000, ack=1026 + 2 + 15, flags=ACK, reply=False),  # shifted back
    ]
    for frame in after:
        assert _handle(new, bytearray(frame), 3.0) == _handle(old, bytearray(frame), 3.0)
