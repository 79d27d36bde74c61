"""The badvpn udpgw wire codec: UDP datagrams multiplexed over one TCP stream.

Pure: no I/O. The format is badvpn's (``protocol/packetproto.h``, ``protocol/udpgw_proto.h``
and ``udpgw/udpgw.c`` in ambrop72/badvpn), byte for byte as its C code writes it:

* every message is framed by PacketProto: a 16-bit **little-endian** length, then that many
  bytes (at most 65,535);
* the message starts with the udpgw header: ``flags`` (1 byte) and ``conid`` (uint16,
  **little-endian**: the C code uses ``htol16``/``ltoh16``);
* unless ``KEEPALIVE`` is set, the address follows: 4 address bytes and a 2-byte port, both
  in **network order** (the C code copies ``BAddr``'s network-order fields unchanged), or,
  with the ``IPV6`` flag, 16 address bytes and the port;
* then the datagram's payload.

Flags: ``KEEPALIVE`` (1) — nothing else is read; ``REBIND`` (2) — the server drops the
conid's old socket first; ``DNS`` (4) — the server sends to its own resolver instead of the
address; ``IPV6`` (8) — a 16-byte address. The server keeps one UDP socket per conid and
replaces it when a conid's address changes, so a client uses one conid per destination.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from ..errors import MalformedPacket

__all__ = [
    "FLAG_DNS",
    "FLAG_IPV6",
    "FLAG_KEEPALIVE",
    "FLAG_REBIND",
    "MAX_MESSAGE",
    "UdpgwDecoder",
    "UdpgwMessage",
    "UdpgwProtocolError",
    "encode_keepalive",
    "encode_message",
    "max_payload",
]

FLAG_KEEPALIVE: Final = 0x01
FLAG_REBIND: Final = 0x02
FLAG_DNS: Final = 0x04
FLAG_IPV6: Final = 0x08
#: PacketProto's limit: the length field is 16 bits.
MAX_MESSAGE: Final = 0xFFFF

_LEN = struct.Struct("<H")
_HEAD = struct.Struct("<BH")  # flags, conid (little-endian)
_PORT = struct.Struct("!H")  # ports travel in network order
_HEAD_LEN: Final = 3


class UdpgwProtocolError(MalformedPacket):
    """A udpgw message that breaks the format (its ``reason`` says how)."""


@dataclass(frozen=True, slots=True)
class UdpgwMessage:
    """One decoded udpgw message (``addr`` is empty for a keepalive)."""

    flags: int
    conid: int
    addr: bytes
    port: int
    payload: bytes

    @property
    def keepalive(self) -> bool:
        """Whether this is a keepalive (no address, no datagram)."""
        return bool(self.flags & FLAG_KEEPALIVE)


def max_payload(v6: bool) -> int:
    """The largest datagram one message can carry to an IPv4 (or IPv6) address."""
    return MAX_MESSAGE - _HEAD_LEN - (18 if v6 else 6)


def encode_message(flags: int, conid: int, addr: bytes, port: int, payload: bytes) -> bytes:
    """One framed message carrying ``payload`` to ``addr:port`` (4 or 16 address bytes; the
    ``IPV6`` flag follows the address length).

    Raises:
        ValueError: a bad address length, conid, port or flags, or a payload too big to frame.
    """
    if len(addr) == 16:
        flags |= FLAG_IPV6
    elif len(addr) == 4:
        flags &= ~FLAG_IPV6
    else:
        raise ValueError("a udpgw address is 4 or 16 bytes")
    if not 0 <= conid <= 0xFFFF or not 0 <= port <= 0xFFFF or not 0 <= flags <= 0xFF:
        raise ValueError("conid, port and flags must fit their fields")
    size = _HEAD_LEN + len(addr) + 2 + len(payload)
    if size > MAX_MESSAGE:
        raise ValueError(f"a {len(payload)}-byte datagram does not fit one udpgw message")
    return b"".join(
        (_LEN.pack(size), _HEAD.pack(flags, conid), addr, _PORT.pack(port), payload)
    )


def encode_keepalive(conid: int = 0) -> bytes:
    """A framed keepalive. It carries an all-zero IPv4 address, as the badvpn versions whose
    header still held the address expect: 9 bytes after the length, which newer servers read
    as a 3-byte header and ignore the rest."""
    return _LEN.pack(_HEAD_LEN + 6) + _HEAD.pack(FLAG_KEEPALIVE, conid) + bytes(6)


class UdpgwDecoder:
    """Turns a byte stream into :class:`UdpgwMessage` values, in any split.

    Bounded: at most one message (65,537 bytes) waits in the buffer beyond what was fed and
    not yet read. :meth:`next_message` consumes a malformed message before raising, so the
    caller may count it and go on — the framing stays in step.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as messages."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes from the stream."""
        self._buf += data

    def next_message(self) -> UdpgwMessage | None:
        """The next complete message, or None until more bytes arrive.

        Raises:
            UdpgwProtocolError: the next message is too short for its header or address
                (it is consumed).
        """
        buf = self._buf
        if len(buf) < 2:
            return None
        (size,) = _LEN.unpack_from(buf, 0)
        end = 2 + size
        if len(buf) < end:
            return None
        msg = bytes(buf[2:end])
        del buf[:end]
        return _parse(msg)

    def messages(self) -> list[UdpgwMessage]:
        """Every complete message (raises as :meth:`next_message`; those before stay read)."""
        out: list[UdpgwMessage] = []
        while (m := self.next_message()) is not None:
            out.append(m)
        return out


def _parse(msg: bytes) -> UdpgwMessage:
    if len(msg) < _HEAD_LEN:
        raise UdpgwProtocolError("udpgw-short-header")
    flags, conid = _HEAD.unpack_from(msg, 0)
    if flags & FLAG_KEEPALIVE:
        return UdpgwMessage(flags, conid, b"", 0, b"")
    alen = 16 if flags & FLAG_IPV6 else 4
    if len(msg) < _HEAD_LEN + alen + 2:
        raise UdpgwProtocolError("udpgw-short-address")
    addr = msg[_HEAD_LEN:_HEAD_LEN + alen]
    (port,) = _PORT.unpack_from(msg, _HEAD_LEN + alen)
    return UdpgwMessage(flags, conid, addr, port, msg[_HEAD_LEN + alen + 2:])
