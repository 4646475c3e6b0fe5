"""The channel between a running daemon and the new copy of itself it hands over to (SIGUSR2).

A Unix stream socket pair: the old process keeps one end and starts the new copy with the
other, named by ``GENEVE_HANDOVER_FD``. Messages are a length (8 bytes, big-endian) and a
pickle; the first one carries the open sockets as ``SCM_RIGHTS`` ancillary data, so the new
copy gets the very same sockets (their queues, the ``SO_REUSEPORT`` group and its BPF program
go on), as a file descriptor passed between processes does. Both ends are processes of the same
daemon, started by it: nothing else can write to the channel.

The exchange (docs/appliance.md, "Upgrade"):

1. old -> new: ``sockets`` (the configuration they were opened with), then the descriptors
   (``fds`` messages of at most 250: the kernel's limit per message);
2. new -> old: ``ready`` (code and rules loaded, the same configuration) or ``refused``;
3. old: every worker finishes its batch, stops reading and hands its flows over;
   old -> new: ``flows`` (one hand-over per worker);
4. new: its workers take the flows and read the sockets; it tells the service manager its PID;
   new -> old: ``running``; the old workers retire (no flow ends) and the old process exits.

A failure before 3 leaves the old process as it was; after 3, its workers resume.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
from typing import Any

__all__ = ["HANDOVER_ENV", "Channel", "HandoverError"]

#: The environment variable that names the new copy's end of the channel.
HANDOVER_ENV = "GENEVE_HANDOVER_FD"
#: Descriptors per message: Linux takes at most 253 (SCM_MAX_FD) in one.
FDS_PER_MESSAGE = 250
MAX_FDS = FDS_PER_MESSAGE
_LENGTH = struct.Struct("!Q")


class HandoverError(Exception):
    """The other side went away, answered late or said something unexpected: one line."""


class Channel:
    """One end of the handover channel: whole messages, with descriptors on the first."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        sock.settimeout(timeout)

    @classmethod
    def from_fd(cls, fd: int, timeout: float) -> Channel:
        return cls(socket.socket(fileno=fd), timeout)

    def send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        header = _LENGTH.pack(len(data))
        try:
            if fds:
                socket.send_fds(self.sock, [header], fds)
                self.sock.sendall(data)
            else:
                self.sock.sendall(header + data)
        except OSError as err:
            raise HandoverError(f"cannot send to the other process: {err}") from None

    def send_fds(self, fds: list[int]) -> None:
        """Descriptors, as many messages as the kernel's limit per message needs."""
        for at in range(0, len(fds), FDS_PER_MESSAGE):
            self.send({"type": "fds"}, fds[at : at + FDS_PER_MESSAGE])

    def receive_fds(self, count: int) -> list[int]:
        """``count`` descriptors sent with :meth:`send_fds`."""
        fds: list[int] = []
        while len(fds) < count:
            message, got = self.receive()
            fds += got
            if message["type"] != "fds" or not got:
                for fd in fds:
                    os.close(fd)
                raise HandoverError("the other process sent fewer descriptors than it said")
        return fds

    def receive(self, timeout: float | None = None) -> tuple[dict[str, Any], list[int]]:
        """The next message and the descriptors that came with it (to close when unused)."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            head, fds, _flags, _address = socket.recv_fds(self.sock, _LENGTH.size, MAX_FDS)
            if not head:
                raise HandoverError("the other process went away")
            data = self._exactly(_LENGTH.size - len(head), head)
            (size,) = _LENGTH.unpack(data)
            body = self._exactly(size, b"")
        except TimeoutError:
            raise HandoverError("the other process did not answer in time") from None
        except OSError as err:
            raise HandoverError(f"cannot read from the other process: {err}") from None
        message = pickle.loads(body)
        if not isinstance(message, dict) or "type" not in message:
            raise HandoverError("the other process sent something unexpected")
        return message, list(fds)

    def _exactly(self, size: int, start: bytes) -> bytes:
        chunks = [start]
        missing = size
        while missing > 0:
            chunk = self.sock.recv(min(missing, 1 << 20))
            if not chunk:
                raise HandoverError("the other process went away")
            chunks.append(chunk)
            missing -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self.sock.close()
