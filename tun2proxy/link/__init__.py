"""Links: where packets come from and go to — TUN devices, fds, namespaces (I/O layer)."""

from __future__ import annotations

from .base import Link, LinkClosed
from .fd import FRAMINGS, FdLink
from .packet_flow import PacketFlowLink

__all__ = ["FRAMINGS", "FdLink", "Link", "LinkClosed", "PacketFlowLink"]
