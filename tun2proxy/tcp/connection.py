"""One TCP connection: the RFC 9293 state machine, its buffers, timers and congestion control.

Pure: no I/O, no clock. Heads up: before changing this file read RFC 9293 §3.10 (event
processing), RFC 5961 (blind-attack mitigations), RFC 7323 (window scale, timestamps, PAWS),
RFC 6298 (RTO), RFC 5681/6582/6675 (congestion control, NewReno, SACK loss recovery) and
RFC 2018 (SACK).

How it is driven (smoltcp's shape, see ``docs/architecture.md``):

* :meth:`TcpConnection.on_segment` takes one parsed segment and the time; it never raises for
  anything the peer sends.
* :meth:`TcpConnection.dispatch` appends the IP packets that are due now to a list.
* :meth:`TcpConnection.on_timer` runs expired timers; :meth:`TcpConnection.poll_at` says
  when the next one is due.
* The application side (the relay towards the upstream) calls :meth:`recv`, :meth:`send`,
  :meth:`shutdown` and :meth:`abort`; it learns what happened from the ``notify`` bits.

Sequence numbers inside are *unwrapped*: plain integers that keep growing past 2**32. Wire
values are converted once at the boundary with :func:`~tun2proxy.wire.seq.unwrap` (inbound)
and ``& 0xFFFFFFFF`` (outbound), so all comparisons below are ordinary integer comparisons
and correct across the wrap.
"""

from __future__ import annotations

import struct

from ..errors import FlowStateError
from ..wire.checksum import finish
from ..wire.gso import GsoPacket
from ..wire.seq import SEQ_HALF, SEQ_MASK, SEQ_MOD
from ..wire.tcp import ACK, FIN, IP4_TCP, IP6_TCP, PSH, RST, SYN, TcpSegment, build_options
from .assembler import Assembler
from .config import TcpConfig
from .rtt import RttEstimator
from .state import (
    CLOSE_WAIT,
    CLOSED,
    CLOSING,
    ESTABLISHED,
    FIN_WAIT_1,
    FIN_WAIT_2,
    LAST_ACK,
    LISTEN,
    SYN_RECEIVED,
    SYN_SENT,
    TIME_WAIT,
    State,
    next_state,
)

__all__ = [
    "N_CLOSED",
    "N_ESTABLISHED",
    "N_PEER_CLOSED",
    "N_READABLE",
    "N_WRITABLE",
    "TcpConnection",
]

#: Notification bits collected in :attr:`TcpConnection.notify` for the owner to turn into
#: events (the stack emits ``TcpReadable``, ``TcpWritable``, ``TcpPeerClosed``, ``TcpClosed``).
N_READABLE = 1
N_WRITABLE = 2
N_PEER_CLOSED = 4
N_CLOSED = 8
N_ESTABLISHED = 16

_TS_OPT = struct.Struct("!III")  # NOP NOP TS(kind 8, len 10) TSval TSecr
_TS_WORD = 0x0101080A
_SACK_HEAD = struct.Struct("!BBBB")
_II = struct.Struct("!II")

_RECOVERY_NONE = 0
_RECOVERY_FAST = 1
_RECOVERY_RTO = 2

_MAX_CWND = 1 << 30
_DUP_THRESH = 3
_QUICKACK_SEGMENTS = 16
_SYNCHRONIZED = frozenset(
    (SYN_RECEIVED, ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT, CLOSING, LAST_ACK, TIME_WAIT)
)
_CAN_RECEIVE_DATA = frozenset((ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2))
_CAN_SEND = frozenset((SYN_RECEIVED, SYN_SENT, ESTABLISHED, CLOSE_WAIT))
_HALF_CLOSED = frozenset((FIN_WAIT_2, CLOSE_WAIT))
#: States in which segments we sent may still be in flight (a "packet too big" can apply).
_DATA_STATES = frozenset((ESTABLISHED, FIN_WAIT_1, CLOSE_WAIT, CLOSING, LAST_ACK))


def _unwrap(wire: int, ref: int) -> int:
    d = (wire - ref) & SEQ_MASK
    if d >= SEQ_HALF:
        d -= SEQ_MOD
    return ref + d


