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
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import heapq
import ipaddress
from collections import OrderedDict
from collections.abc import Iterable

from ..errors import ConfigError, FlowStateError, MalformedPacket
from ..tcp.connection import (
    N_CLOSED,
    N_ESTABLISHED,
    N_PEER_CLOSED,
    N_READABLE,
    N_WRITABLE,
    TcpConnection,
)
from ..tcp.state import CLOSED, LISTEN, TIME_WAIT, State
from ..udp.session import UdpSession
from ..wire.addrclass import bad_destination, bad_source
from ..wire.checksum import finish, ones_sum
from ..wire.icmp import (
    ICMP6_ECHO_REQUEST,
    ICMP6_PACKET_TOO_BIG,
    ICMP_DEST_UNREACH,
    ICMP_ECHO_REQUEST,
    IcmpMessage,
    echo_reply,
    is_icmp_error,
    parse_icmp,
    parse_quoted,
    unreachable,
)
from ..wire.ip import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    parse_ip,
)
from ..wire.seq import SEQ_MASK
from ..wire.tcp import ACK, FIN, IP4_TCP, IP6_TCP, RST, SYN, TcpSegment, parse_tcp
from ..wire.udp import parse_udp
from .admission import Admission
from .config import StackConfig
from .events import (
    Endpoint,
    Event,
    RejectReason,
    TcpClosed,
    TcpConnectRequest,
    TcpPeerClosed,
    TcpReadable,
    TcpWritable,
    UdpDatagram,
    UdpSessionClosed,
)
from .stats import Stats

__all__ = ["REJECT_REASONS", "NetStack"]

#: How :meth:`NetStack.tcp_reject` can answer a refused SYN.
REJECT_REASONS = ("reset", "net", "host", "port", "admin")

_RST_BUDGET = 200  # RSTs to unknown flows per second (RFC 9293 §3.10.7.1; no amplification)
#: Estimated bytes of Python objects per TCP flow in the stack (connection, key, timers),
#: beside its buffers: an idle established flow measured about 2.2 KB with tracemalloc
#: (tests/stack/test_memory.py keeps this figure honest).
FLOW_OVERHEAD = 2200
#: The timer heap is rebuilt without its stale entries once it holds more than this many
#: entries per flow and session (plus the slack): stale ones then outnumber live ones 2:1.
_COMPACT_FACTOR = 3
_COMPACT_SLACK = 64


def _address_refused(src: bytes, dst: bytes, allow_scoped: bool) -> str:
    """Why a packet from ``src`` to ``dst`` is refused for its addresses, or "" (one place for
    TCP, UDP and ICMP; the classes are :mod:`tun2proxy.wire.addrclass`'s)."""
    if src == dst:
        return "land"  # source = destination (the LAND attack)
    why = bad_source(src)
    if why:
        return "src-" + why
    why = bad_destination(dst, allow_scoped)
    return "dst-" + why if why else ""


