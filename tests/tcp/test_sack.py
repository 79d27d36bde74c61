"""The SACK scoreboard on its own (RFC 2018, RFC 6675 §4): merging, pruning, IsLost, holes."""

from __future__ import annotations

import pytest

from tun2proxy.tcp.sack import MAX_RANGES, SackScoreboard
from tun2proxy.wire.seq import SEQ_MASK

UNA = 1_000_000
MAX = UNA + 100_000


def _board(*blocks: tuple[int, int], una: int = UNA, snd_max: int = MAX) -> SackScoreboard:
    sb = SackScoreboard()
    sb.update(tuple((a & SEQ_MASK, b & SEQ_MASK) for a, b in blocks), una, snd_max)
    return sb


def test_empty() -> None:
    sb = SackScoreboard()
    assert sb.ranges == [] and sb.nbytes == 0
    assert sb.loss_point(UNA, 3000) == UNA
    assert sb.unsacked_below(UNA, UNA + 500) == 500
    assert sb.next_hole(UNA, UNA + 800) == (UNA, UNA + 800)


def test_blocks_are_kept_sorted_and_disjoint() -> None:
    sb = _board((UNA + 5000, UNA + 6000), (UNA + 1000, UNA + 2000))
    assert sb.ranges == [[UNA + 1000, UNA + 2000], [UNA + 5000, UNA + 6000]]
    assert sb.nbytes == 2000


@pytest.mark.parametrize(
    ("block", "merged"),
    [
        ((UNA + 2000, UNA + 3000), [[UNA + 1000, UNA + 3000]]),  # abuts on the right
        ((UNA + 500, UNA + 1000), [[UNA + 500, UNA + 2000]]),  # abuts on the left
        ((UNA + 1500, UNA + 1800), [[UNA + 1000, UNA + 2000]]),  # inside
        ((UNA + 800, UNA + 2500), [[UNA + 800, UNA + 2500]]),  # covers
    ],
)
def test_overlapping_and_adjacent_blocks_merge(
    block: tuple[int, int], merged: list[list[int]]
) -> None:
    sb = _board((UNA + 1000, UNA + 2000))
    sb.update((block,), UNA, MAX)
    assert sb.ranges == merged
    assert sb.nbytes == sum(e - s for s, e in merged)


def test_a_block_bridging_two_ranges_joins_them() -> None:
    sb = _board((UNA + 1000, UNA + 2000), (UNA + 3000, UNA + 4000), (UNA + 6000, UNA + 7000))
    sb.update(((UNA + 1500, UNA + 3500),), UNA, MAX)
    assert sb.ranges == [[UNA + 1000, UNA + 4000], [UNA + 6000, UNA + 7000]]
    assert sb.nbytes == 4000


@pytest.mark.parametrize(
    "block",
    [
        (UNA + 2000, UNA + 1000),  # reversed
        (UNA + 1000, UNA + 1000),  # empty
        (UNA - 500, UNA + 1000),  # starts below SND.UNA (D-SACK)
        (UNA - 2000, UNA - 1000),  # entirely below SND.UNA
        (MAX - 100, MAX + 1),  # beyond SND.MAX
    ],
)
def test_invalid_blocks_are_ignored(block: tuple[int, int]) -> None:
    sb = _board(block)
    assert sb.ranges == [] and sb.nbytes == 0


def test_blocks_are_unwrapped_relative_to_snd_una_across_the_wrap() -> None:
    una = (1 << 32) - 1000  # unwrapped, just below the wrap
    sb = SackScoreboard()
    # wire values: the block starts before the wrap and ends after it
    sb.update((((una + 500) & SEQ_MASK, (una + 1500) & SEQ_MASK),), una, una + 4000)
    assert sb.ranges == [[una + 500, una + 1500]]


def test_the_number_of_ranges_is_bounded() -> None:
    sb = SackScoreboard()
    blocks = tuple((UNA + 100 * i + 10, UNA + 100 * i + 20) for i in range(MAX_RANGES + 10))
    sb.update(blocks, UNA, MAX)
    assert len(sb.ranges) == MAX_RANGES
    # a block that merges into an existing range is still taken
    sb.update(((UNA + 10, UNA + 50),), UNA, MAX)
    assert sb.ranges[0] == [UNA + 10, UNA + 50]


def test_prune_drops_covered_ranges_and_cuts_the_one_snd_una_ends_in() -> None:
    sb = _board((UNA + 1000, UNA + 2000), (UNA + 3000, UNA + 4000))
    sb.prune(UNA + 2000)
    assert sb.ranges == [[UNA + 3000, UNA + 4000]] and sb.nbytes == 1000
    sb.prune(UNA + 3500)
    assert sb.ranges == [[UNA + 3500, UNA + 4000]] and sb.nbytes == 500
    sb.prune(UNA + 5000)
    assert sb.ranges == [] and sb.nbytes == 0


def test_clear() -> None:
    sb = _board((UNA + 1000, UNA + 2000))
    sb.clear()
    assert sb.ranges == [] and sb.nbytes == 0


def test_loss_point_needs_dupthresh_segments_sacked_above() -> None:
    mss = 1000
    need = 3 * mss
    # only two segments SACKed: nothing is lost yet
    sb = _board((UNA + 1000, UNA + 3000))
    assert sb.loss_point(UNA, need) == UNA
    # three: everything unSACKed below the third-highest SACKed segment is lost
    sb = _board((UNA + 1000, UNA + 4000))
    assert sb.loss_point(UNA, need) == UNA + 1000
    # counted from the top across ranges: 1000 + 2000 bytes above UNA + 5000
    sb = _board((UNA + 1000, UNA + 2000), (UNA + 5000, UNA + 7000), (UNA + 8000, UNA + 9000))
    assert sb.loss_point(UNA, need) == UNA + 5000


def test_unsacked_below() -> None:
    sb = _board((UNA + 1000, UNA + 2000), (UNA + 3000, UNA + 4000))
    assert sb.unsacked_below(UNA, UNA) == 0
    assert sb.unsacked_below(UNA, UNA - 10) == 0
    assert sb.unsacked_below(UNA, UNA + 1000) == 1000
    assert sb.unsacked_below(UNA, UNA + 1500) == 1000
    assert sb.unsacked_below(UNA, UNA + 3500) == 2000
    assert sb.unsacked_below(UNA, UNA + 5000) == 3000


def test_next_hole_skips_sacked_data_and_stops_at_the_limit() -> None:
    sb = _board((UNA + 1000, UNA + 2000), (UNA + 3000, UNA + 4000))
    assert sb.next_hole(UNA, UNA + 5000) == (UNA, UNA + 1000)
    assert sb.next_hole(UNA + 500, UNA + 5000) == (UNA + 500, UNA + 1000)
    assert sb.next_hole(UNA + 1000, UNA + 5000) == (UNA + 2000, UNA + 3000)
    assert sb.next_hole(UNA + 3200, UNA + 5000) == (UNA + 4000, UNA + 5000)
    assert sb.next_hole(UNA + 2000, UNA + 2500) == (UNA + 2000, UNA + 2500)
    assert sb.next_hole(UNA + 1000, UNA + 2000) is None  # the limit is inside SACKed data
    assert sb.next_hole(UNA + 4000, UNA + 4000) is None
