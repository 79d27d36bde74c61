"""Run a sans-I/O proxy handshake over a fresh TCP connection, then hand the stream over.

The :class:`~tun2proxy.proxy.base.Handshake` objects of :mod:`tun2proxy.proxy` only parse and
produce bytes; this module gives them a socket. Once the handshake reports ``Established``,
the transport's protocol is switched to the relay's, and any bytes that arrived after the
proxy's reply are delivered to it first — nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import cast

from ..errors import UpstreamError
from ..proxy.base import Established, Failed, Handshake
from .base import upstream_error_from_os
from .dial import Egress, Outbound, connect_tcp

__all__ = ["open_via_handshake"]


class _HandshakeProtocol(asyncio.Protocol):
    def __init__(
        self, hs: Handshake, final: asyncio.Protocol, done: asyncio.Future[asyncio.Transport],
        what: str,
    ) -> None:
        self.hs = hs
        self.final = final
        self.done = done
        self.what = what
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance: uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        out = self.hs.bytes_to_send()
        if out:
            self.transport.write(out)
        self._advance()

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        self.hs.receive_data(data)
        self._advance()

    def eof_received(self) -> bool:
        if not self.done.done():
            self.hs.receive_data(b"")
            self._advance()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            msg = f"{self.what}: connection closed during the handshake"
            if exc is not None:
                msg += f" ({exc})"
            self.done.set_exception(UpstreamError(msg, "protocol"))

    def _advance(self) -> None:
        t = self.transport
        assert t is not None
        out = self.hs.bytes_to_send()
        if out:
            t.write(out)
        ev = self.hs.next_event()
        if isinstance(ev, Established):
            t.set_protocol(self.final)
            self.final.connection_made(t)
            self.done.set_result(t)
            if ev.trailing:
                self.final.data_received(ev.trailing)
        elif isinstance(ev, Failed):
            t.abort()
            self.done.set_exception(UpstreamError(f"{self.what}: {ev.message}", ev.reason))


async def open_via_handshake(
    host: str, port: int, hs: Handshake, protocol: asyncio.Protocol, what: str,
    *, outbound: Outbound | None = None, egress: Egress | None = None,
) -> asyncio.Transport:
    """Connect to the proxy at ``host:port``, run ``hs``, attach ``protocol``; return the transport.

    Raises:
        UpstreamError: the proxy could not be reached or the handshake failed. Cancelling
            the call (a timeout) aborts the connection.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[asyncio.Transport] = loop.create_future()
    hp = _HandshakeProtocol(hs, protocol, done, what)
    try:
        await connect_tcp(host, port, lambda: hp, outbound, egress=egress)
    except OSError as e:
        raise upstream_error_from_os(e, f"{what} at {host}:{port}") from None
    try:
        return await done
    except BaseException:
        if hp.transport is not None and not done.done():
            hp.transport.abort()
        with contextlib.suppress(BaseException):
            if done.done() and not done.cancelled() and done.exception() is None:
                done.result().abort()
        raise
