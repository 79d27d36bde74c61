"""TCP header and options: parse into a validated record, emit whole packets in one buffer.

Pure: no I/O. :func:`parse_tcp` checks lengths first, then decodes the header and every
option (MSS, window scale, SACK-permitted, SACK blocks, timestamps, NOP/EOL). A malformed
option length (0, 1, or running past the header) stops option parsing, as Linux does
(``tcp_parse_options``): the options read so far are kept, ``bad_options`` is set, and the
parser never loops or reads past the header. Impossible flag combinations (SYN+FIN,
SYN+RST) and zero ports raise :class:`MalformedPacket`.

TCP header (RFC 9293 §3.1)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |          Source Port          |       Destination Port        |
    |                        Sequence Number                        |
    |                    Acknowledgment Number                      |
    |  Data |       |C|E|U|A|P|R|S|F|                               |
    | Offset| Rsrvd |W|C|R|C|S|S|Y|I|            Window             |
    |           Checksum            |         Urgent Pointer        |
    |                    Options                    |    Padding    |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
"""

from __future__ import annotations

import struct

from ..errors import MalformedPacket
from .checksum import finish, ones_sum
from .ip import IPPROTO_TCP
from .seq import SEQ_MASK

__all__ = [
    "ACK",
    "CWR",
    "ECE",
    "FIN",
    "IP4_TCP",
    "IP6_TCP",
    "OPT_EOL",
    "OPT_MSS",
    "OPT_NOP",
    "OPT_SACK",
    "OPT_SACK_PERMITTED",
    "OPT_TIMESTAMP",
    "OPT_WINDOW_SCALE",
    "PSH",
    "RST",
    "SYN",
    "TCP_HEADER",
    "URG",
    "TcpSegment",
    "build_options",
    "build_rst",
    "emit_tcp_packet",
    "flags_str",
    "parse_tcp",
]

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WINDOW_SCALE = 3
OPT_SACK_PERMITTED = 4
OPT_SACK = 5
OPT_TIMESTAMP = 8

TCP_HEADER = struct.Struct("!HHIIHHHH")
#: IPv4 header (no options) and TCP header in one Struct, for one-call emission.
IP4_TCP = struct.Struct("!BBHHHBBH4s4sHHIIHHHH")
#: IPv6 header and TCP header in one Struct.
IP6_TCP = struct.Struct("!IHBB16s16sHHIIHHHH")
_U16 = struct.Struct("!H")
_II = struct.Struct("!II")
_TS_PREFIX = b"\x01\x01\x08\x0a"

_FLAG_NAMES = ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, "."), (URG, "U"),
               (ECE, "E"), (CWR, "W"))


def flags_str(flags: int) -> str:
    """tcpdump-style flag letters, e.g. ``S.`` for SYN-ACK."""
    return "".join(c for f, c in _FLAG_NAMES if flags & f) or "none"


class TcpSegment:
    """A parsed (or to-be-emitted) TCP segment. Option fields are None when absent.

    ``seq`` and ``ack`` are raw 32-bit wire values. ``sack`` is a tuple of ``(left, right)``
    wire pairs. ``payload`` is a view into the packet (no copy) or any bytes-like object.
    """

    __slots__ = (
        "ack",
        "bad_options",
        "dst_port",
        "flags",
        "header_len",
        "mss",
        "payload",
        "sack",
        "sack_permitted",
        "seq",
        "src_port",
        "ts_ecr",
        "ts_val",
        "urgent",
        "window",
        "wscale",
    )

    def __init__(
        self,
        src_port: int,
        dst_port: int,
        seq: int = 0,
        ack: int = 0,
        flags: int = 0,
        window: int = 0,
        urgent: int = 0,
        payload: bytes | bytearray | memoryview = b"",
        *,
        mss: int | None = None,
        wscale: int | None = None,
        sack_permitted: bool = False,
        sack: tuple[tuple[int, int], ...] | None = None,
        ts_val: int | None = None,
        ts_ecr: int | None = None,
        header_len: int = 20,
        bad_options: bool = False,
    ) -> None:
        self.src_port = src_port
        self.dst_port = dst_port
        self.seq = seq
        self.ack = ack
        self.flags = flags
        self.window = window
        self.urgent = urgent
        self.payload = payload
        self.mss = mss
        self.wscale = wscale
        self.sack_permitted = sack_permitted
        self.sack = sack
        self.ts_val = ts_val
        self.ts_ecr = ts_ecr
        self.header_len = header_len
        self.bad_options = bad_options

    def options_bytes(self) -> bytes:
        """The options of this record encoded as :func:`build_options` would."""
        ts = (self.ts_val, self.ts_ecr or 0) if self.ts_val is not None else None
        return build_options(
            mss=self.mss,
            wscale=self.wscale,
            sack_permitted=self.sack_permitted,
            timestamp=ts,
            sack=self.sack,
        )

    def key(self) -> tuple[object, ...]:
        """A tuple of every field (payload as bytes) for equality and hashing in tests."""
        return (
            self.src_port,
            self.dst_port,
            self.seq,
            self.ack,
            self.flags,
            self.window,
            self.urgent,
            bytes(self.payload),
            self.mss,
            self.wscale,
            self.sack_permitted,
            self.sack,
            self.ts_val,
            (self.ts_ecr or 0) if self.ts_val is not None else None,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TcpSegment):
            return NotImplemented
        return self.key() == other.key()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        opts = []
        if self.mss is not None:
            opts.append(f"mss {self.mss}")
        if self.wscale is not None:
            opts.append(f"wscale {self.wscale}")
        if self.sack_permitted:
            opts.append("sackOK")
        if self.sack:
            opts.append("sack " + " ".join(f"{a}:{b}" for a, b in self.sack))
        if self.ts_val is not None:
            opts.append(f"TS val {self.ts_val} ecr {self.ts_ecr}")
        o = f" <{', '.join(opts)}>" if opts else ""
        return (
            f"TcpSegment({self.src_port} > {self.dst_port} [{flags_str(self.flags)}] "
            f"seq {self.seq} ack {self.ack} win {self.window} len {len(self.payload)}{o})"
        )


