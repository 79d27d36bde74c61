"""UDP sessions (endpoint-independent mapping). Pure: no I/O."""

from __future__ import annotations

from .session import UdpSession

__all__ = ["UdpSession"]
