"""One TCP connection: the RFC 9293 state machine and its event processing (§3.10).

Pure: no I/O, no clock. Heads up: before changing the TCP read RFC 9293 §3.10 (event
processing), RFC 5961 (blind-attack mitigations), RFC 7323 (window scale, timestamps, PAWS),
RFC 6298 (RTO), RFC 5681/6582/6675 (congestion control, NewReno, SACK loss recovery) and
RFC 2018 (SACK).

How it is driven (smoltcp's shape, see ``docs/architecture.md``):

* :meth:`TcpConnection.on_segment` takes one parsed segment and the time; it never raises for
  anything the peer sends.
* :meth:`~tun2proxy.tcp.sender.TcpSender.dispatch` appends the IP packets that are due now to
  a list.
* :meth:`TcpConnection.on_timer` runs expired timers; :meth:`~tun2proxy.tcp.tcb.Tcb.poll_at`
  says when the next one is due.
* The application side (the relay towards the upstream) calls :meth:`recv`, :meth:`send`,
  :meth:`shutdown` and :meth:`abort`; it learns what happened from the ``notify`` bits.

This module is the state machine, in the order of RFC 9293 §3.10: OPEN (passive and active),
CLOSE and ABORT, SEGMENT ARRIVES (§3.10.7, one method per check of §3.10.7.4), and the
timeouts (§3.10.8). Every state change is made here, through
:func:`~tun2proxy.tcp.state.next_state`. The work behind the steps is in the layers below:
the variables and option negotiation in :mod:`~tun2proxy.tcp.tcb`; the SEND call, output,
ACK processing and loss recovery in :mod:`~tun2proxy.tcp.sender` (with
:mod:`~tun2proxy.tcp.congestion` and :mod:`~tun2proxy.tcp.sack`); the RECEIVE call, text and
acknowledgments in :mod:`~tun2proxy.tcp.receiver`; packet bytes in
:mod:`~tun2proxy.tcp.segment_builder`.

Sequence numbers inside are *unwrapped*: plain integers that keep growing past 2**32. Wire
values are converted once at the boundary with :func:`~tun2proxy.wire.seq.unwrap` (inbound)
and ``& 0xFFFFFFFF`` (outbound), so all comparisons below are ordinary integer comparisons
and correct across the wrap.
"""

from __future__ import annotations

from typing import Self

from ..errors import FlowStateError
from ..wire.seq import SEQ_HALF, SEQ_MASK, unwrap
from ..wire.tcp import ACK, FIN, RST, SYN, TcpSegment
from .assembler import Assembler
from .config import TcpConfig
from .receiver import TcpReceiver
from .sender import TcpSender
from .state import (
    CAN_SEND,
    CLOSE_WAIT,
    CLOSED,
    CLOSING,
    ESTABLISHED,
    FIN_WAIT_1,
    FIN_WAIT_2,
    HALF_CLOSED,
    LAST_ACK,
    LISTEN,
    SYN_RECEIVED,
    SYN_SENT,
    SYNCHRONIZED,
    TIME_WAIT,
    CloseReason,
    Event,
    next_state,
)
from .tcb import N_CLOSED, N_ESTABLISHED, N_PEER_CLOSED, N_READABLE, N_WRITABLE

__all__ = [
    "N_CLOSED",
    "N_ESTABLISHED",
    "N_PEER_CLOSED",
    "N_READABLE",
    "N_WRITABLE",
    "TcpConnection",
]


