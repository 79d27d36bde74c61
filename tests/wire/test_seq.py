"""Modulo-2**32 sequence arithmetic (RFC 9293 §3.4) across the wrap."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tun2proxy.wire import in_window, seq_add, seq_diff, seq_le, seq_lt, unwrap
from tun2proxy.wire.seq import SEQ_HALF, SEQ_MASK, SEQ_MOD

EDGES = [0, 1, 2**31 - 1, 2**31, 2**31 + 1, 2**32 - 1, 0xFFFFFF00 - 1460, 0xFFFFFF00]


def test_constants() -> None:
    assert SEQ_MOD == 2**32
    assert SEQ_MASK == 0xFFFFFFFF
    assert SEQ_HALF == 2**31


@pytest.mark.parametrize(
    ("a", "n", "expected"),
    [
        (0, 0, 0),
        (2**32 - 1, 1, 0),
        (2**32 - 1, 2, 1),
        (0xFFFFFF00 - 1460, 1460, 0xFFFFFF00),
        (0xFFFFFF00 - 1460, 1460 + 256, 0),
        (0xFFFFFF00 - 1460, 1460 + 300, 44),
        (2**31, 2**31, 0),
        (5, -10, 2**32 - 5),
    ],
)
def test_seq_add(a: int, n: int, expected: int) -> None:
    assert seq_add(a, n) == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (0, 2**32 - 1, 1),
        (2**32 - 1, 0, -1),
        (10, 0xFFFFFF00 - 1460, 10 + 256 + 1460),
        (0xFFFFFF00 - 1460, 10, -(10 + 256 + 1460)),
        (2**31 - 1, 0, 2**31 - 1),
        (2**31, 0, -(2**31)),  # exactly half way counts as "before"
        (0, 2**31, -(2**31)),
        (123, 123, 0),
    ],
)
def test_seq_diff(a: int, b: int, expected: int) -> None:
    assert seq_diff(a, b) == expected


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (2**32 - 1, 0),
        (0xFFFFFF00 - 1460, 0xFFFFFF00),
        (0xFFFFFF00 - 1460, 5),
        (2**32 - 10, 10),
        (0, 2**31 - 1),
        (1, 2**31),
        (0, 1),
    ],
)
def test_seq_lt_across_wrap(a: int, b: int) -> None:
    assert seq_lt(a, b)
    assert seq_le(a, b)
    assert not seq_lt(b, a)
    assert not seq_le(b, a)
    assert seq_diff(a, b) < 0 < seq_diff(b, a)


@pytest.mark.parametrize("a", EDGES)
def test_seq_le_reflexive_lt_irreflexive(a: int) -> None:
    assert seq_le(a, a)
    assert not seq_lt(a, a)
    assert seq_diff(a, a) == 0


def test_half_way_is_before_both_ways() -> None:
    # At distance exactly 2**31 the order is ambiguous; both directions compare "before".
    assert seq_lt(0, 2**31)
    assert seq_lt(2**31, 0)


@pytest.mark.parametrize(
    ("x", "start", "size", "inside"),
    [
        (0, 2**32 - 1, 2, True),
        (1, 2**32 - 1, 2, False),
        (2**32 - 1, 2**32 - 1, 1, True),
        (2**32 - 2, 2**32 - 1, 10, False),
        (0xFFFFFF00, 0xFFFFFF00 - 1460, 1460, False),
        (0xFFFFFF00 - 1, 0xFFFFFF00 - 1460, 1460, True),
        (0xFFFFFF00 - 1460, 0xFFFFFF00 - 1460, 1460, True),
        (100, 0xFFFFFF00 - 1460, 65535, True),
        (5, 5, 0, False),
        (2**31 - 1, 0, 2**31, True),
        (2**31, 0, 2**31, False),
    ],
)
def test_in_window(x: int, start: int, size: int, inside: bool) -> None:
    assert in_window(x, start, size) is inside


@pytest.mark.parametrize(
    ("wire", "ref", "expected"),
    [
        (0, 2**32 - 1, 2**32),
        (5, 2**32 - 10, 2**32 + 5),
        (2**32 - 10, 2**32 + 5, 2**32 - 10),
        (0xFFFFFF00 - 1460, 2**32 + 100, 0xFFFFFF00 - 1460),
        (100, 3 * 2**32 + 50, 3 * 2**32 + 100),
        (2**32 - 1, 3 * 2**32 + 1, 3 * 2**32 - 1),
        (2**31, 0, -(2**31)),  # half way resolves backwards
        (0, 0, 0),
    ],
)
def test_unwrap_examples(wire: int, ref: int, expected: int) -> None:
    assert unwrap(wire, ref) == expected


_u32 = st.one_of(st.integers(0, SEQ_MASK), st.sampled_from(EDGES))


@settings(max_examples=300)
@given(
    st.integers(0, 2**40),
    st.one_of(
        st.integers(-(2**31) + 1, 2**31 - 1),
        st.sampled_from([0, 1, -1, 2**31 - 1, -(2**31) + 1, 1460, -1460]),
    ),
)
def test_unwrap_inverts_masking(ref: int, delta: int) -> None:
    original = ref + delta
    assert unwrap(original & SEQ_MASK, ref) == original


@settings(max_examples=300)
@given(_u32, _u32)
def test_order_helpers_agree(a: int, b: int) -> None:
    d = seq_diff(a, b)
    assert -(2**31) <= d < 2**31
    assert seq_add(b, d) == a
    assert seq_lt(a, b) == (d < 0)
    assert seq_le(a, b) == (d <= 0)
    if a != b and d != -(2**31):
        assert seq_lt(a, b) != seq_lt(b, a)


@settings(max_examples=300)
@given(_u32, st.integers(0, 2**31), st.integers(-(2**31), 2**31))
def test_in_window_matches_offset(start: int, size: int, off: int) -> None:
    x = seq_add(start, off)
    assert in_window(x, start, size) == (0 <= off < size)
