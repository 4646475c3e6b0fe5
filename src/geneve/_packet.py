"""A whole GWLB frame over one bytearray: outer IPv4 | UDP | Geneve | inner IP | L4 | payload.

:meth:`Packet.parse` checks the outer IPv4, UDP and Geneve headers and parses the inner IP and
L4 headers, storing offsets in plain slots that a modifier reads as cheaply as a local. The
usual GWLB frame (no IPv4 options, the three GWLB options, UDP in IPv4 inside) is recognised
with one struct unpack and one test, inner headers included; anything else takes a path that
checks one field at a time and names what is wrong. A malformed inner packet does not fail the
parse (the outer headers and GWLB metadata stay readable): its errors are raised by whatever
reads it. Nothing is copied: accessors return offsets, ints, memoryviews or views (see
``_headers``) over the same buffer, and edits write into it.

Edits that change a length (payload replacement) rewrite every length field at once and mark
the packet modified; :meth:`Packet.reply` then fixes every checksum in one call (one crossing
into C, through ``geneve._fixup``) and swaps the outer addresses.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from ._errors import (
    FragmentError,
    GeneveError,
    MalformedError,
    NotGeneveError,
    PacketTooLargeError,
    TruncatedError,
    UnsupportedError,
)
from ._fixup import OUTER_MODES, OuterUdpPolicy, fix_routine, fix_target, raise_fix_error
from ._fixup import fix_checksums as fix_frame_checksums
from ._headers import (
    ETH_P_IPV4,
    ETH_P_IPV6,
    ETH_P_TEB,
    GENEVE_PORT,
    GWLB_OPTION_CLASS,
    ICMP,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV6_EXTENSION_HEADERS,
    TCP,
    UDP,
    Geneve,
    GwlbMetadata,
    IPv4,
    IPv6,
)
from ._layout import GENEVE_OFFSET as GENEVE_AT
from ._layout import GWLB_OPTION_WORDS
from ._layout import INNER_OFFSET as INNER
from .checksum import internet_checksum, ones_complement_sum

__all__ = ["MAX_FRAME_LENGTH", "MAX_INNER_LENGTH", "Packet", "ReceiveBuffer", "build_frame"]

#: GWLB sends inner packets of up to 8500 bytes (AWS GWLB docs, "MTU").
MAX_INNER_LENGTH = 8500
#: outer IPv4 (20) + UDP (8) + Geneve (8) + the three GWLB options (32) = 68 bytes.
GWLB_ENCAP_LENGTH = INNER
#: The largest frame GWLB sends; a receive buffer must hold at least this much.
MAX_FRAME_LENGTH = MAX_INNER_LENGTH + GWLB_ENCAP_LENGTH

_IP4 = struct.Struct("!BxHxxHxB")  # version/IHL, total length, flags/fragment offset, protocol
_UDP = struct.Struct("!HHHH")
_U16 = struct.Struct("!H")
_IP6_LEN_NH = struct.Struct("!HB")
# The option headers of the GWLB layout: class 0x0108 type 1 and 2 with 2 words, type 3 with 1.
_GWLB_OPTS = struct.Struct("!I8xI8xI4x")
_GWLB_OPT_WORDS = GWLB_OPTION_WORDS
_OPT1, _OPT2, _OPT3 = GWLB_OPTION_WORDS
_GWLB_VALUES = struct.Struct("!4xQ4xQ4xI")
_GWLB_IDS = struct.Struct("!IQI8xII").unpack_from  # option words with endpoint id and cookie
# The usual GWLB frame (geneve._layout, which C's fast path follows too), read in one unpack up
# to the inner payload: outer IPv4 without options (_IP4's fields); UDP destination port and
# length; Geneve byte 0 and protocol type; the three option headers; inner IPv4 without options
# (_IP4's fields again) and its UDP length. tests/test_layout.py holds the format to the layout.
_USUAL = struct.Struct("!BxHxxHxB10x" + "2xHH2xBxH4xI8xI8xI4x" + "BxHxxHxB10x4xH2x")
_usual = _USUAL.unpack_from
_new = object.__new__
_SWAP = struct.Struct("!II")
_swap_unpack, _swap_pack = _SWAP.unpack_from, _SWAP.pack_into
_u16 = _U16.pack_into

_IP6_FRAGMENT = 44
_TCP_LENGTH_MESSAGE = (
    "changing a TCP payload's length needs flows (Pipeline(..., flows=True)) to adjust its "
    "sequence numbers"
)

_ETH_VLAN = (0x8100, 0x88A8)


class ReceiveBuffer(bytearray):
    """A fixed-size receive buffer for a loop that parses frame after frame in one place.

    A ``bytearray`` in every way but one: the views of itself that a packet needs, the checksum
    routine's view for :meth:`Packet.reply` and the memoryview that :attr:`Packet.data` slices,
    are made once, here, rather than for every packet (making a C view costs about as much as
    the checksums of a small packet). Those views pin the buffer's size: it cannot be resized,
    and an edit that grows a frame past its end works on a copy (``packet.buf`` is then no
    longer this buffer). ``recv_into`` and ``Packet.parse(buf, n)`` use it in place, like a
    bytearray.

    Parsing a ReceiveBuffer again re-fills the same :class:`Packet` rather than making a new
    one (a packet of another class, a subclass, gets one of its own): a packet parsed from this
    buffer describes its current frame, until the next parse, just as the buffer's bytes do
    until the next receive. Keep a frame beyond that with ``Packet.parse(bytes(packet.data))``.
    """

    __slots__ = ("_packet", "_target", "_view")
    _target: Any  # what the checksum routine takes for this buffer (geneve.checksum)
    _packet: Packet | None
    _view: memoryview

    def __init__(self, size: int = MAX_FRAME_LENGTH) -> None:
        super().__init__(size)
        self._view = memoryview(self)
        self._target = fix_target(self)
        self._packet = None


class Packet:
    """A GWLB frame, parsed in place. Build one with :meth:`parse`.

    The offsets of the inner packet (:attr:`ip_version`, :attr:`ip_offset`, :attr:`ip_end`,
    :attr:`l4_protocol`, :attr:`l4_offset`, :attr:`payload_offset`) are plain attributes, as
    cheap to read as a local variable: a modifier of your own reads them as fast as the bundled
    rules do. Treat them as read-only; the edits keep them right.
    """

    __slots__ = (
        "_inner_error",
        "_usual_layout",
        "buf",
        "inner_offset",
        "ip_end",
        "ip_offset",
        "ip_version",
        "l4_offset",
        "l4_protocol",
        "length",
        "max_inner_length",
        "modified",
        "payload_offset",
        "udp_offset",
    )

    buf: bytearray
    length: int  # bytes of the frame (the outer IPv4 total length)
    udp_offset: int
    inner_offset: int  # first byte after the Geneve header and its options
    # Longest inner packet an edit may produce (bytes after the Geneve header). parse() sets
    # no limit beyond IPv4's own; the pipeline sets its configured one (GWLB's 8500).
    max_inner_length: int
    modified: bool  # set by every edit; reply() fixes the checksums when it is true
    #: 4 or 6; 0 when the inner packet is not IP (ARP, an unknown protocol type).
    ip_version: int
    #: Where the inner IPv4/IPv6 header starts; -1 without one.
    ip_offset: int
    #: Where the inner IP packet ends (by its length field); -1 without one.
    ip_end: int
    #: Where the inner L4 header starts; -1 for a fragment or without IP.
    l4_offset: int
    #: The inner IP protocol (after IPv6 extension headers; a fragment's is its datagram's);
    #: 0 without IP.
    l4_protocol: int
    #: Where the inner L4 payload starts; -1 for a fragment or without IP.
    payload_offset: int
    # True while the offsets above, udp_offset and inner_offset are the usual frame's (UDP in
    # IPv4 without options, after GWLB's three options): parse() re-filling a packet need not
    # store them again, and the hot edits work at constant offsets.
    _usual_layout: bool
    # Why the inner packet is malformed; set only on a packet parse() turned into its class's
    # _damaged twin (see _damaged_class), whose inner fields raise it.
    _inner_error: GeneveError

    @classmethod
    def parse(
        cls,
        buf: bytearray | bytes | memoryview,
        length: int | None = None,
        port: int = GENEVE_PORT,
    ) -> Packet:
        """Parse the frame ``buf[:length]``: outer IPv4, UDP, Geneve and the inner packet.

        A ``bytearray`` (or a :class:`ReceiveBuffer`, which hands back the same packet, re-filled,
        at each parse) is used in place: edits write into it; anything else is copied once.
        Raises :class:`NotGeneveError` for IPv4 that is not UDP to ``port`` and another
        :class:`GeneveError` for anything malformed in the outer headers. A malformed inner
        packet does not fail the parse: the outer headers and GWLB metadata stay readable, and
        whatever reads the inner packet (its offsets, :meth:`parse_inner`, an edit) raises.
        """
        self: Packet | None
        # True when self is a re-filled packet that holds the usual frame's offsets already.
        usual_layout = False
        if type(buf) is ReceiveBuffer:
            self = buf._packet
            if type(self) is cls:
                usual_layout = self._usual_layout
            elif self is not None and type(self) is _DAMAGED.get(cls):
                self.__class__ = cls  # the last frame's inner packet was malformed
                self._usual_layout = False
            else:  # (until a parse succeeds, it must say False: a parse may fail)
                self = buf._packet = _new(cls)
                self._usual_layout = False
        elif type(buf) is bytearray:
            # Packet() is quicker than object.__new__; a subclass may have an __init__ of its own.
            self = Packet() if cls is Packet else _new(cls)
        else:
            buf = bytearray(buf[:length] if length is not None else buf)
            self = _new(cls)
        if length is None:
            length = len(buf)
        # The usual frame, recognised with one unpack and one test: outer IPv4 without options,
        # not a fragment, UDP to the Geneve port with a length that agrees, Geneve version 0
        # with exactly GWLB's three options (none critical). The test proves 68 <= total <=
        # length, so every field it uses is inside the frame. Anything else, valid or not, goes
        # through _parse_outer, which checks one field at a time and says what is wrong. The
        # numbers are geneve._layout's (the one description, which C's _layout.h is made
        # from), written as literals because this runs for every packet: a module constant
        # costs a lookup each, 6% of the codec's cycle for these. tests/test_layout.py holds
        # the literals here, in replace_in_payload and in reply to _layout. A frame shorter
        # than _USUAL (96 bytes) cannot hold the usual inner packet either.
        if 96 <= length <= len(buf):
            (vihl, total, frag, proto, dport, ulen, b0, ptype, o1, o2, o3,
             ivihl, itotal, ifrag, iproto, iulen) = _usual(buf)  # fmt: skip
            if (
                vihl == 0x45
                and proto == 17  # IPPROTO_UDP
                and dport == port
                and b0 == 8  # version 0, 8 words of options
                and o1 == 0x01080102
                and o2 == 0x01080202
                and o3 == 0x01080301
                and 68 <= total <= length
                and ulen == total - 20
                and not frag & 0x3FFF
            ):
                self.buf = buf
                self.length = total
                self.modified = False
                self.max_inner_length = 0xFFFF
                # The usual inner packet, UDP in IPv4 without options, is parsed here too,
                # setting what _parse_inner would; anything else goes through _parse_inner.
                # itotal >= 28 and 68 + itotal <= total put these fields in the frame.
                if (
                    ptype == 0x0800  # ETH_P_IPV4
                    and ivihl == 0x45
                    and iproto == 17
                    and not ifrag & 0x3FFF
                    and 28 <= itotal <= total - 68
                    and iulen == itotal - 20
                ):
                    self.ip_end = 68 + itotal
                    # A packet re-filled from a ReceiveBuffer keeps these from the last usual
                    # frame: only this block sets _usual_layout, every other path clears it.
                    if not usual_layout:
                        self.udp_offset = 20
                        self.inner_offset = 68
                        self.ip_version = 4
                        self.ip_offset = 68
                        self.l4_protocol = 17
                        self.l4_offset = 88
                        self.payload_offset = 96
                        self._usual_layout = True
                    return self
                self.udp_offset = 20
                self.inner_offset = 68
                self._usual_layout = False
                self._parse_inner_or_keep_error()
                return self
        elif not 0 <= length <= len(buf):
            raise ValueError("length is beyond the buffer")
        total, ihl, inner = _parse_outer(buf, length, port)
        self._usual_layout = False
        self.buf = buf
        self.length = total
        self.udp_offset = ihl
        self.inner_offset = inner
        self.modified = False
        self.max_inner_length = 0xFFFF
        self._parse_inner_or_keep_error()
        return self

    # -- the inner packet ----------------------------------------------------------------------

    def parse_inner(self) -> None:
        """Raise the inner packet's :class:`GeneveError` if it is malformed; else do nothing.

        :meth:`parse` has parsed the inner packet already; a malformed one makes every read of
        it raise, and this says so at once.
        """

    def _parse_inner_or_keep_error(self) -> None:
        try:
            self._parse_inner()
        except GeneveError as err:
            # The outer headers are sound: keep the packet, and let the inner fields raise.
            self._inner_error = err
            self.__class__ = _damaged_class(type(self))

    def _parse_inner(self) -> None:
        """Fill the inner fields (every path sets ip_version, ip_offset, ip_end, l4_offset,
        l4_protocol and payload_offset) or raise for the first thing wrong."""
        buf = self.buf
        off = self.inner_offset
        end = self.length
        ptype = self.protocol_type
        if ptype == ETH_P_TEB:
            if off + 14 > end:
                raise TruncatedError("inner Ethernet header truncated", "inner-truncated")
            ptype = _U16.unpack_from(buf, off + 12)[0]
            off += 14
            while ptype in _ETH_VLAN:  # 802.1Q, and 802.1ad (QinQ) stacks of them
                if off + 4 > end:
                    raise TruncatedError("inner VLAN tag truncated", "inner-truncated")
                ptype = _U16.unpack_from(buf, off + 2)[0]
                off += 4
        if ptype == ETH_P_IPV4:
            if off + 20 > end:
                raise TruncatedError("inner IPv4 header truncated", "inner-truncated")
            vihl, itotal, frag, proto = _IP4.unpack_from(buf, off)
            if vihl >> 4 != 4:
                raise MalformedError("inner packet is not IPv4", "inner-version")
            ihl = (vihl & 0x0F) << 2
            if ihl < 20 or itotal < ihl:
                raise MalformedError("inner IPv4 IHL or total length is wrong", "inner-length")
            ip_end = off + itotal
            if ip_end > end:
                raise TruncatedError("inner IPv4 runs past the frame", "inner-truncated")
            l4 = off + ihl
            if frag & 0x3FFF:
                self.l4_offset = self.payload_offset = -1
            elif proto == IPPROTO_UDP:  # what GWLB carries most: inlined from _parse_l4
                if ip_end - l4 < 8:
                    raise TruncatedError("inner UDP header truncated", "inner-l4-truncated")
                if _U16.unpack_from(buf, l4 + 4)[0] != ip_end - l4:
                    raise MalformedError("inner UDP length disagrees with IP", "inner-udp-length")
                self.l4_offset = l4
                self.payload_offset = l4 + 8
            else:
                self._parse_l4(l4, proto, ip_end, False)
            self.ip_version = 4
            self.ip_offset = off
            self.ip_end = ip_end
            self.l4_protocol = proto
        elif ptype == ETH_P_IPV6:
            if off + 40 > end:
                raise TruncatedError("inner IPv6 header truncated", "inner-truncated")
            if buf[off] >> 4 != 6:
                raise MalformedError("inner packet is not IPv6", "inner-version")
            plen, nh = _IP6_LEN_NH.unpack_from(buf, off + 4)
            ip_end = off + 40 + plen
            if ip_end > end:
                raise TruncatedError("inner IPv6 runs past the frame", "inner-truncated")
            nh, pos = _ip6_skip(buf, nh, off + 40, ip_end)
            if pos < 0:
                raise TruncatedError("IPv6 extension header truncated", "inner-truncated")
            if nh == _IP6_FRAGMENT:
                if pos + 8 > ip_end:
                    raise TruncatedError("IPv6 fragment header truncated", "inner-truncated")
                # As for an IPv4 fragment, the protocol is the datagram's: the Next Header of
                # the fragment header (RFC 8200 4.5), past the extension headers that the
                # first fragment still carries (destination options, say).
                nh = _ip6_upper(buf, pos, ip_end)[0]
                self.l4_offset = self.payload_offset = -1
            else:
                self._parse_l4(pos, nh, ip_end, True)
            self.ip_version = 6
            self.ip_offset = off
            self.ip_end = ip_end
            self.l4_protocol = nh
        else:  # no inner IP (ARP, unknown protocol type): nothing below the Geneve header
            self.ip_version = self.l4_protocol = 0
            self.ip_offset = self.ip_end = self.l4_offset = self.payload_offset = -1

    def _parse_l4(self, l4: int, proto: int, ip_end: int, v6: bool) -> None:
        room = ip_end - l4
        if proto == IPPROTO_UDP:
            if room < 8:
                raise TruncatedError("inner UDP header truncated", "inner-l4-truncated")
            if _U16.unpack_from(self.buf, l4 + 4)[0] != room:
                raise MalformedError("inner UDP length disagrees with IP", "inner-udp-length")
            payload = l4 + 8
        elif proto == IPPROTO_TCP:
            if room < 20:
                raise TruncatedError("inner TCP header truncated", "inner-l4-truncated")
            doff = (self.buf[l4 + 12] >> 4) << 2
            if doff < 20 or doff > room:
                raise MalformedError("inner TCP data offset is wrong", "inner-tcp-offset")
            payload = l4 + doff
        elif proto == (IPPROTO_ICMPV6 if v6 else IPPROTO_ICMP):
            if room < 4:
                raise TruncatedError("inner ICMP header truncated", "inner-l4-truncated")
            payload = min(l4 + 8, ip_end)
        else:
            payload = l4  # an L4 this codec does not know: its bytes are all payload
        self.l4_offset = l4
        self.payload_offset = payload

    # What follows the inner packet's offsets: properties that build views or derive a value.

    @property
    def is_fragment(self) -> bool:
        """The inner IP packet is a fragment (never rewritten)."""
        # Only a fragment has an inner IP header and no L4 offset.
        return self.ip_version > 0 and self.l4_offset < 0

    @property
    def first_fragment_l4_offset(self) -> int:
        """Where the L4 header starts in the first fragment of a fragmented inner datagram.

        -1 for any other packet (a later fragment carries no L4 header; an unfragmented packet
        has :attr:`l4_offset`). A fragment is never rewritten, but dropping the first one drops
        the whole datagram, since the receiver cannot reassemble it: a rule that drops by port,
        ICMP type or the start of the payload can look here.
        """
        if self.ip_version <= 0 or self.l4_offset >= 0:
            return -1
        buf = self.buf
        ip = self.ip_offset
        if self.ip_version == 4:
            if _U16.unpack_from(buf, ip + 6)[0] & 0x1FFF:  # fragment offset
                return -1
            return ip + ((buf[ip] & 0x0F) << 2)
        # The parse has walked these extension headers up to the fragment header, checked.
        pos = _ip6_skip(buf, buf[ip + 6], ip + 40, self.ip_end)[1]
        if _U16.unpack_from(buf, pos + 2)[0] & 0xFFF8:  # fragment offset
            return -1
        return _ip6_upper(buf, pos, self.ip_end)[1]

    # -- reading ---------------------------------------------------------------------------

    @property
    def data(self) -> memoryview:
        """The frame's bytes, ready to send (a view; no copy)."""
        buf = self.buf
        if type(buf) is ReceiveBuffer:
            return buf._view[: self.length]
        return memoryview(buf)[: self.length]

    def __bytes__(self) -> bytes:
        return bytes(self.buf[: self.length])

    def __len__(self) -> int:
        return self.length

    @property
    def geneve_offset(self) -> int:
        """Where the Geneve header starts (right after the outer UDP header)."""
        return self.udp_offset + 8

    @property
    def protocol_type(self) -> int:
        """The Geneve protocol type of the inner packet (0x0800 IPv4, 0x86DD IPv6, ...)."""
        proto: int = _U16.unpack_from(self.buf, self.udp_offset + 10)[0]
        return proto

    @property
    def outer(self) -> IPv4:
        return IPv4(self.buf, 0, self)

    @property
    def outer_udp(self) -> UDP:
        return UDP(self.buf, self.udp_offset, self)

    @property
    def geneve(self) -> Geneve:
        return Geneve(self.buf, self.geneve_offset, self)

    @property
    def is_control(self) -> bool:
        """The Geneve O bit: a control message, never to be forwarded as data (RFC 8926 3.4)."""
        return bool(self.buf[self.geneve_offset + 1] & 0x80)

    def outer_udp_checksum_ok(self) -> bool:
        """Whether the outer UDP checksum is 0 (none, RFC 768) or makes the datagram sum right.

        What the kernel checks before a UDP socket sees a datagram, and a raw socket does not.
        One more value passes: the pseudo-header's sum alone, which a sender on this host leaves
        for checksum offload (veth): the kernel never finishes it, and trusts it.
        """
        buf = self.buf
        udp = self.udp_offset
        field = (buf[udp + 6] << 8) | buf[udp + 7]
        if not field:
            return True
        end = self.length
        view = memoryview(buf)
        pseudo = ones_complement_sum(view[12:20], IPPROTO_UDP + (end - udp))
        return field == pseudo or ones_complement_sum(view[udp:end], pseudo) == 0xFFFF

    @property
    def vni(self) -> int:
        return int.from_bytes(self.buf[self.geneve_offset + 4 : self.geneve_offset + 7], "big")

    @property
    def gwlb(self) -> GwlbMetadata | None:
        """GWLB endpoint id, attachment id and flow cookie, or None without GWLB options."""
        g = self.geneve_offset
        usual = self.inner_offset - g == INNER - GENEVE_AT  # GWLB's three options, 32 bytes
        if usual and _GWLB_OPTS.unpack_from(self.buf, g + 8) == _GWLB_OPT_WORDS:
            endpoint, attachment, cookie = _GWLB_VALUES.unpack_from(self.buf, g + 8)
            return GwlbMetadata(endpoint, attachment, cookie, GWLB_OPTION_CLASS)
        return GwlbMetadata.from_geneve(self.geneve)

    def gwlb_ids(self) -> tuple[int, int | None]:
        """The GWLB endpoint id (0 without one) and flow cookie (None without one), quickly.

        What a flow table reads from every packet: the usual layout in one unpack, without
        the :class:`GwlbMetadata` that :attr:`gwlb` makes.
        """
        g = self.udp_offset + 16  # the first option
        if self.inner_offset - g == 32:
            o1, endpoint, o2, o3, cookie = _GWLB_IDS(self.buf, g)
            if o1 == _OPT1 and o2 == _OPT2 and o3 == _OPT3:
                return endpoint, cookie
        meta = GwlbMetadata.from_geneve(self.geneve)
        if meta is None:
            return 0, None
        return meta.endpoint_id or 0, meta.flow_cookie

    @property
    def flow_cookie(self) -> int | None:
        meta = self.gwlb
        return None if meta is None else meta.flow_cookie

    @property
    def inner_ipv4(self) -> IPv4 | None:
        return IPv4(self.buf, self.ip_offset, self) if self.ip_version == 4 else None

    @property
    def inner_ipv6(self) -> IPv6 | None:
        return IPv6(self.buf, self.ip_offset, self) if self.ip_version == 6 else None

    @property
    def inner_ip(self) -> IPv4 | IPv6 | None:
        if self.ip_version == 4:
            return IPv4(self.buf, self.ip_offset, self)
        if self.ip_version == 6:
            return IPv6(self.buf, self.ip_offset, self)
        return None

    @property
    def inner_src(self) -> str | None:
        """Inner source address as text (convenience; allocates)."""
        ip = self.inner_ip
        return None if ip is None else ip.src

    @property
    def inner_dst(self) -> str | None:
        ip = self.inner_ip
        return None if ip is None else ip.dst

    @property
    def udp(self) -> UDP | None:
        """The inner UDP header, or None (not UDP, or a fragment)."""
        if self.l4_protocol == IPPROTO_UDP and self.l4_offset >= 0:
            return UDP(self.buf, self.l4_offset, self)
        return None

    @property
    def tcp(self) -> TCP | None:
        if self.l4_protocol == IPPROTO_TCP and self.l4_offset >= 0:
            return TCP(self.buf, self.l4_offset, self)
        return None

    @property
    def icmp(self) -> ICMP | None:
        """The inner ICMP (over IPv4) or ICMPv6 (over IPv6) header, or None."""
        if (
            self.l4_offset >= 0
            and self.l4_protocol == (IPPROTO_ICMPV6 if self.ip_version == 6 else IPPROTO_ICMP)
            and self.ip_end - self.l4_offset >= 8
        ):
            return ICMP(self.buf, self.l4_offset, self)
        return None

    @property
    def ports(self) -> tuple[int, int] | None:
        """Inner (source, destination) ports of UDP or TCP, or None. Fast: one unpack."""
        if self.l4_offset >= 0 and self.l4_protocol in (IPPROTO_UDP, IPPROTO_TCP):
            src, dst = _PORTS.unpack_from(self.buf, self.l4_offset)
            return src, dst
        return None

    @property
    def payload(self) -> memoryview | None:
        """The inner L4 payload (a view; no copy), or None when there is no L4 header."""
        if self.payload_offset < 0:
            return None
        return memoryview(self.buf)[self.payload_offset : self.ip_end]

    def payload_find(self, sub: bytes) -> int:
        """Index of ``sub`` in the inner L4 payload, or -1 (no copy)."""
        if self.payload_offset < 0:
            return -1
        pos = self.buf.find(sub, self.payload_offset, self.ip_end)
        return pos if pos < 0 else pos - self.payload_offset

    def payload_contains(self, sub: bytes) -> bool:
        return self.payload_find(sub) >= 0

    # -- editing ---------------------------------------------------------------------------

    def swap_outer(self) -> None:
        """Swap the outer IPv4 source and destination addresses in place.

        The IPv4 header checksum and the outer UDP checksum stay valid: a one's-complement sum
        does not depend on the order of its words.
        """
        buf = self.buf
        src, dst = _swap_unpack(buf, 12)
        _swap_pack(buf, 12, dst, src)

    def mark_modified(self) -> None:
        """Say that the inner packet was edited directly through :attr:`buf`."""
        self.modified = True

    def replace_payload(self, data: bytes | bytearray | memoryview) -> None:
        """Replace the inner UDP, ICMP or TCP payload (TCP: another length needs flows).

        Grows or shrinks the frame and rewrites the inner IP, inner UDP, outer IPv4 and outer UDP
        lengths; checksums are fixed by :meth:`reply` (or :meth:`fix_checksums`). Bytes after
        the inner IP packet (padding) are dropped. Fragments are never rewritten.
        """
        if self.ip_version > 0 and self.l4_offset < 0:
            raise FragmentError("inner packet is a fragment; it is never rewritten")
        if self.payload_offset < 0:
            raise UnsupportedError("inner packet has no payload to replace", "no-payload")
        if self.l4_protocol == IPPROTO_TCP and self.payload_offset + len(data) != self.ip_end:
            self._tcp_length_change([(0, self.ip_end - self.payload_offset, bytes(data))])
            return
        self._write_payload(data)

    def _tcp_length_change(self, edits: list[tuple[int, int, bytes]]) -> int:
        # A Packet on its own cannot change a TCP payload's length: the peer would see its
        # sequence numbers off. A pipeline's packet with a flow can (geneve._seq).
        raise UnsupportedError(_TCP_LENGTH_MESSAGE)

    def _resize_tcp_payload(self, data: bytes | bytearray | memoryview) -> None:
        """Replace the TCP payload whatever its length (the sequence adjustment's own edit)."""
        self._write_payload(data, True)

    def _write_payload(
        self, data: bytes | bytearray | memoryview, tcp: bool = False
    ) -> None:
        # The inner packet is parsed, has a payload and is not a fragment.
        start = self.payload_offset
        new_ip_end = start + len(data)
        if new_ip_end != self.ip_end:
            proto = self.l4_protocol
            if proto == IPPROTO_TCP and not tcp:
                raise UnsupportedError(_TCP_LENGTH_MESSAGE)
            if proto not in (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6):
                raise UnsupportedError(f"cannot resize the payload of IP protocol {proto}")
            limit = 0xFFFF if self.ip_version == 4 else 0xFFFF + 40
            if new_ip_end > 0xFFFF or new_ip_end - self.ip_offset > limit:
                raise PacketTooLargeError("the frame would exceed 65535 bytes")
            # Checked before a byte changes, so a refused rewrite leaves the packet as it was.
            most = self.max_inner_length
            if new_ip_end - self.inner_offset > most:
                raise PacketTooLargeError(
                    f"the inner packet would be {new_ip_end - self.inner_offset} bytes, "
                    f"over the {most}-byte limit"
                )
        buf = self.buf
        if new_ip_end > len(buf):
            try:
                buf[start:] = data  # grows the buffer in one step
            except BufferError:  # a memoryview of it is alive: it cannot resize, so grow a copy
                buf = self.buf = buf[:start] + data
        else:
            buf[start:new_ip_end] = data
        # The inner lengths follow the new payload, the outer ones drop any padding after it.
        if new_ip_end != self.ip_end or new_ip_end != self.length:
            u16 = _U16.pack_into
            ip = self.ip_offset
            if self.ip_version == 4:
                u16(buf, ip + 2, new_ip_end - ip)
            else:
                u16(buf, ip + 4, new_ip_end - ip - 40)
            if self.l4_protocol == IPPROTO_UDP:
                u16(buf, self.l4_offset + 4, new_ip_end - self.l4_offset)
            u16(buf, 2, new_ip_end)
            u16(buf, self.udp_offset + 4, new_ip_end - self.udp_offset)
            self.length = new_ip_end
            self.ip_end = new_ip_end
        self.modified = True

    def replace_in_payload(self, old: bytes, new: bytes, count: int = -1) -> int:
        """Replace occurrences of ``old`` in the inner payload; returns how many were replaced.

        Costs one search (no copy, no write) when ``old`` does not occur.
        """
        buf = self.buf
        if self._usual_layout:
            # The usual frame, at the layout's offsets (literals, as in parse): inner IPv4 at
            # 68, its UDP at 88, the payload at 96. The same steps as below, for the rewrite
            # appliances do most.
            end = self.ip_end
            if not old or buf.find(old, 96, end) < 0:
                return 0
            data = buf[96:end].replace(old, new, count)
            new_end = 96 + len(data)
            if new_end == end or new_end > 0xFFFF or new_end - 68 > self.max_inner_length:
                return self._replace_other(96, end, data, old, new, count)
            try:
                buf[96:new_end] = data
            except BufferError:
                self._write_payload(data)
            else:
                _u16(buf, 68 + 2, new_end - 68)  # inner IPv4 total length
                _u16(buf, 88 + 4, new_end - 88)  # inner UDP length
                _u16(buf, 2, new_end)  # outer IPv4 total length
                _u16(buf, 20 + 4, new_end - 20)  # outer UDP length
                self.length = self.ip_end = new_end
                self.modified = True
            return (new_end - end) // (len(new) - len(old))
        start = self.payload_offset
        if start < 0:  # no payload (a fragment, no L4)
            return 0
        end = self.ip_end
        if not old or buf.find(old, start, end) < 0:  # an empty ``old`` matches everywhere
            return 0
        data = buf[start:end].replace(old, new, count)
        new_end = start + len(data)
        # The rewrite appliances do most, inlined: inner UDP whose length changes, within the
        # limits. Everything else (same length, count 0, TCP, ICMP, too long) goes through
        # _write_payload, which raises before any byte changes where it must.
        if (
            new_end == end
            or self.l4_protocol != 17  # IPPROTO_UDP
            or new_end > 0xFFFF
            or new_end - self.inner_offset > self.max_inner_length
        ):
            return self._replace_other(start, end, data, old, new, count)
        try:
            # Grows the buffer when the frame outgrows it (the slice then ends at its end).
            buf[start:new_end] = data
        except BufferError:  # a view pins the buffer's size: _write_payload grows a copy
            self._write_payload(data)
        else:
            ip = self.ip_offset
            if self.ip_version == 4:
                _u16(buf, ip + 2, new_end - ip)
            else:
                _u16(buf, ip + 4, new_end - ip - 40)
            l4 = self.l4_offset
            _u16(buf, l4 + 4, new_end - l4)
            _u16(buf, 2, new_end)
            udp = self.udp_offset
            _u16(buf, udp + 4, new_end - udp)
            self.length = self.ip_end = new_end
            self.modified = True
        # Each replacement changed the length by the same amount: no second scan.
        return (new_end - end) // (len(new) - len(old))

    def _replace_other(
        self, start: int, end: int, data: bytearray, old: bytes, new: bytes, count: int
    ) -> int:
        if not count:
            return 0
        if self.l4_protocol == IPPROTO_TCP and len(old) != len(new):
            # Each occurrence, as bytes.replace finds them: left to right, not overlapping.
            edits: list[tuple[int, int, bytes]] = []
            buf = self.buf
            at = buf.find(old, start, end)
            while at >= 0 and count != len(edits):
                edits.append((at - start, len(old), bytes(new)))
                at = buf.find(old, at + len(old), end)
            return self._tcp_length_change(edits)
        found = self.buf.count(old, start, end)  # non-overlapping, as replace() counts
        self._write_payload(data)
        return found if count < 0 else min(count, found)

    def fix_checksums(self, outer_udp: OuterUdpPolicy = "keep") -> bool:
        """Recompute every checksum of the frame in one call; False for an inner fragment.

        ``outer_udp``: ``"keep"`` recomputes the outer UDP checksum when it is not 0 and leaves
        a 0 alone, ``"zero"`` sets it to 0, ``"compute"`` always computes it.
        """
        if outer_udp == "keep":
            mode = 0
        else:
            mode = OUTER_MODES.get(outer_udp, -1)
            if mode < 0:
                raise ValueError(
                    f"outer_udp must be 'keep', 'zero' or 'compute', not {outer_udp!r}"
                )
        buf = self.buf
        target = buf._target if type(buf) is ReceiveBuffer else fix_target(buf)
        ip, l4 = self.ip_offset, self.l4_offset
        fixed = fix_frame_checksums(buf, target, self.length, ip, l4, self.l4_protocol, mode)
        self.modified = False
        # An IPv6 fragment's L4 offset is -1, so the routine itself cannot tell it is one.
        return fixed and (l4 >= 0 or ip < 0)

    def reply(self) -> memoryview:
        """Turn the frame into GWLB's reply and return its bytes to send (a view; no copy).

        What every appliance does last, in one call: fix the checksums when an edit was made
        (as ``fix_checksums()`` does, keeping an outer UDP checksum of 0), then swap the outer
        addresses. An unedited frame keeps its bytes but for the swap, which leaves every
        checksum valid. Raises :class:`GeneveError`, and swaps nothing, when a direct edit
        broke a length field.
        """
        buf = self.buf
        held = type(buf) is ReceiveBuffer  # then buf holds its routine target and memoryview
        if self.modified:
            if self._usual_layout:  # fix_checksums() for the usual frame, at its offsets
                target = buf._target if held else fix_target(buf)  # type: ignore[attr-defined]
                rc = fix_routine(target, len(buf), self.length, 68, 88, 17, 0)
                if rc < 0:
                    raise_fix_error(rc)
                self.modified = False
            else:
                self.fix_checksums()
        src, dst = _swap_unpack(buf, 12)
        _swap_pack(buf, 12, dst, src)
        if held:
            return buf._view[: self.length]  # type: ignore[attr-defined, no-any-return]
        return memoryview(buf)[: self.length]

    @property
    def inner_length(self) -> int:
        """Bytes after the Geneve header (the inner packet, with its Ethernet header if any)."""
        return self.length - self.inner_offset

    def __repr__(self) -> str:
        try:
            inner = f"ipv{self.ip_version} proto={self.l4_protocol}" if self.ip_version else "-"
        except GeneveError as err:
            inner = f"malformed ({err.reason})"
        return (
            f"<Packet {self.length} bytes, protocol_type=0x{self.protocol_type:04x}, "
            f"inner {inner}, gwlb={self.gwlb!r}>"
        )



