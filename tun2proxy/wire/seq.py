"""Modulo-2**32 sequence-number arithmetic (RFC 9293 §3.4).

Pure: no I/O. Wire sequence numbers wrap; the TCP machine in :mod:`tun2proxy.tcp` works on
*unwrapped* integers (plain Python ints that keep growing past 2**32) and converts at the wire
boundary with :func:`unwrap` and ``value & SEQ_MASK``. Every comparison of raw wire values goes
through the helpers here.
"""

from __future__ import annotations

__all__ = [
    "SEQ_HALF",
    "SEQ_MASK",
    "SEQ_MOD",
    "in_window",
    "seq_add",
    "seq_diff",
    "seq_le",
    "seq_lt",
    "unwrap",
]

SEQ_MOD = 1 << 32
SEQ_MASK = SEQ_MOD - 1
SEQ_HALF = 1 << 31


def seq_add(a: int, n: int) -> int:
    """``a + n`` modulo 2**32."""
    return (a + n) & SEQ_MASK


def seq_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` in ``-2**31 .. 2**31 - 1`` (how far ``a`` is after ``b``)."""
    d = (a - b) & SEQ_MASK
    return d - SEQ_MOD if d >= SEQ_HALF else d


def seq_lt(a: int, b: int) -> bool:
    """``a`` comes strictly before ``b`` in sequence space."""
    return ((a - b) & SEQ_MASK) >= SEQ_HALF


def seq_le(a: int, b: int) -> bool:
    """``a`` comes before or equals ``b`` in sequence space."""
    return a == b or ((a - b) & SEQ_MASK) >= SEQ_HALF


def in_window(x: int, start: int, size: int) -> bool:
    """``start <= x < start + size`` in sequence space (``size`` at most 2**31)."""
    return ((x - start) & SEQ_MASK) < size


def unwrap(wire: int, reference: int) -> int:
    """The unwrapped integer congruent to ``wire`` that lies nearest to ``reference``.

    ``reference`` is an unwrapped value (any non-negative int); the result differs from it by
    less than 2**31, which is how far any acceptable segment can be from the connection state.
    """
    d = (wire - reference) & SEQ_MASK
    if d >= SEQ_HALF:
        d -= SEQ_MOD
    return reference + d
