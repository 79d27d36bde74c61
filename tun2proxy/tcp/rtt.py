"""Retransmission timeout estimator (RFC 6298).

Pure: no I/O. Samples come from timestamps (RFC 7323 §4) or from one timed segment at a time
under Karn's rule; :meth:`RttEstimator.backoff` doubles the timeout after each expiry.
"""

from __future__ import annotations

__all__ = ["RttEstimator"]

_CLOCK_GRANULARITY = 0.001  # G in RFC 6298, in seconds (our timestamps tick in ms)


class RttEstimator:
    """SRTT/RTTVAR/RTO per RFC 6298 §2, with a configurable floor and ceiling."""

    __slots__ = ("backoffs", "max_rto", "min_rto", "rto", "rttvar", "srtt")

    def __init__(self, initial_rto: float, min_rto: float, max_rto: float) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.rto = min(max(initial_rto, min_rto), max_rto)
        self.backoffs = 0

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
        self.rto = min(max(rto, self.min_rto), self.max_rto)

    def backoff(self) -> None:
        """(5.5) double the RTO after an expiry, up to the ceiling."""
        self.backoffs += 1
        self.rto = min(self.rto * 2, self.max_rto)

    def __repr__(self) -> str:
        return f"RttEstimator(srtt={self.srtt}, rttvar={self.rttvar:.4f}, rto={self.rto:.3f})"
