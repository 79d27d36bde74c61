"""The pcapng capture format, encoded (pure: bytes in, bytes out; timestamps come in).

A capture is one Section Header Block, one Interface Description Block (link type
``LINKTYPE_RAW``: every packet is a bare IPv4 or IPv6 packet, as on a TUN device; timestamps in
nanoseconds) and one Enhanced Packet Block per packet, carrying its direction in
``epb_flags`` (inbound: read from the link, i.e. sent by an app; outbound: written to it).
Little-endian throughout (readers follow the byte-order magic). See
draft-ietf-opsawg-pcapng.
"""

from __future__ import annotations

import struct

__all__ = [
    "INBOUND",
    "LINKTYPE_RAW",
    "OUTBOUND",
    "epb_size",
    "header",
    "packet_block",
]

#: ``LINKTYPE_RAW``: raw IPv4/IPv6, the version nibble says which.
LINKTYPE_RAW = 101
#: ``epb_flags`` direction bits (bits 0-1).
INBOUND = 1
OUTBOUND = 2

_SHB = 0x0A0D0D0A
_IDB = 0x00000001
_EPB = 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_END = b"\x00\x00\x00\x00"
_EPB_HEAD = struct.Struct("<IIIIIII")  # type, length, interface, ts high, ts low, caplen, len
_EPB_FLAGS = struct.Struct("<HHI")  # epb_flags option: code 2, length 4, value
_U32 = struct.Struct("<I")
#: Bytes an EPB adds around the packet data (header, epb_flags, end of options, length).
_EPB_OVERHEAD = _EPB_HEAD.size + _EPB_FLAGS.size + len(_OPT_END) + 4
_FLAGS = {INBOUND: _EPB_FLAGS.pack(2, 4, INBOUND) + _OPT_END,
          OUTBOUND: _EPB_FLAGS.pack(2, 4, OUTBOUND) + _OPT_END}
_PAD = (b"", b"\x00", b"\x00\x00", b"\x00\x00\x00")


def _option(code: int, value: bytes) -> bytes:
    pad = (-len(value)) % 4
    return struct.pack("<HH", code, len(value)) + value + b"\x00" * pad


def _block(kind: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", kind, length) + body + _U32.pack(length)


def header(interface: str = "tun", application: str = "tun2proxy", snaplen: int = 0) -> bytes:
    """The blocks a capture starts with: the section header and the one interface
    (``snaplen`` 0: packets are not truncated)."""
    shb = struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1)
    shb += _option(4, application.encode()[:200]) + _OPT_END  # shb_userappl
    idb = struct.pack("<HHI", LINKTYPE_RAW, 0, snaplen)
    idb += _option(2, interface.encode()[:200])  # if_name
    idb += _option(9, b"\x09")  # if_tsresol: 10^-9 s
    idb += _OPT_END
    return _block(_SHB, shb) + _block(_IDB, idb)


def epb_size(length: int, snaplen: int = 0) -> int:
    """Bytes of the Enhanced Packet Block of a packet of ``length`` bytes (cut to
    ``snaplen`` bytes when that is smaller; 0: whole)."""
    if snaplen and length > snaplen:
        length = snaplen
    return _EPB_OVERHEAD + length + ((-length) & 3)


def packet_block(
    packet: bytes, ts_ns: int, direction: int, snaplen: int = 0, length: int = 0
) -> list[bytes]:
    """The Enhanced Packet Block of one packet, as parts to join (no copy of a whole
    packet here): ``ts_ns`` nanoseconds since the epoch, ``direction`` :data:`INBOUND` or
    :data:`OUTBOUND`; at most ``snaplen`` bytes of it are kept (0: all); ``length``: the
    packet's whole length when ``packet`` was cut already (0: its own length)."""
    n = length or len(packet)
    if snaplen and n > snaplen:
        packet = packet[:snaplen]
    cap = len(packet)
    pad = (-cap) & 3
    total = _EPB_OVERHEAD + cap + pad
    head = _EPB_HEAD.pack(_EPB, total, 0, (ts_ns >> 32) & 0xFFFFFFFF, ts_ns & 0xFFFFFFFF, cap, n)
    return [head, packet, _PAD[pad] + _FLAGS[direction] + _U32.pack(total)]
