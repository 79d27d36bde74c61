"""NewReno congestion control with a 10-segment initial window and SACK-based recovery.

Pure: no I/O. Slow start with appropriate byte counting (RFC 3465, L = 2) from an initial
window of ``initial_window`` segments (RFC 6928: 10), congestion avoidance of one segment per
window (RFC 5681 §3.1), and the window rules of fast recovery: with SACK, ``cwnd = ssthresh``
and the sender is governed by pipe (RFC 6675 §5); without SACK, the window is inflated by the
duplicate ACKs and deflated by partial ACKs (RFC 6582 §3.2). A retransmission timeout
collapses the window to one segment (RFC 5681 eq. 4).
"""

from __future__ import annotations

__all__ = ["DUP_THRESH", "MAX_CWND", "NewReno"]

#: The window never grows beyond this (1 GiB, the largest receive window TCP can advertise).
MAX_CWND = 1 << 30
#: Duplicate ACKs that start fast retransmit (RFC 5681 §3.2 DupThresh).
DUP_THRESH = 3


class NewReno:
    """RFC 5681 / RFC 6582 / RFC 6675 window arithmetic for one connection.

    Attributes:
        cwnd, ssthresh: the congestion window and slow-start threshold, in bytes.
        mss: the sender's maximum segment size (the unit of growth).
        sack: SACK is in use (fast recovery follows RFC 6675, not RFC 6582).
    """

    __slots__ = ("_acc", "cwnd", "initial_window", "mss", "sack", "ssthresh")

    def __init__(self, initial_window: int, mss: int = 536) -> None:
        self.initial_window = initial_window
        self.mss = mss
        self.sack = False
        self.cwnd = initial_window * mss
        self.ssthresh = MAX_CWND
        self._acc = 0  # bytes acknowledged towards the next congestion-avoidance step

    def __repr__(self) -> str:
        return f"NewReno(cwnd={self.cwnd}, ssthresh={self.ssthresh}, mss={self.mss})"

    def on_start(self, mss: int, sack: bool) -> None:
        """RFC 6928: the initial window is ``initial_window`` segments of the negotiated MSS."""
        self.mss = mss
        self.sack = sack
        self.cwnd = self.initial_window * mss

    def set_mss(self, mss: int) -> None:
        """A smaller MSS: the window stays as it is, but at least two segments (RFC 1191 §6.5)."""
        self.mss = mss
        if self.cwnd < 2 * mss:
            self.cwnd = 2 * mss

    def on_ack(self, acked: int) -> None:
        """Slow start below ``ssthresh`` (RFC 3465 ABC, L = 2), else one MSS per window."""
        mss = self.mss
        if self.cwnd < self.ssthresh:
            self.cwnd += min(acked, 2 * mss)
        else:
            self._acc += acked
            if self._acc >= self.cwnd:
                self._acc -= self.cwnd
                self.cwnd += mss
        if self.cwnd > MAX_CWND:
            self.cwnd = MAX_CWND

    def on_dup_ack(self) -> None:
        """RFC 6582 §3.2 step 4: without SACK, each duplicate ACK inflates the window."""
        if not self.sack:
            self.cwnd += self.mss

    def on_recovery_start(self, flight: int) -> None:
        """``ssthresh`` = half the flight (at least two segments), RFC 5681 eq. 4.

        With SACK the window is ``ssthresh`` and pipe does the rest (RFC 6675 §5 step 4.2);
        without, it is inflated by the three segments the duplicate ACKs say have left the
        network (RFC 6582 §3.2 step 2).
        """
        mss = self.mss
        self.ssthresh = max(flight // 2, 2 * mss)
        self.cwnd = self.ssthresh if self.sack else self.ssthresh + DUP_THRESH * mss
        self._acc = 0

    def on_partial_ack(self, acked: int) -> None:
        """RFC 6582 §3.2 step 5: without SACK, deflate by what was acknowledged, plus one MSS."""
        if not self.sack:
            mss = self.mss
            self.cwnd = max(self.cwnd - acked + mss, mss)

    def on_recovery_end(self) -> None:
        """RFC 6582 §3.2 step 6 / RFC 6675 §5: leave recovery with ``cwnd = ssthresh``."""
        self.cwnd = max(self.ssthresh, self.mss)

    def on_rto(self, flight: int, first: bool) -> None:
        """RFC 5681 eq. 4 on the first timeout of an episode, then a one-segment window."""
        mss = self.mss
        if first:
            self.ssthresh = max(flight // 2, 2 * mss)
        self.cwnd = mss
        self._acc = 0
