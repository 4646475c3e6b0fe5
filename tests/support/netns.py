"""Namespace pairs for the live appliance tests: ``gw`` (the GWLB side) and ``ap`` (the appliance).

The plumbing is the emulator's (``geneve._emulator.namespaces``); only the topology is ours: two
namespaces joined by one veth. Sockets opened inside a namespace stay there, so tests use them
(and can start an in-process Appliance inside one) without leaving the test process's own.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
from collections.abc import Iterator

from geneve._emulator.namespaces import (
    EmulatorError,
    Namespaces,
    in_netns,
    ip,
    netns,
    socket_in,
    veth,
)

__all__ = ["Pair", "in_netns", "ip", "netns_unavailable", "pair"]

_counter = itertools.count()


def netns_unavailable(*, tun: bool = False) -> str | None:
    """Why namespace tests cannot run here (``tun``: with a tun device), or None when they can."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2's ip command"
    if tun and not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    try:
        with Namespaces() as probe:
            probe.add(f"gnvt-probe-{os.getpid()}")
    except EmulatorError as err:
        return str(err)
    return None


class Pair:
    """Two namespaces joined by a veth: ``gw`` (GWLB side) and ``ap`` (the appliance)."""

    def __init__(self) -> None:
        tag = f"{os.getpid()}-{next(_counter)}"
        self.gw = f"gnvt-{tag}-gw"
        self.ap = f"gnvt-{tag}-ap"
        self.gw_addr = "10.201.0.1"
        self.ap_addr = "10.201.0.2"
        self.namespaces = Namespaces()

    def up(self) -> None:
        self.namespaces.add(self.gw)
        self.namespaces.add(self.ap)
        veth(self.gw, "gnvt-veth0", self.ap, "gnvt-veth1")
        for ns, dev, addr in ((self.gw, "gnvt-veth0", self.gw_addr),
                              (self.ap, "gnvt-veth1", self.ap_addr)):  # fmt: skip
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")

    def down(self) -> None:
        self.namespaces.delete()

    def gw_socket(self, family: int, kind: int, proto: int = 0) -> socket.socket:
        return socket_in(self.gw, family, kind, proto)

    def snmp(self, ns: str) -> dict[str, dict[str, int]]:
        """The /proc/net/snmp tables of a namespace, as {"Icmp": {"OutDestUnreachs": n}}."""
        with netns(ns), open("/proc/thread-self/net/snmp") as f:
            lines = f.read().splitlines()
        tables: dict[str, dict[str, int]] = {}
        for head, values in zip(lines[::2], lines[1::2], strict=False):
            name, keys = head.split(":", 1)
            _, vals = values.split(":", 1)
            tables[name] = dict(zip(keys.split(), (int(v) for v in vals.split()), strict=True))
        return tables


@contextlib.contextmanager
def pair() -> Iterator[Pair]:
    """A :class:`Pair`, up for the block and deleted after it (also after a failed set-up)."""
    p = Pair()
    try:
        p.up()
        yield p
    finally:
        p.down()
