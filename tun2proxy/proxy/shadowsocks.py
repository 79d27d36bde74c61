"""Shadowsocks AEAD (2017) client codecs: SIP004 as amended by SIP007, sans-I/O.

Pure: no I/O, no clock, no randomness of its own — salts come from the ``random`` callable the
caller passes (``os.urandom``). The AEAD primitives come from the optional ``cryptography``
package, imported only when a codec is built (``pip install 'tun2proxy[shadowsocks]'``);
without it the constructors raise :class:`~tun2proxy.errors.ConfigError`.

The protocol (shadowsocks/shadowsocks-org ``docs/doc/aead.md``)::

    key     = EVP_BytesToKey(MD5, password)            (or the raw key, of the method's size)
    subkey  = HKDF-SHA1(key, salt, info=b"ss-subkey")   (one random salt per stream/packet)
    nonce   = 12-byte little-endian counter from 0, incremented after EVERY seal/open

    TCP stream:  salt | [len(2) + tag] [payload(len) + tag] | [len + tag] [payload + tag] ...
                 len <= 0x3FFF (the two high bits are reserved, zero)
    UDP packet:  salt | payload + tag                        (fresh salt, zero nonce)

The first plaintext of a client's request stream (and of every UDP packet) starts with the
target's SOCKS5-style address (ATYP, address, port: :func:`encode_address`); the server sends
no reply before data, so there is no :class:`~tun2proxy.proxy.base.Handshake` here —
:class:`AeadTcpSession` writes the salt, the address and the first payload in one go.

Security duties kept here (``reference/reliability.md`` §3.5):

- An authentication failure fails the codec for good and raises :class:`ShadowsocksError`
  (reason ``protocol``); no byte of an unauthenticated chunk is ever returned. Plaintext of
  earlier, authenticated chunks decrypted in the same :meth:`AeadStreamDecryptor.feed` call is
  discarded with the error (the stream is being torn down anyway).
- AEAD-2017 streams are symmetric, so an on-path attacker could replay a server stream, or
  reflect the client's own request stream back to it (shadowsocks/shadowsocks-org#183). The
  client keeps a bounded :class:`SaltFilter` of the salts it sent and the response salts it
  accepted, and rejects a response salt found there (shadowsocks/shadowsocks-windows#3118).
  Codecs share the module-level :data:`default_salt_filter` unless given their own; replace it
  with ``shadowsocks.default_salt_filter = SaltFilter(...)`` (looked up at construction).
- A declared chunk length above 0x3FFF fails at once; the decryptor never buffers more than one
  chunk beyond what it has returned.

Not implemented: the stream ciphers of the original protocol (rc4-md5, aes-*-cfb, ...), which
are insecure, and aes-192-gcm (rarely deployed).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from ..errors import ConfigError, FlowStateError, UpstreamError
from .address import Address
from .socks5 import _encode_address

__all__ = [
    "AEAD_METHODS",
    "MAX_PAYLOAD",
    "AeadStreamDecryptor",
    "AeadStreamEncryptor",
    "AeadTcpSession",
    "SaltFilter",
    "ShadowsocksError",
    "decode_address",
    "decrypt_packet",
    "default_salt_filter",
    "encode_address",
    "encrypt_packet",
    "evp_bytes_to_key",
    "hkdf_sha1",
    "key_size",
    "password_to_key",
]

#: The AEAD-2017 methods implemented, by their Shadowsocks names (``chacha20-poly1305`` is
#: accepted as an alias of ``chacha20-ietf-poly1305``).
AEAD_METHODS: Final = ("aes-128-gcm", "aes-256-gcm", "chacha20-ietf-poly1305")
#: Largest payload of one TCP chunk (SIP004: the two high bits of the length are reserved).
MAX_PAYLOAD: Final = 0x3FFF

_TAG: Final = 16
_NONCE_LEN: Final = 12
_ZERO_NONCE: Final = bytes(_NONCE_LEN)
_LEN_CHUNK: Final = 2 + _TAG
_SUBKEY_INFO: Final = b"ss-subkey"
_INSTALL_HINT: Final = "pip install 'tun2proxy[shadowsocks]'"

_ATYP_IPV4: Final = 1
_ATYP_DOMAIN: Final = 3
_ATYP_IPV6: Final = 4
_PORT = struct.Struct("!H")
_LENGTH = struct.Struct("!H")


class ShadowsocksError(UpstreamError):
    """A Shadowsocks stream or packet failed authentication or validation.

    ``reason`` is ``protocol`` (an :class:`~tun2proxy.errors.UpstreamError` reason): the
    upstream connection must be closed; for UDP, the datagram is dropped.
    """

    def __init__(self, message: str, reason: str = "protocol") -> None:
        super().__init__(message, reason)


# -- methods and keys --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Method:
    name: str
    key_len: int
    salt_len: int
    chacha: bool


_METHODS: Final[dict[str, _Method]] = {
    "aes-128-gcm": _Method("aes-128-gcm", 16, 16, False),
    "aes-256-gcm": _Method("aes-256-gcm", 32, 32, False),
    "chacha20-ietf-poly1305": _Method("chacha20-ietf-poly1305", 32, 32, True),
    "chacha20-poly1305": _Method("chacha20-ietf-poly1305", 32, 32, True),
}


def _method(name: str) -> _Method:
    m = _METHODS.get(name.strip().lower())
    if m is None:
        raise ConfigError(
            f"unknown Shadowsocks AEAD method {name!r}; use one of {', '.join(AEAD_METHODS)}"
        )
    return m


def key_size(method: str) -> int:
    """The key (and salt) size in bytes of an AEAD-2017 ``method``; ConfigError if unknown."""
    return _method(method).key_len


def evp_bytes_to_key(password: bytes, key_len: int) -> bytes:
    """OpenSSL's ``EVP_BytesToKey`` with MD5, one iteration and no salt: the key part only.

    ``D_1 = MD5(password)``, ``D_i = MD5(D_{i-1} || password)``, key = first ``key_len`` bytes.
    """
    out = b""
    prev = b""
    while len(out) < key_len:
        prev = hashlib.md5(prev + password, usedforsecurity=False).digest()
        out += prev
    return out[:key_len]


def password_to_key(method: str, password: str) -> bytes:
    """The master key of ``method`` from a text password (UTF-8, then EVP_BytesToKey)."""
    if not password:
        raise ConfigError("Shadowsocks password is empty")
    return evp_bytes_to_key(password.encode("utf-8"), _method(method).key_len)


def hkdf_sha1(key: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF (RFC 5869) with HMAC-SHA1: extract with ``salt``, expand to ``length`` bytes."""
    prk = hmac.digest(salt, key, "sha1")
    out = b""
    block = b""
    i = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes((i,)), "sha1")
        out += block
        i += 1
    return out[:length]


