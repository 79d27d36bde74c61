"""The ``reject://`` upstream: refuse every flow (the app sees "connection refused")."""

from __future__ import annotations

import asyncio
import urllib.parse

from ..errors import UpstreamError
from ..proxy.address import Address
from .base import DatagramReceiver, FlowInfo, UdpChannel, Upstream

__all__ = ["RejectUpstream", "from_url"]


class RejectUpstream(Upstream):
    """Refuse every flow with the given reason (``refused`` -> RST by default)."""

    name = "reject"

    def __init__(self, reason: str = "refused") -> None:
        self.reason = reason

    async def open_tcp(
        self, dst: Address, protocol: asyncio.Protocol, flow: FlowInfo
    ) -> asyncio.Transport:
        """Always raise :class:`UpstreamError`."""
        raise UpstreamError(f"rejected by policy: {dst}", self.reason)

    async def open_udp(self, flow: FlowInfo, receiver: DatagramReceiver) -> UdpChannel:
        """Always raise :class:`UpstreamError`."""
        raise UpstreamError("rejected by policy", self.reason)


def from_url(u: urllib.parse.SplitResult, raw: str) -> RejectUpstream:
    """Build the upstream of ``reject://`` (anything after the scheme is ignored)."""
    return RejectUpstream()
