"""ICMPv4 (RFC 792) and ICMPv6 (RFC 4443): parse, echo replies, and error messages.

Pure: no I/O. Errors we generate quote as much of the offending packet as the rules allow:
576 bytes in all for ICMPv4 (RFC 1812 §4.3.2.3) and 1280 for ICMPv6 (RFC 4443 §2.4(c)).

ICMP header (both versions)::

    |     Type      |     Code      |          Checksum             |
    |                  Rest of header (type specific)               |
"""

from __future__ import annotations

import struct

from ..errors import MalformedPacket
from .checksum import checksum, ones_sum
from .ip import IPPROTO_ICMP, IPPROTO_ICMPV6, emit_ipv4_header, emit_ipv6_header

__all__ = [
    "ICMP6_DEST_UNREACH",
    "ICMP6_ECHO_REPLY",
    "ICMP6_ECHO_REQUEST",
    "ICMP6_PACKET_TOO_BIG",
    "ICMP6_PARAM_PROBLEM",
    "ICMP6_TIME_EXCEEDED",
    "ICMP_DEST_UNREACH",
    "ICMP_ECHO_REPLY",
    "ICMP_ECHO_REQUEST",
    "ICMP_TIME_EXCEEDED",
    "UNREACH_ADMIN",
    "UNREACH_HOST",
    "UNREACH_NET",
    "UNREACH_PORT",
    "IcmpMessage",
    "QuotedPacket",
    "build_icmp_packet",
    "echo_reply",
    "is_icmp_error",
    "parse_icmp",
    "parse_quoted",
    "unreachable",
]

ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_ECHO_REQUEST = 8
ICMP_TIME_EXCEEDED = 11
ICMP_PARAM_PROBLEM = 12
ICMP6_DEST_UNREACH = 1
ICMP6_PACKET_TOO_BIG = 2
ICMP6_TIME_EXCEEDED = 3
ICMP6_PARAM_PROBLEM = 4
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129

#: Generic unreachable reasons, mapped to the right code for each version.
UNREACH_NET = "net"
UNREACH_HOST = "host"
UNREACH_PORT = "port"
UNREACH_ADMIN = "admin"
_V4_CODES = {UNREACH_NET: 0, UNREACH_HOST: 1, UNREACH_PORT: 3, UNREACH_ADMIN: 13}
_V6_CODES = {UNREACH_NET: 0, UNREACH_HOST: 3, UNREACH_PORT: 4, UNREACH_ADMIN: 1}

_ICMP_HEADER = struct.Struct("!BBHI")
_V4_ERRORS = frozenset((ICMP_DEST_UNREACH, 4, 5, ICMP_TIME_EXCEEDED, ICMP_PARAM_PROBLEM))


class IcmpMessage:
    """A parsed ICMP or ICMPv6 message; ``rest`` is the 32-bit type-specific word."""

    __slots__ = ("body", "checksum", "code", "rest", "type")

    def __init__(
        self, type: int, code: int, checksum: int, rest: int, body: bytes | memoryview
    ) -> None:
        self.type = type
        self.code = code
        self.checksum = checksum
        self.rest = rest
        self.body = body

    @property
    def ident(self) -> int:
        """Echo identifier (upper half of ``rest``)."""
        return self.rest >> 16

    @property
    def sequence(self) -> int:
        """Echo sequence number (lower half of ``rest``)."""
        return self.rest & 0xFFFF

    def __repr__(self) -> str:
        return f"IcmpMessage(type={self.type}, code={self.code}, len={len(self.body)})"


def parse_icmp(data: bytes | bytearray | memoryview, start: int, end: int) -> IcmpMessage:
    """Parse an ICMP(v6) message in ``data[start:end]`` (checksum not verified here)."""
    if end - start < 8:
        raise MalformedPacket("icmp-truncated")
    t, c, csum, rest = _ICMP_HEADER.unpack_from(data, start)
    return IcmpMessage(t, c, csum, rest, memoryview(data)[start + 8 : end])


def is_icmp_error(version: int, icmp_type: int) -> bool:
    """True for error messages (never answered with another error, RFC 1122 §3.2.2)."""
    if version == 4:
        return icmp_type in _V4_ERRORS
    return icmp_type < 128


