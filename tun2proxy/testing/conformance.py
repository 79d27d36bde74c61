"""A conformance suite for :class:`~tun2proxy.upstream.Upstream` implementations (I/O layer).

:func:`check_upstream` runs generic checks that every upstream — built-in or third-party —
must pass before the driver's relay can trust it, in the spirit of trio's
``check_half_closeable_stream``. It starts its own test servers on ``host`` (loopback by
default, so a proxy upstream under test reaches them like any other destination), builds a
fresh upstream for each check, and dials them with ``open_tcp`` using recording protocols that
behave like the relay (:class:`tun2proxy.driver.relay.TcpRelay`) does:

* ``write`` only between ``pause_writing`` and ``resume_writing``; ``write_eof`` when
  ``can_write_eof()``; ``close``/``abort``; ``pause_reading``/``resume_reading`` guarded by
  ``is_reading()``, called from inside ``data_received`` as well as from outside;
* ``eof_received`` returns True: the write side must stay open (half-close).

Each check is a named :class:`CheckResult`; every one of them also checks the callback order
(``connection_made`` exactly once and before any ``data_received``, nothing after
``connection_lost``, no data after ``eof_received``, ``pause_writing``/``resume_writing``
alternating) and reports anything the event loop logged as an error meanwhile.

Responsibilities: bounded in time (``timeout`` per check, shorter deadlines where the property
is about promptness) and memory (data is generated and hashed in 64 KiB chunks, never kept),
and every server, socket, transport and upstream it made is closed before it returns, even
when a check fails or the caller cancels it.

(Over 700 lines: one suite — its recording protocol, its servers and one method per check on
one context that owns every socket it opened, so that a failing check still closes them all.
Split across modules, each check would have to carry that cleanup with it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import ipaddress
import itertools
import random
import socket
import struct
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from ..errors import UpstreamError
from ..proxy.address import Address
from ..upstream.base import FlowInfo, UdpChannel, Upstream

__all__ = [
    "CHECKS",
    "REFUSAL_REASONS",
    "TCP_CHECKS",
    "CheckResult",
    "ConformanceFailure",
    "ConformanceReport",
    "UpstreamFactory",
    "check_upstream",
    "run_check_upstream",
]

#: Builds a fresh upstream for one check (a plain function or a coroutine function).
UpstreamFactory = Callable[[], Upstream | Awaitable[Upstream]]

#: The TCP checks, in the order they run; ``udp`` runs last when asked for.
TCP_CHECKS = (
    "large_transfer",
    "server_speaks_first",
    "half_close_by_us",
    "half_close_by_server",
    "refused",
    "reset",
    "backpressure",
    "abort",
)
#: Every check name :func:`check_upstream` knows.
CHECKS = (*TCP_CHECKS, "udp")

#: Reasons an upstream may give for a closed destination port (the app sees RST or ICMP).
REFUSAL_REASONS = frozenset({"refused", "unreachable", "error"})

_CHUNK = 64 * 1024
#: A transport's write buffer may not grow past this (or past its own high-water mark plus
#: two chunks, when it reports a higher one) without calling ``pause_writing``.
_WRITE_BUFFER_LIMIT = 256 * 1024
#: ``connection_lost`` must follow ``close()`` within this long (nothing is left to send).
_CLOSE_DEADLINE = 5.0
#: A reset must reach ``connection_lost`` within this long.
_RESET_DEADLINE = 2.0
#: An abort must reach the server and ``connection_lost`` within this long.
_ABORT_DEADLINE = 2.0
#: How long reading stays paused in the backpressure check, first and second time.
_PAUSE_WINDOWS = (0.5, 0.2)
#: ``data_received`` calls tolerated after ``pause_reading`` (what was already in flight).
_CALLS_IN_FLIGHT = 1
#: How long the server leaves our bytes unread at first in the large transfer.
_SERVER_STALL = 0.25
#: How long no callback may come after a refusal.
_QUIET = 0.2
_POLL = 0.005
_GREETING = 4096
_GO = b"go\n"
_FIRST_ROUNDS = 5
_UDP_TRIES = 3
_UDP_WAIT = 1.0



#: What the relay calls on an upstream transport. Checked by name, not by isinstance: the
#: transports of other event loops (uvloop) implement them without subclassing asyncio's.
_TRANSPORT_METHODS = (
    "write", "write_eof", "can_write_eof", "pause_reading", "resume_reading", "abort",
    "close", "is_closing", "get_extra_info",
)


def _is_stream_transport(t: object) -> bool:
    """Whether ``t`` has every method of :class:`asyncio.Transport` the relay uses."""
    return all(callable(getattr(t, m, None)) for m in _TRANSPORT_METHODS)

class ConformanceFailure(AssertionError):
    """An upstream failed one or more conformance checks; ``report`` has the details."""

    def __init__(self, report: ConformanceReport) -> None:
        super().__init__(report.failure_text())
        self.report = report


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check.

    Attributes:
        name: the check's name (one of :data:`CHECKS`).
        passed: whether the upstream behaved.
        message: why it failed (empty when it passed).
        detail: what was measured (bytes, timings, how often writing was paused).
        duration: seconds the check took, cleanup included.
    """

    name: str
    passed: bool
    message: str = ""
    detail: str = ""
    duration: float = 0.0

    def __str__(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        text = self.detail if self.passed else self.message
        return f"{status} {self.name:<22} {self.duration:6.2f}s  {text}".rstrip()


@dataclass(slots=True)
class ConformanceReport:
    """Every check's result for one upstream; :meth:`raise_for_failures` for tests."""

    upstream: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when every check that ran passed."""
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        """The checks that failed."""
        return [r for r in self.results if not r.passed]

    def result(self, name: str) -> CheckResult:
        """The result of the check called ``name`` (KeyError when it did not run)."""
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def failure_text(self) -> str:
        """One line per failed check (empty when all passed)."""
        fails = self.failures
        if not fails:
            return ""
        lines = [f"upstream {self.upstream} failed {len(fails)} of {len(self.results)} checks:"]
        lines += [f"  {r.name}: {r.message}" for r in fails]
        return "\n".join(lines)

    def raise_for_failures(self) -> None:
        """Raise :class:`ConformanceFailure` (an AssertionError) listing every failed check."""
        if not self.passed:
            raise ConformanceFailure(self)

    def __str__(self) -> str:
        ok = sum(r.passed for r in self.results)
        head = f"upstream conformance: {self.upstream}: {ok}/{len(self.results)} checks passed"
        return "\n".join([head, *(f"  {r}" for r in self.results)])


# --------------------------------------------------------------------------- plumbing


class _Failed(Exception):
    """A check found the upstream at fault (the message says how)."""


def _pattern(seed: int, total: int) -> Iterator[bytes]:
    """``total`` pseudo-random bytes in chunks, the same for the same seed (never all kept)."""
    rng = random.Random(seed)
    left = total
    while left > 0:
        n = min(_CHUNK, left)
        yield rng.randbytes(n)
        left -= n


def _short(exc: BaseException | None) -> str:
    return "None" if exc is None else f"{type(exc).__name__}({exc})"


class _Recorder(asyncio.Protocol):
    """The protocol handed to ``open_tcp``: records and order-checks every callback.

    Received bytes are counted and hashed (the first ``keep`` kept); ``on_data`` runs inside
    ``data_received`` like the relay's own reactions do. Order violations are collected in
    ``violations`` and turned into a failure by the check runner.
    """

    def __init__(self, keep: int = 0) -> None:
        self.transport: asyncio.Transport | None = None
        self.opened = False  # open_tcp has returned
        self.made = 0
        self.data_calls = 0
        self.received = 0
        self.sha = hashlib.sha256()
        self.keep = keep
        self.kept = bytearray()
        self.eof_calls = 0
        self.received_at_eof = -1
        self.lost_calls = 0
        self.lost_exc: Exception | None = None
        self.lost_at = 0.0
        self.write_paused = False
        self.pause_writing_calls = 0
        self.aborted = False
        self.violations: list[str] = []
        self.on_data: Callable[[_Recorder], None] | None = None

    def _violate(self, text: str) -> None:
        if text not in self.violations and len(self.violations) < 10:
            self.violations.append(text)

    def _after_lost(self, what: str) -> None:
        if self.lost_calls:
            self._violate(f"{what} called after connection_lost")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Record the transport (it must be an :class:`asyncio.Transport`, once)."""
        self._after_lost("connection_made")
        self.made += 1
        if self.made > 1:
            self._violate("connection_made called more than once")
        if not _is_stream_transport(transport):
            self._violate(
                f"connection_made got a {type(transport).__name__}, which lacks the "
                f"asyncio.Transport methods the relay uses ({', '.join(_TRANSPORT_METHODS)})"
            )
            return
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """Count and hash; the bytes must come after connection_made and before EOF."""
        self._after_lost("data_received")
        if not self.made:
            self._violate(
                "data_received called before connection_made (the relay has no transport"
                " yet: it cannot pause the stream)"
            )
        if self.eof_calls:
            self._violate("data_received called after eof_received")
        if self.aborted:
            self._violate("data_received called after transport.abort()")
        if not data:
            self._violate("data_received called with no bytes")
        self.data_calls += 1
        self.received += len(data)
        self.sha.update(data)
        if len(self.kept) < self.keep:
            self.kept += data[: self.keep - len(self.kept)]
        if self.on_data is not None:
            try:
                self.on_data(self)
            except Exception as e:
                self._violate(f"a transport call from inside data_received raised {_short(e)}")

    def eof_received(self) -> bool:
        """Record the EOF; keep the transport open for our side's writes, as the relay does."""
        self._after_lost("eof_received")
        if not self.made:
            self._violate("eof_received called before connection_made")
        self.eof_calls += 1
        if self.eof_calls > 1:
            self._violate("eof_received called more than once")
        else:
            self.received_at_eof = self.received
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """Record the end (once)."""
        self.lost_calls += 1
        if self.lost_calls > 1:
            self._violate("connection_lost called more than once")
            return
        self.lost_exc = exc
        self.lost_at = asyncio.get_running_loop().time()

    def pause_writing(self) -> None:
        """Stop writing until resume_writing (calls must alternate)."""
        self._after_lost("pause_writing")
        if self.write_paused:
            self._violate("pause_writing called twice without resume_writing")
        self.write_paused = True
        self.pause_writing_calls += 1

    def resume_writing(self) -> None:
        """Writing may go on."""
        self._after_lost("resume_writing")
        if not self.write_paused:
            self._violate("resume_writing called without pause_writing")
        self.write_paused = False


@dataclass
class _Sink:
    """What a server read from one connection."""

    n: int = 0
    sha: Any = field(default_factory=hashlib.sha256)
    kept: bytearray = field(default_factory=bytearray)
    end: str = ""  # "", "eof" or "reset"
    end_at: float = 0.0


class _TcpServer:
    """A test server on ``host``: runs ``handler`` for each connection; aborts them on close."""

    def __init__(
        self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    ) -> None:
        self.handler = handler
        self.server: asyncio.Server | None = None
        self.port = 0
        self.connections = 0
        self.errors: list[str] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task[Any]] = set()

    async def start(self, host: str) -> None:
        self.server = await asyncio.start_server(self._serve, host, 0)
        self.port = int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        self.connections += 1
        self.writers.append(writer)
        try:
            await self.handler(reader, writer)
        except asyncio.CancelledError:
            pass
        except Exception as e:
            self.errors.append(f"{type(e).__name__}: {e}")
        finally:
            writer.close()

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in self.writers:
            w.transport.abort()
        for t in self.tasks:
            t.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=1.0)
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)


