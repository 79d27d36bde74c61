"""SYN admission bookkeeping: pending requests, half-open handshakes, the host's queue, and
the SYN-flood (pressure) mode of a :class:`~tun2proxy.stack.NetStack`.

Pure: no I/O, no clock (time comes in as ``now``).

Four kinds of flow are counted here (RFC 4987's defences, kept stateful but bounded):

* **pending**: a SYN announced to the host (``TcpConnectRequest``) that it has not answered
  yet; no SYN-ACK went out (decide at the SYN). Bounded by ``max_pending`` (globally, the
  handshakes below included) and ``max_pending_per_source``.
* **held**: a pending flow the host accepted — it holds an upstream connection — whose
  SYN-ACK is not answered yet. Counted against ``max_pending`` and in the pressure measure:
  spoofed SYNs through a fast upstream end up here.
* **half-open**: a handshake the stack completes on its own (handshake first, under pressure
  or with ``accept_policy="immediate"``) before the host hears of the flow; bounded by
  ``max_half_open``, oldest evicted silently.
* **queued**: a completed handshake-first flow announced to the host
  (``TcpConnectRequest(established=True)``) and not yet accepted: the app sees an open
  connection, so no more are answered than the host can queue (``max_queued``, and
  ``max_queued_per_destination`` so one destination cannot take the whole queue).

Pressure: when pending plus held (plus pending requests the host handed back to be
completed handshake-first, until they are) reach ``syn_flood_threshold``, the stack answers
new SYNs itself (handshake first) and handshakes nobody answers expire after
``half_open_timeout`` instead of after every SYN-ACK retransmission. The mode ends when that
load is below half the threshold and no handshake went unanswered for
``half_open_timeout``.
"""

from __future__ import annotations

from collections import OrderedDict

from .config import StackConfig
from .flow import StackConnection

__all__ = ["Admission"]


class Admission:
    """The counts and tables behind a stack's decisions at the SYN (see the module doc)."""

    __slots__ = (
        "awaiting",
        "awaiting_by_dst",
        "cfg",
        "converted",
        "flood",
        "half_open",
        "held",
        "pending",
        "pending_by_src",
        "unanswered_at",
    )

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.pending = 0
        self.pending_by_src: dict[bytes, int] = {}
        #: Flows the host accepted whose SYN-ACK is unanswered: id -> (connection, since).
        self.held: OrderedDict[int, tuple[StackConnection, float]] = OrderedDict()
        #: Handshakes completing before the host hears of them: id -> (connection, since),
        #: oldest first.
        self.half_open: OrderedDict[int, tuple[StackConnection, float]] = OrderedDict()
        #: The half-open ones that were pending requests the host handed back
        #: (``tcp_handshake_first``): still load, not yet validated.
        self.converted: set[int] = set()
        #: Established flows announced to the host and not yet accepted: id -> destination.
        self.awaiting: dict[int, bytes] = {}
        self.awaiting_by_dst: dict[bytes, int] = {}
        self.flood = False
        self.unanswered_at = float("-inf")

    # ------------------------------------------------------------------ counts

    def add_pending(self, src: bytes) -> None:
        """A SYN became a request to the host."""
        self.pending += 1
        self.pending_by_src[src] = self.pending_by_src.get(src, 0) + 1

    def remove_pending(self, src: bytes) -> None:
        """A request was answered (or withdrawn)."""
        self.pending -= 1
        left = self.pending_by_src.get(src, 1) - 1
        if left > 0:
            self.pending_by_src[src] = left
        else:
            self.pending_by_src.pop(src, None)

    def add_half_open(
        self, fid: int, conn: StackConnection, now: float, converted: bool = False
    ) -> None:
        """A handshake the stack completes before the host hears of the flow."""
        self.half_open[fid] = (conn, now)
        if converted:
            self.converted.add(fid)

    def pop_half_open(self, fid: int) -> None:
        """A half-open handshake ended (completed, or closed)."""
        del self.half_open[fid]
        self.converted.discard(fid)

    def add_awaiting(self, fid: int, dst: bytes) -> None:
        """A completed handshake-first flow was announced to the host."""
        self.awaiting[fid] = dst
        self.awaiting_by_dst[dst] = self.awaiting_by_dst.get(dst, 0) + 1

    def discard_awaiting(self, fid: int) -> bool:
        """The host answered a queued flow (or it closed); False if it was not queued."""
        dst = self.awaiting.pop(fid, None)
        if dst is None:
            return False
        left = self.awaiting_by_dst.get(dst, 1) - 1
        if left > 0:
            self.awaiting_by_dst[dst] = left
        else:
            self.awaiting_by_dst.pop(dst, None)
        return True

    # ------------------------------------------------------------------ decisions

    @property
    def under_pressure(self) -> bool:
        """Whether unanswered handshakes expire early (flood mode, or a full-ish half-open
        table under ``accept_policy="immediate"``)."""
        return self.flood or len(self.half_open) >= self.cfg.syn_flood_threshold

    def update(self, now: float) -> bool:
        """Re-evaluate the flood mode; True when it has just switched on."""
        cfg = self.cfg
        load = self.pending + len(self.held) + len(self.converted)
        if self.flood:
            if (
                load < cfg.syn_flood_threshold // 2
                and now - self.unanswered_at >= cfg.half_open_timeout
            ):
                self.flood = False
            return False
        if load >= cfg.syn_flood_threshold:
            self.flood = True
            return True
        return False

    def pending_refusal(self, src: bytes) -> str | None:
        """Why a SYN cannot become a request now (a drop reason), or None."""
        cfg = self.cfg
        if self.pending + len(self.held) >= cfg.max_pending:
            return "tcp-pending-limit"
        if self.pending_by_src.get(src, 0) >= cfg.max_pending_per_source:
            return "tcp-pending-per-source-limit"
        return None

    def queue_refusal(self, dst: bytes) -> str | None:
        """Why a SYN must not be answered handshake-first now (the host's queue is full for
        it: better no handshake than an open connection reset for want of room), or None."""
        cfg = self.cfg
        if len(self.awaiting) >= cfg.max_queued:
            return "tcp-queue-limit"
        if self.awaiting_by_dst.get(dst, 0) >= cfg.max_queued_per_destination:
            return "tcp-queue-per-destination-limit"
        return None

    # ------------------------------------------------------------------ expiry

    def next_expiry(self) -> float | None:
        """When the oldest unanswered handshake expires (only under pressure)."""
        if not self.under_pressure:
            return None
        at: float | None = None
        for table in (self.half_open, self.held):
            if table:
                t = next(iter(table.values()))[1] + self.cfg.half_open_timeout
                if at is None or t < at:
                    at = t
        return at

    def expire(self, now: float) -> tuple[list[StackConnection], list[StackConnection]]:
        """Take out the half-open and the held handshakes older than ``half_open_timeout``
        (only under pressure); the caller ends them."""
        if not self.under_pressure:
            return [], []
        limit = now - self.cfg.half_open_timeout
        out: list[list[StackConnection]] = [[], []]
        for i, table in enumerate((self.half_open, self.held)):
            while table:
                fid, (conn, since) = next(iter(table.items()))
                if since > limit:
                    break
                del table[fid]
                self.converted.discard(fid)
                out[i].append(conn)
        if out[0] or out[1]:
            self.unanswered_at = now
        return out[0], out[1]

    def evict_oldest(self, now: float) -> StackConnection | None:
        """Take out the oldest half-open handshake (to make room), or None if there is none."""
        if not self.half_open:
            return None
        fid, (conn, _since) = self.half_open.popitem(last=False)
        self.converted.discard(fid)
        self.unanswered_at = now
        return conn
