"""UDP header: parse and emit whole IPv4/IPv6 UDP packets (RFC 768, RFC 8200 §8.1).

Pure: no I/O. UDP header::

     0      7 8     15 16    23 24    31
    +--------+--------+--------+--------+
    |   Source Port   |  Dest. Port     |
    |     Length      |    Checksum     |
    +--------+--------+--------+--------+
"""

from __future__ import annotations

import struct

from ..errors import MalformedPacket
from .checksum import finish, ones_sum
from .ip import IPPROTO_UDP

__all__ = ["IP4_UDP", "IP6_UDP", "UDP_HEADER", "UdpHeader", "emit_udp_packet", "parse_udp"]

UDP_HEADER = struct.Struct("!HHHH")
#: IPv4 header (no options) and UDP header in one Struct.
IP4_UDP = struct.Struct("!BBHHHBBH4s4sHHHH")
#: IPv6 header and UDP header in one Struct.
IP6_UDP = struct.Struct("!IHBB16s16sHHHH")


class UdpHeader:
    """A parsed UDP datagram: ports, length, checksum and a view of the payload."""

    __slots__ = ("checksum", "dst_port", "length", "payload", "src_port")

    def __init__(
        self,
        src_port: int,
        dst_port: int,
        length: int,
        checksum: int,
        payload: bytes | bytearray | memoryview,
    ) -> None:
        self.src_port = src_port
        self.dst_port = dst_port
        self.length = length
        self.checksum = checksum
        self.payload = payload

    def __repr__(self) -> str:
        return f"UdpHeader({self.src_port} > {self.dst_port} len {len(self.payload)})"


def parse_udp(data: bytes | bytearray | memoryview, start: int, end: int) -> UdpHeader:
    """Parse the UDP datagram in ``data[start:end]`` (checksum not verified here).

    The UDP length field must fit the IP payload; bytes after it are link padding.

    Raises:
        MalformedPacket: ``udp-truncated`` or ``udp-length``.
    """
    if end - start < 8:
        raise MalformedPacket("udp-truncated")
    sport, dport, length, csum = UDP_HEADER.unpack_from(data, start)
    if length < 8 or start + length > end:
        raise MalformedPacket("udp-length")
    return UdpHeader(sport, dport, length, csum, memoryview(data)[start + 8 : start + length])


def emit_udp_packet(
    src: bytes,
    dst: bytes,
    src_port: int,
    dst_port: int,
    payload: bytes | bytearray | memoryview,
    *,
    ttl: int = 64,
    ident: int = 0,
    checksum_offload: bool = False,
) -> bytearray:
    """Build a whole IPv4 or IPv6 UDP packet (version from the address length) in one buffer.

    A computed checksum of 0 is sent as 0xFFFF (RFC 768). With ``checksum_offload`` the
    checksum field holds the folded pseudo-header sum for the device to complete.
    """
    ulen = 8 + len(payload)
    if ulen > 0xFFFF:
        raise ValueError("UDP datagram too large")
    if len(src) == 4:
        hl = 20
        buf = bytearray(hl + ulen)
        IP4_UDP.pack_into(
            buf, 0, 0x45, 0, hl + ulen, ident, 0x4000, ttl, IPPROTO_UDP, 0, src, dst,
            src_port, dst_port, ulen, 0,
        )
        c = finish(ones_sum(memoryview(buf)[:20]))
        buf[10] = c >> 8
        buf[11] = c & 0xFF
    else:
        hl = 40
        buf = bytearray(hl + ulen)
        IP6_UDP.pack_into(
            buf, 0, 0x60000000, ulen, IPPROTO_UDP, ttl, src, dst, src_port, dst_port, ulen, 0
        )
    buf[hl + 8 :] = payload
    pseudo = int.from_bytes(src, "big") + int.from_bytes(dst, "big") + IPPROTO_UDP + ulen
    if checksum_offload:
        s = pseudo % 0xFFFF
        c = s if s else 0xFFFF
    else:
        c = finish(ones_sum(memoryview(buf)[hl:], pseudo)) or 0xFFFF
    buf[hl + 6] = c >> 8
    buf[hl + 7] = c & 0xFF
    return buf
