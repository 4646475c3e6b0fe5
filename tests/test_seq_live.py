"""TCP rewrites that change the length, on the wire: the emulator (network namespaces) and the
real daemon rewriting every ``http://`` into ``https://`` in one TCP connection of 100 KB of
links, checked byte for byte at the other end: the server's download; the same with 2 % loss
both ways on the client side (an nftables rule: this kernel has no netem), so that segments
are retransmitted, some cut differently; and with both directions rewriting (with loss: checked
complete and uncorrupted, every link rewritten but the few a re-cut segment boundary splits).
The namespaces go with the emulator, also when a test fails.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.netns import netns_unavailable

from geneve._emulator import Emulator

_why = netns_unavailable(tun=True)
pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(_why is not None, reason=_why or ""),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (scripts/setup.sh)"),
]

PORT = 9000
#: The payload of a full segment here (below): what the mode block and the echoed upload are
#: padded to, so that a retransmission that merges segments still cuts at a line's start.
SEGMENT = 1408
#: The modifier the daemon runs: links rewritten both ways on PORT, the MSS clamped by the
#: most one segment grows (a line of text() is 44 bytes: at most 33 links a segment). A
#: link that straddles two segments is left alone (docs/codec.md): the lines tile a full
#: segment (the MSS clamped from 1460 to 1420, less 12 bytes of timestamps: 1408 = 32 lines),
#: so that every link can be rewritten and the transfer checked byte for byte.
RULES = f"""
from geneve import declare_interest

def _links(packet):
    packet.replace_in_payload(b"http://", b"https://")

links = declare_interest(_links, tcp_ports=[{PORT}], payload_contains=[b"http://"], max_growth=40)
"""


def text(size: int = 100_000, tag: str = "down") -> bytes:
    """``size`` bytes of lines with a link each (44 bytes a line for a 4-letter tag)."""
    lines = bytearray()
    n = 0
    while len(lines) < size:
        lines += f"see http://example.com/{tag}/{n:06d} for more\n".encode()
        n += 1
    return bytes(lines[:size])


# The server: "down" sends TEXT and closes; "both" reads the client's upload to its end, then
# sends it back, padded with newlines to whole segments, followed by TEXT. The mode comes in a
# block of one segment. Serves connections one after another.
SERVER = r"""
import socket, sys
text = open(sys.argv[1], "rb").read()
segment = int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2])))
s.listen()
while True:
    conn = s.accept()[0]
    with conn:
        mode = b""
        while len(mode) < segment and (chunk := conn.recv(segment - len(mode))):
            mode += chunk
        data = b""
        if mode.startswith(b"both:"):
            while chunk := conn.recv(65536):
                data += chunk
            data += b"\n" * (-len(data) % segment)
        conn.sendall(data + text)
"""

# The client: sends "down:" or "both:" and its upload (then half-closes), reads to the end,
# writes what it got to a file.
CLIENT = r"""
import socket, sys
mode, host, port, upload, out, segment = sys.argv[1:7]
s = socket.create_connection((host, int(port)), timeout=60)
s.sendall((mode + ":").encode().ljust(int(segment)))  # one whole segment
if mode == "both":
    s.sendall(open(upload, "rb").read())
    s.shutdown(socket.SHUT_WR)
got = b""
while chunk := s.recv(65536):
    got += chunk
