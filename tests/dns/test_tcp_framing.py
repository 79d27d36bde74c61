"""DNS over TCP framing: the 2-byte length prefix of RFC 1035 section 4.2.2 / RFC 7766.

The reader is fed each stream whole, one byte at a time and in random chunks, with several
messages per chunk. Messages are real DNS queries built by dnslib and dnspython.
"""

from __future__ import annotations

import itertools
import struct

import dns.message
import dnslib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tun2proxy.dns import MAX_MESSAGE, TcpDnsReader, frame

QUERIES = [
    bytes(dnslib.DNSRecord.question("example.com", "A").pack()),
    bytes(dnslib.DNSRecord.question("example.org", "AAAA").pack()),
    dns.message.make_query("example.net", "MX", use_edns=0).to_wire(),
]


def stream_of(messages: list[bytes]) -> bytes:
    return b"".join(frame(m) for m in messages)


# -- frame ------------------------------------------------------------------------------------


def test_frame_prefixes_the_big_endian_length() -> None:
    q = QUERIES[0]
    framed = frame(q)
    assert framed[:2] == struct.pack("!H", len(q))
    assert framed[2:] == q
    assert frame(b"") == b"\x00\x00"
    assert frame(bytearray(b"abc")) == b"\x00\x03abc"


def test_frame_limits() -> None:
    assert frame(b"x" * MAX_MESSAGE)[:2] == b"\xff\xff"
    with pytest.raises(ValueError, match="65535"):
        frame(b"x" * (MAX_MESSAGE + 1))


# -- reader -----------------------------------------------------------------------------------


def test_whole_stream_in_one_chunk() -> None:
    reader = TcpDnsReader()
    assert reader.feed(stream_of(QUERIES)) == QUERIES
    assert reader.at_boundary()
    assert reader.pending == 0


def test_one_byte_at_a_time() -> None:
    reader = TcpDnsReader()
    stream = stream_of(QUERIES)
    out: list[bytes] = []
    for i in range(len(stream)):
        got = reader.feed(stream[i : i + 1])
        out += got
        # A message comes out exactly when its last byte arrives.
        assert reader.at_boundary() == (i + 1 in _boundaries(QUERIES))
    assert out == QUERIES
    for message in out:
        assert dnslib.DNSRecord.parse(message)


def _boundaries(messages: list[bytes]) -> set[int]:
    ends, pos = set(), 0
    for m in messages:
        pos += 2 + len(m)
        ends.add(pos)
    return ends


def test_several_messages_and_a_partial_one_in_a_chunk() -> None:
    reader = TcpDnsReader()
    stream = stream_of(QUERIES)
    cut = len(stream) - 5
    assert reader.feed(stream[:cut]) == QUERIES[:2]
    assert not reader.at_boundary()
    assert reader.pending == 2 + len(QUERIES[2]) - 5
    assert reader.feed(stream[cut:]) == QUERIES[2:]
    assert reader.at_boundary()


def test_split_inside_the_length_prefix() -> None:
    reader = TcpDnsReader()
    framed = frame(QUERIES[0])
    assert reader.feed(framed[:1]) == []
    assert reader.pending == 1
    assert reader.feed(framed[1:]) == [QUERIES[0]]


def test_empty_feed_and_empty_frames() -> None:
    reader = TcpDnsReader()
    assert reader.feed(b"") == []
    assert reader.feed(b"\x00\x00" + frame(QUERIES[0]) + b"\x00\x00") == [QUERIES[0]]
    assert reader.empty == 2
    assert reader.at_boundary()


def test_largest_message() -> None:
    reader = TcpDnsReader()
    big = bytes(range(256)) * 255 + b"x" * 255
    assert len(big) == MAX_MESSAGE
    framed = frame(big)
    assert reader.feed(framed[:40000]) == []
    assert reader.pending == 40000
    assert reader.feed(framed[40000:] + frame(b"tail")) == [big, b"tail"]


def test_oversize_messages_are_skipped_without_buffering() -> None:
    reader = TcpDnsReader(max_message=512)
    huge = b"z" * 3000
    stream = frame(QUERIES[0]) + frame(huge) + frame(QUERIES[1])
    out: list[bytes] = []
    for i in range(0, len(stream), 100):
        out += reader.feed(stream[i : i + 100])
        assert reader.buffered <= 512 + 2
    assert out == [QUERIES[0], QUERIES[1]]
    assert reader.oversize == 1
    assert reader.at_boundary()


def test_oversize_skip_spanning_feeds_then_whole() -> None:
    reader = TcpDnsReader(max_message=10)
    assert reader.feed(frame(b"a" * 11)[:5]) == []
    assert reader.pending == 11 - 3
    assert reader.feed(b"a" * 8 + frame(b"ok")) == [b"ok"]
    assert reader.oversize == 1


@pytest.mark.parametrize("bad", [0, -1, MAX_MESSAGE + 1])
def test_reader_limits_are_checked(bad: int) -> None:
    with pytest.raises(ValueError, match="max_message"):
        TcpDnsReader(max_message=bad)
    with pytest.raises(TypeError):
        TcpDnsReader(max_message=1.5)  # type: ignore[arg-type]


@settings(max_examples=200)
@given(
    messages=st.lists(st.binary(min_size=1, max_size=300), max_size=12),
    cuts=st.lists(st.integers(0, 4000), max_size=20),
)
def test_any_chunking_gives_the_same_messages(messages: list[bytes], cuts: list[int]) -> None:
    stream = stream_of(messages)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    reader = TcpDnsReader()
    out: list[bytes] = []
    for a, b in itertools.pairwise(points):
        out += reader.feed(stream[a:b])
        assert reader.pending <= 2 + 300
    assert out == messages
    assert reader.at_boundary()


@settings(max_examples=200)
@given(data=st.binary(max_size=2000), limit=st.integers(1, 600))
def test_arbitrary_bytes_are_bounded(data: bytes, limit: int) -> None:
    reader = TcpDnsReader(max_message=limit)
    for i in range(0, len(data), 97):
        for message in reader.feed(data[i : i + 97]):
            assert 1 <= len(message) <= limit
        assert reader.buffered <= limit + 2
