"""The transmission control block: every variable of one connection (RFC 9293 §3.3.1).

Pure: no I/O. :class:`Tcb` holds the variables and what both halves of a connection share:
option negotiation from the peer's SYN, the buffer views and limits the host uses, the next
timer deadline, and the fields every segment we send carries (the acknowledgment, the window
we advertise, the timestamp and SACK options). It is the base of the layers that make one
connection, each in its own module, over the same object (as Linux splits ``tcp_input.c``,
``tcp_output.c`` and ``tcp_timer.c`` over one ``struct tcp_sock``; no extra object and no
extra call per segment):

* :class:`~tun2proxy.tcp.receiver.TcpReceiver`: the receiving half (text in, ``recv``, ACKs);
* :class:`~tun2proxy.tcp.sender.TcpSender`: the sending half (``send``, segments out, ACKs
  in, loss recovery, with :mod:`~tun2proxy.tcp.congestion` and :mod:`~tun2proxy.tcp.sack`);
* :class:`~tun2proxy.tcp.connection.TcpConnection` (both halves): the state machine.

Only the connection changes ``state``; it is the connection class's own slot.
"""

from __future__ import annotations

import enum

from ..wire.seq import SEQ_MASK
from ..wire.tcp import TcpSegment
from .assembler import Assembler
from .config import TcpConfig
from .congestion import CongestionControl, new_controller
from .rtt import RttEstimator
from .sack import SackScoreboard
from .segment_builder import SACK_EDGES, SACK_HEAD, TS_OPTION, TS_WORD, SegmentBuilder
from .state import CAN_SEND, CLOSED, LISTEN, CloseReason, State

__all__ = [
    "N_CLOSED",
    "N_ESTABLISHED",
    "N_PEER_CLOSED",
    "N_READABLE",
    "N_WRITABLE",
    "QUICKACK_SEGMENTS",
    "Recovery",
    "Tcb",
]

#: Notification bits collected in :attr:`Tcb.notify` for the owner to turn into events (the
#: stack emits ``TcpReadable``, ``TcpWritable``, ``TcpPeerClosed``, ``TcpClosed``).
N_READABLE = 1
N_WRITABLE = 2
N_PEER_CLOSED = 4
N_CLOSED = 8
N_ESTABLISHED = 16

#: Segments acknowledged at once after the handshake before delayed ACKs start (Linux's
#: quick-ACK mode), so the peer's slow start is not held back.
QUICKACK_SEGMENTS = 16


class Recovery(enum.IntEnum):
    """The sender's loss-recovery phase (Linux names them Open, Recovery and Loss)."""

    #: No recovery: slow start or congestion avoidance.
    OPEN = 0
    #: Fast recovery after duplicate ACKs or SACKed data (RFC 6675, RFC 6582), until the
    #: recovery point is acknowledged.
    FAST = 1
    #: After a retransmission timeout (or a smaller path MTU): everything below the
    #: recovery point that is not SACKed is resent under slow start (go-back-N).
    RTO = 2


