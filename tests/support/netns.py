"""Test helper: throwaway network namespaces, and sockets opened inside them.

A thread that calls setns(2) moves only itself; a socket it opens stays in that namespace for
its whole life, whichever thread uses it later. So tests open their sockets (and can start an
in-process Appliance) inside a namespace without leaving the test process's own.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_counter = itertools.count()


def netns_unavailable() -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2's ip command"
    probe = f"gnvt-probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"ip netns add failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def run(*args: str) -> str:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a fresh thread that has entered namespace ``name``; return its result."""
    box: dict[str, object] = {}

    def target() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                box["error"] = OSError(ctypes.get_errno(), "setns failed")
                return
        finally:
            os.close(fd)
        try:
            box["value"] = fn()
        except BaseException as err:
            box["error"] = err

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


class Pair:
    """Two namespaces joined by a veth: ``gw`` (GWLB side) and ``ap`` (the appliance)."""

    def __init__(self) -> None:
        tag = f"{os.getpid()}-{next(_counter)}"
        self.gw = f"gnvt-{tag}-gw"
        self.ap = f"gnvt-{tag}-ap"
        self.gw_addr = "10.201.0.1"
        self.ap_addr = "10.201.0.2"

    def up(self) -> None:
        run("ip", "netns", "add", self.gw)
        run("ip", "netns", "add", self.ap)
        run("ip", "link", "add", "gnvt-veth0", "netns", self.gw, "type", "veth",
            "peer", "name", "gnvt-veth1", "netns", self.ap)  # fmt: skip
        for ns, dev, addr in ((self.gw, "gnvt-veth0", self.gw_addr),
                              (self.ap, "gnvt-veth1", self.ap_addr)):  # fmt: skip
            run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")

    def down(self) -> None:
        for ns in (self.gw, self.ap):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def gw_socket(self, family: int, kind: int, proto: int = 0) -> socket.socket:
        return in_netns(self.gw, lambda: socket.socket(family, kind, proto))

    def snmp(self, ns: str) -> dict[str, dict[str, int]]:
        """The /proc/net/snmp tables of a namespace, as {"Icmp": {"OutDestUnreachs": n}}."""
        text = run("ip", "netns", "exec", ns, "cat", "/proc/net/snmp")
        lines = text.splitlines()
        tables: dict[str, dict[str, int]] = {}
        for head, values in zip(lines[::2], lines[1::2], strict=False):
            name, keys = head.split(":", 1)
            _, vals = values.split(":", 1)
            tables[name] = dict(zip(keys.split(), (int(v) for v in vals.split()), strict=True))
        return tables


@contextlib.contextmanager
def pair() -> Iterator[Pair]:
    p = Pair()
    try:
        p.up()
        yield p
    finally:
        p.down()