def _master_key(m: _Method, password_or_key: str | bytes) -> bytes:
    if isinstance(password_or_key, str):
        return password_to_key(m.name, password_or_key)
    key = bytes(password_or_key)
    if len(key) != m.key_len:
        raise ConfigError(f"{m.name} needs a {m.key_len}-byte key; got {len(key)} bytes")
    return key


# -- the AEAD primitives (optional dependency, loaded lazily) ----------------------------------


class _Aead(Protocol):
    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...


class _Crypto:
    """The parts of ``cryptography`` the Shadowsocks codecs use, imported once on demand."""

    __slots__ = ("AESGCM", "ChaCha20Poly1305", "Cipher", "InvalidTag", "algorithms", "modes")

    def __init__(self) -> None:
        try:
            from cryptography.exceptions import InvalidTag
            from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
        except ImportError:
            raise ConfigError(
                f"Shadowsocks needs the 'cryptography' package: {_INSTALL_HINT}"
            ) from None
        self.AESGCM = AESGCM
        self.ChaCha20Poly1305 = ChaCha20Poly1305
        self.Cipher = Cipher
        self.algorithms = algorithms
        self.modes = modes
        self.InvalidTag: type[Exception] = InvalidTag


_crypto_cache: list[_Crypto] = []


def _crypto() -> _Crypto:
    """The lazily imported primitives; ConfigError naming the extra when they are missing."""
    if not _crypto_cache:
        _crypto_cache.append(_Crypto())
    return _crypto_cache[0]


def _new_aead(chacha: bool, key: bytes) -> _Aead:
    c = _crypto()
    if chacha:
        return c.ChaCha20Poly1305(key)
    return c.AESGCM(key)


def _subkey_aead(m: _Method, key: bytes, salt: bytes) -> _Aead:
    """The AEAD keyed with ``HKDF-SHA1(key, salt, "ss-subkey")``."""
    return _new_aead(m.chacha, hkdf_sha1(key, salt, _SUBKEY_INFO, m.key_len))


