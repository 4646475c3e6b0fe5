"""geneve: a zero-copy Geneve codec and toolkit for AWS Gateway Load Balancer appliances.

Layers, lowest first; nothing imports a layer above it:

- the codec (sans-I/O): :mod:`geneve.checksum`, header views, :class:`Packet`, errors;
- the pipeline: :class:`Pipeline` and :func:`process` (parse, modifier, verdict, reply) and
  :mod:`geneve.rules`;
- the appliance: :class:`Appliance` (sockets, workers, signals, health);
- entry points: ``python -m geneve.appliance``, ``python -m geneve.replay``, the emulator.
"""

from __future__ import annotations

from ._appliance import Appliance, ApplianceError  # the I/O layer: builds on all the rest
from ._errors import (
    FragmentError,
    GeneveError,
    MalformedError,
    NotGeneveError,
    PacketTooLargeError,
    TruncatedError,
    UnsupportedError,
)
from ._headers import (
    ETH_P_IPV4,
    ETH_P_IPV6,
    ETH_P_TEB,
    GENEVE_PORT,
    GWLB_OPTION_CLASS,
    GWLB_OPTION_CLASSES,
    ICMP,
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
    ErrorPolicy,
    Interest,
    Modifier,
    Pipeline,
    Stats,
    Verdict,
    declare_interest,
    interest_of,
    process,
)

__version__ = "0.1.0"

__all__ = [
    "ALL_PACKETS",
    "ETH_P_IPV4",
    "ETH_P_IPV6",
    "ETH_P_TEB",
    "GENEVE_PORT",
    "GWLB_OPTION_CLASS",
    "GWLB_OPTION_CLASSES",
    "ICMP",
    "MAX_FRAME_LENGTH",
    "MAX_INNER_LENGTH",
    "TCP",
    "UDP",
    "Appliance",
    "ApplianceError",
    "ErrorPolicy",
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
    "ReceiveBuffer",
    "Stats",
    "TruncatedError",
    "UnsupportedError",
    "Verdict",
    "build_frame",
    "declare_interest",
    "interest_of",
    "process",
]
