"""geneve: a zero-copy Geneve codec and toolkit for AWS Gateway Load Balancer appliances.

Layers, lowest first; nothing imports a layer above it:

- the codec (sans-I/O): :mod:`geneve.checksum`, header views, :class:`Packet`, errors;
- the pipeline: :class:`Pipeline` and :func:`process` (parse, modifier, verdict, reply) and
  :mod:`geneve.rules`;
- the appliance: :class:`Appliance` (sockets, workers, signals, health);
- entry points: ``python -m geneve.appliance``, ``python -m geneve.replay``, the emulator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._errors import (
    FragmentError,
    GeneveError,
    MalformedError,
    NotGeneveError,
    PacketTooLargeError,
    TruncatedError,
    UnsupportedError,
)
from ._fixup import fix_frame
from ._headers import (
    ETH_P_IPV4,
    ETH_P_IPV6,
    ETH_P_TEB,
    GENEVE_PORT,
    GWLB_OPTION_CLASS,
    GWLB_OPTION_CLASSES,
    ICMP,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    TCP,
    UDP,
    Geneve,
    GeneveOption,
    GwlbMetadata,
    IPv4,
    IPv6,
)
from ._packet import MAX_FRAME_LENGTH, MAX_INNER_LENGTH, Packet, ReceiveBuffer, build_frame
from ._pipeline import (
    ALL_PACKETS,
    Drop,
    ErrorPolicy,
    Flow,
    FlowTable,
    Interest,
    Modifier,
    Pipeline,
    PipelinePacket,
    Stats,
    Verdict,
    count,
    declare_interest,
    interest_of,
    process,
)
from ._reject import reject_frame
from ._stream import STREAM_LIMIT, StreamStart, stream_start

if TYPE_CHECKING:
    from ._appliance import Appliance, ApplianceError

__version__ = "0.1.0"

# The appliance (sockets, workers, signals, the batch C module) loads on first use: a program
# that only parses or edits frames never pays for it.
_LAZY = {"Appliance": "._appliance", "ApplianceError": "._appliance"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'geneve' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once: later reads are plain module attributes
    return value

__all__ = [
    "ALL_PACKETS",
    "ETH_P_IPV4",
    "ETH_P_IPV6",
    "ETH_P_TEB",
    "GENEVE_PORT",
    "GWLB_OPTION_CLASS",
    "GWLB_OPTION_CLASSES",
    "ICMP",
    "IPPROTO_ICMP",
    "IPPROTO_ICMPV6",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "MAX_FRAME_LENGTH",
    "MAX_INNER_LENGTH",
    "STREAM_LIMIT",
    "TCP",
    "UDP",
    "Appliance",
    "ApplianceError",
    "Drop",
    "ErrorPolicy",
    "Flow",
    "FlowTable",
    "FragmentError",
    "Geneve",
    "GeneveError",
    "GeneveOption",
    "GwlbMetadata",
    "IPv4",
    "IPv6",
    "Interest",
    "MalformedError",
    "Modifier",
    "NotGeneveError",
    "Packet",
    "PacketTooLargeError",
    "Pipeline",
    "PipelinePacket",
    "ReceiveBuffer",
    "Stats",
    "StreamStart",
    "TruncatedError",
    "UnsupportedError",
    "Verdict",
    "build_frame",
    "count",
    "declare_interest",
    "fix_frame",
    "interest_of",
    "process",
    "reject_frame",
    "stream_start",
]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
