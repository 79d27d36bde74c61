"""The ``ss://`` upstream: Shadowsocks AEAD-2017 and 2022 over TCP and UDP (I/O layer).

The sans-I/O codecs of :mod:`tun2proxy.proxy.shadowsocks` (AEAD-2017 and 2022) get a socket
here. Randomness comes from :func:`os.urandom`, the 2022 timestamps from :func:`time.time`.

TCP: after connecting to the server, the relay is handed a :class:`ShadowsocksTransport`, a
layered :class:`asyncio.Transport` that encrypts what the relay writes, decrypts what the
server sends, and passes flow control (pause/resume reading, write buffer size and limits,
``pause_writing``/``resume_writing``) straight through to the socket transport beneath.

* One write: the salt, the address header and the application's first bytes leave in ONE
  write (SIP022 requires it for 2022; for AEAD-2017 it avoids a fixed-size first packet).
  The header waits for the relay's first :meth:`~ShadowsocksTransport.write` — at most
  ``first_write_delay`` seconds (:data:`FIRST_WRITE_DELAY`); then it goes alone (padded, for
  2022), so server-speaks-first protocols (SMTP, FTP, MySQL) still work.
* Authentication failures never release unauthenticated bytes: the stream is aborted and the
  relay's protocol gets ``connection_lost(ShadowsocksError(...))`` — the application sees a
  reset. So does a server that closes or resets the stream before any authenticated byte
  (what a wrong password or method usually looks like: Shadowsocks servers answer nothing
  and hang up), and a stream truncated inside a chunk. One warning per kind of failure is
  logged every 10 s at most.
* ``write_eof`` half-closes the socket after its buffer is flushed (the header is sent first
  if it is still waiting).

UDP: with ``uot`` (``ss://...?uot=2``), sing-box's UDP-over-TCP, one stream per session
(:mod:`.uot`); otherwise one UDP socket "connected" to the server per channel (the kernel
drops datagrams from anyone else), packets built with ``encrypt_packet``/``decrypt_packet``
(AEAD-2017) or a :class:`~tun2proxy.proxy.shadowsocks.Ss2022UdpClient` (2022). Datagrams that fail
authentication are dropped and counted.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol, cast

from ..errors import ConfigError, FlowStateError, UpstreamError
from ..logutil import RateLimitedLog
from ..proxy.address import Address
from ..proxy.shadowsocks import (
    AEAD_METHODS,
    METHODS_2022,
    AeadTcpSession,
    ShadowsocksError,
    Ss2022TcpSession,
    Ss2022UdpClient,
    decode_address,
    decode_psk,
    decrypt_packet,
    encode_address,
    encrypt_packet,
    password_to_key,
)
from .base import DatagramReceiver, FlowInfo, UdpChannel, Upstream, upstream_error_from_os
from .datagram import DatagramChannel
from .dial import connect_tcp
from .uot import open_uot_udp

__all__ = [
    "FIRST_WRITE_DELAY",
    "METHODS",
    "ShadowsocksTransport",
    "ShadowsocksUdpChannel",
    "ShadowsocksUpstream",
]

log = logging.getLogger(__name__)

#: Every method the upstream speaks: the AEAD-2017 ones, then the 2022 ones.
METHODS = (*AEAD_METHODS, *METHODS_2022)
#: Seconds the request header waits for the application's first bytes (see the module doc).
FIRST_WRITE_DELAY = 0.02

_ALIASES = {"chacha20-poly1305": "chacha20-ietf-poly1305"}
_INSTALL_HINT = "pip install 'tun2proxy[shadowsocks]'"
_LOG_INTERVAL = 10.0
_WRONG_KEY_HINT = "wrong password or method?"


_limited = RateLimitedLog(log, _LOG_INTERVAL, max_keys=256)


def _canonical(method: str) -> str:
    m = method.strip().lower()
    m = _ALIASES.get(m, m)
    if m not in METHODS:
        raise ConfigError(f"unknown Shadowsocks method {method!r}; use one of {', '.join(METHODS)}")
    return m


def _require_crypto(is_2022: bool) -> None:
    """ConfigError naming the extra when ``cryptography`` (and ``blake3`` for 2022) is missing."""
    needed = ("cryptography", "blake3") if is_2022 else ("cryptography",)
    for name in needed:
        if importlib.util.find_spec(name) is None:
            raise ConfigError(f"Shadowsocks needs the {name!r} package: {_INSTALL_HINT}")


# -- TCP ---------------------------------------------------------------------------------------


class _TcpCodec(Protocol):
    """What the transport needs of AeadTcpSession and Ss2022TcpSession."""

    def first_bytes(self, payload: bytes = b"") -> bytes: ...

    def encrypt(self, data: bytes) -> bytes: ...

    def decrypt(self, data: bytes | bytearray | memoryview) -> bytes: ...

    def feed_eof(self) -> None: ...


class _Lower(asyncio.Protocol):
    """The protocol of the socket transport beneath: everything goes to the layered transport."""

    __slots__ = ("outer",)

    def __init__(self, outer: ShadowsocksTransport) -> None:
        self.outer = outer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance: uvloop's transports are not asyncio.Transport subclasses.
        self.outer._inner = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.outer._on_data(data)

    def eof_received(self) -> bool:
        return self.outer._on_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.outer._on_lost(exc)

    def pause_writing(self) -> None:
        self.outer._protocol.pause_writing()

    def resume_writing(self) -> None:
        self.outer._protocol.resume_writing()


class ShadowsocksTransport(asyncio.Transport):
    """One Shadowsocks stream as the relay sees it: plaintext in and out, over the encrypted
    socket transport beneath (see the module doc for the rules it keeps)."""

    def __init__(
        self,
        codec: _TcpCodec,
        protocol: asyncio.Protocol,
        *,
        what: str,
        dst: Address,
        first_write_delay: float = FIRST_WRITE_DELAY,
        on_auth_failure: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self._codec = codec
        self._protocol = protocol
        self._what = what
        self._dst = dst
        self._delay = first_write_delay
        self._on_auth_failure = on_auth_failure
        self._inner: asyncio.Transport | None = None
        self._lower = _Lower(self)
        self._timer: asyncio.TimerHandle | None = None
        self._started = False  # the request header was written
        self._attached = False  # the relay's protocol got connection_made
        self._closing = False  # close() or abort() was called
        self._eof_written = False
        self._authenticated = False  # the server's stream authenticated at least once
        self._error: Exception | None = None
        self._lost = False  # connection_lost was delivered (or open_tcp failed)

    # -- set-up (called by ShadowsocksUpstream.open_tcp) ---------------------------------------

    def _attach(self) -> None:
        """Give the relay its transport and start waiting for the first write."""
        self._attached = True
        self._protocol.connection_made(self)
        if self._started or self._inner is None or self._lost:
            return
        if self._delay <= 0:
            self._send_header()
        else:
            self._timer = asyncio.get_running_loop().call_later(self._delay, self._send_header)

    def _send_header(self) -> None:
        """No first bytes arrived in time: the header goes alone."""
        self._timer = None
        if not self._started and not self._closing and self._error is None:
            self._started = True
            assert self._inner is not None
            log.debug("%s: no first bytes for %s yet; the request header goes alone",
                      self._what, self._dst)
            self._inner.write(self._codec.first_bytes(b""))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the server's side ---------------------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        if self._error is not None or self._lost:
            return
        if not self._started:
            self._fail(ShadowsocksError(f"{self._what} sent data before the request"))
            return
        try:
            plain = self._codec.decrypt(data)
        except (ShadowsocksError, FlowStateError) as e:
            self._fail(e if isinstance(e, ShadowsocksError) else ShadowsocksError(str(e)))
            return
        if plain:
            self._authenticated = True
            if self._attached and not self._closing:
                self._protocol.data_received(plain)
        elif not self._authenticated and isinstance(self._codec, Ss2022TcpSession):
            # A 2022 response header with no payload yet still proves the key.
            self._authenticated = self._codec.response_salt is not None

    def _on_eof(self) -> bool:
        if self._error is not None or self._lost or self._closing:
            return True
        try:
            self._codec.feed_eof()
        except ShadowsocksError as e:
            self._fail(e)
            return True
        if not self._authenticated:
            # After our EOF a server without half-close (shadowsocks-libev) ends the stream
            # this way too, key or no key: name that cause beside the wrong key.
            also = (
                "the server ended the stream at our EOF (it has no half-close), or "
                if self._eof_written else ""
            )
            self._fail(
                ShadowsocksError(
                    f"{self._what} closed the stream before any authenticated data: "
                    f"{_WRONG_KEY_HINT} (or {also}{self._dst} was unreachable or sent nothing)"
                )
            )
            return True
        if not self._attached:
            return True
        return bool(self._protocol.eof_received())

    def _on_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._lost:
            return
        err = self._error
        if (
            err is None and exc is not None and not self._authenticated and self._started
            and not self._closing
        ):
            err = ShadowsocksError(
                f"{self._what} reset the stream before any authenticated data ({exc}): "
                f"{_WRONG_KEY_HINT}"
            )
            self._report(err)
        elif err is None:
            err = exc
        if not self._attached:
            self._error = err if err is not None else ConnectionError("connection closed")
            return
        self._lost = True
        self._protocol.connection_lost(err)

    def _fail(self, exc: ShadowsocksError) -> None:
        """Abort the stream; the relay's protocol gets ``connection_lost(exc)``."""
        if self._error is not None:
            return
        self._error = exc
        self._cancel_timer()
        self._report(exc)
        if self._inner is not None:
            self._inner.abort()

    def _report(self, exc: Exception) -> None:
        if self._on_auth_failure is not None:
            self._on_auth_failure()
        _limited.warning(
            f"{self._what}:{type(exc).__name__}:{_WRONG_KEY_HINT in str(exc)}",
            "flow to %s reset: %s", self._dst, exc,
        )

    # -- asyncio.Transport ---------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` and write it; the first bytes go out with the request header."""
        if self._eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data or self._closing or self._error is not None or self._inner is None:
            return
        raw = data if isinstance(data, bytes) else bytes(data)
        if self._started:
            self._inner.write(self._codec.encrypt(raw))
            return
        self._cancel_timer()
        self._started = True
        self._inner.write(self._codec.first_bytes(raw))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        """Write the concatenation of ``list_of_data`` (one encryption, one socket write)."""
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        """Half-close: the socket's send side closes once its buffer is flushed."""
        if self._eof_written or self._closing or self._error is not None or self._inner is None:
            return
        self._eof_written = True
        if not self._started:
            self._cancel_timer()
            self._send_header()
        self._inner.write_eof()

    def can_write_eof(self) -> bool:
        """True: a TCP socket can half-close."""
        return self._inner is None or self._inner.can_write_eof()

    def close(self) -> None:
        """Close after the socket's buffer is flushed; ``connection_lost(None)`` follows."""
        if self._closing:
            return
        self._closing = True
        self._cancel_timer()
        if self._inner is not None:
            self._inner.close()

    def abort(self) -> None:
        """Close at once, dropping buffered bytes; ``connection_lost(None)`` follows."""
        self._closing = True
        self._cancel_timer()
        if self._inner is not None:
            self._inner.abort()

    def is_closing(self) -> bool:
        """True once closing, aborted or failed."""
        inner = self._inner
        return (
            self._closing or self._error is not None or inner is None or inner.is_closing()
        )

    def pause_reading(self) -> None:
        """Stop reading from the server (the relay's flow is full)."""
        if self._inner is not None:
            self._inner.pause_reading()

    def resume_reading(self) -> None:
        """Read from the server again."""
        if self._inner is not None:
            self._inner.resume_reading()

    def is_reading(self) -> bool:
        """Whether the socket beneath is being read."""
        return self._inner is not None and self._inner.is_reading()

    def get_write_buffer_size(self) -> int:
        """Bytes waiting in the socket transport (ciphertext)."""
        return 0 if self._inner is None else self._inner.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """The socket transport's (low, high) water marks."""
        return (0, 0) if self._inner is None else self._inner.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the socket transport's water marks (``pause_writing`` comes from there)."""
        if self._inner is not None:
            self._inner.set_write_buffer_limits(high, low)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The socket transport's extra info (``peername`` is the Shadowsocks server)."""
        if self._inner is None:
            return default
        return self._inner.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Replace the protocol that gets the plaintext."""
        assert isinstance(protocol, asyncio.Protocol)
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The protocol that gets the plaintext."""
        return self._protocol


