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

:class:`HandshakeBase` holds what every client handshake here shares (the output queue, the
input buffer, the event, the end of the handshake); a protocol implements ``_advance``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final, Protocol

from ..errors import FlowStateError
from .address import Address

__all__ = [
    "NEED_DATA",
    "Established",
    "Failed",
    "Handshake",
    "HandshakeBase",
    "HandshakeEvent",
    "NeedData",
]


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


class HandshakeBase:
    """The bookkeeping every client handshake shares; a protocol implements :meth:`_advance`.

    The subclass queues the request in ``_out``, parses what accumulated in ``_buf`` and ends
    with :meth:`_establish` or :meth:`_fail`. Once done, ``receive_data`` ignores input after
    :class:`Failed` and refuses it after :class:`Established` (it is tunnel data).
    """

    __slots__ = ("_buf", "_done", "_event", "_out")

    #: How the protocol is named in the error for data after :class:`Established`.
    _name: ClassVar[str] = "handshake"

    def __init__(self, request: bytes = b"") -> None:
        self._out = bytearray(request)
        self._buf = bytearray()
        self._event: HandshakeEvent = NEED_DATA
        self._done = False

    def bytes_to_send(self) -> bytes:
        """Return (and forget) the bytes that must be written to the proxy now."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the proxy; ``b""`` means it closed the connection.

        Raises:
            FlowStateError: non-empty data after :class:`Established` — those bytes belong to
                the tunnel, not to the handshake. (After :class:`Failed` data is ignored.)
        """
        if self._done:
            if data and isinstance(self._event, Established):
                raise FlowStateError(f"{self._name} already established; data is tunnel data")
            return
        if not data:
            self._closed()
            return
        self._buf += data
        self._advance()

    def next_event(self) -> HandshakeEvent:
        """What happened: :data:`NEED_DATA`, :class:`Established` or :class:`Failed`."""
        return self._event

    # -- for the protocols -----------------------------------------------------------------

    def _advance(self) -> None:
        """Parse what is in ``_buf``: queue replies in ``_out``, or end the handshake."""
        raise NotImplementedError

    def _closed(self) -> None:
        """The server closed before the handshake ended."""
        self._fail("protocol", "server closed during handshake")

    def _fail(self, reason: str, message: str, code: int | None = None) -> None:
        """End the handshake with :class:`Failed`."""
        self._event = Failed(reason, message, code)
        self._done = True
        self._buf.clear()

    def _establish(self, trailing_from: int, bound: Address | None) -> None:
        """End the handshake with :class:`Established`; ``_buf[trailing_from:]`` is tunnel
        data that came with the reply."""
        self._event = Established(trailing=bytes(self._buf[trailing_from:]), bound=bound)
        self._done = True
        self._buf.clear()
