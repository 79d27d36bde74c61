"""NetStack: IP packets in, events and packets out — the sans-I/O heart of tun2proxy.

Pure: no I/O, no clock, no randomness. The host (the asyncio driver, or an embedding app that
owns its own loop) calls :meth:`NetStack.receive_many` with packets read from the link and
the current monotonic time, drains :meth:`NetStack.events`, acts on them (dials upstreams,
relays bytes with :meth:`send`/:meth:`recv`), then writes the packets :meth:`poll` returns and
sleeps until :meth:`poll_at`.

Rules kept here (``DESIGN.md`` §2): :meth:`receive` never raises on packet content — every
drop is counted by reason in :meth:`stats`; a new TCP flow is a *request* the host accepts or
rejects after dialling (decide at the SYN); everything is bounded (flows, pending SYNs, UDP
sessions, bytes per flow); all timers live in one heap with lazy deletion.

Where the parts are: the tables and the helpers every protocol shares in :mod:`.base`; the
input of each protocol in :mod:`.tcp_input`, :mod:`.udp_input` and :mod:`.icmp_input` (mixins
over the base, so a packet costs no more calls than in one class); the timer heap in
:mod:`.timers`; SYN admission in :mod:`.admission`; a connection's stack bookkeeping (flow id,
key, timer entry) in :mod:`.flow`. This module keeps the host API.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
from collections.abc import Iterable

from ..errors import ConfigError, FlowStateError, MalformedPacket
from ..tcp.state import CLOSED, LISTEN, TIME_WAIT, State
from ..udp.session import UdpSession
from ..wire.icmp import unreachable
from ..wire.ip import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    parse_ip,
)
from ..wire.tcp import ACK, RST, build_rst
from .base import FLOW_OVERHEAD
from .config import StackConfig
from .events import Endpoint, Event, RejectReason, TcpClosed
from .flow import StackConnection
from .icmp_input import IcmpInput
from .tcp_input import TcpInput
from .udp_input import UdpInput

__all__ = ["FLOW_OVERHEAD", "REJECT_REASONS", "NetStack"]

#: How :meth:`NetStack.tcp_reject` can answer a refused SYN.
REJECT_REASONS = ("reset", "net", "host", "port", "admin")


class NetStack(TcpInput, UdpInput, IcmpInput):
    """A userspace TCP/UDP/ICMP endpoint for every address behind a TUN-like link.

    One owner thread only (no locks inside). See the module docstring for the call pattern.

    Args:
        config: the stack's settings; ``config.isn_secret`` must hold at least 8 bytes.
    """

    # ------------------------------------------------------------------ input

    def receive(self, packet: bytes | bytearray, now: float, *, checksum_ok: bool = False) -> None:
        """Process one IP packet from the link. Never raises on packet content.

        ``checksum_ok`` tells the stack that the link already verified checksums (e.g. a
        virtio-net header with ``DATA_VALID`` or ``NEEDS_CSUM``).
        """
        self._now = now
        st = self.stats_counters
        st.packets_in += 1
        st.bytes_in += len(packet)
        try:
            self._receive(packet, now, checksum_ok)
        except MalformedPacket as e:
            st.drop(e.reason)

    def receive_many(
        self, packets: Iterable[bytes | bytearray], now: float, *, checksum_ok: bool = False
    ) -> None:
        """Process a batch of packets read in one wake-up (same rules as :meth:`receive`)."""
        self._now = now
        st = self.stats_counters
        drop = st.drop
        rcv = self._receive
        for packet in packets:
            st.packets_in += 1
            st.bytes_in += len(packet)
            try:
                rcv(packet, now, checksum_ok)
            except MalformedPacket as e:
                drop(e.reason)

    def _receive(self, data: bytes | bytearray, now: float, checksum_ok: bool) -> None:
        verify = self._verify and not checksum_ok
        ip = parse_ip(data, verify)
        if ip.fragment:
            raise MalformedPacket("ip-fragment")
        proto = ip.protocol
        if proto == IPPROTO_TCP:
            self._tcp_input(data, ip.src, ip.dst, ip.offset, ip.end, now, verify)
        elif proto == IPPROTO_UDP:
            self._udp_input(data, ip.version, ip.src, ip.dst, ip.offset, ip.end, now, verify)
        elif proto == IPPROTO_ICMP or proto == IPPROTO_ICMPV6:
            self._icmp_input(data, ip.version, ip.src, ip.dst, ip.offset, ip.end, proto, verify)
        else:
            raise MalformedPacket("ip-protocol-unsupported")

    # ------------------------------------------------------------------ TCP input

    # ------------------------------------------------------------------ UDP input

    # ------------------------------------------------------------------ ICMP input

    # ------------------------------------------------------------------ host API: events

    def events(self) -> list[Event]:
        """Drain and return the events queued since the last call."""
        ev = self._events
        self._events = []
        return ev

    # ------------------------------------------------------------------ host API: TCP

    def tcp_accept(self, flow_id: int) -> None:
        """Complete the handshake of a pending flow (send SYN-ACK at the next :meth:`poll`)."""
        conn = self._conn(flow_id)
        if self._adm.discard_awaiting(flow_id):
            # Already established (immediate accept): the host takes it over now.
            self.stats_counters.tcp_accepted += 1
            self._touch(conn)
            return
        if conn.state is not LISTEN:
            raise FlowStateError(f"flow {flow_id} is not pending (state {conn.state.value})")
        self._unpend(conn)
        conn.close_deadline = None
        conn.accept()
        # Until the app answers the SYN-ACK this flow holds the host's upstream connection
        # for a source that may not exist: counted, and expired early under pressure.
        self._adm.held[flow_id] = (conn, self._now)
        self.stats_counters.tcp_accepted += 1
        self._touch(conn)

    def tcp_handshake_first(self, flow_id: int) -> None:
        """Hand a pending flow back to the stack: it completes the handshake itself, and a
        ``TcpConnectRequest(established=True)`` with the same id follows if the app answers
        the SYN-ACK; if it does not (a spoofed source), nothing follows — the host forgets
        the id now. The driver does this, under a SYN flood, for requests it has not dialled
        yet, so that no upstream connection is spent on a source that never answers."""
        conn = self._conn(flow_id)
        if conn.state is not LISTEN or flow_id not in self._syn_quote:
            raise FlowStateError(f"flow {flow_id} is not pending (state {conn.state.value})")
        adm = self._adm
        self._unpend(conn)
        conn.close_deadline = None
        if len(adm.half_open) >= self.config.max_half_open:
            old = adm.evict_oldest(self._now)
            if old is not None:
                self.stats_counters.drop("tcp-half-open-evicted")
                old.forget()
                self._remove(old)
        conn.accept()
        adm.add_half_open(flow_id, conn, self._now, converted=True)
        self._touch(conn)

    @property
    def syn_flood_mode(self) -> bool:
        """Whether new SYNs are answered handshake-first (see ``syn_flood_threshold``)."""
        return self._adm.flood

    def tcp_reject(self, flow_id: int, reason: RejectReason = "reset") -> None:
        """Refuse a pending flow: RST (``reset``) or ICMP unreachable (``net``, ``host``,
        ``port``, ``admin``). A ``TcpClosed(flow_id, "rejected")`` event follows."""
        if reason not in REJECT_REASONS:
            raise ValueError(f"reason must be one of {', '.join(REJECT_REASONS)}")
        conn = self._conn(flow_id)
        if self._adm.discard_awaiting(flow_id):
            # The app's connection is open already: a reset is the only way to refuse it.
            conn.abort("rejected")
            self.stats_counters.tcp_rst_sent += 1
            self._touch(conn)
            return
        if conn.state is not LISTEN:
            raise FlowStateError(f"flow {flow_id} is not pending (state {conn.state.value})")
        quote = self._syn_quote.get(flow_id, b"")
        if reason != "reset" and not self._icmp_allowed(self._now):
            reason = "reset"  # ICMP errors are rate-limited; an RST tells the app as well
        if reason == "reset" or not quote:
            self._out.append(
                build_rst(
                    conn.local_addr, conn.remote_addr, conn.local_port, conn.remote_port,
                    0, conn.rcv_nxt, RST | ACK, self._offload,
                )
            )
            self.stats_counters.tcp_rst_sent += 1
        else:
            self._out.append(unreachable(quote, reason))
            self.stats_counters.icmp_errors_sent += 1
        conn.abort("rejected")
        self._touch(conn)

    def peek(self, flow_id: int, max_bytes: int) -> bytes:
        """The first ``max_bytes`` the app sent on a TCP flow, without consuming them.

        A :class:`TcpReadable` follows when more data arrives (as after :meth:`recv`), so a
        host waiting for enough bytes to look at (e.g. a TLS ClientHello) hears about them.
        """
        conn = self._conn(flow_id)
        conn.rd_armed = True
        return bytes(memoryview(conn.rcv_buf)[:max_bytes])

    def send(self, flow_id: int, data: bytes | bytearray | memoryview) -> int:
        """Queue bytes towards the app on a TCP flow; returns how many were accepted.

        When fewer than ``len(data)`` are taken, a :class:`TcpWritable` event follows once
        room opens (pause the upstream until then).
        """
        conn = self._conn(flow_id)
        n = conn.send(data)
        if n:
            self._touch(conn)
        return n

    def recv(self, flow_id: int, max_bytes: int = -1) -> bytes | bytearray:
        """Take bytes the app sent on a TCP flow (all of them by default); b"" if none.

        Reading frees receive window: this is where backpressure towards the app is released.
        """
        conn = self._conn(flow_id)
        data = conn.recv(max_bytes)
        if flow_id in self._lingering:
            if not conn.readable:
                self._end_lingering(conn)
            return data
        self._touch(conn)
        return data

    def _end_lingering(self, conn: StackConnection) -> None:
        del self._lingering[conn.flow_id]
        self._events.append(TcpClosed(conn.flow_id, conn.close_reason or "closed"))
        self.stats_counters.tcp_closed["closed"] = self.stats_counters.tcp_closed.get(
            "closed", 0
        ) + 1
        self._closing.append(conn)

    def shutdown(self, flow_id: int) -> None:
        """Close our sending side of a TCP flow (FIN after the queued bytes): half-close."""
        conn = self._conn(flow_id)
        conn.shutdown()
        self._touch(conn)

    def abort(self, flow_id: int) -> None:
        """Reset a TCP flow now (RST to the app); a ``TcpClosed(.., "aborted")`` follows."""
        conn = self._conn(flow_id)
        conn.abort("aborted")
        self._touch(conn)

    def readable(self, flow_id: int) -> int:
        """Bytes waiting in a TCP flow's receive buffer."""
        return self._conn(flow_id).readable

    def send_capacity(self, flow_id: int) -> int:
        """Bytes :meth:`send` would accept now on a TCP flow."""
        return self._conn(flow_id).send_capacity

    def connection(self, flow_id: int) -> StackConnection:
        """The :class:`TcpConnection` behind a flow id, for inspection and debugging."""
        return self._conn(flow_id)

    def __contains__(self, flow_id: object) -> bool:
        return flow_id in self._flows or flow_id in self._udp_by_id

    # ------------------------------------------------------------------ host API: UDP

    def udp_send(
        self, flow_id: int, payload: bytes | bytearray | memoryview, src: Endpoint
    ) -> bool:
        """Send a datagram to the app on a UDP session, appearing to come from ``src``.

        Returns False (and counts a drop) when the datagram cannot fit the MTU.
        """
        sess = self._udp_by_id.get(flow_id)
        if sess is None:
            raise FlowStateError(f"no UDP session with id {flow_id}")
        addr = _pack_address(src[0])
        if (len(addr) == 4) != sess.v4:
            raise ValueError(f"{src[0]} is not of the session's IP version")
        limit = self.config.mtu - (28 if sess.v4 else 48)
        if len(payload) > limit:
            self.stats_counters.drop("udp-too-big")
            return False
        self._out.append(sess.reply(addr, src[1], payload, self._offload))
        sess.datagrams_out += 1
        sess.bytes_out += len(payload)
        sess.last_activity = self._now
        self.stats_counters.udp_datagrams_out += 1
        return True

    def udp_reject(self, flow_id: int, reason: RejectReason = "port") -> None:
        """End a UDP session with an ICMP unreachable (``port``, ``host``, ``net``, ``admin``)
        quoting its latest datagram, so the app's socket sees ``ECONNREFUSED`` at once."""
        if reason not in REJECT_REASONS or reason == "reset":
            raise ValueError("reason must be one of net, host, port, admin")
        sess = self._udp_by_id.get(flow_id)
        if sess is None:
            raise FlowStateError(f"no UDP session with id {flow_id}")
        if sess.last_head and self._icmp_allowed(self._now):
            self._out.append(unreachable(sess.last_head, reason))
            self.stats_counters.icmp_errors_sent += 1
        self._close_udp(sess, "rejected")

    def udp_close(self, flow_id: int) -> None:
        """End a UDP session quietly (a ``UdpSessionClosed(.., "closed")`` follows)."""
        sess = self._udp_by_id.get(flow_id)
        if sess is None:
            raise FlowStateError(f"no UDP session with id {flow_id}")
        self._close_udp(sess, "closed")

    # ------------------------------------------------------------------ timers and output

    def poll(self, now: float) -> list[bytearray]:
        """Run due timers, then return every packet to write to the link now."""
        self._now = now
        pop_due = self._timers.pop_due
        while (obj := pop_due(now)) is not None:
            if isinstance(obj, StackConnection):
                if obj.state is CLOSED:
                    continue
                obj.on_timer(now)
                self._touch(obj)
            else:
                self._udp_timer(obj, now)
        out = self._out
        self._out = []
        dirty = self._dirty
        if dirty:
            self._dirty = []
            for conn in dirty:
                conn.dirty = False
                n = len(out)
                conn.dispatch(now, out)
                conn.packets_out += len(out) - n
                if conn.notify:
                    self._collect(conn)
                if conn.state is not CLOSED:
                    self._timers.schedule(conn)
        adm = self._adm
        if adm.half_open or adm.held:
            self._expire_handshakes(now)
        if adm.flood:
            adm.update(now)
        if self._lingering:
            for fid, deadline in list(self._lingering.items()):
                if now >= deadline:
                    conn = self._flows[fid]
                    self.stats_counters.drop("tcp-unread-at-close")
                    self._end_lingering(conn)
        if self._closing:
            for conn in self._closing:
                self._finish(conn, out, now)
            self._closing = []
        self._maybe_compact()
        st = self.stats_counters
        st.packets_out += len(out)
        return out

    def _expire_handshakes(self, now: float) -> None:
        """Under pressure: end the handshakes unanswered for ``half_open_timeout``, silently
        (an RST to a likely spoofed source helps no one). A flow the host accepted gets a
        ``TcpClosed(.., "timeout")`` so that its upstream connection is closed."""
        half_open, held = self._adm.expire(now)
        st = self.stats_counters
        for conn in half_open:
            st.drop("tcp-half-open-expired")
            conn.forget()
            self._remove(conn)
        for conn in held:
            st.drop("tcp-handshake-expired")
            conn.close_reason = "timeout"
            conn.forget()
            self._events.append(TcpClosed(conn.flow_id, "timeout"))
            st.tcp_closed["timeout"] = st.tcp_closed.get("timeout", 0) + 1
            self._closing.append(conn)

    def _finish(self, conn: StackConnection, out: list[bytearray], now: float) -> None:
        """After the host saw TcpClosed: drop the flow id; keep TIME-WAIT keyed until it ends."""
        if conn.dirty:
            conn.dirty = False
            n = len(out)
            conn.dispatch(now, out)
            conn.packets_out += len(out) - n
        self._buffered -= conn.accounted
        conn.accounted = 0
        self._flows.pop(conn.flow_id, None)
        self._syn_quote.pop(conn.flow_id, None)
        if conn.state is TIME_WAIT:
            self._timers.schedule(conn)
        else:
            conn.sched = None  # its heap entries are stale now
            if self._tcp.get(conn.key) is conn:
                del self._tcp[conn.key]

    def busy(self) -> bool:
        """True when events are queued or packets are due: call :meth:`events`/:meth:`poll`."""
        return bool(self._events or self._dirty or self._out or self._closing)

    def poll_at(self) -> float | None:
        """When :meth:`poll` should run next: now if output or events are waiting."""
        if self._dirty or self._out:
            return self._now
        at = self._timers.next_deadline()
        expiry = self._adm.next_expiry()
        if expiry is not None and (at is None or expiry < at):
            at = expiry
        if self._lingering:
            first = min(self._lingering.values())
            if at is None or first < at:
                at = first
        return at

    def reconfigure(self, config: StackConfig) -> None:
        """Use ``config``'s limits and timeouts from now on (a reload): new flows get them,
        open ones keep the TCP settings they started with.

        Raises:
            ConfigError: ``config`` changes what only a new stack can (ISN secret, MTU,
                checksum handling, the TCP settings other than ``idle_timeout``).
        """
        c = self.config
        same = (c.isn_secret, c.mtu, c.verify_checksums, c.checksum_offload, c.accept_policy)
        if same != (config.isn_secret, config.mtu, config.verify_checksums,
                    config.checksum_offload, config.accept_policy) or (
            dataclasses.replace(config.tcp, idle_timeout=c.tcp.idle_timeout) != c.tcp
        ):
            raise ConfigError("only limits and timeouts can change on a running stack")
        self.config = config
        self._tcp_cfg = config.tcp
        self._adm.cfg = config

    # ------------------------------------------------------------------ introspection

    def stats(self, per_flow: bool = True) -> dict[str, object]:
        """A snapshot of counters, table sizes, drops by reason and buffered bytes.

        ``per_flow=False`` skips the walk over the flow table (no ``tcp_states``; the
        buffered bytes as accounted at the last touch of each flow): constant time, for
        frequent callers such as a metrics scrape.
        """
        st = self.stats_counters
        states: dict[str, int] = {}
        buffered = self._buffered
        if per_flow:
            buffered = 0
            for conn in self._tcp.values():
                states[conn.state.value] = states.get(conn.state.value, 0) + 1
                buffered += conn.buffered
        d = st.as_dict()
        nflows = len(self._tcp)
        d.update(
            memory_estimate=self.memory_estimate(),
            memory_limit=self.config.memory_limit,
            memory_per_flow=(self.memory_estimate() // nflows) if nflows else 0,
            tcp_flows=nflows,
            tcp_pending=self._adm.pending,
            tcp_half_open=len(self._adm.half_open),
            tcp_handshakes_held=len(self._adm.held),
            tcp_queued=len(self._adm.awaiting),
            syn_flood_mode=self._adm.flood,
            tcp_states=states,
            tcp_buffered_bytes=buffered,
            udp_sessions=len(self._udp),
            timer_heap=len(self._timers),
        )
        return d

    def flow_object(self, flow_id: int) -> StackConnection | UdpSession | None:
        """The TcpConnection or UdpSession behind a flow id (its counters: ``packets_in``,
        ``packets_out``; ``datagrams_in``, ``bytes_in``...), or None when there is none."""
        conn = self._flows.get(flow_id)
        if conn is not None:
            return conn
        return self._udp_by_id.get(flow_id)

    def table_sizes(self) -> dict[str, int]:
        """The size of every table keyed by address, port or flow (leak checks: all are 0 on
        an idle stack once TIME-WAIT, the UDP timeout and the stale timers have passed)."""
        adm = self._adm
        return {
            "stack_tcp_keys": len(self._tcp),
            "stack_tcp_ids": len(self._flows),
            "stack_udp_sessions": len(self._udp),
            "stack_udp_ids": len(self._udp_by_id),
            "stack_timers": len(self._timers),
            "stack_lingering": len(self._lingering),
            "stack_syn_quotes": len(self._syn_quote),
            "stack_pending_sources": len(adm.pending_by_src),
            "stack_held": len(adm.held),
            "stack_half_open": len(adm.half_open),
            "stack_converted": len(adm.converted),
            "stack_awaiting": len(adm.awaiting),
            "stack_awaiting_destinations": len(adm.awaiting_by_dst),
        }

    def flows(self) -> list[tuple[int, str, State]]:
        """``(flow_id, "tcp", state)`` for every TCP flow the host can still address."""
        return [(fid, "tcp", c.state) for fid, c in self._flows.items()]


@functools.lru_cache(maxsize=4096)
def _pack_address(host: str) -> bytes:
    return ipaddress.ip_address(host).packed

