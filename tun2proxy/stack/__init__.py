"""NetStack: demultiplexing, the flow table, one timer heap, events. Pure: no I/O."""

from __future__ import annotations

from .config import StackConfig
from .events import (
    Endpoint,
    Event,
    TcpClosed,
    TcpConnectRequest,
    TcpPeerClosed,
    TcpReadable,
    TcpWritable,
    UdpDatagram,
    UdpSessionClosed,
)
from .netstack import REJECT_REASONS, NetStack
from .stats import Stats

__all__ = [
    "REJECT_REASONS",
    "Endpoint",
    "Event",
    "NetStack",
    "StackConfig",
    "Stats",
    "TcpClosed",
    "TcpConnectRequest",
    "TcpPeerClosed",
    "TcpReadable",
    "TcpWritable",
    "UdpDatagram",
    "UdpSessionClosed",
]
