"""UdpRelay: one UDP session between the NetStack and its upstream channel.

The session is keyed by the application's endpoint (endpoint-independent mapping); the
channel reaches every destination that endpoint talks to. While the channel opens, the
session's first datagrams wait in a small bounded queue; after that each datagram is passed
straight through, and each reply becomes ``NetStack.udp_send``.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from ..proxy.address import Address
from ..upstream.base import UdpChannel

__all__ = ["MAX_PENDING_BYTES", "MAX_PENDING_DATAGRAMS", "UdpHost", "UdpRelay"]

MAX_PENDING_DATAGRAMS = 32
MAX_PENDING_BYTES = 256 * 1024


class UdpHost(Protocol):
    """What a :class:`UdpRelay` needs of the driver that owns it: where replies go."""

    def udp_reply(self, relay: UdpRelay, payload: bytes, src: Address) -> None:
        """A datagram from upstream for the app."""
        ...

    def udp_lost(self, relay: UdpRelay, exc: BaseException | None) -> None:
        """The relay's channel died: end the session."""
        ...


class UdpRelay:
    """The driver's side of one UDP session (it is the channel's DatagramReceiver)."""

    __slots__ = (
        "channel",
        "closed",
        "driver",
        "dropped",
        "flow_id",
        "pending",
        "pending_bytes",
        "task",
        "v6",
    )

    def __init__(self, driver: UdpHost, flow_id: int, v6: bool) -> None:
        self.driver = driver
        self.flow_id = flow_id
        self.v6 = v6
        self.channel: UdpChannel | None = None
        self.pending: list[tuple[bytes, Address]] = []
        self.pending_bytes = 0
        self.dropped = 0
        self.closed = False
        self.task: asyncio.Task[None] | None = None

    def send(self, payload: bytes, dst: Address) -> None:
        """Towards the upstream: now, or queued (bounded) while the channel opens."""
        ch = self.channel
        if ch is not None:
            ch.send(payload, dst)
            return
        if (
            len(self.pending) >= MAX_PENDING_DATAGRAMS
            or self.pending_bytes + len(payload) > MAX_PENDING_BYTES
        ):
            self.dropped += 1
            return
        self.pending.append((payload, dst))
        self.pending_bytes += len(payload)

    def opened(self, channel: UdpChannel) -> None:
        """The channel is up: flush what waited."""
        self.channel = channel
        pending, self.pending = self.pending, []
        self.pending_bytes = 0
        for payload, dst in pending:
            channel.send(payload, dst)

    def close(self) -> None:
        """The session ended: release the channel."""
        self.closed = True
        self.pending = []
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.channel is not None:
            self.channel.close()

    # DatagramReceiver
    def datagram_received(self, payload: bytes, src: Address) -> None:
        """A reply from the upstream: back to the app."""
        if not self.closed:
            self.driver.udp_reply(self, payload, src)

    def channel_lost(self, exc: BaseException | None) -> None:
        """The channel died (e.g. its SOCKS5 control connection): end the session."""
        if not self.closed:
            self.driver.udp_lost(self, exc)
