"""Events the NetStack reports to its host, drained with :meth:`NetStack.events`.

Pure: no I/O. Every TCP flow starts with one :class:`TcpConnectRequest` and ends with exactly
one :class:`TcpClosed`; every UDP session ends with one :class:`UdpSessionClosed`. Endpoints
are ``(host, port)`` tuples with the host in text form, ready for ``socket.connect``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..tcp.state import CloseReason

__all__ = [
    "CloseReason",
    "Endpoint",
    "Event",
    "RejectReason",
    "TcpClosed",
    "TcpConnectRequest",
    "TcpPeerClosed",
    "TcpReadable",
    "TcpWritable",
    "UdpDatagram",
    "UdpSessionClosed",
]

Endpoint = tuple[str, int]

#: How the host refuses a flow (``NetStack.tcp_reject``, ``udp_reject``): ``reset`` (TCP
#: only: an RST), or an ICMP unreachable: ``net``, ``host``, ``port``, ``admin``
#: (administratively prohibited).
RejectReason = Literal["reset", "net", "host", "port", "admin"]


@dataclass(frozen=True, slots=True)
class TcpConnectRequest:
    """An application sent a SYN: dial ``dst`` then call ``tcp_accept`` or ``tcp_reject``.

    With ``established`` the handshake already completed (accept policy ``immediate``, or
    SYN-flood handling): the app may have sent bytes (``peek`` them); rejecting resets it.
    """

    flow_id: int
    src: Endpoint
    dst: Endpoint
    established: bool = False


@dataclass(frozen=True, slots=True)
class TcpReadable:
    """New bytes arrived from the application since the last ``recv`` on this flow."""

    flow_id: int


@dataclass(frozen=True, slots=True)
class TcpWritable:
    """Room opened in the flow's send buffer after a ``send`` that was cut short."""

    flow_id: int


@dataclass(frozen=True, slots=True)
class TcpPeerClosed:
    """The application closed its sending side (FIN); every byte before it is readable."""

    flow_id: int


@dataclass(frozen=True, slots=True)
class TcpClosed:
    """The flow is over; ``reason`` is ``closed`` (orderly), ``reset`` (the app sent RST),
    ``timeout``, ``idle``, ``aborted`` (by the host), ``rejected`` or ``evicted`` (a
    :data:`~tun2proxy.tcp.state.CloseReason`)."""

    flow_id: int
    reason: CloseReason


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    """A datagram from the application: ``src`` is the app's endpoint, ``dst`` where it went.

    All datagrams from one app endpoint share one ``flow_id`` (endpoint-independent mapping).
    """

    flow_id: int
    src: Endpoint
    dst: Endpoint
    payload: bytes


@dataclass(frozen=True, slots=True)
class UdpSessionClosed:
    """A UDP session ended: ``idle``, ``evicted``, ``rejected``, ``closed`` or ``unreachable``."""

    flow_id: int
    reason: str


Event = (
    TcpConnectRequest
    | TcpReadable
    | TcpWritable
    | TcpPeerClosed
    | TcpClosed
    | UdpDatagram
    | UdpSessionClosed
)
