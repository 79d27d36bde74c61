"""One TCP connection's state machine, buffers, timers and congestion control.

Pure: no I/O, no clock. See :class:`TcpConnection` for how it is driven.
"""

from __future__ import annotations

from .assembler import Assembler
from .config import TcpConfig
from .connection import (
    N_CLOSED,
    N_ESTABLISHED,
    N_PEER_CLOSED,
    N_READABLE,
    N_WRITABLE,
    TcpConnection,
)
from .rtt import RttEstimator
from .state import TRANSITIONS, State, next_state

__all__ = [
    "N_CLOSED",
    "N_ESTABLISHED",
    "N_PEER_CLOSED",
    "N_READABLE",
    "N_WRITABLE",
    "TRANSITIONS",
    "Assembler",
    "RttEstimator",
    "State",
    "TcpConfig",
    "TcpConnection",
    "next_state",
]
