"""The Driver's flow API for observers and embedders: snapshots of the live flows, closing
them (one, or by filter), and the flow-end hooks; a mixin of
:class:`~tun2proxy.driver.loop.Driver` over its flow tables (see :mod:`.flows`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from ..errors import FlowStateError
from ..stack.netstack import NetStack
from ..tcp.connection import TcpConnection
from .dialing import Dialer
from .dns import DnsHandler
from .flows import FlowFilter, FlowHook, FlowSnapshot, FlowTable
from .relay import TcpRelay
from .udp_relay import UdpRelay

__all__ = ["FlowApi"]


class FlowApi:
    """``flows()``, ``flow()``, ``close_flow()``, ``close_flows()`` and the flow-end hooks
    (call them on the driver's loop; from another thread through
    ``driver.loop.call_soon_threadsafe``)."""

    # The Driver's state this mixin reads (set by Driver.__init__).
    stack: NetStack
    flow_table: FlowTable
    dns: DnsHandler
    _loop: asyncio.AbstractEventLoop | None
    _relays: dict[int, TcpRelay]
    _udp: dict[int, UdpRelay]
    _sniffing: dict[int, asyncio.Event]
    _connecting: dict[int, asyncio.Task[None]]
    _dialer: Dialer

    def schedule_pump(self) -> None:  # pragma: no cover - the Driver's own
        """Run the pump once soon."""
        raise NotImplementedError

    def _time(self) -> float:
        return self._loop.time() if self._loop is not None else time.monotonic()

    def _phase(self, fid: int) -> str:
        """What the driver is doing with flow ``fid`` (a snapshot's ``state``)."""
        relay = self._relays.get(fid)
        if relay is not None:
            if relay.app_eof and relay.upstream_eof:
                return "closing"
            return "half-closed" if relay.app_eof or relay.upstream_eof else "open"
        if fid in self._udp:
            return "open" if self._udp[fid].channel is not None else "opening"
        if fid in self._sniffing:
            return "sniffing"
        if fid in self._connecting:
            return "dialing"
        if fid in self._dialer.queue:
            return "queued"
        obj = self.stack.flow_object(fid)
        if obj is not None and not isinstance(obj, TcpConnection):
            return "dns" if self.dns.mode != "direct" else "open"
        return "pending"

    def flows(self) -> list[FlowSnapshot]:
        """A snapshot of every live TCP flow and UDP session (call on the driver's loop)."""
        return self.flow_table.snapshot()

    def flow(self, flow_id: int) -> FlowSnapshot | None:
        """One live flow's snapshot, or None."""
        return self.flow_table.get(flow_id)

    def close_flow(self, flow_id: int, *, why: str = "closed") -> bool:
        """Close flow ``flow_id`` now: a TCP flow gets an RST towards the app and its
        upstream connection is aborted; a UDP session gets ICMP "administratively
        prohibited" and its channel is closed. Its end (``why``) reaches the flow-end hooks.
        False when there is no such flow. Call on the driver's loop."""
        stack = self.stack
        obj = stack.flow_object(flow_id)
        if obj is None:
            return False
        self.flow_table.ending(flow_id, why)
        try:
            if isinstance(obj, TcpConnection):
                if obj.state.value == "LISTEN":  # not answered yet: refuse the SYN
                    stack.tcp_reject(flow_id, "reset")
                else:
                    stack.abort(flow_id)
            else:
                stack.udp_reject(flow_id, "admin")
        except FlowStateError:
            return False
        self.schedule_pump()
        return True

    def close_flows(self, match: FlowFilter | None = None, **terms: str | None) -> list[int]:
        """Close every flow matching ``match`` (or the :class:`FlowFilter` terms ``dst``,
        ``host``, ``upstream``, ``protocol``); the ids closed. An empty filter closes none."""
        f = match if match is not None else FlowFilter(**terms)
        return [s.id for s in self.flows() if f.matches(s) and self.close_flow(s.id)]

    def add_flow_end_hook(self, hook: FlowHook) -> None:
        """Call ``hook(snapshot)`` on the driver's loop when a flow ends (``end`` and
        ``detail`` say how); it must not block. Exceptions are logged and ignored."""
        self.flow_table.hooks.append(hook)

    def remove_flow_end_hook(self, hook: FlowHook) -> None:
        """Stop calling ``hook``."""
        with contextlib.suppress(ValueError):
            self.flow_table.hooks.remove(hook)
