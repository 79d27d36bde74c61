"""Out-of-order reassembly for one connection's receive side, bounded in bytes and ranges.

Pure: no I/O. Sequence numbers here are unwrapped integers (see :mod:`tun2proxy.wire.seq`).
Ranges are kept sorted and merged; where a retransmission overlaps bytes already held, the
held bytes are kept (RFC 9293 allows either; keeping the first defeats overlap-rewrite
tricks). The most recently changed ranges are remembered so that SACK blocks can be ordered
as RFC 2018 §4 asks.
"""

from __future__ import annotations

__all__ = ["Assembler", "Range"]


class Range:
    """One contiguous run of held bytes: ``data`` covers sequence ``start`` to ``end``."""

    __slots__ = ("data", "end", "start")

    def __init__(self, start: int, data: bytearray) -> None:
        self.start = start
        self.end = start + len(data)
        self.data = data

    def __repr__(self) -> str:
        return f"Range({self.start}, {self.end})"


class Assembler:
    """Holds segments that arrived beyond RCV.NXT until the gap before them fills."""

    __slots__ = ("_recent", "fin_seq", "max_ranges", "nbytes", "ranges")

    def __init__(self, max_ranges: int = 64) -> None:
        #: Sorted, disjoint, non-adjacent ranges.
        self.ranges: list[Range] = []
        self.max_ranges = max_ranges
        self.nbytes = 0
        #: Ranges in most-recently-updated-first order (for SACK), at most 8.
        self._recent: list[Range] = []
        #: Unwrapped sequence number of an out-of-order FIN, if one arrived.
        self.fin_seq: int | None = None

    def __len__(self) -> int:
        return len(self.ranges)

    def add(self, start: int, data: bytes | bytearray | memoryview) -> bool:
        """Store ``data`` beginning at sequence ``start``; False if the range cap refused it."""
        n = len(data)
        if not n:
            return True
        end = start + n
        ranges = self.ranges
        count = len(ranges)
        lo = 0
        while lo < count and ranges[lo].end < start:
            lo += 1
        hi = lo
        while hi < count and ranges[hi].start <= end:
            hi += 1
        if lo == hi:
            if count >= self.max_ranges:
                return False
            r = Range(start, bytearray(data))
            ranges.insert(lo, r)
            self.nbytes += n
            self._touch(r, ())
            return True
        touched = ranges[lo:hi]
        first = touched[0]
        old = 0
        for r in touched:
            old += r.end - r.start
        with memoryview(data) as view:
            if start < first.start:
                # New bytes in front of the first range: a new buffer (rare).
                buf = bytearray(view[: first.start - start])
                buf += first.data
                first.data = buf
                first.start = start
            # Extend the first range in place: append the new bytes in each gap and the
            # following ranges (appending to a bytearray is amortised O(appended)).
            buf = first.data
            pos = first.end
            for r in touched[1:]:
                buf += view[pos - start : r.start - start]
                buf += r.data
                pos = r.end
            if end > pos:
                buf += view[pos - start : end - start]
                pos = end
            first.end = pos
        if hi - lo > 1:
            del ranges[lo + 1 : hi]
        self.nbytes += (first.end - first.start) - old
        self._touch(first, touched[1:])
        return True

    def _touch(self, r: Range, replaced: list[Range] | tuple[()]) -> None:
        # Each range appears once, most recently changed first (RFC 2018 §4: no repeats).
        recent = self._recent
        recent[:] = [x for x in recent if x is not r and x not in replaced]
        recent.insert(0, r)
        if len(recent) > 8:
            del recent[8:]

    def pop_ready(self, rcv_nxt: int) -> bytearray | None:
        """Remove and return the bytes that continue ``rcv_nxt`` (None while the gap remains).

        Bytes of a range that lie below ``rcv_nxt`` (already received) are discarded.
        """
        ranges = self.ranges
        out: bytearray | None = None
        while ranges and ranges[0].start <= rcv_nxt:
            r = ranges.pop(0)
            self.nbytes -= r.end - r.start
            if r in self._recent:
                self._recent.remove(r)
            if r.end > rcv_nxt:
                skip = rcv_nxt - r.start
                chunk = r.data[skip:] if skip else r.data
                if out is None:
                    out = chunk
                else:
                    out += chunk
                rcv_nxt = r.end
        return out

    def sack_blocks(self, limit: int) -> list[tuple[int, int]]:
        """Up to ``limit`` ``(start, end)`` blocks, the most recently updated first."""
        blocks = [(r.start, r.end) for r in self._recent[:limit]]
        if len(blocks) < limit:
            for r in reversed(self.ranges):
                if r not in self._recent:
                    blocks.append((r.start, r.end))
                    if len(blocks) >= limit:
                        break
        return blocks

    def clear(self) -> None:
        """Forget everything (connection closing)."""
        self.ranges.clear()
        self._recent.clear()
        self.nbytes = 0
        self.fin_seq = None