# -- a packet whose inner packet is malformed ---------------------------------------------------
#
# parse() parses the inner packet at once, so that its offsets can be plain slots (what a
# modifier reads most). When the inner packet is malformed and the outer headers are sound, the
# packet's class becomes a twin of its own (same slots, so the switch is allowed) in which every
# member that reads the inner packet raises the inner packet's error instead. The next parse of
# a ReceiveBuffer turns it back. Nothing on the path of a sound frame pays for this.

#: Members of Packet that read the inner packet: the twin's raise.
_INNER_PROPERTIES = (
    "ip_version", "ip_offset", "ip_end", "l4_offset", "l4_protocol", "payload_offset",
    "is_fragment", "first_fragment_l4_offset", "inner_ipv4", "inner_ipv6", "inner_ip",
    "inner_src", "inner_dst", "udp", "tcp", "icmp", "ports", "payload",
)  # fmt: skip
_INNER_METHODS = (
    "parse_inner", "payload_find", "payload_contains", "replace_payload", "replace_in_payload",
    "fix_checksums",
)  # fmt: skip
_DAMAGED: dict[type[Packet], type[Packet]] = {}


def _raise_inner_error(self: Packet, *args: object, **kwargs: object) -> Any:
    raise self._inner_error.with_traceback(None)


