"""DatagramChannel: the base of every UdpChannel that runs over one UDP socket (I/O layer).

The direct, SOCKS5 and Shadowsocks UDP channels differ only in how a datagram is wrapped and
unwrapped; this base holds what they share: the socket under asyncio, its endpoint in the
own-endpoint registry of its :class:`~.egress.Egress` (routing-loop detection), the size
check of wrapped datagrams, and the end of the channel, which the receiver hears of once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any, Final

from .base import DatagramReceiver, UdpChannel, upstream_error_from_os
from .dial import Egress, Outbound, default_egress, udp_socket

__all__ = ["MAX_UDP_PAYLOAD", "DatagramChannel"]

log = logging.getLogger(__name__)

#: The largest UDP payload over IPv4: a wrapped datagram above it is dropped and counted.
MAX_UDP_PAYLOAD: Final = 65507


class _ChannelProtocol(asyncio.DatagramProtocol):
    """The socket's protocol: every datagram and the socket's end go to the channel."""

    def __init__(self, channel: DatagramChannel) -> None:
        self.channel = channel

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.channel.datagram_from_socket(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for one destination must not end a session that talks to many.
        log.debug("%s: udp error: %s", type(self.channel).__name__, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.channel.lost(exc)


class DatagramChannel(UdpChannel):
    """A :class:`UdpChannel` over one UDP socket; subclasses implement :meth:`send` and
    :meth:`datagram_from_socket` (the protocol's wrapping).

    Build it, then :meth:`attach` a socket (:meth:`attach_connected` for one connected to a
    relay or server, so the kernel drops datagrams from anyone else).
    """

    def __init__(self, receiver: DatagramReceiver, egress: Egress | None = None) -> None:
        self.receiver = receiver
        #: Whose socket this is: its endpoint goes in this egress's own-endpoint registry.
        self.egress = egress if egress is not None else default_egress()
        self.transport: asyncio.DatagramTransport | None = None
        #: Datagrams not sent because, wrapped, they exceed :data:`MAX_UDP_PAYLOAD`.
        self.dropped_too_big = 0
        self._closed = False
        self._endpoint: tuple[str, int] | None = None

    @property
    def closed(self) -> bool:
        """True once closed or lost."""
        return self._closed

    async def attach(self, sock: socket.socket, what: str) -> None:
        """Run ``sock`` under asyncio for this channel and remember its endpoint as ours.

        Raises:
            UpstreamError: asyncio refused the socket (it is closed).
        """
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _ChannelProtocol(self), sock=sock
            )
        except OSError as e:
            sock.close()
            raise upstream_error_from_os(e, what) from None
        self.transport = transport
        self._endpoint = self.egress.remember(sock)

    async def attach_connected(
        self, host: str, port: int, what: str, outbound: Outbound | None = None
    ) -> None:
        """:meth:`attach` a new socket connected to ``host:port`` (resolved here).

        Raises:
            UpstreamError: the name did not resolve or the socket could not be set up.
        """
        try:
            infos = await self.egress.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            if not infos:
                raise OSError(f"cannot resolve {host}")
            remote = (str(infos[0][4][0]), int(infos[0][4][1]))
            sock = udp_socket(infos[0][0], self.egress.outbound_for(outbound), remote=remote)
        except OSError as e:
            raise upstream_error_from_os(e, what) from None
        await self.attach(sock, what)

    def datagram_from_socket(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """A datagram arrived on the socket from ``addr``: unwrap it for the receiver."""
        raise NotImplementedError

    def send_wrapped(self, data: bytes) -> None:
        """Send an already wrapped datagram on the connected socket (too big: counted)."""
        t = self.transport
        if t is None or self._closed:
            return
        if len(data) > MAX_UDP_PAYLOAD:
            self.dropped_too_big += 1
            return
        with contextlib.suppress(OSError):
            t.sendto(data)

    def lost(self, exc: BaseException | None) -> None:
        """The channel ended under us (its socket, or what it depends on): close it and tell
        the receiver, once."""
        if self._closed:
            return
        self.close()
        self.receiver.channel_lost(exc)

    def close(self) -> None:
        """Close the socket (idempotent); the receiver is not told."""
        self._closed = True
        self.egress.forget(self._endpoint)
        self._endpoint = None
        if self.transport is not None:
            self.transport.close()