class TcpConnection:
    """The state of one TCP connection and the rules that move it (passive or active open).

    Attributes (the RFC 9293 variables, unwrapped):
        snd_una, snd_max: oldest unacknowledged and next new sequence number we send.
        snd_wnd, snd_wl1, snd_wl2: the peer's window and the segment that last set it.
        rcv_nxt, rcv_adv: next sequence number expected, and the right edge we advertised.
        state: a :class:`~tun2proxy.tcp.state.State`.
        notify: bit set of ``N_*`` notifications not yet collected by the owner.
        close_reason: why the connection closed (``closed``, ``reset``, ``timeout``,
            ``idle``, ``aborted``, ``refused``), once it has.
    """

    __slots__ = (
        "_ca_time",
        "_ca_tokens",
        "_force_rtx",
        "_ip_sum",
        "_pending",
        "_pseudo",
        "_rtt_seq",
        "_rtt_time",
        "_rtx_ts",
        "accounted",
        "asm",
        "c",
        "close_deadline",
        "close_reason",
        "cwnd",
        "cwnd_acc",
        "delack_deadline",
        "dirty",
        "dupacks",
        "fin_queued",
        "fin_sent",
        "flow_id",
        "idle_deadline",
        "in_recovery",
        "irs",
        "iss",
        "keepalive_deadline",
        "keepalive_probes",
        "key",
        "last_ack_sent",
        "last_activity",
        "local_addr",
        "local_port",
        "lost_upto",
        "max_snd_wnd",
        "mss_limit",
        "notify",
        "offload",
        "peer_fin",
        "persist_backoff",
        "persist_deadline",
        "quickack",
        "rcv_adv",
        "rcv_buf",
        "rcv_cap",
        "rcv_mss",
        "rcv_nxt",
        "rcv_wscale",
        "rd_armed",
        "recover",
        "remote_addr",
        "remote_port",
        "rexmit_high",
        "rtt",
        "rtx_count",
        "rtx_deadline",
        "sack_ok",
        "sacked",
        "sacked_bytes",
        "sbuf",
        "sbuf_seq",
        "sched",
        "segments_retransmitted",
        "snd_cap",
        "snd_max",
        "snd_mss",
        "snd_una",
        "snd_wl1",
        "snd_wl2",
        "snd_wnd",
        "snd_wscale",
        "ssthresh",
        "state",
        "syn_ack_due",
        "ts_offset",
        "ts_ok",
        "ts_recent",
        "unacked",
        "v4",
        "want_writable",
        "wscale_ok",
    )

    # ------------------------------------------------------------------ construction

    def __init__(
        self,
        config: TcpConfig,
        local_addr: bytes,
        local_port: int,
        remote_addr: bytes,
        remote_port: int,
        iss: int,
        now: float,
        *,
        mss_limit: int,
        ts_offset: int = 0,
        checksum_offload: bool = False,
    ) -> None:
        """Create a connection in CLOSED; use :meth:`from_syn` or :meth:`connect` instead."""
        c = config
        self.c = c
        self.state: State = CLOSED
        self.local_addr = local_addr
        self.local_port = local_port
        self.remote_addr = remote_addr
        self.remote_port = remote_port
        self.v4 = len(local_addr) == 4
        self.offload = checksum_offload
        self._pseudo = int.from_bytes(local_addr, "big") + int.from_bytes(remote_addr, "big") + 6
        if self.v4:
            # Constant part of the IPv4 header sum: ver/ihl/tos, DF, TTL 64/proto 6, addresses.
            addrs = int.from_bytes(local_addr + remote_addr, "big")
            self._ip_sum = 0x4500 + 0x4000 + 0x4006 + addrs
        else:
            # IPv6 header sum without the payload length: version word, next header/hop
            # limit, addresses.
            self._ip_sum = 0x6000 + 0x0640 + int.from_bytes(local_addr + remote_addr, "big")
        self.mss_limit = mss_limit
        self.iss = iss & SEQ_MASK
        self.snd_una = self.iss
        self.snd_max = self.iss
        self.snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = self.iss
        self.max_snd_wnd = 0
        self.snd_wscale = 0
        self.snd_mss = 536
        self.snd_cap = c.send_buffer
        self.sbuf = bytearray()
        self.sbuf_seq = self.iss + 1
        self.fin_queued = False
        self.fin_sent = False
        self.cwnd = c.initial_window * 536
        self.ssthresh = _MAX_CWND
        self.cwnd_acc = 0
        self.dupacks = 0
        self.in_recovery = _RECOVERY_NONE
        self.recover = self.iss
        self.rexmit_high = self.iss
        self.lost_upto = self.iss
        self.sacked: list[list[int]] = []
        self.sacked_bytes = 0
        self.rtt = RttEstimator(c.initial_rto, c.min_rto, c.max_rto)
        self._rtt_seq: int | None = None
        self._rtt_time = 0.0
        self._rtx_ts = (int(now * 1000) + ts_offset) & SEQ_MASK  # TSval at our last rexmit
        self._force_rtx = False  # retransmit the first lost range whatever cwnd says
        self.rtx_deadline: float | None = None
        self.rtx_count = 0
        self.persist_deadline: float | None = None
        self.persist_backoff = 0
        self.segments_retransmitted = 0
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_adv = 0
        self.rcv_wscale = 0
        self.rcv_buf = bytearray()
        self.rcv_cap = c.recv_buffer
        self.asm: Assembler | None = None
        self.peer_fin = False
        self.rcv_mss = 536
        self.unacked = 0
        self.quickack = _QUICKACK_SEGMENTS
        self.syn_ack_due = False
        self.delack_deadline: float | None = None
        self.sack_ok = False
        self.ts_ok = False
        self.wscale_ok = False
        self.ts_recent = 0
        self.ts_offset = ts_offset & SEQ_MASK
        self.last_ack_sent = 0
        self.last_activity = now
        self.idle_deadline: float | None = now + c.idle_timeout
        self.close_deadline: float | None = None
        self.keepalive_deadline: float | None = (
            now + c.keepalive_idle if c.keepalive_idle is not None else None
        )
        self.keepalive_probes = 0
        self._ca_tokens = float(c.challenge_ack_rate)
        self._ca_time = now
        self._pending: list[bytearray] = []
        self.notify = 0
        self.rd_armed = True
        self.want_writable = False
        self.close_reason: str | None = None
        # Bookkeeping for the owner (the NetStack): flow id, table key, scheduled timer,
        # and whether the connection is queued for dispatch.
        self.flow_id = 0
        self.key = b""
        self.sched: float | None = None
        self.dirty = False
        self.accounted = 0  # bytes the owner last counted for this connection

    @classmethod
    def from_syn(
        cls,
        syn: TcpSegment,
        config: TcpConfig,
        local_addr: bytes,
        remote_addr: bytes,
        iss: int,
        now: float,
        *,
        mss_limit: int,
        ts_offset: int = 0,
        checksum_offload: bool = False,
    ) -> TcpConnection:
        """A passive connection for an application's SYN, waiting in LISTEN for :meth:`accept`.

        ``local_addr`` is the SYN's destination (the address the app dialled), ``remote_addr``
        its source. Options are negotiated here (RFC 7323 §1.3, RFC 2018 §2, RFC 6691).
        """
        conn = cls(
            config,
            local_addr,
            syn.dst_port,
            remote_addr,
            syn.src_port,
            iss,
            now,
            mss_limit=mss_limit,
            ts_offset=ts_offset,
            checksum_offload=checksum_offload,
        )
        conn.state = LISTEN
        conn._take_syn(syn)
        return conn

    @classmethod
    def connect(
        cls,
        config: TcpConfig,
        local_addr: bytes,
        local_port: int,
        remote_addr: bytes,
        remote_port: int,
        iss: int,
        now: float,
        *,
        mss_limit: int,
        ts_offset: int = 0,
    ) -> TcpConnection:
        """An active open: the connection sends a SYN at the next :meth:`dispatch`.

        The product only ever answers SYNs; active open exists so that test peers and
        simulations can use this same, complete TCP as the application side.
        """
        conn = cls(
            config,
            local_addr,
            local_port,
            remote_addr,
            remote_port,
            iss,
            now,
            mss_limit=mss_limit,
            ts_offset=ts_offset,
        )
        conn._goto("connect")
        conn.rcv_wscale = config.recv_wscale if config.window_scale else 0
        return conn

    def _take_syn(self, syn: TcpSegment) -> None:
        c = self.c
        self.irs = syn.seq
        self.rcv_nxt = syn.seq + 1
        # O2: MSS 0 is ignored; an absent MSS means the RFC 9293 default (MUST-15).
        default_mss = 536 if self.v4 else 1220
        peer_mss = syn.mss if syn.mss else default_mss
        peer_mss = max(peer_mss, c.min_mss)
        # O3: window scale only when both sides send it; shifts above 14 are treated as 14.
        if c.window_scale and syn.wscale is not None:
            self.wscale_ok = True
            self.snd_wscale = min(syn.wscale, 14)
            self.rcv_wscale = c.recv_wscale
        else:
            self.snd_wscale = 0
            self.rcv_wscale = 0
            self.rcv_cap = min(self.rcv_cap, 0xFFFF)
        self.sack_ok = c.sack and syn.sack_permitted
        if c.timestamps and syn.ts_val is not None:
            self.ts_ok = True
            self.ts_recent = syn.ts_val
        # The SYN's window is never scaled (RFC 7323 §2.2).
        self.snd_wnd = syn.window
        self.max_snd_wnd = syn.window
        self.snd_wl1 = self.irs
        # RFC 6691: the MSS counts no options; leave room for the timestamp option.
        self.snd_mss = max(min(peer_mss, self.mss_limit) - (12 if self.ts_ok else 0), 32)
        self.rcv_mss = min(self.mss_limit, 536)
        self.cwnd = c.initial_window * self.snd_mss

    # ------------------------------------------------------------------ small helpers

    def _goto(self, event: str) -> None:
        self.state = next_state(self.state, event)

    def _tsval(self, now: float) -> int:
        return (int(now * 1000) + self.ts_offset) & SEQ_MASK

    @property
    def data_end(self) -> int:
        """Sequence number one past the last byte queued by :meth:`send`."""
        return self.sbuf_seq + len(self.sbuf)

    @property
    def readable(self) -> int:
        """Bytes waiting to be read with :meth:`recv`."""
        return len(self.rcv_buf)

    @property
    def send_capacity(self) -> int:
        """Bytes :meth:`send` would accept now."""
        if self.fin_queued or self.state not in _CAN_SEND:
            return 0
        return max(0, self.snd_cap - len(self.sbuf))

    @property
    def buffered(self) -> int:
        """Bytes held by this connection (both buffers and out-of-order data)."""
        return len(self.rcv_buf) + len(self.sbuf) + (self.asm.nbytes if self.asm else 0)

    @property
    def is_closed(self) -> bool:
        """True once the connection reached CLOSED."""
        return self.state is CLOSED

    def __repr__(self) -> str:
        return (
            f"<TcpConnection {self.state.value} snd_una={self.snd_una & SEQ_MASK} "
            f"snd_max={self.snd_max & SEQ_MASK} rcv_nxt={self.rcv_nxt & SEQ_MASK} "
            f"cwnd={self.cwnd} snd_wnd={self.snd_wnd}>"
        )

    # ------------------------------------------------------------------ application side

    def accept(self) -> None:
        """The host accepted a pending SYN: move to SYN-RECEIVED; SYN-ACK at next dispatch."""
        if self.state is not LISTEN:
            raise FlowStateError(f"cannot accept a connection in state {self.state.value}")
        self._goto("accept")
        self.syn_ack_due = True

    def recv(self, max_bytes: int = -1) -> bytes | bytearray:
        """Take up to ``max_bytes`` (all when negative) received bytes; frees receive window."""
        buf = self.rcv_buf
        n = len(buf)
        self.rd_armed = True
        if not n:
            return b""
        if max_bytes < 0 or max_bytes >= n:
            self.rcv_buf = bytearray()
            data: bytes | bytearray = buf
        else:
            data = bytes(memoryview(buf)[:max_bytes])
            del buf[:max_bytes]
        # RFC 9293 §3.8.6.2.2: a window update is sent at once only when the window the peer
        # knows was small and reading opened it a lot (Linux's tcp_cleanup_rbuf rule: it was at
        # most half the buffer and at least doubles); otherwise it rides on the next ACK, so
        # delayed ACKs keep working while the host reads promptly.
        if self.state in _SYNCHRONIZED and not self.peer_fin:
            known = self.rcv_adv - self.rcv_nxt
            free = self.rcv_cap - len(self.rcv_buf)
            if (
                2 * known <= self.rcv_cap
                and free >= 2 * known
                and free - known >= self._sws_threshold()
            ):
                self.ack_now()
        return data

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Queue bytes for the application; return how many were accepted (maybe 0).

        Raises:
            FlowStateError: the sending side is closed (after :meth:`shutdown` or close).
        """
        if self.fin_queued or self.state not in _CAN_SEND:
            raise FlowStateError(f"cannot send in state {self.state.value}")
        room = self.snd_cap - len(self.sbuf)
        n = len(data)
        if n > room:
            n = max(room, 0)
            self.want_writable = True
            if n == 0:
                return 0
            self.sbuf += memoryview(data)[:n]
        else:
            self.sbuf += data
        return n

    def shutdown(self) -> None:
        """Close our sending side: FIN after everything queued (half-close, RFC 9293 CLOSE)."""
        st = self.state
        if self.fin_queued:
            return
        if st is LISTEN or st is CLOSED:
            raise FlowStateError(f"cannot shut down in state {st.value}")
        if st not in _CAN_SEND:
            return
        self.fin_queued = True
        self.want_writable = False
        if st is ESTABLISHED or st is CLOSE_WAIT:
            self._goto("close")
        # In SYN-SENT and SYN-RECEIVED the transition happens when the handshake completes.

    def abort(self, reason: str = "aborted") -> None:
        """Reset the connection now: an RST is sent if it was synchronized."""
        st = self.state
        if st is CLOSED:
            return
        if st in _SYNCHRONIZED and st is not TIME_WAIT and not (
            st is SYN_RECEIVED and self.snd_max == self.iss
        ):
            self._pending.append(
                self._build(RST | ACK, self.snd_max, self.rcv_nxt, 0, b"", 0, 0)
            )
        self._close(reason)

    def limit_buffers(self, fraction: float) -> None:
        """Scale both buffer caps to ``fraction`` of their configured size (>= 4 KiB).

        Used under memory pressure. What was already advertised stays valid (the right edge
        never moves back); only future window growth and future ``send`` room shrink.
        """
        c = self.c
        base_rcv = c.recv_buffer if self.wscale_ok or self.state is LISTEN else min(
            c.recv_buffer, 0xFFFF
        )
        self.rcv_cap = max(min(4096, base_rcv), int(base_rcv * fraction))
        self.snd_cap = max(4096, int(c.send_buffer * fraction))

    def on_packet_too_big(self, mtu: int, quoted_seq: int) -> bool:
        """Honour an ICMP "packet too big" about one of our segments (checklist I1).

        The quoted sequence number must lie in [SND.UNA, SND.MAX) (RFC 5927 §4.1), else the
        message is refused (False). The send MSS drops to fit ``mtu`` (never below the
        IPv4 576 / IPv6 1280 minimum MTU, which every path must carry), and what is in flight
        is resent at the new size without a congestion response (RFC 1191 §6.5: this is not
        congestion; Linux's ``tcp_simple_retransmit`` does the same).
        """
        seq = _unwrap(quoted_seq & SEQ_MASK, self.snd_una)
        if not self.snd_una <= seq < self.snd_max or self.state not in _DATA_STATES:
            return False
        floor, hdr = (576, 40) if self.v4 else (1280, 60)
        mss = max(mtu, floor) - hdr - (12 if self.ts_ok else 0)
        if mss >= self.snd_mss:
            return True  # already small enough (a late or duplicate message)
        self.snd_mss = mss
        self.mss_limit = min(self.mss_limit, mss + (12 if self.ts_ok else 0))
        self.cwnd = max(self.cwnd, 2 * mss)
        self._rtt_seq = None  # Karn: the resent segments give no RTT sample
        if self.in_recovery != _RECOVERY_FAST:
            self.in_recovery = _RECOVERY_RTO
            self.recover = self.snd_max
        self.lost_upto = self.snd_max
        self.rexmit_high = self.snd_una
        self._force_rtx = True
        return True

    def forget(self) -> None:
        """Drop the connection without sending anything (e.g. evicted during a SYN flood)."""
        self._pending.clear()
        self.syn_ack_due = False
        if self.state is not CLOSED:
            self.state = next_state(self.state, "abort")
        self.close_reason = self.close_reason or "evicted"
        self.notify = 0
        self._release()

    def ack_now(self) -> None:
        """Owe the peer an ACK at the next dispatch (e.g. a window update)."""
        self.unacked = max(self.unacked, 1)
        self.delack_deadline = -1.0

    def _close(self, reason: str) -> None:
        self.state = next_state(self.state, "abort") if self.state is not CLOSED else CLOSED
        self._mark_closed(reason)
        self._release()

    def _mark_closed(self, reason: str) -> None:
        """Record why the connection ended and notify once (TIME-WAIT already counts)."""
        if self.close_reason is None:
            self.close_reason = reason
            self.notify |= N_CLOSED

    def _release(self) -> None:
        self.rtx_deadline = None
        self.persist_deadline = None
        self.delack_deadline = None
        self.keepalive_deadline = None
        self.idle_deadline = None
        self.close_deadline = None
        self.sbuf = bytearray()
        self.sacked = []
        if self.asm is not None:
            self.asm.clear()
            self.asm = None

    # ------------------------------------------------------------------ timers

    def poll_at(self) -> float | None:
        """The earliest time a timer of this connection is due (None: no timer runs)."""
        t: float | None = None
        for d in (
            self.rtx_deadline,
            self.persist_deadline,
            self.delack_deadline,
            self.keepalive_deadline,
            self.close_deadline,
            self.idle_deadline,
        ):
            if d is not None and d >= 0 and (t is None or d < t):
                t = d
        return t

    def on_timer(self, now: float) -> None:
        """Run every timer that is due at ``now``."""
        st = self.state
        if st is CLOSED:
            return
        d = self.close_deadline
        if d is not None and now >= d:
            self.close_deadline = None
            if st is TIME_WAIT:
                self.state = next_state(st, "timeout")
                self._mark_closed("closed")
                self._release()
                return
            if st in _HALF_CLOSED or st is LAST_ACK or st is CLOSING:
                quiet = now - self.last_activity
                if quiet >= self.c.half_close_timeout:
                    self.abort("timeout")
                    return
                self.close_deadline = self.last_activity + self.c.half_close_timeout
            elif st is LISTEN:
                self._close("timeout")
                return
        d = self.idle_deadline
        if d is not None and now >= d:
            due = self.last_activity + self.c.idle_timeout
            if now >= due:
                self.abort("idle")
                return
            self.idle_deadline = due
        d = self.rtx_deadline
        if d is not None and now >= d:
            self._on_rto(now)
            if self.state is CLOSED:
                return
        d = self.persist_deadline
        if d is not None and now >= d:
            self._on_persist(now)
        d = self.delack_deadline
        if d is not None and 0 <= d <= now:
            self.delack_deadline = -1.0
        d = self.keepalive_deadline
        if d is not None and now >= d:
            self._on_keepalive(now)

    def _on_rto(self, now: float) -> None:
        c = self.c
        st = self.state
        if st is SYN_RECEIVED or st is SYN_SENT:
            if self.rtx_count >= c.syn_retries:
                self.abort("timeout")
                return
            self.rtx_count += 1
            self.rtt.backoff()
            self._rtt_seq = None
            self.rtx_deadline = None
            if st is SYN_RECEIVED:
                self.syn_ack_due = True
            else:
                self.snd_max = self.iss  # resend the SYN
            return
        if self.snd_una >= self.snd_max:
            self.rtx_deadline = None
            return
        zero_window = self.snd_wnd == 0 and now - self.last_activity < c.max_rto * 2
        if self.rtx_count >= c.max_retries and not zero_window:
            # A peer that shrank its window to zero but keeps answering is alive: our
            # retransmissions are window probes then (MUST-35, SHLD-17; Linux does the same
            # while it hears from the peer).
            self.abort("timeout")
            return
        self.rtx_count += 1
        self.rtt.backoff()
        if self.in_recovery != _RECOVERY_RTO:
            # RFC 5681 eq. 4, on the first timeout of an episode.
            flight = self.snd_max - self.snd_una
            self.ssthresh = max(flight // 2, 2 * self.snd_mss)
        self.cwnd = self.snd_mss
        self.cwnd_acc = 0
        self.in_recovery = _RECOVERY_RTO
        self.recover = self.snd_max
        # RFC 2018 §8: after a timeout the SACK scoreboard is not trusted (reneging).
        self.sacked = []
        self.sacked_bytes = 0
        self.lost_upto = self.snd_max
        self.rexmit_high = self.snd_una
        self.dupacks = 0
        self._rtt_seq = None
        self.rtx_deadline = now + self.rtt.rto

    def _on_persist(self, now: float) -> None:
        # S6: a window probe. Like Linux, the probe is an ACK-only segment with an old
        # sequence number, which any receiver must answer with an ACK carrying its window.
        self.persist_backoff += 1
        if self.snd_wl2 + self.snd_wnd <= self.snd_max and (
            self.data_end > self.snd_max or (self.fin_queued and not self.fin_sent)
        ):
            self._pending.append(
                self._build(ACK, self.snd_una - 1, self.rcv_nxt, self._adv_field(),
                            self._ts_opts(now), 0, 0)
            )
            delay = min(self.rtt.rto * (1 << min(self.persist_backoff, 10)), self.c.max_rto)
            self.persist_deadline = now + delay
        else:
            self.persist_deadline = None
            self.persist_backoff = 0

    def _on_keepalive(self, now: float) -> None:
        c = self.c
        if c.keepalive_idle is None or self.state not in _SYNCHRONIZED or self.state is TIME_WAIT:
            self.keepalive_deadline = None
            return
        quiet = now - self.last_activity
        if quiet < c.keepalive_idle and not self.keepalive_probes:
            self.keepalive_deadline = self.last_activity + c.keepalive_idle
            return
        if self.keepalive_probes >= c.keepalive_count:
            self.abort("timeout")
            return
        self.keepalive_probes += 1
        self._pending.append(
            self._build(ACK, self.snd_una - 1, self.rcv_nxt, self._adv_field(),
                        self._ts_opts(now), 0, 0)
        )
        self.keepalive_deadline = now + c.keepalive_interval

    # ------------------------------------------------------------------ input

    def on_segment(self, seg: TcpSegment, now: float) -> None:
        """Process one inbound segment (checksum already verified by the caller)."""
        st = self.state
        if st is CLOSED:
            return
        if st is LISTEN:
            self._segment_in_listen(seg)
            return
        if st is SYN_SENT:
            self._segment_in_syn_sent(seg, now)
            return
        flags = seg.flags
        payload = seg.payload
        plen = len(payload)
        seq = _unwrap(seg.seq, self.rcv_nxt)
        # Any segment of this connection shows the peer is alive (keep-alive probes and
        # retransmissions included): it defers the idle and half-close timeouts.
        self.last_activity = now

        # SYN-RECEIVED: a retransmitted SYN means our SYN-ACK was lost (H3).
        if st is SYN_RECEIVED and flags & SYN and not flags & ACK:
            if seq == self.rcv_nxt - 1 and self.snd_max != self.iss:
                self.syn_ack_due = True
            return

        # RFC 7323 §5.3 PAWS: a segment with an older timestamp is a duplicate.
        if self.ts_ok and seg.ts_val is not None and not flags & RST:
            if ((seg.ts_val - self.ts_recent) & SEQ_MASK) >= SEQ_HALF:
                self._send_ack_now(now, limited=not plen)
                return

        # RFC 9293 §3.10.7.4 first check: sequence acceptability.
        rcv_wnd = self.rcv_adv - self.rcv_nxt
        if rcv_wnd < 0:
            rcv_wnd = 0
        seglen = plen + (1 if flags & FIN else 0) + (1 if flags & SYN else 0)
        rcv_nxt = self.rcv_nxt
        if seglen == 0:
            ok = seq == rcv_nxt if rcv_wnd == 0 else rcv_nxt <= seq < rcv_nxt + rcv_wnd
        elif rcv_wnd == 0:
            # R7 (MUST-66): at zero window still take ACK, RST and a FIN at RCV.NXT.
            ok = seq == rcv_nxt
        else:
            last = seq + seglen - 1
            ok = (rcv_nxt <= seq < rcv_nxt + rcv_wnd) or (rcv_nxt <= last < rcv_nxt + rcv_wnd)
        if not ok:
            if flags & RST:
                return  # X1: out-of-window RST is silently dropped
            if st is TIME_WAIT and flags & FIN:
                self.close_deadline = now + self.c.time_wait
            # R2: unacceptable data draws an ACK (not rate limited for data, smoltcp 9d532a7b,
            # nor for a retransmitted FIN, which means our ACK of it was lost).
            self._send_ack_now(now, limited=bool(flags & SYN) or (not plen and not flags & FIN))
            return

        # RFC 5961 §3.2 (second check): RST.
        if flags & RST:
            if seq == rcv_nxt:
                self.state = next_state(st, "rcv_rst")
                self._mark_closed("reset")
                self._release()
            else:
                self._send_ack_now(now, limited=True)  # challenge ACK
            return

        # RFC 5961 §4.2 (fourth check): SYN in a synchronized state draws a challenge ACK.
        if flags & SYN:
            self._send_ack_now(now, limited=True)
            return

        # Fifth check: the ACK field (R8: segments without ACK are dropped).
        if not flags & ACK:
            return
        ack = _unwrap(seg.ack, self.snd_una)
        if st is SYN_RECEIVED:
            if self.snd_una < ack <= self.snd_max:
                self._established(seg, seq, ack, now)
                st = self.state
            else:
                # H4: an unacceptable ACK in SYN-RECEIVED is answered with a reset.
                self._pending.append(self._build(RST, seg.ack, 0, 0, b"", 0, 0))
                return
        # RFC 5961 §5.2: acceptable ACKs lie in [SND.UNA - MAX.SND.WND, SND.NXT].
        if ack > self.snd_max or ack < self.snd_una - max(self.max_snd_wnd, 1):
            self._send_ack_now(now, limited=True)
            return

        self.last_activity = now
        self.keepalive_probes = 0
        # RFC 7323 §4.3: TS.Recent from acceptable segments that cover Last.ACK.sent.
        if self.ts_ok and seg.ts_val is not None and seq <= self.last_ack_sent:
            self.ts_recent = seg.ts_val
        self._process_ack(seg, seq, ack, plen, now)
        st = self.state
        if st is CLOSED:
            return

        # Closing states move on when our FIN is acknowledged.
        if self.fin_sent and self.snd_una >= self.data_end + 1:
            if st is FIN_WAIT_1:
                self._goto("rcv_ack_of_fin")
                self.close_deadline = now + self.c.half_close_timeout
                st = self.state
            elif st is CLOSING:
                self._goto("rcv_ack_of_fin")
                self._enter_time_wait(now)
                return
            elif st is LAST_ACK:
                self._goto("rcv_ack_of_fin")
                self._mark_closed("closed")
                self._release()
                return
        if st is TIME_WAIT:
            # Only a retransmitted FIN would be acceptable here; ACK it again.
            if flags & FIN:
                self.close_deadline = now + self.c.time_wait
                self._send_ack_now(now, limited=False)
            return

        # Seventh check: segment text.
        fin = flags & FIN
        if plen or fin:
            if seq < rcv_nxt:
                # Trim what we already have (a retransmission straddling RCV.NXT).
                cut = rcv_nxt - seq
                if cut >= plen:
                    payload = b""
                    plen = 0
                else:
                    payload = payload[cut:]
                    plen -= cut
                seq = rcv_nxt
            right = self.rcv_adv if self.rcv_adv > rcv_nxt else rcv_nxt
            if seq + plen > right:
                # R2: bytes beyond the advertised window are trimmed, never buffered; a FIN
                # past the edge goes with them (RFC 9293 §3.10.7.4, smoltcp bde1a1ee). The
                # peer learns our window from an immediate ACK (a zero-window probe at
                # RCV.NXT lands here, MUST-66).
                keep = max(right - seq, 0)
                payload = payload[:keep]
                plen = keep
                fin = 0
                if not keep:
                    self._send_ack_now(now, limited=False)
            if plen and st in _CAN_RECEIVE_DATA:
                self._receive_data(seq, payload, plen, now)
            elif plen:
                self._send_ack_now(now, limited=False)
            if fin:
                fin_seq = seq + plen
                if fin_seq == self.rcv_nxt:
                    self._receive_fin(now)
                elif fin_seq > self.rcv_nxt:
                    if self.asm is None:
                        self.asm = Assembler(self.c.max_ooo_ranges)
                    self.asm.fin_seq = fin_seq
                    if not plen:  # with data, _receive_data already sent the duplicate ACK
                        self._send_ack_now(now, limited=False)

    def _segment_in_listen(self, seg: TcpSegment) -> None:
        # A pending request (LISTEN until the host decides): retransmitted SYNs are ignored
        # (gVisor forwarder); an RST for the SYN's sequence withdraws the request.
        if seg.flags & RST and not seg.flags & SYN:
            if seg.seq == self.irs or seg.seq == (self.irs + 1) & SEQ_MASK:
                self._close("reset")

    def _segment_in_syn_sent(self, seg: TcpSegment, now: float) -> None:
        flags = seg.flags
        if flags & ACK:
            ack = _unwrap(seg.ack, self.snd_una)
            if ack <= self.iss or ack > self.snd_max:
                if not flags & RST:
                    self._pending.append(self._build(RST, seg.ack, 0, 0, b"", 0, 0))
                return
        else:
            ack = None
        if flags & RST:
            if ack is not None:
                self._close("refused")
            return
        if not flags & SYN or ack is None:
            return  # simultaneous open is not supported
        c = self.c
        self.irs = seg.seq
        self.rcv_nxt = seg.seq + 1
        peer_mss = max(seg.mss if seg.mss else (536 if self.v4 else 1220), c.min_mss)
        if c.window_scale and seg.wscale is not None:
            self.wscale_ok = True
            self.snd_wscale = min(seg.wscale, 14)
        else:
            self.rcv_wscale = 0
            self.rcv_cap = min(self.rcv_cap, 0xFFFF)
        self.sack_ok = c.sack and seg.sack_permitted
        if c.timestamps and seg.ts_val is not None:
            self.ts_ok = True
            self.ts_recent = seg.ts_val
        self.snd_mss = max(min(peer_mss, self.mss_limit) - (12 if self.ts_ok else 0), 32)
        self.rcv_mss = min(self.mss_limit, 536)
        self.cwnd = c.initial_window * self.snd_mss
        self.snd_una = ack
        self.snd_wnd = seg.window  # unscaled in a SYN
        self.max_snd_wnd = seg.window
        self.snd_wl1 = self.rcv_nxt - 1
        self.snd_wl2 = ack
        self.rtx_deadline = None
        self._handshake_rto()
        self.rtx_count = 0
        if self._rtt_seq is not None:
            self.rtt.sample(now - self._rtt_time)
            self._rtt_seq = None
        self.rcv_adv = self.rcv_nxt
        self._goto("rcv_syn_ack")
        self.notify |= N_ESTABLISHED
        self.last_activity = now
        self.ack_now()
        if self.fin_queued:
            self._goto("close")

    def _established(self, seg: TcpSegment, seq: int, ack: int, now: float) -> None:
        """SYN-RECEIVED -> ESTABLISHED on the handshake's ACK (RFC 9293 §3.10.7.4)."""
        self._goto("rcv_ack_of_syn")
        self._handshake_rto()
        self.rtx_count = 0
        self.rtx_deadline = None
        if self._rtt_seq is not None and ack >= self._rtt_seq:
            self.rtt.sample(now - self._rtt_time)
            self._rtt_seq = None
        self.snd_una = ack
        self.snd_wnd = seg.window << self.snd_wscale
        self.max_snd_wnd = max(self.max_snd_wnd, self.snd_wnd)
        self.snd_wl1 = seq
        self.snd_wl2 = ack
        self.notify |= N_ESTABLISHED
        if self.fin_queued:
            # shutdown() was called before the handshake finished.
            self._goto("close")

    def _handshake_rto(self) -> None:
        """RFC 6298 §5.7: after a SYN (or SYN-ACK) timed out, data starts with RTO >= 3 s."""
        if self.rtx_count:
            rtt = self.rtt
            rtt.reset_backoff()
            rtt.srtt = None
            rtt.base = max(rtt.base, min(3.0, rtt.max_rto))

    def _send_ack_now(self, now: float, limited: bool) -> None:
        """Queue an immediate ACK; ``limited`` ones obey the RFC 5961 §7 rate limit."""
        if limited:
            rate = self.c.challenge_ack_rate
            tokens = min(rate, self._ca_tokens + (now - self._ca_time) * rate)
            self._ca_time = now
            if tokens < 1:
                self._ca_tokens = tokens
                return
            self._ca_tokens = tokens - 1
        self._pending.append(
            self._build(ACK, self.snd_max, self.rcv_nxt, self._adv_field(), self._opts(now), 0, 0)
        )
        self.unacked = 0
        if self.delack_deadline is not None:
            self.delack_deadline = None

    def _receive_data(
        self, seq: int, payload: bytes | bytearray | memoryview, plen: int, now: float
    ) -> None:
        if plen > self.rcv_mss:
            self.rcv_mss = min(plen, self.mss_limit)
        if seq == self.rcv_nxt:
            self.rcv_buf += payload
            self.rcv_nxt = seq + plen
            asm = self.asm
            filled = False
            if asm is not None and asm.ranges:
                more = asm.pop_ready(self.rcv_nxt)
                if more:
                    self.rcv_buf += more
                    self.rcv_nxt += len(more)
                    filled = True
            if self.rd_armed:
                self.rd_armed = False
                self.notify |= N_READABLE
            if asm is not None and asm.fin_seq is not None and asm.fin_seq == self.rcv_nxt:
                self._receive_fin(now)
                return
            if filled or (asm is not None and asm.ranges):
                # R5: a segment that fills (part of) a gap is acknowledged at once.
                self.ack_now()
                return
            self.unacked += plen
            if self.unacked >= 2 * self.rcv_mss or self.quickack > 0:
                if self.quickack > 0:
                    self.quickack -= 1
                self.delack_deadline = -1.0
            elif self.delack_deadline is None:
                self.delack_deadline = now + self.c.delayed_ack
        else:
            # Out of order (seq > rcv_nxt): hold it, bounded, and send a duplicate ACK with
            # SACK blocks at once (R3, R4, R5).
            if self.asm is None:
                self.asm = Assembler(self.c.max_ooo_ranges)
            self.asm.add(seq, payload)
            self._send_ack_now(now, limited=False)

    def _receive_fin(self, now: float) -> None:
        self.rcv_nxt += 1
        self.peer_fin = True
        if self.asm is not None:
            self.asm.clear()
            self.asm = None
        self.notify |= N_PEER_CLOSED
        if self.rd_armed and self.rcv_buf:
            self.notify |= N_READABLE
            self.rd_armed = False
        st = self.state
        if st is ESTABLISHED:
            self._goto("rcv_fin")
            self.close_deadline = now + self.c.half_close_timeout
        elif st is FIN_WAIT_1:
            if self.fin_sent and self.snd_una >= self.data_end + 1:
                # Our FIN is acknowledged too: straight to TIME-WAIT (via FIN-WAIT-2).
                self._goto("rcv_ack_of_fin")
                self._goto("rcv_fin")
                self._enter_time_wait(now)
            else:
                self._goto("rcv_fin")
        elif st is FIN_WAIT_2:
            self._goto("rcv_fin")
            self._enter_time_wait(now)
        self.ack_now()

    def _enter_time_wait(self, now: float) -> None:
        self.close_deadline = now + self.c.time_wait
        self.rtx_deadline = None
        self.persist_deadline = None
        self.keepalive_deadline = None
        self.idle_deadline = None
        self._mark_closed("closed")
        self.sbuf = bytearray()
        self.sacked = []

    # ------------------------------------------------------------------ ACK processing

    def _process_ack(self, seg: TcpSegment, seq: int, ack: int, plen: int, now: float) -> None:
        wnd = seg.window << self.snd_wscale
        snd_una = self.snd_una
        if self.sack_ok and seg.sack:
            self._update_sack(seg.sack)
        if ack > snd_una:
            acked = ack - snd_una
            # RTT: timestamps on every new ACK (RFC 7323 §4.1), else one timed segment with
            # Karn's rule (RFC 6298 §3).
            if self.ts_ok and seg.ts_ecr:
                # Karn's rule with timestamps: an echo of a segment sent before our latest
                # retransmission measures ACK loss as much as the path; skip it.
                if ((seg.ts_ecr - self._rtx_ts) & SEQ_MASK) < SEQ_HALF:
                    r = ((self._tsval(now) - seg.ts_ecr) & SEQ_MASK) / 1000.0
                    if r < 60:
                        self.rtt.sample(r)
            elif self._rtt_seq is not None and ack >= self._rtt_seq:
                self.rtt.sample(now - self._rtt_time)
                self._rtt_seq = None
            self.rtt.reset_backoff()
            # Free acknowledged data.
            data_ack = min(ack, self.data_end)
            if data_ack > self.sbuf_seq:
                del self.sbuf[: data_ack - self.sbuf_seq]
                self.sbuf_seq = data_ack
            self.snd_una = ack
            if self.sacked:
                self._prune_sack()
            if self.rexmit_high < ack:
                self.rexmit_high = ack
            if self.lost_upto < ack:
                self.lost_upto = ack
            self.dupacks = 0
            self.rtx_count = 0
            self.persist_backoff = 0
            # Congestion control (RFC 5681 §3.1, RFC 6582, RFC 6675 §5).
            rec = self.in_recovery
            if rec:
                if ack >= self.recover:
                    self.in_recovery = _RECOVERY_NONE
                    if rec == _RECOVERY_FAST:
                        self.cwnd = max(self.ssthresh, self.snd_mss)
                    self.lost_upto = ack
                elif rec == _RECOVERY_FAST and not self.sack_ok:
                    # RFC 6582 §3.2 step 5, partial ACK: the segment at the new SND.UNA is
                    # lost too; resend it now and deflate the window by what was acked.
                    self.rexmit_high = ack
                    self.lost_upto = max(self.lost_upto, min(ack + self.snd_mss, self.snd_max))
                    self.cwnd = max(self.cwnd - acked + self.snd_mss, self.snd_mss)
                    self._force_rtx = True
            if self.in_recovery != _RECOVERY_FAST:
                mss = self.snd_mss
                if self.cwnd < self.ssthresh:
                    self.cwnd += min(acked, 2 * mss)  # RFC 3465 ABC, L = 2
                else:
                    self.cwnd_acc += acked
                    if self.cwnd_acc >= self.cwnd:
                        self.cwnd_acc -= self.cwnd
                        self.cwnd += mss
                if self.cwnd > _MAX_CWND:
                    self.cwnd = _MAX_CWND
            # RFC 6298 §5.2/5.3: stop or restart the retransmission timer.
            if ack >= self.snd_max:
                self.rtx_deadline = None
            else:
                self.rtx_deadline = now + self.rtt.rto
            if self.want_writable and self.state in _CAN_SEND and not self.fin_queued:
                free = self.snd_cap - len(self.sbuf)
                if free >= self.snd_cap // 4 or not self.sbuf:
                    self.want_writable = False
                    self.notify |= N_WRITABLE
        elif (
            ack == snd_una
            and self.snd_max > snd_una
            and not plen
            and not seg.flags & (SYN | FIN)
            and wnd == self.snd_wnd
        ):
            self.dupacks += 1  # RFC 5681 §2 duplicate ACK
            if self.in_recovery == _RECOVERY_FAST and not self.sack_ok:
                self.cwnd += self.snd_mss  # RFC 6582 §3.2 step 4: inflate per dup ACK
        # RFC 9293 §3.10.7.4: window update from the newest segment only (SND.WL1/WL2, S5).
        if self.snd_wl1 < seq or (self.snd_wl1 == seq and self.snd_wl2 <= ack):
            self.snd_wnd = wnd
            self.snd_wl1 = seq
            self.snd_wl2 = ack
            if wnd > self.max_snd_wnd:
                self.max_snd_wnd = wnd
            if wnd and self.persist_deadline is not None:
                self.persist_deadline = None
                self.persist_backoff = 0
        # Loss detection: three duplicate ACKs or DupThresh segments SACKed (RFC 6675 §5).
        if self.in_recovery == _RECOVERY_NONE and self.snd_max > self.snd_una:
            thresh = self._dup_thresh()
            if self.dupacks >= thresh or (
                self.sacked_bytes and self.sacked_bytes >= thresh * self.snd_mss
            ):
                self._enter_fast_recovery()
        elif self.in_recovery and self.sacked:
            lp = self._sack_loss_point()
            if lp > self.lost_upto:
                self.lost_upto = lp

    def _dup_thresh(self) -> int:
        # RFC 5827 early retransmit: with fewer than four segments outstanding and nothing
        # new to send, fewer duplicate ACKs are needed.
        mss = self.snd_mss
        outstanding = (self.snd_max - self.snd_una + mss - 1) // mss
        if 2 <= outstanding < 4 and self.data_end <= self.snd_max:
            return outstanding - 1
        return _DUP_THRESH

    def _enter_fast_recovery(self) -> None:
        flight = self.snd_max - self.snd_una - self.sacked_bytes
        self.ssthresh = max(flight // 2, 2 * self.snd_mss)
        # With SACK, RFC 6675 governs sending by pipe; without, RFC 6582 inflates cwnd by the
        # three segments the duplicate ACKs say have left the network. Either way the first
        # lost segment goes out at once (RFC 5681 §3.2 step 4, RFC 6675 §5 step 4.3).
        self.cwnd = self.ssthresh if self.sack_ok else self.ssthresh + _DUP_THRESH * self.snd_mss
        self._force_rtx = True
        self.cwnd_acc = 0
        self.in_recovery = _RECOVERY_FAST
        self.recover = self.snd_max
        self.rexmit_high = self.snd_una
        first_hole_end = self.sacked[0][0] if self.sacked else self.snd_max
        self.lost_upto = max(
            self._sack_loss_point(), min(self.snd_una + self.snd_mss, first_hole_end)
        )
        self._rtt_seq = None

    def _update_sack(self, blocks: tuple[tuple[int, int], ...]) -> None:
        snd_una = self.snd_una
        snd_max = self.snd_max
        sacked = self.sacked
        changed = False
        for left_w, right_w in blocks:
            left = _unwrap(left_w, snd_una)
            right = _unwrap(right_w, snd_una)
            # O4: ignore blocks that are reversed, below SND.UNA (D-SACK) or beyond SND.NXT.
            if not snd_una < right <= snd_max or left >= right or left < snd_una:
                continue
            # Merge into the sorted, disjoint scoreboard.
            i = 0
            n = len(sacked)
            while i < n and sacked[i][1] < left:
                i += 1
            j = i
            while j < n and sacked[j][0] <= right:
                j += 1
            if i == j:
                if n >= 64:
                    continue  # bounded; forgetting SACK info only costs retransmissions
                sacked.insert(i, [left, right])
            else:
                lo = min(sacked[i][0], left)
                hi = max(sacked[j - 1][1], right)
                sacked[i:j] = [[lo, hi]]
            changed = True
        if changed:
            self.sacked_bytes = sum(r[1] - r[0] for r in sacked)

    def _prune_sack(self) -> None:
        una = self.snd_una
        sacked = self.sacked
        while sacked and sacked[0][1] <= una:
            sacked.pop(0)
        if sacked and sacked[0][0] < una:
            sacked[0][0] = una
        self.sacked_bytes = sum(r[1] - r[0] for r in sacked)

    def _sack_loss_point(self) -> int:
        """Bytes below the returned sequence that are not SACKed count as lost (RFC 6675 IsLost)."""
        need = _DUP_THRESH * self.snd_mss
        acc = 0
        for r in reversed(self.sacked):
            size = r[1] - r[0]
            if acc + size >= need:
                return r[1] - (need - acc)
            acc += size
        return self.snd_una

    def _unsacked_below(self, x: int) -> int:
        """Bytes in [SND.UNA, x) that are not SACKed."""
        una = self.snd_una
        if x <= una:
            return 0
        n = x - una
        for s, e in self.sacked:
            if s >= x:
                break
            n -= min(e, x) - s
        return n

    def _pipe(self) -> int:
        """RFC 6675 §4 pipe: bytes believed to be in flight (the plain flight size during
        NewReno recovery without SACK, whose window inflation accounts for the rest)."""
        outstanding = self.snd_max - self.snd_una - self.sacked_bytes
        if self.in_recovery == _RECOVERY_RTO or (self.in_recovery and self.sack_ok):
            lost_to = self.lost_upto
            rx = self.rexmit_high if self.rexmit_high < lost_to else lost_to
            outstanding -= self._unsacked_below(lost_to) - self._unsacked_below(rx)
        return outstanding

    def _next_lost(self) -> tuple[int, int] | None:
        """The next range to retransmit: unSACKed, lost, not yet retransmitted."""
        start = self.rexmit_high if self.rexmit_high > self.snd_una else self.snd_una
        limit = self.lost_upto
        for s, e in self.sacked:
            if start < s:
                break
            if start < e:
                start = e
        if start >= limit:
            return None
        end = limit
        for s, _e in self.sacked:
            if s > start:
                end = min(end, s)
                break
        return start, end

    # ------------------------------------------------------------------ output

    def dispatch(self, now: float, out: list[bytearray]) -> None:
        """Append every packet due now (data, retransmissions, ACKs, control) to ``out``."""
        if self._pending:
            out.extend(self._pending)
            self._pending.clear()
        st = self.state
        if st is CLOSED or st is LISTEN:
            return
        if st is SYN_SENT:
            if self.snd_max == self.iss:
                self._send_syn(now, out)
            return
        if self.syn_ack_due:
            self.syn_ack_due = False
            self._send_syn(now, out)
            return
        if st is SYN_RECEIVED:
            if self.delack_deadline is not None and self.delack_deadline < 0:
                self.delack_deadline = None
            return
        sent = False
        if st is not TIME_WAIT and (
            self.data_end > self.snd_max
            or (self.fin_queued and not self.fin_sent)
            or self.in_recovery
        ):
            sent = self._send_data(now, out)
        dl = self.delack_deadline
        if not sent and dl is not None and dl < 0:
            out.append(
                self._build(ACK, self.snd_max, self.rcv_nxt, self._adv_field(),
                            self._opts(now), 0, 0)
            )
            self.unacked = 0
            self.delack_deadline = None

    def _send_syn(self, now: float, out: list[bytearray]) -> None:
        """Emit our SYN (active) or SYN-ACK (passive) with the negotiated options."""
        c = self.c
        passive = self.state is SYN_RECEIVED
        ts = (self._tsval(now), self.ts_recent if passive else 0)
        opts = build_options(
            mss=self.mss_limit,
            wscale=self.rcv_wscale if (self.wscale_ok or not passive) and c.window_scale else None,
            sack_permitted=self.sack_ok if passive else c.sack,
            timestamp=ts if (self.ts_ok if passive else c.timestamps) else None,
        )
        window = min(self.rcv_cap - len(self.rcv_buf), 0xFFFF)
        if passive:
            self.rcv_adv = self.rcv_nxt + window
            out.append(self._build(SYN | ACK, self.iss, self.rcv_nxt, window, opts, 0, 0))
            self.last_ack_sent = self.rcv_nxt
        else:
            out.append(self._build(SYN, self.iss, 0, window, opts, 0, 0))
        if self.rtx_count == 0 and self.snd_max == self.iss:
            self._rtt_seq = self.iss + 1
            self._rtt_time = now
        else:
            self._rtt_seq = None  # Karn: an ACK of a resent SYN(-ACK) is ambiguous
        self.snd_max = self.iss + 1
        self.rtx_deadline = now + self.rtt.rto
        self.unacked = 0

    def _send_data(self, now: float, out: list[bytearray]) -> bool:
        """Send retransmissions and new data as the windows allow; True if anything went."""
        data_end = self.data_end
        right = self.snd_wl2 + self.snd_wnd  # the peer's right window edge
        pipe = self._pipe()
        sent = False
        opts = self._opts(now)
        window = -1  # computed when the first segment goes out (it moves RCV.ADV)
        # RFC 6691: options beyond the timestamps we budgeted for come out of the payload.
        mss = self.snd_mss - max(0, len(opts) - (12 if self.ts_ok else 0))
        gso = self.c.gso_max_size
        gso_limit = gso - gso % mss if gso > mss and self.offload else 0
        count = 0
        if self._force_rtx:
            self._force_rtx = False
            nl = self._next_lost()
            if nl is not None:
                start, end = nl
                n = min(end - start, mss)
                window = self._adv_field()
                self._emit_range(out, start, start + n, data_end, opts, window)
                self.rexmit_high = start + n
                self.segments_retransmitted += 1
                self._rtx_ts = self._tsval(now)
                pipe += n
                sent = True
                if self.rtx_deadline is None:
                    self.rtx_deadline = now + self.rtt.rto
        while count < 512:  # bounded work per call
            count += 1
            budget = self.cwnd - pipe
            if budget <= 0:
                break
            # 1. Retransmit lost data (RFC 6675 NextSeg rule 1; also go-back-N after RTO).
            if self.in_recovery:
                nl = self._next_lost()
                if nl is not None:
                    start, end = nl
                    n = min(end - start, mss)
                    if window < 0:
                        window = self._adv_field()
                    self._emit_range(out, start, start + n, data_end, opts, window)
                    self.rexmit_high = start + n
                    self.segments_retransmitted += 1
                    self._rtx_ts = self._tsval(now)
                    pipe += n
                    sent = True
                    if self.rtx_deadline is None:
                        self.rtx_deadline = now + self.rtt.rto
                    continue
            # 2. New data (with GSO: several segments' worth in one packet the device cuts).
            seq = self.snd_max
            if seq < data_end:
                avail = data_end - seq
                n = min(gso_limit or mss, avail, right - seq, budget)
                if n <= 0:
                    self._arm_persist(now)
                    break
                if n < mss and n < avail and pipe > 0:
                    break  # sender SWS avoidance (RFC 9293 §3.8.6.2.1)
                end = seq + n
                fin = self.fin_queued and end == data_end and right > end
                if window < 0:
                    window = self._adv_field()
                self._emit_range(
                    out, seq, end + (1 if fin else 0), data_end, opts, window,
                    mss if n > mss else 0,
                )
                if fin:
                    self.fin_sent = True
                    end += 1
                if self._rtt_seq is None and not self.ts_ok:
                    self._rtt_seq = end
                    self._rtt_time = now
                self.snd_max = end
                pipe += end - seq
                sent = True
                if self.rtx_deadline is None:
                    self.rtx_deadline = now + self.rtt.rto
                continue
            # 3. A FIN on its own.
            if self.fin_queued and not self.fin_sent and seq == data_end:
                if right <= seq:
                    self._arm_persist(now)
                    break
                if window < 0:
                    window = self._adv_field()
                out.append(self._build(FIN | ACK, seq, self.rcv_nxt, window, opts, 0, 0))
                self.fin_sent = True
                self.snd_max = seq + 1
                sent = True
                if self.rtx_deadline is None:
                    self.rtx_deadline = now + self.rtt.rto
            break
        if sent:
            self.unacked = 0
            self.delack_deadline = None
            self.last_activity = now
        return sent

    def _arm_persist(self, now: float) -> None:
        if self.snd_una >= self.snd_max and self.persist_deadline is None:
            self.persist_deadline = now + self.rtt.rto

    def _emit_range(
        self,
        out: list[bytearray],
        start: int,
        end: int,
        data_end: int,
        opts: bytes,
        window: int,
        gso_size: int = 0,
    ) -> None:
        """Emit the segment covering sequence ``[start, end)`` (FIN included past data_end);
        with ``gso_size`` as one GSO packet the device cuts into segments of that size."""
        pend = end if end <= data_end else data_end
        flags = ACK
        if end > data_end:
            flags |= FIN
        if pend == data_end:
            flags |= PSH
        base = self.sbuf_seq
        out.append(
            self._build(
                flags, start, self.rcv_nxt, window, opts, start - base, pend - base, gso_size
            )
        )

    def _adv_field(self) -> int:
        """The window field to send now; moves RCV.ADV forward, never back (R6)."""
        free = self.rcv_cap - len(self.rcv_buf)
        rcv_nxt = self.rcv_nxt
        right = rcv_nxt + (free if free > 0 else 0)
        adv = self.rcv_adv
        if right < adv + self._sws_threshold() and adv >= rcv_nxt:
            right = adv  # receiver SWS avoidance: hold the edge until it can move a lot
        if right < adv:
            right = adv
        shift = self.rcv_wscale
        field = (right - rcv_nxt + (1 << shift) - 1) >> shift
        if field > 0xFFFF:
            field = 0xFFFF
        edge = rcv_nxt + (field << shift)
        if edge > adv:
            self.rcv_adv = edge
        self.last_ack_sent = rcv_nxt
        return field

    def _sws_threshold(self) -> int:
        half = self.rcv_cap >> 1
        return half if half < self.rcv_mss else self.rcv_mss

    def _ts_opts(self, now: float) -> bytes:
        if self.ts_ok:
            return _TS_OPT.pack(_TS_WORD, self._tsval(now), self.ts_recent)
        return b""

    def _opts(self, now: float) -> bytes:
        """Options for a non-SYN segment: timestamps, then SACK blocks for held data."""
        o = _TS_OPT.pack(_TS_WORD, self._tsval(now), self.ts_recent) if self.ts_ok else b""
        asm = self.asm
        if self.sack_ok and asm is not None and asm.ranges:
            blocks = asm.sack_blocks(3 if self.ts_ok else 4)
            o += _SACK_HEAD.pack(1, 1, 5, 2 + 8 * len(blocks))
            for s, e in blocks:
                o += _II.pack(s & SEQ_MASK, e & SEQ_MASK)
        return o

    def _build(
        self,
        flags: int,
        seq: int,
        ack: int,
        window: int,
        opts: bytes,
        pstart: int,
        pend: int,
        gso_size: int = 0,
    ) -> bytearray:
        """One IP packet from us to the peer; payload is ``sbuf[pstart:pend]`` (a
        :class:`GsoPacket` of ``gso_size`` segments when that is given)."""
        olen = len(opts)
        plen = pend - pstart
        tcp_len = 20 + olen + plen
        if self.v4:
            total = 20 + tcp_len
            buf = GsoPacket(total, gso_size) if gso_size else bytearray(total)
            IP4_TCP.pack_into(
                buf, 0, 0x45, 0, total, 0, 0x4000, 64, 6, finish(self._ip_sum + total),
                self.local_addr, self.remote_addr, self.local_port, self.remote_port,
                seq & SEQ_MASK, ack & SEQ_MASK, ((20 + olen) << 10) | flags, window, 0, 0,
            )
            h = 20
            hdr_sum = 0  # a valid IPv4 header sums to zero
        else:
            total = 40 + tcp_len
            buf = GsoPacket(total, gso_size) if gso_size else bytearray(total)
            IP6_TCP.pack_into(
                buf, 0, 0x60000000, tcp_len, 6, 64, self.local_addr, self.remote_addr,
                self.local_port, self.remote_port, seq & SEQ_MASK, ack & SEQ_MASK,
                ((20 + olen) << 10) | flags, window, 0, 0,
            )
            h = 40
            hdr_sum = self._ip_sum + tcp_len
        if olen:
            buf[h + 20 : h + 20 + olen] = opts
        if plen:
            buf[h + 20 + olen :] = memoryview(self.sbuf)[pstart:pend]
        if self.offload:
            s = (self._pseudo + tcp_len) % 0xFFFF
            c = s if s else 0xFFFF
        else:
            n = int.from_bytes(buf, "big")
            if total & 1:
                n <<= 8
            c = finish(n - hdr_sum + self._pseudo + tcp_len)
        buf[h + 16] = c >> 8
        buf[h + 17] = c & 0xFF
        return buf
