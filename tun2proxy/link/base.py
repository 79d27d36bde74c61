"""The Link contract: where packets come from and where they go (I/O layer).

A link reads IP packets in batches and hands them to a callback, and writes batches of
packets. The driver owns the event loop; a link only registers itself with it.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Sequence

__all__ = ["Link", "LinkClosed"]


class LinkClosed(Exception):
    """The link can no longer carry packets (device removed, fd closed)."""


class Link(abc.ABC):
    """A packet interface: TUN device, inherited fd, or a host's packet flow.

    Attributes:
        mtu: the largest IP packet the link carries.
        checksum_ok: True when inbound packets were checksum-verified by the device, so the
            stack may skip verification.
        checksum_offload: True when the link completes outbound TCP/UDP checksums itself.
        gso_max_size: the largest TCP payload of one outbound :class:`~tun2proxy.wire.GsoPacket`
            the link accepts and segments (0: none; GSO needs ``checksum_offload``).
        name: a label for logs.
    """

    mtu: int = 1500
    checksum_ok: bool = False
    checksum_offload: bool = False
    gso_max_size: int = 0
    name: str = "link"

    @abc.abstractmethod
    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[list[bytes]], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        """Begin delivering batches of inbound packets to ``deliver`` on ``loop``.

        ``on_error`` is called once if the link fails for good (then it stops reading): the
        device is gone, not merely down (a link waits for a device that is down to come back).
        """

    @abc.abstractmethod
    def write_batch(self, packets: Sequence[bytes | bytearray]) -> None:
        """Send packets now; packets that cannot be written are dropped and counted."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop reading and release the link's resources (idempotent)."""

    def stats(self) -> dict[str, int]:
        """Counters of the link (packets, bytes, drops)."""
        return {}