def _damaged_class(cls: type[Packet]) -> type[Packet]:
    """The twin of ``cls`` for a frame whose inner packet is malformed (made once per class)."""
    twin = _DAMAGED.get(cls)
    if twin is None:
        members: dict[str, Any] = {"__slots__": (), "__module__": cls.__module__}
        members.update((name, property(_raise_inner_error)) for name in _INNER_PROPERTIES)
        members.update((name, _raise_inner_error) for name in _INNER_METHODS)
        twin = _DAMAGED[cls] = type(cls.__name__, (cls,), members)
    return twin


_PORTS = struct.Struct("!HH")


def _ip6_upper(buf: bytearray, fragment: int, end: int) -> tuple[int, int]:
    """The upper-layer protocol of an IPv6 fragment, and where its header starts (-1: unknown).

    ``fragment`` is where the fragment header stands (it fits). A first fragment carries the
    extension headers after it (RFC 8200 4.5); a later one shows only the first's number.
    """
    nh = buf[fragment]
    if _U16.unpack_from(buf, fragment + 2)[0] & 0xFFF8:  # a later fragment
        return nh, -1
    return _ip6_skip(buf, nh, fragment + 8, end)


def _ip6_skip(buf: bytearray, nh: int, pos: int, end: int) -> tuple[int, int]:
    """Walk the IPv6 extension headers from ``pos`` (``nh`` names the first) up to ``end``.

    Returns the next header after them and where it starts, or ``(nh, -1)`` when one of them
    runs past ``end``. The one walk of extension headers in the codec's parse.
    """
    while nh in IPV6_EXTENSION_HEADERS:
        if pos + 8 > end:
            return nh, -1
        nh, pos = buf[pos], pos + ((buf[pos + 1] + 1) << 3)
    return nh, pos if pos <= end else -1