async def _read_to_end(reader: asyncio.StreamReader, sink: _Sink) -> None:
    """Read until EOF (``eof``) or a reset (``reset``), hashing everything."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            data = await reader.read(_CHUNK)
            if not data:
                sink.end = "eof"
                break
            sink.n += len(data)
            sink.sha.update(data)
            if len(sink.kept) < 64:
                sink.kept += data[: 64 - len(sink.kept)]
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
        sink.end = "reset"
    sink.end_at = loop.time()


async def _server_send(writer: asyncio.StreamWriter, seed: int, total: int) -> str:
    sha = hashlib.sha256()
    for chunk in _pattern(seed, total):
        writer.write(chunk)
        sha.update(chunk)
        await writer.drain()
    return sha.hexdigest()


async def _expect_go(reader: asyncio.StreamReader) -> None:
    """The client speaks first in every check but ``server_speaks_first``."""
    got = await reader.readexactly(len(_GO))
    if got != _GO:
        raise ValueError(f"expected {_GO!r} from the client first, got {got!r}")


def _linger_reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _UdpEcho(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # CPython's datagram transport does not derive from DatagramTransport.
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)


class _UdpReceiver:
    """The DatagramReceiver handed to ``open_udp``."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, Address]] = []
        self.lost: list[BaseException | None] = []

    def datagram_received(self, payload: bytes, src: Address) -> None:
        if len(self.got) < 1000:
            self.got.append((bytes(payload), src))

    def channel_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


