"""TcpRelay: one TCP flow between the NetStack and its upstream stream, with backpressure.

The relay is the upstream transport's :class:`asyncio.Protocol`. It moves bytes both ways
without a task per chunk:

* upstream -> app: ``data_received`` hands bytes to ``NetStack.send``; what the flow's send
  buffer cannot take is kept (one chunk at most) and the upstream socket is paused until the
  stack reports ``TcpWritable``.
* app -> upstream: on ``TcpReadable`` the relay ``recv``s from the flow and writes to the
  transport — only while the transport is not paused for writing. Not reading keeps the data
  in the flow's receive buffer, which closes the app's TCP window: backpressure.

Half-close is exact: the app's FIN becomes ``write_eof`` once its bytes are written; the
upstream's EOF becomes our FIN after the queued bytes. Resets propagate both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import cast

from ..errors import FlowStateError
from .host import RelayHost

__all__ = ["TcpRelay"]

log = logging.getLogger(__name__)


class TcpRelay(asyncio.Protocol):
    """Bridges one NetStack TCP flow and one upstream transport."""

    __slots__ = (
        "accepted",
        "app_eof",
        "bytes_down",
        "bytes_up",
        "closed",
        "driver",
        "eof_written",
        "fin_sent",
        "first_eof",
        "flow_id",
        "lost",
        "on_connected",
        "stash",
        "transport",
        "upstream_eof",
        "write_paused",
    )

    def __init__(self, driver: RelayHost, flow_id: int) -> None:
        self.driver = driver
        self.flow_id = flow_id
        self.transport: asyncio.Transport | None = None
        self.accepted = False
        self.stash = b""
        self.upstream_eof = False
        self.fin_sent = False
        self.app_eof = False
        self.eof_written = False
        self.write_paused = False
        self.closed = False
        #: Payload bytes moved app -> upstream and upstream -> app (for flow snapshots).
        self.bytes_up = 0
        self.bytes_down = 0
        #: Who closed first: ``app`` (its FIN), ``upstream`` (EOF), or "" (neither yet).
        self.first_eof = ""
        #: How the upstream connection broke, when it did (for the flow's end record).
        self.lost: str | None = None
        #: Called once when the upstream stream is ready (the driver accepts the flow there,
        #: in the wake-up that brought the proxy's reply, not when the dial's task resumes).
        self.on_connected: Callable[[], None] | None = None

    # ------------------------------------------------------------------ upstream side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The upstream stream is ready (after any proxy handshake)."""
        # Not isinstance: uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        cb = self.on_connected
        if cb is not None:
            self.on_connected = None
            cb()

    def data_received(self, data: bytes) -> None:
        """Bytes from the upstream: into the flow's send buffer, or stash and pause."""
        if self.closed:
            return
        if self.stash or not self.accepted:
            # Not accepted yet (a server that speaks first) or the flow is full.
            self.stash += data
            self._pause_upstream()
            return
        try:
            n = self.driver.stack.send(self.flow_id, data)
        except FlowStateError:
            return
        self.bytes_down += n
        if n < len(data):
            self.stash = data[n:]
            self._pause_upstream()
        self.driver.schedule_pump()

    def eof_received(self) -> bool:
        """The upstream finished sending: our FIN follows the queued bytes."""
        if not self.first_eof:
            self.first_eof = "upstream"
        self.upstream_eof = True
        self._maybe_fin()
        return True  # keep the transport open: the app may still be sending (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        """The upstream stream is gone: RST the app on error, else finish like an EOF."""
        if self.closed:
            return
        self.closed = True
        stack = self.driver.stack
        if self.flow_id not in stack:
            return
        if exc is not None:
            log.debug("flow %d: upstream lost: %s", self.flow_id, exc)
            self.lost = str(exc) or type(exc).__name__
            with contextlib.suppress(FlowStateError):
                stack.abort(self.flow_id)
        else:
            if not self.first_eof:
                self.first_eof = "upstream"
            self.upstream_eof = True
            self._maybe_fin()
        self.driver.schedule_pump()

    def pause_writing(self) -> None:
        """The upstream transport's buffer is full: stop taking bytes from the flow."""
        self.write_paused = True

    def resume_writing(self) -> None:
        """Room again upstream: take what the app sent meanwhile."""
        self.write_paused = False
        self.on_readable()
        self.driver.schedule_pump()

    def _pause_upstream(self) -> None:
        t = self.transport
        if t is not None and t.is_reading():
            t.pause_reading()

    def _resume_upstream(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing() and not t.is_reading():
            t.resume_reading()

    # ------------------------------------------------------------------ stack side

    def on_accepted(self) -> None:
        """The SYN-ACK is queued (or, with immediate accept, the flow is handed over): bytes
        the upstream sent early may flow now, and bytes the app already sent are taken."""
        self.accepted = True
        if self.stash:
            self.on_writable()
        elif not self.upstream_eof:
            self._resume_upstream()
        self._maybe_fin()
        stack = self.driver.stack
        with contextlib.suppress(FlowStateError):
            if stack.connection(self.flow_id).peer_fin:
                if not self.first_eof:
                    self.first_eof = "app"
                self.app_eof = True
            if stack.readable(self.flow_id) or self.app_eof:
                self.on_readable()

    def on_readable(self) -> None:
        """The app sent bytes: move them upstream unless the upstream is full."""
        t = self.transport
        if t is None or self.write_paused or self.eof_written or self.closed:
            return
        stack = self.driver.stack
        try:
            data = stack.recv(self.flow_id)
        except FlowStateError:
            return
        if data:
            self.bytes_up += len(data)
            t.write(data)
        if self.app_eof and not self.eof_written:
            self._write_eof()

    def on_writable(self) -> None:
        """The flow's send buffer has room: flush the stash and resume the upstream."""
        if self.closed and not self.stash:
            return
        stack = self.driver.stack
        if self.stash:
            try:
                n = stack.send(self.flow_id, self.stash)
            except FlowStateError:
                self.stash = b""
                return
            self.bytes_down += n
            self.stash = self.stash[n:]
        if not self.stash:
            if not self.upstream_eof:
                self._resume_upstream()
            self._maybe_fin()

    def on_peer_closed(self) -> None:
        """The app closed its sending side: pass the EOF on after its bytes."""
        if not self.first_eof:
            self.first_eof = "app"
        self.app_eof = True
        self.on_readable()

    def on_closed(self, reason: str) -> None:
        """The flow is over: close the upstream gracefully, or abort it after a reset."""
        self.closed = True
        t = self.transport
        if t is None:
            return
        if reason == "closed":
            t.close()
        else:
            t.abort()

    def _write_eof(self) -> None:
        t = self.transport
        assert t is not None
        if self.driver.stack.readable(self.flow_id):
            return  # more app bytes first (the transport was paused)
        self.eof_written = True
        if t.can_write_eof():
            try:
                t.write_eof()
            except OSError as e:
                # The upstream was reset before the transport noticed (shutdown() says
                # ENOTCONN): the stream is broken, so the app gets a reset, as for any
                # upstream error.
                t.abort()
                self.connection_lost(e)
        else:
            t.close()

    def _maybe_fin(self) -> None:
        if self.upstream_eof and not self.stash and not self.fin_sent and self.accepted:
            stack = self.driver.stack
            try:
                stack.shutdown(self.flow_id)
            except FlowStateError:
                return
            self.fin_sent = True
            self.driver.schedule_pump()
