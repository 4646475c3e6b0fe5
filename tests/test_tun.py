"""The tun bridge without tun devices: gwlbtun's names, the C header store and flow keys, the
way in and the way back over socket pairs standing in for tuns, and the options' refusals.
The live tests (tests/test_tun_live.py) run it with real tuns, nftables and iptables."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pathlib
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.frames import flow_frame

from geneve import _tun
from geneve._appliance import Appliance, ApplianceError
from geneve._headers import GENEVE_PORT

pytestmark = pytest.mark.skipif(_tun.available() is not None, reason=_tun.available() or "")

with contextlib.suppress(ImportError):  # else skipped: see pytestmark
    from geneve._tun_cffi import ffi, lib

ENDPOINT = 0x0123456789ABCDEF
SLOT = 65535 + 28


def forward(frame: bytearray) -> bytearray:
    """``frame`` as the pipeline leaves a forwarded one: outer addresses swapped."""
    out = bytearray(frame)
    out[12:16], out[16:20] = frame[16:20], frame[12:16]
    return out


class Bridge:
    """A C store with one endpoint whose two "tuns" are datagram socket pairs."""

    def __init__(self, max_flows: int = 1000, endpoint: int | None = ENDPOINT) -> None:
        self.t = lib.geneve_tun_new(max_flows, 350.0, 120.0, 12345)
        self.ingress = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.egress = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (*self.ingress, *self.egress):
            s.setblocking(False)
        if endpoint is not None:
            fd_in, fd_out = os.dup(self.ingress[0].fileno()), os.dup(self.egress[0].fileno())
            assert lib.geneve_tun_add_endpoint(self.t, endpoint, fd_in, fd_out, 1, 0.0) >= 0
        self.unknown = ffi.new("uint64_t[]", 16)

    def decap(self, frames: list[bytearray], now: float = 1.0) -> tuple[int, list[int]]:
        bufs = [ffi.new("uint8_t[]", SLOT) for _ in frames]
        for buf, frame in zip(bufs, frames, strict=True):
            ffi.memmove(buf, bytes(frame), len(frame))
        slots = ffi.new("uint8_t *[]", bufs)
        out = ffi.new("int32_t[]", [len(f) for f in frames])
        n = lib.geneve_tun_decap(self.t, slots, SLOT, out, len(frames), now, self.unknown, 16)
        return n, list(out)

    def encap(self, inner: bytes, now: float = 2.0, endpoint: int = ENDPOINT) -> bytes | int:
        frame = ffi.new("uint8_t[]", 100 + len(inner))
        n = lib.geneve_tun_encap(self.t, endpoint, ffi.from_buffer(inner), len(inner), now, frame,
                                 len(frame))  # fmt: skip
        return n if n < 0 else bytes(ffi.buffer(frame, n))

    def counts(self) -> list[int]:
        c = ffi.new("uint64_t[]", lib.GENEVE_TUN_COUNTERS)
        lib.geneve_tun_counts(self.t, c)
        return list(c)

    def endpoint_counts(self, endpoint: int = ENDPOINT) -> list[int]:
        c, last = ffi.new("uint64_t[]", lib.GENEVE_TUN_EP_COUNTERS), ffi.new("double *")
        assert lib.geneve_tun_endpoint_counts(self.t, endpoint, c, last) == 0
        return list(c)

    def close(self) -> None:
        lib.geneve_tun_free(self.t)
        for s in (*self.ingress, *self.egress):
            s.close()


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    b = Bridge()
    yield b
    b.close()


def inner_of(frame: bytearray | bytes) -> bytes:
    return bytes(frame[68:])


def reply_inner(frame: bytearray) -> bytes:
    """The inner packet of ``frame`` the other way round (addresses and ports swapped)."""
    inner = bytearray(inner_of(frame))
    if inner[0] >> 4 == 4:
        inner[12:16], inner[16:20] = inner[16:20], inner[12:16]
        at = 20
    else:
        inner[8:24], inner[24:40] = inner[24:40], inner[8:24]
        at = 40
    if inner[9 if inner[0] >> 4 == 4 else 6] in (6, 17):
        inner[at : at + 2], inner[at + 2 : at + 4] = inner[at + 2 : at + 4], inner[at : at + 2]
    return bytes(inner)


# -- gwlbtun's names ------------------------------------------------------------------------


def test_base60_as_gwlbtun_writes_it() -> None:
    assert _tun.to_base60(0) == "0"
    assert _tun.to_base60(59) == "X"
    assert _tun.to_base60(60) == "10"
    assert _tun.to_base60(2**64 - 1) == "uur953OEv0f"  # gwlbtun's own comment says so


@given(st.integers(0, 2**64 - 1))
def test_interface_names_fit_and_differ(endpoint: int) -> None:
    ingress, egress = _tun.interface_names(endpoint)
    assert len(ingress) <= 15 and len(egress) <= 15  # IFNAMSIZ - 1
    assert ingress[4:] == egress[4:] and ingress[:4] == "gwi-" and egress[:4] == "gwo-"
    digits = ingress[4:]
    assert sum(_tun.BASE60.index(c) * 60**i for i, c in enumerate(reversed(digits))) == endpoint


def test_endpoint_hex_is_gwlbtuns_17_digits() -> None:
    assert _tun.endpoint_hex(0x2B8EE1D4DB0C51C4) == "02b8ee1d4db0c51c4"
    assert _tun.endpoint_hex(1) == "00000000000000001"


# -- flow keys ------------------------------------------------------------------------------


def key(inner: bytes) -> bytes | None:
    out = ffi.new("uint8_t[]", 40)
    found = lib.geneve_tun_flow_key(ffi.from_buffer(inner), len(inner), out)
    return bytes(ffi.buffer(out)) if found == 0 else None


@pytest.mark.parametrize("proto", ["tcp", "udp", "icmp"])
@pytest.mark.parametrize("v6", [False, True])
def test_both_directions_share_a_key(proto: str, v6: bool) -> None:
    a, b = ("2001:db8::1", "2001:db8::2") if v6 else ("10.0.0.1", "10.0.0.2")
    there = inner_of(flow_frame(a, b, proto, 40000, 80))
    reply_type = None if proto != "icmp" else (129 if v6 else 0)
    back_port = 80 if proto != "icmp" else 40000
    back = inner_of(flow_frame(b, a, proto, back_port, 40000, icmp_type=reply_type))
    k, k_back = key(there), key(back)
    assert k is not None and k_back is not None
    # One flow, two directions: the keys differ in the direction byte only.
    assert k[:2] + k[3:] == k_back[:2] + k_back[3:] and {k[2], k_back[2]} == {0, 1}
    other = inner_of(flow_frame(a, b, proto, 40001, 80))
    assert key(other) != key(there)


def test_an_icmp_error_belongs_to_the_flow_it_quotes() -> None:
    udp = inner_of(flow_frame("10.0.0.1", "10.0.0.2", "udp", 40000, 53))
    # Port unreachable from 10.0.0.2, quoting the datagram's IPv4 header and 8 bytes.
    quoted = udp[:28]
    icmp = struct.pack("!BBHI", 3, 3, 0, 0) + quoted
    error = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0,
                        ipaddress.ip_address("10.0.0.2").packed,
                        ipaddress.ip_address("10.0.0.1").packed) + icmp  # fmt: skip
    k, k_error = key(error), key(udp)
    assert k is not None and k_error is not None  # the error travels against the datagram
    assert k[:2] + k[3:] == k_error[:2] + k_error[3:] and k[2] != k_error[2]


def test_each_direction_goes_back_with_its_own_header(bridge: Bridge) -> None:
    there = forward(flow_frame("10.0.0.1", "10.0.0.2", "udp", 40000, 53, cookie=0x1111))
    back = forward(flow_frame("10.0.0.2", "10.0.0.1", "udp", 53, 40000, cookie=0x2222))
    bridge.decap([there])
    # Only one direction seen yet: the other goes back with its header.
    sent = bridge.encap(reply_inner(there))
    assert isinstance(sent, bytes) and sent[28:68] == there[28:68]
    bridge.decap([back])
    for frame in (there, back):
        sent = bridge.encap(inner_of(frame))
        assert isinstance(sent, bytes) and sent[20:22] == frame[20:22]  # its source port
        assert sent[28:68] == frame[28:68]


def test_not_ip_has_no_key() -> None:
    assert key(b"") is None and key(b"\x50" + bytes(40)) is None and key(b"\x45" + bytes(5)) is None


# -- the way in and the way back ------------------------------------------------------------


def test_way_in_writes_the_inner_packet_and_way_back_puts_the_header_back(bridge: Bridge) -> None:
    frame = forward(flow_frame("10.0.0.1", "10.0.0.2", "tcp", 40000, 80, cookie=0xAAAA0001))
    n, out = bridge.decap([frame])
    assert n == 0 and out == [0]
    assert bridge.ingress[1].recv(65536) == inner_of(frame)
    back = reply_inner(frame)
    sent = bridge.encap(back)
    assert isinstance(sent, bytes)
    # The stored outer + Geneve bytes, with the lengths of the new packet; the kernel fills
    # the IPv4 ID and header checksum (IP_HDRINCL), the outer UDP checksum is 0.
    total = 68 + len(back)
    assert sent[68:] == back
    assert struct.unpack_from("!H", sent, 2)[0] == total
    assert sent[12:20] == frame[12:20]  # source the appliance, destination GWLB
    assert struct.unpack_from("!HHHH", sent, 20) == (
        struct.unpack_from("!H", frame, 20)[0], GENEVE_PORT, total - 20, 0
    )
    assert sent[28:68] == frame[28:68]  # the Geneve header and options as received
    assert bridge.endpoint_counts()[lib.GENEVE_TUN_EP_IN] == 1


def test_the_latest_cookie_goes_back(bridge: Bridge) -> None:
    first = forward(flow_frame("10.0.0.1", "10.0.0.2", "udp", 40000, 53, cookie=0x1111))
    again = forward(flow_frame("10.0.0.1", "10.0.0.2", "udp", 40000, 53, cookie=0x2222))
    bridge.decap([first])
    bridge.decap([again])
    sent = bridge.encap(reply_inner(first))
    assert isinstance(sent, bytes) and sent[28:68] == again[28:68]
    assert struct.unpack_from("!I", sent, 64)[0] == 0x2222


def test_an_unknown_flow_gets_no_header(bridge: Bridge) -> None:
    bridge.decap([forward(flow_frame("10.0.0.1", "10.0.0.2", "udp", 40000, 53))])
    assert bridge.encap(inner_of(flow_frame("10.0.0.9", "10.0.0.2", "udp", 40000, 53))) == -1
    assert bridge.encap(b"\x00" * 30) == -2  # not IP
    # Another endpoint's flow is not this one's, even with the same addresses.
    assert bridge.encap(reply_inner(flow_frame("10.0.0.1", "10.0.0.2", "udp", 40000, 53)),
                        endpoint=ENDPOINT + 1) == -1  # fmt: skip


def test_a_flow_times_out(bridge: Bridge) -> None:
    frame = forward(flow_frame("10.0.0.1", "10.0.0.2", "udp", 40000, 53))
    bridge.decap([frame], now=1.0)
    assert isinstance(bridge.encap(reply_inner(frame), now=100.0), bytes)
    assert bridge.encap(reply_inner(frame), now=100.0 + 121) == -1  # UDP: 120 s


def test_a_new_endpoint_is_handed_back_and_its_frame_kept() -> None:
    b = Bridge(endpoint=None)
    try:
        frames = [forward(flow_frame("10.0.0.1", "10.0.0.2", endpoint_id=e)) for e in (5, 6, 5)]
        frames.append(forward(flow_frame("10.0.0.1", "10.0.0.2", endpoint_id=None)))
        n, out = b.decap(frames)
        assert n == 2 and sorted(b.unknown[i] for i in range(n)) == [5, 6]
        assert out[:3] == [len(f) for f in frames[:3]]  # still to be written once made
        assert out[3] == 0 and b.counts()[lib.GENEVE_TUN_NO_ENDPOINT] == 1
    finally:
        b.close()


def test_frames_wait_for_the_create_hook() -> None:
    b = Bridge(endpoint=None)
    try:
        fd_in, fd_out = os.dup(b.ingress[0].fileno()), os.dup(b.egress[0].fileno())
        assert lib.geneve_tun_add_endpoint(b.t, ENDPOINT, fd_in, fd_out, 0, 0.0) >= 0
        frame = forward(flow_frame("10.0.0.1", "10.0.0.2"))
        assert b.decap([frame]) == (0, [-len(frame)])  # the caller holds it
        assert b.endpoint_counts()[lib.GENEVE_TUN_EP_EARLY] == 1
        with pytest.raises(BlockingIOError):
            b.ingress[1].recv(65536)
        assert lib.geneve_tun_endpoint_ready(b.t, ENDPOINT) == 0
        assert b.decap([frame]) == (0, [0])
        assert b.ingress[1].recv(65536) == inner_of(frame)
    finally:
        b.close()


def test_the_store_stays_within_its_bound_under_a_flood() -> None:
    b = Bridge(max_flows=100)
    try:
        for batch in range(40):
            frames = [
                forward(flow_frame("10.0.0.1", "10.0.0.2", "udp", 1024 + batch * 50 + i, 53))
                for i in range(50)
            ]
            b.decap(frames)
            while True:
                try:
                    b.ingress[1].recv(65536)
                except BlockingIOError:
                    break
        counts = b.counts()
        assert counts[lib.GENEVE_TUN_CAPACITY] <= 100
        assert counts[lib.GENEVE_TUN_ENTRIES] <= counts[lib.GENEVE_TUN_CAPACITY]
        assert counts[lib.GENEVE_TUN_EVICTED] >= 2000 - 100
        # The newest flow is there; the oldest was pushed out.
        newest = forward(flow_frame("10.0.0.1", "10.0.0.2", "udp", 1024 + 39 * 50 + 49, 53))
        oldest = forward(flow_frame("10.0.0.1", "10.0.0.2", "udp", 1024, 53))
        assert isinstance(b.encap(reply_inner(newest)), bytes)
        assert b.encap(reply_inner(oldest)) == -1
    finally:
        b.close()


def test_the_way_back_drops_and_counts_unknown_flows(bridge: Bridge) -> None:
    frame = forward(flow_frame("10.0.0.1", "10.0.0.2", "udp", 40000, 53))
    bridge.decap([frame])
    bridge.ingress[1].recv(65536)
    # Out of the egress "tun": one packet of no flow, one of the flow. A datagram socket of
    # the wrong family refuses what the pump sends (no root needed): a send error, not a miss.
    bridge.egress[1].send(inner_of(flow_frame("10.0.0.7", "10.0.0.2", "udp", 1, 2)))
    bridge.egress[1].send(reply_inner(frame))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as refuser:
        assert lib.geneve_tun_wait(bridge.t, -1, refuser.fileno(), 100, 2.0) == 0
    counts = bridge.endpoint_counts()
    assert counts[lib.GENEVE_TUN_EP_MISSES] == 1
    assert counts[lib.GENEVE_TUN_EP_SEND_ERRORS] == 1 and counts[lib.GENEVE_TUN_EP_OUT] == 0


def test_bad_arguments_are_refused(bridge: Bridge) -> None:
    slots = ffi.new("uint8_t *[]", [ffi.new("uint8_t[]", 10)])
    out = ffi.new("int32_t[]", [11])
    assert lib.geneve_tun_decap(bridge.t, slots, 10, out, 1, 0.0, ffi.NULL, 0) == (
        lib.GENEVE_TUN_BAD_ARGUMENT
    )
    assert lib.geneve_tun_new(0, 1.0, 1.0, 0) == ffi.NULL
    assert lib.geneve_tun_add_endpoint(bridge.t, ENDPOINT, 0, 1, 1, 0.0) == -17  # EEXIST


# -- options --------------------------------------------------------------------------------


def modifier(packet: object) -> None:
    return None


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"tun": True, "flows": False}, "needs flows"),
        ({"tun": True, "workers": 2}, "one worker"),
        ({"tun": True, "receive": "raw"}, "--receive udp"),
        ({"tun": True, "batch": 1}, "--batch 2"),
        ({"tun_create_hook": "true"}, "need tun=True"),
        ({"tun": True, "tun_idle_timeout": 0}, "positive number"),
    ],
)
def test_appliance_refuses_what_tun_mode_cannot_do(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ApplianceError, match=words):
        Appliance(modifier, health_port=None, **kwargs)  # type: ignore[arg-type]


def test_appliance_takes_the_tun_options() -> None:
    app = Appliance(modifier, health_port=None, tun=True, tun_create_hook="hook.sh",
                    tun_idle_timeout=30)  # fmt: skip
    assert app.tun == _tun.TunOptions("hook.sh", None, 30.0)


# -- privileges and the unit ----------------------------------------------------------------

DROPPED = r"""
import os, subprocess, sys
from geneve import _tun
_tun.drop_privileges_keeping_net_admin("nobody")
try:
    _tun.open_tun("gwi-captest")  # CAP_NET_ADMIN still works for us...
    made = "made"
