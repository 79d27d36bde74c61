"""Shadowsocks 2022 (SIP022, "AEAD-2022") client codecs, sans-I/O.

Pure: no I/O; salts, session ids, nonces and padding lengths come from the injected ``random``
callable (``os.urandom``) and timestamps from the injected ``clock`` (``time.time``: UNIX
seconds). The primitives come from the optional ``cryptography`` and ``blake3`` packages,
imported only when a codec is built (``pip install 'tun2proxy[shadowsocks]'``); without them
the constructors raise :class:`~tun2proxy.errors.ConfigError`.

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
(:class:`ReplayWindow`) per server session, updated only after full validation; it remembers
at most the current and the previous server session, and refuses a third one while the
previous one was heard from in the last 60 s (the spec's "one old and one current" option).

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

import base64
import binascii
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ..errors import ConfigError, FlowStateError
from .address import Address
from .shadowsocks import (
    ShadowsocksError,
    _Aead,
    _CounterAead,
    _crypto,
    _new_aead,
    decode_address,
    encode_address,
)

__all__ = [
    "MAX_PADDING",
    "MAX_PAYLOAD_2022",
    "MAX_TIME_DIFF",
    "METHODS_2022",
    "ReplayWindow",
    "Ss2022TcpSession",
    "Ss2022UdpClient",
    "decode_psk",
    "session_subkey",
]

#: The SIP022 methods implemented.
METHODS_2022: Final = (
    "2022-blake3-aes-128-gcm",
    "2022-blake3-aes-256-gcm",
    "2022-blake3-chacha20-poly1305",
)
#: Largest payload of one TCP chunk (§3.1.2).
MAX_PAYLOAD_2022: Final = 0xFFFF
#: Largest padding in a request header or UDP packet (§3.1.3).
MAX_PADDING: Final = 900
#: Seconds a peer's timestamp may differ from ours (§3.1.3: more is a replay).
MAX_TIME_DIFF: Final = 30
#: Seconds an old server session is kept before a newer one may replace it (§3.2.4).
SERVER_SESSION_GRACE: Final = 60

_SUBKEY_CONTEXT: Final = "shadowsocks 2022 session subkey"
_INSTALL_HINT: Final = "pip install 'tun2proxy[shadowsocks]'"
_TYPE_CLIENT: Final = 0
_TYPE_SERVER: Final = 1
_TAG: Final = 16
_LEN_CHUNK: Final = 2 + _TAG
_XNONCE: Final = 24
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_REQ_FIXED = struct.Struct("!BQH")  # type, timestamp, variable-header length
_UDP_CLIENT_HEAD = struct.Struct("!BQH")  # type, timestamp, padding length
_UDP_SERVER_HEAD = struct.Struct("!BQ8sH")  # type, timestamp, client session id, padding length
_U64_MAX: Final = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class _Method:
    name: str
    key_len: int
    chacha: bool


_METHODS: Final[dict[str, _Method]] = {
    "2022-blake3-aes-128-gcm": _Method("2022-blake3-aes-128-gcm", 16, False),
    "2022-blake3-aes-256-gcm": _Method("2022-blake3-aes-256-gcm", 32, False),
    "2022-blake3-chacha20-poly1305": _Method("2022-blake3-chacha20-poly1305", 32, True),
}


def _method(name: str) -> _Method:
    m = _METHODS.get(name.strip().lower())
    if m is None:
        raise ConfigError(
            f"unknown Shadowsocks 2022 method {name!r}; use one of {', '.join(METHODS_2022)}"
        )
    return m


def decode_psk(method: str, psk_b64: str) -> bytes:
    """The PSK of ``method`` from its base64 text (§2.1); ConfigError naming the problem.

    The key must decode (standard base64) to exactly the method's key size: 16 bytes for
    ``2022-blake3-aes-128-gcm``, 32 for the others (``openssl rand -base64 32``).
    """
    m = _method(method)
    text = psk_b64.strip()
    if ":" in text:
        raise ConfigError(
            "Shadowsocks 2022 multi-user identity keys ('ipsk:psk') are not implemented; "
            "give a single PSK"
        )
    if not text:
        raise ConfigError(
            f"{m.name} PSK is empty; generate one with openssl rand -base64 {m.key_len}"
        )
    try:
        psk = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{m.name} PSK is not valid base64") from None
    if len(psk) != m.key_len:
        raise ConfigError(
            f"{m.name} PSK must be base64 of exactly {m.key_len} bytes, got {len(psk)} bytes "
            f"(generate one with openssl rand -base64 {m.key_len})"
        )
    return psk


def _blake3_derive_key(context: str, material: bytes, length: int) -> bytes:
    try:
        from blake3 import blake3
    except ImportError:
        raise ConfigError(f"Shadowsocks 2022 needs the 'blake3' package: {_INSTALL_HINT}") from None
    return blake3(material, derive_key_context=context).digest(length)


def session_subkey(psk: bytes, salt: bytes) -> bytes:
    """``BLAKE3.derive_key("shadowsocks 2022 session subkey", psk || salt)``, ``len(psk)``
    bytes (§2.2). For UDP the salt is the 8-byte session id."""
    return _blake3_derive_key(_SUBKEY_CONTEXT, psk + salt, len(psk))


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

_R_HEADER: Final = 0  # waiting for the response salt + fixed header
_R_PAYLOAD: Final = 1  # waiting for a payload chunk
_R_LENGTH: Final = 2  # waiting for a length chunk


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
        "_buf",
        "_clock",
        "_dec",
        "_enc",
        "_error",
        "_header",
        "_m",
        "_need",
        "_psk",
        "_random",
        "_started",
        "_state",
        "dst",
        "method",
        "response_salt",
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
        m = _method(method)
        self._m = m
        self._psk = decode_psk(m.name, psk_b64)
        self._random = random
        self._clock = clock
        #: The canonical method name.
        self.method = m.name
        #: The target the server connects to.
        self.dst = dst
        self._header = encode_address(dst)
        #: Our request salt (the response must echo it).
        self.salt = _random_bytes(random, m.key_len)
        self._enc = _CounterAead(_new_aead(m.chacha, session_subkey(self._psk, self.salt)))
        #: The server's salt, once its header authenticated.
        self.response_salt: bytes | None = None
        self._dec: _CounterAead | None = None
        self._buf = bytearray()
        self._state = _R_HEADER
        self._need = m.key_len + 1 + 8 + m.key_len + 2 + _TAG
        self._error: str | None = None
        self._started = False

    @property
    def failed(self) -> bool:
        """True once the response stream failed; every later :meth:`decrypt` raises."""
        return self._error is not None

    @property
    def pending(self) -> int:
        """Response bytes held back: an incomplete header or chunk."""
        return len(self._buf)

    def _chunks(self, data: bytes | memoryview, parts: list[bytes]) -> None:
        seal = self._enc.seal
        mv = memoryview(data)
        for i in range(0, len(mv), MAX_PAYLOAD_2022):
            piece = mv[i : i + MAX_PAYLOAD_2022]
            parts.append(seal(_U16.pack(len(piece))))
            parts.append(seal(bytes(piece)))

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
            self._chunks(memoryview(payload)[len(head) :], parts)
        return b"".join(parts)

    def encrypt(self, data: bytes) -> bytes:
        """Seal application data for the server (after :meth:`first_bytes`); ``b""`` gives
        ``b""``."""
        if not self._started:
            raise FlowStateError("call first_bytes() before encrypt()")
        if not data:
            return b""
        parts: list[bytes] = []
        self._chunks(data, parts)
        return b"".join(parts)

    def decrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """Feed the server's bytes; return the authenticated plaintext now complete.

        Raises:
            ShadowsocksError: see the class; the session is then failed for good.
            FlowStateError: called before :meth:`first_bytes` (there is no request salt yet).
        """
        if self._error is not None:
            raise ShadowsocksError(self._error)
        if not self._started:
            raise FlowStateError("call first_bytes() before decrypt()")
        buf = self._buf
        buf += data
        n = len(buf)
        pos = 0
        out: list[bytes] = []
        try:
            while n - pos >= self._need:
                end = pos + self._need
                state = self._state
                if state == _R_HEADER:
                    self._read_header(bytes(buf[pos:end]))
                elif state == _R_PAYLOAD:
                    assert self._dec is not None
                    out.append(self._dec.open(bytes(buf[pos:end])))
                    self._state = _R_LENGTH
                    self._need = _LEN_CHUNK
                else:
                    assert self._dec is not None
                    plain = self._dec.open(bytes(buf[pos:end]))
                    self._state = _R_PAYLOAD
                    self._need = ((plain[0] << 8) | plain[1]) + _TAG
                pos = end
        except ShadowsocksError as exc:
            self._error = str(exc)
            buf.clear()
            raise
        del buf[:pos]
        return b"".join(out)

    def _read_header(self, raw: bytes) -> None:
        """Salt + sealed (type, timestamp, request salt, length): validate, then go on."""
        klen = self._m.key_len
        salt = raw[:klen]
        dec = _CounterAead(_new_aead(self._m.chacha, session_subkey(self._psk, salt)))
        plain = dec.open(raw[klen:])
        if plain[0] != _TYPE_SERVER:
            raise ShadowsocksError(
                f"Shadowsocks 2022 response header has type {plain[0]}, expected {_TYPE_SERVER}"
            )
        timestamp: int = _U64.unpack_from(plain, 1)[0]
        _check_time(self._clock(), timestamp, "response")
        if not hmac.compare_digest(plain[9 : 9 + klen], self.salt):
            raise ShadowsocksError(
                "Shadowsocks 2022 response belongs to another request (request salt mismatch)"
            )
        length: int = _U16.unpack_from(plain, 9 + klen)[0]
        self.response_salt = salt
        self._dec = dec
        self._state = _R_PAYLOAD
        self._need = length + _TAG

    def feed_eof(self) -> None:
        """The server closed; ShadowsocksError if it cut the header or a chunk short."""
        if self._error is not None:
            raise ShadowsocksError(self._error)
        if self._buf:
            self._error = f"Shadowsocks 2022 stream truncated ({len(self._buf)} bytes of a chunk)"
            self._buf.clear()
            raise ShadowsocksError(self._error)


# -- UDP ---------------------------------------------------------------------------------------


class ReplayWindow:
    """A sliding-window filter of packet ids (the WireGuard/RFC 6479 scheme, as SIP022 §3.2.4
    asks): an id is new if it is above the highest accepted one, or within ``size`` below it
    and not yet seen. :meth:`check` does not change state; :meth:`add` records an accepted id.
    """

    __slots__ = ("_bits", "_mask", "_top", "size")

    def __init__(self, size: int = 4096) -> None:
        if size < 1:
            raise ValueError(f"replay window size must be at least 1, got {size}")
        #: How many ids below the highest one are remembered.
        self.size = size
        self._mask = (1 << size) - 1
        self._top = -1  # the highest accepted id (none yet)
        self._bits = 0  # bit i: id (top - i) was accepted

    @property
    def highest(self) -> int:
        """The highest accepted packet id, -1 before any."""
        return self._top

    def check(self, packet_id: int) -> bool:
        """True if ``packet_id`` is neither a duplicate nor too far behind the window."""
        if packet_id > self._top:
            return True
        behind = self._top - packet_id
        if behind >= self.size:
            return False
        return not (self._bits >> behind) & 1

    def add(self, packet_id: int) -> None:
        """Record ``packet_id`` as accepted (call only after it passed :meth:`check` and the
        packet was fully validated)."""
        if packet_id > self._top:
            shift = packet_id - self._top
            self._bits = 1 if shift >= self.size else ((self._bits << shift) | 1) & self._mask
            self._top = packet_id
        else:
            behind = self._top - packet_id
            if behind < self.size:
                self._bits |= 1 << behind


_SIGMA: Final = struct.unpack("<4I", b"expand 32-byte k")
_WORDS16 = struct.Struct("<16I")
_WORDS4 = struct.Struct("<4I")
_WORDS8 = struct.Struct("<8I")


def _hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha §2.2) from one ChaCha20 keystream block.

    OpenSSL's ChaCha20 takes a 16-byte IV that fills state words 12-15, exactly HChaCha20's
    input; a keystream block is ``permute(state) + state``, so HChaCha20's output (words 0-3
    and 12-15 of ``permute(state)``) is the keystream minus the initial words.
    """
    c = _crypto()
    block = c.Cipher(c.algorithms.ChaCha20(key, nonce16), mode=None).encryptor().update(bytes(64))
    w = _WORDS16.unpack(block)
    n = _WORDS4.unpack(nonce16)
    return _WORDS8.pack(
        (w[0] - _SIGMA[0]) & 0xFFFFFFFF,
        (w[1] - _SIGMA[1]) & 0xFFFFFFFF,
        (w[2] - _SIGMA[2]) & 0xFFFFFFFF,
        (w[3] - _SIGMA[3]) & 0xFFFFFFFF,
        (w[12] - n[0]) & 0xFFFFFFFF,
        (w[13] - n[1]) & 0xFFFFFFFF,
        (w[14] - n[2]) & 0xFFFFFFFF,
        (w[15] - n[3]) & 0xFFFFFFFF,
    )