def _parse_outer(buf: bytearray, n: int, port: int) -> tuple[int, int, int]:
    """Check the outer IPv4, UDP and Geneve headers field by field; raise for the first bad one.

    Returns the outer total length, the outer IPv4 header length and where the inner packet
    starts.
    """
    if n < 20:
        raise TruncatedError("shorter than an IPv4 header", "outer-truncated")
    vihl, total, frag, proto = _IP4.unpack_from(buf)
    if vihl >> 4 != 4:
        raise NotGeneveError("outer header is not IPv4", "not-ipv4")
    ihl = (vihl & 0x0F) << 2
    if ihl < 20:
        raise MalformedError(f"outer IPv4 IHL {ihl // 4} is below 5", "outer-ihl")
    # Other traffic is "not Geneve" before it is anything else, even when a capture's snaplen
    # cut it short: the protocol, and the UDP port of a datagram that starts here, come first.
    if proto != IPPROTO_UDP:
        raise NotGeneveError(f"IP protocol {proto} is not UDP", "not-udp")
    if not frag & 0x1FFF and ihl + 4 <= min(n, total):
        dport = (buf[ihl + 2] << 8) | buf[ihl + 3]
        if dport != port:
            raise NotGeneveError(f"UDP port {dport} is not the Geneve port {port}", "not-geneve")
    if total < ihl:
        raise MalformedError("outer IPv4 total length is below its IHL", "outer-length")
    if total > n:
        raise TruncatedError(
            f"outer IPv4 total length {total} exceeds the {n} bytes received", "outer-truncated"
        )
    if frag & 0x3FFF:
        raise UnsupportedError("outer IPv4 fragment", "outer-fragment")
    if total < ihl + 8:
        raise TruncatedError("no room for the outer UDP header", "outer-truncated")
    _sport, dport, ulen, _ucsum = _UDP.unpack_from(buf, ihl)
    if dport != port:
        raise NotGeneveError(f"UDP port {dport} is not the Geneve port {port}", "not-geneve")
    if ulen != total - ihl:
        if ulen > total - ihl:
            raise TruncatedError("UDP length runs past the IPv4 packet", "udp-length")
        raise MalformedError("UDP length disagrees with the IPv4 length", "udp-length")
    geneve = ihl + 8
    if ulen < 16:
        raise TruncatedError("shorter than a Geneve header", "geneve-truncated")
    b0 = buf[geneve]
    # RFC 8926 3.4: "Packets received by a tunnel endpoint with an unknown version MUST be
    # dropped."
    if b0 >> 6:
        raise UnsupportedError(f"Geneve version {b0 >> 6}", "geneve-version")
    opt_len = (b0 & 0x3F) << 2
    inner = geneve + 8 + opt_len
    if inner > total:
        raise TruncatedError("Geneve options run past the UDP datagram", "geneve-options")
    if opt_len:
        _check_options(buf, geneve + 8, inner)
    return total, ihl, inner