def parse_tcp(data: bytes | bytearray | memoryview, start: int, end: int) -> TcpSegment:
    """Parse the TCP segment occupying ``data[start:end]`` (checksum not verified here).

    Raises:
        MalformedPacket: ``tcp-truncated``, ``tcp-offset``, ``tcp-flags`` or ``tcp-port``.
    """
    if end - start < 20:
        raise MalformedPacket("tcp-truncated")
    sport, dport, seq, ack, offflags, window, _csum, urgent = TCP_HEADER.unpack_from(data, start)
    hlen = (offflags >> 10) & 0x3C
    if hlen < 20 or start + hlen > end:
        raise MalformedPacket("tcp-offset")
    flags = offflags & 0x1FF  # including the ninth bit (NS, AccECN's AE)
    if flags & SYN and flags & (FIN | RST):
        raise MalformedPacket("tcp-flags")
    if not sport or not dport:
        raise MalformedPacket("tcp-port")
    seg = TcpSegment(
        sport,
        dport,
        seq,
        ack,
        flags,
        window,
        urgent,
        memoryview(data)[start + hlen : end],
        header_len=hlen,
    )
    if hlen > 20:
        ostart = start + 20
        oend = start + hlen
        if hlen == 32 and data[ostart : ostart + 4] == _TS_PREFIX:
            seg.ts_val, seg.ts_ecr = _II.unpack_from(data, ostart + 4)
        else:
            _parse_options(seg, data, ostart, oend)
    return seg


def _parse_options(seg: TcpSegment, data: bytes | bytearray | memoryview, i: int, end: int) -> None:
    """Decode options in ``data[i:end]`` into ``seg``; stop at the first malformed length."""
    while i < end:
        kind = data[i]
        if kind == OPT_EOL:
            return
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            seg.bad_options = True
            return
        length = data[i + 1]
        if length < 2 or i + length > end:
            seg.bad_options = True
            return
        if kind == OPT_MSS:
            if length == 4:
                seg.mss = _U16.unpack_from(data, i + 2)[0]
        elif kind == OPT_WINDOW_SCALE:
            if length == 3:
                seg.wscale = data[i + 2]
        elif kind == OPT_SACK_PERMITTED:
            if length == 2:
                seg.sack_permitted = True
        elif kind == OPT_SACK:
            nblocks, rem = divmod(length - 2, 8)
            if not rem and 1 <= nblocks <= 4:
                seg.sack = tuple(
                    _II.unpack_from(data, i + 2 + 8 * k) for k in range(nblocks)
                )
        elif kind == OPT_TIMESTAMP:
            if length == 10:
                seg.ts_val, seg.ts_ecr = _II.unpack_from(data, i + 2)
        i += length


