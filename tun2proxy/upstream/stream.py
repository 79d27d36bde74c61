"""SocketTransport: a TCP socket as an asyncio transport, driven by the loop's reader and
writer callbacks (I/O).

Made synchronously — no coroutine, no waiter future, no task — and usable while its
``connect()`` is still in progress: what the protocol writes first is queued and leaves when
the socket becomes writable, and a refused or unreachable peer arrives as
``connection_lost(OSError)``. So a proxy dial (:func:`~.handshake.open_via_handshake`) makes
its socket, connects and queues its greeting in one step, and handles the proxy's replies in
the reader callback that brings them.

It keeps the :class:`asyncio.Transport` contract the relays rely on (the same one asyncio's
selector transport keeps, and which ``tun2proxy.testing.conformance`` checks end to end):
``connection_made`` first (here: inside the constructor), ``data_received`` with what
``recv`` returned, ``eof_received`` (True keeps the transport open for writing: half-close),
``connection_lost`` exactly once and always from the loop (``call_soon``), never from inside
the call that caused it; ``pause_writing``/``resume_writing`` around the write buffer's high
and low water marks; ``write_eof`` once the buffer is flushed; ``close`` after the buffer,
``abort`` at once. The socket's addresses are read only when asked for (``get_extra_info``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

__all__ = ["SocketTransport"]

log = logging.getLogger(__name__)

#: Bytes read per ``recv`` (asyncio's selector transport reads the same).
MAX_READ = 256 * 1024
#: Default write-buffer marks (asyncio's defaults).
HIGH_WATER = 64 * 1024
LOW_WATER = HIGH_WATER // 4


class SocketTransport(asyncio.Transport):
    """One non-blocking TCP socket under one protocol (see the module docstring)."""

    __slots__ = (
        "_at_eof",
        "_buffer",
        "_closing",
        "_eof",
        "_fd",
        "_high",
        "_loop",
        "_lost",
        "_low",
        "_protocol",
        "_protocol_paused",
        "_reading",
        "_sock",
        "_writing",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: asyncio.Protocol
    ) -> None:
        super().__init__()
        self._loop = loop
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._buffer = bytearray()
        self._closing = False  # close() or abort() called, or the connection failed
        self._eof = False  # write_eof() called
        self._at_eof = False  # the peer finished sending
        self._lost = False  # connection_lost() scheduled
        self._reading = False
        self._writing = False  # the writer callback is registered
        self._protocol_paused = False
        self._high = HIGH_WATER
        self._low = LOW_WATER
        protocol.connection_made(self)
        if not self._closing:
            self._reading = True
            loop.add_reader(self._fd, self._on_readable)

    # ------------------------------------------------------------------ reading

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None or not self._reading:
            return
        try:
            data = sock.recv(MAX_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        if data:
            try:
                self._protocol.data_received(data)
            except Exception as exc:  # as asyncio's transport: the protocol's bug ends it
                log.exception("%r: data_received() failed", self._protocol)
                self._force_close(exc)
            return
        # The peer finished sending: nothing more to read, ever.
        self._at_eof = True
        self._stop_reading()
        try:
            keep_open = self._protocol.eof_received()
        except Exception as exc:
            log.exception("%r: eof_received() failed", self._protocol)
            self._force_close(exc)
            return
        if not keep_open:
            self.close()

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def is_reading(self) -> bool:
        """Whether the transport is receiving (not paused, not closing)."""
        return self._reading

    def pause_reading(self) -> None:
        """Stop calling ``data_received`` until :meth:`resume_reading`."""
        if not self._closing:
            self._stop_reading()

    def resume_reading(self) -> None:
        """Receive again after :meth:`pause_reading`."""
        if self._closing or self._reading or self._at_eof or self._sock is None:
            return
        self._reading = True
        self._loop.add_reader(self._fd, self._on_readable)

    # ------------------------------------------------------------------ writing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` now as far as the socket takes it; buffer the rest."""
        if self._eof:
            raise RuntimeError("cannot write after write_eof()")
        if self._closing or not data:
            return
        sock = self._sock
        assert sock is not None
        if not self._buffer:
            try:
                n = sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._fatal(exc)
                return
            if n == len(data):
                return
            data = memoryview(data)[n:]
            self._writing = True
            self._loop.add_writer(self._fd, self._on_writable)
        self._buffer += data
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Any) -> None:
        """:meth:`write` each item."""
        for data in list_of_data:
            self.write(data)

    def _on_writable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            n = sock.send(self._buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        if n:
            del self._buffer[:n]
        self._maybe_resume_protocol()
        if self._buffer:
            return
        self._writing = False
        self._loop.remove_writer(self._fd)
        if self._closing:
            self._connection_lost_soon(None)
        elif self._eof:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._fatal(exc)

    def write_eof(self) -> None:
        """Finish sending (``shutdown(SHUT_WR)`` once the buffer is out); reading goes on.

        Raises:
            OSError: the socket refused the shutdown (e.g. ``ENOTCONN`` after a reset), as
                asyncio's own transport does when the buffer is empty.
        """
        if self._closing or self._eof:
            return
        self._eof = True
        if not self._buffer and self._sock is not None:
            self._sock.shutdown(socket.SHUT_WR)

    def can_write_eof(self) -> bool:
        """TCP can half-close."""
        return True

    def get_write_buffer_size(self) -> int:
        """Bytes written but not yet taken by the socket."""
        return len(self._buffer)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """The (low, high) water marks of the write buffer."""
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the marks at which the protocol is paused and resumed (asyncio's rules)."""
        if high is None:
            high = HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if len(self._buffer) > self._high and not self._protocol_paused:
            self._protocol_paused = True
            try:
                self._protocol.pause_writing()
            except Exception:  # a protocol's bug must not break the transport
                log.exception("%r: pause_writing() failed", self._protocol)

    def _maybe_resume_protocol(self) -> None:
        if self._protocol_paused and len(self._buffer) <= self._low:
            self._protocol_paused = False
            try:
                self._protocol.resume_writing()
            except Exception:
                log.exception("%r: resume_writing() failed", self._protocol)

    # ------------------------------------------------------------------ closing

    def is_closing(self) -> bool:
        """Whether :meth:`close` or :meth:`abort` was called, or the connection failed."""
        return self._closing

    def close(self) -> None:
        """Stop reading; ``connection_lost(None)`` once the buffered bytes are sent."""
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if not self._buffer:
            self._connection_lost_soon(None)

    def abort(self) -> None:
        """Close at once, dropping buffered bytes (the peer sees a reset)."""
        self._force_close(None)

    def _fatal(self, exc: BaseException) -> None:
        log.debug("%r: socket error: %s", self, exc)
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._buffer.clear()
        self._closing = True
        self._stop_reading()
        self._connection_lost_soon(exc)

    def _connection_lost_soon(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc)  # type: ignore[arg-type]
        finally:
            sock, self._sock = self._sock, None
            if sock is not None:
                sock.close()

    # ------------------------------------------------------------------ the rest

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``socket``, ``sockname``, ``peername`` (read when asked), else ``default``."""
        sock = self._sock
        if sock is None:
            return default
        try:
            if name == "socket":
                return sock
            if name == "sockname":
                return sock.getsockname()
            if name == "peername":
                return sock.getpeername()
        except OSError:
            return default
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Hand the stream to another protocol (a handshake's to the relay's)."""
        self._protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The current protocol."""
        return self._protocol

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else "closing" if self._closing else "open"
        return f"<SocketTransport fd={self._fd} {state}>"
