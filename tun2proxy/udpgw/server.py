"""UdpgwServer: badvpn's udpgw protocol, server side, on asyncio (I/O layer).

Written from the protocol description (ambrop72/badvpn ``protocol/packetproto.h``,
``protocol/udpgw_proto.h``, ``udpgw/udpgw.c``) with its own parser; it does not use the
client's codec. A message is a 16-bit little-endian length and that many bytes: ``flags``
(1 byte), ``conid`` (2 bytes, little-endian), then — unless the KEEPALIVE flag (1) is set —
the destination: 4 bytes of IPv4 address, or 16 of IPv6 with the IPV6 flag (8), and a port in
network order; then the datagram. The server holds one UDP socket per conid of a client; a
datagram whose address differs from the conid's, or one with the REBIND flag (2), replaces
that socket. With the DNS flag (4) the datagram goes to the server's own resolver. Replies go
back under the conid with the address the client used.

Bounds: ``max_clients`` TCP connections (more are closed at once), ``max_connections_per_
client`` conids per connection (beyond it the least recently used socket is closed, as
badvpn does), bytes waiting to be written to a client (beyond it replies are dropped and
counted), idle clients and idle sockets time out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ServerConfig", "UdpgwServer", "parse_endpoint", "system_resolver"]

log = logging.getLogger("tun2proxy.udpgw")

_KEEPALIVE = 0x01
_REBIND = 0x02
_DNS = 0x04
_IPV6 = 0x08
_LIMIT = 0xFFFF  # PacketProto's 16-bit length


def parse_endpoint(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` as (host, port).

    Raises:
        ValueError: not of that form.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def system_resolver(path: str = "/etc/resolv.conf") -> tuple[str, int] | None:
    """The first ``nameserver`` of ``path`` (port 53), or None."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    with contextlib.suppress(ValueError):
                        return str(ipaddress.ip_address(parts[1].split("%")[0])), 53
    except OSError:
        pass
    return None


@dataclass
class ServerConfig:
    """The server's bounds and its resolver for DNS-flagged datagrams."""

    max_clients: int = 64
    max_connections_per_client: int = 256
    client_timeout: float = 60.0
    udp_idle_timeout: float = 120.0
    #: Where DNS-flagged datagrams go; None: the first nameserver of /etc/resolv.conf.
    dns: tuple[str, int] | None = None
    #: Bytes allowed to wait for a slow client before its replies are dropped.
    max_client_buffer: int = 1 << 20


@dataclass
class _Counters:
    """Totals across clients."""

    clients_served: int = 0
    clients_refused: int = 0
    datagrams_up: int = 0
    datagrams_down: int = 0
    keepalives: int = 0
    conids_opened: int = 0
    conids_evicted: int = 0
    peak_conids_per_client: int = 0
    drops: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1


