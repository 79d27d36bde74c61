"""TcpFlows: a TCP connect request from the stack becomes an upstream dial (routing-loop check,
virtual DNS name, sniffing), then an accepted flow with its relay, or a refusal the app sees."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import TYPE_CHECKING

from ..errors import FlowStateError, UpstreamError
from ..logutil import RateLimitedLog
from ..proxy.address import Address
from ..routing.sniff import sniff_host
from ..stack.events import RejectReason, TcpConnectRequest
from ..stack.netstack import NetStack
from ..upstream.base import FlowInfo, Upstream
from ..upstream.egress import Egress
from .config import DriverConfig
from .dialing import Dialer
from .dns import DnsHandler
from .flows import FlowTable
from .relay import TcpRelay

__all__ = ["TcpFlows"]

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


class TcpFlows:
    """The Driver's TCP side: deciding each SYN by dialling the upstream (a mixin)."""

    # The Driver's state this mixin works on (set by Driver.__init__).
    stack: NetStack
    config: DriverConfig
    egress: Egress
    flow_table: FlowTable
    dns: DnsHandler
    _loop: asyncio.AbstractEventLoop | None
    _limited: RateLimitedLog
    _dialer: Dialer
    _stopping: bool
    upstream: Upstream
    flows_opened: int
    flows_failed: int
    flows_looped: int
    sniff_counts: dict[str, int]
    _relays: dict[int, TcpRelay]
    _connecting: dict[int, asyncio.Task[None]]
    _fake_dst: dict[int, str]
    _sniffing: dict[int, asyncio.Event]

    if TYPE_CHECKING:
        # The Driver's own.
        def _pump(self) -> None: ...
        def schedule_pump(self) -> None: ...
        @property
        def limited_log(self) -> RateLimitedLog: ...

    def _on_connect_request(self, ev: TcpConnectRequest) -> None:
        self.flow_table.tcp_started(ev.flow_id, ev.src, ev.dst)
        if self.egress.is_own(ev.src[0], ev.src[1]):
            # One of our own upstream connections came back through the TUN: dialling again
            # would loop until every fd is gone (tun2proxy#215). Refuse it.
            self.flows_looped += 1
            self.flow_table.ending(ev.flow_id, "refused", "routing-loop")
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
            self.flow_table.ending(ev.flow_id, "shutdown")
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
            self.flow_table.ending(fid, "refused", "virtual DNS name forgotten")
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
        self.flow_table.named(fid, domain)
        self.flow_table.routed(fid, self.upstream.name)  # a router names its target instead
        if isinstance(name, str):
            self.dns.flow_started(ev.dst[0])
            self._fake_dst[fid] = ev.dst[0]
        dst = (
            Address(name, ev.dst[1]) if isinstance(name, str)
            else Address.from_host(ev.dst[0], ev.dst[1])
        )
        transport: asyncio.Transport | None = None
        reason: str | None = None
        dial_started = loop.time()
        if not early:
            # Accept (SYN-ACK) as soon as the upstream stream is ready, inside the callback
            # that made it so; the dial's task resumes only on the next loop iteration.
            relay.on_connected = functools.partial(self._accept_connected, fid, relay, dst)
        try:
            async with asyncio.timeout(self.config.connect_timeout):  # no extra task
                transport = await self.upstream.open_tcp(dst, relay, flow)
        except asyncio.CancelledError:
            self._connecting.pop(fid, None)
            raise
        except UpstreamError as e:
            reason = e.reason
            self.flow_table.ending(fid, "refused", f"{e.reason}: {e}")
            self._limited.log(
                logging.WARNING, f"upstream:{e.reason}", "flow to %s failed (%s): %s", dst,
                e.reason, e,
            )
        except TimeoutError:
            reason = "timeout"
            self.flow_table.ending(fid, "refused", "timeout: no upstream connection in time")
            self._limited.log(
                logging.WARNING, "upstream:timeout",
                "flow to %s failed (timeout): no upstream connection within %.0fs", dst,
                self.config.connect_timeout,
            )
        except Exception as e:  # a bug in an upstream must not kill the driver
            reason = "error"
            self.flow_table.ending(fid, "refused", f"error: {e!r}")
            log.exception("flow to %s: upstream %s raised %r", dst, self.upstream.name, e)
        self._dialer.stats.observe(loop.time() - dial_started, reason)
        relay.on_connected = None
        if relay.accepted and not early:  # accepted by _accept_connected already
            if reason is not None and self._relays.get(fid) is relay:
                # The upstream failed after handing over its stream: reset the app.
                self._relays.pop(fid, None)
                relay.closed = True
                if relay.transport is not None:
                    relay.transport.abort()
                with contextlib.suppress(FlowStateError):
                    if fid in self.stack:
                        self.stack.abort(fid)
                self._pump()
            return
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

    def _accept_connected(self, fid: int, relay: TcpRelay, dst: Address) -> None:
        """The upstream stream of a flow being dialled is ready: accept the flow now (what
        :meth:`_connect` does after its await, one loop iteration earlier). Left to
        :meth:`_connect` when the app is gone or we are stopping."""
        stack = self.stack
        if fid not in stack or self._stopping or self._connecting.get(fid) is None:
            return
        self._connecting.pop(fid, None)
        self.flows_opened += 1
        stack.tcp_accept(fid)
        self._relays[fid] = relay
        relay.on_accepted()
        log.debug("flow %d: -> %s via %s", fid, dst, self.upstream.name)
        self._pump()  # the SYN-ACK leaves in this wake-up

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
