"""IPv4 and IPv6 headers: parse, emit, extension-header walk, fragment detection.

Pure: no I/O. :func:`parse_ip` is the stack's entry point: it validates lengths first, walks
IPv6 extension headers with a bound, and returns an :class:`IpPacket` view that locates the
upper-layer header. The :class:`Ipv4Header` and :class:`Ipv6Header` records are the full,
round-trippable representation used by builders and tests.

IPv4 header (RFC 791)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |Version|  IHL  |    DSCP/ECN   |          Total Length         |
    |         Identification        |Flags|      Fragment Offset    |
    |  Time to Live |    Protocol   |         Header Checksum       |
    |                       Source Address                          |
    |                    Destination Address                        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

IPv6 header (RFC 8200)::

    |Version| Traffic Class |           Flow Label                  |
    |         Payload Length        |  Next Header  |   Hop Limit   |
    |                 Source Address (128 bits)                     |
    |              Destination Address (128 bits)                   |
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import MalformedPacket
from .checksum import checksum, ones_sum

__all__ = [
    "IPPROTO_AH",
    "IPPROTO_DSTOPTS",
    "IPPROTO_ESP",
    "IPPROTO_FRAGMENT",
    "IPPROTO_HOPOPTS",
    "IPPROTO_ICMP",
    "IPPROTO_ICMPV6",
    "IPPROTO_NONE",
    "IPPROTO_ROUTING",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "IPV4_HEADER",
    "IPV6_HEADER",
    "MAX_EXTENSION_HEADERS",
    "IpPacket",
    "Ipv4Header",
    "Ipv6Header",
    "emit_ipv4_header",
    "emit_ipv6_header",
    "parse_ip",
]

IPPROTO_HOPOPTS = 0
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_ICMPV6 = 58
IPPROTO_NONE = 59
IPPROTO_DSTOPTS = 60

#: Upper bound on IPv6 extension headers walked per packet (RFC 8200 §4.1 allows each once,
#: Destination Options twice; anything longer is an attack).
MAX_EXTENSION_HEADERS = 8

IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
IPV6_HEADER = struct.Struct("!IHBB16s16s")
_IPV4_FLAGS_MF = 0x2000
_IPV4_OFFSET_MASK = 0x1FFF


class IpPacket:
    """Where the parts of one IP packet lie, as found by :func:`parse_ip`.

    Attributes:
        version: 4 or 6.
        src, dst: packed addresses (4 or 16 bytes).
        protocol: the upper-layer protocol number after any IPv6 extension headers.
        offset: index of the upper-layer header in the buffer.
        end: index one past the last byte of the IP packet (link padding excluded).
        ttl: TTL or hop limit.
        fragment: True for a non-atomic fragment (reassembly is not implemented; the stack
            counts and drops these).
        header: the IP header bytes (including extension headers), for ICMP quoting.
    """

    __slots__ = ("dst", "end", "fragment", "offset", "protocol", "src", "ttl", "version")

    def __init__(
        self,
        version: int,
        src: bytes,
        dst: bytes,
        protocol: int,
        offset: int,
        end: int,
        ttl: int,
        fragment: bool,
    ) -> None:
        self.version = version
        self.src = src
        self.dst = dst
        self.protocol = protocol
        self.offset = offset
        self.end = end
        self.ttl = ttl
        self.fragment = fragment

    def __repr__(self) -> str:
        return (
            f"IpPacket(v{self.version}, proto={self.protocol}, offset={self.offset}, "
            f"end={self.end}, fragment={self.fragment})"
        )


def parse_ip(data: bytes | bytearray | memoryview, verify_checksum: bool = True) -> IpPacket:
    """Validate and locate the parts of an IPv4 or IPv6 packet.

    Raises:
        MalformedPacket: with a reason naming the failed check. Nothing else is raised for any
            input.
    """
    n = len(data)
    if n < 20:
        raise MalformedPacket("ip-truncated")
    v = data[0] >> 4
    if v == 4:
        vihl, _tos, total, _ident, frag, ttl, proto, _csum, src, dst = IPV4_HEADER.unpack_from(
            data, 0
        )
        ihl = (vihl & 0x0F) << 2
        if ihl < 20:
            raise MalformedPacket("ipv4-ihl")
        if total < ihl or total > n:
            raise MalformedPacket("ipv4-total-length")
        if verify_checksum and ones_sum(data[:ihl]) != 0:
            raise MalformedPacket("ipv4-checksum")
        return IpPacket(4, src, dst, proto, ihl, total, ttl, bool(frag & 0x3FFF))
    if v == 6:
        if n < 40:
            raise MalformedPacket("ip-truncated")
        _vtf, plen, nh, hlim, src, dst = IPV6_HEADER.unpack_from(data, 0)
        end = 40 + plen
        if end > n:
            # RFC 8200: a payload length of 0 with a Jumbo option is not supported here.
            raise MalformedPacket("ipv6-payload-length")
        off = 40
        fragment = False
        count = 0
        while nh in _IPV6_EXTENSIONS:
            if count >= MAX_EXTENSION_HEADERS:
                raise MalformedPacket("ipv6-too-many-extensions")
            if off + 8 > end:
                raise MalformedPacket("ipv6-extension-truncated")
            if nh == IPPROTO_FRAGMENT:
                frag_word = (data[off + 2] << 8) | data[off + 3]
                if frag_word & 0xFFF9:
                    # Offset != 0 or more-fragments set: a real fragment (RFC 6946 says
                    # atomic fragments, offset 0 and M 0, are processed normally).
                    fragment = True
                    nh = data[off]
                    off += 8
                    break
                hlen = 8
            elif nh == IPPROTO_AH:
                hlen = (data[off + 1] + 2) << 2
            else:
                if nh == IPPROTO_HOPOPTS and count:
                    raise MalformedPacket("ipv6-hop-by-hop-not-first")
                hlen = (data[off + 1] + 1) << 3
                if off + hlen > end:
                    raise MalformedPacket("ipv6-extension-truncated")
                if nh == IPPROTO_ROUTING:
                    if data[off + 3] and data[off + 2] == 0:
                        # RFC 5095: Routing Header type 0 with segments left is deprecated.
                        raise MalformedPacket("ipv6-routing-type-0")
                    if data[off + 3]:
                        # Source routing through us is not supported: we are the endpoint.
                        raise MalformedPacket("ipv6-routing-segments-left")
                else:
                    _check_ipv6_options(data, off + 2, off + hlen)
            if off + hlen > end:
                raise MalformedPacket("ipv6-extension-truncated")
            nh = data[off]
            off += hlen
            count += 1
        return IpPacket(6, src, dst, nh, off, end, hlim, fragment)
    raise MalformedPacket("ip-version")


_IPV6_EXTENSIONS = frozenset(
    (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_FRAGMENT, IPPROTO_DSTOPTS, IPPROTO_AH)
)


def _check_ipv6_options(data: bytes | bytearray | memoryview, i: int, end: int) -> None:
    """Walk TLV options of a Hop-by-Hop or Destination Options header (RFC 8200 §4.2).

    Unknown options are honoured by their two high bits: 00 skip, anything else discard.
    """
    while i < end:
        t = data[i]
        if t == 0:  # Pad1
            i += 1
            continue
        if i + 1 >= end:
            raise MalformedPacket("ipv6-option-truncated")
        length = data[i + 1]
        if i + 2 + length > end:
            raise MalformedPacket("ipv6-option-truncated")
        # PadN (1) and Router Alert (5) are known and harmless; other options with action
        # bits 00 are skipped; the rest ask for the packet to be discarded.
        if t not in (1, 5) and t >> 6:
            raise MalformedPacket("ipv6-option-unknown")
        i += 2 + length


def emit_ipv4_header(
    buf: bytearray,
    offset: int,
    src: bytes,
    dst: bytes,
    protocol: int,
    payload_len: int,
    *,
    ttl: int = 64,
    ident: int = 0,
    tos: int = 0,
    dont_fragment: bool = True,
) -> int:
    """Write a 20-byte IPv4 header with its checksum into ``buf``; return its length."""
    IPV4_HEADER.pack_into(
        buf,
        offset,
        0x45,
        tos,
        20 + payload_len,
        ident,
        0x4000 if dont_fragment else 0,
        ttl,
        protocol,
        0,
        src,
        dst,
    )
    c = checksum(memoryview(buf)[offset : offset + 20])
    buf[offset + 10] = c >> 8
    buf[offset + 11] = c & 0xFF
    return 20


def emit_ipv6_header(
    buf: bytearray,
    offset: int,
    src: bytes,
    dst: bytes,
    next_header: int,
    payload_len: int,
    *,
    hop_limit: int = 64,
    traffic_class: int = 0,
    flow_label: int = 0,
) -> int:
    """Write a 40-byte IPv6 header into ``buf``; return its length."""
    IPV6_HEADER.pack_into(
        buf,
        offset,
        (6 << 28) | (traffic_class << 20) | flow_label,
        payload_len,
        next_header,
        hop_limit,
        src,
        dst,
    )
    return 40


@dataclass(slots=True)
class Ipv4Header:
    """A full IPv4 header record (options kept as raw bytes), for builders and tests."""

    src: bytes
    dst: bytes
    protocol: int
    total_length: int
    ttl: int = 64
    ident: int = 0
    tos: int = 0
    flags: int = 2
    fragment_offset: int = 0
    options: bytes = b""
    checksum: int = 0

    @property
    def header_len(self) -> int:
        """Header length in bytes, options included."""
        return 20 + len(self.options)

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview, verify: bool = True) -> Ipv4Header:
        """Parse and validate an IPv4 header at the start of ``data``."""
        if len(data) < 20:
            raise MalformedPacket("ip-truncated")
        vihl, tos, total, ident, frag, ttl, proto, csum, src, dst = IPV4_HEADER.unpack_from(
            data, 0
        )
        if vihl >> 4 != 4:
            raise MalformedPacket("ip-version")
        ihl = (vihl & 0x0F) << 2
        if ihl < 20 or ihl > len(data):
            raise MalformedPacket("ipv4-ihl")
        if total < ihl:
            raise MalformedPacket("ipv4-total-length")
        if verify and ones_sum(data[:ihl]) != 0:
            raise MalformedPacket("ipv4-checksum")
        return cls(
            src=bytes(src),
            dst=bytes(dst),
            protocol=proto,
            total_length=total,
            ttl=ttl,
            ident=ident,
            tos=tos,
            flags=frag >> 13,
            fragment_offset=frag & _IPV4_OFFSET_MASK,
            options=bytes(data[20:ihl]),
            checksum=csum,
        )

    def to_bytes(self) -> bytes:
        """Emit the header with a freshly computed checksum (``checksum`` is updated)."""
        opts = self.options
        if len(opts) % 4 or len(opts) > 40:
            raise ValueError("IPv4 options must be a multiple of 4 bytes, at most 40")
        buf = bytearray(20 + len(opts))
        IPV4_HEADER.pack_into(
            buf,
            0,
            0x40 | (5 + len(opts) // 4),
            self.tos,
            self.total_length,
            self.ident,
            (self.flags << 13) | self.fragment_offset,
            self.ttl,
            self.protocol,
            0,
            self.src,
            self.dst,
        )
        buf[20:] = opts
        self.checksum = checksum(buf)
        buf[10] = self.checksum >> 8
        buf[11] = self.checksum & 0xFF
        return bytes(buf)


@dataclass(slots=True)
class Ipv6Header:
    """A fixed IPv6 header record, for builders and tests."""

    src: bytes
    dst: bytes
    next_header: int
    payload_length: int
    hop_limit: int = 64
    traffic_class: int = 0
    flow_label: int = 0

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Ipv6Header:
        """Parse the 40-byte fixed header at the start of ``data``."""
        if len(data) < 40:
            raise MalformedPacket("ip-truncated")
        vtf, plen, nh, hlim, src, dst = IPV6_HEADER.unpack_from(data, 0)
        if vtf >> 28 != 6:
            raise MalformedPacket("ip-version")
        return cls(
            src=bytes(src),
            dst=bytes(dst),
            next_header=nh,
            payload_length=plen,
            hop_limit=hlim,
            traffic_class=(vtf >> 20) & 0xFF,
            flow_label=vtf & 0xFFFFF,
        )

    def to_bytes(self) -> bytes:
        """Emit the 40-byte header."""
        buf = bytearray(40)
        emit_ipv6_header(
            buf,
            0,
            self.src,
            self.dst,
            self.next_header,
            self.payload_length,
            hop_limit=self.hop_limit,
            traffic_class=self.traffic_class,
            flow_label=self.flow_label,
        )
        return bytes(buf)