# -- UDP ---------------------------------------------------------------------------------------


class _UdpCodec(Protocol):
    """What the channel needs of _AeadUdpCodec and Ss2022UdpClient."""

    def encrypt(self, dst: Address, payload: bytes) -> bytes: ...

    def decrypt(self, data: bytes | bytearray | memoryview) -> tuple[Address, bytes]: ...


class _AeadUdpCodec:
    """AEAD-2017 UDP packets: a fresh salt each, the target address inside."""

    __slots__ = ("key", "method")

    def __init__(self, method: str, key: bytes) -> None:
        self.method = method
        self.key = key

    def encrypt(self, dst: Address, payload: bytes) -> bytes:
        return encrypt_packet(self.method, self.key, os.urandom, encode_address(dst) + payload)

    def decrypt(self, data: bytes | bytearray | memoryview) -> tuple[Address, bytes]:
        plain = decrypt_packet(self.method, self.key, data)
        addr, used = decode_address(plain)
        return addr, plain[used:]


class ShadowsocksUdpChannel(DatagramChannel):
    """One UDP session through a Shadowsocks server: every datagram encrypted with the target
    address inside, sent from one socket connected to the server; replies that fail
    authentication are dropped and counted in ``dropped_auth``."""

    def __init__(
        self, codec: _UdpCodec, receiver: DatagramReceiver,
        upstream: ShadowsocksUpstream | None = None,
    ) -> None:
        super().__init__(receiver, upstream.egress if upstream is not None else None)
        self.codec = codec
        self.upstream = upstream
        #: Replies dropped because they failed authentication or validation.
        self.dropped_auth = 0

    def datagram_from_socket(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """A packet from the server: decrypted for the receiver, or dropped and counted."""
        try:
            src, payload = self.codec.decrypt(data)
        except ShadowsocksError as e:
            self.dropped_auth += 1
            if self.upstream is not None:
                self.upstream.udp_dropped_auth += 1
            log.debug("shadowsocks udp: dropped a reply: %s", e)
            return
        self.receiver.datagram_received(payload, src)

    def send(self, payload: bytes, dst: Address) -> None:
        """Encrypt and send one datagram for ``dst`` (too big once encrypted: dropped, counted)."""
        if self.transport is None or self._closed:
            return
        try:
            data = self.codec.encrypt(dst, payload)
        except (ShadowsocksError, ValueError) as e:
            log.debug("shadowsocks udp: cannot send to %s: %s", dst, e)
            return
        self.send_wrapped(data)


# -- the upstream ------------------------------------------------------------------------------


class ShadowsocksUpstream(Upstream):
    """Open flows through the Shadowsocks server at ``host:port`` with ``method``.

    ``password_or_psk`` is the text password of an AEAD-2017 method, or the base64 PSK of a
    2022 method. Destinations known by name (virtual DNS) are sent as names, so the server
    resolves them.

    Raises:
        ConfigError: unknown method, empty password, a PSK that is not base64 of the
            method's key size, or the ``cryptography``/``blake3`` packages missing.
    """

    name = "shadowsocks"

    def __init__(
        self,
        host: str,
        port: int,
        method: str,
        password_or_psk: str,
        *,
        first_write_delay: float = FIRST_WRITE_DELAY,
        uot: int | None = None,
    ) -> None:
        if uot not in (None, 1, 2):
            raise ConfigError(f"UoT version {uot}: only 1 and 2 exist")
        #: With 1 or 2: UDP goes as sing-box's UDP-over-TCP streams, not Shadowsocks UDP.
        self.uot = uot
        self.host = host
        self.port = port
        self.method = _canonical(method)
        self.is_2022 = self.method in METHODS_2022
        _require_crypto(self.is_2022)
        if self.is_2022:
            decode_psk(self.method, password_or_psk)  # validate now: ConfigError
            self._key = b""
        else:
            self._key = password_to_key(self.method, password_or_psk)
        self._secret = password_or_psk if self.is_2022 else ""  # AEAD-2017 keeps the key only
        self.first_write_delay = first_write_delay
        #: TCP streams reset because they failed authentication (or ended before any).
        self.tcp_auth_failures = 0
        #: UDP replies dropped because they failed authentication, over every channel.
        self.udp_dropped_auth = 0

    @property
    def _what(self) -> str:
        return f"Shadowsocks server {Address.from_host(self.host, self.port)} ({self.method})"

    def _count_failure(self) -> None:
        self.tcp_auth_failures += 1

    def _tcp_codec(self, target: Address) -> _TcpCodec:
        if self.is_2022:
            return Ss2022TcpSession(self.method, self._secret, target, os.urandom, time.time)
        return AeadTcpSession(self.method, self._key, target, os.urandom)

    async def open_tcp(
        self, dst: Address, protocol: asyncio.Protocol, flow: FlowInfo
    ) -> asyncio.Transport:
        """Connect to the server and hand ``protocol`` a :class:`ShadowsocksTransport` for
        ``dst`` (or ``flow.domain`` when known); the request goes with the first write."""
        target = Address(flow.domain, dst.port) if flow.domain else dst
        try:
            codec = self._tcp_codec(target)
        except ValueError as e:  # a name too long for the address header
            raise UpstreamError(f"{self._what}: cannot address {target}: {e}", "error") from None
        outer = ShadowsocksTransport(
            codec, protocol, what=self._what, dst=target,
            first_write_delay=self.first_write_delay, on_auth_failure=self._count_failure,
        )
        try:
            await connect_tcp(self.host, self.port, lambda: outer._lower, egress=self.egress)
        except OSError as e:
            raise upstream_error_from_os(e, self._what) from None
        if outer._error is not None or outer._inner is None:
            if outer._inner is not None:
                outer._inner.abort()
            raise UpstreamError(f"{self._what}: {outer._error or 'connection lost'}", "protocol")
        outer._attach()
        return outer

    async def open_udp(self, flow: FlowInfo, receiver: DatagramReceiver) -> UdpChannel:
        """A UDP channel through the server: one socket connected to it, or with ``uot`` one
        UDP-over-TCP stream."""
        if self.uot is not None:
            return await open_uot_udp(self, flow, receiver, self.uot)
        codec: _UdpCodec
        if self.is_2022:
            codec = Ss2022UdpClient(self.method, self._secret, os.urandom, time.time)
        else:
            codec = _AeadUdpCodec(self.method, self._key)
        ch = ShadowsocksUdpChannel(codec, receiver, self)
        await ch.attach_connected(self.host, self.port, f"{self._what} (UDP)")
        return ch

    def describe(self) -> str:
        """``ss://method@host:port`` (the password or PSK is never shown)."""
        tail = f"?uot={self.uot}" if self.uot else ""
        return f"ss://{self.method}@{Address.from_host(self.host, self.port)}{tail}"
