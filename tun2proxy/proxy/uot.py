"""UDP-over-TCP (sing-box's ``uot`` protocol, versions 1 and 2), sans-I/O.

Pure: no I/O. The client opens a TCP stream through its proxy (SOCKS5 CONNECT, Shadowsocks)
to a magic destination, port 0 — :data:`MAGIC_V2` (``sp.v2.udp-over-tcp.arpa``) or, for
version 1, :data:`MAGIC_V1` (``sp.udp-over-tcp.arpa``) — and the stream then carries
datagrams. The reference is sagernet/sing ``common/uot`` (``protocol.go``, ``conn.go``,
``lazy.go``); every byte below follows it:

* version 2 starts with a request (``EncodeRequest``): one byte ``IsConnect`` (0 or 1), then
  the request destination in the SOCKS5 form (``M.SocksaddrSerializer``: ATYP 1 IPv4,
  3 domain, 4 IPv6 — :func:`~tun2proxy.proxy.address.encode_socks_address`). Version 1 has
  no request.
* then each datagram, both ways. Non-connect mode (version 1 always, version 2 with
  ``IsConnect`` 0): the peer's address in *uot's own* form (``uot.AddrParser``: family byte
  **0x00 IPv4, 0x01 IPv6, 0x02 domain** — not SOCKS5's 1/4/3 —, the address, a big-endian
  port), then a big-endian 16-bit length, then the payload. Connect mode: length and payload
  only, the peer being the request's destination.

:func:`encode_request` and :func:`encode_packet` build the client's bytes;
:class:`UotDecoder` parses what the server sends, in any split or coalescing.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

from ..errors import MalformedPacket
from .address import Address, domain_bytes, encode_socks_address

__all__ = [
    "FAMILY_DOMAIN",
    "FAMILY_IPV4",
    "FAMILY_IPV6",
    "MAGIC_V1",
    "MAGIC_V2",
    "MAX_PAYLOAD",
    "UOT_BAD_FAMILY",
    "UOT_BAD_NAME",
    "UotDecoder",
    "decode_uot_address",
    "encode_packet",
    "encode_request",
    "encode_uot_address",
    "magic_address",
]

#: The destination that asks for UoT version 2 (``uot.MagicAddress``), with port 0.
MAGIC_V2: Final = "sp.v2.udp-over-tcp.arpa"
#: The destination that asks for UoT version 1 (``uot.LegacyMagicAddress``), with port 0.
MAGIC_V1: Final = "sp.udp-over-tcp.arpa"
#: uot's address family byte for IPv4 (``M.AddressFamilyByte(0x00, M.AddressFamilyIPv4)``).
FAMILY_IPV4: Final = 0x00
#: uot's address family byte for IPv6 (``0x01``).
FAMILY_IPV6: Final = 0x01
#: uot's address family byte for a domain name (``0x02``; one length byte, then the name).
FAMILY_DOMAIN: Final = 0x02
#: The largest payload one frame carries (the length field is 16 bits).
MAX_PAYLOAD: Final = 0xFFFF
#: :class:`~tun2proxy.errors.MalformedPacket` reason: an unknown address family byte.
UOT_BAD_FAMILY: Final = "uot-address-family"
#: :class:`~tun2proxy.errors.MalformedPacket` reason: a domain name that is not UTF-8 or empty.
UOT_BAD_NAME: Final = "uot-address-name"

_U16 = struct.Struct("!H")


def magic_address(version: int) -> Address:
    """The destination of the TCP stream that asks for UoT ``version`` (1 or 2), port 0."""
    if version == 2:
        return Address(MAGIC_V2, 0)
    if version == 1:
        return Address(MAGIC_V1, 0)
    raise ValueError(f"UoT version {version}: only 1 and 2 exist")


def encode_uot_address(addr: Address) -> bytes:
    """``addr`` in uot's own form: family byte (0 IPv4, 1 IPv6, 2 domain), address, port.

    Raises:
        ValueError: a domain name longer than 255 bytes (or empty).
    """
    ip = addr.ip
    port = _U16.pack(addr.port)
    if ip is None:
        name = domain_bytes(addr.host)
        if not 1 <= len(name) <= 255:
            raise ValueError(f"domain name {addr.host!r} is {len(name)} bytes; UoT allows 1-255")
        return bytes((FAMILY_DOMAIN, len(name))) + name + port
    if ip.version == 4:
        return bytes((FAMILY_IPV4,)) + ip.packed + port
    return bytes((FAMILY_IPV6,)) + ip.packed + port


def encode_request(dst: Address, *, connect: bool = False) -> bytes:
    """The version 2 request: ``IsConnect`` then ``dst`` in the SOCKS5 address form.

    Raises:
        ValueError: a domain name longer than 255 bytes.
    """
    return (b"\x01" if connect else b"\x00") + encode_socks_address(dst)


def encode_packet(payload: bytes, dst: Address | None) -> bytes:
    """One datagram as a frame: non-connect (``dst`` given) or connect mode (``dst`` None).

    Raises:
        ValueError: a payload over :data:`MAX_PAYLOAD` bytes, or a name over 255 bytes.
    """
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"a {len(payload)}-byte datagram does not fit a UoT frame")
    head = _U16.pack(len(payload))
    if dst is not None:
        head = encode_uot_address(dst) + head
    return head + payload


def decode_uot_address(
    data: bytes | bytearray | memoryview, offset: int = 0
) -> tuple[Address, int] | None:
    """Parse a uot address at ``data[offset:]``: (address, offset past the port), or None
    when ``data`` ends first (more may follow on the stream).

    An IPv4-mapped IPv6 address is returned as it came (the caller may unwrap it).

    Raises:
        MalformedPacket: :data:`UOT_BAD_FAMILY` or :data:`UOT_BAD_NAME`.
    """
    n = len(data)
    if n <= offset:
        return None
    fam = data[offset]
    if fam == FAMILY_IPV4:
        end = offset + 7
        if n < end:
            return None
        a = offset + 1
        host = "%d.%d.%d.%d" % (data[a], data[a + 1], data[a + 2], data[a + 3])  # noqa: UP031
    elif fam == FAMILY_IPV6:
        end = offset + 19
        if n < end:
            return None
        host = str(ipaddress.IPv6Address(bytes(data[offset + 1 : offset + 17])))
    elif fam == FAMILY_DOMAIN:
        if n < offset + 2:
            return None
        end = offset + 4 + data[offset + 1]
        if n < end:
            return None
        try:
            host = bytes(data[offset + 2 : end - 2]).decode("utf-8")
            addr = Address.from_host(host, _U16.unpack_from(data, end - 2)[0])
        except ValueError:  # empty, or not UTF-8
            raise MalformedPacket(UOT_BAD_NAME) from None
        return addr, end
    else:
        raise MalformedPacket(UOT_BAD_FAMILY)
    return Address(host, _U16.unpack_from(data, end - 2)[0]), end


class UotDecoder:
    """Frames from the server's byte stream: feed bytes in any split, get whole datagrams.

    In connect mode every datagram is reported from ``peer``. At most one frame (under
    64 KiB plus its address) is ever buffered. A malformed frame puts the stream out of step
    for good: :attr:`failed` then names the reason, further input is ignored, and the caller
    should close the stream. It never raises on the server's bytes.
    """

    __slots__ = ("_buf", "failed", "peer")

    def __init__(self, peer: Address | None = None) -> None:
        #: The connect-mode peer (None: non-connect mode, every frame names its address).
        self.peer = peer
        self._buf = bytearray()
        #: The :class:`MalformedPacket` reason once a malformed frame arrived, else None.
        self.failed: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame waiting for the rest."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[Address, bytes]]:
        """Parse ``data`` (appended to what waited): the complete datagrams, in order (those
        before a malformed frame included; check :attr:`failed` afterwards)."""
        if self.failed:
            return []
        buf = self._buf
        buf += data
        out: list[tuple[Address, bytes]] = []
        pos = 0
        n = len(buf)
        peer = self.peer
        try:
            while pos < n:
                if peer is None:
                    got = decode_uot_address(buf, pos)
                    if got is None:
                        break
                    src, at = got
                else:
                    src, at = peer, pos
                if n < at + 2:
                    break
                length = _U16.unpack_from(buf, at)[0]
                end = at + 2 + length
                if n < end:
                    break
                out.append((src, bytes(buf[at + 2 : end])))
                pos = end
        except MalformedPacket as e:
            self.failed = e.reason
            buf.clear()
            return out
        if pos:
            del buf[:pos]
        return out
