"""Telling a service manager how the daemon is doing: systemd's notify protocol.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET``, a Unix datagram socket (a path, or an
abstract name written with a leading ``@``); the daemon sends it newline-separated
``KEY=VALUE`` lines: ``READY=1`` once it serves, ``RELOADING=1`` then ``READY=1`` around a
reload, ``STOPPING=1`` when it stops, ``STATUS=...`` for ``systemctl status``. Without the
variable (not under systemd) nothing is sent. A send that fails is logged once and ignored:
the data path never depends on the service manager.
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["notify"]

log = logging.getLogger("geneve.appliance")
_warned = False


def notify(*lines: str) -> bool:
    """Send ``lines`` (``"READY=1"``, ``"STATUS=..."``) to ``$NOTIFY_SOCKET``; whether sent."""
    global _warned
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto("\n".join(lines).encode(), address)
    except OSError as err:
        if not _warned:
            _warned = True
            log.warning("cannot notify the service manager at %s: %s", address, err)
        return False
    return True