except PermissionError:  # /dev/net/tun is not open to every user here (usually 0666)
    made = "denied"
status = open("/proc/self/status").read()
child = subprocess.run(["grep", "^Cap", "/proc/self/status"], capture_output=True, text=True)
print(os.getuid(), made, [l for l in status.splitlines() if l.startswith("CapEff")][0])
print(child.stdout)  # ...and for a hook
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare")  # fmt: skip
def test_user_keeps_net_admin_and_nothing_else_in_tun_mode() -> None:
    import pwd

    done = subprocess.run(["unshare", "--net", sys.executable, "-c", DROPPED],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert int(lines[0]) == pwd.getpwnam("nobody").pw_uid
    if os.stat("/dev/net/tun").st_mode & 0o006 == 0o006:
        assert lines[1] == "made"
    net_admin = f"{1 << 12:016x}"
    assert f"CapEff:\t{net_admin}" in done.stdout
    assert f"CapAmb:\t{net_admin}" in done.stdout and f"CapEff:\t{net_admin}" in done.stdout


def test_the_tun_unit_gives_what_the_mode_needs() -> None:
    unit = pathlib.Path(__file__).parents[1] / "deploy" / "systemd" / "geneve-appliance-tun.service"
    text = unit.read_text()
    for line in ("Environment=GENEVE_TUN=1", "Environment=GENEVE_WORKERS=1",
                 "AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN",
                 "CapabilityBoundingSet=CAP_NET_RAW CAP_NET_ADMIN",
                 "DeviceAllow=/dev/net/tun rw", "ProtectKernelTunables=no"):  # fmt: skip
        assert line in text.splitlines(), line


# -- the daemon's flags -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--tun", "--no-flows"], "--tun cannot go with --no-flows"),
        (["--tun", "--workers", "2"], "--tun takes one worker"),
        (["--tun-destroy-hook", "x"], "need --tun"),
        (["--tun", "--tun-idle-timeout", "0"], "positive number of seconds"),
    ],
)
def test_tun_flags_refused_in_one_line(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from geneve import appliance

    assert appliance.main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err


def test_tun_flags_and_their_environment_reach_the_appliance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from geneve import appliance

    made: dict[str, object] = {}

    class Made(Exception):
        pass

    def record(modifier: object, **kwargs: object) -> None:
        made.update(kwargs)
        raise Made

    monkeypatch.setattr(appliance, "Appliance", record)
    monkeypatch.setenv("GENEVE_TUN", "yes")
    monkeypatch.setenv("GENEVE_TUN_DESTROY_HOOK", "/etc/geneve/down.sh")
    with pytest.raises(Made):
        appliance.main(["--tun-create-hook", "/etc/geneve/up.sh", "--tun-idle-timeout", "30"])
    assert {k: v for k, v in made.items() if k.startswith("tun")} == {
        "tun": True,
        "tun_create_hook": "/etc/geneve/up.sh",
        "tun_destroy_hook": "/etc/geneve/down.sh",
        "tun_idle_timeout": 30.0,
    }


# -- the emulator's allowance for routed replies ----------------------------------------------


def test_one_hop_back_undoes_a_routers_decrement() -> None:
    from geneve._emulator.checker import checksum, one_hop_back

    def with_checksum(header: bytearray) -> bytearray:
        header[10:12] = b"\0\0"
        struct.pack_into("!H", header, 10, checksum(header[:20]))
        return header

    for src, dst in (("10.0.0.1", "10.0.0.2"), ("2001:db8::1", "2001:db8::2")):
        sent = bytearray(inner_of(flow_frame(src, dst, "udp", 1, 2)))
        routed = bytearray(sent)
        if ":" not in src:
            sent = with_checksum(sent)
            routed[8] -= 1
            routed = with_checksum(routed)
        else:
            routed[7] -= 1
        assert one_hop_back(routed) == bytes(sent)
    assert one_hop_back(b"\x45" + bytes(7) + b"\xff" + bytes(11)) is None  # TTL 255
    assert one_hop_back(b"not ip") is None


# -- hooks ------------------------------------------------------------------------------------


def test_hooks_run_in_order_off_the_callers_thread(tmp_path: pathlib.Path) -> None:
    record = tmp_path / "hooks.log"
    script = tmp_path / "hook.sh"
    script.write_text(f'#!/bin/sh\n[ "$1" = CREATE ] && sleep 0.5\necho "$@" >> {record}\n'
                      '[ "$1" = CREATE ]\n')  # fmt: skip  # DESTROY fails: exit status 1
    script.chmod(0o755)
    hooks = _tun.Hooks()
    done: list[str] = []
    began = time.monotonic()
    hooks.call(str(script), "CREATE", "gwi-x", "gwo-x", "0" * 17,
               then=lambda: done.append("create"))  # fmt: skip
    hooks.call(str(script), "DESTROY", "gwi-x", "gwo-x", "0" * 17)
    assert time.monotonic() - began < 0.2  # queued, not run here: a slow hook stalls nothing
    hooks.close()
    assert done == ["create"] and hooks.done == 2 and hooks.failures == 1
    assert record.read_text().splitlines() == [
        "CREATE gwi-x gwo-x 00000000000000000",
        "DESTROY gwi-x gwo-x 00000000000000000",
    ]
