"""The chunk stream of Shadowsocks TCP, AEAD-2017 (SIP004) and 2022 (SIP022) alike.

Pure: no I/O. After a prelude (the salt; for a 2022 response also its header) a stream is a
sequence of chunks, each a sealed 2-byte big-endian length followed by the sealed payload of
that length, under one nonce-counter AEAD::

    [len(2) + tag] [payload(len) + tag] [len(2) + tag] [payload(len) + tag] ...

:func:`seal_chunks` writes them; :class:`ChunkStreamDecoder` is the one reader, which each
framing extends with the reading of its prelude.
"""

from __future__ import annotations

import struct
from typing import Final

from .aead import TAG, CounterAead
from .errors import ShadowsocksError

__all__ = ["LEN_CHUNK", "ChunkStreamDecoder", "seal_chunks"]

#: The size of a sealed length chunk.
LEN_CHUNK: Final = 2 + TAG

_LENGTH = struct.Struct("!H")


def seal_chunks(
    aead: CounterAead, data: bytes | memoryview, max_payload: int, parts: list[bytes]
) -> None:
    """Append the sealed chunks of ``data`` to ``parts``: pieces of at most ``max_payload``
    bytes, each a sealed length and a sealed payload."""
    seal = aead.seal
    mv = memoryview(data)
    for i in range(0, len(mv), max_payload):
        piece = mv[i : i + max_payload]
        parts.append(seal(_LENGTH.pack(len(piece))))
        parts.append(seal(bytes(piece)))


class ChunkStreamDecoder:
    """One direction of a chunk stream, opening: fed bytes in any split, returns the plaintext
    of every chunk that is complete and authenticated.

    A subclass reads the prelude in :meth:`_read_prelude`. Any failure — a bad tag, a declared
    length over ``max_payload``, a prelude check — fails the stream for good: the call and
    every later one raise :class:`~.errors.ShadowsocksError`, and no byte of an
    unauthenticated chunk is returned (plaintext of earlier chunks decrypted in the same call
    is discarded with the error). At most one chunk beyond what was returned is buffered.
    """

    __slots__ = (
        "_aead",
        "_buf",
        "_error",
        "_expect_len",
        "_length_seen",
        "_max_payload",
        "_need",
        "_what",
    )

    def __init__(self, what: str, prelude_len: int, max_payload: int) -> None:
        self._what = what
        self._max_payload = max_payload
        self._buf = bytearray()
        self._aead: CounterAead | None = None
        self._need = prelude_len
        self._expect_len = True
        self._length_seen = False
        self._error: str | None = None

    @property
    def failed(self) -> bool:
        """True once the stream failed; every later call raises."""
        return self._error is not None

    @property
    def pending(self) -> int:
        """Bytes held back: an incomplete prelude or chunk."""
        return len(self._buf)

    def _read_prelude(self, raw: bytes) -> tuple[CounterAead, int | None]:
        """Check the prelude (``prelude_len`` bytes); return the stream's AEAD and, when the
        prelude declared it, the length of the first payload chunk (else a length chunk is
        next). Raise ShadowsocksError to fail the stream."""
        raise NotImplementedError

    def _first_length_opened(self) -> None:
        """The first length chunk authenticated and is valid (a hook; nothing by default)."""

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        """Feed ciphertext; return the plaintext of the chunks it completes (maybe ``b""``).

        Raises:
            ShadowsocksError: see the class; the stream is then failed.
        """
        if self._error is not None:
            raise ShadowsocksError(self._error)
        buf = self._buf
        buf += data
        n = len(buf)
        pos = 0
        out: list[bytes] = []
        try:
            aead = self._aead
            if aead is None:
                if n < self._need:
                    return b""
                pos = self._need
                aead, first = self._read_prelude(bytes(buf[:pos]))
                self._aead = aead
                if first is None:
                    self._need = LEN_CHUNK
                else:
                    self._need = first + TAG
                    self._expect_len = False
            while n - pos >= self._need:
                end = pos + self._need
                plain = aead.open(bytes(buf[pos:end]))
                pos = end
                if self._expect_len:
                    length = (plain[0] << 8) | plain[1]
                    if length > self._max_payload:
                        raise ShadowsocksError(
                            f"{self._what} chunk length {length:#06x} exceeds "
                            f"{self._max_payload:#06x}"
                        )
                    if not self._length_seen:
                        self._length_seen = True
                        self._first_length_opened()
                    self._need = length + TAG
                    self._expect_len = False
                else:
                    out.append(plain)
                    self._need = LEN_CHUNK
                    self._expect_len = True
        except ShadowsocksError as exc:
            self._error = str(exc)
            buf.clear()
            raise
        del buf[:pos]
        return b"".join(out)

    def feed_eof(self) -> None:
        """The peer closed; ShadowsocksError if it left an incomplete prelude or chunk behind."""
        if self._error is not None:
            raise ShadowsocksError(self._error)
        if self._buf:
            self._error = f"{self._what} stream truncated ({len(self._buf)} bytes of a chunk)"
            self._buf.clear()
            raise ShadowsocksError(self._error)