class _Ctx:
    """One check's world: its settings, servers, transports and recorders, and what it is
    doing now (``stage``, for timeout messages). Cleans everything up in :meth:`cleanup`."""

    def __init__(self, host: str, timeout: float, size: int) -> None:
        self.host = host
        self.timeout = timeout
        self.size = size
        self.loop = asyncio.get_running_loop()
        self.stage = "building the upstream"
        self.servers: list[_TcpServer] = []
        self.transports: list[asyncio.Transport | asyncio.DatagramTransport] = []
        self.channels: list[UdpChannel] = []
        self.recorders: list[_Recorder] = []
        self.loop_errors: list[str] = []
        v6 = ipaddress.ip_address(host).version == 6
        self.app_ip = "fd00::2" if v6 else "10.0.0.2"
        self._ids = itertools.count(1)

    def on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The event loop's exception handler while the check runs."""
        exc = context.get("exception")
        text = str(context.get("message", "error"))
        if exc is not None:
            text += f": {_short(exc)}"
        if len(self.loop_errors) < 5:
            self.loop_errors.append(text)

    def flow(self, port: int, protocol: str = "tcp") -> FlowInfo:
        fid = next(self._ids)
        return FlowInfo(fid, (self.app_ip, 40000 + fid), (self.host, port), protocol)

    def recorder(self, keep: int = 0) -> _Recorder:
        rec = _Recorder(keep)
        self.recorders.append(rec)
        return rec

    async def server(
        self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    ) -> _TcpServer:
        srv = _TcpServer(handler)
        self.servers.append(srv)
        self.stage = "starting a test server"
        await srv.start(self.host)
        return srv

    async def open(self, up: Upstream, port: int, rec: _Recorder) -> asyncio.Transport:
        """``open_tcp`` to our server; the transport must be attached to ``rec`` by now."""
        self.stage = f"awaiting open_tcp({self.host}:{port})"
        try:
            t = await up.open_tcp(Address(self.host, port), rec, self.flow(port))
        except UpstreamError as e:
            raise _Failed(
                f"open_tcp to a listening server raised UpstreamError({e.reason!r}): {e}"
            ) from None
        rec.opened = True
        if not _is_stream_transport(t):
            raise _Failed(f"open_tcp returned {type(t).__name__}, not a stream transport")
        self.transports.append(t)
        if not rec.made:
            raise _Failed(
                "open_tcp returned before calling protocol.connection_made: the relay would"
                " have no transport to write to"
            )
        if rec.transport is not t:
            raise _Failed("connection_made was given a different transport than open_tcp returned")
        return t

    async def wait(
        self,
        pred: Callable[[], bool],
        stage: str,
        *,
        rec: _Recorder | None = None,
        within: float | None = None,
    ) -> None:
        """Poll until ``pred()``; fail early when ``rec`` is lost first, a server failed, or
        ``within`` seconds pass (the check's own timeout bounds everything else)."""
        self.stage = stage
        deadline = None if within is None else self.loop.time() + within
        while not pred():
            if rec is not None and rec.lost_calls:
                raise _Failed(f"{stage}: connection_lost({_short(rec.lost_exc)}) came first")
            for srv in self.servers:
                if srv.errors:
                    raise _Failed(f"{stage}: the test server failed: {srv.errors[0]}")
            if deadline is not None and self.loop.time() > deadline:
                raise _Failed(f"{stage}: not within {within:g}s")
            await asyncio.sleep(_POLL)

    async def send(self, rec: _Recorder, t: asyncio.Transport, seed: int, total: int) -> str:
        """Write ``total`` bytes like the relay: only while not paused; check the buffer."""
        sha = hashlib.sha256()
        limit = _WRITE_BUFFER_LIMIT
        with contextlib.suppress(Exception):
            limit = max(limit, t.get_write_buffer_limits()[1] + 2 * _CHUNK)
        for chunk in _pattern(seed, total):
            if rec.write_paused:
                await self.wait(
                    lambda: not rec.write_paused,
                    "waiting for resume_writing after pause_writing", rec=rec,
                )
            if t.is_closing():
                if rec.eof_calls:
                    raise _Failed(
                        "the transport started closing after the server's EOF while we were"
                        " still writing: eof_received returning True must keep the write"
                        " side open"
                    )
                raise _Failed("the transport started closing while we were still writing")
            t.write(chunk)
            sha.update(chunk)
            try:
                buffered = t.get_write_buffer_size()
            except Exception as e:
                raise _Failed(f"transport.get_write_buffer_size() raised {_short(e)}") from None
            if buffered > limit and not rec.write_paused:
                raise _Failed(
                    f"the transport buffered {buffered} bytes without calling pause_writing"
                    f" (limit {limit}): the relay would keep writing without bound"
                )
        return sha.hexdigest()

    def write_eof(self, t: asyncio.Transport) -> None:
        try:
            can = t.can_write_eof()
        except Exception as e:
            raise _Failed(f"transport.can_write_eof() raised {_short(e)}") from None
        if not can:
            raise _Failed(
                "transport.can_write_eof() is False: the relay must close the whole stream"
                " when the app half-closes"
            )
        t.write_eof()

    async def close_and_wait_lost(self, rec: _Recorder, t: asyncio.Transport) -> None:
        t.close()
        await self.wait(
            lambda: rec.lost_calls > 0, "waiting for connection_lost after transport.close()",
            within=_CLOSE_DEADLINE,
        )
        if rec.lost_exc is not None:
            raise _Failed(
                f"connection_lost({_short(rec.lost_exc)}) after an orderly close: expected None"
            )

    async def cleanup(self, up: Upstream | None) -> list[str]:
        """Close everything this check made; return problems found while doing so."""
        problems: list[str] = []
        for t in self.transports:
            with contextlib.suppress(Exception):
                t.abort()
        for ch in self.channels:
            with contextlib.suppress(Exception):
                ch.close()
        for srv in self.servers:
            with contextlib.suppress(Exception):
                await srv.aclose()
        if up is not None:
            try:
                await asyncio.wait_for(up.close(), 5.0)
            except Exception as e:
                problems.append(f"upstream.close() raised {_short(e)}")
        await asyncio.sleep(0)
        return problems