class _CounterAead:
    """An AEAD with the 12-byte little-endian nonce counter of SIP004/SIP022 TCP streams."""

    __slots__ = ("_aead", "_count", "_invalid_tag")

    def __init__(self, aead: _Aead) -> None:
        self._aead = aead
        self._count = 0
        self._invalid_tag = _crypto().InvalidTag

    def seal(self, plaintext: bytes) -> bytes:
        nonce = self._count.to_bytes(_NONCE_LEN, "little")
        self._count += 1
        return self._aead.encrypt(nonce, plaintext, None)

    def open(self, sealed: bytes) -> bytes:
        """Authenticate and decrypt; ShadowsocksError (nothing released) on a bad tag."""
        nonce = self._count.to_bytes(_NONCE_LEN, "little")
        self._count += 1
        try:
            return self._aead.decrypt(nonce, sealed, None)
        except self._invalid_tag:
            raise ShadowsocksError("Shadowsocks authentication failed (bad tag)") from None


# -- the salt filter ---------------------------------------------------------------------------


class SaltFilter:
    """A bounded set of recent salts: the ones this process sent and the response salts it
    accepted. The oldest entry is evicted when ``capacity`` is reached (a ring, so memory stays
    bounded: about 150 bytes per 32-byte salt)."""

    __slots__ = ("_salts", "capacity")

    def __init__(self, capacity: int = 16384) -> None:
        if capacity < 1:
            raise ConfigError(f"salt filter capacity must be at least 1, got {capacity}")
        #: The most salts remembered.
        self.capacity = capacity
        self._salts: OrderedDict[bytes, None] = OrderedDict()

    def __contains__(self, salt: object) -> bool:
        return salt in self._salts

    def __len__(self) -> int:
        return len(self._salts)

    def add(self, salt: bytes) -> None:
        """Remember ``salt`` (evicting the oldest when full)."""
        salts = self._salts
        if salt in salts:
            return
        salts[bytes(salt)] = None
        if len(salts) > self.capacity:
            salts.popitem(last=False)

    def clear(self) -> None:
        """Forget every salt."""
        self._salts.clear()


#: The filter every codec uses unless given its own; replace the module attribute to change it.
default_salt_filter: SaltFilter = SaltFilter()


def _filter(salt_filter: SaltFilter | None) -> SaltFilter:
    return salt_filter if salt_filter is not None else default_salt_filter


# -- addresses ---------------------------------------------------------------------------------


def encode_address(addr: Address) -> bytes:
    """The SOCKS5-style target address (ATYP, address, port; RFC 1928 §5) that starts a
    request stream or a UDP packet. ValueError for a domain name over 255 bytes."""
    return _encode_address(addr)


def decode_address(data: bytes | bytearray | memoryview) -> tuple[Address, int]:
    """Parse a SOCKS5-style address at the start of ``data``: (address, bytes consumed).

    Raises:
        ShadowsocksError: truncated, unknown ATYP, or an empty or non-UTF-8 domain name.
    """
    mv = memoryview(data)
    n = len(mv)
    if n < 1:
        raise ShadowsocksError("address header truncated")
    atyp = mv[0]
    if atyp == _ATYP_IPV4:
        end = 7
        if n < end:
            raise ShadowsocksError("address header truncated")
        host = str(ipaddress.IPv4Address(bytes(mv[1:5])))
    elif atyp == _ATYP_IPV6:
        end = 19
        if n < end:
            raise ShadowsocksError("address header truncated")
        host = str(ipaddress.IPv6Address(bytes(mv[1:17])))
    elif atyp == _ATYP_DOMAIN:
        if n < 2:
            raise ShadowsocksError("address header truncated")
        end = 4 + mv[1]
        if n < end:
            raise ShadowsocksError("address header truncated")
        port: int = _PORT.unpack_from(mv, end - 2)[0]
        try:
            return Address.from_host(bytes(mv[2 : end - 2]).decode("utf-8"), port), end
        except ValueError:  # empty, or not UTF-8
            raise ShadowsocksError("address header has an unusable domain name") from None
    else:
        raise ShadowsocksError(f"address header has unknown type {atyp:#04x}")
    return Address(host, _PORT.unpack_from(mv, end - 2)[0]), end


# -- TCP ---------------------------------------------------------------------------------------