def build_icmp_packet(
    src: bytes,
    dst: bytes,
    icmp_type: int,
    code: int,
    rest: int,
    body: bytes | bytearray | memoryview,
    *,
    ttl: int = 64,
) -> bytearray:
    """Build a whole ICMPv4 (4-byte addresses) or ICMPv6 (16-byte) packet with checksums."""
    ilen = 8 + len(body)
    if len(src) == 4:
        hl = 20
        buf = bytearray(hl + ilen)
        emit_ipv4_header(buf, 0, src, dst, IPPROTO_ICMP, ilen, ttl=ttl, dont_fragment=False)
        initial = 0
    else:
        hl = 40
        buf = bytearray(hl + ilen)
        emit_ipv6_header(buf, 0, src, dst, IPPROTO_ICMPV6, ilen, hop_limit=ttl)
        initial = ones_sum(src + dst) + IPPROTO_ICMPV6 + ilen
    _ICMP_HEADER.pack_into(buf, hl, icmp_type, code, 0, rest)
    buf[hl + 8 :] = body
    c = checksum(memoryview(buf)[hl:], initial)
    buf[hl + 2] = c >> 8
    buf[hl + 3] = c & 0xFF
    return buf


def echo_reply(
    version: int, request_src: bytes, request_dst: bytes, msg: IcmpMessage
) -> bytearray:
    """The reply to an echo request: addresses swapped, same identifier, sequence and data."""
    t = ICMP_ECHO_REPLY if version == 4 else ICMP6_ECHO_REPLY
    return build_icmp_packet(request_dst, request_src, t, 0, msg.rest, msg.body)


def unreachable(
    original: bytes | bytearray | memoryview,
    reason: str,
    *,
    src: bytes | None = None,
    mtu: int = 0,
) -> bytearray:
    """An ICMP destination-unreachable (or packet-too-big when ``reason == "mtu"``) error.

    ``original`` is the offending packet (at least its IP header and 8 bytes); the error is
    sent back to its source, from ``src`` or else from the original destination.
    """
    version = original[0] >> 4
    if version == 4:
        osrc = bytes(original[12:16])
        odst = bytes(original[16:20])
        quote = original[: 576 - 28]
        if reason == "mtu":
            return build_icmp_packet(src or odst, osrc, ICMP_DEST_UNREACH, 4, mtu & 0xFFFF, quote)
        return build_icmp_packet(src or odst, osrc, ICMP_DEST_UNREACH, _V4_CODES[reason], 0, quote)
    osrc = bytes(original[8:24])
    odst = bytes(original[24:40])
    quote = original[: 1280 - 48]
    if reason == "mtu":
        return build_icmp_packet(src or odst, osrc, ICMP6_PACKET_TOO_BIG, 0, mtu, quote)
    return build_icmp_packet(src or odst, osrc, ICMP6_DEST_UNREACH, _V6_CODES[reason], 0, quote)


class QuotedPacket:
    """The header of the packet an ICMP error quotes (possibly truncated): who, which ports,
    and for TCP the sequence number (``seq``; None when the quote is too short for it)."""

    __slots__ = ("dst", "dst_port", "protocol", "seq", "src", "src_port", "version")

    def __init__(
        self,
        version: int,
        src: bytes,
        dst: bytes,
        protocol: int,
        src_port: int,
        dst_port: int,
        seq: int | None = None,
    ) -> None:
        self.version = version
        self.src = src
        self.dst = dst
        self.protocol = protocol
        self.src_port = src_port
        self.dst_port = dst_port
        self.seq = seq

    def __repr__(self) -> str:
        return (
            f"QuotedPacket(v{self.version}, proto={self.protocol}, "
            f"{self.src_port}>{self.dst_port})"
        )


def parse_quoted(body: bytes | bytearray | memoryview) -> QuotedPacket:
    """Parse the IP header and the first 8 bytes (ports; TCP sequence) quoted by an ICMP error.

    Quotes are truncated by design (RFC 792: header plus 64 bits), so the IP total length
    is not checked against what is present. IPv6 extension headers are not walked.

    Raises:
        MalformedPacket: ``icmp-quote-truncated`` or ``icmp-quote-version``.
    """
    n = len(body)
    if n < 1:
        raise MalformedPacket("icmp-quote-truncated")
    v = body[0] >> 4
    if v == 4:
        ihl = (body[0] & 0x0F) << 2
        if ihl < 20 or n < ihl + 4:
            raise MalformedPacket("icmp-quote-truncated")
        return QuotedPacket(
            4, bytes(body[12:16]), bytes(body[16:20]), body[9],
            (body[ihl] << 8) | body[ihl + 1], (body[ihl + 2] << 8) | body[ihl + 3],
            int.from_bytes(body[ihl + 4 : ihl + 8], "big") if n >= ihl + 8 else None,
        )
    if v == 6:
        if n < 44:
            raise MalformedPacket("icmp-quote-truncated")
        return QuotedPacket(
            6, bytes(body[8:24]), bytes(body[24:40]), body[6],
            (body[40] << 8) | body[41], (body[42] << 8) | body[43],
            int.from_bytes(body[44:48], "big") if n >= 48 else None,
        )
    raise MalformedPacket("icmp-quote-version")
