"""A local GWLB emulator: network namespaces, a tun device and a strict Geneve peer.

Strategy. The gwlb namespace routes every packet that arrives from the client for the server
(and back) into a tun device, by policy routing on the incoming interface. The data plane, a
thread of this process whose tun and sockets were opened inside the gwlb namespace (``setns``),
reads each inner packet, wraps it as GWLB does (outer IPv4 | UDP to 6081 | Geneve with the
three AWS options) and sends it to the appliance. It captures what comes back on the appliance
link with a packet socket, checks each reply as strictly as GWLB expects and writes the inner
packet back into the tun, from where the kernel routes it on to its destination.

The parts, lowest first:

- ``namespaces``: the Linux plumbing (namespaces, veth, setns, tun, sysctl, ethtool), shared
  with the tests and the benchmarks;
- ``checker``: encapsulation and the independent reply checker (no code of the codec);
- ``flows``: each flow's cookie and source port, and the requests awaiting a reply;
- ``topology``: namespace names, interfaces, addresses and options (``EmulatorConfig``);
- ``dataplane``: the thread that moves packets between the tun and the appliance;
- ``emulator``: ``Emulator``, which builds it all, runs processes inside and tears down;
- ``console``: the blog demo, the long-running mode and the summary text.
"""

from __future__ import annotations

from .checker import Expected, check_inner, check_reply, encapsulate, flow_key, geneve_header
from .console import Check, DemoResult, format_summary, run_demo
from .dataplane import DataPlane
from .emulator import Emulator
from .namespaces import EmulatorError, netns, netns_list
from .topology import NETNS_PREFIX, Addressing, EmulatorConfig, Names, cleanup

__all__ = [
    "NETNS_PREFIX",
    "Addressing",
    "Check",
    "DataPlane",
    "DemoResult",
    "Emulator",
    "EmulatorConfig",
    "EmulatorError",
    "Expected",
    "Names",
    "check_inner",
    "check_reply",
    "cleanup",
    "encapsulate",
    "flow_key",
    "format_summary",
    "geneve_header",
    "netns",
    "netns_list",
    "run_demo",
]
