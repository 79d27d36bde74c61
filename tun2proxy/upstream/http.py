"""The ``http://`` upstream: HTTP CONNECT (RFC 9110 §9.3.6) through an HTTP proxy, Basic auth.

The proxy is reached over plain TCP; TLS to the proxy (``https://``) is not supported. UDP is
not carried (HTTP CONNECT has no datagram form here), so UDP flows get ICMP port unreachable.
"""

from __future__ import annotations

import asyncio
import urllib.parse

from ..errors import ConfigError, UpstreamError
from ..proxy.address import Address
from ..proxy.http_connect import HttpConnectHandshake
from .base import FlowInfo, Upstream
from .handshake import open_via_handshake
from .url import credentials, parse_host_port

__all__ = ["DEFAULT_PORT", "HttpConnectUpstream", "from_url"]

#: The port of ``http://host`` without one (the usual HTTP proxy port, as curl and tinyproxy
#: documentation examples use; not 80, which would be the web server's).
DEFAULT_PORT = 8080


class HttpConnectUpstream(Upstream):
    """Open flows with HTTP CONNECT through the proxy at ``host:port``.

    Destinations known by name (virtual DNS, sniffing) are sent as host names, so the proxy
    resolves them. A non-2xx answer fails the flow with the handshake's reason: 407 (and 401,
    which some proxies send for wrong credentials) is ``auth``, 403/405 ``denied``,
    502/503/504 ``unreachable``, anything else ``error``.
    """

    name = "http"

    def __init__(self, host: str, port: int, *, auth: tuple[str, str] | None = None) -> None:
        if auth is not None and ":" in auth[0]:
            raise ValueError("a Basic auth user name cannot contain ':' (RFC 7617)")
        self.host = host
        self.port = port
        self.auth = auth

    async def open_tcp(
        self, dst: Address, protocol: asyncio.Protocol, flow: FlowInfo
    ) -> asyncio.Transport:
        """CONNECT to ``dst`` (or to ``flow.domain`` when known) through the proxy."""
        target = Address(flow.domain, dst.port) if flow.domain else dst
        try:
            hs = HttpConnectHandshake(target, auth=self.auth)
        except ValueError as e:  # a host name that cannot be written in a request line
            msg = f"HTTP proxy: cannot CONNECT to {target}: {e}"
            raise UpstreamError(msg, "unsupported") from None
        what = f"HTTP proxy {Address(self.host, self.port)}"
        try:
            return await open_via_handshake(
                self.host, self.port, hs, protocol, what, egress=self.egress
            )
        except UpstreamError as e:
            code = hs.status_code
            if code == 407 or code == 401:
                # A proxy asks with 407 (RFC 9110 §15.5.8), but tinyproxy 1.11 answers wrong
                # Basic credentials with 401; a CONNECT can get a 401 from nobody else.
                hint = "rejected the credentials" if self.auth else "wants credentials"
                raise UpstreamError(f"{e} (the proxy {hint})", "auth") from None
            raise

    def describe(self) -> str:
        """``http://host:port`` (credentials hidden)."""
        user = "user:***@" if self.auth else ""
        return f"http://{user}{Address(self.host, self.port)}"


def from_url(u: urllib.parse.SplitResult, raw: str) -> HttpConnectUpstream:
    """Build the upstream of ``http://[user:pass@]host[:port]`` (port 8080 by default).

    Raises:
        ConfigError: ``https://`` (TLS to the proxy is not supported), or a malformed URL.
    """
    if u.scheme.lower() == "https":
        raise ConfigError(
            f"proxy URL {raw!r}: https:// (TLS to the proxy) is not supported; use http://"
        )
    host, port = parse_host_port(u, raw, DEFAULT_PORT)
    auth = credentials(u, raw)
    if auth is not None and ":" in auth[0]:
        raise ConfigError(f"proxy URL {raw!r}: an HTTP Basic auth user name cannot contain ':'")
    return HttpConnectUpstream(host, port, auth=auth)
