"""A link without a file descriptor: the host hands packets in and takes packets out.

The shape of Apple's ``NEPacketTunnelFlow`` (``readPackets`` / ``writePackets(_:withProtocols:)``)
and of any VPN tool that owns the device itself. Inbound packets arrive through :meth:`feed`
(on the loop's thread) or :meth:`feed_threadsafe` (from any thread); outbound packets go to
``on_output(packets, families)`` with the address family of each packet taken from its IP
version nibble — never from the host's numbering, which differs between platforms.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable, Sequence

from .base import Link

__all__ = ["AF_INET", "AF_INET6", "PacketFlowLink"]

AF_INET = socket.AF_INET
#: AF_INET6 of the platform the packets are for (Darwin uses 30, Linux 10).
AF_INET6 = 30 if sys.platform == "darwin" else socket.AF_INET6

OutputCallback = Callable[[list[bytes | bytearray], list[int]], None]


class PacketFlowLink(Link):
    """Host-driven link: ``feed`` packets in, receive them through ``on_output``.

    Args:
        on_output: called on the loop's thread with each batch of outbound packets and their
            address families.
        mtu: the MTU the host's tunnel uses.
        af_inet6: the number the host uses for IPv6 (default: this platform's).
    """

    def __init__(
        self, on_output: OutputCallback, *, mtu: int = 1500, af_inet6: int = AF_INET6
    ) -> None:
        self.on_output = on_output
        self.mtu = mtu
        self.name = "packet-flow"
        self.af_inet6 = af_inet6
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deliver: Callable[[list[bytes]], None] | None = None
        self._closed = False
        self.packets_in = 0
        self.packets_out = 0
        self.bytes_in = 0
        self.bytes_out = 0

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[list[bytes]], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        """Remember the loop and where inbound packets go."""
        self._loop = loop
        self._deliver = deliver

    def feed(self, packets: Sequence[bytes], families: Sequence[int] | None = None) -> None:
        """Hand inbound packets to the stack (call on the loop's thread).

        ``families`` is accepted for symmetry with ``readPackets`` and ignored: the IP
        version nibble is authoritative.
        """
        if self._closed or self._deliver is None or not packets:
            return
        self.packets_in += len(packets)
        self.bytes_in += sum(map(len, packets))
        self._deliver(list(packets))

    def feed_threadsafe(
        self, packets: Sequence[bytes], families: Sequence[int] | None = None
    ) -> None:
        """:meth:`feed` from any thread."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the link has not been started by a driver yet")
        loop.call_soon_threadsafe(self.feed, list(packets), families)

    def write_batch(self, packets: Sequence[bytes | bytearray]) -> None:
        """Pass outbound packets and their families to ``on_output``."""
        if self._closed or not packets:
            return
        v6 = self.af_inet6
        fams = [AF_INET if p[0] >> 4 == 4 else v6 for p in packets]
        self.packets_out += len(packets)
        self.bytes_out += sum(map(len, packets))
        self.on_output(list(packets), fams)

    def close(self) -> None:
        """Stop delivering and emitting packets."""
        self._closed = True

    def stats(self) -> dict[str, int]:
        """Packets and bytes fed in and handed out."""
        return {"packets_in": self.packets_in, "packets_out": self.packets_out,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out}
