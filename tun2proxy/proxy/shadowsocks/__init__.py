"""Shadowsocks client codecs, sans-I/O: AEAD-2017 (SIP004/SIP007) and 2022 (SIP022).

Pure: no I/O, no clock, no randomness of their own (``random`` and ``clock`` are injected).
The package is split by responsibility:

- :mod:`.keys` — the methods and key derivation (EVP_BytesToKey, HKDF-SHA1, base64 PSKs,
  BLAKE3 session subkeys);
- :mod:`.aead` — the AEAD primitives (optional ``cryptography``), the nonce-counter AEAD of
  TCP streams, XChaCha20-Poly1305;
- :mod:`.chunks` — the chunk stream both generations share: one writer, one reader;
- :mod:`.replay` — the AEAD-2017 salt filter and the 2022 packet-id window;
- :mod:`.address` — the target address header (the SOCKS5 address codec);
- :mod:`.aead2017` and :mod:`.aead2022` — each generation's framing: TCP sessions, UDP
  packets.

Everything public is importable from here.
"""

from __future__ import annotations

from .address import decode_address, encode_address
from .aead2017 import (
    MAX_PAYLOAD,
    AeadStreamDecryptor,
    AeadStreamEncryptor,
    AeadTcpSession,
    decrypt_packet,
    encrypt_packet,
)
from .aead2022 import (
    MAX_PADDING,
    MAX_PAYLOAD_2022,
    MAX_TIME_DIFF,
    SERVER_SESSION_GRACE,
    Ss2022TcpSession,
    Ss2022UdpClient,
)
from .errors import ShadowsocksError
from .keys import (
    AEAD_METHODS,
    METHODS_2022,
    decode_psk,
    evp_bytes_to_key,
    hkdf_sha1,
    key_size,
    password_to_key,
    session_subkey,
)
from .replay import ReplayWindow, SaltFilter

__all__ = [
    "AEAD_METHODS",
    "MAX_PADDING",
    "MAX_PAYLOAD",
    "MAX_PAYLOAD_2022",
    "MAX_TIME_DIFF",
    "METHODS_2022",
    "SERVER_SESSION_GRACE",
    "AeadStreamDecryptor",
    "AeadStreamEncryptor",
    "AeadTcpSession",
    "ReplayWindow",
    "SaltFilter",
    "ShadowsocksError",
    "Ss2022TcpSession",
    "Ss2022UdpClient",
    "decode_address",
    "decode_psk",
    "decrypt_packet",
    "encode_address",
    "encrypt_packet",
    "evp_bytes_to_key",
    "hkdf_sha1",
    "key_size",
    "password_to_key",
    "session_subkey",
]
