"""UDP channels: direct (one unconnected socket per session) and SOCKS5 UDP ASSOCIATE.

Both give endpoint-independent mapping and filtering: one upstream socket per application
endpoint, datagrams to any destination, replies from any source the app has talked to.
Destinations known by name (virtual DNS) are resolved here for ``direct`` (cached) and sent
as names through SOCKS5; replies are reported with the same name, so the driver can give
them the fake address the app knows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import OrderedDict
from typing import Any

from ..errors import MalformedPacket, UpstreamError
from ..logutil import RateLimitedLog
from ..proxy.address import Address
from ..proxy.socks5 import UDP_ASSOCIATE, Socks5Handshake, decode_udp_datagram, encode_udp_datagram
from .base import DatagramReceiver, upstream_error_from_os
from .datagram import DatagramChannel
from .dial import Egress, Outbound, local_destination, udp_socket
from .handshake import open_via_handshake

__all__ = ["DirectUdpChannel", "Socks5UdpChannel", "open_direct_udp", "open_socks5_udp"]

_MAX_PENDING = 64
_NAME_TTL = 60.0
_NAME_CACHE = 256
#: Replies matched back to the name the app sent to: (address, port) -> name, the most recent
#: this many per session (a session that talks to many names and ports must not grow it
#: without bound).
_REVERSE_CAP = 1024
log = logging.getLogger(__name__)
#: One line per 10 s for datagrams refused because they would reach this host itself.
_refusal_log = RateLimitedLog(log, interval=10.0)


class DirectUdpChannel(DatagramChannel):
    """An unconnected UDP socket sending to any destination; names resolved and cached."""

    def __init__(
        self, family: int, receiver: DatagramReceiver, *, refuse_local: bool = True,
        egress: Egress | None = None,
    ) -> None:
        super().__init__(receiver, egress)
        self.family = family
        #: Drop datagrams to this host's own addresses (loopback...): see :mod:`.direct`.
        self.refuse_local = refuse_local
        self.refused = 0
        self._names: OrderedDict[str, tuple[str, float]] = OrderedDict()  # name -> ip, expiry
        #: (ip, port) -> the name address the app sent to (most recent last; capped).
        self._reverse: OrderedDict[tuple[str, int], Address] = OrderedDict()
        self._pending: list[tuple[bytes, Address]] = []
        self._resolving: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def datagram_from_socket(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """A reply from ``addr``: reported under the name the app sent to, when there was one."""
        host, port = str(addr[0]), int(addr[1])
        src = self._reverse.get((host, port)) or Address(host, port)
        self.receiver.datagram_received(data, src)

    def send(self, payload: bytes, dst: Address) -> None:
        """Send to ``dst``; a name is resolved first (datagrams wait, bounded)."""
        t = self.transport
        if t is None or self._closed:
            return
        if not dst.is_domain:
            if not self._refused(dst.host, dst):
                with contextlib.suppress(OSError):
                    t.sendto(payload, (dst.host, dst.port))
            return
        hit = self._names.get(dst.host)
        if hit is not None and hit[1] > time.monotonic():
            if not self._refused(hit[0], dst):
                rev = self._reverse
                key = (hit[0], dst.port)
                rev[key] = dst
                rev.move_to_end(key)
                if len(rev) > _REVERSE_CAP:
                    rev.popitem(last=False)
                with contextlib.suppress(OSError):
                    t.sendto(payload, (hit[0], dst.port))
            return
        if len(self._pending) < _MAX_PENDING:
            self._pending.append((payload, dst))
        if dst.host not in self._resolving:
            self._resolving.add(dst.host)
            task = asyncio.get_running_loop().create_task(self._resolve(dst.host))
            self._tasks.add(task)  # the loop keeps only a weak reference
            task.add_done_callback(self._tasks.discard)

    def _refused(self, ip: str, dst: Address) -> bool:
        """Whether a datagram to ``ip`` (``dst`` resolved) is dropped: it is this host."""
        if not self.refuse_local:
            return False
        why = local_destination(ip)
        if why:
            self.refused += 1
            _refusal_log.warning(
                "udp-local", "UDP to %s dropped: %s is a %s address, which the tunnel may not "
                "reach", dst, ip, why,
            )
        return bool(why)

    async def _resolve(self, name: str) -> None:
        try:
            infos = await self.egress.getaddrinfo(name, None, self.family, socket.SOCK_DGRAM)
            ip = str(infos[0][4][0]) if infos else None
        except OSError:
            ip = None
        self._resolving.discard(name)
        pending = [p for p in self._pending if p[1].host == name]
        self._pending = [p for p in self._pending if p[1].host != name]
        if ip is None:
            return
        self._names[name] = (ip, time.monotonic() + _NAME_TTL)
        while len(self._names) > _NAME_CACHE:
            self._names.popitem(last=False)
        for payload, dst in pending:
            self.send(payload, dst)


async def open_direct_udp(
    family: int,
    receiver: DatagramReceiver,
    *,
    outbound: Outbound | None = None,
    refuse_local: bool = True,
    egress: Egress | None = None,
) -> DirectUdpChannel:
    """A :class:`DirectUdpChannel` bound to an ephemeral port of ``family``; with
    ``refuse_local`` it drops datagrams to this host's own addresses."""
    ch = DirectUdpChannel(family, receiver, refuse_local=refuse_local, egress=egress)
    try:
        sock = udp_socket(family, ch.egress.outbound_for(outbound))
    except OSError as e:
        raise upstream_error_from_os(e, "direct UDP socket") from None
    await ch.attach(sock, "direct UDP socket")
    return ch


