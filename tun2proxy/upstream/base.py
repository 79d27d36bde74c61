"""The Upstream contract: how a flow reaches the outside (I/O layer).

An upstream opens a TCP stream to a destination — directly or through a proxy — and attaches
the relay's :class:`asyncio.Protocol` to it once the stream carries tunnel bytes (after any
proxy handshake). Failures raise :class:`~tun2proxy.errors.UpstreamError` whose ``reason``
decides how the application is told (RST, or ICMP unreachable).
"""

from __future__ import annotations

import abc
import asyncio
import errno
from dataclasses import dataclass
from typing import Protocol

from ..errors import UpstreamError
from ..proxy.address import Address
from ..stack.events import Endpoint
from .dial import default_egress
from .egress import Egress

__all__ = [
    "DatagramReceiver",
    "FlowInfo",
    "UdpChannel",
    "Upstream",
    "upstream_error_from_os",
]


@dataclass(frozen=True, slots=True)
class FlowInfo:
    """What is known about the flow being dialled (for routing, logging and auth tricks).

    Attributes:
        flow_id: the NetStack flow id.
        src: the application's endpoint.
        dst: the destination the application used (an IP literal).
        protocol: ``tcp`` or ``udp``.
        domain: the host name behind ``dst``, when virtual DNS or sniffing knows it.
        internal: a connection tun2proxy opens for itself to a destination its own
            settings name (the ``--dns over-tcp`` forwarder's ``--dns-addr``, the
            ``--udpgw-server``), not one an application asked for. Only those code paths
            set it; nothing in a packet can. The direct upstream lets such a connection
            reach this host's own addresses (a resolver on 127.0.0.53, a udpgw server on
            loopback), which it refuses to applications.
    """

    flow_id: int
    src: Endpoint
    dst: Endpoint
    protocol: str = "tcp"
    domain: str | None = None
    internal: bool = False


class DatagramReceiver(Protocol):
    """Where a :class:`UdpChannel` delivers what comes back (the driver's UDP relay)."""

    def datagram_received(self, payload: bytes, src: Address) -> None:
        """A datagram from ``src`` (the address the app sent to: a name stays a name)."""
        ...

    def channel_lost(self, exc: BaseException | None) -> None:
        """The channel ended (e.g. its SOCKS5 control connection closed)."""
        ...


class UdpChannel(abc.ABC):
    """The upstream side of one UDP session: datagrams to any destination, replies back.

    One channel serves every destination of one application endpoint (endpoint-independent
    mapping), so QUIC, STUN and games see replies from every peer they talk to.
    """

    @abc.abstractmethod
    def send(self, payload: bytes, dst: Address) -> None:
        """Send one datagram (fire and forget; a full or broken path drops it)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the channel's sockets (idempotent)."""


class Upstream(abc.ABC):
    """A way out for flows. Subclasses implement :meth:`open_tcp` (and UDP where they can)."""

    #: Short name for logs (``direct``, ``socks5``, ...).
    name: str = "upstream"
    #: Set by :meth:`bind_egress`; until then :attr:`egress` makes the upstream its own.
    _egress: Egress | None = None

    @property
    def egress(self) -> Egress:
        """Where this upstream's sockets leave from and whose own-endpoint registry they join:
        the Driver's once it bound it (:meth:`bind_egress`), else one of the upstream's own."""
        if self._egress is None:
            self._egress = default_egress()
        return self._egress

    def bind_egress(self, egress: Egress) -> None:
        """Open every socket through ``egress`` from now on (a Driver does this with its own).

        An upstream that wraps others (routing, udpgw) passes it on to them; a custom
        upstream that opens sockets some other way may ignore it (its sockets are then not
        recognised by loop detection).
        """
        self._egress = egress

    @abc.abstractmethod
    async def open_tcp(
        self, dst: Address, protocol: asyncio.Protocol, flow: FlowInfo
    ) -> asyncio.Transport:
        """Open a stream to ``dst`` and attach ``protocol`` to it; return its transport.

        ``protocol.connection_made`` is called once the stream carries tunnel bytes, and any
        bytes that arrived together with the proxy's reply are passed to ``data_received``.

        Raises:
            UpstreamError: the destination or the proxy refused, was unreachable, failed
                authentication, or broke the protocol.
        """

    async def open_udp(self, flow: FlowInfo, receiver: DatagramReceiver) -> UdpChannel:
        """Open a UDP channel for one application endpoint.

        Raises:
            UpstreamError: with reason ``unsupported`` when this upstream cannot carry UDP
                (the app then gets ICMP port unreachable at once).
        """
        raise UpstreamError(f"{self.name} upstream does not carry UDP", "unsupported")

    def describe(self) -> str:
        """A one-line description for logs (no credentials)."""
        return self.name

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release shared resources (connection pools, UDP associations)."""


def upstream_error_from_os(e: OSError, what: str) -> UpstreamError:
    """Map a socket error while dialling ``what`` to an :class:`UpstreamError`."""
    code = e.errno
    if isinstance(e, ConnectionRefusedError) or code == errno.ECONNREFUSED:
        return UpstreamError(f"{what}: connection refused", "refused")
    if code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETDOWN):
        return UpstreamError(f"{what}: {e.strerror or e}", "unreachable")
    if isinstance(e, TimeoutError) or code == errno.ETIMEDOUT:
        return UpstreamError(f"{what}: timed out", "timeout")
    if code in (errno.EACCES, errno.EPERM):
        return UpstreamError(f"{what}: {e.strerror or e}", "denied")
    return UpstreamError(f"{what}: {e.strerror or e}", "error")