# --------------------------------------------------------------------------- the checks


async def _large_transfer(ctx: _Ctx, up: Upstream) -> str:
    """(a) ``size`` bytes each way at once, SHA-256 equal, writes respect pause_writing."""
    size = ctx.size
    got = _Sink()
    sent: dict[str, str] = {}

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def rx() -> None:
            await asyncio.sleep(_SERVER_STALL)  # let the client's buffers fill: pause_writing
            await _read_to_end(reader, got)

        async def tx() -> None:
            sent["sha"] = await _server_send(writer, 2, size)
            writer.write_eof()

        await _expect_go(reader)
        await asyncio.gather(rx(), tx())

    srv = await ctx.server(handler)
    rec = ctx.recorder()
    start = ctx.loop.time()
    t = await ctx.open(up, srv.port, rec)
    t.write(_GO)
    ours = await ctx.send(rec, t, 1, size)
    await ctx.wait(
        lambda: got.n >= size and rec.eof_calls > 0,
        "waiting for both directions to finish (the server has "
        f"{got.n} of {size} bytes, we have {rec.received} of {size})",
        rec=rec,
    )
    elapsed = ctx.loop.time() - start
    if rec.received_at_eof != size or rec.sha.hexdigest() != sent.get("sha"):
        raise _Failed(
            f"server->client: {rec.received_at_eof} of {size} bytes before EOF, SHA-256 "
            + ("equal" if rec.sha.hexdigest() == sent.get("sha") else "different")
        )
    await ctx.close_and_wait_lost(rec, t)
    await ctx.wait(lambda: bool(got.end), "waiting for the server to see our close")
    if got.end != "eof" or got.n != size or got.sha.hexdigest() != ours:
        raise _Failed(
            f"client->server: the server got {got.n} of {size} bytes then {got.end}, SHA-256 "
            + ("equal" if got.sha.hexdigest() == ours else "different")
        )
    return f"{size} B each way in {elapsed:.2f}s; pause_writing {rec.pause_writing_calls}x"