class Tcb:
    """The variables of one connection; sequence numbers are unwrapped integers.

    Attributes (the RFC 9293 names where there is one):
        snd_una, snd_max: oldest unacknowledged and next new sequence number we send.
        snd_wnd, snd_wl1, snd_wl2: the peer's window and the segment that last set it.
        rcv_nxt, rcv_adv: next sequence number expected, and the right edge we advertised.
        state: a :class:`~tun2proxy.tcp.state.State` (the connection's own slot).
        notify: bit set of ``N_*`` notifications not yet collected by the owner.
        close_reason: why the connection closed (a :data:`~tun2proxy.tcp.state.CloseReason`),
            once it has.
        cc: the congestion controller (:mod:`tun2proxy.tcp.congestion`).
        scoreboard: what the peer SACKed (:class:`~tun2proxy.tcp.sack.SackScoreboard`).
        builder: makes our packets (:class:`~tun2proxy.tcp.segment_builder.SegmentBuilder`).
    """

    __slots__ = (
        "_challenge_ack_time",
        "_challenge_ack_tokens",
        "_force_rtx",
        "_pending",
        "_rtt_seq",
        "_rtt_time",
        "_rtx_ts",
        "asm",
        "builder",
        "cc",
        "close_deadline",
        "close_reason",
        "config",
        "delack_deadline",
        "dupacks",
        "fin_queued",
        "fin_sent",
        "idle_deadline",
        "irs",
        "iss",
        "keepalive_deadline",
        "keepalive_probes",
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
        "recovery",
        "remote_addr",
        "remote_port",
        "rexmit_high",
        "rtt",
        "rtx_count",
        "rtx_deadline",
        "sack_ok",
        "sbuf",
        "sbuf_seq",
        "scoreboard",
        "segments_retransmitted",
        "snd_cap",
        "snd_cap_max",
        "snd_max",
        "snd_mss",
        "snd_una",
        "snd_wl1",
        "snd_wl2",
        "snd_wnd",
        "snd_wscale",
        "syn_ack_due",
        "ts_offset",
        "ts_ok",
        "ts_recent",
        "unacked",
        "v4",
        "want_writable",
        "wscale_ok",
    )

    state: State  # a slot of TcpConnection: the state machine is the one that changes it

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
        """Every variable at its value before the handshake."""
        c = config
        self.config = c
        # The connection's identity (the TCB's socket pair) and how its packets are built.
        self.local_addr = local_addr
        self.local_port = local_port
        self.remote_addr = remote_addr
        self.remote_port = remote_port
        self.v4 = len(local_addr) == 4
        self.offload = checksum_offload
        self.builder = SegmentBuilder(
            local_addr, local_port, remote_addr, remote_port, checksum_offload
        )
        self.mss_limit = mss_limit
        self._pending: list[bytearray] = []  # control segments queued for the next dispatch
        # Send sequence space (RFC 9293 §3.3.1) and the send buffer: sbuf[0] is sbuf_seq.
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
        #: How far snd_cap may grow while the buffer limits the flow (see TcpConfig).
        self.snd_cap_max = max(c.send_buffer_max, c.send_buffer)
        self.sbuf = bytearray()
        self.sbuf_seq = self.iss + 1
        self.fin_queued = False
        self.fin_sent = False
        # Congestion control and loss recovery (RFC 5681, RFC 6582, RFC 6675): ``recover`` is
        # the recovery point, ``rexmit_high`` the highest byte resent (HighRxt), and every
        # unSACKed byte below ``lost_upto`` is considered lost.
        self.cc: CongestionControl = new_controller(c)
        self.scoreboard = SackScoreboard()
        self.dupacks = 0
        self.recovery = Recovery.OPEN
        self.recover = self.iss
        self.rexmit_high = self.iss
        self.lost_upto = self.iss
        self._force_rtx = False  # retransmit the first lost range whatever cwnd says
        # Round-trip time (RFC 6298): one timed segment under Karn's rule without timestamps.
        self.rtt = RttEstimator(c.initial_rto, c.min_rto, c.max_rto)
        self._rtt_seq: int | None = None
        self._rtt_time = 0.0
        self._rtx_ts = (int(now * 1000) + ts_offset) & SEQ_MASK  # TSval at our last rexmit
        self.rtx_count = 0
        self.segments_retransmitted = 0
        # Receive sequence space, the receive buffer and the reassembler for held data.
        self.irs = 0
        self.rcv_nxt = 0
        self.rcv_adv = 0
        self.rcv_wscale = 0
        self.rcv_buf = bytearray()
        self.rcv_cap = c.recv_buffer
        self.asm: Assembler | None = None
        self.peer_fin = False
        self.rcv_mss = 536
        # Acknowledgment policy: bytes not yet acknowledged and the quick-ACK budget.
        self.unacked = 0
        self.quickack = QUICKACK_SEGMENTS
        self.syn_ack_due = False
        # Options negotiated in the handshake (RFC 7323, RFC 2018).
        self.sack_ok = False
        self.ts_ok = False
        self.wscale_ok = False
        self.ts_recent = 0
        self.ts_offset = ts_offset & SEQ_MASK
        self.last_ack_sent = 0
        # Timers: a deadline of None is off; a delayed-ACK deadline of -1 means "now".
        self.last_activity = now
        self.rtx_deadline: float | None = None
        self.persist_deadline: float | None = None
        self.persist_backoff = 0
        self.delack_deadline: float | None = None
        self.idle_deadline: float | None = now + c.idle_timeout
        self.close_deadline: float | None = None
        self.keepalive_deadline: float | None = (
            now + c.keepalive_idle if c.keepalive_idle is not None else None
        )
        self.keepalive_probes = 0
        # RFC 5961 §7: a token bucket limits the challenge ACKs (and other ACKs to junk).
        self._challenge_ack_tokens = float(c.challenge_ack_rate)
        self._challenge_ack_time = now
        # What the application side learns.
        self.notify = 0
        self.rd_armed = True
        self.want_writable = False
        self.close_reason: CloseReason | None = None

    # ------------------------------------------------------------------ handshake and buffers

    def _take_syn(self, syn: TcpSegment) -> None:
        """Take the peer's ISN, window and options from its SYN (or, active, its SYN-ACK).

        Negotiation per RFC 7323 §1.3, RFC 2018 §2 and RFC 6691. Both opens use it: our SYN
        offers exactly what ``config`` enables, so a SYN-ACK is judged like a SYN.
        """
        c = self.config
        self.irs = syn.seq
        self.rcv_nxt = syn.seq + 1
        # O2: MSS 0 is ignored; an absent MSS means the RFC 9293 default (MUST-15).
        peer_mss = syn.mss if syn.mss else (536 if self.v4 else 1220)
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
        self.cc.on_start(self.snd_mss, self.sack_ok)

    def limit_buffers(self, fraction: float) -> None:
        """Scale both buffer caps to ``fraction`` of their configured size (>= 4 KiB).

        Used under memory pressure. What was already advertised stays valid (the right edge
        never moves back); only future window growth and future ``send`` room shrink. Below
        1.0 the send buffer does not grow (``send_buffer_max``) until a call with 1.0.
        """
        c = self.config
        base_rcv = c.recv_buffer if self.wscale_ok or self.state is LISTEN else min(
            c.recv_buffer, 0xFFFF
        )
        self.rcv_cap = max(min(4096, base_rcv), int(base_rcv * fraction))
        self.snd_cap = max(4096, int(c.send_buffer * fraction))
        self.snd_cap_max = (
            max(c.send_buffer_max, c.send_buffer) if fraction >= 1.0 else self.snd_cap
        )

    # ------------------------------------------------------------------ views

    @property
    def data_end(self) -> int:
        """Sequence number one past the last byte queued by ``send``."""
        return self.sbuf_seq + len(self.sbuf)

    @property
    def readable(self) -> int:
        """Bytes waiting to be read with ``recv``."""
        return len(self.rcv_buf)

    @property
    def send_capacity(self) -> int:
        """Bytes ``send`` would accept now."""
        if self.fin_queued or self.state not in CAN_SEND:
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

    @property
    def cwnd(self) -> int:
        """The congestion window in bytes (the controller's)."""
        return self.cc.cwnd

    @property
    def sacked(self) -> list[list[int]]:
        """The SACKed ranges of the scoreboard, lowest first."""
        return self.scoreboard.ranges

    @property
    def sacked_bytes(self) -> int:
        """Bytes SACKed beyond SND.UNA."""
        return self.scoreboard.nbytes

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.state.value} snd_una={self.snd_una & SEQ_MASK} "
            f"snd_max={self.snd_max & SEQ_MASK} rcv_nxt={self.rcv_nxt & SEQ_MASK} "
            f"cwnd={self.cc.cwnd} snd_wnd={self.snd_wnd}>"
        )

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

    def ack_now(self) -> None:
        """Owe the peer an ACK at the next dispatch (e.g. a window update)."""
        self.unacked = max(self.unacked, 1)
        self.delack_deadline = -1.0

    # ------------------------------------------------------------------ what every segment carries

    def _tsval(self, now: float) -> int:
        return (int(now * 1000) + self.ts_offset) & SEQ_MASK

    def _adv_field(self) -> int:
        """The window field to send now; moves RCV.ADV forward, never back (R6)."""
        free = self.rcv_cap - len(self.rcv_buf)
        rcv_nxt = self.rcv_nxt
        right = rcv_nxt + (free if free > 0 else 0)
        adv = self.rcv_adv
        half = self.rcv_cap >> 1  # receiver SWS avoidance threshold (_sws_threshold, inline)
        sws = half if half < self.rcv_mss else self.rcv_mss
        if right < adv + sws and adv >= rcv_nxt:
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
        """Receiver SWS avoidance: the window opens in steps of min(buffer / 2, MSS)."""
        half = self.rcv_cap >> 1
        return half if half < self.rcv_mss else self.rcv_mss

    def _ts_opts(self, now: float) -> bytes:
        """The timestamp option alone (probes), or nothing when timestamps are off."""
        if self.ts_ok:
            return TS_OPTION.pack(TS_WORD, self._tsval(now), self.ts_recent)
        return b""

    def _opts(self, now: float) -> bytes:
        """Options for a non-SYN segment: timestamps, then SACK blocks for held data."""
        o = TS_OPTION.pack(TS_WORD, self._tsval(now), self.ts_recent) if self.ts_ok else b""
        asm = self.asm
        if self.sack_ok and asm is not None and asm.ranges:
            blocks = asm.sack_blocks(3 if self.ts_ok else 4)
            o += SACK_HEAD.pack(1, 1, 5, 2 + 8 * len(blocks))
            for s, e in blocks:
                o += SACK_EDGES.pack(s & SEQ_MASK, e & SEQ_MASK)
        return o
