"""Test servers that run in the lab's server namespace (threads, sockets created inside it).

``StreamServer`` speaks a one-line protocol chosen by the client:

* ``ECHO``: echo every byte until the client's EOF, then close.
* ``SINK``: read until EOF, answer ``<sha256 hex> <length>\\n``, close.
* ``SINKN <n>``: read exactly ``n`` bytes, answer the same way (no half-close needed).
* ``SOURCE <n> <seed>``: send ``n`` deterministic bytes (:func:`payload`), then close.
* ``REPLY_AFTER_EOF <n> <seed>``: read until the client's EOF (half-close), then send ``n``
  bytes and close.
* ``CLOSE_FIRST <n> <seed>``: send ``n`` bytes and close at once, whatever the client sends.
* ``FOREVER``: send bytes until the connection breaks.

``HttpServer`` serves ``GET /bytes/<n>/<seed>`` and answers ``PUT``/``POST`` with the SHA-256
of the body, for curl.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import random
import socket
import socketserver
import threading
from functools import lru_cache

from tun2proxy.link.netns import entered, netns_path


@lru_cache(maxsize=16)
def payload(n: int, seed: int) -> bytes:
    """``n`` deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(n)


def _read_line(sock: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n") and len(buf) < 200:
        c = sock.recv(1)
        if not c:
            break
        buf += c
    return buf.strip()


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        s: socket.socket = self.request
        s.settimeout(120)
        try:
            words = _read_line(s).decode().split()
            if not words:
                return
            cmd, args = words[0], [int(x) for x in words[1:]]
            if cmd == "ECHO":
                while chunk := s.recv(262144):
                    s.sendall(chunk)
            elif cmd == "SINK":
                h = hashlib.sha256()
                n = 0
                while chunk := s.recv(262144):
                    h.update(chunk)
                    n += len(chunk)
                s.sendall(f"{h.hexdigest()} {n}\n".encode())
            elif cmd == "SINKN":
                h = hashlib.sha256()
                left = args[0]
                while left > 0:
                    chunk = s.recv(min(left, 262144))
                    if not chunk:
                        break
                    h.update(chunk)
                    left -= len(chunk)
                s.sendall(f"{h.hexdigest()} {args[0] - left}\n".encode())
            elif cmd == "SOURCE":
                s.sendall(payload(args[0], args[1]))
            elif cmd == "REPLY_AFTER_EOF":
                while s.recv(262144):
                    pass
                s.sendall(payload(args[0], args[1]))
            elif cmd == "CLOSE_FIRST":
                s.sendall(payload(args[0], args[1]))
            elif cmd == "FOREVER":
                block = payload(1 << 20, 0)
                while True:
                    s.sendall(block)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512


class _TCPServer6(_TCPServer):
    address_family = socket.AF_INET6


class StreamServer:
    """The one-line-protocol server, listening on ``host:port`` inside namespace ``ns``."""

    def __init__(self, ns: str, host: str, port: int) -> None:
        cls = _TCPServer6 if ":" in host else _TCPServer
        with entered(netns_path(ns)):
            self.server = cls((host, port), _Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _HttpHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "bytes":
            self.send_error(404)
            return
        data = payload(int(parts[1]), int(parts[2]))
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body_digest(self) -> None:
        n = int(self.headers.get("Content-Length", "0"))
        h = hashlib.sha256()
        left = n
        while left:
            chunk = self.rfile.read(min(left, 262144))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
        body = f"{h.hexdigest()} {n - left}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PUT = _body_digest
    do_POST = _body_digest


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True


class _HttpServer6(_HttpServer):
    address_family = socket.AF_INET6


class HttpServer:
    """The HTTP test server inside namespace ``ns``."""

    def __init__(self, ns: str, host: str, port: int) -> None:
        cls = _HttpServer6 if ":" in host else _HttpServer
        with entered(netns_path(ns)):
            self.server = cls((host, port), _HttpHandler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class UdpEchoServer:
    """Echo every datagram back to its sender, on ``host:port`` inside namespace ``ns``."""

    def __init__(self, ns: str, host: str, port: int) -> None:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        with entered(netns_path(ns)):
            self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((host, port))
        self.sock.settimeout(0.5)
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(OSError):
                self.sock.sendto(data, addr)

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


class AsyncEchoServer:
    """An asyncio echo server on its own thread (thousands of idle connections, cheaply)."""

    def __init__(self, ns: str, host: str, port: int) -> None:
        import asyncio

        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        with entered(netns_path(ns)):
            self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(4096)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import asyncio

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except ConnectionError:
                pass
            w.close()

        async def main() -> None:
            self._stop = asyncio.Event()
            server = await asyncio.start_server(handle, sock=self.sock)
            self._ready.set()
            await self._stop.wait()
            server.close()
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(main())
        self.loop.close()

    def close(self) -> None:
        self._ready.wait(5)
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(5)


class FaultyServer:
    """Per-connection misbehaviour on ``host:port`` in ``ns``: ``RESET <n>`` sends n bytes
    then resets (SO_LINGER 0); ``STALL`` accepts and then says and reads nothing."""

    def __init__(self, ns: str, host: str, port: int) -> None:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        with entered(netns_path(ns)):
            self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(64)
        self.sock.settimeout(0.5)
        self.held: list[socket.socket] = []
        self.reset_at: list[float] = []
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import struct
        import time

        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            line = _read_line(c).decode().split()
            if line and line[0] == "RESET":
                c.sendall(payload(int(line[1]), 7))
                time.sleep(0.2)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.reset_at.append(time.monotonic())
                c.close()
            else:
                self.held.append(c)  # STALL: keep it open, silent

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        for c in self.held:
            c.close()
        self.sock.close()
