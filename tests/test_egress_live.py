"""The egress filter on the wire: the emulator (network namespaces) and the real daemon with
``--rules geneve.rules.egress:from_env``, against real clients: curl to an HTTPS server (a
certificate made at run time by openssl) by an allowed and a denied SNI, with its
ClientHello in 200-byte segments; curl over HTTP by Host; dig to a small DNS server, over UDP
and TCP. With reject a denied client fails at once and a denied query is answered REFUSED.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.netns import netns_unavailable

from geneve._emulator import Emulator, EmulatorConfig
from geneve._emulator.topology import Role

_why = netns_unavailable(tun=True)
_missing = [tool for tool in ("curl", "openssl", "dig") if shutil.which(tool) is None]
pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(_why is not None, reason=_why or ""),
    pytest.mark.skipif(bool(_missing), reason=f"needs {', '.join(_missing)} (scripts/setup.sh)"),
]

ALLOWED, DENIED = "allowed.test", "denied.test"
TLS_PORT, HTTP_PORT = 8443, 8000

# An HTTPS server that serves connections side by side: a refused connection leaves the
# server's half open until its own timeout (the reset goes to the client), and a server that
# serves one connection at a time, as ``openssl s_server`` does, would wait on it.
HTTPS_SERVER = r"""
import http.server, ssl, sys
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server = http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[3])), Quiet)
# The handshake in each connection's thread, not in accept().
server.socket = context.wrap_socket(
    server.socket, server_side=True, do_handshake_on_connect=False)
server.serve_forever()
"""

# A DNS server for the test: every query for an A record gets 192.0.2.1, over UDP and TCP
# (RFC 1035 4.1; only the first question is answered, EDNS is not echoed).
DNS_SERVER = r"""
import socket, struct, threading
def answer(query):
    p = 12
    while query[p]:
        p += query[p] + 1
    question = query[12 : p + 5]
    header = query[:2] + struct.pack("!HHHHH", 0x8180 | (query[2] & 1) << 8, 1, 1, 0, 0)
    record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes((192, 0, 2, 1))
    return header + question + record
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", 53))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("0.0.0.0", 53))
tcp.listen()
def serve_tcp():
    while True:
        conn = tcp.accept()[0]
        with conn:
            data = b""
            while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
                more = conn.recv(4096)
                if not more:
                    break
                data += more
            if len(data) >= 14:
                reply = answer(data[2:])
                conn.sendall(struct.pack("!H", len(reply)) + reply)
threading.Thread(target=serve_tcp, daemon=True).start()
while True:
    query, peer = udp.recvfrom(4096)
    udp.sendto(answer(query), peer)
"""


def wait_for(emu: Emulator, role: Role, check: list[str], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while emu.run(role, check, timeout=5).returncode != 0:
        assert time.monotonic() < deadline, f"{check} never succeeded"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for both names, made now."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", f"/CN={ALLOWED}",
         "-addext", f"subjectAltName=DNS:{ALLOWED},DNS:{DENIED}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def egress(tmp_path: Path, certificate: tuple[Path, Path]) -> Iterator[Any]:
    """A function starting the emulator, the servers and the daemon with an action."""
    stack: list[Emulator] = []

    def run(action: str, config: EmulatorConfig | None = None) -> Emulator:
        emu = Emulator(config)
        stack.append(emu)
        emu.__enter__()
        a = emu.addressing
        cert, key = certificate
        # The server advertises an MSS of 200: the client's ClientHello comes in small segments.
        routes = emu.run("server", ["ip", "-4", "route", "show", "default"]).stdout.split()
        via = routes[routes.index("via") + 1]
        emu.run("server", ["ip", "route", "replace", "default", "via", via, "advmss", "200"])
        https_server = [sys.executable, "-c", HTTPS_SERVER, str(cert), str(key), str(TLS_PORT)]
        emu.spawn("server", https_server, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        emu.spawn("server", [sys.executable, "-m", "http.server", "-b", a.server, str(HTTP_PORT),
                             "-d", str(tmp_path)],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        emu.spawn("server", [sys.executable, "-c", DNS_SERVER])
        log = (tmp_path / "daemon.log").open("wb")
        env = ["env", f"GENEVE_EGRESS_ALLOW=.{ALLOWED}", f"GENEVE_EGRESS_DENY={DENIED}",
               f"GENEVE_EGRESS_ACTION={action}"]  # fmt: skip
        emu.start_appliance([*env, *emu.appliance_command("geneve.rules.egress:from_env")], log=log)
        emu.wait_healthy()
        wait_for(emu, "server", ["sh", "-c", f"ss -ltn | grep -q ':{TLS_PORT} '"])
        wait_for(emu, "server", ["sh", "-c", f"ss -ltn | grep -q ':{HTTP_PORT} '"])
        wait_for(emu, "server", ["sh", "-c", "ss -lun | grep -q ':53 '"])
        return emu

    yield run
    for emu in stack:
        emu.__exit__(None, None, None)


def curl(emu: Emulator, url: str, *extra: str, max_time: float = 5) -> tuple[int, str, float]:
    """curl's exit status, the HTTP status it got, and how long it took."""
    began = time.monotonic()
    done = emu.run(
        "client",
        ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(max_time),
         *extra, url],
        timeout=max_time + 10,
    )  # fmt: skip
    return done.returncode, done.stdout.strip(), time.monotonic() - began