async def _server_speaks_first(ctx: _Ctx, up: Upstream) -> str:
    """(b) connection_made before any data; a greeting sent on accept is not lost.

    Several rounds, because whether the greeting arrives together with a proxy's reply, just
    after it, or only after ``open_tcp`` returned depends on timing."""
    greeting = b"".join(_pattern(3, _GREETING))
    reply = b"reply to " + _GO

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)  # at once on accept, before the client said anything
        await writer.drain()
        await _expect_go(reader)
        writer.write(reply)
        writer.write_eof()
        await _read_to_end(reader, _Sink())

    srv = await ctx.server(handler)
    early = 0
    for round_ in range(1, _FIRST_ROUNDS + 1):
        rec = ctx.recorder(keep=len(greeting) + len(reply) + 64)
        paused_early: list[int] = []

        def like_the_relay(r: _Recorder, paused_early: list[int] = paused_early) -> None:
            # The relay stashes bytes that come before the flow is accepted and pauses.
            t = r.transport
            if not r.opened and t is not None and t.is_reading():
                t.pause_reading()
                paused_early.append(r.received)

        rec.on_data = like_the_relay
        t = await ctx.open(up, srv.port, rec)
        early += bool(paused_early)
        if not t.is_reading():
            t.resume_reading()
        t.write(_GO)
        def ended(rec: _Recorder = rec) -> bool:
            return rec.eof_calls > 0

        await ctx.wait(ended, f"waiting for the greeting, the reply and EOF (round {round_})",
                       rec=rec)
        want = greeting + reply
        got = bytes(rec.kept)
        if got != want:
            if got == reply:
                raise _Failed(
                    f"the {len(greeting)}-byte greeting the server sent on accept was lost"
                    f" (round {round_}): bytes that arrive with or before the proxy's reply"
                    " must reach data_received"
                )
            if got.endswith(reply) and len(got) < len(want):
                raise _Failed(
                    f"{len(want) - len(got)} of the {len(greeting)} greeting bytes the server"
                    f" sent on accept were lost (round {round_})"
                )
            raise _Failed(
                f"got {len(got)} bytes, expected {len(want)} (greeting + reply): they differ"
                f" (round {round_})"
            )
        await ctx.close_and_wait_lost(rec, t)
    return (f"greeting + reply intact in {_FIRST_ROUNDS} rounds ({early} with bytes before"
            " open_tcp returned)")


async def _half_close_by_us(ctx: _Ctx, up: Upstream) -> str:
    """(c) write_eof: the server sees EOF after all our bytes, and its reply still arrives."""
    n = min(ctx.size, 1 << 20)
    got = _Sink()
    sent: dict[str, str] = {}

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_to_end(reader, got)
        if got.end != "eof":
            return
        sent["sha"] = await _server_send(writer, 5, n)  # after our EOF
        writer.write_eof()
        await _read_to_end(reader, _Sink())

    srv = await ctx.server(handler)
    rec = ctx.recorder()
    t = await ctx.open(up, srv.port, rec)
    ours = await ctx.send(rec, t, 4, n)
    ctx.write_eof(t)
    await ctx.wait(lambda: bool(got.end), "waiting for the server to see our EOF", rec=rec)
    if got.end != "eof":
        raise _Failed(f"after write_eof the server saw a reset, not EOF ({got.n} bytes before)")
    if got.n != n or got.sha.hexdigest() != ours:
        raise _Failed(f"the server got {got.n} of {n} bytes before EOF (or different ones)")
    await ctx.wait(
        lambda: rec.eof_calls > 0,
        f"waiting for the server's reply after our EOF (got {rec.received} of {n} bytes)",
        rec=rec,
    )
    if rec.received_at_eof != n or rec.sha.hexdigest() != sent.get("sha"):
        raise _Failed(
            f"the reply sent after our EOF arrived as {rec.received_at_eof} of {n} bytes"
            " (or different ones) before eof_received"
        )
    await ctx.close_and_wait_lost(rec, t)
    return f"{n} B up, EOF, {n} B back, EOF"


