"""The reference example rules of the original GWLB blog appliance.

- Inner UDP with source or destination port 3000: a payload containing ``drop me`` is dropped;
  every ``weakly typed`` becomes ``strongly typed`` (2 bytes longer each time).
- ICMP echo request or reply whose sequence number is a multiple of 5 is dropped, so ``ping``
  loses 5, 10, 15... (the original read bytes 6-7 of every ICMP message; restricting it to
  echo keeps unrelated ICMP errors flowing). ICMPv6 echo over inner IPv6 counts as well: a
  ``ping -6`` loses the same sequence numbers.
- Everything else is forwarded unchanged.

``python -m geneve.appliance`` and ``python -m geneve.replay`` use :data:`modifier` by default.
"""

from __future__ import annotations

from . import chain, drop_if_contains, icmp_echo_every, replace, udp_port, when

__all__ = ["DEMO_PORT", "modifier"]

DEMO_PORT = 3000

modifier = chain(
    when(
        udp_port(DEMO_PORT),
        drop_if_contains(b"drop me"),
        replace(b"weakly typed", b"strongly typed"),
    ),
    icmp_echo_every(5),
)