def _xchacha_seal(key: bytes, nonce24: bytes, plaintext: bytes, aad: bytes | None = None) -> bytes:
    """XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha §2.3) sealing; ciphertext + tag."""
    aead = _new_aead(True, _hchacha20(key, nonce24[:16]))
    return aead.encrypt(b"\x00\x00\x00\x00" + nonce24[16:], plaintext, aad)


def _xchacha_open(key: bytes, nonce24: bytes, sealed: bytes, aad: bytes | None = None) -> bytes:
    """XChaCha20-Poly1305 opening; ShadowsocksError on a bad tag."""
    aead = _new_aead(True, _hchacha20(key, nonce24[:16]))
    try:
        return aead.decrypt(b"\x00\x00\x00\x00" + nonce24[16:], sealed, aad)
    except _crypto().InvalidTag:
        raise ShadowsocksError("Shadowsocks 2022 UDP packet failed authentication") from None


class _ServerSession:
    """What the client remembers of one server session: its replay window, its AEAD (AES
    methods) and when it was last heard from."""

    __slots__ = ("aead", "last_seen", "session_id", "window")

    def __init__(self, session_id: bytes, aead: _Aead | None, now: float) -> None:
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
        m = _method(method)
        self._m = m
        self._psk = decode_psk(m.name, psk_b64)
        self._random = random
        self._clock = clock
        c = _crypto()
        self._invalid_tag = c.InvalidTag
        #: The canonical method name.
        self.method = m.name
        #: Our random 8-byte client session id.
        self.session_id = _random_bytes(random, 8)
        self._packet_id = 0
        self._aead: _Aead | None = None
        self._block = None
        if not m.chacha:
            self._block = c.Cipher(c.algorithms.AES(self._psk), c.modes.ECB())
            self._aead = _new_aead(False, session_subkey(self._psk, self.session_id))
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
            return nonce + _xchacha_seal(self._psk, nonce, header + body)
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
        aead: _Aead | None = None
        if self._m.chacha:
            if len(raw) < _XNONCE + 16 + _UDP_SERVER_HEAD.size + _TAG:
                raise ShadowsocksError(f"Shadowsocks 2022 UDP packet too short ({len(raw)} bytes)")
            plain = _xchacha_open(self._psk, raw[:_XNONCE], raw[_XNONCE:])
            session_id = plain[:8]
            packet_id: int = _U64.unpack_from(plain, 8)[0]
            session = self._check_ids(session_id, packet_id, now)
            body = plain[16:]
        else:
            if len(raw) < 16 + _UDP_SERVER_HEAD.size + _TAG:
                raise ShadowsocksError(f"Shadowsocks 2022 UDP packet too short ({len(raw)} bytes)")
            assert self._block is not None
            header = self._block.decryptor().update(raw[:16])
            session_id = header[:8]
            packet_id = _U64.unpack_from(header, 8)[0]
            session = self._check_ids(session_id, packet_id, now)
            aead = (
                session.aead
                if session is not None and session.aead is not None
                else _new_aead(False, session_subkey(self._psk, session_id))
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
