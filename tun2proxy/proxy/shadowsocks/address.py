"""The target address that starts a Shadowsocks request stream or packet (SOCKS5 form).

Pure: no I/O. The codec itself is :mod:`tun2proxy.proxy.address`'s; this module only says
its failures the Shadowsocks way (:class:`~.errors.ShadowsocksError`).
"""

from __future__ import annotations

from ...errors import MalformedPacket
from ..address import SOCKS_ADDRESS_TRUNCATED, Address, decode_socks_address, encode_socks_address
from .errors import ShadowsocksError

__all__ = ["decode_address", "encode_address"]


def encode_address(addr: Address) -> bytes:
    """The SOCKS5-style target address (ATYP, address, port; RFC 1928 §5) that starts a
    request stream or a UDP packet. ValueError for a domain name over 255 bytes."""
    return encode_socks_address(addr)


def decode_address(data: bytes | bytearray | memoryview) -> tuple[Address, int]:
    """Parse a SOCKS5-style address at the start of ``data``: (address, bytes consumed).

    Raises:
        ShadowsocksError: truncated, unknown ATYP, or an empty or non-UTF-8 domain name.
    """
    try:
        addr, end = decode_socks_address(data)
    except MalformedPacket as e:
        if e.reason == SOCKS_ADDRESS_TRUNCATED:
            raise ShadowsocksError("address header truncated") from None
        raise ShadowsocksError(f"address header has unknown type {data[0]:#04x}") from None
    if addr is None:
        raise ShadowsocksError("address header has an unusable domain name")
    return addr, end