class AeadStreamEncryptor:
    """One direction of an AEAD-2017 TCP stream, sealing: salt first, then chunks of at most
    :data:`MAX_PAYLOAD` bytes. The salt is recorded in the salt filter at construction."""

    __slots__ = ("_aead", "_pending_salt", "method", "salt")

    def __init__(
        self,
        method: str,
        key: bytes,
        random: Callable[[int], bytes],
        *,
        salt_filter: SaltFilter | None = None,
    ) -> None:
        m = _method(method)
        key = _master_key(m, key)
        salt = bytes(random(m.salt_len))
        if len(salt) != m.salt_len:
            raise ValueError(f"random({m.salt_len}) returned {len(salt)} bytes")
        #: The canonical method name.
        self.method = m.name
        #: This stream's salt (sent before the first chunk).
        self.salt = salt
        self._aead = _CounterAead(_subkey_aead(m, key, salt))
        self._pending_salt = salt
        _filter(salt_filter).add(salt)

    def encrypt(self, data: bytes) -> bytes:
        """Seal ``data`` into chunks; the first non-empty output starts with the salt.

        ``b""`` gives ``b""`` (the salt waits for data: a lone salt is a fixed-size write).
        """
        if not data:
            return b""
        seal = self._aead.seal
        parts = [self._pending_salt] if self._pending_salt else []
        self._pending_salt = b""
        mv = memoryview(data)
        for i in range(0, len(mv), MAX_PAYLOAD):
            piece = mv[i : i + MAX_PAYLOAD]
            parts.append(seal(_LENGTH.pack(len(piece))))
            parts.append(seal(bytes(piece)))
        return b"".join(parts)


class AeadStreamDecryptor:
    """One direction of an AEAD-2017 TCP stream, opening: fed bytes in any split, returns the
    plaintext of every chunk that is complete and authenticated.

    The response salt is rejected when the salt filter holds it (our own request salt
    reflected, or a replayed response); it is added to the filter once the first chunk
    authenticates, so forged salts cannot flush the filter.
    """

    __slots__ = (
        "_aead",
        "_buf",
        "_error",
        "_expect_len",
        "_filter",
        "_key",
        "_m",
        "_need",
        "_salt_added",
        "salt",
    )

    def __init__(self, method: str, key: bytes, *, salt_filter: SaltFilter | None = None) -> None:
        m = _method(method)
        self._m = m
        self._key = _master_key(m, key)
        _crypto()  # fail early (ConfigError) when the dependency is missing
        self._filter = _filter(salt_filter)
        self._buf = bytearray()
        self._aead: _CounterAead | None = None
        self._need = _LEN_CHUNK
        self._expect_len = True
        self._error: str | None = None
        self._salt_added = False
        #: The peer's salt, once received.
        self.salt: bytes | None = None

    @property
    def failed(self) -> bool:
        """True once the stream failed; every later call raises."""
        return self._error is not None

    @property
    def pending(self) -> int:
        """Bytes held back: an incomplete salt or chunk."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        """Feed ciphertext; return the plaintext of the chunks it completes (maybe ``b""``).

        Raises:
            ShadowsocksError: a bad tag, a length over 0x3FFF or a replayed/reflected salt. The
                decryptor is then failed: this and every later call raise.
        """
        if self._error is not None:
            raise ShadowsocksError(self._error)
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        n = len(buf)
        try:
            salt = self.salt or b""
            if self._aead is None:
                salt_len = self._m.salt_len
                if n < salt_len:
                    return b""
                salt = bytes(buf[:salt_len])
                if salt in self._filter:
                    raise ShadowsocksError("Shadowsocks response salt was seen before (replay)")
                self.salt = salt
                self._aead = _CounterAead(_subkey_aead(self._m, self._key, salt))
                pos = salt_len
            aead = self._aead
            while n - pos >= self._need:
                end = pos + self._need
                plain = aead.open(bytes(buf[pos:end]))
                pos = end
                if self._expect_len:
                    length = (plain[0] << 8) | plain[1]
                    if length > MAX_PAYLOAD:
                        raise ShadowsocksError(
                            f"Shadowsocks chunk length {length:#06x} exceeds {MAX_PAYLOAD:#06x}"
                        )
                    if not self._salt_added:  # the first chunk authenticated: a genuine salt
                        self._salt_added = True
                        self._filter.add(salt)
                    self._need = length + _TAG
                    self._expect_len = False
                else:
                    out.append(plain)
                    self._need = _LEN_CHUNK
                    self._expect_len = True
        except ShadowsocksError as exc:
            self._error = str(exc)
            buf.clear()
            raise
        del buf[:pos]
        return b"".join(out)

    def feed_eof(self) -> None:
        """The peer closed; ShadowsocksError if it left an incomplete salt or chunk behind."""
        if self._error is not None:
            raise ShadowsocksError(self._error)
        if self._buf:
            self._error = f"Shadowsocks stream truncated ({len(self._buf)} bytes of a chunk)"
            self._buf.clear()
            raise ShadowsocksError(self._error)


class AeadTcpSession:
    """The client side of one AEAD-2017 TCP connection to ``dst``.

    ``first_bytes(payload)`` is the first write (salt + address header + initial payload,
    sealed); then ``encrypt`` the app's data and ``decrypt`` the server's bytes::

        ss = AeadTcpSession("aes-256-gcm", "password", Address.from_host("example.com", 443),
                            os.urandom)
        sock.sendall(ss.first_bytes(first_app_data))   # pass the app's first bytes if any:
        ...                                            # a write of a fixed size stands out
        app.write(ss.decrypt(sock.recv(65536)))

    ``password_or_key`` is a text password (EVP_BytesToKey) or the raw key bytes.
    """

    __slots__ = ("_decryptor", "_encryptor", "_header", "_started", "dst", "method")

    def __init__(
        self,
        method: str,
        password_or_key: str | bytes,
        dst: Address,
        random: Callable[[int], bytes],
        *,
        salt_filter: SaltFilter | None = None,
    ) -> None:
        m = _method(method)
        key = _master_key(m, password_or_key)
        #: The canonical method name.
        self.method = m.name
        #: The target the server connects to.
        self.dst = dst
        self._header = encode_address(dst)
        self._encryptor = AeadStreamEncryptor(m.name, key, random, salt_filter=salt_filter)
        self._decryptor = AeadStreamDecryptor(m.name, key, salt_filter=salt_filter)
        self._started = False

    @property
    def decryptor(self) -> AeadStreamDecryptor:
        """The response stream's decryptor (for ``failed``/``pending``)."""
        return self._decryptor

    def first_bytes(self, payload: bytes = b"") -> bytes:
        """The first write: salt, then the sealed address header followed by ``payload``."""
        if self._started:
            raise FlowStateError("first_bytes() already called for this Shadowsocks session")
        self._started = True
        return self._encryptor.encrypt(self._header + payload)

    def encrypt(self, data: bytes) -> bytes:
        """Seal application data for the server (after :meth:`first_bytes`)."""
        if not self._started:
            raise FlowStateError("call first_bytes() before encrypt()")
        return self._encryptor.encrypt(data)

    def decrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """Feed the server's bytes; return the authenticated plaintext now complete."""
        return self._decryptor.feed(data)

    def feed_eof(self) -> None:
        """The server closed; ShadowsocksError if it cut a chunk short."""
        self._decryptor.feed_eof()


