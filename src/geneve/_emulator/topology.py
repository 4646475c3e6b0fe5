"""What the emulated GWLB looks like: namespace names, interfaces, addresses, options.

Topology (one set of namespaces per emulator; the names carry the pid and a counter, so
parallel runs never clash)::

    client 10.200.1.2 ──veth── gwlb ──veth── server 10.200.2.2
                                │  tun: client<->server traffic, by incoming interface
                                └──veth── appliance 10.200.3.2 (the appliance under test)
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
from dataclasses import dataclass, field
from typing import Literal

from .namespaces import delete, netns_list, pid_alive

#: Every namespace this module creates is named ``geneve-emu-<pid>-<n>-<role>``.
NETNS_PREFIX = "geneve-emu"
ROLES = ("client", "gwlb", "server", "appliance")
Role = Literal["client", "gwlb", "server", "appliance"]
_NAME_RE = re.compile(rf"^{NETNS_PREFIX}-(\d+)-(\d+)-(client|gwlb|server|appliance)$")

# Interface names (each namespace has its own, so they never clash between runs).
TUN_NAME = "gwlb-tun"
GWLB_TO = {"client": "to-client", "server": "to-server", "appliance": "to-appliance"}
PEER_IFNAME = "eth0"
#: The routing table the gwlb namespace diverts client<->server traffic into.
DIVERT_TABLE = 100


@dataclass(frozen=True)
class Addressing:
    """Addresses of the topology. Namespaces are private, so every run may use the same ones."""

    client: str = "10.200.1.2"
    client_gateway: str = "10.200.1.1"
    server: str = "10.200.2.2"
    server_gateway: str = "10.200.2.1"
    appliance: str = "10.200.3.2"
    gwlb: str = "10.200.3.1"  # the GWLB node address the appliance sees and replies to
    prefix_length: int = 24
    client6: str = "fd00:200:1::2"
    client6_gateway: str = "fd00:200:1::1"
    server6: str = "fd00:200:2::2"
    server6_gateway: str = "fd00:200:2::1"
    prefix6_length: int = 64

    def network(self, address: str) -> str:
        plen = self.prefix6_length if ":" in address else self.prefix_length
        return str(ipaddress.ip_interface(f"{address}/{plen}").network)


@dataclass(frozen=True)
class EmulatorConfig:
    """What the emulated GWLB looks like to the appliance."""

    addressing: Addressing = field(default_factory=Addressing)
    endpoint_id: int = 0x0E1B2C3D4E5F6071  # GWLB endpoint (VPC endpoint ENI) id, option type 1
    attachment_id: int = 0x0A77AC4ED00D0001  # attachment id, option type 2
    #: GWLB's outer UDP checksum is often 0; True sends a correct one, which an appliance that
    #: edits packets must then fix or zero.
    outer_udp_checksum: bool = False
    inner_mtu: int = 1500  # client, server and tun links (GWLB carries up to 8500)
    appliance_mtu: int = 9001  # the appliance link: inner + 68 bytes must fit
    ipv6: bool = True
    seed: int | None = None  # flow cookies and source ports; None: random
    #: GWLB's idle timeouts (GWLB.md, "Flows and failure"): TCP 350 s by default, other
    #: protocols 120 s. Short ones let tests see a flow expire.
    tcp_idle_timeout: float = 350.0
    other_idle_timeout: float = 120.0
    #: Each direction of a flow on its own outer UDP source port (whether GWLB does this is
    #: undocumented: an appliance must work either way).
    per_direction_ports: bool = False


class Names:
    """The namespace names of one emulator: ``geneve-emu-<pid>-<n>-<role>``."""

    _counter = itertools.count()

    def __init__(self, pid: int | None = None, index: int | None = None) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.index = next(self._counter) if index is None else index
        self.base = f"{NETNS_PREFIX}-{self.pid}-{self.index}"

    def __getitem__(self, role: Role) -> str:
        return f"{self.base}-{role}"

    @property
    def client(self) -> str:
        return self["client"]

    @property
    def gwlb(self) -> str:
        return self["gwlb"]

    @property
    def server(self) -> str:
        return self["server"]

    @property
    def appliance(self) -> str:
        return self["appliance"]

    def all(self) -> list[str]:
        return [f"{self.base}-{role}" for role in ROLES]


def cleanup(*, everything: bool = False) -> list[str]:
    """Delete namespaces left by emulators that died; returns the names deleted.

    A namespace counts as stale when the pid in its name is no longer running;
    ``everything=True`` deletes every ``geneve-emu-*`` namespace, also of live runs.
    """
    removed = []
    for name in netns_list():
        m = _NAME_RE.match(name)
        if m is None or (not everything and pid_alive(int(m.group(1)))):
            continue
        delete(name)
        removed.append(name)
    return removed
