"""Application-side TCP clients on a PacketFlowLink, driven by asyncio: a TUN without a TUN.

:class:`AppHost` plays the role of the kernel and its applications: it opens connections with
this package's own TCP (active open), sends their packets into a
:class:`~tun2proxy.link.packet_flow.PacketFlowLink`, and feeds the packets the driver emits
back into them. Together with a :class:`~tun2proxy.driver.Driver` it runs whole flows in one
process, without root or a TUN device — for unit tests of the driver and for
:func:`tun2proxy.testing.conformance.check_upstream`.

Everything runs on one event loop; output from the driver is queued and processed on the
next loop iteration, never re-entrantly.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import MalformedPacket
from ..link.packet_flow import PacketFlowLink
from ..tcp.config import TcpConfig
from ..tcp.connection import TcpConnection
from ..tcp.state import CLOSED, TIME_WAIT
from ..wire.checksum import ones_sum
from ..wire.icmp import parse_icmp, parse_quoted
from ..wire.ip import parse_ip
from ..wire.tcp import parse_tcp

__all__ = ["AppConnection", "AppHost"]


@dataclass
class AppConnection:
    """One application connection: its TCP, and what it received so far."""

    conn: TcpConnection
    received: bytearray = field(default_factory=bytearray)
    icmp: list[tuple[int, int]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def established(self) -> bool:
        """The handshake completed."""
        return self.conn.state.value not in ("SYN-SENT", "CLOSED") or bool(self.received)

    @property
    def closed(self) -> bool:
        """CLOSED or TIME-WAIT."""
        return self.conn.state is CLOSED or self.conn.state is TIME_WAIT

    @property
    def close_reason(self) -> str | None:
        """Why the connection closed (``reset``, ``refused``, ``closed``, ...)."""
        return self.conn.close_reason


class AppHost:
    """Applications behind a PacketFlowLink (see the module docstring).

    Args:
        mtu: the MTU of the simulated tunnel.
        tcp: the applications' TCP settings.
        address: the applications' IPv4 source address; ``address6`` likewise for IPv6.
    """

    def __init__(
        self,
        *,
        mtu: int = 1500,
        tcp: TcpConfig | None = None,
        address: str = "10.0.0.2",
        address6: str = "fd00::2",
        read: bool = True,
        transmit: Callable[[list[bytes]], None] | None = None,
    ) -> None:
        self.link = PacketFlowLink(self._on_output, mtu=mtu)
        #: Where the applications' packets go: into :attr:`link` by default, or to a
        #: ``transmit`` callback (e.g. a socket standing in for a TUN fd; then pass what
        #: comes back to :meth:`receive`).
        self._transmit = transmit or self.link.feed
        self.mtu = mtu
        self.tcp = tcp or TcpConfig()
        self.address = ipaddress.ip_address(address).packed
        self.address6 = ipaddress.ip_address(address6).packed
        #: Whether applications read what they receive (False: a slow reader).
        self.read = read
        self.apps: dict[int, AppConnection] = {}
        self._inbox: list[bytes | bytearray] = []
        self._next_port = 30000
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self.other_packets: list[bytes] = []

    # ------------------------------------------------------------------ opening

    def connect(self, host: str, port: int) -> AppConnection:
        """Open a connection to ``host:port`` through the tunnel (SYN sent at once)."""
        loop = asyncio.get_running_loop()
        dst = ipaddress.ip_address(host)
        src = self.address if dst.version == 4 else self.address6
        self._next_port += 1
        sport = self._next_port
        conn = TcpConnection.connect(
            self.tcp, src, sport, dst.packed, port, sport * 7919, loop.time(),
            mss_limit=self.mtu - (40 if dst.version == 4 else 60),
        )
        app = AppConnection(conn)
        self.apps[sport] = app
        self.schedule()
        return app

    # ------------------------------------------------------------------ the pump

    def _on_output(self, packets: list[bytes | bytearray], families: list[int]) -> None:
        self._inbox.extend(packets)
        self.schedule()

    def receive(self, packets: list[bytes]) -> None:
        """Packets for the applications (when a ``transmit`` callback is used)."""
        self._inbox.extend(packets)
        self.schedule()

    def schedule(self) -> None:
        """Run :meth:`pump` on the next loop iteration (once)."""
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.pump)

    def pump(self) -> None:
        """Deliver queued packets to the apps, run their timers, send what they owe."""
        self._scheduled = False
        loop = asyncio.get_running_loop()
        now = loop.time()
        inbox, self._inbox = self._inbox, []
        for p in inbox:
            self._deliver(bytes(p), now)
        out: list[bytearray] = []
        for app in self.apps.values():
            c = app.conn
            if c.state is CLOSED:
                continue
            c.on_timer(now)
            if self.read:
                data = c.recv()
                if data:
                    app.received += data
            c.dispatch(now, out)
            if c.notify:
                c.notify = 0
                app.changed.set()
        if out:
            self._transmit([bytes(p) for p in out])
        self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = [a.conn.poll_at() for a in self.apps.values() if a.conn.state is not CLOSED]
        times = [t for t in due if t is not None]
        if times:
            self._timer = loop.call_at(max(min(times), loop.time()), self.pump)

    def _deliver(self, packet: bytes, now: float) -> None:
        try:
            ip = parse_ip(packet)
        except MalformedPacket:
            self.other_packets.append(packet)
            return
        if ip.protocol in (1, 58):
            self._deliver_icmp(packet, ip.offset, ip.end)
            return
        if ip.protocol != 6:
            self.other_packets.append(packet)
            return
        pseudo = int.from_bytes(ip.src, "big") + int.from_bytes(ip.dst, "big") + 6 + (
            ip.end - ip.offset
        )
        if ones_sum(memoryview(packet)[ip.offset : ip.end], pseudo) != 0:
            self.other_packets.append(packet)
            return
        seg = parse_tcp(packet, ip.offset, ip.end)
        app = self.apps.get(seg.dst_port)
        if app is None:
            self.other_packets.append(packet)
            return
        app.conn.on_segment(seg, now)
        app.changed.set()

    def _deliver_icmp(self, packet: bytes, off: int, end: int) -> None:
        msg = parse_icmp(packet, off, end)
        try:
            quoted = parse_quoted(msg.body)
        except MalformedPacket:
            self.other_packets.append(packet)
            return
        app = self.apps.get(quoted.src_port)
        if app is None:
            self.other_packets.append(packet)
            return
        app.icmp.append((msg.type, msg.code))
        # A real kernel aborts a connection attempt on an ICMP error (RFC 1122 4.2.3.9 for
        # SYN-SENT); do the same so tests can wait on it.
        if app.conn.state.value == "SYN-SENT":
            app.conn.abort("unreachable")
        app.changed.set()

    # ------------------------------------------------------------------ helpers for tests

    def send(self, app: AppConnection, data: bytes) -> int:
        """Queue bytes on an application connection; returns how many were taken."""
        n = app.conn.send(data)
        self.schedule()
        return n

    async def send_all(self, app: AppConnection, data: bytes, timeout: float = 30.0) -> None:
        """Send every byte of ``data``, waiting for window as a blocking app would."""
        view = memoryview(data)
        sent = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while sent < len(data):
            if app.closed:
                raise ConnectionError(f"connection closed ({app.close_reason}) while sending")
            n = app.conn.send(view[sent:]) if app.conn.send_capacity else 0
            sent += n
            self.schedule()
            if sent < len(data):
                await self._wait(app, deadline)

    def shutdown(self, app: AppConnection) -> None:
        """Half-close: the application is done sending."""
        app.conn.shutdown()
        self.schedule()

    async def wait(
        self, app: AppConnection, predicate: object, timeout: float = 30.0
    ) -> None:
        """Wait until ``predicate(app)`` is true (raises TimeoutError after ``timeout``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(app):  # type: ignore[operator]
            await self._wait(app, deadline)

    async def _wait(self, app: AppConnection, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        left = deadline - loop.time()
        if left <= 0:
            raise TimeoutError(f"app connection stuck in {app.conn.state.value}")
        app.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(app.changed.wait(), min(left, 0.05))
