"""The tun bridge on the wire: the emulator (network namespaces), ``python -m geneve.appliance
--tun`` and real Linux tools behind it: nftables in a one-arm set-up, iptables MASQUERADE in
a two-arm one, the hook scripts of deploy/tun/ (docs/tun.md shows them), over IPv4 and IPv6.
Every namespace is deleted at the end, also when a test fails (the emulator's and ours).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.netns import netns_unavailable

from geneve import _tun
from geneve._emulator import Emulator, EmulatorConfig
from geneve._emulator.namespaces import Namespaces, die_with_parent, ip, veth
from geneve._emulator.topology import DIVERT_TABLE, GWLB_TO

_why = netns_unavailable(tun=True) or _tun.available()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(_why is not None, reason=_why or "")]

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "tun"
ONE_ARM, TWO_ARM_NAT = DEPLOY / "one-arm.sh", DEPLOY / "two-arm-nat.sh"
FILTER = DEPLOY / "filter.nft"
ENDPOINT = EmulatorConfig().endpoint_id
INGRESS, EGRESS = _tun.interface_names(ENDPOINT)

# Echo servers on both ends (dual stack): UDP 7000, TCP 7001; TCP 7002 answers with the
# address it sees the connection come from.
SERVERS = r"""
import socket, threading
def tcp(port, answer):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen()
    while True:
        conn, peer = s.accept()
        with conn:
            data = conn.recv(2048)
            conn.sendall(answer(data, peer))
threading.Thread(target=tcp, args=(7001, lambda d, p: d), daemon=True).start()
threading.Thread(target=tcp, args=(7002, lambda d, p: p[0].removeprefix("::ffff:").encode()),
                 daemon=True).start()
threading.Thread(target=tcp, args=(23, lambda d, p: b"telnet"), daemon=True).start()
udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
udp.bind(("::", 7000))
while True:
    data, peer = udp.recvfrom(2048)
    udp.sendto(data, peer)
"""

# One exchange: "udp"/"tcp" PORT ADDRESS [SOURCE-PORT]; prints the answer or the error.
CLIENT = r"""
import socket, sys
kind, port, address = sys.argv[1], int(sys.argv[2]), sys.argv[3]
family = socket.AF_INET6 if ":" in address else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
s.settimeout(3)
if len(sys.argv) > 4:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", int(sys.argv[4])))
try:
    if kind == "udp":
        s.sendto(b"hello", (address, port))
    else:
        s.connect((address, port))
        s.sendall(b"hello")
    print(s.recv(2048).decode())
except OSError as err:
    print("error", type(err).__name__)
    sys.exit(1)
"""

RULES = "def forward(packet):\n    return None\n"  # FORWARD everything: into the tun


# A modifier in front of the tun: REJECT TCP to 7002 (a server listens), DROP UDP from port
# 45001, "hello" made "HELLO" in UDP; the rest FORWARD, into the tun.
EDITING_RULES = """
from geneve import Verdict
def edit(packet):
    ports = packet.ports
    if ports is None:
        return None
    if packet.l4_protocol == 6 and ports[1] == 7002:
        return Verdict.REJECT
    if packet.l4_protocol == 17 and ports[0] == 45001:
        return Verdict.DROP
    if packet.l4_protocol == 17:
        packet.replace_in_payload(b"hello", b"HELLO")
    return None
"""


def start(emu: Emulator, tmp_path: Path, *flags: str, env: dict[str, str] | None = None,
          rules: str = "tun_rules:forward") -> None:  # fmt: skip
    (tmp_path / "tun_rules.py").write_text(RULES + EDITING_RULES)
    settings = [f"{k}={v}" for k, v in {"PYTHONPATH": str(tmp_path), **(env or {})}.items()]
    log = (tmp_path / "appliance.log").open("w")
    argv = ["env", *settings, *emu.appliance_command(rules, ["--tun", *flags])]
    emu.start_appliance(argv, log=log)
    emu.wait_healthy()


def exchange(emu: Emulator, role: str, kind: str, port: int, address: str, *more: str) -> str:
    done = emu.run(role, [sys.executable, "-c", CLIENT, kind, str(port), address, *more])  # type: ignore[arg-type]
    return done.stdout.strip()


def tun_doc(emu: Emulator, ready: Callable[[dict[str, Any]], bool] = lambda t: True) -> Any:
    """The health JSON's "tun" part once ``ready`` holds (or after 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        doc = emu.http_get("/").json()["tun"]
        if ready(doc) or time.monotonic() > deadline:
            return doc
        time.sleep(0.1)


