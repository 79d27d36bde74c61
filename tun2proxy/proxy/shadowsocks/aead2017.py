"""Shadowsocks AEAD (2017) client framing: SIP004 as amended by SIP007, sans-I/O.

Pure: no I/O, no clock, no randomness of its own — salts come from the ``random`` callable the
caller passes (``os.urandom``). Keys come from :mod:`.keys`, the AEAD from :mod:`.aead`
(optional ``cryptography``: without it the constructors raise
:class:`~tun2proxy.errors.ConfigError`), the chunk reader from :mod:`.chunks`, the salt filter
from :mod:`.replay`.

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
  Codecs share :data:`.replay.default_salt_filter` unless given their own; replace it with
  ``shadowsocks.replay.default_salt_filter = SaltFilter(...)`` (looked up at construction).
- A declared chunk length above 0x3FFF fails at once; the decryptor never buffers more than one
  chunk beyond what it has returned.

Not implemented: the stream ciphers of the original protocol (rc4-md5, aes-*-cfb, ...), which
are insecure, and aes-192-gcm (rarely deployed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from ...errors import FlowStateError
from ..address import Address
from .address import encode_address
from .aead import TAG, ZERO_NONCE, CounterAead, crypto, subkey_aead
from .chunks import ChunkStreamDecoder, seal_chunks
from .errors import ShadowsocksError
from .keys import master_key, method_2017
from .replay import SaltFilter, salt_filter_or_default

__all__ = [
    "MAX_PAYLOAD",
    "AeadStreamDecryptor",
    "AeadStreamEncryptor",
    "AeadTcpSession",
    "decrypt_packet",
    "encrypt_packet",
]

#: Largest payload of one TCP chunk (SIP004: the two high bits of the length are reserved).
MAX_PAYLOAD: Final = 0x3FFF


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
        m = method_2017(method)
        key = master_key(m, key)
        salt = bytes(random(m.salt_len))
        if len(salt) != m.salt_len:
            raise ValueError(f"random({m.salt_len}) returned {len(salt)} bytes")
        #: The canonical method name.
        self.method = m.name
        #: This stream's salt (sent before the first chunk).
        self.salt = salt
        self._aead = CounterAead(subkey_aead(m, key, salt))
        self._pending_salt = salt
        salt_filter_or_default(salt_filter).add(salt)

    def encrypt(self, data: bytes) -> bytes:
        """Seal ``data`` into chunks; the first non-empty output starts with the salt.

        ``b""`` gives ``b""`` (the salt waits for data: a lone salt is a fixed-size write).
        """
        if not data:
            return b""
        parts = [self._pending_salt] if self._pending_salt else []
        self._pending_salt = b""
        seal_chunks(self._aead, data, MAX_PAYLOAD, parts)
        return b"".join(parts)


class AeadStreamDecryptor(ChunkStreamDecoder):
    """One direction of an AEAD-2017 TCP stream, opening: fed bytes in any split, returns the
    plaintext of every chunk that is complete and authenticated (:meth:`feed`).

    The response salt is rejected when the salt filter holds it (our own request salt
    reflected, or a replayed response); it is added to the filter once the first chunk
    authenticates, so forged salts cannot flush the filter.
    """

    __slots__ = ("_filter", "_key", "_m", "salt")

    def __init__(self, method: str, key: bytes, *, salt_filter: SaltFilter | None = None) -> None:
        m = method_2017(method)
        self._m = m
        self._key = master_key(m, key)
        crypto()  # fail early (ConfigError) when the dependency is missing
        self._filter = salt_filter_or_default(salt_filter)
        #: The peer's salt, once received.
        self.salt: bytes | None = None
        super().__init__("Shadowsocks", m.salt_len, MAX_PAYLOAD)

    def _read_prelude(self, raw: bytes) -> tuple[CounterAead, int | None]:
        if raw in self._filter:
            raise ShadowsocksError("Shadowsocks response salt was seen before (replay)")
        self.salt = raw
        return CounterAead(subkey_aead(self._m, self._key, raw)), None

    def _first_length_opened(self) -> None:
        assert self.salt is not None
        self._filter.add(self.salt)  # the first chunk authenticated: a genuine salt


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
        m = method_2017(method)
        key = master_key(m, password_or_key)
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

    ``payload`` is what the protocol carries: :func:`~.address.encode_address` of the target
    followed by the datagram. ``key`` is the master key (see :func:`~.keys.password_to_key`).
    """
    m = method_2017(method)
    key = master_key(m, key)
    salt = bytes(random(m.salt_len))
    if len(salt) != m.salt_len:
        raise ValueError(f"random({m.salt_len}) returned {len(salt)} bytes")
    aead = subkey_aead(m, key, salt)
    return salt + aead.encrypt(ZERO_NONCE, payload, None)


def decrypt_packet(method: str, key: bytes, data: bytes | bytearray | memoryview) -> bytes:
    """Open one AEAD-2017 UDP packet; returns the plaintext (address header + datagram).

    Raises:
        ShadowsocksError: shorter than salt + tag, or the tag does not authenticate.
    """
    m = method_2017(method)
    key = master_key(m, key)
    raw = bytes(data)
    if len(raw) < m.salt_len + TAG:
        raise ShadowsocksError(f"Shadowsocks UDP packet too short ({len(raw)} bytes)")
    salt = raw[: m.salt_len]
    aead = subkey_aead(m, key, salt)
    try:
        return aead.decrypt(ZERO_NONCE, raw[m.salt_len :], None)
    except crypto().InvalidTag:
        raise ShadowsocksError("Shadowsocks UDP packet failed authentication") from None
