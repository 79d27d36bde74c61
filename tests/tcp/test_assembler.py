# mypy: disable-error-code="comparison-overlap"
# (mypy keeps a narrowed attribute such as ``conn.state`` narrowed across calls that change it)
"""The out-of-order Assembler on its own: ranges, merging, first-copy-wins, caps, SACK order."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tun2proxy.tcp import Assembler

BASE = 2**32 - 50  # unwrapped numbers keep growing past 2**32


def spans(a: Assembler) -> list[tuple[int, int]]:
    return [(r.start, r.end) for r in a.ranges]


def test_empty() -> None:
    a = Assembler()
    assert len(a) == 0 and a.nbytes == 0
    assert a.pop_ready(BASE) is None
    assert a.sack_blocks(4) == []
    assert a.add(BASE, b"") is True
    assert len(a) == 0


def test_disjoint_ranges_sorted() -> None:
    a = Assembler()
    a.add(BASE + 30, b"ccc")
    a.add(BASE + 10, b"aaa")
    a.add(BASE + 20, b"bbb")
    assert spans(a) == [(BASE + 10, BASE + 13), (BASE + 20, BASE + 23), (BASE + 30, BASE + 33)]
    assert a.nbytes == 9


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        ((13, b"xx"), [(10, 15)]),  # adjacent after
        ((8, b"xx"), [(8, 13)]),  # adjacent before
        ((11, b"x"), [(10, 13)]),  # inside
        ((5, b"x" * 20), [(5, 25)]),  # covering
        ((12, b"xxxx"), [(10, 16)]),  # overlapping tail
        ((20, b"x"), [(10, 13), (20, 21)]),  # apart
    ],
)
def test_merge(second: tuple[int, bytes], expected: list[tuple[int, int]]) -> None:
    a = Assembler()
    a.add(10, b"aaa")
    a.add(*second)
    assert spans(a) == expected
    assert a.nbytes == sum(e - s for s, e in expected)


def test_bridging_merges_three_ranges() -> None:
    a = Assembler()
    a.add(10, b"aa")
    a.add(20, b"bb")
    a.add(30, b"cc")
    a.add(11, b"X" * 20)  # 11..31 touches all three
    assert spans(a) == [(10, 32)]
    assert a.nbytes == 22
    data = a.pop_ready(10)
    assert data == b"aa" + b"X" * 8 + b"bb" + b"X" * 8 + b"cc"


def test_first_copy_wins() -> None:
    a = Assembler()
    a.add(10, b"AAAA")
    a.add(8, b"bbbbbbbbbb")  # 8..18 over 10..14
    assert a.pop_ready(8) == b"bbAAAAbbbb"


def test_pop_ready_only_from_rcv_nxt() -> None:
    a = Assembler()
    a.add(10, b"abc")
    assert a.pop_ready(9) is None
    assert spans(a) == [(10, 13)]
    assert a.pop_ready(10) == b"abc"
    assert len(a) == 0 and a.nbytes == 0


def test_pop_ready_skips_bytes_already_received() -> None:
    a = Assembler()
    a.add(10, b"abcdef")
    a.add(20, b"xyz")
    assert a.pop_ready(12) == b"cdef"
    assert spans(a) == [(20, 23)]
    # a range entirely below rcv_nxt is dropped
    assert a.pop_ready(30) is None
    assert len(a) == 0 and a.nbytes == 0


def test_range_cap() -> None:
    a = Assembler(max_ranges=2)
    assert a.add(10, b"a")
    assert a.add(20, b"b")
    assert a.add(30, b"c") is False
    assert spans(a) == [(10, 11), (20, 21)]
    assert a.add(11, b"a")  # extending is fine
    assert a.add(12, b"x" * 8)  # so is joining two ranges ...
    assert spans(a) == [(10, 21)]
    assert a.add(30, b"c")  # ... which frees a slot


def test_sack_blocks_most_recent_first() -> None:
    a = Assembler()
    a.add(10, b"a")
    a.add(20, b"b")
    a.add(30, b"c")
    assert a.sack_blocks(4) == [(30, 31), (20, 21), (10, 11)]
    a.add(5, b"z")  # new range, most recent
    assert a.sack_blocks(2) == [(5, 6), (30, 31)]
    a.add(21, b"b")  # touching (20, 21) makes it first
    assert a.sack_blocks(1) == [(20, 22)]


def test_sack_blocks_fill_from_highest_ranges_beyond_recent_memory() -> None:
    a = Assembler()
    for k in range(12):
        a.add(100 * k, b"x")
    blocks = a.sack_blocks(4)
    assert blocks == [(1100, 1101), (1000, 1001), (900, 901), (800, 801)]
    assert len(a.sack_blocks(12)) == 12
    assert len(set(a.sack_blocks(12))) == 12


def test_sack_blocks_unique_after_extend() -> None:
    a = Assembler()
    a.add(10, b"a")
    a.add(11, b"b")
    assert a.sack_blocks(4) == [(10, 12)]


def test_sack_blocks_forget_delivered_ranges() -> None:
    a = Assembler()
    a.add(10, b"a")
    a.add(11, b"b")
    a.add(50, b"c")
    assert a.pop_ready(10) == b"ab"
    assert a.sack_blocks(4) == [(50, 51)]


def test_clear() -> None:
    a = Assembler()
    a.add(10, b"abc")
    a.fin_seq = 20
    a.clear()
    assert len(a) == 0 and a.nbytes == 0 and a.fin_seq is None
    assert a.sack_blocks(4) == []


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 300), st.integers(0, 60)), max_size=40),
    st.integers(1, 8),
)
def test_property_matches_a_byte_map(pieces: list[tuple[int, int]], cap: int) -> None:
    stream = bytes((i * 13 + 5) & 0xFF for i in range(400))
    a = Assembler(max_ranges=cap)
    held: dict[int, int] = {}
    for start, n in pieces:
        ok = a.add(BASE + start, stream[start : start + n])
        if ok:
            for i in range(start, min(start + n, len(stream))):
                held.setdefault(i, stream[i])
    # invariants: sorted, disjoint, non-adjacent, counted, bounded
    sp = spans(a)
    assert all(s < e for s, e in sp)
    assert all(e1 < s2 for (_, e1), (s2, _) in itertools.pairwise(sp))
    assert len(sp) <= cap
    assert a.nbytes == sum(e - s for s, e in sp) == len(held)
    covered = {i - BASE for s, e in sp for i in range(s, e)}
    assert covered == set(held)
    for r in a.ranges:
        assert bytes(r.data) == bytes(held[i - BASE] for i in range(r.start, r.end))
    # popping from the first held byte returns the first range exactly
    if sp:
        first = sp[0]
        assert a.pop_ready(first[0]) == bytes(held[i - BASE] for i in range(*first))
