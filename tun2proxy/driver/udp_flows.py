"""UdpFlows: a UDP datagram from the stack goes to the DNS handler, or to the UDP relay of its
session (opened through the UDP upstream on the first datagram); replies go back to the app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from ..errors import FlowStateError, UpstreamError, describe_error
from ..logutil import RateLimitedLog
from ..proxy.address import Address
from ..stack.events import UdpDatagram
from ..stack.netstack import NetStack
from ..upstream.base import FlowInfo, Upstream
from ..upstream.egress import Egress
from .config import DriverConfig
from .dialing import Dialer
from .dns import DnsHandler
from .flows import FlowTable
from .udp_relay import UdpRelay

__all__ = ["UdpFlows"]

log = logging.getLogger("tun2proxy")


class UdpFlows:
    """The Driver's UDP side: one relay per app session (a mixin)."""

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
    udp_upstream: Upstream
    udp_looped: int
    _udp: dict[int, UdpRelay]

    if TYPE_CHECKING:
        # The Driver's own.
        def _pump(self) -> None: ...
        def schedule_pump(self) -> None: ...
        @property
        def limited_log(self) -> RateLimitedLog: ...

    def _on_udp(self, ev: UdpDatagram) -> None:
        loop = self._loop
        assert loop is not None
        if ev.flow_id not in self.flow_table:
            self.flow_table.udp_started(ev.flow_id, ev.src, ev.dst)
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
            self.flow_table.ending(ev.flow_id, "refused", "routing-loop")
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
        if isinstance(name, str):
            self.flow_table.named(ev.flow_id, name)
        self.flow_table.routed(ev.flow_id, self.udp_upstream.name)
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
            self._dialer.stats.observe(0.0, reason, "udp")
            self._limited.log(
                logging.WARNING, f"udp:{reason}", "UDP from %s:%d failed (%s): %s",
                ev.src[0], ev.src[1], reason,
                "no upstream channel in time" if reason == "timeout" and not str(e)
                else describe_error(e),
            )
            self._udp.pop(ev.flow_id, None)
            relay.closed = True
            self.flow_table.ending(ev.flow_id, "refused", f"{reason}: {describe_error(e)}")
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
