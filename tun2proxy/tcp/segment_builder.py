"""Building our IP+TCP packets for one flow: header template, options, checksum, GSO.

Pure: no I/O. A :class:`SegmentBuilder` holds what never changes during a connection (the
addresses and ports, the constant parts of the IP header sum and of the TCP pseudo-header
sum, whether the device computes checksums) and turns one decision of the sender into one
packet: one ``bytearray`` (or :class:`~tun2proxy.wire.gso.GsoPacket`), one ``pack_into`` for
both headers, the payload copied once from the send buffer, the checksum folded with
``int.from_bytes`` (DESIGN.md §3). The option encoders below are the ones a non-SYN segment
carries; SYN options come from :func:`tun2proxy.wire.tcp.build_options`.
"""

from __future__ import annotations

import struct

from ..wire.checksum import finish
from ..wire.gso import GsoPacket
from ..wire.seq import SEQ_MASK
from ..wire.tcp import IP4_TCP, IP6_TCP

__all__ = ["SACK_EDGES", "SACK_HEAD", "TS_OPTION", "TS_WORD", "SegmentBuilder"]

#: NOP NOP TS(kind 8, len 10) TSval TSecr: the 12-byte timestamp option block (RFC 7323 §3).
TS_OPTION = struct.Struct("!III")
TS_WORD = 0x0101080A
#: NOP NOP SACK(kind 5, length): the head of a SACK option (RFC 2018 §3), then the edges.
SACK_HEAD = struct.Struct("!BBBB")
SACK_EDGES = struct.Struct("!II")


class SegmentBuilder:
    """Packets from ``local`` to ``remote`` for one connection (IPv4 or IPv6, DF, TTL 64)."""

    __slots__ = (
        "_ip_sum",
        "_pseudo",
        "local_addr",
        "local_port",
        "offload",
        "remote_addr",
        "remote_port",
        "v4",
    )

    def __init__(
        self,
        local_addr: bytes,
        local_port: int,
        remote_addr: bytes,
        remote_port: int,
        offload: bool,
    ) -> None:
        self.local_addr = local_addr
        self.local_port = local_port
        self.remote_addr = remote_addr
        self.remote_port = remote_port
        self.v4 = len(local_addr) == 4
        self.offload = offload
        self._pseudo = int.from_bytes(local_addr, "big") + int.from_bytes(remote_addr, "big") + 6
        if self.v4:
            # Constant part of the IPv4 header sum: ver/ihl/tos, DF, TTL 64/proto 6, addresses.
            addrs = int.from_bytes(local_addr + remote_addr, "big")
            self._ip_sum = 0x4500 + 0x4000 + 0x4006 + addrs
        else:
            # IPv6 header sum without the payload length: version word, next header/hop
            # limit, addresses.
            self._ip_sum = 0x6000 + 0x0640 + int.from_bytes(local_addr + remote_addr, "big")

    def build(
        self,
        flags: int,
        seq: int,
        ack: int,
        window: int,
        opts: bytes,
        payload: bytes | bytearray = b"",
        pstart: int = 0,
        pend: int = 0,
        gso_size: int = 0,
    ) -> bytearray:
        """One packet: ``seq`` and ``ack`` (unwrapped) go out modulo 2**32, the payload is
        ``payload[pstart:pend]`` (the send buffer; none by default), as a :class:`GsoPacket`
        the device cuts into ``gso_size`` segments when that is given."""
        olen = len(opts)
        plen = pend - pstart
        tcp_len = 20 + olen + plen
        if self.v4:
            total = 20 + tcp_len
            buf = GsoPacket(total, gso_size) if gso_size else bytearray(total)
            IP4_TCP.pack_into(
                buf, 0, 0x45, 0, total, 0, 0x4000, 64, 6, finish(self._ip_sum + total),
                self.local_addr, self.remote_addr, self.local_port, self.remote_port,
                seq & SEQ_MASK, ack & SEQ_MASK, ((20 + olen) << 10) | flags, window, 0, 0,
            )
            h = 20
            hdr_sum = 0  # a valid IPv4 header sums to zero
        else:
            total = 40 + tcp_len
            buf = GsoPacket(total, gso_size) if gso_size else bytearray(total)
            IP6_TCP.pack_into(
                buf, 0, 0x60000000, tcp_len, 6, 64, self.local_addr, self.remote_addr,
                self.local_port, self.remote_port, seq & SEQ_MASK, ack & SEQ_MASK,
                ((20 + olen) << 10) | flags, window, 0, 0,
            )
            h = 40
            hdr_sum = self._ip_sum + tcp_len
        if olen:
            buf[h + 20 : h + 20 + olen] = opts
        if plen:
            buf[h + 20 + olen :] = memoryview(payload)[pstart:pend]
        if self.offload:
            s = (self._pseudo + tcp_len) % 0xFFFF
            c = s if s else 0xFFFF
        else:
            n = int.from_bytes(buf, "big")
            if total & 1:
                n <<= 8
            c = finish(n - hdr_sum + self._pseudo + tcp_len)
        buf[h + 16] = c >> 8
        buf[h + 17] = c & 0xFF
        return buf
