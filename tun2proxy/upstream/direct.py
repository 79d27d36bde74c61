"""The ``direct://`` upstream: connect from this host's own network.

The embedded default when no proxy is given. Destinations given as host names are resolved
here (happy eyeballs across the addresses).
"""

from __future__ import annotations

import asyncio
import socket

from ..errors import UpstreamError
from ..proxy.address import Address
from .base import DatagramReceiver, FlowInfo, UdpChannel, Upstream, upstream_error_from_os

__all__ = ["DirectUpstream"]


class DirectUpstream(Upstream):
    """Connect straight to the destination.

    Args:
        bind: local address to bind outgoing connections to (None: let the kernel pick).
        interface: bind outgoing sockets to this device (``SO_BINDTODEVICE``), so they
            cannot loop back into the tunnel.
        fwmark: set ``SO_MARK`` on outgoing sockets (for policy routing).
    """

    name = "direct"

    def __init__(
        self, *, bind: str | None = None, interface: str | None = None, fwmark: int | None = None
    ) -> None:
        self.bind = bind
        self.interface = interface
        self.fwmark = fwmark

    def _socket_options(self, sock: socket.socket) -> None:
        if self.interface:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode())
        if self.fwmark is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.fwmark)

    async def open_tcp(
        self, dst: Address, protocol: asyncio.Protocol, flow: FlowInfo
    ) -> asyncio.Transport:
        """Connect to ``dst`` (resolving a name if needed) and attach ``protocol``."""
        loop = asyncio.get_running_loop()
        try:
            if self.interface or self.fwmark is not None or self.bind:
                sock = await self._connect_socket(loop, dst)
                transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
            else:
                transport, _ = await loop.create_connection(
                    lambda: protocol, dst.host, dst.port, happy_eyeballs_delay=0.25
                )
        except OSError as e:
            raise upstream_error_from_os(e, f"direct connection to {dst}") from None
        return transport

    async def open_udp(self, flow: FlowInfo, receiver: DatagramReceiver) -> UdpChannel:
        """An unconnected UDP socket of the app's address family."""
        from .udp import open_direct_udp

        family = socket.AF_INET6 if ":" in flow.src[0] else socket.AF_INET
        return await open_direct_udp(
            family, receiver, interface=self.interface, fwmark=self.fwmark
        )

    async def _connect_socket(
        self, loop: asyncio.AbstractEventLoop, dst: Address
    ) -> socket.socket:
        infos = await loop.getaddrinfo(dst.host, dst.port, type=socket.SOCK_STREAM)
        if not infos:
            raise UpstreamError(f"cannot resolve {dst.host}", "unreachable")
        last: OSError | None = None
        for family, type_, proto, _name, addr in infos:
            sock = socket.socket(family, type_, proto)
            try:
                sock.setblocking(False)
                self._socket_options(sock)
                if self.bind:
                    sock.bind((self.bind, 0))
                await loop.sock_connect(sock, addr)
                return sock
            except OSError as e:
                sock.close()
                last = e
        assert last is not None
        raise last

    def describe(self) -> str:
        """``direct`` plus any binding."""
        extra = []
        if self.interface:
            extra.append(f"interface={self.interface}")
        if self.fwmark is not None:
            extra.append(f"fwmark={self.fwmark}")
        if self.bind:
            extra.append(f"bind={self.bind}")
        return "direct" + (f" ({', '.join(extra)})" if extra else "")