class TcpConnection(TcpSender, TcpReceiver):
    """The state of one TCP connection and the rules that move it (passive or active open).

    The variables are documented on :class:`~tun2proxy.tcp.tcb.Tcb`; ``state`` is this
    class's own slot, and only the methods here assign it.
    """

    __slots__ = ("state",)

    # ------------------------------------------------------------------ OPEN (§3.10.1)

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
        self.state = CLOSED
        super().__init__(
            config,
            local_addr,
            local_port,
            remote_addr,
            remote_port,
            iss,
            now,
            mss_limit=mss_limit,
            ts_offset=ts_offset,
            checksum_offload=checksum_offload,
        )

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
    ) -> Self:
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

    def accept(self) -> None:
        """The host accepted a pending SYN: move to SYN-RECEIVED; SYN-ACK at next dispatch."""
        if self.state is not LISTEN:
            raise FlowStateError(f"cannot accept a connection in state {self.state.value}")
        self._goto("accept")
        self.syn_ack_due = True

    def _goto(self, event: Event) -> None:
        """Take the transition for ``event`` (the only way ``state`` changes, but for aborts)."""
        self.state = next_state(self.state, event)

    # ------------------------------------------------------------------ CLOSE, ABORT (§3.10.4-5)

    def shutdown(self) -> None:
        """Close our sending side: FIN after everything queued (half-close, RFC 9293 CLOSE)."""
        st = self.state
        if self.fin_queued:
            return
        if st is LISTEN or st is CLOSED:
            raise FlowStateError(f"cannot shut down in state {st.value}")
        if st not in CAN_SEND:
            return
        self.fin_queued = True
        self.want_writable = False
        if st is ESTABLISHED or st is CLOSE_WAIT:
            self._goto("close")
        # In SYN-SENT and SYN-RECEIVED the transition happens when the handshake completes.

    def abort(self, reason: CloseReason = "aborted") -> None:
        """Reset the connection now: an RST is sent if it was synchronized."""
        st = self.state
        if st is CLOSED:
            return
        if st in SYNCHRONIZED and st is not TIME_WAIT and not (
            st is SYN_RECEIVED and self.snd_max == self.iss
        ):
            self._pending.append(
                self.builder.build(RST | ACK, self.snd_max, self.rcv_nxt, 0, b"")
            )
        self._close(reason)

    def forget(self) -> None:
        """Drop the connection without sending anything (e.g. evicted during a SYN flood)."""
        self._pending.clear()
        self.syn_ack_due = False
        if self.state is not CLOSED:
            self.state = next_state(self.state, "abort")
        self.close_reason = self.close_reason or "evicted"
        self.notify = 0
        self._release()

    def _close(self, reason: CloseReason) -> None:
        """Go to CLOSED now (no RST) and release everything."""
        self.state = next_state(self.state, "abort") if self.state is not CLOSED else CLOSED
        self._mark_closed(reason)
        self._release()

    def _mark_closed(self, reason: CloseReason) -> None:
        """Record why the connection ended and notify once (TIME-WAIT already counts)."""
        if self.close_reason is None:
            self.close_reason = reason
            self.notify |= N_CLOSED

    def _release(self) -> None:
        """Stop every timer and free the buffers: the connection is over."""
        self.rtx_deadline = None
        self.persist_deadline = None
        self.delack_deadline = None
        self.keepalive_deadline = None
        self.idle_deadline = None
        self.close_deadline = None
        self.sbuf = bytearray()
        self.scoreboard.clear()
        if self.asm is not None:
            self.asm.clear()
            self.asm = None

    def _enter_time_wait(self, now: float) -> None:
        """TIME-WAIT: only the 2 MSL timer runs (short: the app is local); the flow is over."""
        self.close_deadline = now + self.config.time_wait
        self.rtx_deadline = None
        self.persist_deadline = None
        self.keepalive_deadline = None
        self.idle_deadline = None
        self._mark_closed("closed")
        self.sbuf = bytearray()
        self.scoreboard.clear()

    # ------------------------------------------------------------------ SEGMENT ARRIVES (§3.10.7)

    def on_segment(self, seg: TcpSegment, now: float) -> None:
        """Process one inbound segment (checksum already verified by the caller)."""
        st = self.state
        if st is CLOSED:
            return  # §3.10.7.1: the stack answers for connections it does not have
        if st is LISTEN:
            self._segment_in_listen(seg)  # §3.10.7.2
            return
        if st is SYN_SENT:
            self._segment_in_syn_sent(seg, now)  # §3.10.7.3
            return
        # §3.10.7.4: SYN-RECEIVED and the synchronized states.
        flags = seg.flags
        plen = len(seg.payload)
        # Unwrap relative to RCV.NXT; the usual segment is exactly there (no call needed).
        seq = self.rcv_nxt
        if seg.seq != seq & SEQ_MASK:
            seq = unwrap(seg.seq, seq)
        # Any segment of this connection shows the peer is alive (keep-alive probes and
        # retransmissions included): it defers the idle and half-close timeouts.
        self.last_activity = now
        if st is SYN_RECEIVED and flags & SYN and not flags & ACK:
            # A retransmitted SYN means our SYN-ACK was lost (H3).
            if seq == self.rcv_nxt - 1 and self.snd_max != self.iss:
                self.syn_ack_due = True
            return
        # First: the sequence number (with PAWS).
        if not self._check_sequence(seg, seq, plen, now):
            return
        # Second: the RST bit.
        if flags & RST:
            self._check_rst(seq, now)
            return
        # Third: security and precedence (not used). Fourth: the SYN bit.
        if flags & SYN:
            self._check_syn(now)
            return
        # Fifth: the ACK field (R8: segments without ACK are dropped).
        if not flags & ACK or not self._check_ack(seg, seq, plen, now):
            return
        # Sixth: the URG bit is ignored; urgent bytes are delivered inline (A2).
        # Seventh and eighth: the segment text, then the FIN bit.
        if plen or flags & FIN:
            self._process_text(seg, seq, plen, now)

    def _check_sequence(self, seg: TcpSegment, seq: int, plen: int, now: float) -> bool:
        """First check: PAWS (RFC 7323 §5.3), then the four acceptability cases; False if
        the segment is dropped (with an ACK unless it was an RST)."""
        flags = seg.flags
        # PAWS: a segment with an older timestamp is a duplicate.
        if self.ts_ok and seg.ts_val is not None and not flags & RST:
            if ((seg.ts_val - self.ts_recent) & SEQ_MASK) >= SEQ_HALF:
                self._send_ack_now(now, limited=not plen)
                return False
        rcv_nxt = self.rcv_nxt
        rcv_wnd = self.rcv_adv - rcv_nxt
        if rcv_wnd < 0:
            rcv_wnd = 0
        seglen = plen + (1 if flags & FIN else 0) + (1 if flags & SYN else 0)
        if seglen == 0:
            ok = seq == rcv_nxt if rcv_wnd == 0 else rcv_nxt <= seq < rcv_nxt + rcv_wnd
        elif rcv_wnd == 0:
            # R7 (MUST-66): at zero window still take ACK, RST and a FIN at RCV.NXT.
            ok = seq == rcv_nxt
        else:
            last = seq + seglen - 1
            ok = (rcv_nxt <= seq < rcv_nxt + rcv_wnd) or (rcv_nxt <= last < rcv_nxt + rcv_wnd)
        if ok:
            return True
        if flags & RST:
            return False  # X1: out-of-window RST is silently dropped
        if self.state is TIME_WAIT and flags & FIN:
            self.close_deadline = now + self.config.time_wait
        # R2: unacceptable data draws an ACK (not rate limited for data, smoltcp 9d532a7b,
        # nor for a retransmitted FIN, which means our ACK of it was lost).
        self._send_ack_now(now, limited=bool(flags & SYN) or (not plen and not flags & FIN))
        return False

    def _check_rst(self, seq: int, now: float) -> None:
        """Second check (RFC 5961 §3.2): an RST at RCV.NXT resets; any other in-window RST
        draws a challenge ACK."""
        if seq == self.rcv_nxt:
            self.state = next_state(self.state, "rcv_rst")
            self._mark_closed("reset")
            self._release()
        else:
            self._send_ack_now(now, limited=True)

    def _check_syn(self, now: float) -> None:
        """Fourth check (RFC 5961 §4.2): a SYN in a synchronized state draws a challenge ACK."""
        self._send_ack_now(now, limited=True)

    def _check_ack(self, seg: TcpSegment, seq: int, plen: int, now: float) -> bool:
        """Fifth check: the ACK field; False when processing of the segment ends here."""
        ack = self.snd_una
        if seg.ack != ack & SEQ_MASK:
            ack = unwrap(seg.ack, ack)
        if self.state is SYN_RECEIVED:
            if self.snd_una < ack <= self.snd_max:
                self._established(seg, seq, ack, now)
            else:
                # H4: an unacceptable ACK in SYN-RECEIVED is answered with a reset.
                self._pending.append(self.builder.build(RST, seg.ack, 0, 0, b""))
                return False
        # RFC 5961 §5.2: acceptable ACKs lie in [SND.UNA - MAX.SND.WND, SND.NXT].
        if ack > self.snd_max or ack < self.snd_una - max(self.max_snd_wnd, 1):
            self._send_ack_now(now, limited=True)
            return False
        self.keepalive_probes = 0
        # RFC 7323 §4.3: TS.Recent from acceptable segments that cover Last.ACK.sent.
        if self.ts_ok and seg.ts_val is not None and seq <= self.last_ack_sent:
            self.ts_recent = seg.ts_val
        self._process_ack(seg, seq, ack, plen, now)
        # The closing states move on when our FIN is acknowledged.
        if self.fin_sent and self.snd_una >= self.data_end + 1 and not self._our_fin_acked(now):
            return False
        if self.state is TIME_WAIT:
            # Only a retransmitted FIN would be acceptable here; ACK it again.
            if seg.flags & FIN:
                self.close_deadline = now + self.config.time_wait
                self._send_ack_now(now, limited=False)
            return False
        return True

    def _our_fin_acked(self, now: float) -> bool:
        """FIN-WAIT-1 -> FIN-WAIT-2, CLOSING -> TIME-WAIT, LAST-ACK -> CLOSED; False when
        the segment's processing ends with it."""
        st = self.state
        if st is FIN_WAIT_1:
            self._goto("rcv_ack_of_fin")
            self.close_deadline = now + self.config.half_close_timeout
        elif st is CLOSING:
            self._goto("rcv_ack_of_fin")
            self._enter_time_wait(now)
            return False
        elif st is LAST_ACK:
            self._goto("rcv_ack_of_fin")
            self._mark_closed("closed")
            self._release()
            return False
        return True

    def _process_text(self, seg: TcpSegment, seq: int, plen: int, now: float) -> None:
        """Seventh check: the segment text, trimmed to the window; then the eighth, FIN."""
        payload = seg.payload
        fin = seg.flags & FIN
        rcv_nxt = self.rcv_nxt
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
        st = self.state
        if plen and (st is ESTABLISHED or st is FIN_WAIT_1 or st is FIN_WAIT_2):
            if self._receive_data(seq, payload, plen, now):
                self._receive_fin(now)  # the FIN the reassembler held is next now
        elif plen:
            self._send_ack_now(now, limited=False)
        if fin:
            self._check_fin(seq + plen, plen, now)

    def _check_fin(self, fin_seq: int, plen: int, now: float) -> None:
        """Eighth check: a FIN at ``fin_seq``, in order or held until the hole before it fills."""
        if fin_seq == self.rcv_nxt:
            self._receive_fin(now)
        elif fin_seq > self.rcv_nxt:
            if self.asm is None:
                self.asm = Assembler(self.config.max_ooo_ranges)
            self.asm.fin_seq = fin_seq
            if not plen:  # with data, _receive_data already sent the duplicate ACK
                self._send_ack_now(now, limited=False)

    def _receive_fin(self, now: float) -> None:
        """The peer's FIN is next in sequence: the receiving side ends (RFC 9293 §3.10.7.4)."""
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
            self.close_deadline = now + self.config.half_close_timeout
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

    def _segment_in_listen(self, seg: TcpSegment) -> None:
        """§3.10.7.2 for a pending request (LISTEN until the host decides): retransmitted SYNs
        are ignored (gVisor forwarder); an RST for the SYN's sequence withdraws the request."""
        if seg.flags & RST and not seg.flags & SYN:
            if seg.seq == self.irs or seg.seq == (self.irs + 1) & SEQ_MASK:
                self._close("reset")

    def _segment_in_syn_sent(self, seg: TcpSegment, now: float) -> None:
        """§3.10.7.3: our SYN answered (active open; simultaneous open is not supported)."""
        flags = seg.flags
        if flags & ACK:
            ack = unwrap(seg.ack, self.snd_una)
            if ack <= self.iss or ack > self.snd_max:
                if not flags & RST:
                    self._pending.append(self.builder.build(RST, seg.ack, 0, 0, b""))
                return
        else:
            ack = None
        if flags & RST:
            if ack is not None:
                self._close("refused")
            return
        if not flags & SYN or ack is None:
            return
        self._take_syn(seg)
        self.snd_una = ack
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

    # ------------------------------------------------------------------ timeouts (§3.10.8)

    def on_timer(self, now: float) -> None:
        """Run every timer that is due at ``now``."""
        st = self.state
        if st is CLOSED:
            return
        c = self.config
        d = self.close_deadline
        if d is not None and now >= d:
            self.close_deadline = None
            if st is TIME_WAIT:
                self.state = next_state(st, "timeout")
                self._mark_closed("closed")
                self._release()
                return
            if st in HALF_CLOSED or st is LAST_ACK or st is CLOSING:
                quiet = now - self.last_activity
                if quiet >= c.half_close_timeout:
                    self.abort("timeout")
                    return
                self.close_deadline = self.last_activity + c.half_close_timeout
            elif st is LISTEN:
                self._close("timeout")
                return
        d = self.idle_deadline
        if d is not None and now >= d:
            due = self.last_activity + c.idle_timeout
            if now >= due:
                self.abort("idle")
                return
            self.idle_deadline = due
        d = self.rtx_deadline
        if d is not None and now >= d and not self._on_rto(now):
            self.abort("timeout")
            return
        d = self.persist_deadline
        if d is not None and now >= d:
            self._on_persist(now)
        d = self.delack_deadline
        if d is not None and 0 <= d <= now:
            self.delack_deadline = -1.0
        d = self.keepalive_deadline
        if d is not None and now >= d and not self._on_keepalive(now):
            self.abort("timeout")
