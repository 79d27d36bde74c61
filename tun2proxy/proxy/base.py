"""The contract of every sans-I/O upstream handshake (SOCKS5, SOCKS4a, HTTP CONNECT, ...).

Pure: no I/O. A handshake object is fed whatever bytes the upstream socket delivered, in any
split or coalescing, and says what to do next, in the manner of h11::

    hs = Socks5Handshake(Address.from_host("example.com", 443), auth=("u", "p"))
    sock.sendall(hs.bytes_to_send())
    while True:
        ev = hs.next_event()
        if ev is NEED_DATA:
            hs.receive_data(sock.recv(65536))   # b"" means the server closed
            sock.sendall(hs.bytes_to_send())    # replies may produce more to send
        elif isinstance(ev, Established):
            tunnel_bytes = ev.trailing          # never lost: data that followed the reply
            break
        else:                                   # Failed
            raise UpstreamError(ev.message, ev.reason)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

from .address import Address

__all__ = ["NEED_DATA", "Established", "Failed", "Handshake", "HandshakeEvent", "NeedData"]


class NeedData:
    """Sentinel type: the handshake needs more bytes from the upstream."""

    _instance: NeedData | None = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


@dataclass(frozen=True, slots=True)
class Established:
    """The tunnel is open. ``trailing`` holds bytes that arrived after the reply (tunnel data).

    ``bound`` is the address the proxy reported (SOCKS BND.ADDR), when the protocol has one.
    """

    trailing: bytes = b""
    bound: Address | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """The handshake failed. ``reason`` is an :class:`~tun2proxy.errors.UpstreamError` reason
    (``refused``, ``unreachable``, ``auth``, ``protocol``, ``denied``, ``unsupported``,
    ``error``); ``code`` is the protocol's own reply code or status, when there is one."""

    reason: str
    message: str
    code: int | None = None


HandshakeEvent = NeedData | Established | Failed


class Handshake(Protocol):
    """What every client handshake provides."""

    def bytes_to_send(self) -> bytes:
        """Return (and forget) the bytes that must be written to the upstream now."""
        ...

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the upstream; ``b""`` means it closed the connection."""
        ...

    def next_event(self) -> HandshakeEvent:
        """What happened: :data:`NEED_DATA`, :class:`Established` or :class:`Failed`."""
        ...