class _UdpSocket(asyncio.DatagramProtocol):
    """One conid's UDP socket, connected to its destination."""

    def __init__(self, client: _Client, conid: int, orig: tuple[bytes, int]) -> None:
        self.client = client
        self.conid = conid
        self.orig = orig  # the address bytes and port the client sent to
        self.transport: asyncio.DatagramTransport | None = None
        self.last_use = 0.0
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if not self.closed:
            self.client.reply(self, data)

    def error_received(self, exc: Exception) -> None:
        self.client.server.counters.drop("udp-error")

    def send(self, payload: bytes) -> None:
        if self.transport is None or self.closed:
            return
        try:
            self.transport.sendto(payload)
        except OSError:
            self.client.server.counters.drop("udp-send-failed")

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Client:
    """One TCP connection: its conids and what it sent and got."""

    def __init__(
        self, server: UdpgwServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.name = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.sockets: OrderedDict[int, _UdpSocket] = OrderedDict()
        self.up = 0
        self.down = 0
        self.peak = 0
        self.evicted = 0
        self.dropped = 0

    async def run(self) -> None:
        """Read messages until EOF, an error or the idle timeout."""
        cfg = self.server.config
        why = "closed"
        try:
            while True:
                head = await asyncio.wait_for(self.reader.readexactly(2), cfg.client_timeout)
                size = head[0] | head[1] << 8  # little-endian
                body = await asyncio.wait_for(self.reader.readexactly(size), cfg.client_timeout)
                await self.message(body)
        except asyncio.IncompleteReadError:
            why = "closed"
        except TimeoutError:
            why = "timed out"
        except OSError as e:
            why = f"error: {e.strerror or e}"
        finally:
            for s in self.sockets.values():
                s.close()
            self.sockets.clear()
            self.writer.close()
            log.info(
                "client %s %s: %d datagrams up, %d down, peak %d conids, %d evicted, "
                "%d dropped", self.name, why, self.up, self.down, self.peak, self.evicted,
                self.dropped,
            )

    async def message(self, msg: bytes) -> None:
        """Handle one message (malformed ones are counted and skipped, like badvpn)."""
        c = self.server.counters
        if len(msg) < 3:
            c.drop("short-header")
            return
        flags = msg[0]
        conid = msg[1] | msg[2] << 8  # little-endian
        if flags & _KEEPALIVE:
            c.keepalives += 1
            return
        alen = 16 if flags & _IPV6 else 4
        if len(msg) < 3 + alen + 2:
            c.drop("short-address")
            return
        ip = msg[3:3 + alen]
        port = msg[3 + alen] << 8 | msg[4 + alen]  # network order
        payload = msg[5 + alen:]
        self.up += 1
        c.datagrams_up += 1
        orig = (ip, port)
        sock = self.sockets.get(conid)
        if sock is not None and (flags & _REBIND or sock.orig != orig):
            sock.close()
            del self.sockets[conid]
            sock = None
        loop = asyncio.get_running_loop()
        if sock is None:
            sock = await self.open(conid, orig, bool(flags & _DNS))
            if sock is None:
                return
        else:
            self.sockets.move_to_end(conid)
        sock.last_use = loop.time()
        sock.send(payload)

    async def open(self, conid: int, orig: tuple[bytes, int], dns: bool) -> _UdpSocket | None:
        """A new socket for ``conid`` (the least recently used goes when at the cap)."""
        srv = self.server
        c = srv.counters
        while len(self.sockets) >= srv.config.max_connections_per_client:
            _, old = self.sockets.popitem(last=False)
            old.close()
            self.evicted += 1
            c.conids_evicted += 1
        dst: tuple[str, int] = (str(ipaddress.ip_address(orig[0])), orig[1])
        if dns:
            resolver = srv.config.dns or system_resolver()
            if resolver is None:
                c.drop("no-resolver")
            else:
                dst = resolver
        family = socket.AF_INET6 if ":" in dst[0] else socket.AF_INET
        sock = _UdpSocket(self, conid, orig)
        try:
            await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: sock, remote_addr=dst, family=family
            )
        except OSError as e:
            c.drop("udp-open-failed")
            log.debug("client %s conid %d: cannot reach %s:%d: %s", self.name, conid, *dst, e)
            return None
        self.sockets[conid] = sock
        c.conids_opened += 1
        self.peak = max(self.peak, len(self.sockets))
        c.peak_conids_per_client = max(c.peak_conids_per_client, self.peak)
        log.debug("client %s conid %d -> %s:%d", self.name, conid, *dst)
        return sock

    def reply(self, sock: _UdpSocket, payload: bytes) -> None:
        """A datagram from ``sock``'s destination: framed back to the client, or dropped."""
        c = self.server.counters
        ip, port = sock.orig
        size = 3 + len(ip) + 2 + len(payload)
        t = self.writer.transport
        if size > _LIMIT:
            c.drop("reply-too-big")
            self.dropped += 1
            return
        if t.is_closing() or t.get_write_buffer_size() > self.server.config.max_client_buffer:
            c.drop("client-buffer-full")
            self.dropped += 1
            return
        flags = _IPV6 if len(ip) == 16 else 0
        self.writer.write(
            bytes((size & 0xFF, size >> 8, flags, sock.conid & 0xFF, sock.conid >> 8))
            + ip + bytes((port >> 8, port & 0xFF)) + payload
        )
        sock.last_use = asyncio.get_running_loop().time()
        self.sockets.move_to_end(sock.conid)
        self.down += 1
        c.datagrams_down += 1

    def sweep(self, now: float) -> None:
        """Close sockets idle longer than the configured timeout."""
        limit = self.server.config.udp_idle_timeout
        for conid in [k for k, s in self.sockets.items() if now - s.last_use > limit]:
            self.sockets.pop(conid).close()


class UdpgwServer:
    """Accepts udpgw clients on TCP and relays their datagrams (see the module docstring)."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.counters = _Counters()
        self.clients: set[_Client] = set()
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def ports(self) -> list[int]:
        """The TCP ports listened on (useful with port 0)."""
        return [s.sockets[0].getsockname()[1] for s in self._servers if s.sockets]

    async def start(self, listen: list[tuple[str, int]]) -> None:
        """Listen on every ``(host, port)``.

        Raises:
            OSError: an address could not be bound.
        """
        for host, port in listen:
            srv = await asyncio.start_server(self._accept, host, port, limit=_LIMIT + 2)
            self._servers.append(srv)
            log.info("listening on %s:%d", host, srv.sockets[0].getsockname()[1])
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.clients) >= self.config.max_clients:
            self.counters.clients_refused += 1
            peer = writer.get_extra_info("peername")
            log.warning("client %s refused: %d clients already", peer, len(self.clients))
            writer.close()
            return
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = _Client(self, reader, writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self.clients.add(client)
        self.counters.clients_served += 1
        try:
            await client.run()
        finally:
            self.clients.discard(client)
            if task is not None:
                self._tasks.discard(task)

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(5.0, self.config.udp_idle_timeout / 2))
            now = loop.time()
            for c in list(self.clients):
                c.sweep(now)

    def stats(self) -> dict[str, object]:
        """The counters, with the number of clients and sockets open now."""
        c = self.counters
        return {
            "clients": len(self.clients),
            "sockets": sum(len(x.sockets) for x in self.clients),
            "clients_served": c.clients_served,
            "clients_refused": c.clients_refused,
            "datagrams_up": c.datagrams_up,
            "datagrams_down": c.datagrams_down,
            "keepalives": c.keepalives,
            "conids_opened": c.conids_opened,
            "conids_evicted": c.conids_evicted,
            "peak_conids_per_client": c.peak_conids_per_client,
            "drops": dict(c.drops),
        }

    def log_stats(self) -> None:
        """Log :meth:`stats` as one JSON line (on SIGUSR1)."""
        log.info("stats %s", json.dumps(self.stats(), sort_keys=True))

    async def close(self) -> None:
        """Stop listening and end every client."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for s in self._servers:
            s.close()
        for c in list(self.clients):
            c.writer.close()
        if self._tasks:  # each client's loop ends on the EOF its close causes
            await asyncio.wait(list(self._tasks), timeout=2.0)
        for s in self._servers:
            with contextlib.suppress(Exception):
                await s.wait_closed()