def endpoint(doc: dict[str, Any]) -> dict[str, Any]:
    (found,) = [e for e in doc["endpoints"] if e["ingress"] == INGRESS]
    return dict(found)


def warm_up(emu: Emulator, address: str) -> None:
    """The endpoint's first frame makes its interfaces and starts the create hook (in its own
    thread); that frame is held until the hook is done, then goes through: the ping is answered."""
    ping = emu.run("client", ["ping", "-n", "-c", "1", "-W", "2", address], timeout=5)
    doc = tun_doc(emu, lambda t: t["hooks_run"] >= 1)
    assert doc["hooks_run"] >= 1 and doc["hook_failures"] == 0, doc
    assert ping.returncode == 0, ping.stdout
    assert endpoint(doc)["before_hook"] >= 1 and doc["held"] == 0, doc


def links(emu: Emulator) -> str:
    return emu.run("appliance", ["ip", "-br", "link"]).stdout


def metrics(emu: Emulator) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = emu.http_get("/metrics").body.decode()
    return {
        f.name: {tuple(sorted(s.labels.items())): s.value for s in f.samples}
        for f in text_string_to_metric_families(text)
    }


@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (Debian: nftables)")
def test_one_arm_with_nftables_both_ways_over_ipv4_and_ipv6(tmp_path: Path) -> None:
    with Emulator() as emu:
        a = emu.addressing
        loaded = emu.run("appliance", ["nft", "-f", str(FILTER)])
        assert loaded.returncode == 0, loaded.stderr
        for role in ("client", "server"):
            emu.spawn(role, [sys.executable, "-c", SERVERS])
        hooks = f"{ONE_ARM}"
        start(emu, tmp_path, "--tun-create-hook", hooks, "--tun-destroy-hook", hooks)
        warm_up(emu, a.server)
        assert INGRESS in links(emu) and EGRESS in links(emu)
        for here, there, there6 in (("client", a.server, a.server6),
                                    ("server", a.client, a.client6)):  # fmt: skip
            for address in (there, there6):
                ping = emu.run(here, ["ping", "-n", "-c", "3", "-i", "0.2", address], timeout=10)  # type: ignore[arg-type]
                assert ping.returncode == 0, (here, address, ping.stdout)
                assert exchange(emu, here, "udp", 7000, address) == "hello"
                assert exchange(emu, here, "tcp", 7001, address) == "hello"
                # nftables in the appliance drops telnet; the server listens all the same.
                assert exchange(emu, here, "tcp", 23, address).startswith("error")
        assert exchange(emu, "server", "tcp", 23, "127.0.0.1") == "telnet"
        doc = tun_doc(emu)
        ep = endpoint(doc)
        seen = metrics(emu)
        summary = emu.summary()
        emu.stop_appliance()
        rules = emu.run("appliance", ["ip", "rule", "show"]).stdout
        after = links(emu)
    assert ep["egress"] == EGRESS and ep["endpoint"] == _tun.endpoint_hex(ENDPOINT)
    assert ep["packets_in"] > 0 and ep["packets_out"] > 0, ep
    assert ep["write_errors"] == 0 and ep["send_errors"] == 0, ep
    label = (("endpoint", ep["endpoint"]),)
    assert seen["geneve_tun_packets_in"][label] > 0
    assert seen["geneve_tun_endpoints"][()] == 1
    # Every reply passed the emulator's checks; each is its request with one hop less.
    assert summary["failed"] == 0, summary
    assert summary["routed"] > 0 and summary["modified"] == 0, summary
    # The stop deleted the interfaces and ran the destroy hook, which took its rules away.
    assert INGRESS not in after and EGRESS not in after
    assert f"iif {INGRESS}" not in rules


