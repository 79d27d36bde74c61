"""The ``socks4://`` and ``socks4a://`` upstreams: CONNECT through a SOCKS4 or SOCKS4a proxy.

SOCKS4 carries only IPv4 destinations. SOCKS4a adds destinations by name, which the proxy
resolves; so with ``socks4a://`` a flow whose name is known (virtual DNS, sniffing) goes by
name, and only then can an IPv6 flow get through. Anything SOCKS4 cannot express fails the
flow with reason ``unsupported`` (the application gets a reset). UDP is not carried.
"""

from __future__ import annotations

import asyncio
import urllib.parse

from ..errors import ConfigError, UpstreamError
from ..proxy.address import Address
from ..proxy.socks4 import Socks4Handshake
from .base import FlowInfo, Upstream
from .handshake import open_via_handshake
from .url import parse_host_port, unquote_strict

__all__ = ["DEFAULT_PORT", "Socks4Upstream", "from_url"]

#: The port of ``socks4://host`` without one.
DEFAULT_PORT = 1080
_MAX_USER_ID = 255


class Socks4Upstream(Upstream):
    """Open flows with SOCKS4 (or, with ``socks4a=True``, SOCKS4a) CONNECT through a proxy.

    ``user_id`` is the USERID field of the request (SOCKS4 has no password; some servers
    check it against identd or an allow list).
    """

    def __init__(self, host: str, port: int, *, user_id: str = "", socks4a: bool) -> None:
        uid = user_id.encode("utf-8")
        if b"\x00" in uid or len(uid) > _MAX_USER_ID:
            raise ValueError(f"a SOCKS4 user id is at most {_MAX_USER_ID} bytes without NUL")
        self.host = host
        self.port = port
        self.user_id = user_id
        self.socks4a = socks4a
        #: ``socks4a`` or ``socks4``.
        self.name = "socks4a" if socks4a else "socks4"

    def _target(self, dst: Address, flow: FlowInfo) -> Address:
        """The address to put in the request, or UpstreamError when SOCKS4 cannot carry it."""
        if self.socks4a:
            if flow.domain:
                return Address(flow.domain, dst.port)
            ip = dst.ip
            if ip is None or ip.version == 4:
                return dst
        else:
            ip = dst.ip
            if ip is not None and ip.version == 4:
                return dst
            if ip is None:
                raise UpstreamError(
                    f"{self.name} proxy: cannot CONNECT to the name {dst.host!r}: SOCKS4 needs an"
                    " IPv4 address (use socks4a:// to let the proxy resolve names)",
                    "unsupported",
                )
        raise UpstreamError(
            f"{self.name} proxy: cannot CONNECT to the IPv6 address {dst}: SOCKS4 carries IPv4"
            " destinations only",
            "unsupported",
        )

    async def open_tcp(
        self, dst: Address, protocol: asyncio.Protocol, flow: FlowInfo
    ) -> asyncio.Transport:
        """CONNECT to ``dst`` through the proxy (by ``flow.domain`` when known and 4a)."""
        target = self._target(dst, flow)
        try:
            hs = Socks4Handshake(target, user_id=self.user_id, allow_domain=self.socks4a)
        except ValueError as e:  # 0.0.0.x, or a name SOCKS4a cannot carry
            raise UpstreamError(f"{self.name} proxy: {e}", "unsupported") from None
        what = f"{self.name.upper()} proxy {Address(self.host, self.port)}"
        return await open_via_handshake(
            self.host, self.port, hs, protocol, what, egress=self.egress
        )

    def describe(self) -> str:
        """``socks4://host:port`` or ``socks4a://...`` (the user id hidden)."""
        user = "***@" if self.user_id else ""
        return f"{self.name}://{user}{Address(self.host, self.port)}"


def from_url(u: urllib.parse.SplitResult, raw: str) -> Socks4Upstream:
    """Build the upstream of ``socks4://[userid@]host[:port]`` or ``socks4a://...`` (port 1080).

    Raises:
        ConfigError: a password (SOCKS4 has none), a bad user id, or a malformed URL.
    """
    socks4a = u.scheme.lower() == "socks4a"
    host, port = parse_host_port(u, raw, DEFAULT_PORT)
    user_id = ""
    if u.password is not None:
        raise ConfigError(
            f"proxy URL {raw!r}: SOCKS4 has no password; give only a user id (socks4://ID@host)"
        )
    if u.username is not None:
        user_id = unquote_strict(u.username, raw, "user id")
        if not user_id:
            raise ConfigError(f"proxy URL {raw!r}: empty user id before '@'")
        uid = user_id.encode("utf-8")
        if b"\x00" in uid:
            raise ConfigError(f"proxy URL {raw!r}: the user id contains NUL")
        if len(uid) > _MAX_USER_ID:
            raise ConfigError(f"proxy URL {raw!r}: the user id is limited to 255 bytes")
    return Socks4Upstream(host, port, user_id=user_id, socks4a=socks4a)
