"""The ``direct://`` upstream: connect from this host's own network.

The embedded default when no proxy is given. Destinations given as host names are resolved
here (RFC 8305 happy eyeballs across the addresses, see :mod:`.dial`).

What the application asked for is checked again after resolution: no TCP connection and no
UDP datagram goes to an address of this host itself — loopback, unspecified, their
IPv4-mapped and other embedded forms — nor to a multicast or broadcast address
(:func:`tun2proxy.wire.addrclass.dial_refused`). The stack refuses such IP destinations
already; this catches names (virtual DNS, a sniffed host name, routing rules) that resolve
to one, e.g. ``localtest.me`` or a DNS-rebinding answer of ``127.0.0.1``.

Connections tun2proxy opens for itself (``FlowInfo.internal``: the DNS forwarder's resolver,
the udpgw server; destinations from its settings, never from packets) are not refused: a
resolver on ``127.0.0.53`` or a udpgw server on loopback is what the user configured.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.parse

from ..errors import ConfigError
from ..proxy.address import Address
from .base import DatagramReceiver, FlowInfo, UdpChannel, Upstream, upstream_error_from_os
from .dial import Outbound, connect_tcp
from .udp import open_direct_udp

__all__ = ["DirectUpstream", "from_url"]


class DirectUpstream(Upstream):
    """Connect straight to the destination.

    Args:
        bind: local address to bind outgoing connections to (None: let the kernel pick).
        interface: bind outgoing sockets to this device (``SO_BINDTODEVICE``), so they
            cannot loop back into the tunnel.
        fwmark: set ``SO_MARK`` on outgoing sockets (for policy routing).
        allow_local: also connect to this host's own addresses (loopback...). Off by default
            and never set by the command line: it lets whoever can send packets into the
            tunnel reach services bound to loopback. For tests against loopback servers.
    """

    name = "direct"
    #: Class-wide default of ``allow_local`` (a subclass for loopback tests may set it).
    allow_local = False

    def __init__(
        self,
        *,
        bind: str | None = None,
        interface: str | None = None,
        fwmark: int | None = None,
        allow_local: bool | None = None,
    ) -> None:
        self.bind = bind
        self.interface = interface
        self.fwmark = fwmark
        if allow_local is not None:
            self.allow_local = allow_local

    def _outbound(self) -> Outbound | None:
        if self.interface or self.fwmark is not None or self.bind:
            return Outbound(interface=self.interface, fwmark=self.fwmark, bind=self.bind)
        return None  # the egress's (--outbound-interface, --fwmark)

    async def open_tcp(
        self, dst: Address, protocol: asyncio.Protocol, flow: FlowInfo
    ) -> asyncio.Transport:
        """Connect to ``dst`` (resolving a name if needed) and attach ``protocol``; this
        host's own addresses are refused unless ``allow_local`` or ``flow.internal``."""
        try:
            transport, _ = await connect_tcp(
                dst.host, dst.port, lambda: protocol, self._outbound(),
                refuse_local=not (self.allow_local or flow.internal), egress=self.egress,
            )
        except OSError as e:
            raise upstream_error_from_os(e, f"direct connection to {dst}") from None
        return transport

    async def open_udp(self, flow: FlowInfo, receiver: DatagramReceiver) -> UdpChannel:
        """An unconnected UDP socket of the app's address family."""
        family = socket.AF_INET6 if ":" in flow.src[0] else socket.AF_INET
        return await open_direct_udp(
            family, receiver, outbound=self._outbound(),
            refuse_local=not (self.allow_local or flow.internal), egress=self.egress,
        )

    def describe(self) -> str:
        """``direct`` plus any binding."""
        extra = []
        if self.interface:
            extra.append(f"interface={self.interface}")
        if self.fwmark is not None:
            extra.append(f"fwmark={self.fwmark}")
        if self.bind:
            extra.append(f"bind={self.bind}")
        if self.allow_local:
            extra.append("local addresses allowed")
        return "direct" + (f" ({', '.join(extra)})" if extra else "")


def from_url(u: urllib.parse.SplitResult, raw: str) -> DirectUpstream:
    """Build the upstream of ``direct://`` (or ``none://``): no host, no path.

    Raises:
        ConfigError: the URL names a host or a path.
    """
    if u.netloc or u.path not in ("", "/"):
        raise ConfigError(f"proxy URL {raw!r}: direct:// takes no host or path")
    return DirectUpstream()