# -- UDP ---------------------------------------------------------------------------------------


def encrypt_packet(
    method: str, key: bytes, random: Callable[[int], bytes], payload: bytes
) -> bytes:
    """One AEAD-2017 UDP packet: a fresh salt, then ``payload`` sealed with the zero nonce.

    ``payload`` is what the protocol carries: :func:`encode_address` of the target followed by
    the datagram. ``key`` is the master key (see :func:`password_to_key`).
    """
    m = _method(method)
    key = _master_key(m, key)
    salt = bytes(random(m.salt_len))
    if len(salt) != m.salt_len:
        raise ValueError(f"random({m.salt_len}) returned {len(salt)} bytes")
    aead = _subkey_aead(m, key, salt)
    return salt + aead.encrypt(_ZERO_NONCE, payload, None)


def decrypt_packet(method: str, key: bytes, data: bytes | bytearray | memoryview) -> bytes:
    """Open one AEAD-2017 UDP packet; returns the plaintext (address header + datagram).

    Raises:
        ShadowsocksError: shorter than salt + tag, or the tag does not authenticate.
    """
    m = _method(method)
    key = _master_key(m, key)
    raw = bytes(data)
    if len(raw) < m.salt_len + _TAG:
        raise ShadowsocksError(f"Shadowsocks UDP packet too short ({len(raw)} bytes)")
    salt = raw[: m.salt_len]
    aead = _subkey_aead(m, key, salt)
    try:
        return aead.decrypt(_ZERO_NONCE, raw[m.salt_len :], None)
    except _crypto().InvalidTag:
        raise ShadowsocksError("Shadowsocks UDP packet failed authentication") from None
