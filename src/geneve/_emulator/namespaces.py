"""The Linux plumbing: network namespaces, veth pairs, setns, tun, sysctl, ethtool, processes.

The one implementation for the emulator, the tests (tests/support/netns.py) and the benchmark
(benchmarks/appliance.py); each keeps its own topology. A thread that calls setns(2) moves only
itself; a socket or tun device it opens stays in that namespace for its whole life, whichever
thread uses it later.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar


class EmulatorError(Exception):
    """The emulator could not build, run or tear down its environment."""


T = TypeVar("T")


_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_SIOCETHTOOL = 0x8946
_ETHTOOL_GTXCSUM = 0x16
_ETHTOOL_STXCSUM = 0x17

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def netns(name: str) -> Iterator[None]:
    """Run the block with this thread in network namespace ``name``.

    Only the calling thread moves (network namespaces are per thread), and it moves back
    afterwards. Sockets and tun devices opened inside stay in ``name`` for their lifetime, and
    ``/proc/sys/net`` shows ``name``'s settings.
    """
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(home)
        raise
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a new thread inside namespace ``name``; return its result or raise its error.

    The caller's thread never moves. Threads that ``fn`` starts stay in ``name`` (a new thread
    starts in its creator's namespace), which is how an in-process appliance runs inside one.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            with netns(name):
                result.append(fn())
        except BaseException as err:
            error.append(err)

    thread = threading.Thread(target=target, name=f"in-netns-{name}")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def socket_in(name: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket of namespace ``name`` (it stays there, whichever thread uses it)."""
    with netns(name):
        return socket.socket(family, kind, proto)


def sysctl(path: str, value: str | int) -> None:
    """Write ``/proc/sys/<path>`` in the current thread's namespace."""
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(f"{value}\n")


def ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise EmulatorError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")


def veth(ns: str, name: str, peer_ns: str, peer_name: str, *, mtu: int | None = None) -> None:
    """A veth pair: ``name`` in namespace ``ns``, ``peer_name`` in ``peer_ns``.

    Both ends are created directly in their namespaces, so their names never clash with another
    run's (or the host's). They start down and without addresses.
    """
    m = ("mtu", str(mtu)) if mtu else ()
    ip("-n", ns, "link", "add", name, *m, "type", "veth", "peer", "name", peer_name, *m,
       "netns", peer_ns)  # fmt: skip


def delete(name: str) -> str | None:
    """``ip netns del name``: None once it is gone (or never was), else why not."""
    proc = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True, check=False)
    if proc.returncode and os.path.lexists(f"/run/netns/{name}"):
        return proc.stderr.strip() or f"exit status {proc.returncode}"
    return None


class Namespaces:
    """Network namespaces created by one owner and deleted together, also after a failure.

    Each name is recorded before ``ip netns add`` runs, so a signal (KeyboardInterrupt) while
    or right after it runs cannot orphan the namespace; :meth:`delete` is idempotent and safe
    after a partial set-up. As a context manager it deletes on exit, whatever happened.
    """

    def __init__(self) -> None:
        self.names: list[str] = []

    def add(self, name: str) -> str:
        self.names.append(name)
        ip("netns", "add", name)
        return name

    def delete(self, warn: Callable[[str], None] | None = None) -> list[str]:
        """Delete every namespace added; returns the problems (``name: reason``).

        With ``warn``: a namespace in which processes still run (not ours: the caller stopped
        its own) is deleted all the same, and ``warn`` says which pids were left running.
        """
        problems = []
        while self.names:
            name = self.names.pop(0)
            leftover = leftover_pids(name) if warn is not None else []
            reason = delete(name)
            if reason is not None:
                problems.append(f"{name}: {reason}")
            elif leftover and warn is not None:
                warn(f"deleted {name}, but pids {leftover} still run in it")
        return problems

    def __enter__(self) -> Namespaces:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.delete()


def netns_list() -> list[str]:
    proc = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise EmulatorError(f"ip netns list: {proc.stderr.strip()}")
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def open_tun(name: str) -> int:
    """Create tun ``name`` in the current namespace; it disappears when the fd is closed."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", name.encode(), _IFF_TUN | _IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class _EthtoolValue(ctypes.Structure):
    _fields_ = (("cmd", ctypes.c_uint32), ("data", ctypes.c_uint32))


class _IfReq(ctypes.Structure):
    _fields_ = (
        ("name", ctypes.c_char * 16),
        ("data", ctypes.c_void_p),
        ("pad", ctypes.c_char * 16),
    )


def tx_checksum(ifname: str, enable: bool | None = None) -> bool:
    """Read (and with ``enable`` set) tx checksum offload of ``ifname``: ``ethtool -K tx``.

    Over veth a UDP socket's packet can leave with only the pseudo-header checksum filled in
    (GWLB.md); with tx offload off the kernel completes it before the packet leaves.
    """
    value = _EthtoolValue(
        _ETHTOOL_GTXCSUM if enable is None else _ETHTOOL_STXCSUM, int(bool(enable))
    )
    req = _IfReq(ifname.encode(), ctypes.cast(ctypes.pointer(value), ctypes.c_void_p))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, req)
        if enable is not None:
            value.cmd, value.data = _ETHTOOL_GTXCSUM, 0
            fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, req)
    return bool(value.data)


def die_with_parent() -> None:
    """preexec_fn: a child gets SIGTERM if the emulator dies, even by SIGKILL."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: it is dead, only not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def leftover_pids(name: str) -> list[int]:
    proc = subprocess.run(
        ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
    )
    return [int(p) for p in proc.stdout.split() if p.isdigit()]