@contextlib.contextmanager
def internet(emu: Emulator) -> Iterator[str]:
    """A namespace behind the appliance's second interface eth1: 203.0.113.2, the appliance
    203.0.113.1; the emulated GWLB diverts what the client sends there. Its name."""
    spaces = Namespaces()
    name = f"{emu.names.base}-inet"
    try:
        spaces.add(name)
        veth(emu.names.appliance, "eth1", name, "eth0")
        ip("-n", emu.names.appliance, "addr", "add", "203.0.113.1/24", "dev", "eth1")
        ip("-n", name, "addr", "add", "203.0.113.2/24", "dev", "eth0")
        for ns, dev in ((emu.names.appliance, "eth1"), (name, "eth0"), (name, "lo")):
            ip("-n", ns, "link", "set", dev, "up")
        ip("-n", emu.names.gwlb, "rule", "add", "iif", GWLB_TO["client"],
           "to", "203.0.113.0/24", "lookup", str(DIVERT_TABLE), "pref", "100")  # fmt: skip
        yield name
    finally:
        spaces.delete()


@pytest.mark.skipif(shutil.which("iptables") is None, reason="needs iptables")
def test_two_arm_nat_masquerades_to_an_internet_namespace(tmp_path: Path) -> None:
    with Emulator() as emu, internet(emu) as inet:
        server = subprocess.Popen(["ip", "netns", "exec", inet, sys.executable, "-c", SERVERS],
                                  preexec_fn=die_with_parent)  # fmt: skip
        try:
            hooks = str(TWO_ARM_NAT)
            start(emu, tmp_path, "--tun-create-hook", hooks, "--tun-destroy-hook", hooks,
                  env={"NAT_OUT": "eth1"})  # fmt: skip
            warm_up(emu, "203.0.113.2")
            time.sleep(0.3)  # the server's sockets
            # The server sees the appliance's address; the answer finds the client through
            # conntrack, the egress interface and GWLB.
            seen_as = exchange(emu, "client", "tcp", 7002, "203.0.113.2")
            echoed = exchange(emu, "client", "udp", 7000, "203.0.113.2")
            ping = emu.run("client", ["ping", "-n", "-c", "2", "-i", "0.2", "203.0.113.2"])
            summary = emu.summary()
            ep = endpoint(tun_doc(emu))
            emu.stop_appliance()
            nat = emu.run("appliance", ["iptables", "-t", "nat", "-S", "POSTROUTING"]).stdout
        finally:
            server.terminate()
            server.wait(5)
    assert seen_as == "203.0.113.1"
    assert echoed == "hello" and ping.returncode == 0, ping.stdout
    # The emulator pairs every packet coming back with one it sent (one-arm: the appliance
    # returns what it got). Here the answers are the internet server's own packets, which it
    # can only take for edits, or not pair at all ("unsolicited"); its checks of each packet
    # (addresses, ports, Geneve bytes, lengths, checksums) found nothing else.
    assert set(summary["failures"]) <= {"unsolicited"}, summary["failures"]
    assert summary["returned"] > 0 and summary["verified"] == summary["returned"], summary
    assert ep["packets_out"] > 0
    assert "MASQUERADE" not in nat  # the destroy hook took the rule away


def test_a_modifier_runs_before_the_tun(tmp_path: Path) -> None:
    with Emulator() as emu:
        a = emu.addressing
        emu.spawn("server", [sys.executable, "-c", SERVERS])
        start(emu, tmp_path, "--tun-create-hook", str(ONE_ARM), rules="tun_rules:edit")
        warm_up(emu, a.server)
        time.sleep(0.3)
        edited = exchange(emu, "client", "udp", 7000, a.server)
        dropped = exchange(emu, "client", "udp", 7000, a.server, "45001")
        refused = exchange(emu, "client", "tcp", 7002, a.server)
        echoed = exchange(emu, "client", "tcp", 7001, a.server)
        summary = emu.summary()
        counters = emu.http_get("/").json()["counters"]
    assert edited == "HELLO"  # edited, then through the kernel; the echo unchanged
    assert dropped == "error TimeoutError"
    assert refused == "error ConnectionRefusedError"  # the RST went straight back to GWLB
    assert echoed == "hello"
    assert summary["failed"] == 0 and summary["injected"] >= 1 and summary["modified"] >= 1
    assert counters["rejected"] >= 1 and counters["modified"] >= 1, counters


