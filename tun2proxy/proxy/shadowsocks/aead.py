"""The AEAD primitives of both Shadowsocks generations: AES-GCM, ChaCha20-Poly1305, the
nonce-counter AEAD of TCP streams and XChaCha20-Poly1305 (2022 UDP).

Pure: no I/O. The primitives come from the optional ``cryptography`` package, imported once
when a codec is first built (``pip install 'tun2proxy[shadowsocks]'``); without it
:func:`crypto` raises :class:`~tun2proxy.errors.ConfigError`.
"""

from __future__ import annotations

import struct
from typing import Final, Protocol

from ...errors import ConfigError
from .errors import ShadowsocksError
from .keys import INSTALL_HINT, Method, hkdf_sha1

__all__ = [
    "NONCE_LEN",
    "TAG",
    "ZERO_NONCE",
    "Aead",
    "CounterAead",
    "Crypto",
    "crypto",
    "hchacha20",
    "new_aead",
    "subkey_aead",
    "xchacha_open",
    "xchacha_seal",
]

#: The tag every AEAD here appends.
TAG: Final = 16
#: The nonce size of AES-GCM and ChaCha20-Poly1305.
NONCE_LEN: Final = 12
#: The nonce of AEAD-2017 UDP packets (one fresh subkey each).
ZERO_NONCE: Final = bytes(NONCE_LEN)

_SUBKEY_INFO: Final = b"ss-subkey"


class Aead(Protocol):
    """What the codecs use of ``AESGCM`` and ``ChaCha20Poly1305``."""

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        """Seal ``data``: ciphertext followed by the tag."""
        ...

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        """Open ``data``; raises ``InvalidTag`` when it does not authenticate."""
        ...


class Crypto:
    """The parts of ``cryptography`` the Shadowsocks codecs use, imported once on demand."""

    __slots__ = ("AESGCM", "ChaCha20Poly1305", "Cipher", "InvalidTag", "algorithms", "modes")

    def __init__(self) -> None:
        try:
            from cryptography.exceptions import InvalidTag
            from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
        except ImportError:
            raise ConfigError(
                f"Shadowsocks needs the 'cryptography' package: {INSTALL_HINT}"
            ) from None
        self.AESGCM = AESGCM
        self.ChaCha20Poly1305 = ChaCha20Poly1305
        self.Cipher = Cipher
        self.algorithms = algorithms
        self.modes = modes
        self.InvalidTag: type[Exception] = InvalidTag


_crypto_cache: list[Crypto] = []


def crypto() -> Crypto:
    """The lazily imported primitives; ConfigError naming the extra when they are missing."""
    if not _crypto_cache:
        _crypto_cache.append(Crypto())
    return _crypto_cache[0]


def new_aead(chacha: bool, key: bytes) -> Aead:
    """ChaCha20-Poly1305 or AES-GCM keyed with ``key``."""
    c = crypto()
    if chacha:
        return c.ChaCha20Poly1305(key)
    return c.AESGCM(key)


def subkey_aead(m: Method, key: bytes, salt: bytes) -> Aead:
    """The AEAD-2017 AEAD keyed with ``HKDF-SHA1(key, salt, "ss-subkey")``."""
    return new_aead(m.chacha, hkdf_sha1(key, salt, _SUBKEY_INFO, m.key_len))


class CounterAead:
    """An AEAD with the 12-byte little-endian nonce counter of SIP004/SIP022 TCP streams."""

    __slots__ = ("_aead", "_count", "_invalid_tag")

    def __init__(self, aead: Aead) -> None:
        self._aead = aead
        self._count = 0
        self._invalid_tag = crypto().InvalidTag

    def seal(self, plaintext: bytes) -> bytes:
        """Seal with the next nonce."""
        nonce = self._count.to_bytes(NONCE_LEN, "little")
        self._count += 1
        return self._aead.encrypt(nonce, plaintext, None)

    def open(self, sealed: bytes) -> bytes:
        """Authenticate and decrypt; ShadowsocksError (nothing released) on a bad tag."""
        nonce = self._count.to_bytes(NONCE_LEN, "little")
        self._count += 1
        try:
            return self._aead.decrypt(nonce, sealed, None)
        except self._invalid_tag:
            raise ShadowsocksError("Shadowsocks authentication failed (bad tag)") from None


# -- XChaCha20-Poly1305 (2022 UDP with 2022-blake3-chacha20-poly1305) ---------------------------

_SIGMA: Final = struct.unpack("<4I", b"expand 32-byte k")
_WORDS16 = struct.Struct("<16I")
_WORDS4 = struct.Struct("<4I")
_WORDS8 = struct.Struct("<8I")


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha §2.2) from one ChaCha20 keystream block.

    OpenSSL's ChaCha20 takes a 16-byte IV that fills state words 12-15, exactly HChaCha20's
    input; a keystream block is ``permute(state) + state``, so HChaCha20's output (words 0-3
    and 12-15 of ``permute(state)``) is the keystream minus the initial words.
    """
    c = crypto()
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


def xchacha_seal(key: bytes, nonce24: bytes, plaintext: bytes, aad: bytes | None = None) -> bytes:
    """XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha §2.3) sealing; ciphertext + tag."""
    aead = new_aead(True, hchacha20(key, nonce24[:16]))
    return aead.encrypt(b"\x00\x00\x00\x00" + nonce24[16:], plaintext, aad)


def xchacha_open(key: bytes, nonce24: bytes, sealed: bytes, aad: bytes | None = None) -> bytes:
    """XChaCha20-Poly1305 opening; ShadowsocksError on a bad tag."""
    aead = new_aead(True, hchacha20(key, nonce24[:16]))
    try:
        return aead.decrypt(b"\x00\x00\x00\x00" + nonce24[16:], sealed, aad)
    except crypto().InvalidTag:
        raise ShadowsocksError("Shadowsocks 2022 UDP packet failed authentication") from None
