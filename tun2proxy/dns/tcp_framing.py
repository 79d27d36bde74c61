"""DNS over TCP framing (RFC 1035 section 4.2.2, RFC 7766 section 8): a 2-byte length prefix.

Pure: no I/O. Used by ``--dns over-tcp`` (queries sent to the real resolver through the
upstream) and for queries the applications themselves send over TCP. The framing is not
DNS parsing: the messages inside are handled by dnslib elsewhere.
"""

from __future__ import annotations

__all__ = ["MAX_MESSAGE", "TcpDnsReader", "frame"]

MAX_MESSAGE = 65535
"""The largest message a 2-byte length prefix can carry."""

_PREFIX = 2


def frame(message: bytes | bytearray | memoryview) -> bytes:
    """``message`` with its 2-byte big-endian length in front.

    Raises :class:`ValueError` for a message longer than 65535 bytes (API misuse).
    """
    n = len(message)
    if n > MAX_MESSAGE:
        raise ValueError(f"a DNS message over TCP is at most 65535 bytes, not {n}")
    return n.to_bytes(_PREFIX, "big") + bytes(message)


class TcpDnsReader:
    """Splits a TCP byte stream into DNS messages.

    Args:
        max_message: longest message kept (1 to 65535). A longer one is skipped without
            being buffered (the stream stays in step) and counted in :attr:`oversize`.

    Only a partial message is ever kept between calls, so the buffer holds at most
    ``max_message + 2`` bytes after :meth:`feed` returns. Zero-length frames carry no
    message: they are skipped and counted in :attr:`empty`.
    """

    __slots__ = ("_buf", "_max", "_skip", "empty", "oversize")

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        if isinstance(max_message, bool) or not isinstance(max_message, int):
            raise TypeError("max_message must be an integer")
        if not 1 <= max_message <= MAX_MESSAGE:
            raise ValueError("max_message must be between 1 and 65535")
        self._max = max_message
        self._buf = bytearray()
        self._skip = 0
        self.empty = 0
        self.oversize = 0

    @property
    def pending(self) -> int:
        """Bytes held for a message not complete yet (or still to skip)."""
        return len(self._buf) + self._skip

    @property
    def buffered(self) -> int:
        """Bytes held in memory (at most ``max_message + 2`` between calls)."""
        return len(self._buf)

    def at_boundary(self) -> bool:
        """Whether the stream ended cleanly between messages (check it at EOF)."""
        return not self._buf and not self._skip

    def feed(self, data: bytes) -> list[bytes]:
        """Take the next bytes of the stream; return every message completed by them."""
        if not data:
            return []
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return []
            data = data[self._skip :]
            self._skip = 0
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        limit = self._max
        while end - pos >= _PREFIX:
            n = (buf[pos] << 8) | buf[pos + 1]
            if n == 0:
                self.empty += 1
                pos += _PREFIX
                continue
            if n > limit:
                self.oversize += 1
                pos += _PREFIX
                available = end - pos
                if available < n:
                    self._skip = n - available
                    pos = end
                    break
                pos += n
                continue
            if end - pos - _PREFIX < n:
                break
            start = pos + _PREFIX
            out.append(bytes(buf[start : start + n]))
            pos = start + n
        del buf[:pos]
        return out
