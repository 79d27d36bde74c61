"""The Driver: runs a link, a NetStack and an upstream on one asyncio loop.

Per wake-up: read every ready packet from the link -> ``NetStack.receive_many`` -> handle the
events (dial upstreams, feed relays) -> ``NetStack.poll`` -> write the packets to the link ->
re-arm one timer at ``NetStack.poll_at()``. Relays push upstream bytes into the stack from
their protocol callbacks and ask for a pump, which runs once per loop iteration however many
callbacks asked.

(Over 700 lines: the pump, TCP and UDP dialling and the reload entry point share the flow
tables; splitting them would pass those tables around. Issue 10 tracks the split.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..dns.pool import SlotDirectory
from ..errors import ConfigError, FlowStateError, UpstreamError, describe_error
from ..link.base import Link
from ..logutil import RateLimitedLog
from ..proxy.address import Address
from ..routing.sniff import sniff_host
from ..stack.config import StackConfig
from ..stack.events import (
    RejectReason,
    TcpClosed,
    TcpConnectRequest,
    TcpPeerClosed,
    TcpReadable,
    TcpWritable,
    UdpDatagram,
    UdpSessionClosed,
)
from ..stack.netstack import NetStack
from ..upstream.base import FlowInfo, Upstream
from ..upstream.dial import default_egress
from ..upstream.direct import DirectUpstream
from ..upstream.egress import Egress
from .dialing import Dialer
from .dns import DNS_MODES, DnsHandler
from .relay import TcpRelay
from .udp_relay import UdpRelay

__all__ = ["UDP_POLICIES", "Driver", "DriverConfig", "RateLimitedLog"]

UDP_POLICIES = ("proxy", "direct", "reject")

log = logging.getLogger("tun2proxy")

#: How an upstream failure is reported to the app: RST, or an ICMP unreachable.
_REJECT: dict[str, RejectReason] = {
    "refused": "reset",
    "denied": "reset",
    "auth": "reset",
    "protocol": "reset",
    "unsupported": "reset",
    "error": "reset",
    "unreachable": "host",
    "timeout": "host",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverConfig:
    """Driver settings. Times in seconds.

    Attributes:
        connect_timeout: how long an upstream dial may take before the SYN is rejected.
        max_connecting: upstream dials in flight; further flows wait in the dial queue
            (they cost no upstream socket; the stack's ``max_pending`` and ``max_queued``
            bound the queue).
        max_connecting_per_destination: upstream dials in flight to one destination
            address; with round robin across destinations in the queue, a destination
            whose dials all hang (black-holed) holds this many slots and no more.
        queue_timeout: how long a flow may wait in the dial queue; then it is refused as
            unreachable (ICMP host unreachable, or RST when the app's connection is open:
            handshake-first flows under a SYN flood).
        shutdown_grace: on stop, how long flows get to close before they are reset.
        udp: ``proxy`` (UDP through the upstream when it can carry it, else ICMP port
            unreachable), ``direct`` (UDP from this host's network whatever the upstream),
            or ``reject`` (ICMP port unreachable at once, so QUIC falls back to TCP).
        dns: ``virtual`` (fake addresses answered here; flows reach the proxy by name),
            ``over-tcp`` (UDP queries forwarded as DNS over TCP through the upstream) or
            ``direct`` (DNS is ordinary UDP); see :mod:`tun2proxy.driver.dns`.
        dns_addr: where forwarded queries go (through the upstream).
        virtual_dns_pool, virtual_dns_pool6: the fake address ranges.
        sniff: read the host name from a TCP flow's first bytes (TLS SNI, HTTP ``Host``)
            when no name is known: the handshake is completed first, the upstream is dialled
            once the name is found or ``sniff_timeout`` has passed (bounded by
            ``sniff_bytes``), and a failed dial then resets the app's connection.
        worker: ``(index, count)`` of this driver among the worker processes of
            ``--workers`` (its share of the virtual DNS addresses).
        dns_directory: the virtual DNS directory the workers share (needed with count > 1).
    """

    connect_timeout: float = 10.0
    max_connecting: int = 256
    max_connecting_per_destination: int = 32
    queue_timeout: float = 10.0
    shutdown_grace: float = 0.5
    udp: str = "proxy"
    dns: str = "direct"
    dns_addr: tuple[str, int] = ("8.8.8.8", 53)
    virtual_dns_pool: str = "198.18.0.0/15"
    virtual_dns_pool6: str | None = None
    sniff: bool = False
    sniff_timeout: float = 0.3
    sniff_bytes: int = 16384 + 512
    worker: tuple[int, int] = (0, 1)
    dns_directory: SlotDirectory | None = None

    def __post_init__(self) -> None:
        if self.udp not in UDP_POLICIES:
            raise ConfigError(f"udp must be one of {', '.join(UDP_POLICIES)}")
        if self.dns not in DNS_MODES:
            raise ConfigError(f"dns must be one of {', '.join(DNS_MODES)}")
        if self.max_connecting < 1 or self.max_connecting_per_destination < 1:
            raise ConfigError("max_connecting and max_connecting_per_destination must be >= 1")
        if not self.queue_timeout > 0:
            raise ConfigError("queue_timeout must be positive")


class Driver:
    """Runs ``stack`` over ``link`` with flows bridged to ``upstream``.

    Use ``await driver.run()`` (returns after :meth:`stop` or a link failure), or
    :meth:`run_forever` on a thread of its own for hosts that feed packets from elsewhere.

    ``egress`` (default: a new :class:`~tun2proxy.upstream.egress.Egress`) holds this
    tunnel's outbound options, own-endpoint registry and resolver; it is bound into
    ``upstream`` here, so two Drivers in one process never share loop detection.
    """

    def __init__(
        self,
        stack: NetStack,
        link: Link,
        upstream: Upstream,
        config: DriverConfig | None = None,
        *,
        egress: Egress | None = None,
    ) -> None:
        self.stack = stack
        self.link = link
        self.upstream = upstream
        #: This tunnel's outbound options, own-endpoint registry and resolver.
        self.egress = egress if egress is not None else default_egress()
        self._bind(upstream)
        self.config = config or DriverConfig()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._relays: dict[int, TcpRelay] = {}
        self._connecting: dict[int, asyncio.Task[None]] = {}
        #: Which connect request is dialled when (the dial queue; handshake-first floods).
        self._dialer = Dialer(
            self,
            max_connecting=self.config.max_connecting,
            max_connecting_per_destination=self.config.max_connecting_per_destination,
            queue_timeout=self.config.queue_timeout,
        )
        self._udp: dict[int, UdpRelay] = {}
        self._fake_dst: dict[int, str] = {}
        self.udp_upstream: Upstream = (
            DirectUpstream() if self.config.udp == "direct" else upstream
        )
        if self.udp_upstream is not upstream:
            self._bind(self.udp_upstream)
        c = self.config
        self.dns = DnsHandler(
            self, c.dns, Address.from_host(*c.dns_addr), c.virtual_dns_pool, c.virtual_dns_pool6,
            partition=c.worker, directory=c.dns_directory,
        )
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._pump_scheduled = False
        self._pumping = False
        self._stopping = False
        self._done: asyncio.Future[None] | None = None
        self._limited = RateLimitedLog(log)
        self.link_error: BaseException | None = None
        self.flows_opened = 0
        self.flows_failed = 0
        #: Flows refused because they were our own upstream connections come back.
        self.flows_looped = 0
        #: UDP datagrams refused because our own UDP sockets sent them into the TUN.
        self.udp_looped = 0
        #: Sniffing outcomes: a name ``found`` or ``none``.
        self.sniff_counts = {"found": 0, "none": 0}
        self._sniffing: dict[int, asyncio.Event] = {}
        #: Upstreams replaced by :meth:`reconfigure`, with the flows open then.
        self._retired: list[tuple[Upstream, set[int]]] = []
        self._closing: set[asyncio.Task[None]] = set()

    @staticmethod
    def make_stack(config: StackConfig | None = None, **kw: object) -> NetStack:
        """A NetStack with a fresh random ISN secret (the pure core takes none of its own)."""
        cfg = config or StackConfig()
        if not cfg.isn_secret:
            cfg = replace(cfg, isn_secret=os.urandom(16))
        if kw:
            cfg = replace(cfg, **kw)  # type: ignore[arg-type]
        return NetStack(cfg)

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve until :meth:`stop` is called or the link fails."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._done = loop.create_future()
        self.link.start(loop, self._on_packets, self._on_link_error)
        try:
            await self._done
        finally:
            await self._shutdown()

    def run_forever(self) -> None:
        """Run on a new event loop in the calling thread (for embedding on a thread)."""
        asyncio.run(self.run())

    def stop(self) -> None:
        """Ask the driver to shut down: new flows are refused, open flows are closed."""
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def stop_threadsafe(self) -> None:
        """:meth:`stop` from another thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.stop)

    async def _shutdown(self) -> None:
        self._stopping = True
        self._dialer.close()
        for task in list(self._connecting.values()):
            task.cancel()
        for fid in list(self._relays):
            with contextlib.suppress(FlowStateError):
                self.stack.shutdown(fid)
        self._pump()
        deadline = time.monotonic() + self.config.shutdown_grace
        while self._relays and time.monotonic() < deadline and self.link_error is None:
            await asyncio.sleep(0.02)
        for fid in list(self._relays):
            with contextlib.suppress(FlowStateError):
                self.stack.abort(fid)
        for fid in list(self._connecting):
            with contextlib.suppress(FlowStateError):
                self.stack.tcp_reject(fid)
        self._pump()
        for relay in list(self._relays.values()):
            relay.on_closed("aborted")
        self._relays.clear()
        for urelay in list(self._udp.values()):
            urelay.close()
        self._udp.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.link.close()
        for up in (self.upstream, *(r[0] for r in self._retired)):
            with contextlib.suppress(Exception):
                await up.close()

    def _on_link_error(self, exc: BaseException) -> None:
        if self.link_error is not None:
            return  # one failure, one line (writes during the shutdown fail again)
        self.link_error = exc
        log.error("link %s failed: %s; shutting down", self.link.name, describe_error(exc))
        self.stop()

    # ------------------------------------------------------------------ the pump

    def _on_packets(self, packets: list[bytes]) -> None:
        loop = self._loop
        assert loop is not None
        self.stack.receive_many(packets, loop.time(), checksum_ok=self.link.checksum_ok)
        self._pump()

    def schedule_pump(self) -> None:
        """Run the pump once soon (coalesces many relay callbacks into one poll)."""
        if not self._pump_scheduled and self._loop is not None:
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        if self._pumping:
            # Called from inside a handler (an upstream that answers synchronously): the
            # running pump would have its events taken from under it; run once more after.
            self.schedule_pump()
            return
        self._pump_scheduled = False
        loop = self._loop
        if loop is None:
            return
        stack = self.stack
        self._pumping = True
        try:
            for _ in range(16):
                evs = stack.events()
                for ev in evs:
                    try:
                        self._handle(ev)
                    except Exception as e:  # a bug in one flow's handling must not stall all
                        self._handler_failed(ev, e)
                if self._dialer.queue.unverified and stack.syn_flood_mode:
                    self._dialer.handshake_first_for_queued()
                now = loop.time()
                out = stack.poll(now)
                if out:
                    self.link.write_batch(out)
                if not stack.busy():
                    break
        finally:
            self._pumping = False
        self._arm_timer()

    def _handler_failed(self, ev: object, exc: Exception) -> None:
        """An event handler raised: reset that flow, log once per kind, keep going."""
        fid = getattr(ev, "flow_id", None)
        self.stack.stats_counters.drop("driver-handler-error")
        self._limited.log(
            logging.ERROR, f"handler:{type(ev).__name__}",
            "internal error handling %s for flow %s: %r (the flow is reset; please report)",
            type(ev).__name__, fid, exc,
        )
        log.debug("handler error", exc_info=exc)
        if fid is not None and fid in self.stack:
            with contextlib.suppress(FlowStateError, ValueError):
                self.stack.abort(fid)
        relay = self._relays.pop(fid, None) if fid is not None else None
        if relay is not None and relay.transport is not None:
            relay.closed = True
            relay.transport.abort()

    def _arm_timer(self) -> None:
        loop = self._loop
        assert loop is not None
        at = self.stack.poll_at()
        if at is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
                self._timer_at = None
            return
        if self._timer is not None:
            if self._timer_at == at:
                return
            self._timer.cancel()
        if at <= loop.time():
            self._timer = None
            self._timer_at = None
            self.schedule_pump()
            return
        self._timer_at = at
        self._timer = loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._pump()

    # ------------------------------------------------------------------ events

    def _handle(self, ev: object) -> None:
        if isinstance(ev, TcpReadable):
            relay = self._relays.get(ev.flow_id)
            if relay is not None:
                relay.on_readable()
            elif self._sniffing:
                w = self._sniffing.get(ev.flow_id)
                if w is not None:
                    w.set()
        elif isinstance(ev, TcpWritable):
            relay = self._relays.get(ev.flow_id)
            if relay is not None:
                relay.on_writable()
        elif isinstance(ev, TcpConnectRequest):
            self._on_connect_request(ev)
        elif isinstance(ev, TcpPeerClosed):
            relay = self._relays.get(ev.flow_id)
            if relay is not None:
                relay.on_peer_closed()
            elif self._sniffing:
                w = self._sniffing.get(ev.flow_id)
                if w is not None:
                    w.set()  # nothing more will come: look at what there is
        elif isinstance(ev, TcpClosed):
            fake = self._fake_dst.pop(ev.flow_id, None)
            if fake is not None and self._loop is not None:
                self.dns.flow_ended(fake, self._loop.time())
            relay = self._relays.pop(ev.flow_id, None)
            if relay is not None:
                relay.on_closed(ev.reason)
            task = self._connecting.pop(ev.flow_id, None)
            if task is not None:
                task.cancel()
            else:
                self._dialer.flow_closed(ev.flow_id)
            log.debug("flow %d closed: %s", ev.flow_id, ev.reason)
        elif isinstance(ev, UdpDatagram):
            self._on_udp(ev)
        elif isinstance(ev, UdpSessionClosed):
            urelay = self._udp.pop(ev.flow_id, None)
            if urelay is not None:
                urelay.close()

    # ------------------------------------------------------------------ UDP

    def _on_udp(self, ev: UdpDatagram) -> None:
        loop = self._loop
        assert loop is not None
        if ev.dst[1] == 53 and self.dns.handle_udp(ev, loop.time()):
            return
        name = self.dns.name_for(ev.dst[0], loop.time())
        if name is False:
            self.stack.stats_counters.drop("udp-unmapped-fake-address")
            return
        dst = Address(name, ev.dst[1]) if isinstance(name, str) else Address(*ev.dst)
        relay = self._udp.get(ev.flow_id)
        if relay is not None:
            relay.send(ev.payload, dst)
            return
        if self.egress.is_own(ev.src[0], ev.src[1]):
            # Our own UDP socket's datagram came back through the TUN: relaying it would open
            # another socket whose datagram comes back too, for ever. Drop it, and the session.
            self.udp_looped += 1
            self.stack.stats_counters.drop("udp-routing-loop")
            with contextlib.suppress(FlowStateError):
                self.stack.udp_close(ev.flow_id)
            self._limited.log(
                logging.ERROR, "routing-loop-udp",
                "routing loop: tun2proxy's own UDP socket %s:%d sent into the TUN (to %s:%d); "
                "keep its traffic out of the tunnel (--outbound-interface, --fwmark, routes "
                "that exclude it, or --unshare/--tun-netns)",
                ev.src[0], ev.src[1], ev.dst[0], ev.dst[1],
            )
            return
        if self._stopping or self.config.udp == "reject":
            with contextlib.suppress(FlowStateError):
                self.stack.udp_reject(ev.flow_id, "port")
            return
        relay = UdpRelay(self, ev.flow_id, ":" in ev.src[0])
        self._udp[ev.flow_id] = relay
        relay.send(ev.payload, dst)
        relay.task = loop.create_task(self._open_udp(relay, ev))

    async def _open_udp(self, relay: UdpRelay, ev: UdpDatagram) -> None:
        flow = FlowInfo(ev.flow_id, ev.src, ev.dst, protocol="udp")
        try:
            channel = await asyncio.wait_for(
                self.udp_upstream.open_udp(flow, relay), self.config.connect_timeout
            )
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a custom upstream may raise anything: the session ends
            if isinstance(e, UpstreamError):
                reason = e.reason
            elif isinstance(e, TimeoutError):
                reason = "timeout"
            else:
                reason = "error"
                log.debug("open_udp raised", exc_info=e)
            self._limited.log(
                logging.WARNING, f"udp:{reason}", "UDP from %s:%d failed (%s): %s",
                ev.src[0], ev.src[1], reason,
                "no upstream channel in time" if reason == "timeout" and not str(e)
                else describe_error(e),
            )
            self._udp.pop(ev.flow_id, None)
            relay.closed = True
            if ev.flow_id in self.stack:
                with contextlib.suppress(FlowStateError):
                    self.stack.udp_reject(ev.flow_id, "port")
            self.schedule_pump()
            return
        if relay.closed or self._stopping:
            channel.close()
            return
        relay.opened(channel)

    def udp_reply(self, relay: UdpRelay, payload: bytes, src: Address) -> None:
        """A datagram from upstream for the app (called by the relay)."""
        host = src.host
        if src.is_domain:
            loop = self._loop
            assert loop is not None
            fake = self.dns.fake_address(host, relay.v6, loop.time())
            if fake is None:
                return
            host = fake
        try:
            self.stack.udp_send(relay.flow_id, payload, (host, src.port))
        except FlowStateError:
            relay.close()
            self._udp.pop(relay.flow_id, None)
            return
        except ValueError:
            return  # a reply of the other IP version: cannot be shown to this app socket
        # Out at once rather than on the next loop iteration: a datagram waits for nothing
        # that could join it.
        self._pump()

    def udp_lost(self, relay: UdpRelay, exc: BaseException | None) -> None:
        """The relay's channel died: end the session (the next datagram builds a new one)."""
        self._udp.pop(relay.flow_id, None)
        relay.close()
        if relay.flow_id in self.stack:
            with contextlib.suppress(FlowStateError):
                self.stack.udp_close(relay.flow_id)
        self.schedule_pump()

    def _on_connect_request(self, ev: TcpConnectRequest) -> None:
        if self.egress.is_own(ev.src[0], ev.src[1]):
            # One of our own upstream connections came back through the TUN: dialling again
            # would loop until every fd is gone (tun2proxy#215). Refuse it.
            self.flows_looped += 1
            self.stack.tcp_reject(ev.flow_id)
            self._limited.log(
                logging.ERROR, "routing-loop",
                "routing loop: tun2proxy's own connection from %s:%d to %s:%d came back "
                "through the TUN; keep its traffic out of the tunnel (--outbound-interface, "
                "--fwmark, routes that exclude the proxy, or --unshare/--tun-netns)",
                ev.src[0], ev.src[1], ev.dst[0], ev.dst[1],
            )
            return
        if self._stopping:
            self.stack.tcp_reject(ev.flow_id)
            return
        self._dialer.request(ev)

    async def _connect(self, ev: TcpConnectRequest) -> None:
        fid = ev.flow_id
        relay = TcpRelay(self, fid)
        loop = self._loop
        assert loop is not None
        name = self.dns.name_for(ev.dst[0], loop.time())
        if name is False:
            # A fake address whose name is forgotten: fail closed, never dial the fake IP.
            self._connecting.pop(fid, None)
            self.flows_failed += 1
            self.stack.tcp_reject(fid, "host")
            self.schedule_pump()
            return
        early = False
        sniffed: str | None = None
        if self.config.sniff and not isinstance(name, str):
            early = not ev.established
            if early:
                # Complete the handshake now: the name is in the app's first bytes.
                self.stack.tcp_accept(fid)
                self.schedule_pump()
            sniffed = await self._sniff(fid)
            if fid not in self.stack:
                self._connecting.pop(fid, None)
                return  # the app went away while we looked
        domain = name if isinstance(name, str) else sniffed
        flow = FlowInfo(fid, ev.src, ev.dst, domain=domain)
        if isinstance(name, str):
            self.dns.flow_started(ev.dst[0])
            self._fake_dst[fid] = ev.dst[0]
        dst = (
            Address(name, ev.dst[1]) if isinstance(name, str)
            else Address.from_host(ev.dst[0], ev.dst[1])
        )
        transport: asyncio.Transport | None = None
        reason: str | None = None
        try:
            async with asyncio.timeout(self.config.connect_timeout):  # no extra task
                transport = await self.upstream.open_tcp(dst, relay, flow)
        except asyncio.CancelledError:
            self._connecting.pop(fid, None)
            raise
        except UpstreamError as e:
            reason = e.reason
            self._limited.log(
                logging.WARNING, f"upstream:{e.reason}", "flow to %s failed (%s): %s", dst,
                e.reason, e,
            )
        except TimeoutError:
            reason = "timeout"
            self._limited.log(
                logging.WARNING, "upstream:timeout",
                "flow to %s failed (timeout): no upstream connection within %.0fs", dst,
                self.config.connect_timeout,
            )
        except Exception as e:  # a bug in an upstream must not kill the driver
            reason = "error"
            log.exception("flow to %s: upstream %s raised %r", dst, self.upstream.name, e)
        self._connecting.pop(fid, None)
        stack = self.stack
        if fid not in stack or self._stopping:
            # The app gave up (RST, pending timeout) or we are stopping.
            if transport is not None:
                transport.abort()
            if fid in stack:
                with contextlib.suppress(FlowStateError):
                    if early:
                        stack.abort(fid)
                    else:
                        stack.tcp_reject(fid)
            self.schedule_pump()
            return
        if reason is not None or transport is None:
            self.flows_failed += 1
            if early:
                stack.abort(fid)  # the app's connection is open: a reset tells it
            else:
                stack.tcp_reject(fid, _REJECT.get(reason or "error", "reset"))
        else:
            self.flows_opened += 1
            if not early:
                stack.tcp_accept(fid)
            self._relays[fid] = relay
            relay.on_accepted()
            log.debug("flow %d: %s -> %s via %s", fid, ev.src, dst, self.upstream.name)
        # The SYN-ACK (or the refusal) leaves now, not on the next loop iteration: it is on
        # every connection's critical path.
        self._pump()

    async def _sniff(self, fid: int) -> str | None:
        """Wait (boundedly) for the app's first bytes and read a host name from them."""
        loop = self._loop
        assert loop is not None
        deadline = loop.time() + self.config.sniff_timeout
        waiter = asyncio.Event()
        self._sniffing[fid] = waiter
        result = None
        try:
            while fid in self.stack:
                waiter.clear()
                data = self.stack.peek(fid, self.config.sniff_bytes)
                if data:
                    result = sniff_host(data)
                    if not result.need_more:
                        break
                    if len(data) >= self.config.sniff_bytes:
                        break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(waiter.wait(), remaining)
                except TimeoutError:
                    break
        finally:
            self._sniffing.pop(fid, None)
        host = result.host if result is not None else None
        self.sniff_counts["found" if host else "none"] += 1
        if host:
            log.debug("flow %d: sniffed %s (%s)", fid, host, result.protocol if result else "")
        return host

    def reconfigure(
        self, upstream: Upstream | None = None, config: DriverConfig | None = None,
        stack: StackConfig | None = None,
    ) -> int:
        """New flows use ``upstream``, ``config`` (its ``connect_timeout`` and ``udp``) and
        the ``stack`` limits; open flows keep their upstream connections and settings. A
        replaced upstream is closed once the flows open now have ended (checked at the next
        call) or at shutdown. Returns how many flows keep the previous configuration.
        """
        live = set(self._relays) | set(self._connecting) | set(self._udp)
        for old in [r for r in self._retired if not (r[1] & live) and self._loop]:
            self._retired.remove(old)
            task = self.loop.create_task(old[0].close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        if stack is not None:
            self.stack.reconfigure(stack)
        if config is not None:
            self.config = config
        before = self.upstream, self.udp_upstream
        if upstream is not None:
            self._bind(upstream)
            self.upstream = upstream
        if self.config.udp != "direct":
            self.udp_upstream = self.upstream
        elif before[1] is before[0]:
            self.udp_upstream = DirectUpstream()
            self._bind(self.udp_upstream)
        for up in before:
            if up is not self.upstream and up is not self.udp_upstream and all(
                up is not r[0] for r in self._retired
            ):
                self._retired.append((up, live))
        return len(live)

    def _bind(self, upstream: Upstream) -> None:
        """Let ``upstream`` open its sockets through this tunnel's Egress."""
        bind = getattr(upstream, "bind_egress", None)
        if callable(bind):  # an upstream not derived from Upstream may lack it
            bind(self.egress)

    # ------------------------------------------------------------------ introspection

    def stats(self) -> dict[str, object]:
        """Stack counters, link counters and relay counts in one snapshot."""
        s = self.stack.stats()
        s["link"] = self.link.stats()
        s["relays"] = len(self._relays)
        s["udp_relays"] = len(self._udp)
        s["connecting"] = len(self._connecting)
        s["queued"] = len(self._dialer.queue)
        s["queue_expired"] = self._dialer.expired
        s["flows_opened"] = self.flows_opened
        s["flows_failed"] = self.flows_failed
        s["flows_looped"] = self.flows_looped
        s["udp_looped"] = self.udp_looped
        if self.config.sniff:
            s["sniff"] = dict(self.sniff_counts)
        router_stats = getattr(self.upstream, "stats", None)
        if callable(router_stats):
            s["upstream"] = router_stats()
        s["dns"] = self.dns.stats()
        s["tables"] = self.table_sizes()
        return s

    def table_sizes(self) -> dict[str, int]:
        """The size of every table keyed by address, port or flow, in the stack and here:
        flows, timers, UDP sessions, DNS mappings, the dial queue, relays, the egress's own
        endpoints, rate-limited log keys, and the upstream's own tables if it reports them.

        For leak checks (``benchmarks/soak.py``, ``tests/driver/test_churn.py``): after the
        churn stops and the timeouts pass, each is back to its value before the churn.
        """
        t = self.stack.table_sizes()
        t.update(self._dialer.queue.table_sizes())
        t.update(self.dns.table_sizes())
        t.update(
            relays=len(self._relays),
            connecting=len(self._connecting),
            udp_relays=len(self._udp),
            fake_destinations=len(self._fake_dst),
            sniffing=len(self._sniffing),
            retired_upstreams=len(self._retired),
            closing_tasks=len(self._closing),
            egress_own_endpoints=self.egress.own_count,
            egress_lookups_waiting=self.egress.lookups_waiting,
            log_keys=len(self._limited),
        )
        for name, up in (("upstream", self.upstream), ("udp_upstream", self.udp_upstream)):
            sizes = getattr(up, "table_sizes", None)
            if callable(sizes) and (name == "upstream" or up is not self.upstream):
                for k, v in sizes().items():
                    t[f"{name}_{k}"] = int(v)
        return t

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the driver runs on (while :meth:`run` runs)."""
        if self._loop is None:
            raise RuntimeError("the driver is not running")
        return self._loop

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called (no new flows are taken)."""
        return self._stopping

    @property
    def on_error(self) -> Callable[[BaseException], None]:
        """The link-error callback (for links constructed outside :meth:`run`)."""
        return self._on_link_error

    @property
    def limited_log(self) -> RateLimitedLog:
        """The rate-limited logger the driver shares with its relays and DNS handler."""
        return self._limited

    def start_dial(self, ev: TcpConnectRequest) -> asyncio.Task[None]:
        """Start dialling the upstream for ``ev``'s flow (called by the dial queue)."""
        task = self.loop.create_task(self._connect(ev))
        self._connecting[ev.flow_id] = task
        return task

    def count_failed_flow(self) -> None:
        """One more flow refused (the ``flows_failed`` counter)."""
        self.flows_failed += 1
