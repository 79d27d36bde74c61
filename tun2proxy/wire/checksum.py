"""Internet checksum (RFC 1071) and its incremental update (RFC 1624).

Pure: no I/O. The sum is computed as ``int.from_bytes(data, "big") % 0xFFFF``: because
``2**16 == 1 (mod 0xFFFF)`` the big integer is congruent to the sum of its 16-bit words, so one
C-level conversion replaces a Python loop. A *partial sum* in this module is always an ``int``
in ``range(0, 0xFFFF)`` (0 stands for one's-complement zero); partial sums add with ``+`` and
are folded again with ``% 0xFFFF``. Pieces that are summed separately must start at even
offsets of the checksummed area.
"""

from __future__ import annotations

__all__ = [
    "checksum",
    "finish",
    "ones_sum",
    "pseudo_header_sum",
    "update16",
    "verify",
]


def ones_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """Return the one's-complement sum of ``data`` plus ``initial``, folded to ``0..0xFFFE``."""
    n = int.from_bytes(data, "big")
    if len(data) & 1:
        n <<= 8
    return (n + initial) % 0xFFFF


def finish(partial: int) -> int:
    """Turn a partial sum into the checksum field value (the complement of the folded sum).

    A folded 0 is taken as one's-complement -0 (0xFFFF), which is what any sum that includes
    a non-zero pseudo-header or IP version byte is; see :func:`checksum` for all-zero data.
    """
    s = partial % 0xFFFF
    # A folded 0 on non-zero input is one's-complement 0xFFFF, whose complement is 0.
    return 0xFFFF - s if s else 0


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """Return the Internet checksum of ``data`` with ``initial`` (e.g. a pseudo-header sum).

    All-zero input sums to one's-complement +0, whose complement is 0xFFFF (RFC 1071); the
    fold cannot tell +0 from -0, so that case is recognised explicitly.
    """
    n = int.from_bytes(data, "big")
    if not n and not initial:
        return 0xFFFF
    if len(data) & 1:
        n <<= 8
    return finish(n + initial)


def verify(data: bytes | bytearray | memoryview, initial: int = 0) -> bool:
    """Return True when ``data`` (checksum field included) plus ``initial`` sums to -0."""
    n = int.from_bytes(data, "big")
    if len(data) & 1:
        n <<= 8
    return (n + initial) % 0xFFFF == 0 and bool(n or initial)


def pseudo_header_sum(src: bytes, dst: bytes, protocol: int, length: int) -> int:
    """Partial sum of the IPv4 (RFC 793) or IPv6 (RFC 8200 §8.1) pseudo-header.

    ``src`` and ``dst`` are packed addresses of 4 or 16 bytes; ``length`` is the upper-layer
    length. The result is the same for both versions because the layouts only differ in zero
    padding, which does not change a one's-complement sum. A non-zero pseudo-header whose
    sum folds to zero is returned as 0xFFFF (one's-complement -0), so that :func:`checksum`
    does not take it for the +0 of no input at all.
    """
    total = int.from_bytes(src, "big") + int.from_bytes(dst, "big") + protocol + length
    s = total % 0xFFFF
    return s if s or not total else 0xFFFF


def update16(old_checksum: int, old_word: int, new_word: int) -> int:
    """RFC 1624 eqn. 3: the checksum after one 16-bit word changed from old to new.

    ``HC' = ~(~HC + ~m + m')``; valid for any header the checksum covers.
    """
    s = (0xFFFF - old_checksum) + (0xFFFF - old_word) + new_word
    return finish(s)
