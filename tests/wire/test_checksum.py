"""RFC 1071 checksum and RFC 1624 incremental update, against a naive word-by-word reference."""

from __future__ import annotations

import struct

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from tun2proxy.wire import checksum, finish, ones_sum, pseudo_header_sum, update16, verify


def ref_sum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 reference: add 16-bit big-endian words with end-around carry (0..0xFFFF)."""
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    s = initial
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ref_checksum(data: bytes, initial: int = 0) -> int:
    return ~ref_sum(data, initial) & 0xFFFF


def ref_verify(data: bytes, initial: int = 0) -> bool:
    return ref_sum(data, initial) == 0xFFFF


_data = st.one_of(
    st.binary(max_size=257),
    st.integers(0, 257).map(lambda n: b"\x00" * n),
    st.integers(0, 257).map(lambda n: b"\xff" * n),
    st.lists(st.sampled_from([b"\x00", b"\xff", b"\x80", b"\x01"]), max_size=64).map(b"".join),
)
# Partial sums in this module's domain: 0..0xFFFE (0 is one's-complement zero).
_initial = st.one_of(st.just(0), st.integers(0, 0xFFFE))


@settings(max_examples=300)
@given(_data, _initial)
@example(b"", 0)
@example(b"\x00", 0)
@example(b"\xff", 0)
@example(b"\xff\xff", 0)
@example(b"\xff" * 7, 0xFFFE)
@example(b"\x00" * 9, 0x1234)
def test_ones_sum_matches_reference(data: bytes, initial: int) -> None:
    # ones_sum folds to 0..0xFFFE; the reference's 0xFFFF (negative zero) maps to 0.
    got = ones_sum(data, initial)
    assert 0 <= got < 0xFFFF
    assert got == ref_sum(data, initial) % 0xFFFF
    # memoryview and bytearray inputs give the same answer.
    assert ones_sum(memoryview(data), initial) == got
    assert ones_sum(bytearray(data), initial) == got


@settings(max_examples=300)
@given(_data, _initial)
@example(b"\xff\xff", 0)
@example(b"\xff" * 5, 0)
@example(b"\x00" * 6, 0x0001)
def test_checksum_and_verify_bit_exact(data: bytes, initial: int) -> None:
    # The sum is +0 only for all-zero input with initial 0; that case is tested separately.
    assume(ref_sum(data, initial) != 0)
    c = checksum(data, initial)
    assert c == ref_checksum(data, initial)
    assert c == finish(ones_sum(data, initial))
    assert verify(data, initial) == ref_verify(data, initial)
    # Appending the checksum (at an even offset) makes the whole verify.
    padded = data + b"\x00" * (len(data) % 2)
    whole = padded + struct.pack("!H", c)
    assert verify(whole, initial)
    assert ref_verify(whole, initial)


@pytest.mark.parametrize("n", [0, 1, 2, 8])
def test_checksum_of_all_zero_data_is_ffff(n: int) -> None:
    """RFC 1071: the complement of a +0 sum is 0xFFFF; a 0 field would sum to +0 and fail."""
    data = b"\x00" * n
    assert ref_checksum(data) == 0xFFFF
    assert checksum(data) == 0xFFFF


def test_verify_rejects_all_zero_data() -> None:
    assert not ref_verify(b"\x00" * 8)
    assert not verify(b"\x00" * 8)


@pytest.mark.parametrize(
    ("partial", "expected"),
    [(0, 0), (0xFFFF, 0), (1, 0xFFFE), (0xFFFE, 1), (0x1234, 0xEDCB), (0x1FFFF, 0xFFFE)],
)
def test_finish(partial: int, expected: int) -> None:
    assert finish(partial) == expected


def test_rfc1071_worked_example() -> None:
    """RFC 1071 §3: the bytes 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2."""
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ref_sum(data) == 0xDDF2
    assert ones_sum(data) == 0xDDF2
    assert checksum(data) == 0x220D


@settings(max_examples=200)
@given(st.binary(max_size=120).map(lambda b: b[: len(b) & ~1]), st.binary(max_size=120), _initial)
def test_pieces_at_even_offsets_add(a: bytes, b: bytes, initial: int) -> None:
    assert ones_sum(b, ones_sum(a, initial)) == ones_sum(a + b, initial)
    assert (ones_sum(a) + ones_sum(b)) % 0xFFFF == ones_sum(a + b)


def test_large_buffer() -> None:
    data = bytes(range(256)) * 256 + b"\x7f"
    assert ones_sum(data) == ref_sum(data) % 0xFFFF
    assert checksum(data) == ref_checksum(data)


_v4 = st.binary(min_size=4, max_size=4)
_v6 = st.binary(min_size=16, max_size=16)


@settings(max_examples=200)
@given(_v4, _v4, st.integers(0, 255), st.integers(0, 0xFFFF), st.binary(max_size=64))
def test_pseudo_header_sum_v4(
    src: bytes, dst: bytes, proto: int, length: int, segment: bytes
) -> None:
    ph = struct.pack("!4s4sBBH", src, dst, 0, proto, length)  # RFC 793 pseudo-header
    assert len(ph) == 12
    ps = pseudo_header_sum(src, dst, proto, length)
    assert 0 <= ps <= 0xFFFF  # 0xFFFF only for a non-zero pseudo-header folding to -0
    assert ps % 0xFFFF == ref_sum(ph) % 0xFFFF
    if any(ph + segment):
        assert checksum(segment, ps) == ref_checksum(ph + segment)


@settings(max_examples=200)
@given(_v6, _v6, st.integers(0, 255), st.integers(0, 0xFFFFFFFF), st.binary(max_size=64))
def test_pseudo_header_sum_v6(
    src: bytes, dst: bytes, nh: int, length: int, segment: bytes
) -> None:
    ph = struct.pack("!16s16sI3xB", src, dst, length, nh)  # RFC 8200 §8.1 pseudo-header
    assert len(ph) == 40
    ps = pseudo_header_sum(src, dst, nh, length)
    assert 0 <= ps <= 0xFFFF  # 0xFFFF only for a non-zero pseudo-header folding to -0
    assert ps % 0xFFFF == ref_sum(ph) % 0xFFFF
    if any(ph + segment):
        assert checksum(segment, ps) == ref_checksum(ph + segment)


@st.composite
def _update_case(draw: st.DrawFn) -> tuple[bytearray, int, int, int]:
    nwords = draw(st.integers(2, 40))
    data = bytearray(draw(st.binary(min_size=2 * nwords, max_size=2 * nwords)))
    if draw(st.booleans()):
        data = bytearray(len(data))  # mostly zero: exercises the 0 / 0xFFFF edges
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    field = draw(st.integers(0, nwords - 1))
    word = draw(st.integers(0, nwords - 1).filter(lambda w: w != field))
    new = draw(st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0, 0xFFFF, 1, 0xFFFE])))
    return data, field, word, new


@settings(max_examples=150)
@given(_update_case())
def test_update16_equals_recomputation(case: tuple[bytearray, int, int, int]) -> None:
    data, field, word, new = case
    data[2 * field : 2 * field + 2] = b"\x00\x00"
    assume(any(data))
    old_c = checksum(data)
    old = int.from_bytes(data[2 * word : 2 * word + 2], "big")
    data[2 * word : 2 * word + 2] = new.to_bytes(2, "big")
    # All-zero data is the one case eqn. 3 cannot express (+0 vs -0, RFC 1624 §3); real
    # headers are never all zero.
    assume(any(data))
    c = update16(old_c, old, new)
    assert c == checksum(data)
    if any(data):
        assert c == ref_checksum(bytes(data))
    data[2 * field : 2 * field + 2] = c.to_bytes(2, "big")
    assert verify(data)


def test_update16_rfc1624_example() -> None:
    """RFC 1624 §4: HC 0xDD2F, m 0x5555 -> 0x3285 gives HC' 0x0000 by eqn. 3 (not 0xFFFF)."""
    assert update16(0xDD2F, 0x5555, 0x3285) == 0x0000


def test_update16_ttl_decrement_in_ipv4_header() -> None:
    hdr = bytearray.fromhex("450000730000400040110000c0a80001c0a800c7")
    c = checksum(hdr)
    hdr[10:12] = c.to_bytes(2, "big")
    old = int.from_bytes(hdr[8:10], "big")
    hdr[8] -= 1
    new = int.from_bytes(hdr[8:10], "big")
    c2 = update16(c, old, new)
    hdr[10:12] = c2.to_bytes(2, "big")
    assert verify(hdr)
    assert ref_verify(bytes(hdr))


def test_pseudo_header_folding_to_minus_zero_is_not_taken_for_no_input() -> None:
    # Found by hypothesis: a pseudo-header summing to 0xFFFF with an empty segment.
    ps = pseudo_header_sum(bytes(4), bytes(4), 0, 0xFFFF)
    assert ps == 0xFFFF
    ph = struct.pack("!4s4sBBH", bytes(4), bytes(4), 0, 0, 0xFFFF)
    assert checksum(b"", ps) == ref_checksum(ph) == 0
