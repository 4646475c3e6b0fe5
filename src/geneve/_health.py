"""The health endpoint: a small HTTP/1.1 server on its own thread, never in the packet path.

GWLB health checks are HTTP, HTTPS or TCP. An endpoint that answers HTTP also passes a TCP
check (the connect succeeds). Requests are read with a deadline and a size limit on
non-blocking sockets under one selector, so a slow, idle or oversized client cannot stall the
answers to real checks. Every answer closes the connection.
"""

from __future__ import annotations

import contextlib
import json
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["HealthReport", "HealthServer"]

log = logging.getLogger("geneve.health")

#: Longest request head accepted (request line + headers); beyond it: 431.
MAX_REQUEST_BYTES = 8192
#: A client must send its whole request head within this many seconds.
REQUEST_DEADLINE = 2.0
#: Connections held at once; past it the oldest is closed (GWLB's checks reconnect each time).
MAX_CONNECTIONS = 256


@dataclass
class HealthReport:
    """What the appliance says about itself at one moment."""

    healthy: bool
    body: dict[str, object]
    metrics: str


@dataclass
class _Conn:
    sock: socket.socket
    started: float
    data: bytearray
    out: bytes = b""


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def _response(status: int, body: bytes, content_type: str, head_only: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    if status == 405:
        lines.append("Allow: GET, HEAD")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head if head_only else head + body


def _error(status: int, message: str) -> bytes:
    return _response(status, (message + "\n").encode(), "text/plain; charset=utf-8", False)


class HealthServer:
    """Serves ``report()`` over HTTP on ``host:port`` until :meth:`stop`."""

    def __init__(
        self,
        host: str,
        port: int,
        report: Callable[[], HealthReport],
        listener: socket.socket | None = None,
    ) -> None:
        """``listener``: a listening socket to serve on instead of one bound here (an
        upgrade's new process gets the old one's)."""
        self.report = report
        if listener is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            listener = socket.socket(family, socket.SOCK_STREAM)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((host, port))
                listener.listen(128)
            except OSError:
                listener.close()
                raise
        self.listener = listener
        self.listener.setblocking(False)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self._selector = selectors.DefaultSelector()
        self._conns: dict[int, _Conn] = {}
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, name="geneve-health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=1.0)
        for conn in list(self._conns.values()):
            conn.sock.close()
        self._conns.clear()
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()
        self._selector.close()

    # -- the loop ----------------------------------------------------------------------------

    def _serve(self) -> None:
        sel = self._selector
        sel.register(self.listener, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        while not self._stopping.is_set():
            try:
                events = sel.select(timeout=0.25)
            except OSError:  # pragma: no cover - the selector itself failing
                log.exception("health selector failed")
                return
            for key, mask in events:
                sock = key.fileobj
                if sock is self.listener:
                    self._accept()
                elif sock is self._wake_r:
                    continue
                else:
                    assert isinstance(sock, socket.socket)
                    conn = self._conns.get(sock.fileno())
                    if conn is None:
                        continue
                    try:
                        if mask & selectors.EVENT_READ and not conn.out:
                            self._read(conn)
                        elif mask & selectors.EVENT_WRITE:
                            self._write(conn)
                    except Exception:  # one client must not take the endpoint down
                        log.debug("health connection failed", exc_info=True)
                        self._close(conn)
            self._expire()

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # EMFILE and friends: keep serving those we have
                log.warning("health endpoint cannot accept: %s", err)
                return
            sock.setblocking(False)
            if len(self._conns) >= MAX_CONNECTIONS:
                oldest = min(self._conns.values(), key=lambda c: c.started)
                self._close(oldest)
            conn = _Conn(sock, time.monotonic(), bytearray())
            self._conns[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, None)

    def _read(self, conn: _Conn) -> None:
        try:
            chunk = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not chunk:
            self._close(conn)
            return
        conn.data += chunk
        end = conn.data.find(b"\r\n\r\n")
        if end < 0:
            end = conn.data.find(b"\n\n")
        if end < 0:
            if not conn.data[:1].isalpha():  # a request line starts with a method name
                self._reply(conn, _error(400, "not an HTTP request"))
            elif len(conn.data) > MAX_REQUEST_BYTES:
                self._reply(conn, _error(431, "request head too large"))
            return
        if end > MAX_REQUEST_BYTES:
            self._reply(conn, _error(431, "request head too large"))
            return
        self._reply(conn, self._answer(bytes(conn.data[:end])))

    def _answer(self, head: bytes) -> bytes:
        try:
            request_line = head.split(b"\n", 1)[0].rstrip(b"\r").decode("ascii")
            method, target, version = request_line.split(" ")
        except (UnicodeDecodeError, ValueError):
            return _error(400, "malformed request line")
        if not version.startswith("HTTP/1.") or not target.startswith("/"):
            return _error(400, "malformed request line")
        if method not in ("GET", "HEAD"):
            return _error(405, "only GET and HEAD")
        head_only = method == "HEAD"
        report = self.report()
        status = 200 if report.healthy else 503
        path = target.split("?", 1)[0]
        if path == "/metrics":
            return _response(
                200, report.metrics.encode(), "text/plain; version=0.0.4; charset=utf-8", head_only
            )
        body = (json.dumps(report.body, sort_keys=True) + "\n").encode()
        return _response(status, body, "application/json", head_only)

    def _reply(self, conn: _Conn, data: bytes) -> None:
        conn.out = data
        self._selector.modify(conn.sock, selectors.EVENT_WRITE, None)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
            self._close(conn)

    def _expire(self) -> None:
        now = time.monotonic()
        for conn in list(self._conns.values()):
            if now - conn.started > REQUEST_DEADLINE:
                if conn.out or not conn.data:
                    self._close(conn)  # idle, or a reader too slow to take its answer
                else:
                    with contextlib.suppress(OSError):
                        conn.sock.send(_error(408, "request too slow"))
                    self._close(conn)

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd >= 0:
            self._conns.pop(fd, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn.sock)
        conn.sock.close()