async def _half_close_by_server(ctx: _Ctx, up: Upstream) -> str:
    """(d) the server's EOF comes after all its data, and we can still write afterwards."""
    n = min(ctx.size, 1 << 20)
    got = _Sink()
    sent: dict[str, str] = {}

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _expect_go(reader)
        sent["sha"] = await _server_send(writer, 6, n)
        writer.write_eof()
        await _read_to_end(reader, got)

    srv = await ctx.server(handler)
    rec = ctx.recorder()
    t = await ctx.open(up, srv.port, rec)
    t.write(_GO)
    await ctx.wait(
        lambda: rec.eof_calls > 0,
        f"waiting for the server's data and EOF (got {rec.received} of {n} bytes)", rec=rec,
    )
    if rec.received_at_eof != n or rec.sha.hexdigest() != sent.get("sha"):
        raise _Failed(
            f"eof_received came after {rec.received_at_eof} of the {n} bytes the server sent"
            " before its EOF (or they differ)"
        )
    await asyncio.sleep(0.05)  # the relay writes later, not from inside eof_received
    if rec.lost_calls or t.is_closing():
        raise _Failed(
            "the transport closed after the server's EOF although eof_received returned True:"
            " the app could not finish sending (half-close lost)"
        )
    ours = await ctx.send(rec, t, 7, n)
    await ctx.wait(lambda: got.n >= n or bool(got.end),
                   f"waiting for the server to get our {n} bytes (it has {got.n})", rec=rec)
    await ctx.close_and_wait_lost(rec, t)
    await ctx.wait(lambda: bool(got.end), "waiting for the server to see our close")
    if got.end != "eof" or got.n != n or got.sha.hexdigest() != ours:
        raise _Failed(
            f"after its EOF the server got {got.n} of our {n} bytes and then a {got.end}"
            + ("" if got.sha.hexdigest() == ours else " (bytes differ)")
        )
    return f"{n} B down, EOF, {n} B up"


async def _refused(ctx: _Ctx, up: Upstream) -> str:
    """(e) a closed port: UpstreamError(refused|unreachable|error), and no callback at all."""
    family = socket.AF_INET6 if ipaddress.ip_address(ctx.host).version == 6 else socket.AF_INET
    # A bound socket that does not listen holds the port; a SYN to it is answered with RST.
    holder = socket.socket(family, socket.SOCK_STREAM)
    try:
        holder.bind((ctx.host, 0))
        port = int(holder.getsockname()[1])
        rec = ctx.recorder()
        ctx.stage = f"awaiting open_tcp to the closed port {ctx.host}:{port}"
        start = ctx.loop.time()
        try:
            t = await up.open_tcp(Address(ctx.host, port), rec, ctx.flow(port))
        except UpstreamError as e:
            took = ctx.loop.time() - start
            if e.reason not in REFUSAL_REASONS:
                raise _Failed(
                    f"UpstreamError reason {e.reason!r} for a closed port; expected one of"
                    f" {sorted(REFUSAL_REASONS)} ({e})"
                ) from None
            reason = e.reason
        except Exception as e:
            raise _Failed(
                f"open_tcp to a closed port raised {_short(e)}, not UpstreamError: the driver"
                " logs it as a bug"
            ) from None
        else:
            ctx.transports.append(t)
            raise _Failed("open_tcp to a closed port returned a transport instead of raising")
        await asyncio.sleep(_QUIET)
        fired = [
            name for name, n in (
                ("connection_made", rec.made), ("data_received", rec.data_calls),
                ("eof_received", rec.eof_calls), ("connection_lost", rec.lost_calls),
                ("pause_writing", rec.pause_writing_calls),
            ) if n
        ]
        if fired:
            raise _Failed(f"protocol callbacks fired for a refused connection: {fired}")
        return f"UpstreamError({reason!r}) after {took * 1000:.0f} ms"
    finally:
        holder.close()


async def _reset(ctx: _Ctx, up: Upstream) -> str:
    """(f) the server resets mid-stream: connection_lost(exc) within 2 s, no clean EOF."""
    n = 64 * 1024
    reset_at: list[float] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _expect_go(reader)
        await _server_send(writer, 8, n)
        await reader.readexactly(len(_GO))  # the client has all of it
        _linger_reset(writer)
        reset_at.append(asyncio.get_running_loop().time())
        await asyncio.sleep(3600)  # cancelled at cleanup

    srv = await ctx.server(handler)
    rec = ctx.recorder()
    t = await ctx.open(up, srv.port, rec)
    t.write(_GO)
    await ctx.wait(lambda: rec.received >= n, f"waiting for {n} bytes (got {rec.received})",
                   rec=rec)
    t.write(_GO)
    await ctx.wait(lambda: bool(reset_at), "waiting for the server to reset", rec=rec)
    await ctx.wait(
        lambda: rec.lost_calls > 0 or rec.eof_calls > 0,
        "waiting for connection_lost after the server's RST", within=_RESET_DEADLINE,
    )
    if rec.eof_calls:
        raise _Failed(
            "the reset was reported as eof_received (a clean end): the app would get FIN"
            " instead of RST"
        )
    if rec.lost_exc is None:
        raise _Failed(
            "the reset was reported as connection_lost(None) (a clean end): the app would"
            " get FIN instead of RST"
        )
    took = rec.lost_at - reset_at[0]
    return f"connection_lost({_short(rec.lost_exc)}) {took * 1000:.0f} ms after the RST"


