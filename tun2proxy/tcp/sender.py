"""The sending half of a connection: segments out, ACKs in, loss recovery, RTO and probes.

Pure: no I/O. The host queues bytes with :meth:`TcpSender.send` (RFC 9293 §3.10.2), bounded
by the send buffer. :meth:`TcpSender.dispatch` turns the send buffer into segments as the windows
allow (retransmissions first, RFC 6675 NextSeg; then new data within
``min(cwnd - pipe, peer window)``, with sender SWS avoidance; the FIN). :meth:`_process_ack`
is what an acceptable ACK does to this side: RTT samples (RFC 6298, RFC 7323 §4), freeing the
send buffer, the congestion controller's events (:mod:`tun2proxy.tcp.congestion`), the window
update (SND.WL1/WL2) and loss detection with the SACK scoreboard (:mod:`tun2proxy.tcp.sack`).
The timer handlers here (RTO, persist, keep-alive) only say when the connection should be
given up; the connection does that (every state change is in :mod:`tun2proxy.tcp.connection`).
"""

from __future__ import annotations

from ..errors import FlowStateError
from ..wire.seq import SEQ_HALF, SEQ_MASK, unwrap
from ..wire.tcp import ACK, FIN, PSH, SYN, TcpSegment, build_options
from .congestion.newreno import DUP_THRESH
from .state import (
    CAN_SEND,
    CLOSED,
    DATA_STATES,
    LISTEN,
    SYN_RECEIVED,
    SYN_SENT,
    SYNCHRONIZED,
    TIME_WAIT,
)
from .tcb import N_WRITABLE, Recovery, Tcb

__all__ = ["TcpSender"]

_OPEN = Recovery.OPEN
_FAST = Recovery.FAST
_RTO = Recovery.RTO


