"""The sender's SACK scoreboard: what the peer holds beyond SND.UNA (RFC 2018, RFC 6675 §4).

Pure: no I/O. The sender feeds it the SACK blocks of every ACK (:meth:`SackScoreboard.update`)
and trims it as SND.UNA advances (:meth:`~SackScoreboard.prune`). Loss recovery asks it three
questions of RFC 6675: below which sequence number unSACKed bytes count as lost
(:meth:`~SackScoreboard.loss_point`, IsLost), how many bytes in a range are not SACKed
(:meth:`~SackScoreboard.unsacked_below`, for SetPipe) and which hole to resend next
(:meth:`~SackScoreboard.next_hole`, NextSeg rule 1). After a retransmission timeout the
scoreboard is :meth:`~SackScoreboard.clear`\\ ed: the peer may renege (RFC 2018 §8).

Sequence numbers are unwrapped integers (:mod:`tun2proxy.wire.seq`); SACK blocks arrive as
wire values and are unwrapped relative to SND.UNA.
"""

from __future__ import annotations

from ..wire.seq import unwrap

__all__ = ["MAX_RANGES", "SackScoreboard"]

#: At most this many disjoint SACKed ranges are remembered; a block that would add one more
#: is ignored (forgetting SACK information only costs retransmissions).
MAX_RANGES = 64


class SackScoreboard:
    """Sorted, disjoint ``[start, end)`` ranges the peer reported as SACKed, and their size.

    Attributes:
        ranges: the ranges, lowest first, each a two-item list ``[start, end]``; all lie in
            (SND.UNA, SND.MAX] as of the last :meth:`update` / :meth:`prune`.
        nbytes: the total size of ``ranges`` (the bytes SACKed and not yet cumulatively ACKed).
    """

    __slots__ = ("nbytes", "ranges")

    def __init__(self) -> None:
        self.ranges: list[list[int]] = []
        self.nbytes = 0

    def __repr__(self) -> str:
        return f"SackScoreboard({self.ranges!r}, nbytes={self.nbytes})"

    def clear(self) -> None:
        """Forget everything (after a timeout, or when the connection ends)."""
        self.ranges = []
        self.nbytes = 0

    def update(self, blocks: tuple[tuple[int, int], ...], snd_una: int, snd_max: int) -> None:
        """Merge the SACK blocks of one ACK (wire values) into the scoreboard.

        Checklist O4: blocks that are reversed, start below SND.UNA (D-SACK) or end beyond
        SND.MAX are ignored.
        """
        ranges = self.ranges
        changed = False
        for left_w, right_w in blocks:
            left = unwrap(left_w, snd_una)
            right = unwrap(right_w, snd_una)
            if not snd_una < right <= snd_max or left >= right or left < snd_una:
                continue
            # Find the ranges the block touches: [i, j) overlap or abut it.
            i = 0
            n = len(ranges)
            while i < n and ranges[i][1] < left:
                i += 1
            j = i
            while j < n and ranges[j][0] <= right:
                j += 1
            if i == j:
                if n >= MAX_RANGES:
                    continue
                ranges.insert(i, [left, right])
            else:
                lo = min(ranges[i][0], left)
                hi = max(ranges[j - 1][1], right)
                ranges[i:j] = [[lo, hi]]
            changed = True
        if changed:
            self.nbytes = sum(r[1] - r[0] for r in ranges)

    def prune(self, snd_una: int) -> None:
        """SND.UNA advanced: drop what it covers and cut a range it ends inside."""
        ranges = self.ranges
        while ranges and ranges[0][1] <= snd_una:
            ranges.pop(0)
        if ranges and ranges[0][0] < snd_una:
            ranges[0][0] = snd_una
        self.nbytes = sum(r[1] - r[0] for r in ranges)

    def loss_point(self, snd_una: int, need: int) -> int:
        """RFC 6675 IsLost: unSACKed bytes below the returned sequence number count as lost.

        A byte is lost once at least ``need`` bytes (DupThresh segments) above it are SACKed;
        with less than that SACKed, nothing is (the result is ``snd_una``).
        """
        acc = 0
        for r in reversed(self.ranges):
            size = r[1] - r[0]
            if acc + size >= need:
                return r[1] - (need - acc)
            acc += size
        return snd_una

    def unsacked_below(self, snd_una: int, x: int) -> int:
        """Bytes in ``[snd_una, x)`` that are not SACKed."""
        if x <= snd_una:
            return 0
        n = x - snd_una
        for s, e in self.ranges:
            if s >= x:
                break
            n -= min(e, x) - s
        return n

    def next_hole(self, start: int, limit: int) -> tuple[int, int] | None:
        """The first unSACKed range at or after ``start`` and below ``limit``, or None.

        The range ends at the next SACKed byte or at ``limit``, whichever comes first.
        """
        ranges = self.ranges
        for s, e in ranges:
            if start < s:
                break
            if start < e:
                start = e
        if start >= limit:
            return None
        end = limit
        for s, _e in ranges:
            if s > start:
                end = min(end, s)
                break
        return start, end