async def _backpressure(ctx: _Ctx, up: Upstream) -> str:
    """(g) pause_reading stops data_received (one chunk in flight allowed); resume brings the
    rest intact. Pauses from inside data_received, like the relay."""
    size = ctx.size
    sent: dict[str, str] = {}

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _expect_go(reader)
        sent["sha"] = await _server_send(writer, 9, size)
        writer.write_eof()
        await _read_to_end(reader, _Sink())

    srv = await ctx.server(handler)
    rec = ctx.recorder()
    thresholds = [1, max(2, size // 2)]
    calls_at_pause: list[int] = []

    def pause_when_due(r: _Recorder) -> None:
        t = r.transport
        k = len(calls_at_pause)
        if k < len(thresholds) and r.received >= thresholds[k] and t is not None:
            if t.is_reading():
                t.pause_reading()
            calls_at_pause.append(r.data_calls)

    rec.on_data = pause_when_due
    t = await ctx.open(up, srv.port, rec)
    t.write(_GO)
    notes = []
    for k, window in enumerate(_PAUSE_WINDOWS):

        def due(k: int = k) -> bool:
            return len(calls_at_pause) > k or rec.eof_calls > 0

        await ctx.wait(due, f"waiting for data before pause {k + 1}", rec=rec)
        if len(calls_at_pause) <= k:
            break  # everything arrived before we could pause again (a tiny size)
        if t.is_reading():
            raise _Failed("transport.is_reading() is still True after pause_reading(): the"
                          " relay would never resume it")
        before_bytes = rec.received
        await asyncio.sleep(window)
        extra_calls = rec.data_calls - calls_at_pause[k]
        extra_bytes = rec.received - before_bytes
        if extra_calls > _CALLS_IN_FLIGHT:
            raise _Failed(
                f"{extra_calls} data_received calls ({extra_bytes} bytes) in the {window:g}s"
                f" after pause_reading(); at most {_CALLS_IN_FLIGHT} (already in flight)"
                " is allowed"
            )
        if rec.lost_calls:
            raise _Failed(f"connection_lost({_short(rec.lost_exc)}) while reading was paused")
        t.resume_reading()
        if not t.is_reading():
            raise _Failed("transport.is_reading() is False after resume_reading()")
        notes.append(f"{extra_calls} call(s)/{extra_bytes} B in a {window:g}s pause")
    await ctx.wait(lambda: rec.eof_calls > 0,
                   f"waiting for the rest after resume_reading (got {rec.received} of {size})",
                   rec=rec)
    if rec.received_at_eof != size or rec.sha.hexdigest() != sent.get("sha"):
        raise _Failed(f"after the pauses {rec.received_at_eof} of {size} bytes arrived before"
                      " EOF (or they differ)")
    await ctx.close_and_wait_lost(rec, t)
    return "; ".join(notes) or "too small to pause"


async def _abort(ctx: _Ctx, up: Upstream) -> str:
    """(h) transport.abort(): the server sees EOF or RST promptly; connection_lost fires."""
    got = _Sink()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _expect_go(reader)
        writer.write(_GO)
        await writer.drain()
        await _read_to_end(reader, got)

    srv = await ctx.server(handler)
    rec = ctx.recorder()
    t = await ctx.open(up, srv.port, rec)
    t.write(_GO)
    await ctx.wait(lambda: rec.received >= len(_GO), "waiting for the server's answer",
                   rec=rec)
    t.write(b"x" * 1000)
    rec.aborted = True
    aborted_at = ctx.loop.time()
    t.abort()
    if not t.is_closing():
        raise _Failed("transport.is_closing() is False right after abort()")
    await ctx.wait(lambda: rec.lost_calls > 0, "waiting for connection_lost after abort()",
                   within=_ABORT_DEADLINE)
    await ctx.wait(lambda: bool(got.end), "waiting for the server to see the abort",
                   within=_ABORT_DEADLINE)
    took = got.end_at - aborted_at
    return f"the server saw {got.end.upper()} {took * 1000:.0f} ms after abort()"


async def _udp(ctx: _Ctx, up: Upstream) -> str:
    """(i) open_udp; datagrams to two echo servers come back with the right source."""
    echoes: list[tuple[asyncio.DatagramTransport, int]] = []
    for _ in range(2):
        ctx.stage = "starting a UDP echo server"
        transport, _proto = await ctx.loop.create_datagram_endpoint(
            _UdpEcho, local_addr=(ctx.host, 0)
        )
        ctx.transports.append(transport)
        echoes.append((transport, int(transport.get_extra_info("sockname")[1])))
    receiver = _UdpReceiver()
    ctx.stage = "awaiting open_udp"
    try:
        ch = await up.open_udp(ctx.flow(echoes[0][1], "udp"), receiver)
    except UpstreamError as e:
        raise _Failed(f"open_udp raised UpstreamError({e.reason!r}): {e}") from None
    ctx.channels.append(ch)
    want = Address.from_host(ctx.host, 0)
    payloads = [(b"ping-0", 0), (b"ping-1", 1), (bytes(range(256)) * 5, 0)]
    for payload, which in payloads:
        dst = Address(ctx.host, echoes[which][1])
        for _ in range(_UDP_TRIES):
            ch.send(payload, dst)
            def echoed(p: bytes = payload) -> bool:
                return any(g[0] == p for g in receiver.got)

            with contextlib.suppress(_Failed):
                await ctx.wait(echoed, f"waiting for the echo of a {len(payload)}-byte datagram",
                               within=_UDP_WAIT)
                break
        else:
            raise _Failed(f"no echo of a {len(payload)}-byte datagram to {dst} after "
                          f"{_UDP_TRIES} tries")
        src = next(g[1] for g in receiver.got if g[0] == payload)
        norm = Address.from_host(src.host, src.port)
        if norm.host != want.host or norm.port != dst.port:
            raise _Failed(f"the echo from {dst} was reported as coming from {src}")
    if receiver.lost:
        raise _Failed(f"channel_lost({_short(receiver.lost[0])}) while the channel was in use")
    try:
        ch.close()
        ch.close()
    except Exception as e:
        raise _Failed(f"UdpChannel.close() is not idempotent: {_short(e)}") from None
    return f"{len(payloads)} datagrams to 2 servers echoed from the right source"


_CHECK_FUNCS: dict[str, Callable[[_Ctx, Upstream], Awaitable[str]]] = {
    "large_transfer": _large_transfer,
    "server_speaks_first": _server_speaks_first,
    "half_close_by_us": _half_close_by_us,
    "half_close_by_server": _half_close_by_server,
    "refused": _refused,
    "reset": _reset,
    "backpressure": _backpressure,
    "abort": _abort,
    "udp": _udp,
}


# --------------------------------------------------------------------------- the runner


async def _build(factory: UpstreamFactory) -> Upstream:
    made = factory()
    up = await made if inspect.isawaitable(made) else made
    if not isinstance(up, Upstream):
        raise _Failed(f"the factory returned {type(up).__name__}, not an Upstream")
    return up


async def _run_one(
    name: str, factory: UpstreamFactory, host: str, timeout: float, size: int
) -> tuple[CheckResult, str]:
    loop = asyncio.get_running_loop()
    ctx = _Ctx(host, timeout, size)
    old_handler = loop.get_exception_handler()
    loop.set_exception_handler(ctx.on_loop_error)
    start = loop.time()
    up: Upstream | None = None
    described = ""
    error = ""
    detail = ""
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            up = await _build(factory)
            described = up.describe()
            detail = await _CHECK_FUNCS[name](ctx, up)
    except _Failed as e:
        error = str(e)
    except TimeoutError as e:
        if deadline.expired():
            error = f"did not finish within {timeout:g}s: stuck {ctx.stage}"
        else:  # a TimeoutError of the upstream's own
            error = f"unexpected {_short(e)} while {ctx.stage}"
    except Exception as e:
        error = f"unexpected {_short(e)} while {ctx.stage}"
    finally:
        problems = [v for rec in ctx.recorders for v in rec.violations]
        cleanup = await ctx.cleanup(up)
        loop.set_exception_handler(old_handler)
    problems += cleanup
    problems += [f"the event loop reported: {e}" for e in ctx.loop_errors]
    problems = list(dict.fromkeys(problems))  # each recorder reports the same fault again
    if problems:
        more = "; ".join(problems)
        error = f"{error}; also: {more}" if error else more
    result = CheckResult(name, not error, error, detail if not error else "",
                         loop.time() - start)
    return result, described


async def check_upstream(
    factory: UpstreamFactory,
    *,
    host: str = "127.0.0.1",
    timeout: float = 30.0,
    size: int = 8 << 20,
    udp: bool = False,
    checks: Collection[str] | None = None,
) -> ConformanceReport:
    """Run the conformance checks against fresh upstreams from ``factory``.

    Args:
        factory: builds one upstream (called once per check; may be a coroutine function).
            Each upstream is closed (``await upstream.close()``) after its check.
        host: the IP literal the test servers listen on (loopback by default); a proxy
            upstream must be able to reach it.
        timeout: seconds each check may take at most (promptness deadlines are shorter).
        size: bytes each way in the large transfer and in the backpressure flood (the
            half-close checks send ``min(size, 1 MiB)``).
        udp: also run the ``udp`` check (``open_udp`` to two echo servers).
        checks: run only these checks (names from :data:`CHECKS`); default all TCP checks,
            plus ``udp`` when ``udp`` is true.

    Returns:
        A :class:`ConformanceReport`; call :meth:`ConformanceReport.raise_for_failures` to
        turn failures into an AssertionError.

    Raises:
        ValueError: ``host`` is not an IP literal, ``size`` is not positive, or a check name
            is unknown.
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"host must be an IP literal, not {host!r}") from None
    if size <= 0:
        raise ValueError("size must be positive")
    if checks is None:
        names = list(CHECKS if udp else TCP_CHECKS)
    else:
        unknown = sorted(set(checks) - set(CHECKS))
        if unknown:
            raise ValueError(f"unknown checks {unknown}; known: {list(CHECKS)}")
        names = [c for c in CHECKS if c in checks]
    report = ConformanceReport(upstream="?")
    for name in names:
        result, described = await _run_one(name, factory, host, timeout, size)
        if described and report.upstream == "?":
            report.upstream = described
        report.results.append(result)
    return report


def run_check_upstream(
    factory: UpstreamFactory,
    *,
    host: str = "127.0.0.1",
    timeout: float = 30.0,
    size: int = 8 << 20,
    udp: bool = False,
    checks: Collection[str] | None = None,
) -> ConformanceReport:
    """:func:`check_upstream` in a fresh event loop, for plain (sync) pytest tests.

    Returns the report when every check passed.

    Raises:
        ConformanceFailure: an AssertionError listing every failed check.
        RuntimeError: called from inside a running event loop (await
            :func:`check_upstream` there instead).
    """
    report = asyncio.run(
        check_upstream(factory, host=host, timeout=timeout, size=size, udp=udp, checks=checks)
    )
    report.raise_for_failures()
    return report
