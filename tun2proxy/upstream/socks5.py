"""The ``socks5://`` upstream: RFC 1928 CONNECT through a SOCKS5 proxy (RFC 1929 auth).

UDP goes by UDP ASSOCIATE (:mod:`.udp`), to the relay the proxy names or to
``?udp-relay=ADDR:PORT``; with ``?uot=2`` (or ``1``) it goes instead as sing-box's
UDP-over-TCP, one CONNECT stream per UDP session (:mod:`.uot`). ``?pipeline=1`` sends the
greeting, the authentication and the request in one write (one round trip to the proxy
instead of two or three); off by default, because some servers (microsocks) drop what follows
the greeting and never answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse

from ..errors import ConfigError, UpstreamError
from ..proxy.address import Address
from ..proxy.socks5 import Socks5Handshake
from .base import DatagramReceiver, FlowInfo, UdpChannel, Upstream
from .handshake import open_via_handshake
from .udp import open_socks5_udp
from .uot import open_uot_udp
from .url import (
    PIPELINE_OPTION,
    UDP_RELAY_OPTION,
    UOT_OPTION,
    UrlOption,
    credentials,
    parse_host_port,
    query_options,
)

__all__ = ["DEFAULT_PORT", "OPTIONS", "UDP_UNSUPPORTED_BACKOFF", "Socks5Upstream", "from_url"]

#: After a proxy said it cannot do UDP, do not ask again for this long (tun2proxy#171).
UDP_UNSUPPORTED_BACKOFF = 60.0
#: The port of ``socks5://host`` without one.
DEFAULT_PORT = 1080
#: The query parameters of ``socks5://`` URLs.
OPTIONS: dict[str, UrlOption] = {
    o.key: o for o in (UOT_OPTION, UDP_RELAY_OPTION, PIPELINE_OPTION)
}
#: How often (seconds) the hint about a server that does not take pipelining is logged.
PIPELINE_HINT_INTERVAL = 60.0

log = logging.getLogger("tun2proxy")


class Socks5Upstream(Upstream):
    """Open flows with SOCKS5 CONNECT through the proxy at ``host:port``.

    Destinations known by name (virtual DNS, sniffing) are sent as domain names, so the
    proxy resolves them. ``uot`` (1 or 2) carries UDP as UDP-over-TCP streams instead of
    UDP ASSOCIATE; ``udp_relay`` overrides the relay address UDP ASSOCIATE replies name;
    ``pipeline`` sends the whole handshake in one write.
    """

    name = "socks5"

    def __init__(
        self, host: str, port: int, *, auth: tuple[str, str] | None = None,
        uot: int | None = None, udp_relay: Address | None = None, pipeline: bool = False,
    ) -> None:
        if uot not in (None, 1, 2):
            raise ValueError(f"UoT version {uot}: only 1 and 2 exist")
        self.host = host
        self.port = port
        self.auth = auth
        self.uot = uot
        self.udp_relay = udp_relay
        self.pipeline = pipeline
        self._udp_unsupported_until = 0.0
        self._pipeline_hint_at = float("-inf")

    async def open_tcp(
        self, dst: Address, protocol: asyncio.Protocol, flow: FlowInfo
    ) -> asyncio.Transport:
        """CONNECT to ``dst`` (or to ``flow.domain`` when known) through the proxy."""
        target = Address(flow.domain, dst.port) if flow.domain else dst
        hs = Socks5Handshake(target, auth=self.auth, pipeline=self.pipeline)
        try:
            return await open_via_handshake(
                self.host, self.port, hs, protocol, "SOCKS5 proxy", egress=self.egress
            )
        except asyncio.CancelledError:  # the dial timed out (or we are stopping)
            if self.pipeline and hs.method is not None and hs.reply_code is None:
                self._pipeline_hint()
            raise

    def _pipeline_hint(self) -> None:
        """Say why a pipelined handshake may hang: the proxy answered the greeting, never
        the request that came with it (rate-limited)."""
        now = time.monotonic()
        if now - self._pipeline_hint_at < PIPELINE_HINT_INTERVAL:
            return
        self._pipeline_hint_at = now
        log.warning(
            "SOCKS5 proxy %s:%d answered the greeting but not the pipelined request: it may "
            "not accept pipelining (microsocks does not); remove ?pipeline=1 from --proxy",
            self.host, self.port,
        )

    async def open_udp(self, flow: FlowInfo, receiver: DatagramReceiver) -> UdpChannel:
        """UDP ASSOCIATE through the proxy (remembered for a while if the proxy refuses), or
        a UoT stream with ``uot``."""
        if self.uot is not None:
            return await open_uot_udp(self, flow, receiver, self.uot)
        if time.monotonic() < self._udp_unsupported_until:
            raise UpstreamError("SOCKS5 proxy does not support UDP ASSOCIATE", "unsupported")
        try:
            return await open_socks5_udp(
                self.host, self.port, self.auth, receiver, relay=self.udp_relay,
                egress=self.egress, pipeline=self.pipeline,
            )
        except UpstreamError as e:
            if e.reason in ("unsupported", "denied", "error", "protocol"):
                self._udp_unsupported_until = time.monotonic() + UDP_UNSUPPORTED_BACKOFF
            raise

    def describe(self) -> str:
        """``socks5://host:port`` (credentials hidden)."""
        user = "user:***@" if self.auth else ""
        query = [f"uot={self.uot}"] if self.uot else []
        if self.pipeline:
            query.append("pipeline=1")
        if self.udp_relay is not None:
            query.append(f"udp-relay={self.udp_relay}")
        tail = "?" + "&".join(query) if query else ""
        return f"socks5://{user}{Address(self.host, self.port)}{tail}"


def from_url(u: urllib.parse.SplitResult, raw: str) -> Socks5Upstream:
    """Build the upstream of
    ``socks5://[user:pass@]host[:port][?uot=2&udp-relay=ADDR:PORT&pipeline=1]``
    (or ``socks5h://``; port 1080 by default).

    Raises:
        ConfigError: a malformed URL, an unknown query parameter or a bad value.
    """
    host, port = parse_host_port(u, raw, DEFAULT_PORT)
    opts = query_options(u.query, raw, u.scheme.lower(), OPTIONS)
    if "uot" in opts and "udp-relay" in opts:
        raise ConfigError(
            f"proxy URL {raw!r}: 'udp-relay' is for UDP ASSOCIATE and has no use with 'uot'"
        )
    return Socks5Upstream(
        host, port, auth=credentials(u, raw), uot=opts.get("uot"),
        udp_relay=opts.get("udp-relay"), pipeline=opts.get("pipeline", False),
    )
