"""tun2proxy: a pure-Python userspace TCP/IP stack that routes TUN traffic through proxies.

Raw IP packets from a TUN device (or a host's packet flow) are terminated by a sans-I/O
:class:`NetStack` and bridged to an upstream: SOCKS5, Shadowsocks, HTTP CONNECT or direct.

Layers (see ``docs/architecture.md``): :mod:`tun2proxy.wire` (packets), :mod:`tun2proxy.tcp`
(one connection), :mod:`tun2proxy.udp`, :mod:`tun2proxy.stack` (NetStack), and
:mod:`tun2proxy.proxy` (handshake codecs) are pure; the I/O layers build on them.
"""

from __future__ import annotations

from ._version import __version__
from .errors import ConfigError, FlowStateError, MalformedPacket, Tun2ProxyError, UpstreamError
from .stack import (
    Endpoint,
    Event,
    NetStack,
    StackConfig,
    TcpClosed,
    TcpConnectRequest,
    TcpPeerClosed,
    TcpReadable,
    TcpWritable,
    UdpDatagram,
    UdpSessionClosed,
)
from .tcp import TcpConfig

__all__ = [
    "ConfigError",
    "Endpoint",
    "Event",
    "FlowStateError",
    "MalformedPacket",
    "NetStack",
    "StackConfig",
    "TcpClosed",
    "TcpConfig",
    "TcpConnectRequest",
    "TcpPeerClosed",
    "TcpReadable",
    "TcpWritable",
    "Tun2ProxyError",
    "UdpDatagram",
    "UdpSessionClosed",
    "UpstreamError",
    "__version__",
]
