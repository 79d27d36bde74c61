"""Congestion control behind a small interface, as smoltcp keeps ``socket/tcp/congestion/``.

Pure: no I/O. The split of work:

* The connection (:mod:`tun2proxy.tcp.sender`) runs loss detection and recovery: it counts
  duplicate ACKs, keeps the SACK scoreboard (:mod:`tun2proxy.tcp.sack`), decides when fast
  recovery starts and ends, and what to resend. It tells the controller about each event.
* The controller owns the congestion window ``cwnd`` (and ``ssthresh``): how it starts, grows
  on ACKs and shrinks on loss. The sender keeps the bytes in flight ("pipe", RFC 6675 §4)
  below ``cwnd``.

The controller is called only on ACK, loss and timeout events, never per segment sent, and
its window is a plain attribute the sender reads. :class:`NewReno` is the one implementation;
another algorithm (CUBIC, BBR) is a class with the same methods, chosen in
:func:`new_controller`, without a change to the state machine.
"""

from __future__ import annotations

from typing import Protocol

from ..config import TcpConfig
from .newreno import MAX_CWND, NewReno

__all__ = ["MAX_CWND", "CongestionControl", "NewReno", "new_controller"]


class CongestionControl(Protocol):
    """What the connection needs of a congestion controller. Sizes are in bytes.

    Attributes:
        cwnd: the congestion window: the sender keeps the bytes in flight below it.
        ssthresh: the slow-start threshold (RFC 5681 §3.1).
    """

    cwnd: int
    ssthresh: int

    def on_start(self, mss: int, sack: bool) -> None:
        """The handshake fixed the send MSS and whether SACK is used: set the initial window."""

    def set_mss(self, mss: int) -> None:
        """The send MSS dropped (ICMP "packet too big"): keep the window usable at the new size."""

    def on_ack(self, acked: int) -> None:
        """``acked`` new bytes were acknowledged outside fast recovery (slow start, avoidance)."""

    def on_dup_ack(self) -> None:
        """A duplicate ACK arrived during fast recovery."""

    def on_recovery_start(self, flight: int) -> None:
        """Fast retransmit: loss was detected by duplicate ACKs or SACK with ``flight`` bytes
        believed in the network; reduce the window (RFC 5681 §3.2, RFC 6675 §5)."""

    def on_partial_ack(self, acked: int) -> None:
        """During fast recovery, an ACK of ``acked`` new bytes below the recovery point."""

    def on_recovery_end(self) -> None:
        """Fast recovery ended: everything outstanding at its start is acknowledged."""

    def on_rto(self, flight: int, first: bool) -> None:
        """The retransmission timer expired with ``flight`` bytes outstanding; ``first`` is the
        first expiry of a loss episode (a later one must not lower ``ssthresh`` again)."""


def new_controller(config: TcpConfig) -> CongestionControl:
    """The congestion controller for one new connection."""
    return NewReno(config.initial_window)
