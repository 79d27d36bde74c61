"""The wire parsers raise nothing but MalformedPacket, for any bytes; describe() never raises.

Inputs: arbitrary bytes, bytes behind a plausible IP version nibble, valid packets with
random byte flips, every truncation of every seed packet, and seeds with bytes appended.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from tun2proxy.errors import MalformedPacket
from tun2proxy.wire import (
    ACK,
    PSH,
    SYN,
    Ipv4Header,
    Ipv6Header,
    TcpSegment,
    build_icmp_packet,
    describe,
    emit_tcp_packet,
    emit_udp_packet,
    parse_icmp,
    parse_ip,
    parse_quoted,
    parse_tcp,
    parse_udp,
    unreachable,
)

A4, B4 = bytes((10, 0, 0, 1)), bytes((192, 0, 2, 1))
A6, B6 = bytes(15) + b"\x01", b"\x20\x01\x0d\xb8" + bytes(11) + b"\x02"


def _v6_ext(chain: bytes, nh: int, upper: bytes) -> bytes:
    payload = chain + upper
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), nh, 64, A6, B6) + payload


_UDP = struct.pack("!HHHH", 1, 2, 12, 0) + b"abcd"


def _seeds() -> list[bytes]:
    syn = TcpSegment(40000, 80, 1, 0, SYN, 65535, mss=1460, wscale=7, sack_permitted=True,
                     ts_val=1, ts_ecr=0)
    data = TcpSegment(40000, 80, 2, 9, ACK | PSH, 512, 0, b"hello world", ts_val=2, ts_ecr=5,
                      sack=((10, 20), (30, 40)))
    v4opts = Ipv4Header(src=A4, dst=B4, protocol=17, total_length=36,
                        options=b"\x94\x04\x00\x00").to_bytes() + _UDP
    seeds = [
        emit_tcp_packet(A4, B4, syn),
        emit_tcp_packet(A6, B6, data),
        emit_tcp_packet(A4, B4, data, options=b"\x01\x01\x08\x0a" + bytes(8)),
        emit_udp_packet(A4, B4, 5000, 53, b"\x12\x34" + bytes(20)),
        emit_udp_packet(A6, B6, 5000, 53, b""),
        build_icmp_packet(A4, B4, 8, 0, 0x00010002, b"ping"),
        build_icmp_packet(A6, B6, 128, 0, 0x00010002, b"ping"),
        unreachable(emit_udp_packet(A4, B4, 1, 2, b"x"), "port"),
        unreachable(emit_udp_packet(A6, B6, 1, 2, b"x"), "mtu", mtu=1280),
        v4opts,
        # Hop-by-hop (PadN), routing (segments left 0), fragment (atomic), dest opts, UDP.
        _v6_ext(
            bytes((43, 0, 1, 4, 0, 0, 0, 0))
            + bytes((44, 0, 4, 0, 0, 0, 0, 0))
            + bytes((60, 0, 0, 0, 0, 0, 0, 0))
            + bytes((17, 0, 0x1E, 4, 0, 0, 0, 0)),
            0,
            _UDP,
        ),
        _v6_ext(bytes((6, 0, 0, 9, 0, 0, 0, 1)), 44, bytes(20)),  # real fragment
        _v6_ext(bytes((17, 1)) + bytes(10), 51, _UDP),  # AH
    ]
    return [bytes(s) for s in seeds]


SEEDS = _seeds()
T = TypeVar("T")


def _call(fn: Callable[..., T], *args: object) -> T | None:
    try:
        return fn(*args)
    except MalformedPacket as e:
        reason = e.reason
    assert isinstance(reason, str) and reason
    return None


def exercise(data: bytes | bytearray | memoryview) -> None:
    """Run every parser on ``data`` and check invariants of whatever they accept."""
    n = len(data)
    for verify in (True, False):
        ip = _call(parse_ip, data, verify)
        if ip is None:
            continue
        assert ip.version in (4, 6)
        assert len(ip.src) == len(ip.dst) == (4 if ip.version == 4 else 16)
        assert 20 <= ip.offset <= ip.end <= n
        _upper(data, ip.offset, ip.end)
    _upper(data, 0, n)
    h4 = _call(Ipv4Header.parse, data)
    if h4 is not None:
        assert 20 <= h4.header_len <= min(n, 60)
    _call(Ipv4Header.parse, data, False)
    h6 = _call(Ipv6Header.parse, data)
    if h6 is not None:
        assert n >= 40
    text = describe(data)
    assert isinstance(text, str)
    assert not text.startswith("undescribable"), text


def _upper(data: bytes | bytearray | memoryview, start: int, end: int) -> None:
    seg = _call(parse_tcp, data, start, end)
    if seg is not None:
        assert 20 <= seg.header_len <= end - start
        assert len(seg.payload) == end - start - seg.header_len
        assert seg.src_port >= 1 and seg.dst_port >= 1
        assert not (seg.flags & 0x02 and seg.flags & 0x05)
        assert seg.sack is None or 1 <= len(seg.sack) <= 4
        assert seg.wscale is None or 0 <= seg.wscale <= 255
        repr(seg)
    u = _call(parse_udp, data, start, end)
    if u is not None:
        assert 8 <= u.length <= end - start
        assert len(u.payload) == u.length - 8
    m = _call(parse_icmp, data, start, end)
    if m is not None:
        assert len(m.body) == end - start - 8
        q = _call(parse_quoted, m.body)
        if q is not None:
            assert q.version in (4, 6)
            assert 0 <= q.src_port <= 0xFFFF and 0 <= q.dst_port <= 0xFFFF
    _call(parse_quoted, memoryview(data)[start:end])


@settings(max_examples=400)
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    exercise(data)
    exercise(bytearray(data))


@settings(max_examples=400)
@given(st.sampled_from([0x45, 0x46, 0x4F, 0x60, 0x6F]), st.binary(max_size=120))
def test_random_bytes_behind_ip_version(first: int, rest: bytes) -> None:
    data = bytearray(bytes((first,)) + rest)
    if len(data) >= 4 and first >> 4 == 4:
        struct.pack_into("!H", data, 2, len(data))  # total length matching the buffer
    elif len(data) >= 40:
        struct.pack_into("!H", data, 4, len(data) - 40)  # payload length matching
    exercise(data)
    exercise(memoryview(data))


@settings(max_examples=300)
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 2000), st.integers(1, 255)), min_size=1, max_size=6),
    st.one_of(st.none(), st.integers(0, 2000)),
    st.binary(max_size=40),
)
def test_mutated_valid_packets(
    seed: bytes, flips: list[tuple[int, int]], cut: int | None, extra: bytes
) -> None:
    data = bytearray(seed)
    for pos, xor in flips:
        data[pos % len(data)] ^= xor
    if cut is not None:
        del data[cut % (len(data) + 1) :]
    data += extra
    exercise(data)


_option_token = st.one_of(
    st.sampled_from(
        [
            b"\x01",
            b"\x00",
            b"\x02\x04\x05\xb4",
            b"\x03\x03\x07",
            b"\x04\x02",
            b"\x08\x0a" + bytes(8),
            b"\x05\x0a" + bytes(8),
            b"\x05\x12" + bytes(16),
        ]
    ),
    st.integers(0, 255).map(lambda b: bytes((b,))),  # a lone kind byte
    st.tuples(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=10)).map(
        lambda t: bytes(t[:2]) + t[2]
    ),
)
_option_bytes = st.lists(_option_token, max_size=10).map(lambda ts: b"".join(ts)[-40:])


@settings(max_examples=300)
@given(_option_bytes, st.binary(max_size=4), st.integers(0, 15))
def test_tcp_option_soup(options: bytes, payload: bytes, doff: int) -> None:
    """TCP headers whose option area is made of option-like bytes, ending at the buffer end."""
    options = b"\x01" * (-len(options) % 4) + options  # NOPs in front: the last byte is free
    header = struct.pack("!HHIIHHHH", 1, 2, 3, 4, (((20 + len(options)) // 4) << 12) | 0x10,
                         5, 0, 0)
    data = header + options + payload
    _upper(data, 0, len(data))
    seg = parse_tcp(data, 0, len(data))
    assert seg.header_len == 20 + len(options)
    bad = bytearray(data)
    bad[12] = (doff << 4) | (bad[12] & 0x0F)  # any data offset
    _upper(bad, 0, len(bad))
    exercise(emit_tcp_packet(A4, B4, TcpSegment(1, 2, flags=0x10), options=options))


_tlv_token = st.one_of(
    st.sampled_from([b"\x00", b"\x01\x00", b"\x01\x02\x00\x00", b"\x05\x02\x00\x00",
                     b"\x1e\x01\x00", b"\xc2\x04\x00\x01\x00\x00"]),
    st.binary(min_size=1, max_size=4),
)


@st.composite
def ipv6_chains(draw: st.DrawFn) -> bytes:
    """IPv6 packets with random chains of extension headers (valid-looking and not)."""
    kinds = draw(st.lists(st.sampled_from([0, 43, 44, 51, 60]), max_size=10))
    final = draw(st.sampled_from([6, 17, 58, 59, 50, 0, 44]))
    body = b""
    for k, nh in zip(kinds, [*kinds[1:], final][: len(kinds)], strict=True):
        if k == 44:
            frag = draw(st.sampled_from([0, 1, 8, 0xFFF9, 0x0006]))
            body += bytes((nh, 0)) + struct.pack("!HI", frag, 0)
        elif k == 51:
            units = draw(st.integers(0, 4))
            body += bytes((nh, units)) + bytes((units + 2) * 4 - 2)
        elif k == 43:
            body += bytes((nh, 0, draw(st.sampled_from([0, 2, 4])), draw(st.sampled_from([0, 1]))))
            body += bytes(4)
        else:
            units = draw(st.integers(0, 2))
            size = 6 + 8 * units
            tlv = b"".join(draw(st.lists(_tlv_token, max_size=8)))[:size]
            body += bytes((nh, units)) + bytes(size - len(tlv)) + tlv  # Pad1s first
    body += draw(st.binary(max_size=24))
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]
    first = kinds[0] if kinds else final
    return struct.pack("!IHBB16s16s", 0x60000000, len(body), first, 64, A6, B6) + body


@settings(max_examples=300)
@given(ipv6_chains())
def test_ipv6_extension_chains(pkt: bytes) -> None:
    exercise(pkt)


@settings(max_examples=200)
@given(st.sampled_from(SEEDS), st.integers(0, 2000), st.integers(0, 2000))
def test_arbitrary_bounds(seed: bytes, a: int, b: int) -> None:
    """Upper-layer parsers on any [start, end) window inside the buffer."""
    start, end = sorted((a % (len(seed) + 1), b % (len(seed) + 1)))
    _upper(seed, start, end)


def test_seeds_are_valid() -> None:
    for seed in SEEDS:
        ip = parse_ip(seed)
        assert ip.end == len(seed)
        assert not describe(seed).startswith("malformed")


def test_every_truncation_and_extension_of_every_seed() -> None:
    for seed in SEEDS:
        for cut in range(len(seed) + 1):
            exercise(seed[:cut])
        for extra in (b"\x00", b"\xff" * 7, bytes(range(64))):
            exercise(seed + extra)
