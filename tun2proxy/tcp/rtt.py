"""Retransmission timeout estimator (RFC 6298).

Pure: no I/O. Samples come from timestamps (RFC 7323 §4) or from one timed segment at a time
under Karn's rule; :meth:`RttEstimator.backoff` doubles the timeout after each expiry, and an
acknowledgement of new data ends the backoff (RFC 6298 §5.7).
"""

from __future__ import annotations

__all__ = ["RttEstimator"]

_CLOCK_GRANULARITY = 0.001  # G in RFC 6298, in seconds (our timestamps tick in ms)


class RttEstimator:
    """SRTT/RTTVAR/RTO per RFC 6298 §2, with a configurable floor and ceiling."""

    __slots__ = ("backoffs", "base", "initial_rto", "max_rto", "min_rto", "rttvar", "srtt")

    def __init__(self, initial_rto: float, min_rto: float, max_rto: float) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.initial_rto = min(max(initial_rto, min_rto), max_rto)
        #: The RTO computed from the estimates, before any backoff.
        self.base = self.initial_rto
        self.backoffs = 0

    @property
    def rto(self) -> float:
        """The current retransmission timeout, backoff included (at most ``max_rto``)."""
        if not self.backoffs:
            return self.base
        return min(self.base * (1 << min(self.backoffs, 16)), self.max_rto)

    def sample(self, rtt: float) -> None:
        """Feed one round-trip measurement in seconds (negative samples are ignored)."""
        if rtt < 0:
            return
        if self.srtt is None:
            # (2.2) first measurement
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            # (2.3) beta = 1/4, alpha = 1/8
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.backoffs = 0
        rto = self.srtt + max(_CLOCK_GRANULARITY, 4 * self.rttvar)
        self.base = min(max(rto, self.min_rto), self.max_rto)

    def backoff(self) -> None:
        """(5.5) double the RTO after an expiry; after several, distrust the estimates (5.7)."""
        self.backoffs += 1
        if self.backoffs >= 3 and self.srtt is not None:
            # RFC 6298 §5.7 MAY: clear SRTT/RTTVAR so the next sample starts afresh.
            self.srtt = None
            self.rttvar = 0.0

    def reset_backoff(self) -> None:
        """New data was acknowledged: the path works again, stop backing off."""
        self.backoffs = 0

    def __repr__(self) -> str:
        return f"RttEstimator(srtt={self.srtt}, rttvar={self.rttvar:.4f}, rto={self.rto:.3f})"
