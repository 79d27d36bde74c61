"""UDP through any TCP upstream, with badvpn's udpgw protocol (I/O layer).

:class:`UdpgwUpstream` wraps the main upstream: TCP flows go through it unchanged, and UDP
sessions are carried inside a few TCP connections that it opens *through that upstream* to
a udpgw server (badvpn-udpgw, or ``python -m tun2proxy.udpgw``), which sends the datagrams
from its own host.

* **Mapping.** A udpgw server keeps one UDP socket per conid and replaces it when the
  conid's destination changes (badvpn ``udpgw.c``), so a session uses one conid per
  destination: an app socket talking to several peers gets the replies of every one of
  them (the server sends to each from its own port: address-dependent mapping there).
* **Multiplexing.** Sessions are spread over at most ``connections`` TCP connections
  (opened as they are needed, least loaded first); each connection holds at most
  ``max_conids`` conids (badvpn's server default is 256 per client): beyond it the least
  recently used conid is evicted (counted) and its number reused; numbers stay below the
  cap, so the server never holds more sockets for a connection than the cap.
* **Keepalive.** A connection that has sent nothing for ``keepalive`` seconds sends a
  KEEPALIVE message (badvpn's server drops a client silent for 20 s).
* **Reconnect.** A dropped connection forgets its conids; its sessions move to another
  connection that is up, or, when none is, it is dialled again (backoff 1 s doubling to
  30 s). Datagrams sent in the gap are dropped and counted, and the next datagram of each
  destination takes a fresh conid (REBIND).
* **Bounds.** At most ``max_queued_bytes`` wait in a connection's write buffer; beyond it
  datagrams are dropped and counted. Destinations known only by name (virtual DNS) cannot
  be expressed in this protocol and are dropped and counted.
* **DNS.** With ``transparent_dns``, datagrams to port 53 carry the DNS flag: the server
  sends them to its own resolver (badvpn tun2socks' ``--udpgw-transparent-dns``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from ..errors import UpstreamError
from ..proxy.address import Address
from ..proxy.udpgw import (
    FLAG_DNS,
    FLAG_REBIND,
    UdpgwDecoder,
    UdpgwProtocolError,
    encode_keepalive,
    encode_message,
    max_payload,
)
from .base import DatagramReceiver, FlowInfo, UdpChannel, Upstream
from .egress import Egress

__all__ = [
    "UDPGW_MODES",
    "UdpgwChannel",
    "UdpgwPool",
    "UdpgwSettings",
    "UdpgwUpstream",
    "parse_server",
]

log = logging.getLogger(__name__)

#: ``auto``: udpgw only when the upstream carries no UDP itself; ``always``: every session.
UDPGW_MODES: Final = ("auto", "always")
_BACKOFF_MIN = 1.0
_BACKOFF_MAX = 30.0
#: Destinations remembered per session (each holds a conid).
_MAX_DESTINATIONS = 64


@dataclass(frozen=True)
class UdpgwSettings:
    """How to reach the udpgw server and how to use it.

    Attributes:
        server: the udpgw server, as the main upstream dials it (``--udpgw-server``).
        connections: TCP connections to it at most (``--udpgw-connections``).
        keepalive: seconds of silence before a keepalive (``--udpgw-keepalive``).
        mode: ``auto`` or ``always`` (``--udpgw-mode``).
        max_conids: conids per connection (badvpn's server allows 256 per client).
        max_queued_bytes: bytes waiting in one connection's write buffer before drops.
        transparent_dns: give datagrams to port 53 the DNS flag.
    """

    server: Address
    connections: int = 5
    keepalive: float = 10.0
    mode: str = "auto"
    max_conids: int = 256
    max_queued_bytes: int = 1 << 20
    transparent_dns: bool = False

    def __post_init__(self) -> None:
        if self.mode not in UDPGW_MODES:
            raise ValueError(f"udpgw mode must be one of {', '.join(UDPGW_MODES)}")
        if not 1 <= self.max_conids <= 0x10000:
            raise ValueError("udpgw conids per connection must be 1..65536")
        if self.connections < 1 or self.max_queued_bytes < 1:
            raise ValueError("udpgw connections, conids and queue bytes must be positive")
        if not self.keepalive > 0:
            raise ValueError("udpgw keepalive must be positive")


class _Conid:
    """One conid: a session's destination on one connection."""

    __slots__ = ("addr", "channel", "conid", "dst", "port")

    def __init__(
        self, conid: int, channel: UdpgwChannel, dst: Address, addr: bytes, port: int
    ) -> None:
        self.conid = conid
        self.channel = channel
        self.dst = dst
        self.addr = addr
        self.port = port


class _Connection(asyncio.Protocol):
    """One TCP connection to the udpgw server (one slot of the pool)."""

    def __init__(self, pool: UdpgwPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.transport: asyncio.Transport | None = None
        self.decoder = UdpgwDecoder()
        self.conids: OrderedDict[int, _Conid] = OrderedDict()  # LRU first
        self.channels: set[UdpgwChannel] = set()
        #: Sessions waiting for this connection to come up (they count as its load).
        self.opening = 0
        self.next_conid = 0
        self.connecting: asyncio.Task[None] | None = None
        self.backoff = _BACKOFF_MIN
        self.retry_at = 0.0
        self.last_send = 0.0
        #: Whether the server sent anything on this connection (one that closes before it
        #: does, e.g. over badvpn's --max-clients, is redialled only after a backoff).
        self.received = False
        self._keepalive: asyncio.TimerHandle | None = None
        self.closed = False

    @property
    def up(self) -> bool:
        """Whether the connection carries datagrams now."""
        return self.transport is not None and not self.transport.is_closing()

    # -- dialling
    def ensure(self) -> asyncio.Task[None]:
        """Dial unless up or already dialling; the task ends when the attempt ends."""
        if self.connecting is None or self.connecting.done():
            self.connecting = asyncio.get_running_loop().create_task(self._dial())
        return self.connecting

    async def _dial(self) -> None:
        pool = self.pool
        loop = asyncio.get_running_loop()
        if self.up:
            return
        wait = self.retry_at - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        s = pool.settings.server
        # Our own connection to the configured server (it may be on loopback with a direct
        # upstream), not an application's.
        flow = FlowInfo(0, ("0.0.0.0", 0), (s.host, s.port), protocol="tcp", internal=True)
        pool.counters["connects"] += 1
        self.decoder = UdpgwDecoder()
        try:
            await pool.inner.open_tcp(s, self, flow)
        except UpstreamError as e:
            pool.counters["connect_failures"] += 1
            self.retry_at = loop.time() + self.backoff
            self.backoff = min(self.backoff * 2, _BACKOFF_MAX)
            log.warning("udpgw server %s unreachable (%s): %s", s, e.reason, e)
            raise
        log.info("udpgw connection %d to %s up", self.index, s)

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.last_send = asyncio.get_running_loop().time()
        self.received = False
        self._arm_keepalive()

    def data_received(self, data: bytes) -> None:
        if not self.received:
            self.received = True
            self.backoff = _BACKOFF_MIN  # the server answers: it serves this connection
        dec = self.decoder
        dec.feed(data)
        pool = self.pool
        while True:
            try:
                m = dec.next_message()
            except UdpgwProtocolError as e:
                pool.drop(e.reason)
                continue
            if m is None:
                return
            if m.keepalive:
                continue
            c = self.conids.get(m.conid)
            if c is None:
                pool.drop("udpgw-unknown-conid")
                continue
            if m.addr != c.addr or m.port != c.port:
                pool.drop("udpgw-wrong-address")  # as badvpn's client: not this conid's peer
                continue
            self.conids.move_to_end(m.conid)
            pool.counters["datagrams_down"] += 1
            c.channel.receiver.datagram_received(m.payload, c.dst)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        lost = len(self.conids)
        for c in self.conids.values():
            c.channel.forget(c)
        self.conids.clear()
        if self.closed:
            return
        pool = self.pool
        pool.counters["connections_lost"] += 1
        if not self.received:
            self.retry_at = asyncio.get_running_loop().time() + self.backoff
            self.backoff = min(self.backoff * 2, _BACKOFF_MAX)
        others = [s for s in pool.slots if s is not self and s.up]
        log.warning(
            "udpgw connection %d lost (%s); %d conids dropped, %s", self.index,
            exc or "closed by the server", lost,
            "its sessions move to the others" if others and self.channels else "reconnecting",
        )
        if self.channels and others:
            # Another connection is up: the sessions carry on there at once.
            for ch in list(self.channels):
                target = min(others, key=lambda s: len(s.channels))
                ch.conn = target
                target.channels.add(ch)
                pool.counters["sessions_moved"] += 1
            self.channels.clear()
        elif self.channels:
            self.ensure().add_done_callback(_ignore)

    # -- sending
    def _arm_keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        due = self.last_send + self.pool.settings.keepalive
        self._keepalive = loop.call_at(due, self._on_keepalive)

    def _on_keepalive(self) -> None:
        self._keepalive = None
        if not self.up:
            return
        loop = asyncio.get_running_loop()
        if loop.time() >= self.last_send + self.pool.settings.keepalive - 0.01:
            self.write(encode_keepalive())
            self.pool.counters["keepalives"] += 1
        self._arm_keepalive()

    def write(self, data: bytes) -> bool:
        """Write one framed message; False (and counted) when the buffer is full."""
        t = self.transport
        if t is None or t.is_closing():
            self.pool.drop("udpgw-reconnecting")
            return False
        if t.get_write_buffer_size() + len(data) > self.pool.settings.max_queued_bytes:
            self.pool.drop("udpgw-queue-full")
            return False
        t.write(data)
        self.last_send = asyncio.get_running_loop().time()
        return True

    def allocate(self, channel: UdpgwChannel, dst: Address, addr: bytes, port: int) -> _Conid:
        """A new conid for ``channel``'s ``dst`` (evicting the least recently used at the cap)."""
        pool = self.pool
        cap = pool.settings.max_conids
        if len(self.conids) >= cap:
            # Reuse the evicted number (as badvpn's client does): the server then replaces
            # that socket rather than keeping one more.
            n, old = self.conids.popitem(last=False)
            old.channel.forget(old)
            pool.counters["conids_evicted"] += 1
        else:
            # Numbers stay below the cap, so the server never holds more sockets for this
            # connection than the cap, even for conids whose sessions ended (the protocol has
            # no message to close one).
            n = self.next_conid % cap
            while n in self.conids:
                n = (n + 1) % cap
            self.next_conid = (n + 1) % cap
        c = _Conid(n, channel, dst, addr, port)
        self.conids[n] = c
        pool.counters["conids_opened"] += 1
        return c

    def release(self, c: _Conid) -> None:
        """The conid's session ended."""
        if self.conids.get(c.conid) is c:
            del self.conids[c.conid]

    def close(self) -> None:
        """Close for good (the pool is shutting down)."""
        self.closed = True
        if self.connecting is not None:
            self.connecting.cancel()
        if self.transport is not None:
            self.transport.close()


def _ignore(task: asyncio.Task[None]) -> None:
    """Retrieve a background dial's outcome (its failure was logged and counted)."""
    if not task.cancelled():
        task.exception()


class UdpgwChannel(UdpChannel):
    """One UDP session over a udpgw connection: one conid per destination."""

    def __init__(self, conn: _Connection, receiver: DatagramReceiver) -> None:
        self.conn = conn
        self.receiver = receiver
        self.dests: OrderedDict[Address, _Conid] = OrderedDict()
        self.closed = False

    def send(self, payload: bytes, dst: Address) -> None:
        """Send one datagram to ``dst`` (dropped and counted when it cannot go now)."""
        if self.closed:
            return
        conn = self.conn
        pool = conn.pool
        c = self.dests.get(dst)
        flags = 0
        if c is None:
            ip = dst.ip
            if ip is None:
                pool.drop("udpgw-name-destination")
                return
            if not conn.up:
                pool.drop("udpgw-reconnecting")
                conn.ensure().add_done_callback(_ignore)
                return
            if len(payload) > max_payload(ip.version == 6):
                pool.drop("udpgw-too-big")
                return
            if len(self.dests) >= _MAX_DESTINATIONS:
                _, old = self.dests.popitem(last=False)
                conn.release(old)
            c = conn.allocate(self, dst, ip.packed, dst.port)
            self.dests[dst] = c
            flags = FLAG_REBIND  # a fresh conid: the server drops any stale socket of it
        else:
            self.dests.move_to_end(dst)
            conn.conids.move_to_end(c.conid)
        if pool.settings.transparent_dns and dst.port == 53:
            flags |= FLAG_DNS
        try:
            msg = encode_message(flags, c.conid, c.addr, c.port, payload)
        except ValueError:
            pool.drop("udpgw-too-big")
            return
        if conn.write(msg):
            pool.counters["datagrams_up"] += 1

    def forget(self, c: _Conid) -> None:
        """The connection dropped ``c`` (evicted or lost): the next datagram takes a new one."""
        if self.dests.get(c.dst) is c:
            del self.dests[c.dst]

    def close(self) -> None:
        """Release the session's conids (idempotent)."""
        if self.closed:
            return
        self.closed = True
        for c in self.dests.values():
            self.conn.release(c)
        self.dests.clear()
        self.conn.channels.discard(self)


class UdpgwPool:
    """The connections to one udpgw server and the sessions spread over them."""

    def __init__(self, inner: Upstream, settings: UdpgwSettings) -> None:
        self.inner = inner
        self.settings = settings
        self.slots = [_Connection(self, i) for i in range(settings.connections)]
        self.counters: dict[str, int] = dict.fromkeys(
            ("sessions_opened", "sessions_moved", "connects", "connect_failures",
             "connections_lost",
             "conids_opened", "conids_evicted", "datagrams_up", "datagrams_down",
             "keepalives"), 0,
        )
        self.drops: dict[str, int] = {}

    def drop(self, reason: str) -> None:
        """Count one datagram (or message) dropped for ``reason``."""
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def _pick(self) -> _Connection:
        """The slot for a new session: an unused one first, then the least loaded; slots
        waiting out a backoff only when no other can be had."""
        now = asyncio.get_running_loop().time()
        slots = [s for s in self.slots if s.up or s.retry_at <= now] or self.slots
        for s in slots:
            if s.up and not s.channels and not s.opening:
                return s
        for s in slots:
            if not s.channels and not s.opening and not s.up:
                return s
        return min(slots, key=lambda s: (not s.up, len(s.channels) + s.opening))

    async def open(self, receiver: DatagramReceiver) -> UdpgwChannel:
        """A session on one of the connections (dialled first when needed).

        Raises:
            UpstreamError: the connection could not be made through the upstream.
        """
        conn = self._pick()
        if not conn.up:
            conn.opening += 1
            try:
                await asyncio.shield(conn.ensure())
            finally:
                conn.opening -= 1
        ch = UdpgwChannel(conn, receiver)
        conn.channels.add(ch)
        self.counters["sessions_opened"] += 1
        return ch

    def stats(self) -> dict[str, object]:
        """Counters, connections up, conids held and drops by reason."""
        return {
            **self.counters,
            "connections_up": sum(1 for s in self.slots if s.up),
            "conids": sum(len(s.conids) for s in self.slots),
            "sessions": sum(len(s.channels) for s in self.slots),
            "drops": dict(self.drops),
        }

    def close(self) -> None:
        """Close every connection."""
        for s in self.slots:
            s.close()


class UdpgwUpstream(Upstream):
    """The main upstream for TCP; UDP through udpgw over it (see the module docstring)."""

    def __init__(self, inner: Upstream, settings: UdpgwSettings) -> None:
        self.inner = inner
        self.settings = settings
        self.name = inner.name
        self.pool = UdpgwPool(inner, settings)
        #: Sessions the upstream carried itself (``auto`` mode, the upstream has UDP).
        self.native_sessions = 0

    def bind_egress(self, egress: Egress) -> None:
        """Bind ``egress`` here and into the main upstream (the udpgw connections' dialler)."""
        super().bind_egress(egress)
        self.inner.bind_egress(egress)

    async def open_tcp(
        self, dst: Address, protocol: asyncio.Protocol, flow: FlowInfo
    ) -> asyncio.Transport:
        """Through the main upstream, unchanged."""
        return await self.inner.open_tcp(dst, protocol, flow)

    async def open_udp(self, flow: FlowInfo, receiver: DatagramReceiver) -> UdpChannel:
        """Through udpgw (``always``, or ``auto`` when the upstream says it has no UDP)."""
        if self.settings.mode == "auto":
            try:
                ch = await self.inner.open_udp(flow, receiver)
            except UpstreamError as e:
                if e.reason not in ("unsupported", "denied"):
                    raise
            else:
                self.native_sessions += 1
                return ch
        return await self.pool.open(receiver)

    def describe(self) -> str:
        """The main upstream and the udpgw server."""
        return f"{self.inner.describe()} (UDP via udpgw {self.settings.server})"

    def stats(self) -> dict[str, object]:
        """The udpgw counters (and the inner upstream's, when it has any)."""
        out: dict[str, object] = {"udpgw": self.pool.stats(), "native_udp": self.native_sessions}
        inner = getattr(self.inner, "stats", None)
        if callable(inner):
            out["inner"] = inner()
        return out

    async def close(self) -> None:
        """Close the udpgw connections and the main upstream."""
        self.pool.close()
        await self.inner.close()


def parse_server(text: str) -> Address:
    """``HOST:PORT`` or ``[V6]:PORT`` as the udpgw server's address.

    Raises:
        ValueError: not of that form.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"udpgw server must be HOST:PORT, got {text!r}")
    return Address.from_host(host, int(port))
