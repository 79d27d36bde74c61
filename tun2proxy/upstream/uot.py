"""UDP-over-TCP channels: one UDP session carried as sing-box's ``uot`` stream (I/O layer).

A :class:`UotUdpChannel` is the :class:`~tun2proxy.upstream.base.UdpChannel` of a proxy
upstream with ``?uot=2`` (or ``?uot=1``): instead of a UDP association it opens ONE TCP
stream through the upstream's own :meth:`~tun2proxy.upstream.base.Upstream.open_tcp`
(SOCKS5 CONNECT, Shadowsocks) to the magic destination (``sp.v2.udp-over-tcp.arpa:0``),
writes the request header (version 2: non-connect mode, the session's first destination)
together with the first datagram, and then frames every datagram with its destination
(:mod:`tun2proxy.proxy.uot`). Non-connect mode keeps the session endpoint-independent: one
stream reaches every destination the application endpoint talks to, and replies name their
source.

Datagrams over :data:`MAX_DATAGRAM` (16,384 bytes) payload are dropped and counted, not sent:
sing-box (1.14, measured) resets the whole stream at a bigger frame — every destination of
the session would lose it — and truncates bigger replies to that size, because it carries
UoT packets in 16 KiB buffers.

Bounded: at most :data:`MAX_BUFFERED` bytes wait in the stream's write buffer; above it
(the proxy or the path is slower than the application) datagrams are dropped and counted,
as a congested UDP path would. Replies are parsed as they arrive, at most one frame is held.
The stream's end, a reset or a malformed frame ends the channel (the receiver hears of it
once); the next datagram from the application opens a new one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final, cast

from ..errors import MalformedPacket, UpstreamError
from ..proxy.address import Address
from ..proxy.uot import UotDecoder, encode_packet, encode_request, magic_address
from .base import DatagramReceiver, FlowInfo, UdpChannel, Upstream

__all__ = ["MAX_BUFFERED", "MAX_DATAGRAM", "UotUdpChannel", "open_uot_udp"]

log = logging.getLogger(__name__)

#: Bytes a channel lets wait in its TCP stream's write buffer before it drops datagrams.
MAX_BUFFERED: Final = 256 * 1024
#: The largest datagram sent over UoT (sing-box's packet buffer; see the module doc).
MAX_DATAGRAM: Final = 16384


class UotUdpChannel(UdpChannel, asyncio.Protocol):
    """One UDP session over one UoT stream; also the stream's :class:`asyncio.Protocol`."""

    def __init__(
        self, receiver: DatagramReceiver, first_dst: Address, version: int,
        *, max_datagram: int = MAX_DATAGRAM,
    ) -> None:
        self.receiver = receiver
        self.version = version
        #: Datagrams with more payload than this are dropped (counted in dropped_too_big).
        self.max_datagram = max_datagram
        self.transport: asyncio.Transport | None = None
        #: Bytes that go in front of the first datagram (the version 2 request).
        self._header = encode_request(first_dst) if version == 2 else b""
        self._decoder = UotDecoder()
        self._paused = False
        self._closed = False
        #: Datagrams dropped because the stream's write buffer was full.
        self.dropped_congested = 0
        #: Datagrams dropped because they are over ``max_datagram`` or do not fit a frame.
        self.dropped_too_big = 0
        #: Datagrams sent / received.
        self.sent = 0
        self.received = 0

    @property
    def closed(self) -> bool:
        """True once closed or lost."""
        return self._closed

    # -- asyncio.Protocol (the TCP stream) -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The stream carries UoT bytes from now on."""
        t = cast(asyncio.Transport, transport)  # uvloop's transports are no subclasses
        self.transport = t
        t.set_write_buffer_limits(high=MAX_BUFFERED, low=MAX_BUFFERED // 4)
        if self._closed:
            t.close()

    def data_received(self, data: bytes) -> None:
        """Frames from the server: each whole datagram goes to the receiver."""
        if self._closed:
            return
        dec = self._decoder
        for src, payload in dec.feed(data):
            ip = src.ip
            if ip is not None and ip.version == 6 and ip.ipv4_mapped is not None:
                src = Address(str(ip.ipv4_mapped), src.port)
            self.received += 1
            self.receiver.datagram_received(payload, src)
            if self._closed:
                return
        if dec.failed is not None:
            log.warning("UoT stream broke its framing (%s): the UDP session ends", dec.failed)
            self.lost(MalformedPacket(dec.failed))

    def eof_received(self) -> bool:
        """The server ended the stream: close ours too (``connection_lost`` follows)."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """The stream ended: so does the channel."""
        self.lost(exc or ConnectionError("UoT stream closed"))

    def pause_writing(self) -> None:
        """The stream's buffer is full: drop datagrams until it drains."""
        self._paused = True

    def resume_writing(self) -> None:
        """The stream's buffer drained."""
        self._paused = False

    # -- UdpChannel ----------------------------------------------------------------------------

    def send(self, payload: bytes, dst: Address) -> None:
        """Frame one datagram for ``dst`` and write it (congested or too big: dropped, counted)."""
        t = self.transport
        if t is None or self._closed:
            return
        if len(payload) > self.max_datagram:
            self.dropped_too_big += 1
            return
        if self._paused or t.get_write_buffer_size() >= MAX_BUFFERED:
            self.dropped_congested += 1
            return
        try:
            frame = encode_packet(payload, dst)
        except ValueError:
            self.dropped_too_big += 1
            return
        if self._header:
            frame = self._header + frame
            self._header = b""
        self.sent += 1
        t.write(frame)

    def lost(self, exc: BaseException | None) -> None:
        """The stream ended under us: close, and tell the receiver once."""
        if self._closed:
            return
        self.close()
        self.receiver.channel_lost(exc)

    def close(self) -> None:
        """Close the stream (idempotent); the receiver is not told."""
        self._closed = True
        if self.transport is not None:
            self.transport.close()


async def open_uot_udp(
    upstream: Upstream, flow: FlowInfo, receiver: DatagramReceiver, version: int
) -> UotUdpChannel:
    """A UoT channel for one UDP session, over a TCP stream that ``upstream`` opens to the
    magic destination of ``version`` (1 or 2).

    Raises:
        UpstreamError: the stream could not be opened (the proxy refused the magic name:
            it does not speak UoT, or could not reach its own side).
    """
    first = Address.from_host(flow.dst[0], flow.dst[1])
    ch = UotUdpChannel(receiver, first, version)
    stream_flow = FlowInfo(
        flow.flow_id, flow.src, flow.dst, protocol="tcp", internal=flow.internal
    )
    try:
        await upstream.open_tcp(magic_address(version), ch, stream_flow)
    except UpstreamError as e:
        ch._closed = True
        raise UpstreamError(
            f"UDP-over-TCP v{version} stream: {e} (does the proxy speak sing-box's UoT?)",
            e.reason,
        ) from None
    return ch
