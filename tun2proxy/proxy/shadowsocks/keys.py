"""Shadowsocks methods and key derivation: AEAD-2017 (EVP_BytesToKey, HKDF-SHA1) and 2022
(base64 PSKs, BLAKE3 session subkeys).

Pure: no I/O. BLAKE3 comes from the optional ``blake3`` package, imported where a 2022
subkey is derived (``pip install 'tun2proxy[shadowsocks]'``); without it that raises
:class:`~tun2proxy.errors.ConfigError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

from ...errors import ConfigError

__all__ = [
    "AEAD_METHODS",
    "INSTALL_HINT",
    "METHODS_2022",
    "Method",
    "blake3_derive_key",
    "decode_psk",
    "evp_bytes_to_key",
    "hkdf_sha1",
    "key_size",
    "master_key",
    "method_2017",
    "method_2022",
    "password_to_key",
    "session_subkey",
]

#: The AEAD-2017 methods implemented, by their Shadowsocks names (``chacha20-poly1305`` is
#: accepted as an alias of ``chacha20-ietf-poly1305``).
AEAD_METHODS: Final = ("aes-128-gcm", "aes-256-gcm", "chacha20-ietf-poly1305")
#: The SIP022 methods implemented.
METHODS_2022: Final = (
    "2022-blake3-aes-128-gcm",
    "2022-blake3-aes-256-gcm",
    "2022-blake3-chacha20-poly1305",
)
#: What to install for the optional dependencies.
INSTALL_HINT: Final = "pip install 'tun2proxy[shadowsocks]'"

_SUBKEY_CONTEXT_2022: Final = "shadowsocks 2022 session subkey"


@dataclass(frozen=True, slots=True)
class Method:
    """One method: its canonical name, key and salt sizes, and which AEAD it uses."""

    name: str
    key_len: int
    salt_len: int
    chacha: bool


_METHODS_2017: Final[dict[str, Method]] = {
    "aes-128-gcm": Method("aes-128-gcm", 16, 16, False),
    "aes-256-gcm": Method("aes-256-gcm", 32, 32, False),
    "chacha20-ietf-poly1305": Method("chacha20-ietf-poly1305", 32, 32, True),
    "chacha20-poly1305": Method("chacha20-ietf-poly1305", 32, 32, True),
}

_METHODS_2022: Final[dict[str, Method]] = {
    "2022-blake3-aes-128-gcm": Method("2022-blake3-aes-128-gcm", 16, 16, False),
    "2022-blake3-aes-256-gcm": Method("2022-blake3-aes-256-gcm", 32, 32, False),
    "2022-blake3-chacha20-poly1305": Method("2022-blake3-chacha20-poly1305", 32, 32, True),
}


def _lookup(table: dict[str, Method], name: str, what: str, known: tuple[str, ...]) -> Method:
    m = table.get(name.strip().lower())
    if m is None:
        raise ConfigError(f"unknown {what} method {name!r}; use one of {', '.join(known)}")
    return m


def method_2017(name: str) -> Method:
    """The AEAD-2017 method called ``name``; ConfigError if unknown."""
    return _lookup(_METHODS_2017, name, "Shadowsocks AEAD", AEAD_METHODS)


def method_2022(name: str) -> Method:
    """The Shadowsocks 2022 method called ``name``; ConfigError if unknown."""
    return _lookup(_METHODS_2022, name, "Shadowsocks 2022", METHODS_2022)


# -- AEAD-2017 ---------------------------------------------------------------------------------


def key_size(method: str) -> int:
    """The key (and salt) size in bytes of an AEAD-2017 ``method``; ConfigError if unknown."""
    return method_2017(method).key_len


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
    return evp_bytes_to_key(password.encode("utf-8"), method_2017(method).key_len)


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


def master_key(m: Method, password_or_key: str | bytes) -> bytes:
    """The AEAD-2017 master key: derived from a text password, or raw bytes of the right size."""
    if isinstance(password_or_key, str):
        return password_to_key(m.name, password_or_key)
    key = bytes(password_or_key)
    if len(key) != m.key_len:
        raise ConfigError(f"{m.name} needs a {m.key_len}-byte key; got {len(key)} bytes")
    return key


# -- 2022 --------------------------------------------------------------------------------------


def decode_psk(method: str, psk_b64: str) -> bytes:
    """The PSK of ``method`` from its base64 text (§2.1); ConfigError naming the problem.

    The key must decode (standard base64) to exactly the method's key size: 16 bytes for
    ``2022-blake3-aes-128-gcm``, 32 for the others (``openssl rand -base64 32``).
    """
    m = method_2022(method)
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


def blake3_derive_key(context: str, material: bytes, length: int) -> bytes:
    """BLAKE3 in key-derivation mode; ConfigError naming the extra without ``blake3``."""
    try:
        from blake3 import blake3
    except ImportError:
        raise ConfigError(f"Shadowsocks 2022 needs the 'blake3' package: {INSTALL_HINT}") from None
    return blake3(material, derive_key_context=context).digest(length)


def session_subkey(psk: bytes, salt: bytes) -> bytes:
    """``BLAKE3.derive_key("shadowsocks 2022 session subkey", psk || salt)``, ``len(psk)``
    bytes (§2.2). For UDP the salt is the 8-byte session id."""
    return blake3_derive_key(_SUBKEY_CONTEXT_2022, psk + salt, len(psk))
