"""Shadowsocks 2022 (SIP022, "AEAD-2022") client framing, sans-I/O.

Pure: no I/O; salts, session ids, nonces and padding lengths come from the injected ``random``
callable (``os.urandom``) and timestamps from the injected ``clock`` (``time.time``: UNIX
seconds). Keys come from :mod:`.keys`, the primitives from :mod:`.aead` (the optional
``cryptography`` and ``blake3`` packages, imported only when a codec is built: without them
the constructors raise :class:`~tun2proxy.errors.ConfigError`), the chunk reader from
:mod:`.chunks`, the replay window from :mod:`.replay`.

Spec: shadowsocks/shadowsocks-org ``docs/doc/sip022.md``; cross-checked against
shadowsocks-rust (``relay/tcprelay/aead_2022.rs``, ``relay/udprelay/aead_2022.rs``) and
SagerNet/sing-shadowsocks (``shadowaead_2022/protocol.go``).

Keys (§2)::

    psk            = base64 of exactly 16 (aes-128) or 32 bytes; no password KDF
    session_subkey = BLAKE3.derive_key("shadowsocks 2022 session subkey", psk || salt)

TCP (§3.1), 12-byte little-endian nonce counter per direction as in AEAD-2017::

    request:  salt | seal(type=0, timestamp u64, len u16) | seal(ATYP addr port,
              padding_len u16, padding, initial payload) | [seal(len u16) seal(payload)]...
    response: salt | seal(type=1, timestamp u64, request salt, len u16) | seal(payload) | ...

:class:`Ss2022TcpSession` sends the salt and both header chunks in ONE write
(:meth:`~Ss2022TcpSession.first_bytes`), pads the request with 1-900 random bytes when there
is no initial payload, and checks the response header: type 1, timestamp within ±30 s of
``clock()``, and the echoed request salt equal to ours (so a response replayed from another
connection fails). Payload chunks carry up to 0xFFFF bytes.

UDP (§3.2, §4.1): a random 8-byte client session id and a 64-bit packet id counter. For the AES
methods the 16-byte session-id‖packet-id block is encrypted with AES-ECB under the PSK and the
body is sealed with the session subkey (salt = session id) and nonce = header[4:16]; for
``2022-blake3-chacha20-poly1305`` the whole packet is sealed with XChaCha20-Poly1305 under the
PSK and a random 24-byte nonce. :class:`Ss2022UdpClient` checks the server's packets (type 1,
timestamp, our client session id) and keeps a sliding-window replay filter
(:class:`~.replay.ReplayWindow`) per server session, updated only after full validation; it
remembers at most the current and the previous server session, and refuses a third one while
the previous one was heard from in the last 60 s (the spec's "one old and one current" option).

Client-side choices and limits:

- Padding: TCP requests without initial payload get 1-900 bytes (the spec's MUST); requests
  with payload get none. UDP packets to port 53 shorter than 900 bytes, and empty ones, get
  1-(900 - len) bytes (as sing-shadowsocks does for DNS); other datagrams get none (MTU).
- SIP022 §3.1.4's "exactly one read for the salt and fixed header" is about a server not
  revealing how many bytes it consumed; this codec buffers, which is the right client side.
- Response salts are not kept in a salt filter: §3.1.5 says clients SHOULD NOT, since the
  response header binds the request salt.
- Not implemented: multi-user identity headers (iPSK, "EIH": ``psk1:psk2`` keys), the
  ``2022-blake3-chacha8/12-poly1305`` variants, and the server side.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable
from typing import Final

from ...errors import FlowStateError
from ..address import Address
from .address import decode_address, encode_address
from .aead import TAG, Aead, CounterAead, crypto, new_aead, xchacha_open, xchacha_seal
from .chunks import ChunkStreamDecoder, seal_chunks
from .errors import ShadowsocksError
from .keys import METHODS_2022, Method, decode_psk, method_2022, session_subkey
from .replay import ReplayWindow

__all__ = [
    "MAX_PADDING",
    "MAX_PAYLOAD_2022",
    "MAX_TIME_DIFF",
    "METHODS_2022",
    "SERVER_SESSION_GRACE",
    "Ss2022TcpSession",
    "Ss2022UdpClient",
]

#: Largest payload of one TCP chunk (§3.1.2).
MAX_PAYLOAD_2022: Final = 0xFFFF
#: Largest padding in a request header or UDP packet (§3.1.3).
MAX_PADDING: Final = 900
#: Seconds a peer's timestamp may differ from ours (§3.1.3: more is a replay).
MAX_TIME_DIFF: Final = 30
#: Seconds an old server session is kept before a newer one may replace it (§3.2.4).
SERVER_SESSION_GRACE: Final = 60

_TYPE_CLIENT: Final = 0
_TYPE_SERVER: Final = 1
_XNONCE: Final = 24
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_REQ_FIXED = struct.Struct("!BQH")  # type, timestamp, variable-header length
_UDP_CLIENT_HEAD = struct.Struct("!BQH")  # type, timestamp, padding length
_UDP_SERVER_HEAD = struct.Struct("!BQ8sH")  # type, timestamp, client session id, padding length
_U64_MAX: Final = (1 << 64) - 1


def _random_below(random: Callable[[int], bytes], n: int) -> int:
    """A uniform integer in ``[0, n)`` for ``n <= 65536``, from the injected randomness."""
    limit = 65536 - 65536 % n
    while True:
        raw = random(2)
        if len(raw) != 2:
            raise ValueError(f"random(2) returned {len(raw)} bytes")
        v = (raw[0] << 8) | raw[1]
        if v < limit:
            return v % n


def _random_bytes(random: Callable[[int], bytes], n: int) -> bytes:
    raw = bytes(random(n))
    if len(raw) != n:
        raise ValueError(f"random({n}) returned {len(raw)} bytes")
    return raw


def _check_time(clock_now: float, timestamp: int, what: str) -> None:
    diff = int(clock_now) - timestamp
    if diff > MAX_TIME_DIFF or diff < -MAX_TIME_DIFF:
        raise ShadowsocksError(
            f"Shadowsocks 2022 {what} timestamp is {diff:+d} s off (more than "
            f"{MAX_TIME_DIFF} s: treated as a replay; check the clocks)"
        )


# -- TCP ---------------------------------------------------------------------------------------


class _ResponseDecoder(ChunkStreamDecoder):
    """The server's stream: salt + sealed (type, timestamp, request salt, length), then
    chunks. The header must be of type 1, timestamped within ±30 s and bound to our salt."""

    __slots__ = ("_clock", "_m", "_psk", "_request_salt", "response_salt")

    def __init__(
        self, m: Method, psk: bytes, request_salt: bytes, clock: Callable[[], float]
    ) -> None:
        self._m = m
        self._psk = psk
        self._request_salt = request_salt
        self._clock = clock
        #: The server's salt, once its header authenticated.
        self.response_salt: bytes | None = None
        prelude = m.key_len + 1 + 8 + m.key_len + 2 + TAG
        super().__init__("Shadowsocks 2022", prelude, MAX_PAYLOAD_2022)

    def _read_prelude(self, raw: bytes) -> tuple[CounterAead, int | None]:
        klen = self._m.key_len
        salt = raw[:klen]
        dec = CounterAead(new_aead(self._m.chacha, session_subkey(self._psk, salt)))
        plain = dec.open(raw[klen:])
        if plain[0] != _TYPE_SERVER:
            raise ShadowsocksError(
                f"Shadowsocks 2022 response header has type {plain[0]}, expected {_TYPE_SERVER}"
            )
        timestamp: int = _U64.unpack_from(plain, 1)[0]
        _check_time(self._clock(), timestamp, "response")
        if not hmac.compare_digest(plain[9 : 9 + klen], self._request_salt):
            raise ShadowsocksError(
                "Shadowsocks 2022 response belongs to another request (request salt mismatch)"
            )
        length: int = _U16.unpack_from(plain, 9 + klen)[0]
        self.response_salt = salt
        return dec, length


class Ss2022TcpSession:
    """The client side of one Shadowsocks 2022 TCP connection to ``dst``.

    ``first_bytes(payload)`` is the first write (salt, both request header chunks and any
    initial payload, sealed); then ``encrypt`` the app's data and ``decrypt`` the server's::

        ss = Ss2022TcpSession("2022-blake3-aes-256-gcm", psk_b64, dst, os.urandom, time.time)
        sock.sendall(ss.first_bytes(first_app_data))
        app.write(ss.decrypt(sock.recv(65536)))

    Raises :class:`~tun2proxy.proxy.shadowsocks.ShadowsocksError` (and stays failed) on a bad
    tag, a wrong response type, a timestamp more than 30 s off, or a response bound to another
    request's salt. Unauthenticated bytes are never returned.
    """

    __slots__ = (
        "_clock",
        "_dec",
        "_enc",
        "_header",
        "_random",
        "_started",
        "dst",
        "method",
        "salt",
    )

    def __init__(
        self,
        method: str,
        psk_b64: str,
        dst: Address,
        random: Callable[[int], bytes],
        clock: Callable[[], float],
    ) -> None:
        m = method_2022(method)
        psk = decode_psk(m.name, psk_b64)
        self._random = random
        self._clock = clock
        #: The canonical method name.
        self.method = m.name
        #: The target the server connects to.
        self.dst = dst
        self._header = encode_address(dst)
        #: Our request salt (the response must echo it).
        self.salt = _random_bytes(random, m.key_len)
        self._enc = CounterAead(new_aead(m.chacha, session_subkey(psk, self.salt)))
        self._dec = _ResponseDecoder(m, psk, self.salt, clock)
        self._started = False

    @property
    def response_salt(self) -> bytes | None:
        """The server's salt, once its header authenticated."""
        return self._dec.response_salt

    @property
    def failed(self) -> bool:
        """True once the response stream failed; every later :meth:`decrypt` raises."""
        return self._dec.failed

    @property
    def pending(self) -> int:
        """Response bytes held back: an incomplete header or chunk."""
        return self._dec.pending

    def first_bytes(self, payload: bytes = b"") -> bytes:
        """The first write: salt + fixed header + variable header (address, padding, initial
        payload), and any payload that did not fit in the header as ordinary chunks."""
        if self._started:
            raise FlowStateError("first_bytes() already called for this Shadowsocks session")
        self._started = True
        padding = 0 if payload else 1 + _random_below(self._random, MAX_PADDING)
        room = MAX_PAYLOAD_2022 - len(self._header) - 2 - padding
        head = payload[:room]
        var = b"".join((self._header, _U16.pack(padding), bytes(padding), head))
        fixed = _REQ_FIXED.pack(_TYPE_CLIENT, int(self._clock()), len(var))
        parts = [self.salt, self._enc.seal(fixed), self._enc.seal(var)]
        if len(payload) > len(head):
            seal_chunks(self._enc, memoryview(payload)[len(head) :], MAX_PAYLOAD_2022, parts)
        return b"".join(parts)

    def encrypt(self, data: bytes) -> bytes:
        """Seal application data for the server (after :meth:`first_bytes`); ``b""`` gives
        ``b""``."""
        if not self._started:
            raise FlowStateError("call first_bytes() before encrypt()")
        if not data:
            return b""
        parts: list[bytes] = []
        seal_chunks(self._enc, data, MAX_PAYLOAD_2022, parts)
        return b"".join(parts)

    def decrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """Feed the server's bytes; return the authenticated plaintext now complete.

        Raises:
            ShadowsocksError: see the class; the session is then failed for good.
            FlowStateError: called before :meth:`first_bytes` (there is no request salt yet).
        """
        if not self._started and not self._dec.failed:
            raise FlowStateError("call first_bytes() before decrypt()")
        return self._dec.feed(data)

    def feed_eof(self) -> None:
        """The server closed; ShadowsocksError if it cut the header or a chunk short."""
        self._dec.feed_eof()


