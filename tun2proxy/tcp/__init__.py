"""One TCP connection: its state machine, buffers, timers, loss recovery and congestion control.

Pure: no I/O, no clock. See :class:`TcpConnection` for how it is driven and
``docs/architecture.md`` for the modules: ``state`` (states and transitions), ``tcb`` (the
variables), ``receiver`` and ``sender`` (the two halves), ``connection`` (the RFC 9293 §3.10
event processing), ``congestion`` (the window, behind :class:`CongestionControl`), ``sack``
(the scoreboard), ``segment_builder`` (packet bytes), ``assembler`` and ``rtt``.
"""

from __future__ import annotations

from .assembler import Assembler
from .config import TcpConfig
from .congestion import CongestionControl, NewReno
from .connection import (
    N_CLOSED,
    N_ESTABLISHED,
    N_PEER_CLOSED,
    N_READABLE,
    N_WRITABLE,
    TcpConnection,
)
from .rtt import RttEstimator
from .sack import SackScoreboard
from .segment_builder import SegmentBuilder
from .state import CLOSE_REASONS, TRANSITIONS, CloseReason, State, next_state
from .tcb import Recovery

__all__ = [
    "CLOSE_REASONS",
    "N_CLOSED",
    "N_ESTABLISHED",
    "N_PEER_CLOSED",
    "N_READABLE",
    "N_WRITABLE",
    "TRANSITIONS",
    "Assembler",
    "CloseReason",
    "CongestionControl",
    "NewReno",
    "Recovery",
    "RttEstimator",
    "SackScoreboard",
    "SegmentBuilder",
    "State",
    "TcpConfig",
    "TcpConnection",
    "next_state",
]
