"""Flow tracking: each flow's cookie and source port, and its requests awaiting a reply."""

from __future__ import annotations

import socket
from collections import OrderedDict
from dataclasses import replace
from typing import Any

from .checker import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Buffer,
    Expected,
    FiveTuple,
    FlowKey,
)

_PROTO_NAMES = {IPPROTO_ICMP: "icmp", IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", 58: "icmpv6"}

#: Requests kept per flow waiting for their reply; older ones count as not returned. Also how
#: many answered replies per flow are remembered to recognise a duplicate, and how many
#: requests pushed out are remembered to pair a late reply with.
MAX_PENDING = 4096


def _identity(inner: Buffer) -> bytes:
    """Bytes that identify a packet even after an appliance edits its payload.

    The source address (an echo reply has its request's id and sequence: the direction tells
    them apart), the IPv4 ID, and for TCP the sequence number, for ICMP the echo identifier and
    sequence. Used to pair an edited reply with its request; UDP over IPv6 has only the source.
    """
    if len(inner) < 28:
        return b""
    if inner[0] >> 4 == 4:
        ihl = (inner[0] & 0x0F) << 2
        ident, proto, l4 = bytes(inner[12:16]) + bytes(inner[4:6]), inner[9], ihl
    else:
        ident, proto, l4 = bytes(inner[8:24]), inner[6], 40
    if proto in (IPPROTO_TCP, IPPROTO_ICMP, IPPROTO_ICMPV6) and len(inner) >= l4 + 8:
        return ident + bytes(inner[l4 + 4 : l4 + 8])
    return ident


def _address(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


class Pending:
    """A flow's requests waiting for their reply, oldest first, and the replies already paired.

    Every lookup is O(1) whatever the backlog: an appliance that drops many packets leaves up
    to MAX_PENDING requests waiting, and each reply must still be paired at line rate. Requests
    are numbered; the indexes by hash of the bytes and by identity hold the numbers, oldest
    first (OrderedDict: its first item is found in O(1) after many deletions, a dict's is not).
    """

    __slots__ = (
        "_answered",
        "_answered_identity",
        "_by_hash",
        "_by_identity",
        "_expired",
        "_next",
        "_requests",
    )

    def __init__(self) -> None:
        self._requests: OrderedDict[int, tuple[bytes, bytes]] = OrderedDict()  # (inner, identity)
        self._by_hash: dict[int, OrderedDict[int, None]] = {}
        self._by_identity: dict[bytes, OrderedDict[int, None]] = {}
        # hash(reply) -> hash(request) of the last MAX_PENDING pairs. Hashes, not the packets,
        # to keep memory small; a false match needs a 64-bit collision with a recent reply.
        self._answered: OrderedDict[int, int] = OrderedDict()
        self._answered_identity: OrderedDict[bytes, None] = OrderedDict()
        self._expired: OrderedDict[int, None] = OrderedDict()  # hash(request) of those pushed out
        self._next = 0

    def __len__(self) -> int:
        return len(self._requests)

    def add(self, inner: bytes) -> None:
        if len(self._requests) >= MAX_PENDING:
            self._expired[hash(self._remove(next(iter(self._requests))))] = None
            if len(self._expired) > MAX_PENDING:
                self._expired.popitem(last=False)
        n = self._next
        self._next += 1
        identity = _identity(inner)
        self._requests[n] = (inner, identity)
        self._by_hash.setdefault(hash(inner), OrderedDict())[n] = None
        self._by_identity.setdefault(identity, OrderedDict())[n] = None

    def take(self, inner: bytes) -> bool:
        """Forget the oldest request with exactly these bytes; False if none waits."""
        for n in self._by_hash.get(hash(inner), ()):
            if self._requests[n][0] == inner:  # nearly always the first: hashes seldom collide
                self._remove(n)
                return True
        return False

    def quoted(self, quote: Buffer) -> bool:
        """Whether a waiting request starts with ``quote`` (what an ICMP error quotes of it).

        A linear search, newest first: only a refusal an appliance injects needs it.
        """
        return any(request.startswith(quote) for request, _ in reversed(self._requests.values()))

    def requests(self) -> list[bytes]:
        """The requests waiting, newest first (for a refusal an appliance injects)."""
        return [request for request, _ in reversed(self._requests.values())]

    def take_late(self, inner: bytes) -> bool:
        """Whether these are the bytes of a request pushed out by newer ones; forget it if so.

        A reply more than MAX_PENDING requests late is still a reply, not an edit of another.
        """
        if hash(inner) not in self._expired:
            return False
        del self._expired[hash(inner)]
        return True

    def repeated(self, reply: bytes) -> bool:
        """Whether ``reply`` repeats one already paired whose request is not waiting again.

        A request sent twice (a retransmission) may be answered twice; a reply sent twice may
        not, and must not take another request's place.
        """
        request = self._answered.get(hash(reply))
        return request is not None and request not in self._by_hash

    def take_edited(self, reply: bytes) -> bytes | None:
        """Forget and return the request an edited ``reply`` answers; None if it answers none.

        By identity (source, IPv4 ID, TCP sequence, ICMP echo id and sequence) if a waiting
        request has the reply's. None if only an answered one had it: a changed copy of a
        reply (say, a flipped IPv6 flow label, which no checksum covers). Else the oldest, for
        an appliance that rewrites the IPv4 ID.
        """
        identity = _identity(reply)
        numbers = self._by_identity.get(identity)
        if numbers:
            n = next(iter(numbers))
        elif identity and identity in self._answered_identity:
            return None
        elif self._requests:
            n = next(iter(self._requests))
        else:
            return None
        return self._remove(n)

    def answered(self, request: bytes, reply: bytes) -> None:
        """Remember a pair (the last MAX_PENDING), to recognise copies of the reply."""
        key, identity = hash(reply), _identity(reply)
        self._answered[key] = hash(request)
        self._answered.move_to_end(key)
        if len(self._answered) > MAX_PENDING:
            self._answered.popitem(last=False)
        self._answered_identity[identity] = None
        self._answered_identity.move_to_end(identity)
        if len(self._answered_identity) > MAX_PENDING:
            self._answered_identity.popitem(last=False)

    def _remove(self, n: int) -> bytes:
        inner, identity = self._requests.pop(n)
        same_bytes = self._by_hash[hash(inner)]
        del same_bytes[n]
        if not same_bytes:
            del self._by_hash[hash(inner)]
        same_identity = self._by_identity[identity]
        del same_identity[n]
        if not same_identity:
            del self._by_identity[identity]
        return inner


class Flow:
    """One flow instance as GWLB sees it: a cookie, and an outer source port per direction.

    GWLB issues a new cookie per flow instance: a 5-tuple reused after its flow idled out or
    ended (TCP FIN both ways, or RST) is a new ``Flow``; the old one is then ``superseded``.
    """

    __slots__ = (
        "directions",
        "expected",
        "expected_reply",
        "expired_dropped",
        "failed",
        "fins",
        "flow_cookie",
        "initiator",
        "injected",
        "key",
        "last_seen",
        "modified",
        "pending",
        "reply_port",
        "returned",
        "rst",
        "sent",
        "source_port",
        "superseded",
    )

    def __init__(
        self,
        key: FlowKey,
        initiator: FiveTuple,
        flow_cookie: int,
        source_port: int,
        expected: Expected,
        reply_port: int | None = None,
        now: float = 0.0,
    ) -> None:
        self.key = key
        self.initiator = initiator  # the first packet's 5-tuple: who spoke first
        self.flow_cookie = flow_cookie
        self.source_port = source_port  # the outer source port of the initiator's direction
        self.reply_port = source_port if reply_port is None else reply_port
        self.expected = expected
        self.expected_reply = replace(expected, source_port=self.reply_port)
        self.sent = self.returned = self.modified = self.failed = self.injected = 0
        self.expired_dropped = 0
        self.pending = Pending()
        # The 5-tuples the emulator sent this flow's packets with (one or both directions).
        self.directions: set[FiveTuple] = {initiator}
        self.last_seen = now
        self.fins: set[bool] = set()  # directions (True: the initiator's) that sent a FIN
        self.rst = False
        self.superseded = False  # a newer instance of the same 5-tuple took its place

    def port_from(self, src: bytes, sport: int) -> int:
        """The outer source port of the direction whose packets come from ``src``:``sport``."""
        original = (src, sport) == (self.initiator[2], self.initiator[3])
        return self.source_port if original else self.reply_port

    def expected_for(self, port: int) -> Expected:
        """What a reply sent on outer source ``port`` must look like (the original's if no
        direction has that port: the check then fails on the port)."""
        return self.expected_reply if port == self.reply_port else self.expected

    def ended(self) -> bool:
        """A TCP flow that saw FIN both ways or a RST: only a SYN starts the 5-tuple again."""
        return self.rst or len(self.fins) == 2

    def describe(self) -> str:
        version, proto, src, sport, dst, dport = self.initiator
        name = _PROTO_NAMES.get(proto, f"proto {proto}")
        a, b = _address(src), _address(dst)
        if version == 6:
            a, b = f"[{a}]", f"[{b}]"
        if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
            return f"{name} {a} <-> {b}" + (f" id {sport}" if sport else "")
        if proto in (IPPROTO_TCP, IPPROTO_UDP):
            return f"{name} {a}:{sport} <-> {b}:{dport}"
        return f"{name} {a} <-> {b}"

    def as_dict(self) -> dict[str, Any]:
        version, proto, src, sport, dst, dport = self.initiator
        return {
            "flow": self.describe(),
            "ip_version": version,
            "protocol": _PROTO_NAMES.get(proto, str(proto)),
            "src": _address(src),
            "src_port": sport,
            "dst": _address(dst),
            "dst_port": dport,
            "flow_cookie": f"0x{self.flow_cookie:08x}",
            "source_port": self.source_port,
            "reply_source_port": self.reply_port,
            "sent": self.sent,
            "returned": self.returned,
            "modified": self.modified,
            "failed": self.failed,
            "injected": self.injected,
            "expired_dropped": self.expired_dropped,
            "not_returned": self.sent - self.returned,
            "superseded": self.superseded,
        }