class _ControlProtocol(asyncio.Protocol):
    """Watches the UDP ASSOCIATE control connection: its end ends the association."""

    def __init__(self, channel: Socks5UdpChannel) -> None:
        self.channel = channel

    def data_received(self, data: bytes) -> None:
        pass  # nothing is expected on the control connection

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.channel.lost(exc or ConnectionError("SOCKS5 control connection closed"))


class Socks5UdpChannel(DatagramChannel):
    """A SOCKS5 UDP association (RFC 1928 §7): datagrams wrapped with the SOCKS5 UDP header
    and sent to the relay the proxy named; the association lives as long as its TCP control
    connection."""

    def __init__(self, receiver: DatagramReceiver, egress: Egress | None = None) -> None:
        super().__init__(receiver, egress)
        self.control: asyncio.Transport | None = None
        #: Replies dropped because they were fragments (RFC 1928 §7: not reassembled).
        self.dropped_fragments = 0
        #: Replies dropped because their header was malformed.
        self.dropped_malformed = 0

    def datagram_from_socket(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """A datagram from the relay: unwrapped, or dropped and counted."""
        try:
            src, payload = decode_udp_datagram(data)
        except MalformedPacket as e:
            if e.reason == "socks5-udp-fragmented":
                self.dropped_fragments += 1  # RFC 1928 §7: MUST drop when not reassembling
            else:
                self.dropped_malformed += 1
            return
        self.receiver.datagram_received(bytes(payload), src)

    def send(self, payload: bytes, dst: Address) -> None:
        """Wrap and send one datagram to the relay (too big once wrapped: dropped, counted)."""
        if self._closed or self.transport is None:
            return
        self.send_wrapped(encode_udp_datagram(dst, payload))

    def close(self) -> None:
        """Close the relay socket and the control connection."""
        super().close()
        if self.control is not None:
            self.control.close()


async def open_socks5_udp(
    host: str, port: int, auth: tuple[str, str] | None, receiver: DatagramReceiver,
    *, outbound: Outbound | None = None, relay: Address | None = None,
    egress: Egress | None = None, pipeline: bool = False,
) -> Socks5UdpChannel:
    """UDP ASSOCIATE through the proxy at ``host:port``.

    The datagrams go to the relay the reply names; ``0.0.0.0``/``::`` there means the proxy's
    own address (RFC 1928's intent: the host we reached it at), with the reply's port. With
    ``relay`` (``?udp-relay=ADDR:PORT``) they go there instead, whatever the reply says — for
    a proxy behind NAT that announces an address unreachable from here.

    Raises:
        UpstreamError: the proxy refused (``unsupported`` for REP 7, as microsocks and others
            without UDP answer).
    """
    ch = Socks5UdpChannel(receiver, egress)
    hs = Socks5Handshake(
        Address("0.0.0.0", 0), auth=auth, command=UDP_ASSOCIATE, pipeline=pipeline
    )
    control = await open_via_handshake(
        host, port, hs, _ControlProtocol(ch), "SOCKS5 proxy", outbound=outbound,
        egress=ch.egress,
    )
    ch.control = control
    sock = control.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    ev = hs.next_event()
    bound = getattr(ev, "bound", None)
    relay_host = host
    relay_port = port
    if bound is not None:
        relay_port = bound.port
        ip = bound.ip
        if (ip is not None and not ip.is_unspecified) or bound.is_domain:
            relay_host = bound.host
    if relay is not None:
        relay_host, relay_port = relay.host, relay.port
    if relay_port == 0:
        control.close()
        raise UpstreamError("SOCKS5 proxy named no UDP relay port", "protocol")
    # Talk to the relay from a socket "connected" to it: datagrams from anyone else are
    # dropped by the kernel (RFC 1928 §7: accept only from the relay).
    try:
        await ch.attach_connected(
            relay_host, relay_port, f"SOCKS5 UDP relay {relay_host}:{relay_port}", outbound
        )
    except UpstreamError:
        control.close()
        raise
    return ch
