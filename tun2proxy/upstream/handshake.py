"""Run a sans-I/O proxy handshake over a fresh TCP connection, then hand the stream over.

The :class:`~tun2proxy.proxy.base.Handshake` objects of :mod:`tun2proxy.proxy` only parse and
produce bytes; this module gives them a socket. Once the handshake reports ``Established``,
the transport's protocol is switched to the relay's, and any bytes that arrived after the
proxy's reply are delivered to it first — nothing is lost.

The transport is attached while the connect to the proxy is still in progress
(:func:`~.dial.connect_tcp_early`): the handshake's first bytes are queued at once and leave
when the socket connects, and a refused or unreachable proxy shows up as the transport's loss
before any reply, reported with the same reason a failed connect has.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import cast

from ..errors import UpstreamError
from ..proxy.base import Established, Failed, Handshake
from .base import upstream_error_from_os
from .dial import Egress, Outbound, connect_tcp_early

__all__ = ["open_via_handshake"]


class _HandshakeProtocol(asyncio.Protocol):
    """Feeds a proxy's replies to the handshake, its requests to the socket, until it ends."""

    def __init__(
        self, hs: Handshake, final: asyncio.Protocol, done: asyncio.Future[asyncio.Transport],
        what: str, where: str,
    ) -> None:
        self.hs = hs
        self.final = final
        self.done = done
        self.what = what
        #: ``what at host:port``, for a connect that failed.
        self.where = where
        self.transport: asyncio.Transport | None = None
        #: Whether the proxy has sent anything (then the socket is connected).
        self.answered = False
        #: Ends the socket's place in the egress registry (set by open_via_handshake).
        self.settle: Callable[[], None] | None = None

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
        if not self.answered:
            self.answered = True
            self.end_registration()
        self.hs.receive_data(data)
        self._advance()

    def eof_received(self) -> bool:
        if not self.done.done():
            self.hs.receive_data(b"")
            self._advance()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.end_registration()
        if self.done.done():
            return
        if isinstance(exc, OSError) and not self.answered:
            # The connect itself failed (refused, unreachable, timed out in the kernel).
            self.done.set_exception(upstream_error_from_os(exc, self.where))
            return
        msg = f"{self.what}: connection closed during the handshake"
        if exc is not None:
            msg += f" ({exc})"
        self.done.set_exception(UpstreamError(msg, "protocol"))

    def end_registration(self) -> None:
        """End the socket's place in the egress registry (once)."""
        cb, self.settle = self.settle, None
        if cb is not None:
            cb()

    def _advance(self) -> None:
        t = self.transport
        assert t is not None
        out = self.hs.bytes_to_send()
        if out:
            t.write(out)
        ev = self.hs.next_event()
        if isinstance(ev, Established):
            self.end_registration()
            t.set_protocol(self.final)
            self.final.connection_made(t)
            self.done.set_result(t)
            if ev.trailing:
                self.final.data_received(ev.trailing)
        elif isinstance(ev, Failed):
            self.end_registration()
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
    where = f"{what} at {host}:{port}"
    hp = _HandshakeProtocol(hs, protocol, done, what, where)
    try:
        _t, _p, settle = await connect_tcp_early(host, port, lambda: hp, outbound, egress=egress)
    except OSError as e:
        raise upstream_error_from_os(e, where) from None
    if done.done() or hp.answered:
        settle()  # the handshake is over already (the proxy answered at once)
    else:
        hp.settle = settle
    try:
        return await done
    except BaseException:
        hp.end_registration()
        if hp.transport is not None and not done.done():
            hp.transport.abort()
        with contextlib.suppress(BaseException):
            if done.done() and not done.cancelled() and done.exception() is None:
                done.result().abort()
        raise