# -- UDP ---------------------------------------------------------------------------------------


class _ServerSession:
    """What the client remembers of one server session: its replay window, its AEAD (AES
    methods) and when it was last heard from."""

    __slots__ = ("aead", "last_seen", "session_id", "window")

    def __init__(self, session_id: bytes, aead: Aead | None, now: float) -> None:
        self.session_id = session_id
        self.aead = aead
        self.window = ReplayWindow()
        self.last_seen = now


class Ss2022UdpClient:
    """The client side of one Shadowsocks 2022 UDP relay session (one per local UDP source).

    ``encrypt(dst, payload)`` gives one packet for the server; ``decrypt(packet)`` gives
    ``(source address, payload)`` or raises
    :class:`~tun2proxy.proxy.shadowsocks.ShadowsocksError` — the caller drops that datagram;
    the session stays usable (a forged packet must not kill it).
    """

    __slots__ = (
        "_aead",
        "_block",
        "_clock",
        "_current",
        "_invalid_tag",
        "_m",
        "_old",
        "_packet_id",
        "_psk",
        "_random",
        "method",
        "session_id",
    )

    def __init__(
        self,
        method: str,
        psk_b64: str,
        random: Callable[[int], bytes],
        clock: Callable[[], float],
    ) -> None:
        m = method_2022(method)
        self._m = m
        self._psk = decode_psk(m.name, psk_b64)
        self._random = random
        self._clock = clock
        c = crypto()
        self._invalid_tag = c.InvalidTag
        #: The canonical method name.
        self.method = m.name
        #: Our random 8-byte client session id.
        self.session_id = _random_bytes(random, 8)
        self._packet_id = 0
        self._aead: Aead | None = None
        self._block = None
        if not m.chacha:
            self._block = c.Cipher(c.algorithms.AES(self._psk), c.modes.ECB())
            self._aead = new_aead(False, session_subkey(self._psk, self.session_id))
        self._current: _ServerSession | None = None
        self._old: _ServerSession | None = None

    @property
    def next_packet_id(self) -> int:
        """The packet id the next :meth:`encrypt` uses (starts at 0)."""
        return self._packet_id

    @property
    def server_sessions(self) -> tuple[bytes, ...]:
        """The server session ids remembered: the current one first, then the previous one."""
        return tuple(s.session_id for s in (self._current, self._old) if s is not None)

    def _padding(self, dst: Address, payload: bytes) -> int:
        if not payload:
            return 1 + _random_below(self._random, MAX_PADDING)
        if dst.port == 53 and len(payload) < MAX_PADDING:
            return 1 + _random_below(self._random, MAX_PADDING - len(payload))
        return 0

    def encrypt(self, dst: Address, payload: bytes) -> bytes:
        """One client packet carrying ``payload`` for ``dst``."""
        pid = self._packet_id
        if pid > _U64_MAX:
            raise ShadowsocksError("Shadowsocks 2022 UDP packet ids exhausted; open a new session")
        self._packet_id = pid + 1
        padding = self._padding(dst, payload)
        header = self.session_id + _U64.pack(pid)
        body = b"".join(
            (
                _UDP_CLIENT_HEAD.pack(_TYPE_CLIENT, int(self._clock()), padding),
                bytes(padding),
                encode_address(dst),
                payload,
            )
        )
        if self._m.chacha:
            nonce = _random_bytes(self._random, _XNONCE)
            return nonce + xchacha_seal(self._psk, nonce, header + body)
        assert self._aead is not None
        assert self._block is not None
        sealed = self._aead.encrypt(header[4:16], body, None)
        return self._block.encryptor().update(header) + sealed

    def _session(self, session_id: bytes) -> _ServerSession | None:
        for s in (self._current, self._old):
            if s is not None and s.session_id == session_id:
                return s
        return None

    def _may_open_session(self, now: float) -> None:
        """Raise if a new server session may not replace the remembered ones now."""
        if self._current is not None and self._old is not None:
            if now - self._old.last_seen < SERVER_SESSION_GRACE:
                raise ShadowsocksError(
                    "Shadowsocks 2022 server session changed more than once in "
                    f"{SERVER_SESSION_GRACE} s"
                )

    def _check_ids(self, session_id: bytes, packet_id: int, now: float) -> _ServerSession | None:
        if session_id == self.session_id:
            raise ShadowsocksError("Shadowsocks 2022 packet carries our own session id (reflected)")
        session = self._session(session_id)
        if session is None:
            self._may_open_session(now)
        elif not session.window.check(packet_id):
            raise ShadowsocksError(
                f"Shadowsocks 2022 UDP packet id {packet_id} replayed or too old"
            )
        return session

    def decrypt(self, data: bytes | bytearray | memoryview) -> tuple[Address, bytes]:
        """Open one server packet: (the remote source address, payload).

        Raises:
            ShadowsocksError: too short, failed authentication, wrong type, timestamp more
                than 30 s off, another client session's packet, a replayed or too old packet
                id, a third server session within 60 s, or a malformed address. No state
                changes unless the packet is accepted.
        """
        raw = bytes(data)
        now = self._clock()
        aead: Aead | None = None
        if self._m.chacha:
            if len(raw) < _XNONCE + 16 + _UDP_SERVER_HEAD.size + TAG:
                raise ShadowsocksError(f"Shadowsocks 2022 UDP packet too short ({len(raw)} bytes)")
            plain = xchacha_open(self._psk, raw[:_XNONCE], raw[_XNONCE:])
            session_id = plain[:8]
            packet_id: int = _U64.unpack_from(plain, 8)[0]
            session = self._check_ids(session_id, packet_id, now)
            body = plain[16:]
        else:
            if len(raw) < 16 + _UDP_SERVER_HEAD.size + TAG:
                raise ShadowsocksError(f"Shadowsocks 2022 UDP packet too short ({len(raw)} bytes)")
            assert self._block is not None
            header = self._block.decryptor().update(raw[:16])
            session_id = header[:8]
            packet_id = _U64.unpack_from(header, 8)[0]
            session = self._check_ids(session_id, packet_id, now)
            aead = (
                session.aead
                if session is not None and session.aead is not None
                else new_aead(False, session_subkey(self._psk, session_id))
            )
            try:
                body = aead.decrypt(header[4:16], raw[16:], None)
            except self._invalid_tag:
                raise ShadowsocksError(
                    "Shadowsocks 2022 UDP packet failed authentication"
                ) from None
        # The body is authenticated; validate it fully before any state changes.
        if len(body) < _UDP_SERVER_HEAD.size:
            raise ShadowsocksError("Shadowsocks 2022 UDP packet header truncated")
        kind, timestamp, client_session, padding = _UDP_SERVER_HEAD.unpack_from(body)
        if kind != _TYPE_SERVER:
            raise ShadowsocksError(
                f"Shadowsocks 2022 UDP packet has type {kind}, expected {_TYPE_SERVER}"
            )
        _check_time(now, timestamp, "UDP packet")
        if client_session != self.session_id:
            raise ShadowsocksError("Shadowsocks 2022 UDP packet is for another client session")
        start = _UDP_SERVER_HEAD.size + padding
        if start > len(body):
            raise ShadowsocksError("Shadowsocks 2022 UDP padding runs past the packet")
        addr, used = decode_address(memoryview(body)[start:])
        payload = body[start + used :]
        # Accepted: commit the session bookkeeping.
        if session is None:
            if self._current is not None:
                self._old = self._current
            session = _ServerSession(session_id, aead, now)
            self._current = session
        session.window.add(packet_id)
        session.last_seen = now
        return addr, payload