def test_a_packet_of_no_flow_is_dropped_and_counted(tmp_path: Path) -> None:
    with Emulator() as emu:
        a = emu.addressing
        start(emu, tmp_path, "--tun-create-hook", str(ONE_ARM))
        warm_up(emu, a.server)
        before = endpoint(tun_doc(emu))
        received = emu.summary()["received"]
        # The appliance itself sends into the egress interface: no GWLB flow is its own.
        emu.run("appliance", ["ip", "route", "add", "192.0.2.99/32", "dev", EGRESS])
        emu.run("appliance", ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", "192.0.2.99"])
        after = endpoint(tun_doc(emu, lambda t: endpoint(t)["misses"] >= before["misses"] + 3))
        summary = emu.summary()
    assert after["misses"] >= before["misses"] + 3
    assert after["packets_out"] == before["packets_out"]
    assert summary["received"] == received and summary["failed"] == 0, summary


def test_a_reused_five_tuple_goes_back_with_its_new_cookie(tmp_path: Path) -> None:
    config = EmulatorConfig(other_idle_timeout=1.0)
    with Emulator(config) as emu:
        a = emu.addressing
        emu.spawn("server", [sys.executable, "-c", SERVERS])
        start(emu, tmp_path, "--tun-create-hook", str(ONE_ARM))
        warm_up(emu, a.server)
        time.sleep(0.3)
        first = exchange(emu, "client", "udp", 7000, a.server, "45000")
        time.sleep(1.5)  # GWLB's flow ends: the same 5-tuple is a new flow with a new cookie
        second = exchange(emu, "client", "udp", 7000, a.server, "45000")
        summary = emu.summary()
    assert first == second == "hello"
    instances = [f for f in summary["flows"] if f["protocol"] == "udp" and f["src_port"] == 45000]
    assert len(instances) == 2 and instances[0]["superseded"], instances
    assert instances[0]["flow_cookie"] != instances[1]["flow_cookie"]
    assert all(f["returned"] == f["sent"] == 2 for f in instances), instances
    assert summary["failed"] == 0, summary  # no stale-cookie, no geneve-changed


FLOOD = r"""
import socket, sys
for port in range(20000, 20400):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"new flow", (sys.argv[1], port))
"""


def test_the_header_store_stays_bounded_under_a_new_flow_flood(tmp_path: Path) -> None:
    with Emulator() as emu:
        a = emu.addressing
        start(emu, tmp_path, "--tun-create-hook", str(ONE_ARM), "--max-flows", "64")
        warm_up(emu, a.server)
        flood = emu.run("client", [sys.executable, "-c", FLOOD, a.server])
        assert flood.returncode == 0, flood.stderr
        doc = tun_doc(emu, lambda t: t["evicted"] > 0)
        ping = emu.run("client", ["ping", "-n", "-c", "2", "-i", "0.2", a.server])
    assert doc["max_headers"] <= 64 and doc["headers"] <= doc["max_headers"], doc
    assert doc["evicted"] > 0, doc
    assert ping.returncode == 0, ping.stdout  # new flows still go through


def test_idle_endpoints_go_and_the_hooks_get_gwlbtuns_arguments(tmp_path: Path) -> None:
    record = tmp_path / "hooks.log"
    hook = tmp_path / "hook.sh"
    hook.write_text(f'#!/bin/sh\necho "$@" >> {record}\n')
    hook.chmod(0o755)
    with Emulator() as emu:
        a = emu.addressing
        start(emu, tmp_path, "--tun-create-hook", str(hook), "--tun-destroy-hook", str(hook),
              "--tun-idle-timeout", "1")  # fmt: skip
        emu.run("client", ["ping", "-n", "-c", "1", "-W", "1", a.server])
        made = INGRESS in links(emu)
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline and INGRESS in links(emu):
            time.sleep(0.2)
        gone = INGRESS not in links(emu)
        doc = tun_doc(emu, lambda t: t["hooks_run"] >= 2)
    hexid = _tun.endpoint_hex(ENDPOINT)
    assert made and gone and doc["endpoints"] == []
    assert record.read_text().splitlines() == [
        f"CREATE {INGRESS} {EGRESS} {hexid}",
        f"DESTROY {INGRESS} {EGRESS} {hexid}",
    ]


def test_the_hook_scripts_are_the_docs_examples() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "tun.md").read_text()
    # Blocks inside a numbered step are indented by 3 spaces.
    dedented = "".join(
        line[3:] if line.startswith("   ") else line for line in doc.splitlines(keepends=True)
    )
    for path in (ONE_ARM, TWO_ARM_NAT, FILTER):
        assert path.read_text() in doc or path.read_text() in dedented, path
    assert all(os.access(p, os.X_OK) for p in (ONE_ARM, TWO_ARM_NAT))
