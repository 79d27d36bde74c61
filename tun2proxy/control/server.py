"""The control API: a small HTTP/1.1 server with JSON bodies on the driver's own loop.

Endpoints (see docs/observability.md)::

    GET    /                 what this is: version, worker index and count
    GET    /flows            every live flow (filters: ?protocol=&dst=&host=&upstream=)
    GET    /flows/ID         one flow
    DELETE /flows/ID         close one flow (TCP: RST to the app, upstream aborted)
    DELETE /flows?dst=&host=&upstream=&protocol=
                             close every flow matching all the terms given (at least one)
    GET    /stats            the driver's counters, live flow totals and the process's RSS

Bounded everything: a request head of at most :data:`MAX_HEAD` bytes and
:data:`MAX_HEADERS` lines, a body of at most :data:`MAX_BODY` bytes (read and ignored),
:data:`HEAD_TIMEOUT` to send a request, :data:`IDLE_TIMEOUT` between requests on a kept-alive
connection, :data:`MAX_CLIENTS` connections at once. Handlers only read the driver's tables
and return: nothing here waits on the data path. On a TCP address every request must carry
``Authorization: Bearer TOKEN`` (401 otherwise); a unix socket is made mode 0600, and checks
the token too when one is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .._version import __version__
from ..driver.flows import FlowFilter
from ..driver.loop import Driver
from .address import ControlError, worker_address

__all__ = [
    "HEAD_TIMEOUT",
    "IDLE_TIMEOUT",
    "MAX_BODY",
    "MAX_CLIENTS",
    "MAX_HEAD",
    "MAX_HEADERS",
    "ControlError",
    "ControlServer",
    "worker_address",
]

log = logging.getLogger("tun2proxy")

MAX_HEAD = 8192
MAX_HEADERS = 64
MAX_BODY = 4096
HEAD_TIMEOUT = 5.0
IDLE_TIMEOUT = 30.0
WRITE_TIMEOUT = 10.0
MAX_CLIENTS = 16
MAX_REQUESTS = 10_000
#: Flows snapshotted per loop iteration by GET /flows; longer bodies are encoded on a thread.
CHUNK = 256

_REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large",
    431: "Request Header Fields Too Large", 501: "Not Implemented",
    503: "Service Unavailable", 505: "HTTP Version Not Supported",
}
_FILTER_KEYS = ("dst", "host", "upstream", "protocol")


class _HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def _encode(body: object) -> str:
    return json.dumps(body, default=str, separators=(",", ":"))


def rss_bytes() -> int:
    """The process's resident set size in bytes (0 when it cannot be read)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read(256).split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class ControlServer:
    """Serves the control API for ``driver`` on ``address`` (a unix socket path, or
    ``(host, port)``; port 0 picks one: see :attr:`address`)."""

    def __init__(
        self,
        driver: Driver,
        address: str | tuple[str, int],
        token: str | None = None,
        *,
        worker: tuple[int, int] = (0, 1),
        max_clients: int = MAX_CLIENTS,
        rss: Callable[[], int] = rss_bytes,
    ) -> None:
        if isinstance(address, tuple) and not token:
            raise ControlError("a control API on a TCP address needs a token")
        self.driver = driver
        self.address = address
        self._token = token.encode() if token else None
        self.worker = worker
        self.max_clients = max_clients
        self._rss = rss
        self._server: asyncio.AbstractServer | None = None
        self._clients: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._started = time.monotonic()
        #: Requests answered, by status code.
        self.responses: dict[int, int] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen (raises :class:`ControlError` with a one-line reason)."""
        try:
            if isinstance(self.address, tuple):
                host, port = self.address
                self._server = await asyncio.start_server(
                    self._accept, host, port, limit=MAX_HEAD, reuse_address=True
                )
                sock = self._server.sockets[0].getsockname()
                self.address = (host, int(sock[1]))
            else:
                self._prepare_path(self.address)
                old = os.umask(0o177)  # the socket is born 0600: no window for others
                try:
                    self._server = await asyncio.start_unix_server(
                        self._accept, self.address, limit=MAX_HEAD
                    )
                finally:
                    os.umask(old)
                os.chmod(self.address, 0o600)
        except ControlError:
            raise
        except (OSError, ValueError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise ControlError(f"--control {self._shown()}: cannot listen: {reason}") from None

    def _shown(self) -> str:
        a = self.address
        if isinstance(a, tuple):
            return f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"
        return a

    @staticmethod
    def _prepare_path(path: str) -> None:
        """A stale socket from a previous run is removed; anything else there is refused."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"--control {path}: exists and is not a socket; remove it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(0.5)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: a leftover
            return
        finally:
            probe.close()
        raise ControlError(f"--control {path}: another process is serving there")

    async def close(self) -> None:
        """Stop listening, end the connections, remove the socket file."""
        if self._server is not None:
            self._server.close()
        for task, writer in list(self._clients.items()):
            writer.transport.abort()  # the task's read ends at once
            task.cancel()
        if self._clients:
            await asyncio.wait(list(self._clients), timeout=2.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()
            self._server = None
            if isinstance(self.address, str):
                with contextlib.suppress(OSError):
                    os.unlink(self.address)

    # ------------------------------------------------------------------ connections

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._clients) >= self.max_clients:
            # Read (briefly, boundedly) what the client sent, so that closing does not turn
            # the answer into a reset, and say why.
            with contextlib.suppress(ConnectionError, TimeoutError, asyncio.IncompleteReadError,
                                     asyncio.LimitOverrunError):
                async with asyncio.timeout(0.5):
                    await reader.readuntil(b"\r\n\r\n")
                await self._send(writer, 503, {"error": "too many control connections"}, False)
            writer.close()
            return
        self._clients[task] = writer
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._clients.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for n in range(MAX_REQUESTS):
            timeout = HEAD_TIMEOUT if n == 0 else IDLE_TIMEOUT
            try:
                async with asyncio.timeout(timeout):
                    head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as e:
                if e.partial.strip():
                    await self._send(writer, 400, {"error": "incomplete request"}, False)
                return
            except asyncio.LimitOverrunError:
                await self._send(writer, 431, {"error": f"request head over {MAX_HEAD} bytes"},
                                 False)
                return
            except TimeoutError:
                if n == 0:
                    await self._send(writer, 408, {"error": "no request in time"}, False)
                return
            try:
                method, target, keep = await self._read_request(head, reader)
                status, body = await self._dispatch(method, target)
                extra: dict[str, str] = {}
            except _HttpError as e:
                status, body, extra, keep = e.status, {"error": str(e)}, e.headers, False
            await self._send(writer, status, body, keep, extra)
            if not keep:
                return

    async def _read_request(
        self, head: bytes, reader: asyncio.StreamReader
    ) -> tuple[str, str, bool]:
        """Parse and check one request head (and skip its body): method, target, keep-alive."""
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
            raise _HttpError(400, "undecodable request") from None
        lines = text[:-4].split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith("/"):
            raise _HttpError(400, "malformed request line")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            raise _HttpError(505, "HTTP/1.1 or HTTP/1.0 only")
        if len(lines) - 1 > MAX_HEADERS:
            raise _HttpError(431, f"more than {MAX_HEADERS} header lines")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _HttpError(400, "malformed header line")
            headers[name.lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise _HttpError(501, "chunked bodies are not accepted")
        length = headers.get("content-length", "0")
        if not length.isdigit() or len(length) > 12:
            raise _HttpError(400, "bad Content-Length")
        if int(length) > MAX_BODY:
            raise _HttpError(413, f"bodies of at most {MAX_BODY} bytes")
        if self._token is not None:
            got = headers.get("authorization", "")
            scheme, _, cred = got.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                cred.strip().encode("latin-1"), self._token
            ):
                raise _HttpError(
                    401, "a valid 'Authorization: Bearer TOKEN' header is required",
                    {"WWW-Authenticate": 'Bearer realm="tun2proxy"'},
                )
        if int(length):
            async with asyncio.timeout(HEAD_TIMEOUT):
                await reader.readexactly(int(length))
        conn = headers.get("connection", "").lower()
        keep = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
        return method, target, keep

    async def _send(
        self, writer: asyncio.StreamWriter, status: int, body: object, keep: bool,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.responses[status] = self.responses.get(status, 0) + 1
        big = isinstance(body, dict) and len(body.get("flows", ())) > CHUNK
        if big:  # a long body is encoded on a thread: the loop keeps moving packets
            text = await asyncio.to_thread(_encode, body)
        else:
            text = _encode(body)
        data = text.encode() + b"\n"
        head = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
            "Content-Type: application/json",
            f"Content-Length: {len(data)}",
            "Cache-Control: no-store",
            f"Connection: {'keep-alive' if keep else 'close'}",
            *(f"{k}: {v}" for k, v in (extra or {}).items()),
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
        async with asyncio.timeout(WRITE_TIMEOUT):
            await writer.drain()

    # ------------------------------------------------------------------ routes

    async def _dispatch(self, method: str, target: str) -> tuple[int, Any]:
        url = urlsplit(target)
        path = unquote(url.path).rstrip("/") or "/"
        try:
            query = parse_qs(url.query, max_num_fields=16)
        except ValueError:
            raise _HttpError(400, "too many query terms") from None
        terms = {k: v[-1] for k, v in query.items() if k in _FILTER_KEYS and v[-1]}
        unknown = sorted(set(query) - set(_FILTER_KEYS))
        if unknown:
            raise _HttpError(400, f"unknown query term {unknown[0]!r} (use {_FILTER_KEYS})")
        if path == "/":
            self._allow(method, "GET")
            return 200, self._about()
        if path == "/stats":
            self._allow(method, "GET")
            return 200, self._stats()
        if path == "/flows":
            self._allow(method, "GET", "DELETE")
            f = FlowFilter(**terms)
            if method == "GET":
                return 200, {**self._who(), "flows": await self._flows(f)}
            if f.empty():
                raise _HttpError(400, "give at least one of dst, host, upstream, protocol")
            return 200, {**self._who(), "closed": self.driver.close_flows(f)}
        if path.startswith("/flows/"):
            self._allow(method, "GET", "DELETE")
            raw = path[len("/flows/"):]
            if not raw.isdigit() or len(raw) > 18:
                raise _HttpError(404, f"no flow {raw!r}: ids are numbers")
            fid = int(raw)
            if method == "GET":
                snap = self.driver.flow(fid)
                if snap is None:
                    raise _HttpError(404, f"no flow {fid}")
                return 200, {**self._who(), "flow": snap.as_dict()}
            if not self.driver.close_flow(fid):
                raise _HttpError(404, f"no flow {fid}")
            return 200, {**self._who(), "closed": [fid]}
        raise _HttpError(404, f"no such endpoint {path!r} (see GET /)")

    async def _flows(self, f: FlowFilter) -> list[dict[str, Any]]:
        """The live flows as dicts, built :data:`CHUNK` at a time with the loop free for
        the data path in between."""
        table = self.driver.flow_table
        ids = list(table.ids())
        out: list[dict[str, Any]] = []
        for i in range(0, len(ids), CHUNK):
            if i:
                await asyncio.sleep(0)
            snaps = table.snapshot(ids[i : i + CHUNK])
            out += [s.as_dict() for s in snaps if f.empty() or f.matches(s)]
        return out

    @staticmethod
    def _allow(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise _HttpError(405, f"use {' or '.join(allowed)}", {"Allow": ", ".join(allowed)})

    def _who(self) -> dict[str, int]:
        return {"worker": self.worker[0], "workers": self.worker[1]}

    def _about(self) -> dict[str, object]:
        return {
            "service": "tun2proxy", "version": __version__, **self._who(),
            "endpoints": ["GET /flows", "GET /flows/ID", "DELETE /flows/ID",
                          "DELETE /flows?dst=&host=&upstream=&protocol=", "GET /stats"],
        }

    def _stats(self) -> dict[str, object]:
        d = self.driver
        up, down = d.flow_table.totals()
        return {
            **self._who(),
            "pid": os.getpid(),
            "uptime": round(time.monotonic() - self._started, 3),
            "rss_bytes": self._rss(),
            "flows_live": len(d.flow_table),
            "flows_ended": d.flow_table.ended,
            "bytes_up": up,
            "bytes_down": down,
            "control_responses": dict(self.responses),
            "stats": d.stats(),
        }