def _check_options(buf: bytearray, pos: int, end: int) -> None:
    """Walk the option TLVs: each must fit, and no critical option may be present.

    RFC 8926 3.5: a tunnel endpoint that receives a critical option it does not understand
    MUST drop the packet. This codec understands only the GWLB options, none of which is
    critical, so any critical option is unknown.
    """
    while pos < end:
        if pos + 4 > end:
            raise MalformedError("Geneve option header runs past Opt Len", "geneve-options")
        otype = buf[pos + 2]
        nxt = pos + 4 + ((buf[pos + 3] & 0x1F) << 2)
        if nxt > end:
            raise MalformedError("Geneve option data runs past Opt Len", "geneve-options")
        if otype & 0x80:
            oclass = (buf[pos] << 8) | buf[pos + 1]
            raise UnsupportedError(
                f"unknown critical Geneve option class 0x{oclass:04x} type 0x{otype:02x}",
                "critical-option",
            )
        pos = nxt


def build_frame(
    inner: bytes | bytearray | memoryview,
    *,
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    src_port: int = 50000,
    dst_port: int = GENEVE_PORT,
    endpoint_id: int | None = 0x0123456789ABCDEF,
    attachment_id: int | None = 0x0FEDCBA987654321,
    flow_cookie: int | None = 0x11223344,
    protocol_type: int | None = None,
    vni: int = 0,
    options: bytes = b"",
    udp_checksum: bool = False,
    ttl: int = 64,
    identification: int = 0,
) -> bytearray:
    """Wrap ``inner`` as GWLB does: IPv4 | UDP | Geneve with the GWLB options (where not None).

    ``protocol_type`` defaults from the inner IP version. ``options`` adds raw option bytes after
    the GWLB ones. The outer UDP checksum is 0 unless ``udp_checksum``.
    """
    inner = bytes(inner)
    if protocol_type is None:
        protocol_type = ETH_P_IPV6 if inner[:1] and inner[0] >> 4 == 6 else ETH_P_IPV4
    opts = bytearray()
    for otype, value, size in (
        (1, endpoint_id, 8),
        (2, attachment_id, 8),
        (3, flow_cookie, 4),
    ):
        if value is not None:
            opts += struct.pack("!HBB", GWLB_OPTION_CLASS, otype, size // 4)
            opts += value.to_bytes(size, "big")
    opts += options
    if len(opts) % 4 or len(opts) > 252:
        raise ValueError("Geneve options must be a multiple of 4 bytes, at most 252")
    geneve = struct.pack("!BBHI", len(opts) // 4, 0, protocol_type, vni << 8) + bytes(opts)
    ulen = 8 + len(geneve) + len(inner)
    total = 20 + ulen
    if total > 0xFFFF:
        raise PacketTooLargeError("frame would exceed 65535 bytes")
    frame = bytearray(total)
    struct.pack_into(
        "!BBHHHBBH4s4s",
        frame,
        0,
        0x45,
        0,
        total,
        identification,
        0,
        ttl,
        IPPROTO_UDP,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    struct.pack_into("!HHHH", frame, 20, src_port, dst_port, ulen, 0)
    frame[28 : 28 + len(geneve)] = geneve
    frame[28 + len(geneve) :] = inner
    _U16.pack_into(frame, 10, internet_checksum(frame[:20]))
    if udp_checksum:
        pseudo = bytes(frame[12:20]) + struct.pack("!BBH", 0, IPPROTO_UDP, ulen)
        c = internet_checksum(frame[20:], ones_complement_sum(pseudo))
        _U16.pack_into(frame, 26, c or 0xFFFF)
    return frame