open(out, "wb").write(got)
"""

LOSS = """
table inet loss {
    chain input { type filter hook input priority 0; numgen random mod 100 < 2 counter drop; }
    chain output { type filter hook output priority 0; numgen random mod 100 < 2 counter drop; }
}
"""


def losses(emu: Emulator) -> int:
    """Packets the loss rule dropped so far, both ways."""
    listing = emu.run("client", ["nft", "list", "table", "inet", "loss"]).stdout.split()
    return sum(int(listing[i + 1]) for i, word in enumerate(listing) if word == "packets")


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Any]:
    """A function starting the emulator, the server and the rewriting daemon."""
    stack: list[Emulator] = []

    def run(loss: bool = False) -> Emulator:
        emu = Emulator()
        stack.append(emu)
        emu.__enter__()
        (tmp_path / "linkrules.py").write_text(RULES)
        (tmp_path / "down.txt").write_bytes(text())
        (tmp_path / "up.txt").write_bytes(text(tag="upld"))
        log = (tmp_path / "daemon.log").open("wb")
        argv = ["env", f"PYTHONPATH={tmp_path}", *emu.appliance_command("linkrules:links")]
        emu.start_appliance(argv, log=log)
        emu.wait_healthy()
        emu.spawn("server", [sys.executable, "-c", SERVER, str(tmp_path / "down.txt"),
                             str(PORT), str(SEGMENT)])  # fmt: skip
        deadline = time.monotonic() + 10
        while "LISTEN" not in emu.run("server", ["ss", "-ltn", f"sport = :{PORT}"]).stdout:
            assert time.monotonic() < deadline, "the server never listened"
            time.sleep(0.05)
        if loss:
            done = emu.run("client", ["nft", "-f", "-"], input=LOSS.encode())
            assert done.returncode == 0, done.stderr
        return emu

    yield run
    for emu in stack:
        emu.__exit__(None, None, None)


def fetch(emu: Emulator, tmp_path: Path, mode: str) -> bytes:
    out = tmp_path / f"got-{mode}.bin"
    done = emu.run(
        "client",
        [sys.executable, "-c", CLIENT, mode, emu.addressing.server, str(PORT),
         str(tmp_path / "up.txt"), str(out), str(SEGMENT)],
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out.read_bytes()


def rewritten(data: bytes) -> bytes:
    return data.replace(b"http://", b"https://")


def metric(emu: Emulator, name: str) -> float:
    body = emu.http_get("/metrics").body.decode()
    values = [line.split()[-1] for line in body.splitlines() if line.startswith(name + " ")]
    return float(values[0]) if values else 0.0


def test_a_download_full_of_links_arrives_rewritten(rig: Any, tmp_path: Path) -> None:
    emu = rig()
    got = fetch(emu, tmp_path, "down")
    expected = rewritten(text())
    assert len(got) == len(expected) > 100_000
    assert got == expected
    s = emu.summary()
    assert s["failed"] == 0 and s["errors"] == {} and s["modified"] > 0, s


def test_the_same_with_two_percent_loss_both_ways(rig: Any, tmp_path: Path) -> None:
    emu = rig(loss=True)
    for _ in range(10):  # connections until segments were lost (one in a million never)
        assert fetch(emu, tmp_path, "down") == rewritten(text())
        if losses(emu) >= 3:
            break
    assert losses(emu) >= 3
    assert metric(emu, "geneve_seq_adjusted_total") > 0
    assert metric(emu, "geneve_seq_resets_total") == 0
    s = emu.summary()
    assert s["failed"] == 0 and s["errors"] == {}, s


def test_both_directions_rewriting(rig: Any, tmp_path: Path) -> None:
    emu = rig(loss=True)
    got = fetch(emu, tmp_path, "both")
    # Rewritten on the way up, echoed, padded to whole segments, then the text rewritten on
    # the way down. Complete and uncorrupted: undo the rewrite and it is what was sent.
    undone = got.replace(b"https://", b"http://")
    upload, down = text(tag="upld"), text()
    assert undone.startswith(upload) and undone[len(upload) :].lstrip(b"\n") == down
    # Every link rewritten but those a segment boundary cut (docs/codec.md: left alone). With
    # loss, an acknowledgment mapped back to a region's start makes the sender resend from
    # there, so later segments no longer start at a line: a few links straddle two segments.
    links = upload.count(b"http://") + down.count(b"http://")
    assert got.count(b"https://") >= 0.98 * links, (got.count(b"https://"), links)
    assert metric(emu, "geneve_seq_resets_total") == 0
    s = emu.summary()
    assert s["failed"] == 0 and s["errors"] == {}, s