class TcpSender(Tcb):
    """What we send, and what the peer's ACKs tell us about it."""

    __slots__ = ()

    # ------------------------------------------------------------------ SEND (§3.10.2)

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Queue bytes for the application; return how many were accepted (maybe 0).

        Raises:
            FlowStateError: the sending side is closed (after :meth:`shutdown` or close).
        """
        if self.fin_queued or self.state not in CAN_SEND:
            raise FlowStateError(f"cannot send in state {self.state.value}")
        room = self.snd_cap - len(self.sbuf)
        n = len(data)
        if (
            n > room
            and self.snd_cap < self.snd_cap_max
            and self.snd_max - self.sbuf_seq >= self.snd_cap >> 1
            and self.sbuf_seq + len(self.sbuf) - self.snd_max <= self.snd_cap >> 2
        ):
            # The buffer, not the app, bounds this flow: at least half of it is in flight and
            # at most a quarter waits unsent. Grow it (TcpConfig.send_buffer_max).
            self.snd_cap = min(self.snd_cap << 1, self.snd_cap_max)
            room = self.snd_cap - len(self.sbuf)
        if n > room:
            n = max(room, 0)
            self.want_writable = True
            if n == 0:
                return 0
            self.sbuf += memoryview(data)[:n]
        else:
            self.sbuf += data
        return n

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
            or self.recovery is not _OPEN
        ):
            sent = self._send_data(now, out)
        dl = self.delack_deadline
        if not sent and dl is not None and dl < 0:
            out.append(
                self.builder.build(
                    ACK, self.snd_max, self.rcv_nxt, self._adv_field(), self._opts(now)
                )
            )
            self.unacked = 0
            self.delack_deadline = None

    def _send_syn(self, now: float, out: list[bytearray]) -> None:
        """Emit our SYN (active) or SYN-ACK (passive) with the negotiated options."""
        c = self.config
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
            out.append(self.builder.build(SYN | ACK, self.iss, self.rcv_nxt, window, opts))
            self.last_ack_sent = self.rcv_nxt
        else:
            out.append(self.builder.build(SYN, self.iss, 0, window, opts))
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
        cwnd = self.cc.cwnd
        recovering = self.recovery is not _OPEN
        sent = False
        opts = self._opts(now)
        window = -1  # computed when the first segment goes out (it moves RCV.ADV)
        # RFC 6691: options beyond the timestamps we budgeted for come out of the payload.
        mss = self.snd_mss - max(0, len(opts) - (12 if self.ts_ok else 0))
        gso = self.config.gso_max_size
        gso_limit = gso - gso % mss if gso > mss and self.offload else 0
        if self._force_rtx:
            # Fast retransmit, a NewReno partial ACK or a smaller MTU: the first lost range
            # goes now, whatever the window says (RFC 5681 §3.2 step 4, RFC 6675 §5 4.3).
            self._force_rtx = False
            hole = self._next_lost()
            if hole is not None:
                window = self._adv_field()
                pipe += self._resend(out, hole, mss, data_end, opts, window, now)
                sent = True
        count = 0
        while count < 512:  # bounded work per call
            count += 1
            budget = cwnd - pipe
            if budget <= 0:
                break
            # 1. Retransmit lost data (RFC 6675 NextSeg rule 1; also go-back-N after RTO).
            if recovering:
                hole = self._next_lost()
                if hole is not None:
                    if window < 0:
                        window = self._adv_field()
                    pipe += self._resend(out, hole, mss, data_end, opts, window, now)
                    sent = True
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
                out.append(self.builder.build(FIN | ACK, seq, self.rcv_nxt, window, opts))
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

    def _resend(
        self,
        out: list[bytearray],
        hole: tuple[int, int],
        mss: int,
        data_end: int,
        opts: bytes,
        window: int,
        now: float,
    ) -> int:
        """Retransmit the start of ``hole`` (at most one segment); returns its length."""
        start, end = hole
        n = min(end - start, mss)
        self._emit_range(out, start, start + n, data_end, opts, window)
        self.rexmit_high = start + n
        self.segments_retransmitted += 1
        self._rtx_ts = self._tsval(now)
        if self.rtx_deadline is None:
            self.rtx_deadline = now + self.rtt.rto
        return n

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
            self.builder.build(
                flags, start, self.rcv_nxt, window, opts, self.sbuf, start - base, pend - base,
                gso_size,
            )
        )

    def _arm_persist(self, now: float) -> None:
        if self.snd_una >= self.snd_max and self.persist_deadline is None:
            self.persist_deadline = now + self.rtt.rto

    # ------------------------------------------------------------------ loss recovery

    def _pipe(self) -> int:
        """RFC 6675 §4 pipe: bytes believed to be in flight (the plain flight size during
        NewReno recovery without SACK, whose window inflation accounts for the rest)."""
        sb = self.scoreboard
        outstanding = self.snd_max - self.snd_una - sb.nbytes
        rec = self.recovery
        if rec is _RTO or (rec is _FAST and self.sack_ok):
            # Lost bytes have left the network, unless they were resent.
            lost_to = self.lost_upto
            rx = self.rexmit_high if self.rexmit_high < lost_to else lost_to
            una = self.snd_una
            outstanding -= sb.unsacked_below(una, lost_to) - sb.unsacked_below(una, rx)
        return outstanding

    def _next_lost(self) -> tuple[int, int] | None:
        """The next range to retransmit: unSACKed, lost, not yet retransmitted."""
        start = self.rexmit_high if self.rexmit_high > self.snd_una else self.snd_una
        return self.scoreboard.next_hole(start, self.lost_upto)

    def _dup_thresh(self) -> int:
        """DupThresh; RFC 5827 early retransmit: with fewer than four segments outstanding
        and nothing new to send, fewer duplicate ACKs are needed."""
        mss = self.snd_mss
        outstanding = (self.snd_max - self.snd_una + mss - 1) // mss
        if 2 <= outstanding < 4 and self.data_end <= self.snd_max:
            return outstanding - 1
        return DUP_THRESH

    def _enter_fast_recovery(self) -> None:
        """Loss detected by duplicate ACKs or SACK: start fast recovery (RFC 6675 §5 step 4,
        RFC 6582 §3.2 step 2); the first lost segment goes out at the next dispatch."""
        sb = self.scoreboard
        mss = self.snd_mss
        self.cc.on_recovery_start(self.snd_max - self.snd_una - sb.nbytes)
        self._force_rtx = True
        self.recovery = _FAST
        self.recover = self.snd_max
        self.rexmit_high = self.snd_una
        first_hole_end = sb.ranges[0][0] if sb.ranges else self.snd_max
        self.lost_upto = max(
            sb.loss_point(self.snd_una, DUP_THRESH * mss),
            min(self.snd_una + mss, first_hole_end),
        )
        self._rtt_seq = None

    def _ack_in_recovery(self, ack: int, acked: int) -> None:
        """New data acknowledged during recovery: the end of it, or a partial ACK."""
        rec = self.recovery
        if ack >= self.recover:
            self.recovery = _OPEN
            if rec is _FAST:
                self.cc.on_recovery_end()
            self.lost_upto = ack
        elif rec is _FAST:
            self.cc.on_partial_ack(acked)
            if not self.sack_ok:
                # RFC 6582 §3.2 step 5, partial ACK: the segment at the new SND.UNA is lost
                # too; resend it now.
                self.rexmit_high = ack
                self.lost_upto = max(self.lost_upto, min(ack + self.snd_mss, self.snd_max))
                self._force_rtx = True

    # ------------------------------------------------------------------ ACK processing

    def _process_ack(self, seg: TcpSegment, seq: int, ack: int, plen: int, now: float) -> None:
        """What an acceptable ACK (RFC 9293 §3.10.7.4, fifth check) does to the sending side."""
        wnd = seg.window << self.snd_wscale
        snd_una = self.snd_una
        if self.sack_ok and seg.sack:
            self.scoreboard.update(seg.sack, snd_una, self.snd_max)
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
            sb = self.scoreboard
            if sb.ranges:
                sb.prune(ack)
            if self.rexmit_high < ack:
                self.rexmit_high = ack
            if self.lost_upto < ack:
                self.lost_upto = ack
            self.dupacks = 0
            self.rtx_count = 0
            self.persist_backoff = 0
            # Congestion control (RFC 5681 §3.1, RFC 6582, RFC 6675 §5).
            if self.recovery is not _OPEN:
                self._ack_in_recovery(ack, acked)
            if self.recovery is not _FAST:
                self.cc.on_ack(acked)
            # RFC 6298 §5.2/5.3: stop or restart the retransmission timer.
            if ack >= self.snd_max:
                self.rtx_deadline = None
            else:
                self.rtx_deadline = now + self.rtt.rto
            if self.want_writable and self.state in CAN_SEND and not self.fin_queued:
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
            if self.recovery is _FAST:
                self.cc.on_dup_ack()
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
        # Loss detection: DupThresh duplicate ACKs or DupThresh segments SACKed (RFC 6675 §5).
        if self.recovery is _OPEN:
            if self.snd_max > self.snd_una:
                sacked = self.scoreboard.nbytes
                if self.dupacks or sacked:
                    thresh = self._dup_thresh()
                    if self.dupacks >= thresh or (sacked and sacked >= thresh * self.snd_mss):
                        self._enter_fast_recovery()
        elif self.scoreboard.ranges:
            lp = self.scoreboard.loss_point(self.snd_una, DUP_THRESH * self.snd_mss)
            if lp > self.lost_upto:
                self.lost_upto = lp

    # ------------------------------------------------------------------ timer responses

    def _on_rto(self, now: float) -> bool:
        """The retransmission timer expired (RFC 6298 §5.4-5.7); False: give up (reset)."""
        c = self.config
        st = self.state
        if st is SYN_RECEIVED or st is SYN_SENT:
            if self.rtx_count >= c.syn_retries:
                return False
            self.rtx_count += 1
            self.rtt.backoff()
            self._rtt_seq = None
            self.rtx_deadline = None
            if st is SYN_RECEIVED:
                self.syn_ack_due = True
            else:
                self.snd_max = self.iss  # resend the SYN
            return True
        if self.snd_una >= self.snd_max:
            self.rtx_deadline = None
            return True
        zero_window = self.snd_wnd == 0 and now - self.last_activity < c.max_rto * 2
        if self.rtx_count >= c.max_retries and not zero_window:
            # A peer that shrank its window to zero but keeps answering is alive: our
            # retransmissions are window probes then (MUST-35, SHLD-17; Linux does the same
            # while it hears from the peer).
            return False
        self.rtx_count += 1
        self.rtt.backoff()
        self.cc.on_rto(self.snd_max - self.snd_una, self.recovery is not _RTO)
        self.recovery = _RTO
        self.recover = self.snd_max
        # RFC 2018 §8: after a timeout the SACK scoreboard is not trusted (reneging).
        self.scoreboard.clear()
        self.lost_upto = self.snd_max
        self.rexmit_high = self.snd_una
        self.dupacks = 0
        self._rtt_seq = None
        self.rtx_deadline = now + self.rtt.rto
        return True

    def _handshake_rto(self) -> None:
        """RFC 6298 §5.7: after a SYN (or SYN-ACK) timed out, data starts with RTO >= 3 s."""
        if self.rtx_count:
            rtt = self.rtt
            rtt.reset_backoff()
            rtt.srtt = None
            rtt.base = max(rtt.base, min(3.0, rtt.max_rto))

    def _on_persist(self, now: float) -> None:
        """S6: a window probe. Like Linux, the probe is an ACK-only segment with an old
        sequence number, which any receiver must answer with an ACK carrying its window."""
        self.persist_backoff += 1
        if self.snd_wl2 + self.snd_wnd <= self.snd_max and (
            self.data_end > self.snd_max or (self.fin_queued and not self.fin_sent)
        ):
            self._pending.append(
                self.builder.build(
                    ACK, self.snd_una - 1, self.rcv_nxt, self._adv_field(), self._ts_opts(now)
                )
            )
            delay = min(self.rtt.rto * (1 << min(self.persist_backoff, 10)), self.config.max_rto)
            self.persist_deadline = now + delay
        else:
            self.persist_deadline = None
            self.persist_backoff = 0

    def _on_keepalive(self, now: float) -> bool:
        """A keep-alive probe after ``keepalive_idle`` of silence; False: give up (reset)."""
        c = self.config
        if c.keepalive_idle is None or self.state not in SYNCHRONIZED or self.state is TIME_WAIT:
            self.keepalive_deadline = None
            return True
        quiet = now - self.last_activity
        if quiet < c.keepalive_idle and not self.keepalive_probes:
            self.keepalive_deadline = self.last_activity + c.keepalive_idle
            return True
        if self.keepalive_probes >= c.keepalive_count:
            return False
        self.keepalive_probes += 1
        self._pending.append(
            self.builder.build(
                ACK, self.snd_una - 1, self.rcv_nxt, self._adv_field(), self._ts_opts(now)
            )
        )
        self.keepalive_deadline = now + c.keepalive_interval
        return True

    # ------------------------------------------------------------------ ICMP

    def on_packet_too_big(self, mtu: int, quoted_seq: int) -> bool:
        """Honour an ICMP "packet too big" about one of our segments (checklist I1).

        The quoted sequence number must lie in [SND.UNA, SND.MAX) (RFC 5927 §4.1), else the
        message is refused (False). The send MSS drops to fit ``mtu`` (never below the
        IPv4 576 / IPv6 1280 minimum MTU, which every path must carry), and what is in flight
        is resent at the new size without a congestion response (RFC 1191 §6.5: this is not
        congestion; Linux's ``tcp_simple_retransmit`` does the same).
        """
        seq = unwrap(quoted_seq & SEQ_MASK, self.snd_una)
        if not self.snd_una <= seq < self.snd_max or self.state not in DATA_STATES:
            return False
        floor, hdr = (576, 40) if self.v4 else (1280, 60)
        mss = max(mtu, floor) - hdr - (12 if self.ts_ok else 0)
        if mss >= self.snd_mss:
            return True  # already small enough (a late or duplicate message)
        self.snd_mss = mss
        self.mss_limit = min(self.mss_limit, mss + (12 if self.ts_ok else 0))
        self.cc.set_mss(mss)
        self._rtt_seq = None  # Karn: the resent segments give no RTT sample
        if self.recovery is not _FAST:
            self.recovery = _RTO
            self.recover = self.snd_max
        self.lost_upto = self.snd_max
        self.rexmit_high = self.snd_una
        self._force_rtx = True
        return True