class NetStack:
    """A userspace TCP/UDP/ICMP endpoint for every address behind a TUN-like link.

    One owner thread only (no locks inside). See the module docstring for the call pattern.

    Args:
        config: the stack's settings; ``config.isn_secret`` must hold at least 8 bytes.
    """

    def __init__(self, config: StackConfig) -> None:
        if len(config.isn_secret) < 8:
            raise ConfigError(
                "StackConfig.isn_secret must hold at least 8 random bytes (e.g. os.urandom(16))"
            )
        self.config = config
        self._tcp_cfg = config.tcp
        self._verify = config.verify_checksums
        self._offload = config.checksum_offload
        self._tcp: dict[bytes, TcpConnection] = {}
        self._flows: dict[int, TcpConnection] = {}
        self._udp: OrderedDict[bytes, UdpSession] = OrderedDict()
        self._udp_by_id: dict[int, UdpSession] = {}
        self._next_id = 1
        #: Pending requests, held and half-open handshakes, the host's queue, flood mode.
        self._adm = Admission(config)
        self._syn_quote: dict[int, bytes] = {}
        self._dirty: list[TcpConnection] = []
        self._closing: list[TcpConnection] = []
        #: Flows that closed in order with bytes the host has not read yet: flow id ->
        #: deadline. TcpClosed waits until the bytes are read (we ACKed them: they must be
        #: delivered) or the half-close timeout passes.
        self._lingering: dict[int, float] = {}
        self._heap: list[tuple[float, int, TcpConnection | UdpSession]] = []
        self._heap_seq = 0
        self._events: list[Event] = []
        self._out: list[bytearray] = []
        self._rst_tokens = float(_RST_BUDGET)
        self._rst_time = 0.0
        self._icmp_tokens = float(config.icmp_error_rate)
        self._icmp_time = 0.0
        self._buffered = 0
        self._now = 0.0
        self.stats_counters = Stats()

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

    def _tcp_input(
        self,
        data: bytes | bytearray,
        src: bytes,
        dst: bytes,
        off: int,
        end: int,
        now: float,
        verify: bool,
    ) -> None:
        if verify:
            # R9: the checksum is verified before any state is looked up or changed.
            n = int.from_bytes(memoryview(data)[off:end], "big")
            if (end - off) & 1:
                n <<= 8
            pseudo = int.from_bytes(src, "big") + int.from_bytes(dst, "big") + 6 + (end - off)
            if (n + pseudo) % 0xFFFF:
                raise MalformedPacket("tcp-checksum")
        seg = parse_tcp(data, off, end)
        key = src + dst + bytes(data[off : off + 4])
        conn = self._tcp.get(key)
        if conn is not None and conn.state is CLOSED:
            # Closed, kept only until the host reads what is left: the 4-tuple is free.
            del self._tcp[key]
            conn = None
        if conn is not None:
            if conn.state is TIME_WAIT and seg.flags & SYN and not seg.flags & ACK:
                # C6: a new SYN may reopen a 4-tuple in TIME-WAIT when its sequence number
                # is beyond the old connection's (RFC 9293 §3.10.7.4, MAY-2).
                if ((seg.seq - conn.rcv_nxt) & SEQ_MASK) < 0x80000000:
                    self._remove(conn)
                    conn = None
            if conn is not None:
                conn.on_segment(seg, now)
                self._touch(conn)
                return
        flags = seg.flags
        st = self.stats_counters
        if flags & RST:
            st.drop("tcp-rst-unknown-flow")  # never answer an RST with an RST
            return
        if src == dst or bad_source(src) or bad_destination(dst, self.config.allow_link_local):
            # Never answered: loopback, mapped, multicast... (wire/addrclass.py); LAND too.
            st.drop("tcp-bad-address")
            st.refuse_address("tcp-" + _address_refused(src, dst, self.config.allow_link_local))
            return
        if flags & SYN and not flags & ACK:
            self._new_syn(data, seg, key, src, dst, off, now)
            return
        # A segment for no connection: RST (RFC 9293 §3.10.7.1), rate limited.
        st.drop("tcp-unknown-flow")
        seglen = len(seg.payload) + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        if flags & ACK:
            self._send_rst(src, dst, seg.dst_port, seg.src_port, seg.ack, 0, RST, now)
        else:
            self._send_rst(
                src, dst, seg.dst_port, seg.src_port, 0, seg.seq + seglen, RST | ACK, now
            )

    def _send_rst(
        self,
        app: bytes,
        local: bytes,
        local_port: int,
        app_port: int,
        seq: int,
        ack: int,
        flags: int,
        now: float,
    ) -> None:
        tokens = min(_RST_BUDGET, self._rst_tokens + (now - self._rst_time) * _RST_BUDGET)
        self._rst_time = now
        if tokens < 1:
            self._rst_tokens = tokens
            self.stats_counters.drop("tcp-rst-rate-limited")
            return
        self._rst_tokens = tokens - 1
        self._out.append(
            _build_rst(local, app, local_port, app_port, seq, ack, flags, self._offload)
        )
        self.stats_counters.tcp_rst_sent += 1

    def _new_syn(
        self,
        data: bytes | bytearray,
        seg: TcpSegment,
        key: bytes,
        src: bytes,
        dst: bytes,
        off: int,
        now: float,
    ) -> None:
        cfg = self.config
        st = self.stats_counters
        adm = self._adm
        over_budget = (
            cfg.memory_limit is not None and self.memory_estimate() >= cfg.memory_limit
        )
        if not over_budget and len(self._tcp) >= cfg.max_flows:
            # A handshake nobody answered yields its slot before a new SYN is refused.
            old = adm.evict_oldest(now)
            if old is not None:
                st.drop("tcp-half-open-evicted")
                old.forget()
                self._remove(old)
        if over_budget or len(self._tcp) >= cfg.max_flows:
            st.drop("tcp-memory-limit" if over_budget else "tcp-flow-limit")
            self._send_rst(
                src, dst, seg.dst_port, seg.src_port, 0, seg.seq + 1 + len(seg.payload),
                RST | ACK, now,
            )
            return
        immediate = cfg.accept_policy == "immediate"
        if not immediate:
            if adm.update(now):
                # RFC 4987: too many requests the host is dialling for, or handshakes holding
                # an upstream connection unanswered; from now on a source must complete the
                # handshake before it costs an upstream connection.
                st.syn_flood_episodes += 1
            immediate = adm.flood
        if immediate:
            # Handshake first: answer no more SYNs than the host can queue (an app must not
            # see an open connection that is then reset for want of room).
            refusal = adm.queue_refusal(dst)
            if refusal is None and len(adm.half_open) >= cfg.max_half_open:
                old = adm.evict_oldest(now)
                if old is not None:
                    st.drop("tcp-half-open-evicted")
                    old.forget()  # silently: an RST to a likely spoofed source helps no one
                    self._remove(old)
        else:
            refusal = adm.pending_refusal(src)
        if refusal is not None:
            st.drop(refusal)  # the app retransmits its SYN
            return
        h = hashlib.blake2s(key, key=cfg.isn_secret[:32], digest_size=8).digest()
        # RFC 6528: ISN = M + F(4-tuple, secret), M a 4-microsecond clock.
        iss = (int(now * 250_000) + int.from_bytes(h[:4], "big")) & SEQ_MASK
        conn = TcpConnection.from_syn(
            seg,
            self._tcp_cfg,
            dst,
            src,
            iss,
            now,
            mss_limit=cfg.mss_for(4 if len(src) == 4 else 6),
            ts_offset=int.from_bytes(h[4:], "big"),
            checksum_offload=self._offload,
        )
        fid = self._next_id
        self._next_id += 1
        conn.flow_id = fid
        conn.key = key
        self._tcp[key] = conn
        self._flows[fid] = conn
        st.tcp_syn_received += 1
        if immediate:
            conn.accept()
            adm.add_half_open(fid, conn, now)
            self._touch(conn)
            return
        conn.close_deadline = now + cfg.pending_timeout
        adm.add_pending(src)
        self._syn_quote[fid] = bytes(data[: off + 28])
        self._schedule(conn)
        self._events.append(
            TcpConnectRequest(
                fid,
                (str(ipaddress.ip_address(src)), seg.src_port),
                (str(ipaddress.ip_address(dst)), seg.dst_port),
            )
        )

    def _collect(self, conn: TcpConnection) -> None:
        """Turn a connection's notification bits into events (in a fixed, causal order)."""
        n = conn.notify
        conn.notify = 0
        fid = conn.flow_id
        ev = self._events
        adm = self._adm
        if fid in adm.half_open:
            if n & N_CLOSED:
                # Never announced to the host (a handshake that did not complete): no event.
                adm.pop_half_open(fid)
                self._closing.append(conn)
                return
            if not n & N_ESTABLISHED:
                return
            adm.pop_half_open(fid)
            adm.add_awaiting(fid, conn.local_addr)
            ev.append(
                TcpConnectRequest(
                    fid,
                    (str(ipaddress.ip_address(conn.remote_addr)), conn.remote_port),
                    (str(ipaddress.ip_address(conn.local_addr)), conn.local_port),
                    established=True,
                )
            )
        elif n & (N_ESTABLISHED | N_CLOSED) and adm.held:
            adm.held.pop(fid, None)  # the handshake the host accepted ended, either way
        if n & N_READABLE:
            ev.append(TcpReadable(fid))
        if n & N_PEER_CLOSED:
            ev.append(TcpPeerClosed(fid))
        if n & N_WRITABLE:
            ev.append(TcpWritable(fid))
        if n & N_CLOSED:
            self._unpend(conn)
            adm.discard_awaiting(fid)
            reason = conn.close_reason or "closed"
            if reason == "closed" and conn.readable:
                self._lingering[fid] = self._now + self._tcp_cfg.half_close_timeout
                return
            ev.append(TcpClosed(fid, reason))
            self.stats_counters.tcp_closed[reason] = self.stats_counters.tcp_closed.get(
                reason, 0
            ) + 1
            self._closing.append(conn)

    def _unpend(self, conn: TcpConnection) -> None:
        if self._syn_quote.pop(conn.flow_id, None) is None:
            return
        self._adm.remove_pending(conn.remote_addr)

    # ------------------------------------------------------------------ UDP input

    def _udp_input(
        self,
        data: bytes | bytearray,
        version: int,
        src: bytes,
        dst: bytes,
        off: int,
        end: int,
        now: float,
        verify: bool,
    ) -> None:
        u = parse_udp(data, off, end)
        st = self.stats_counters
        if verify:
            if u.checksum == 0:
                if version == 6:
                    raise MalformedPacket("udp-zero-checksum-v6")  # RFC 8200 §8.1
            else:
                pseudo = int.from_bytes(src, "big") + int.from_bytes(dst, "big") + 17 + u.length
                if ones_sum(memoryview(data)[off : off + u.length], pseudo) != 0:
                    raise MalformedPacket("udp-checksum")
        if src == dst or bad_source(src):
            st.refuse_address("udp-" + _address_refused(src, dst, True))
            raise MalformedPacket("udp-bad-source")
        if bad_destination(dst, self.config.allow_link_local) or not u.dst_port:
            # mDNS, SSDP, LLMNR, WS-Discovery, ::ffff:127.0.0.1...: never proxied
            # (tun2proxy#172, #231; wire/addrclass.py).
            if u.dst_port:
                st.refuse_address(
                    "udp-" + _address_refused(src, dst, self.config.allow_link_local)
                )
            st.drop("udp-multicast-or-local")
            return
        if not u.src_port:
            raise MalformedPacket("udp-port-zero")
        key = src + u.src_port.to_bytes(2, "big")
        sess = self._udp.get(key)
        if sess is None:
            sess = self._new_udp(key, src, u.src_port, u.dst_port, now)
        else:
            self._udp.move_to_end(key)
        sess.last_activity = now
        sess.datagrams_in += 1
        payload = bytes(u.payload)
        sess.bytes_in += len(payload)
        sess.last_head = bytes(data[: off + 8])
        st.udp_datagrams_in += 1
        self._events.append(
            UdpDatagram(sess.flow_id, sess.src_text, (sess.name_of(dst), u.dst_port), payload)
        )

    def _new_udp(
        self, key: bytes, src: bytes, sport: int, dport: int, now: float
    ) -> UdpSession:
        cfg = self.config
        if len(self._udp) >= cfg.max_udp_sessions:
            _k, old = self._udp.popitem(last=False)  # LRU eviction keeps the cap
            self._udp_by_id.pop(old.flow_id, None)
            old.sched = None
            self.stats_counters.udp_evicted += 1
            self._events.append(UdpSessionClosed(old.flow_id, "evicted"))
        fid = self._next_id
        self._next_id += 1
        timeout = cfg.dns_timeout if dport == 53 else cfg.udp_timeout
        sess = UdpSession(fid, key, src, sport, now, timeout)
        self._udp[key] = sess
        self._udp_by_id[fid] = sess
        self.stats_counters.udp_sessions_opened += 1
        self._push(sess, sess.deadline())
        return sess

    # ------------------------------------------------------------------ ICMP input

    def _icmp_input(
        self,
        data: bytes | bytearray,
        version: int,
        src: bytes,
        dst: bytes,
        off: int,
        end: int,
        proto: int,
        verify: bool,
    ) -> None:
        msg = parse_icmp(data, off, end)
        if verify:
            initial = 0
            if version == 6:
                initial = int.from_bytes(src, "big") + int.from_bytes(dst, "big") + 58 + (end - off)
            if ones_sum(memoryview(data)[off:end], initial) != 0:
                raise MalformedPacket("icmp-checksum")
        st = self.stats_counters
        t = msg.type
        if (version == 4 and t == ICMP_ECHO_REQUEST) or (version == 6 and t == ICMP6_ECHO_REQUEST):
            # Answered locally, so a scoped destination is fine; a special one is not.
            why = _address_refused(src, dst, True)
            if why:
                st.refuse_address("icmp-" + why)
            if self.config.icmp_echo == "reply" and not why:
                self._out.append(echo_reply(version, src, dst, msg))
                st.icmp_echo_replies += 1
            else:
                st.drop("icmp-echo-ignored")
            return
        if version == 6 and 130 <= t <= 143:
            # Neighbour discovery (133-137) and MLD (130-132, 143): a TUN has no neighbours.
            st.drop("icmp6-nd-mld")
            return
        if is_icmp_error(version, t):
            if bad_source(src):
                # An error "from" loopback, multicast...: forged, it must not end our flows.
                st.refuse_address("icmp-" + _address_refused(src, dst, True))
                st.drop("icmp-error-bad-source")
                return
            self._icmp_error(msg, version)
            return
        st.drop("icmp-other")

    def _icmp_error(self, msg: IcmpMessage, version: int) -> None:
        """An ICMP error from the app's side about a packet we sent (checklist I1).

        UDP: the app's socket is gone, so its session ends. TCP: "packet too big" whose
        quoted sequence number is in flight lowers the flow's MSS; every other error is soft
        and never aborts a connection (RFC 5927 §4, RFC 1122 §4.2.3.9), only counted.
        """
        st = self.stats_counters
        try:
            q = parse_quoted(msg.body)
        except MalformedPacket:
            st.drop("icmp-error-unparseable")
            return
        if q.version != version:
            st.drop("icmp-error-unparseable")
            return
        if q.protocol == IPPROTO_UDP:
            # Our reply went from q.src to the app at (q.dst, q.dst_port): the app's socket is
            # gone; end its session now instead of waiting for the idle timeout.
            sess = self._udp.get(q.dst + q.dst_port.to_bytes(2, "big"))
            if sess is not None:
                self._close_udp(sess, "unreachable")
                st.drop("icmp-error-udp-session-closed")
                return
        elif q.protocol == IPPROTO_TCP:
            key = q.dst + q.src + q.dst_port.to_bytes(2, "big") + q.src_port.to_bytes(2, "big")
            conn = self._tcp.get(key)
            if conn is None:
                st.drop("icmp-error-no-flow")
                return
            t = msg.type
            if (version == 4 and t == ICMP_DEST_UNREACH and msg.code == 4) or (
                version == 6 and t == ICMP6_PACKET_TOO_BIG
            ):
                mtu = msg.rest & 0xFFFF if version == 4 else msg.rest
                if q.seq is None or not conn.on_packet_too_big(mtu, q.seq):
                    st.drop("icmp-error-bad-seq")  # RFC 5927 §4.1: not about data in flight
                    return
                st.tcp_mtu_reductions += 1
                self._touch(conn)
                return
        st.drop("icmp-error-ignored")

    # ------------------------------------------------------------------ host API: events

    def events(self) -> list[Event]:
        """Drain and return the events queued since the last call."""
        ev = self._events
        self._events = []
        return ev

    # ------------------------------------------------------------------ host API: TCP

    def _conn(self, flow_id: int) -> TcpConnection:
        conn = self._flows.get(flow_id)
        if conn is None:
            raise FlowStateError(f"no TCP flow with id {flow_id}")
        return conn

    def _account(self, conn: TcpConnection) -> None:
        """Keep the stack's running total of buffered bytes, and apply memory pressure."""
        b = conn.buffered
        self._buffered += b - conn.accounted
        conn.accounted = b
        limit = self.config.memory_limit
        if limit is not None:
            used = self._buffered + FLOW_OVERHEAD * len(self._tcp)
            half = limit >> 1
            if used > half:
                conn.limit_buffers(max(0.0, 1.0 - (used - half) / half))
            elif conn.rcv_cap < self._tcp_cfg.recv_buffer and conn.wscale_ok:
                conn.limit_buffers(1.0)

    def memory_estimate(self) -> int:
        """Bytes the stack holds: buffered data plus a fixed estimate per TCP flow."""
        return self._buffered + FLOW_OVERHEAD * len(self._tcp)

    def _touch(self, conn: TcpConnection) -> None:
        self._account(conn)
        if conn.notify:
            self._collect(conn)
        if conn.state is CLOSED and conn.flow_id not in self._flows:
            # A TIME-WAIT connection (the host was already told) ended: forget its key.
            if self._tcp.get(conn.key) is conn:
                del self._tcp[conn.key]
            return
        if not conn.dirty:
            conn.dirty = True
            self._dirty.append(conn)

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
                _build_rst(
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

    def _icmp_allowed(self, now: float) -> bool:
        """Token bucket for the ICMP errors we generate (RFC 1122 §3.2.2, RFC 4443 §2.4)."""
        rate = self.config.icmp_error_rate
        tokens = min(rate, self._icmp_tokens + (now - self._icmp_time) * rate)
        self._icmp_time = now
        if tokens < 1:
            self._icmp_tokens = tokens
            self.stats_counters.drop("icmp-error-rate-limited")
            return False
        self._icmp_tokens = tokens - 1
        return True

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

    def _end_lingering(self, conn: TcpConnection) -> None:
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

    def connection(self, flow_id: int) -> TcpConnection:
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

    def _close_udp(self, sess: UdpSession, reason: str) -> None:
        self._udp.pop(sess.key, None)
        self._udp_by_id.pop(sess.flow_id, None)
        sess.sched = None
        self._events.append(UdpSessionClosed(sess.flow_id, reason))

    # ------------------------------------------------------------------ timers and output

    def _push(self, obj: TcpConnection | UdpSession, deadline: float) -> None:
        obj.sched = deadline
        self._heap_seq += 1
        heap = self._heap
        heapq.heappush(heap, (deadline, self._heap_seq, obj))
        # Lazy deletion leaves an entry behind for every earlier deadline and every flow that
        # ends before its timer: under churn that is one per closed flow, each holding its
        # connection until the deadline passes (tens of seconds). Each object has at most one
        # live entry, so once the heap is much bigger than the tables, rebuild it.
        if len(heap) > _COMPACT_FACTOR * (len(self._tcp) + len(self._udp)) + _COMPACT_SLACK:
            self._compact_heap()

    def _maybe_compact(self) -> None:
        """After a poll: compact as :meth:`_push` does, and when no flow or session is left
        every entry is stale, so an idle stack keeps no timers (and no closed flows)."""
        n = len(self._heap)
        if n:
            live = len(self._tcp) + len(self._udp)
            if live == 0 or n > _COMPACT_FACTOR * live + _COMPACT_SLACK:
                self._compact_heap()

    def _compact_heap(self) -> None:
        """Drop the stale heap entries (amortised O(1) per push: it runs only when at least
        two thirds of the entries are stale)."""
        udp = self._udp_by_id
        heap = self._heap  # in place: poll() may be iterating over this very list
        heap[:] = [
            e for e in heap
            if e[2].sched == e[0] and (
                e[2].state is not CLOSED if isinstance(e[2], TcpConnection)
                else udp.get(e[2].flow_id) is e[2]
            )
        ]
        heapq.heapify(heap)
        self.stats_counters.timer_compactions += 1

    def _schedule(self, conn: TcpConnection) -> None:
        d = conn.poll_at()
        if d is None:
            return
        s = conn.sched
        # Lazy deletion: only an earlier deadline needs a new heap entry; a later one is
        # found when the earlier entry fires and the connection reports nothing due.
        if s is None or d < s:
            self._push(conn, d)

    def poll(self, now: float) -> list[bytearray]:
        """Run due timers, then return every packet to write to the link now."""
        self._now = now
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, obj = heapq.heappop(heap)
            if obj.sched != deadline:
                continue  # stale entry
            obj.sched = None
            if isinstance(obj, TcpConnection):
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
                conn.dispatch(now, out)
                if conn.notify:
                    self._collect(conn)
                if conn.state is not CLOSED:
                    self._schedule(conn)
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

    def _finish(self, conn: TcpConnection, out: list[bytearray], now: float) -> None:
        """After the host saw TcpClosed: drop the flow id; keep TIME-WAIT keyed until it ends."""
        if conn.dirty:
            conn.dirty = False
            conn.dispatch(now, out)
        self._buffered -= conn.accounted
        conn.accounted = 0
        self._flows.pop(conn.flow_id, None)
        self._syn_quote.pop(conn.flow_id, None)
        if conn.state is TIME_WAIT:
            self._schedule(conn)
        else:
            conn.sched = None  # its heap entries are stale now
            if self._tcp.get(conn.key) is conn:
                del self._tcp[conn.key]

    def _remove(self, conn: TcpConnection) -> None:
        self._buffered -= conn.accounted
        conn.accounted = 0
        if self._tcp.get(conn.key) is conn:
            del self._tcp[conn.key]
        self._flows.pop(conn.flow_id, None)
        conn.sched = None

    def _udp_timer(self, sess: UdpSession, now: float) -> None:
        if self._udp_by_id.get(sess.flow_id) is not sess:
            return
        due = sess.deadline()
        if now >= due:
            self._close_udp(sess, "idle")
        else:
            self._push(sess, due)

    def busy(self) -> bool:
        """True when events are queued or packets are due: call :meth:`events`/:meth:`poll`."""
        return bool(self._events or self._dirty or self._out or self._closing)

    def poll_at(self) -> float | None:
        """When :meth:`poll` should run next: now if output or events are waiting."""
        if self._dirty or self._out:
            return self._now
        heap = self._heap
        at: float | None = None
        while heap:
            deadline, _, obj = heap[0]
            if obj.sched == deadline:
                at = deadline
                break
            heapq.heappop(heap)
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

    def stats(self) -> dict[str, object]:
        """A snapshot of counters, table sizes, drops by reason and buffered bytes."""
        st = self.stats_counters
        states: dict[str, int] = {}
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
            timer_heap=len(self._heap),
        )
        return d

    def table_sizes(self) -> dict[str, int]:
        """The size of every table keyed by address, port or flow (leak checks: all are 0 on
        an idle stack once TIME-WAIT, the UDP timeout and the stale timers have passed)."""
        adm = self._adm
        return {
            "stack_tcp_keys": len(self._tcp),
            "stack_tcp_ids": len(self._flows),
            "stack_udp_sessions": len(self._udp),
            "stack_udp_ids": len(self._udp_by_id),
            "stack_timers": len(self._heap),
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


def _build_rst(
    local: bytes, app: bytes, local_port: int, app_port: int, seq: int, ack: int, flags: int,
    offload: bool = False,
) -> bytearray:
    """A bare RST from ``local`` to ``app`` (no options); with ``offload`` the TCP checksum
    field holds the pseudo-header sum for the device to complete, like every TCP packet."""
    if len(local) == 4:
        buf = bytearray(40)
        IP4_TCP.pack_into(
            buf, 0, 0x45, 0, 40, 0, 0x4000, 64, 6, 0, local, app, local_port, app_port,
            seq & SEQ_MASK, ack & SEQ_MASK, (5 << 12) | flags, 0, 0, 0,
        )
        c = finish(ones_sum(memoryview(buf)[:20]))
        buf[10] = c >> 8
        buf[11] = c & 0xFF
        h = 20
    else:
        buf = bytearray(60)
        IP6_TCP.pack_into(
            buf, 0, 0x60000000, 20, 6, 64, local, app, local_port, app_port,
            seq & SEQ_MASK, ack & SEQ_MASK, (5 << 12) | flags, 0, 0, 0,
        )
        h = 40
    pseudo = int.from_bytes(local, "big") + int.from_bytes(app, "big") + 6 + 20
    if offload:
        c = pseudo % 0xFFFF or 0xFFFF
    else:
        c = finish(ones_sum(memoryview(buf)[h:], pseudo))
    buf[h + 16] = c >> 8
    buf[h + 17] = c & 0xFF
    return buf
