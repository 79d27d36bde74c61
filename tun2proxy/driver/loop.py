"""The Driver: runs a link, a NetStack and an upstream on one asyncio loop.

Per wake-up: read every ready packet from the link -> ``NetStack.receive_many`` -> handle the
events (dial upstreams, feed relays) -> ``NetStack.poll`` -> write the packets to the link ->
re-arm one timer at ``NetStack.poll_at()``. Relays push upstream bytes into the stack from
their protocol callbacks and ask for a pump, which runs once per loop iteration however many
callbacks asked.

What happens to each kind of flow lives beside it, as mixins over the same state: a TCP
connect request in :mod:`.tcp_flows`, UDP datagrams in :mod:`.udp_flows`, the flow table API
in :mod:`.flow_api`; the settings in :mod:`.config`. This module keeps the loop: the pump,
the timer, event dispatch, start, stop and reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace

from ..errors import FlowStateError, describe_error
from ..link.base import Link
from ..logutil import RateLimitedLog
from ..proxy.address import Address
from ..stack.config import StackConfig
from ..stack.events import (
    TcpClosed,
    TcpConnectRequest,
    TcpPeerClosed,
    TcpReadable,
    TcpWritable,
    UdpDatagram,
    UdpSessionClosed,
)
from ..stack.netstack import NetStack
from ..upstream.base import Upstream
from ..upstream.dial import default_egress
from ..upstream.direct import DirectUpstream
from ..upstream.egress import Egress
from .config import UDP_POLICIES, DriverConfig
from .dialing import Dialer
from .dns import DnsHandler
from .flow_api import FlowApi
from .flows import FlowTable
from .relay import TcpRelay
from .tcp_flows import TcpFlows
from .udp_flows import UdpFlows
from .udp_relay import UdpRelay

__all__ = ["UDP_POLICIES", "Driver", "DriverConfig", "RateLimitedLog"]

log = logging.getLogger("tun2proxy")

class Driver(TcpFlows, UdpFlows, FlowApi):
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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._relays: dict[int, TcpRelay] = {}
        #: One record per live flow, for :meth:`flows`, :meth:`close_flow` and the
        #: flow-end hooks (see :mod:`tun2proxy.driver.flows`).
        self.flow_table = FlowTable(stack, self._relays, self._phase, self._time)
        self._bind(upstream)
        self.config = config or DriverConfig()
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
        for fid in self.flow_table.ids():
            self.flow_table.ending(fid, "shutdown")
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
        self.flow_table.close_all()  # their end events will not be seen: report them now
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
        if fid is not None:
            self.flow_table.ending(fid, "error", f"internal error: {exc!r}")
        relay = self._relays.pop(fid, None) if fid is not None else None
        if relay is not None:
            self.flow_table.relay_gone(fid, relay)  # type: ignore[arg-type]
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
            self.flow_table.tcp_closed(ev.flow_id, ev.reason, relay)
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
            self.flow_table.udp_closed(ev.flow_id, ev.reason)

    def reconfigure(
        self, upstream: Upstream | None = None, config: DriverConfig | None = None,
        stack: StackConfig | None = None,
    ) -> int:
        """New flows use ``upstream``, ``config`` (its ``connect_timeout``, ``udp`` and dial
        limits: ``max_connecting``, ``max_connecting_per_destination``, ``queue_timeout``)
        and the ``stack`` limits; open flows keep their upstream connections and settings. A
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
            if self._loop is not None:  # the dial queue's timer needs the loop
                self._dialer.reconfigure(
                    max_connecting=config.max_connecting,
                    max_connecting_per_destination=config.max_connecting_per_destination,
                    queue_timeout=config.queue_timeout,
                )
            else:
                self._dialer.queue.set_limits(
                    config.max_connecting, config.max_connecting_per_destination
                )
                self._dialer.queue_timeout = config.queue_timeout
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
        """Let ``upstream`` open its sockets through this tunnel's Egress (and, for a
        router, record each flow's routing target in the flow table)."""
        bind = getattr(upstream, "bind_egress", None)
        if callable(bind):  # an upstream not derived from Upstream may lack it
            bind(self.egress)
        if hasattr(upstream, "on_route"):
            upstream.on_route = self.flow_table.routed

    # ------------------------------------------------------------------ introspection

    def stats(self, per_flow: bool = True) -> dict[str, object]:
        """Stack counters, link counters and relay counts in one snapshot (``per_flow=False``:
        without the walk over the flow table, see :meth:`NetStack.stats`)."""
        s = self.stack.stats(per_flow)
        s["link"] = self.link.stats()
        s["relays"] = len(self._relays)
        s["udp_relays"] = len(self._udp)
        s["connecting"] = len(self._connecting)
        s["queued"] = len(self._dialer.queue)
        s["queue_expired"] = self._dialer.expired
        s["dials"] = self._dialer.stats.snapshot()
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
