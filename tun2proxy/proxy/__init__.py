"""Sans-I/O upstream handshakes: SOCKS5 (CONNECT, UDP ASSOCIATE), SOCKS4/4a, HTTP CONNECT.

Pure: no I/O. Each handshake is fed the upstream's bytes in any split and reports
``NEED_DATA``, ``Established(trailing, bound)`` or ``Failed(reason, message)``; bytes that
followed the reply are never lost (see :mod:`tun2proxy.proxy.base`, whose
:class:`~tun2proxy.proxy.base.HandshakeBase` they share). :mod:`tun2proxy.proxy.address` is
the one SOCKS address codec; the Shadowsocks codecs are the :mod:`tun2proxy.proxy.shadowsocks`
package; sing-box's UDP-over-TCP framing is :mod:`tun2proxy.proxy.uot`.
"""

from __future__ import annotations

from .address import Address, decode_socks_address, encode_socks_address
from .base import (
    NEED_DATA,
    Established,
    Failed,
    Handshake,
    HandshakeBase,
    HandshakeEvent,
    NeedData,
)
from .http_connect import HttpConnectHandshake
from .socks4 import Socks4Handshake
from .socks5 import Socks5Handshake, decode_udp_datagram, encode_udp_datagram

__all__ = [
    "NEED_DATA",
    "Address",
    "Established",
    "Failed",
    "Handshake",
    "HandshakeBase",
    "HandshakeEvent",
    "HttpConnectHandshake",
    "NeedData",
    "Socks4Handshake",
    "Socks5Handshake",
    "decode_socks_address",
    "decode_udp_datagram",
    "encode_socks_address",
    "encode_udp_datagram",
]
