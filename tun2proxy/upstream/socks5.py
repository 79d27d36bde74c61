"""The ``socks5://`` upstream: RFC 1928 CONNECT through a SOCKS5 proxy (RFC 1929 auth)."""

from __future__ import annotations

import asyncio
import time
import urllib.parse

from ..errors import UpstreamError
from ..proxy.address import Address
from ..proxy.socks5 import Socks5Handshake
from .base import DatagramReceiver, FlowInfo, UdpChannel, Upstream
from .handshake import open_via_handshake
from .udp import open_socks5_udp
from .url import credentials, parse_host_port

__all__ = ["DEFAULT_PORT", "UDP_UNSUPPORTED_BACKOFF", "Socks5Upstream", "from_url"]

#: After a proxy said it cannot do UDP, do not ask again for this long (tun2proxy#171).
UDP_UNSUPPORTED_BACKOFF = 60.0
#: The port of ``socks5://host`` without one.
DEFAULT_PORT = 1080


class Socks5Upstream(Upstream):
    """Open flows with SOCKS5 CONNECT through the proxy at ``host:port``.

    Destinations known by name (virtual DNS, sniffing) are sent as domain names, so the
    proxy resolves them.
    """

    name = "socks5"

    def __init__(self, host: str, port: int, *, auth: tuple[str, str] | None = None) -> None:
        self.host = host
        self.port = port
        self.auth = auth
        self._udp_unsupported_until = 0.0

    async def open_tcp(
        self, dst: Address, protocol: asyncio.Protocol, flow: FlowInfo
    ) -> asyncio.Transport:
        """CONNECT to ``dst`` (or to ``flow.domain`` when known) through the proxy."""
        target = Address(flow.domain, dst.port) if flow.domain else dst
        hs = Socks5Handshake(target, auth=self.auth)
        return await open_via_handshake(
            self.host, self.port, hs, protocol, "SOCKS5 proxy", egress=self.egress
        )

    async def open_udp(self, flow: FlowInfo, receiver: DatagramReceiver) -> UdpChannel:
        """UDP ASSOCIATE through the proxy (remembered for a while if the proxy refuses)."""
        if time.monotonic() < self._udp_unsupported_until:
            raise UpstreamError("SOCKS5 proxy does not support UDP ASSOCIATE", "unsupported")
        try:
            return await open_socks5_udp(
                self.host, self.port, self.auth, receiver, egress=self.egress
            )
        except UpstreamError as e:
            if e.reason in ("unsupported", "denied", "error", "protocol"):
                self._udp_unsupported_until = time.monotonic() + UDP_UNSUPPORTED_BACKOFF
            raise

    def describe(self) -> str:
        """``socks5://host:port`` (credentials hidden)."""
        user = "user:***@" if self.auth else ""
        return f"socks5://{user}{Address(self.host, self.port)}"


def from_url(u: urllib.parse.SplitResult, raw: str) -> Socks5Upstream:
    """Build the upstream of ``socks5://[user:pass@]host[:port]`` (or ``socks5h://``; port
    1080 by default).

    Raises:
        ConfigError: a malformed URL.
    """
    host, port = parse_host_port(u, raw, DEFAULT_PORT)
    return Socks5Upstream(host, port, auth=credentials(u, raw))
