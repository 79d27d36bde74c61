"""The driver's flow table for observers: one record per TCP flow and UDP session, typed
snapshots of them (:class:`FlowSnapshot`), how each ended, and the flow-end hooks.

Nothing here runs per packet. A record is made when a flow starts (one small object and a
dict insert) and dropped when it ends; the traffic counters it shows are read, when a
snapshot is taken, from the objects that already count them: the TCP connection's
``packets_in``/``packets_out`` slots, the relay's ``bytes_up``/``bytes_down`` slots, the UDP
session's datagram and byte counters. Rates are computed between two snapshots (at least
:data:`RATE_WINDOW` apart), so a flow that nobody looks at costs nothing more.

How a flow ended (:attr:`FlowSnapshot.end`), from the first cause seen:

* ``app-fin`` / ``upstream-eof``: an orderly close, started by the app or by the upstream;
* ``app-reset``: the app sent an RST; ``upstream-reset``: the upstream connection broke
  (``detail`` says how); ``closed``: closed through the control API or :meth:`close`;
* ``timeout`` (retransmissions or the handshake), ``idle`` (``--tcp-timeout``,
  ``--udp-timeout``), ``evicted`` (the table was full);
* ``refused``: the flow was never bridged (``detail``: the upstream's reason and message,
  a routing loop, a forgotten virtual DNS name, the dial queue's deadline...);
* ``shutdown``: the driver stopped; ``error``: an internal error (please report);
  ``aborted``: reset by the host for another reason; for UDP also ``rejected``,
  ``unreachable`` (the app's port is gone) and ``closed``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..stack.events import Endpoint
from ..stack.flow import StackConnection
from ..stack.netstack import NetStack
from ..udp.session import UdpSession
from .relay import TcpRelay

__all__ = ["RATE_WINDOW", "FlowFilter", "FlowHook", "FlowSnapshot", "FlowTable"]

log = logging.getLogger("tun2proxy")

#: Rates are averaged over at least this many seconds (between two snapshots).
RATE_WINDOW = 1.0


@dataclass(slots=True, kw_only=True)
class FlowSnapshot:
    """One flow as it is (or, given to a flow-end hook, as it ended): a copy, made when
    asked for (not frozen, which would make it several times dearer to build; changing it
    changes nothing).

    Attributes:
        id: the flow id (TCP and UDP share one id space).
        protocol: ``tcp`` or ``udp``.
        src: the app's endpoint; ``dst``: where the app sent (an IP literal, maybe fake).
        host: the host name behind ``dst`` when known (virtual DNS, SNI/Host sniffing).
        upstream: the upstream the flow went through (a routing target name with rules,
            else the upstream's kind: ``socks5``, ``direct``...); None before it is dialled.
        state: ``queued`` (waiting for a dial slot), ``sniffing``, ``dialing``, ``open``,
            ``half-closed``, ``closing``, ``pending``; UDP ``opening``, ``open`` or ``dns``.
        tcp_state: the TCP state (``ESTABLISHED``...) or None for UDP.
        bytes_up, bytes_down: payload bytes app -> upstream and upstream -> app.
        packets_up, packets_down: IP packets from the app and to the app.
        age: seconds since the flow started; ``idle``: since its last packet.
        rate_up, rate_down: bytes per second over the last sampling window (0.0 until a
            second snapshot, at least :data:`RATE_WINDOW` after the first).
        end, detail: how the flow ended and a detail (see the module docstring); None for
            a live flow.
    """

    id: int
    protocol: str
    src: Endpoint
    dst: Endpoint
    host: str | None
    upstream: str | None
    state: str
    tcp_state: str | None
    bytes_up: int
    bytes_down: int
    packets_up: int
    packets_down: int
    age: float
    idle: float
    rate_up: float = 0.0
    rate_down: float = 0.0
    end: str | None = None
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (endpoints as ``[host, port]`` lists)."""
        return {
            "id": self.id, "protocol": self.protocol, "src": list(self.src),
            "dst": list(self.dst), "host": self.host, "upstream": self.upstream,
            "state": self.state, "tcp_state": self.tcp_state, "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down, "packets_up": self.packets_up,
            "packets_down": self.packets_down, "age": self.age, "idle": self.idle,
            "rate_up": self.rate_up, "rate_down": self.rate_down, "end": self.end,
            "detail": self.detail,
        }


#: Called with the flow's final snapshot when it ends (on the driver's loop).
FlowHook = Callable[[FlowSnapshot], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowFilter:
    """Which flows :meth:`~tun2proxy.driver.loop.Driver.close_flows` closes (all terms given
    must match; an empty filter matches nothing).

    Attributes:
        dst: ``ADDR`` or ``ADDR:PORT`` (``[v6]:port``) of the app's destination.
        host: a host name: that name or any name under it (``example.com`` matches
            ``www.example.com``), case-insensitive.
        upstream: the flow's upstream name, exactly.
        protocol: ``tcp`` or ``udp``.
    """

    dst: str | None = None
    host: str | None = None
    upstream: str | None = None
    protocol: str | None = None

    def empty(self) -> bool:
        """Whether no term is given."""
        return not (self.dst or self.host or self.upstream or self.protocol)

    def matches(self, s: FlowSnapshot) -> bool:
        """Whether ``s`` matches every term given."""
        if self.empty():
            return False
        if self.protocol and s.protocol != self.protocol:
            return False
        if self.upstream and s.upstream != self.upstream:
            return False
        if self.host:
            h = (s.host or "").lower().rstrip(".")
            want = self.host.lower().rstrip(".")
            if not h or not (h == want or h.endswith("." + want)):
                return False
        if self.dst:
            addr, port = _split_dst(self.dst)
            if s.dst[0] != addr or (port is not None and s.dst[1] != port):
                return False
        return True


def _split_dst(text: str) -> tuple[str, int | None]:
    """``1.2.3.4``, ``1.2.3.4:80``, ``::1``, ``[::1]:80`` -> (address, port or None)."""
    t = text.strip()
    if t.startswith("["):
        addr, _, rest = t[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return addr, int(port) if port.isdigit() else None
    if t.count(":") == 1:
        addr, _, port = t.partition(":")
        return addr, int(port) if port.isdigit() else None
    return t, None


class _Record:
    """What the driver knows of one flow beyond the stack's own state."""

    __slots__ = (
        "detail",
        "dst",
        "end",
        "flow_id",
        "host",
        "protocol",
        "r_down",
        "r_time",
        "r_up",
        "rate_down",
        "rate_up",
        "src",
        "started",
        "upstream",
    )

    def __init__(
        self, flow_id: int, protocol: str, src: Endpoint, dst: Endpoint, now: float
    ) -> None:
        self.flow_id = flow_id
        self.protocol = protocol
        self.src = src
        self.dst = dst
        self.started = now
        self.host: str | None = None
        self.upstream: str | None = None
        self.end: str | None = None
        self.detail: str | None = None
        self.r_time = now
        self.r_up = 0
        self.r_down = 0
        self.rate_up = 0.0
        self.rate_down = 0.0


class FlowTable:
    """Records of the live flows of one driver, their snapshots, and the flow-end hooks.

    ``phase(flow_id)`` (given by the driver) names what the driver is doing with a TCP
    flow; ``relays`` is the driver's flow id -> TcpRelay map (bytes are read from it).
    """

    def __init__(
        self,
        stack: NetStack,
        relays: dict[int, TcpRelay],
        phase: Callable[[int], str],
        clock: Callable[[], float],
    ) -> None:
        self.stack = stack
        self._relays = relays
        self._phase = phase
        self._clock = clock
        self._records: dict[int, _Record] = {}
        #: StackConnection / UdpSession per flow, kept past the stack's own table so that a
        #: flow's last counters can be read when it ends.
        self._objs: dict[int, StackConnection | UdpSession] = {}
        #: The final byte counts of relays already gone.
        self._final: dict[int, tuple[int, int]] = {}
        self.hooks: list[FlowHook] = []
        #: Flows ended, and the payload bytes they moved each way.
        self.ended = 0
        self._ended_up = 0
        self._ended_down = 0

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, flow_id: object) -> bool:
        return flow_id in self._records

    # ------------------------------------------------------------------ the driver's calls

    def tcp_started(self, flow_id: int, src: Endpoint, dst: Endpoint) -> None:
        """A TCP connect request (a second one for the same flow changes nothing)."""
        if flow_id in self._records:
            return
        self._bound()
        self._records[flow_id] = _Record(flow_id, "tcp", src, dst, self._clock())
        conn = self.stack.flow_object(flow_id)
        if conn is not None:
            self._objs[flow_id] = conn

    def udp_started(self, flow_id: int, src: Endpoint, dst: Endpoint) -> None:
        """A UDP session's first datagram."""
        self._bound()
        self._records[flow_id] = _Record(flow_id, "udp", src, dst, self._clock())
        sess = self.stack.flow_object(flow_id)
        if sess is not None:
            self._objs[flow_id] = sess

    def named(self, flow_id: int, host: str | None) -> None:
        """The host name behind the flow's destination is known."""
        rec = self._records.get(flow_id)
        if rec is not None and host:
            rec.host = host

    def routed(self, flow_id: int, upstream: str) -> None:
        """The flow is dialled through ``upstream`` (a name)."""
        rec = self._records.get(flow_id)
        if rec is not None:
            rec.upstream = upstream

    def ending(self, flow_id: int, end: str, detail: str | None = None) -> None:
        """Why the flow is about to end (the first cause given is kept)."""
        rec = self._records.get(flow_id)
        if rec is not None and rec.end is None:
            rec.end = end
            rec.detail = detail

    def relay_gone(self, flow_id: int, relay: TcpRelay) -> None:
        """The flow's relay is dropped before the flow's end is reported: keep its bytes."""
        if flow_id in self._records:
            self._final[flow_id] = (relay.bytes_up, relay.bytes_down)

    def tcp_closed(self, flow_id: int, reason: str, relay: TcpRelay | None) -> None:
        """The stack reported ``TcpClosed``: settle how it ended, call the hooks, forget it."""
        rec = self._records.get(flow_id)
        if rec is None:
            return
        if rec.end is None:
            if reason == "closed":
                first = relay.first_eof if relay is not None else ""
                rec.end = "app-fin" if first == "app" else "upstream-eof" if first else "closed"
            elif reason == "reset":
                rec.end = "app-reset"
            elif reason == "aborted" and relay is not None and relay.lost is not None:
                rec.end, rec.detail = "upstream-reset", relay.lost
            elif reason == "rejected":
                rec.end = "refused"
            else:
                rec.end = reason  # timeout, idle, evicted, aborted
        if relay is not None:
            self._final[flow_id] = (relay.bytes_up, relay.bytes_down)
        self._finish(rec)

    def udp_closed(self, flow_id: int, reason: str) -> None:
        """The stack reported ``UdpSessionClosed``."""
        rec = self._records.get(flow_id)
        if rec is None:
            return
        if rec.end is None:
            rec.end = reason
        self._finish(rec)

    def close_all(self) -> None:
        """The driver stops: report every flow still recorded as ended."""
        for fid, rec in list(self._records.items()):
            if rec.protocol == "tcp":
                self.tcp_closed(fid, "aborted", self._relays.get(fid))
            else:
                self.udp_closed(fid, "shutdown")

    def _finish(self, rec: _Record) -> None:
        fid = rec.flow_id
        self.ended += 1
        up, down = self._bytes(rec)
        self._ended_up += up
        self._ended_down += down
        if self.hooks:
            snap = self._snapshot(rec, self._clock(), final=True)
            for hook in list(self.hooks):
                try:
                    hook(snap)
                except Exception as e:  # an observer's bug must not break the data path
                    log.error("flow-end hook %r failed: %r", hook, e)
        del self._records[fid]
        self._objs.pop(fid, None)
        self._final.pop(fid, None)

    def _bound(self) -> None:
        """Keep the table bounded: drop records of flows the stack forgot without telling
        (handshakes handed back under a SYN flood whose app never answered)."""
        cfg = self.stack.config
        if len(self._records) < 2 * (cfg.max_flows + cfg.max_udp_sessions) + 64:
            return
        stack = self.stack
        for fid in [f for f in self._records if f not in stack]:
            del self._records[fid]
            self._objs.pop(fid, None)
            self._final.pop(fid, None)

    # ------------------------------------------------------------------ snapshots

    def snapshot(self, ids: Iterable[int] | None = None) -> list[FlowSnapshot]:
        """Every live flow (or those of ``ids`` still live), oldest first (rates advance
        when a window has passed)."""
        now = self._clock()
        stack = self.stack
        records = self._records
        out = []
        for fid in list(records) if ids is None else ids:
            rec = records.get(fid)
            if rec is None or fid not in stack:
                continue  # gone from the stack; its end event is on its way
            out.append(self._snapshot(rec, now, final=False))
        return out

    def get(self, flow_id: int) -> FlowSnapshot | None:
        """One live flow's snapshot, or None."""
        rec = self._records.get(flow_id)
        if rec is None or flow_id not in self.stack:
            return None
        return self._snapshot(rec, self._clock(), final=False)

    def totals(self) -> tuple[int, int]:
        """Payload bytes moved app -> upstream and upstream -> app by every flow so far
        (ended and live; O(live flows))."""
        up, down = self._ended_up, self._ended_down
        for rec in self._records.values():
            u, d = self._bytes(rec)
            up += u
            down += d
        return up, down

    def _bytes(self, rec: _Record) -> tuple[int, int]:
        fid = rec.flow_id
        if rec.protocol == "tcp":
            relay = self._relays.get(fid)
            if relay is not None:
                return relay.bytes_up, relay.bytes_down
            return self._final.get(fid, (0, 0))
        obj = self._objs.get(fid)
        if isinstance(obj, UdpSession):
            return obj.bytes_in, obj.bytes_out
        return 0, 0

    def ids(self) -> Iterable[int]:
        """The ids of the flows with a record."""
        return list(self._records)

    def _snapshot(self, rec: _Record, now: float, *, final: bool) -> FlowSnapshot:
        fid = rec.flow_id
        obj = self._objs.get(fid)
        tcp_state: str | None = None
        up, down = self._bytes(rec)
        if rec.protocol == "tcp":
            if isinstance(obj, StackConnection):
                pin, pout = obj.packets_in, obj.packets_out
                tcp_state = obj.state.value
                last = obj.last_activity
            else:
                pin = pout = 0
                last = rec.started
            state = "closed" if final else self._phase(fid)
        else:
            if isinstance(obj, UdpSession):
                pin, pout = obj.datagrams_in, obj.datagrams_out
                last = obj.last_activity
            else:
                pin = pout = 0
                last = rec.started
            state = "closed" if final else self._phase(fid)
        dt = now - rec.r_time
        if not final and dt >= RATE_WINDOW:
            rec.rate_up = (up - rec.r_up) / dt
            rec.rate_down = (down - rec.r_down) / dt
            rec.r_time, rec.r_up, rec.r_down = now, up, down
        return FlowSnapshot(
            id=fid, protocol=rec.protocol, src=rec.src, dst=rec.dst, host=rec.host,
            upstream=rec.upstream, state=state, tcp_state=tcp_state, bytes_up=up,
            bytes_down=down, packets_up=pin, packets_down=pout,
            age=max(0.0, now - rec.started), idle=max(0.0, now - last),
            rate_up=rec.rate_up, rate_down=rec.rate_down,
            end=rec.end if final else None, detail=rec.detail if final else None,
        )