def https(emu: Emulator, name: str, **kwargs: Any) -> tuple[int, str, float]:
    server = emu.addressing.server
    return curl(emu, f"https://{name}:{TLS_PORT}/", "--resolve", f"{name}:{TLS_PORT}:{server}",
                **kwargs)  # fmt: skip


def http(emu: Emulator, name: str, **kwargs: Any) -> tuple[int, str, float]:
    url = f"http://{emu.addressing.server}:{HTTP_PORT}/"
    return curl(emu, url, "-H", f"Host: {name}", **kwargs)


def dig(emu: Emulator, name: str, *extra: str) -> str:
    done = emu.run(
        "client",
        ["dig", f"@{emu.addressing.server}", name, "A", "+tries=1", "+time=2", *extra],
        timeout=20,
    )
    return done.stdout


def test_reject_refuses_denied_names_at_once_and_lets_the_allowed_ones_go(egress: Any) -> None:
    # One outer port per direction: a REFUSED answer travels against its query's direction
    # with the query's port, as the RST does.
    emu = egress("reject", EmulatorConfig(per_direction_ports=True))
    # TLS, its hello in 200-byte segments: allowed by SNI; denied fails at once, and the next
    # allowed connection is not held up by it.
    assert https(emu, f"www.{ALLOWED}")[:2] == (0, "200")
    status, code, took = https(emu, DENIED)
    assert status != 0 and code == "000" and took < 1.0, (status, code, took)
    assert https(emu, ALLOWED)[:2] == (0, "200")
    # HTTP by Host.
    assert http(emu, ALLOWED)[:2] == (0, "200")
    status, code, took = http(emu, DENIED)
    assert status != 0 and took < 1.0, (status, code, took)
    # DNS over UDP: allowed answered by the server, denied answered REFUSED by the filter.
    allowed = dig(emu, f"api.{ALLOWED}")
    assert "status: NOERROR" in allowed and "192.0.2.1" in allowed, allowed
    refused = dig(emu, DENIED)
    assert "status: REFUSED" in refused, refused
    # DNS over TCP: the first query decides the connection; a denied one is reset.
    assert "status: NOERROR" in dig(emu, ALLOWED, "+tcp")
    over_tcp = dig(emu, DENIED, "+tcp")
    assert "status:" not in over_tcp, over_tcp
    # The denied hello came in several segments: those before its last were held, then dropped.
    metrics = emu.http_get("/metrics").body.decode()
    held = [line for line in metrics.splitlines() if 'reason="hold"}' in line]
    assert held and float(held[0].split()[-1]) >= 1, metrics
    s = emu.summary()
    assert s["failed"] == 0 and s["errors"] == {} and s["modified"] == 0, s
    assert s["injected"] >= 4, s  # the resets of TLS, HTTP and DNS over TCP; REFUSED


def test_drop_lets_a_denied_client_time_out(egress: Any) -> None:
    emu = egress("drop")
    status, _code, took = https(emu, DENIED, max_time=2)
    assert status == 28 and took >= 1.9  # curl's "operation timed out"
    assert https(emu, ALLOWED)[:2] == (0, "200")
    assert "connection timed out" in dig(emu, DENIED) or "timed out" in dig(emu, DENIED)
    assert "status: NOERROR" in dig(emu, ALLOWED)
