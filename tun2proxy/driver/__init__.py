"""The asyncio driver: link -> NetStack -> relays -> upstreams, and back (I/O layer)."""

from __future__ import annotations

from .loop import Driver, DriverConfig
from .relay import TcpRelay

__all__ = ["Driver", "DriverConfig", "TcpRelay"]