def build_options(
    *,
    mss: int | None = None,
    wscale: int | None = None,
    sack_permitted: bool = False,
    timestamp: tuple[int, int] | None = None,
    sack: tuple[tuple[int, int], ...] | list[tuple[int, int]] | None = None,
) -> bytes:
    """Encode TCP options, NOP-padded to a multiple of 4 bytes (at most 40 bytes).

    The layout follows Linux so packets look ordinary on the wire: ``MSS``, then
    ``SACK-permitted`` + ``TS`` (or ``NOP NOP TS``), then ``NOP WS``, then ``NOP NOP SACK``.
    """
    out = bytearray()
    if mss is not None:
        out += b"\x02\x04" + _U16.pack(mss)
    if sack_permitted and timestamp is not None:
        out += b"\x04\x02\x08\x0a" + _II.pack(*timestamp)
    else:
        if timestamp is not None:
            out += b"\x01\x01\x08\x0a" + _II.pack(*timestamp)
        if sack_permitted:
            out += b"\x01\x01\x04\x02"
    if wscale is not None:
        out += b"\x01\x03\x03" + bytes((wscale,))
    if sack:
        room = (40 - len(out) - 2) // 8
        blocks = list(sack)[: max(0, min(4, room))]
        if blocks:
            out += b"\x01\x01\x05" + bytes((2 + 8 * len(blocks),))
            for left, right in blocks:
                out += _II.pack(left & 0xFFFFFFFF, right & 0xFFFFFFFF)
    # Every block above is a multiple of 4 bytes and the SACK blocks are cut to the room
    # left, so the result is aligned and at most 40 bytes long.
    return bytes(out)


def emit_tcp_packet(
    src: bytes,
    dst: bytes,
    seg: TcpSegment,
    *,
    options: bytes | None = None,
    ttl: int = 64,
    ident: int = 0,
    checksum_offload: bool = False,
) -> bytearray:
    """Build a whole IPv4 or IPv6 packet carrying ``seg`` in one buffer, checksums filled.

    The IP version follows the address length. ``options`` overrides the record's option
    fields with pre-encoded bytes. With ``checksum_offload`` the TCP checksum field holds the
    folded pseudo-header sum for a device that completes it (virtio ``NEEDS_CSUM``).
    """
    opts = seg.options_bytes() if options is None else options
    payload = seg.payload
    tcp_len = 20 + len(opts) + len(payload)
    offflags = ((20 + len(opts)) << 10) | (seg.flags & 0x1FF)
    if len(src) == 4:
        hl = 20
        buf = bytearray(hl + tcp_len)
        IP4_TCP.pack_into(
            buf, 0, 0x45, 0, hl + tcp_len, ident, 0x4000, ttl, IPPROTO_TCP, 0, src, dst,
            seg.src_port, seg.dst_port, seg.seq & 0xFFFFFFFF, seg.ack & 0xFFFFFFFF, offflags,
            seg.window, 0, seg.urgent,
        )
        c = finish(ones_sum(memoryview(buf)[:20]))
        buf[10] = c >> 8
        buf[11] = c & 0xFF
    else:
        hl = 40
        buf = bytearray(hl + tcp_len)
        IP6_TCP.pack_into(
            buf, 0, 0x60000000, tcp_len, IPPROTO_TCP, ttl, src, dst,
            seg.src_port, seg.dst_port, seg.seq & 0xFFFFFFFF, seg.ack & 0xFFFFFFFF, offflags,
            seg.window, 0, seg.urgent,
        )
    o = hl + 20
    if opts:
        buf[o : o + len(opts)] = opts
        o += len(opts)
    if payload:
        buf[o:] = payload
    pseudo = (int.from_bytes(src, "big") + int.from_bytes(dst, "big") + IPPROTO_TCP + tcp_len)
    if checksum_offload:
        s = pseudo % 0xFFFF
        c = s if s else 0xFFFF
    else:
        c = finish(ones_sum(memoryview(buf)[hl:], pseudo))
    buf[hl + 16] = c >> 8
    buf[hl + 17] = c & 0xFF
    return buf


def build_rst(
    local: bytes, app: bytes, local_port: int, app_port: int, seq: int, ack: int, flags: int,
    offload: bool = False,
) -> bytearray:
    """A bare RST from ``local`` to ``app`` (no options); with ``offload`` the TCP checksum
    field holds the pseudo-header sum for the device to complete, like every TCP packet."""
    if len(local) == 4:
        buf = bytearray(40)
        IP4_TCP.pack_into(
            buf, 0, 0x45, 0, 40, 0, 0x4000, 64, 6, 0, local, app, local_port, app_port,
            seq & SEQ_MASK, ack & SEQ_MASK, (5 << 12) | flags, 0, 0, 0,
        )
        c = finish(ones_sum(memoryview(buf)[:20]))
        buf[10] = c >> 8
        buf[11] = c & 0xFF
        h = 20
    else:
        buf = bytearray(60)
        IP6_TCP.pack_into(
            buf, 0, 0x60000000, 20, 6, 64, local, app, local_port, app_port,
            seq & SEQ_MASK, ack & SEQ_MASK, (5 << 12) | flags, 0, 0, 0,
        )
        h = 40
    pseudo = int.from_bytes(local, "big") + int.from_bytes(app, "big") + 6 + 20
    if offload:
        c = pseudo % 0xFFFF or 0xFFFF
    else:
        c = finish(ones_sum(memoryview(buf)[h:], pseudo))
    buf[h + 16] = c >> 8
    buf[h + 17] = c & 0xFF
    return buf
