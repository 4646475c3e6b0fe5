"""Zero-copy views of one wire header each, over a caller's writable buffer.

A view is two slots, the buffer and an offset: reading a field unpacks those bytes with a
precompiled :class:`struct.Struct`, writing one packs them in place. Nothing is decoded until
it is asked for. Fields are declared once, as descriptors, so each class reads like the RFC's
header diagram. Constructing a view checks that its fixed header fits in the buffer, so field
access cannot raise ``struct.error`` afterwards.

When a view belongs to a :class:`geneve.Packet`, writing a field marks that packet modified, so
the pipeline knows to fix its checksums.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any, Protocol, overload

from ._errors import MalformedError, TruncatedError

__all__ = [
    "ETH_P_IPV4",
    "ETH_P_IPV6",
    "ETH_P_TEB",
    "GENEVE_PORT",
    "GWLB_OPTION_CLASS",
    "GWLB_OPTION_CLASSES",
    "GWLB_OPT_ATTACHMENT_ID",
    "GWLB_OPT_ENDPOINT_ID",
    "GWLB_OPT_FLOW_COOKIE",
    "ICMP",
    "IPPROTO_ICMP",
    "IPPROTO_ICMPV6",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "IPV6_EXTENSION_HEADERS",
    "TCP",
    "UDP",
    "Geneve",
    "GeneveOption",
    "GwlbMetadata",
    "IPv4",
    "IPv6",
]

#: IANA-assigned UDP port for Geneve (RFC 8926 section 3.3).
GENEVE_PORT = 6081
#: Geneve option class assigned to Amazon; GWLB puts its metadata there.
GWLB_OPTION_CLASS = 0x0108
#: Option classes read as GWLB metadata: Amazon's, and 0x0167, which the Tencent Cloud GWLB
#: uses with the same three-option layout (seen in a real capture).
GWLB_OPTION_CLASSES: tuple[int, ...] = (GWLB_OPTION_CLASS, 0x0167)
GWLB_OPT_ENDPOINT_ID = 1
GWLB_OPT_ATTACHMENT_ID = 2
GWLB_OPT_FLOW_COOKIE = 3

ETH_P_IPV4 = 0x0800
ETH_P_IPV6 = 0x86DD
#: Transparent Ethernet bridging: the inner packet starts with an Ethernet header.
ETH_P_TEB = 0x6558

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
#: IPv6 extension headers that may stand between the IPv6 header and the L4 header, each
#: (byte 1 + 1) * 8 bytes long (RFC 8200 4.1): hop-by-hop, routing, destination options. The
#: fragment header (44) is 8 bytes and ends the walk: what follows is a fragment.
IPV6_EXTENSION_HEADERS = frozenset((0, 43, 60))

_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_BY_SIZE = {1: _U8, 2: _U16, 4: _U32, 8: _U64}

Buffer = bytearray | memoryview


class _Owner(Protocol):
    modified: bool


class _View:
    """Base of every header view: a buffer, an offset and an optional owning packet."""

    __slots__ = ("buf", "offset", "owner")
    #: Bytes of the fixed part of the header; the constructor checks they are present.
    MIN_LENGTH = 0

    def __init__(self, buf: Buffer, offset: int = 0, owner: _Owner | None = None) -> None:
        if offset < 0 or offset + self.MIN_LENGTH > len(buf):
            raise TruncatedError(
                f"{type(self).__name__} needs {self.MIN_LENGTH} bytes at offset {offset}, "
                f"buffer has {len(buf)}"
            )
        self.buf = buf
        self.offset = offset
        self.owner = owner

    def _touch(self) -> None:
        if self.owner is not None:
            self.owner.modified = True

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name, attr in type(self).__dict__.items()
            if isinstance(attr, (Field, property)) and not name.startswith("_")
        )
        return f"{type(self).__name__}({fields})"


class Field:
    """An unsigned big-endian integer field at a fixed offset, optionally a bit range of it."""

    __slots__ = ("limit", "mask", "rel", "shift", "struct")

    def __init__(self, rel: int, size: int, mask: int | None = None, shift: int = 0) -> None:
        self.rel = rel
        self.struct = _BY_SIZE[size]
        self.mask = mask
        self.shift = shift
        self.limit = (1 << 8 * size) - 1 if mask is None else mask >> shift

    @overload
    def __get__(self, view: None, owner: Any) -> Field: ...
    @overload
    def __get__(self, view: _View, owner: Any) -> int: ...
    def __get__(self, view: _View | None, owner: Any) -> Field | int:
        if view is None:
            return self
        value: int = self.struct.unpack_from(view.buf, view.offset + self.rel)[0]
        if self.mask is None:
            return value
        return (value & self.mask) >> self.shift

    def __set__(self, view: _View, value: int) -> None:
        at = view.offset + self.rel
        # Checked before packing: a failing struct.pack_into has already zeroed its bytes.
        if not isinstance(value, int):
            raise TypeError(f"a header field takes an int, not {type(value).__name__}")
        if not 0 <= value <= self.limit:
            raise ValueError(f"value {value} does not fit in {self.limit.bit_length()} bits")
        if self.mask is None:
            word = value
        else:
            old = self.struct.unpack_from(view.buf, at)[0]
            word = (old & ~self.mask) | (value << self.shift)
        self.struct.pack_into(view.buf, at, word)
        view._touch()


class Flag:
    """One bit of a byte."""

    __slots__ = ("bit", "rel")

    def __init__(self, rel: int, bit: int) -> None:
        self.rel = rel
        self.bit = bit

    @overload
    def __get__(self, view: None, owner: Any) -> Flag: ...
    @overload
    def __get__(self, view: _View, owner: Any) -> bool: ...
    def __get__(self, view: _View | None, owner: Any) -> Flag | bool:
        if view is None:
            return self
        return bool(view.buf[view.offset + self.rel] & self.bit)

    def __set__(self, view: _View, value: bool) -> None:
        at = view.offset + self.rel
        if value:
            view.buf[at] |= self.bit
        else:
            view.buf[at] &= ~self.bit & 0xFF
        view._touch()


class _Address:
    """An IP address field: text (``"10.0.0.1"``, ``"2001:db8::1"``) or bytes when set."""

    __slots__ = ("family", "rel", "size")

    def __init__(self, rel: int, family: int) -> None:
        self.rel = rel
        self.family = family
        self.size = 4 if family == socket.AF_INET else 16

    @overload
    def __get__(self, view: None, owner: Any) -> _Address: ...
    @overload
    def __get__(self, view: _View, owner: Any) -> str: ...
    def __get__(self, view: _View | None, owner: Any) -> _Address | str:
        if view is None:
            return self
        start = view.offset + self.rel
        return socket.inet_ntop(self.family, bytes(view.buf[start : start + self.size]))

    def __set__(self, view: _View, value: str | bytes | bytearray | memoryview) -> None:
        if isinstance(value, str):
            try:
                raw = socket.inet_pton(self.family, value)
            except OSError as err:  # inet_pton's error for bad text is not a ValueError
                version = 4 if self.family == socket.AF_INET else 6
                raise ValueError(f"{value!r} is not an IPv{version} address") from err
        elif isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
        else:
            raise TypeError(f"an address is text or bytes, not {type(value).__name__}")
        if len(raw) != self.size:
            raise ValueError(f"an address here is {self.size} bytes")
        start = view.offset + self.rel
        view.buf[start : start + self.size] = raw
        view._touch()


class IPv4(_View):
    """IPv4 header (RFC 791), options included."""

    __slots__ = ()
    MIN_LENGTH = 20

    version = Field(0, 1, 0xF0, 4)
    ihl = Field(0, 1, 0x0F)
    tos = Field(1, 1)
    total_length = Field(2, 2)
    identification = Field(4, 2)
    dont_fragment = Flag(6, 0x40)
    more_fragments = Flag(6, 0x20)
    fragment_offset = Field(6, 2, 0x1FFF)
    ttl = Field(8, 1)
    protocol = Field(9, 1)
    checksum = Field(10, 2)
    src = _Address(12, socket.AF_INET)
    dst = _Address(16, socket.AF_INET)

    @property
    def header_length(self) -> int:
        return self.ihl * 4

    @property
    def is_fragment(self) -> bool:
        """True for any fragment: more fragments follow, or this is not the first one."""
        return bool(_U16.unpack_from(self.buf, self.offset + 6)[0] & 0x3FFF)

    @property
    def options(self) -> memoryview:
        start = self.offset + 20
        return memoryview(self.buf)[start : self.offset + self.header_length]


class IPv6(_View):
    """IPv6 fixed header (RFC 8200)."""

    __slots__ = ()
    MIN_LENGTH = 40

    version = Field(0, 1, 0xF0, 4)
    traffic_class = Field(0, 2, 0x0FF0, 4)
    flow_label = Field(0, 4, 0x000FFFFF)
    payload_length = Field(4, 2)
    next_header = Field(6, 1)
    hop_limit = Field(7, 1)
    src = _Address(8, socket.AF_INET6)
    dst = _Address(24, socket.AF_INET6)

    header_length = 40


class UDP(_View):
    """UDP header (RFC 768)."""

    __slots__ = ()
    MIN_LENGTH = 8

    src_port = Field(0, 2)
    dst_port = Field(2, 2)
    length = Field(4, 2)
    checksum = Field(6, 2)
    header_length = 8


class TCP(_View):
    """TCP header (RFC 9293), options included."""

    __slots__ = ()
    MIN_LENGTH = 20

    src_port = Field(0, 2)
    dst_port = Field(2, 2)
    seq = Field(4, 4)
    ack = Field(8, 4)
    data_offset = Field(12, 1, 0xF0, 4)
    flags = Field(13, 1)
    window = Field(14, 2)
    checksum = Field(16, 2)
    urgent_pointer = Field(18, 2)

    @property
    def header_length(self) -> int:
        return self.data_offset * 4


class ICMP(_View):
    """ICMP (RFC 792) or ICMPv6 (RFC 4443) header; identifier/sequence are the echo fields."""

    __slots__ = ()
    MIN_LENGTH = 8

    ECHO_REPLY = 0
    ECHO_REQUEST = 8
    ECHO_REQUEST_V6 = 128
    ECHO_REPLY_V6 = 129

    type = Field(0, 1)
    code = Field(1, 1)
    checksum = Field(2, 2)
    identifier = Field(4, 2)
    sequence = Field(6, 2)
    header_length = 8


class GeneveOption(_View):
    """One Geneve option TLV (RFC 8926 section 3.5)."""

    __slots__ = ()
    MIN_LENGTH = 4

    option_class = Field(0, 2)
    type = Field(2, 1)
    critical = Flag(2, 0x80)
    length_words = Field(3, 1, 0x1F)

    @property
    def length(self) -> int:
        """Bytes of option data (the header's 4 bytes not counted)."""
        return self.length_words * 4

    @property
    def data(self) -> memoryview:
        start = self.offset + 4
        return memoryview(self.buf)[start : start + self.length]


class Geneve(_View):
    """Geneve header (RFC 8926 section 3.4), options included."""

    __slots__ = ()
    MIN_LENGTH = 8

    version = Field(0, 1, 0xC0, 6)
    opt_len = Field(0, 1, 0x3F)
    oam = Flag(1, 0x80)
    critical = Flag(1, 0x40)
    protocol_type = Field(2, 2)
    vni = Field(4, 4, 0xFFFFFF00, 8)

    @property
    def options_length(self) -> int:
        return self.opt_len * 4

    @property
    def header_length(self) -> int:
        return 8 + self.opt_len * 4

    def options(self) -> Iterator[GeneveOption]:
        """The option TLVs in wire order; raises if one runs past the options area."""
        pos = self.offset + 8
        end = pos + self.options_length
        if end > len(self.buf):
            raise TruncatedError("Geneve options run past the buffer", "geneve-options")
        while pos < end:
            if pos + 4 > end:
                raise MalformedError("Geneve option header runs past Opt Len", "geneve-options")
            option = GeneveOption(self.buf, pos, self.owner)
            pos += 4 + option.length
            if pos > end:
                raise MalformedError("Geneve option data runs past Opt Len", "geneve-options")
            yield option

    def find_option(self, option_class: int, option_type: int) -> GeneveOption | None:
        """The first option of this class and type (critical bit ignored), or None."""
        for option in self.options():
            if option.option_class == option_class and option.type & 0x7F == option_type:
                return option
        return None

    @property
    def gwlb(self) -> GwlbMetadata | None:
        """The GWLB metadata, or None when the header carries no GWLB options."""
        return GwlbMetadata.from_geneve(self)


class GwlbMetadata:
    """What GWLB says about a flow: endpoint id, attachment id, flow cookie.

    Each is None where its option is absent. Both directions of a flow carry the same cookie.
    """

    __slots__ = ("attachment_id", "endpoint_id", "flow_cookie", "option_class")

    def __init__(
        self,
        endpoint_id: int | None,
        attachment_id: int | None,
        flow_cookie: int | None,
        option_class: int = GWLB_OPTION_CLASS,
    ) -> None:
        self.endpoint_id = endpoint_id
        self.attachment_id = attachment_id
        self.flow_cookie = flow_cookie
        self.option_class = option_class

    @classmethod
    def from_geneve(cls, geneve: Geneve) -> GwlbMetadata | None:
        values: dict[int, int] = {}
        found_class = None
        for option in geneve.options():
            oclass = option.option_class
            if oclass not in GWLB_OPTION_CLASSES or (found_class not in (None, oclass)):
                continue
            otype = option.type & 0x7F
            size = 4 if otype == GWLB_OPT_FLOW_COOKIE else 8
            if otype in (1, 2, 3) and option.length == size and otype not in values:
                values[otype] = int.from_bytes(option.data, "big")
                found_class = oclass
        if found_class is None:
            return None
        return cls(values.get(1), values.get(2), values.get(3), found_class)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GwlbMetadata) and (
            self.endpoint_id,
            self.attachment_id,
            self.flow_cookie,
            self.option_class,
        ) == (other.endpoint_id, other.attachment_id, other.flow_cookie, other.option_class)

    def __hash__(self) -> int:
        return hash((self.endpoint_id, self.attachment_id, self.flow_cookie, self.option_class))

    def __repr__(self) -> str:
        def hx(v: int | None, width: int) -> str:
            return "None" if v is None else f"0x{v:0{width}x}"

        return (
            f"GwlbMetadata(endpoint_id={hx(self.endpoint_id, 16)}, "
            f"attachment_id={hx(self.attachment_id, 16)}, "
            f"flow_cookie={hx(self.flow_cookie, 8)})"
        )
