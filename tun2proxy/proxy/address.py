"""Destination addresses as upstream protocols carry them: an IP address or a host name.

Pure: no I/O. :class:`Address` is the value; :func:`encode_socks_address` and
:func:`decode_socks_address` are its one wire codec in the SOCKS5 form (ATYP, address, port;
RFC 1928 §5), which SOCKS5 requests and replies, SOCKS5 UDP datagrams and Shadowsocks
headers all carry.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

from ..errors import MalformedPacket

__all__ = [
    "ATYP_DOMAIN",
    "ATYP_IPV4",
    "ATYP_IPV6",
    "SOCKS_ADDRESS_ATYP",
    "SOCKS_ADDRESS_TRUNCATED",
    "Address",
    "decode_socks_address",
    "domain_bytes",
    "encode_socks_address",
    "ip_of",
]

#: ATYP: an IPv4 address follows (4 bytes).
ATYP_IPV4: Final = 1
#: ATYP: a domain name follows (one length byte, then the name).
ATYP_DOMAIN: Final = 3
#: ATYP: an IPv6 address follows (16 bytes).
ATYP_IPV6: Final = 4
#: :class:`~tun2proxy.errors.MalformedPacket` reason: the address ends before its port.
SOCKS_ADDRESS_TRUNCATED: Final = "socks-address-truncated"
#: :class:`~tun2proxy.errors.MalformedPacket` reason: the ATYP byte is none of the three.
SOCKS_ADDRESS_ATYP: Final = "socks-address-atyp"

_PORT = struct.Struct("!H")


@dataclass(frozen=True, slots=True)
class Address:
    """Where a flow goes: ``host`` is an IPv4/IPv6 literal or a domain name, plus a port.

    Build with :meth:`from_host` (which normalises IP literals) or directly.
    """

    host: str
    port: int

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port {self.port} out of range")
        if not self.host:
            raise ValueError("empty host")

    @classmethod
    def from_host(cls, host: str, port: int) -> Address:
        """An address from text; IP literals are normalised (``[::1]`` brackets removed)."""
        return cls(_normal_host(host), port)

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The address as an IP object, or None for a domain name."""
        return ip_of(self.host)

    @property
    def is_domain(self) -> bool:
        """True when ``host`` is a name rather than an IP literal."""
        return self.ip is None

    def __str__(self) -> str:
        ip = self.ip
        if ip is not None and ip.version == 6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@functools.lru_cache(maxsize=4096)
def _normal_host(host: str) -> str:
    """``host`` normalised (see :meth:`Address.from_host`); cached: every flow to an address
    would parse it again."""
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    try:
        return str(ipaddress.ip_address(h))
    except ValueError:
        return h.rstrip(".").lower() if h.rstrip(".") else h


@functools.lru_cache(maxsize=4096)
def ip_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` parsed as an IP address (None for a name); cached: the same few addresses
    are parsed for every datagram of a UDP session."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def domain_bytes(host: str) -> bytes:
    """The wire form of a domain name: ASCII as is, otherwise IDNA (ValueError if invalid)."""
    try:
        return host.encode("ascii")
    except UnicodeEncodeError:
        return host.encode("idna")  # UnicodeError is a ValueError


def encode_socks_address(addr: Address) -> bytes:
    """ATYP, ADDR and PORT for ``addr`` (RFC 1928 §5); ValueError for names over 255 bytes."""
    ip = addr.ip
    port = _PORT.pack(addr.port)
    if ip is None:
        name = domain_bytes(addr.host)
        if not 1 <= len(name) <= 255:
            raise ValueError(f"domain name {addr.host!r} is {len(name)} bytes; SOCKS5 allows 1-255")
        return bytes((ATYP_DOMAIN, len(name))) + name + port
    if ip.version == 4:
        return bytes((ATYP_IPV4,)) + ip.packed + port
    return bytes((ATYP_IPV6,)) + ip.packed + port


def decode_socks_address(
    data: bytes | bytearray | memoryview, offset: int = 0
) -> tuple[Address | None, int]:
    """Parse ATYP, ADDR and PORT at ``data[offset:]``: (address, offset just past the port).

    The address is None when it is a domain name that is empty or not UTF-8: its bytes are
    still accounted for, and each caller decides whether that is an error. The ATYP byte is
    checked before the length, so an unknown type is reported as soon as it arrives.

    Raises:
        MalformedPacket: :data:`SOCKS_ADDRESS_TRUNCATED` (``data`` ends before the port; more
            may follow on a stream) or :data:`SOCKS_ADDRESS_ATYP` (unknown address type).
    """
    n = len(data)
    if n <= offset:
        raise MalformedPacket(SOCKS_ADDRESS_TRUNCATED)
    atyp = data[offset]
    if atyp == ATYP_IPV4:
        end = offset + 7
        if n < end:
            raise MalformedPacket(SOCKS_ADDRESS_TRUNCATED)
        a = offset + 1
        # Formatting the four bytes is faster than ipaddress for the hot UDP path.
        host = "%d.%d.%d.%d" % (data[a], data[a + 1], data[a + 2], data[a + 3])  # noqa: UP031
    elif atyp == ATYP_IPV6:
        end = offset + 19
        if n < end:
            raise MalformedPacket(SOCKS_ADDRESS_TRUNCATED)
        host = str(ipaddress.IPv6Address(bytes(data[offset + 1 : offset + 17])))
    elif atyp == ATYP_DOMAIN:
        if n < offset + 2:
            raise MalformedPacket(SOCKS_ADDRESS_TRUNCATED)
        end = offset + 4 + data[offset + 1]
        if n < end:
            raise MalformedPacket(SOCKS_ADDRESS_TRUNCATED)
        port: int = _PORT.unpack_from(data, end - 2)[0]
        try:
            return Address.from_host(bytes(data[offset + 2 : end - 2]).decode("utf-8"), port), end
        except ValueError:  # empty, or not UTF-8 (UnicodeDecodeError is a ValueError)
            return None, end
    else:
        raise MalformedPacket(SOCKS_ADDRESS_ATYP)
    return Address(host, _PORT.unpack_from(data, end - 2)[0]), end
