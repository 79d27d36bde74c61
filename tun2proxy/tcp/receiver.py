"""The receiving half of a connection: the peer's text into our buffer, and when to ACK it.

Pure: no I/O. The host takes bytes with :meth:`TcpReceiver.recv` (RFC 9293 §3.10.3), which
frees receive window (the backpressure towards the app). In-order bytes go straight into the
receive buffer (the only copy); bytes past a hole wait in the bounded
:class:`~tun2proxy.tcp.assembler.Assembler` and draw an immediate duplicate ACK with SACK
blocks. ACKs are delayed (at most ``delayed_ack``, at least every second full segment), sent
at once in quick-ACK mode after the handshake, when a hole fills or for anything unexpected;
the unexpected ones are rate-limited (RFC 5961 §7). The peer's FIN and every state change are
the connection's (:mod:`tun2proxy.tcp.connection`).
"""

from __future__ import annotations

from ..wire.tcp import ACK
from .assembler import Assembler
from .state import SYNCHRONIZED
from .tcb import N_READABLE, Tcb

__all__ = ["TcpReceiver"]


class TcpReceiver(Tcb):
    """Segment text into the receive buffer, and the acknowledgments that answer it."""

    __slots__ = ()

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
        if self.state in SYNCHRONIZED and not self.peer_fin:
            known = self.rcv_adv - self.rcv_nxt
            free = self.rcv_cap - len(self.rcv_buf)
            if (
                2 * known <= self.rcv_cap
                and free >= 2 * known
                and free - known >= self._sws_threshold()
            ):
                self.ack_now()
        return data

    def _send_ack_now(self, now: float, limited: bool) -> None:
        """Queue an immediate ACK; ``limited`` ones obey the RFC 5961 §7 rate limit."""
        if limited:
            rate = self.config.challenge_ack_rate
            refill = (now - self._challenge_ack_time) * rate
            tokens = min(rate, self._challenge_ack_tokens + refill)
            self._challenge_ack_time = now
            if tokens < 1:
                self._challenge_ack_tokens = tokens
                return
            self._challenge_ack_tokens = tokens - 1
        self._pending.append(
            self.builder.build(ACK, self.snd_max, self.rcv_nxt, self._adv_field(), self._opts(now))
        )
        self.unacked = 0
        if self.delack_deadline is not None:
            self.delack_deadline = None

    def _receive_data(
        self, seq: int, payload: bytes | bytearray | memoryview, plen: int, now: float
    ) -> bool:
        """Take ``plen`` bytes at ``seq`` (>= RCV.NXT, inside the window).

        Returns True when they made a FIN held by the reassembler the next thing to receive:
        the caller then processes that FIN.
        """
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
                return True
            if filled or (asm is not None and asm.ranges):
                # R5: a segment that fills (part of) a gap is acknowledged at once.
                self.ack_now()
                return False
            self.unacked += plen
            if self.unacked >= 2 * self.rcv_mss or self.quickack > 0:
                if self.quickack > 0:
                    self.quickack -= 1
                self.delack_deadline = -1.0
            elif self.delack_deadline is None:
                self.delack_deadline = now + self.config.delayed_ack
        else:
            # Out of order (seq > rcv_nxt): hold it, bounded, and send a duplicate ACK with
            # SACK blocks at once (R3, R4, R5).
            if self.asm is None:
                self.asm = Assembler(self.config.max_ooo_ranges)
            self.asm.add(seq, payload)
            self._send_ack_now(now, limited=False)
        return False
