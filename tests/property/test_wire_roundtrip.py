"""emit -> parse round trips for TCP, UDP, ICMP and the IP header records (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tun2proxy.wire import (
    FIN,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    RST,
    SYN,
    Ipv4Header,
    Ipv6Header,
    TcpSegment,
    build_icmp_packet,
    build_options,
    emit_tcp_packet,
    emit_udp_packet,
    parse_icmp,
    parse_ip,
    parse_tcp,
    parse_udp,
    pseudo_header_sum,
    verify,
)

_u32 = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**31, 2**32 - 1]))
_v4 = st.binary(min_size=4, max_size=4)
_v6 = st.binary(min_size=16, max_size=16)
_addrs = st.one_of(st.tuples(_v4, _v4), st.tuples(_v6, _v6))


def _fitting_sack(
    seg_opts: dict[str, object], sack: tuple[tuple[int, int], ...] | None
) -> tuple[tuple[int, int], ...] | None:
    """The SACK blocks build_options keeps: as many as fit after the other options."""
    if not sack:
        return None
    used = len(build_options(**seg_opts))  # type: ignore[arg-type]
    n = min(4, (40 - used - 4) // 8)
    return tuple(sack[:n]) or None


@st.composite
def segments(draw: st.DrawFn) -> tuple[TcpSegment, TcpSegment]:
    """A segment to emit, and the segment the parser must give back."""
    sport, dport = draw(st.integers(1, 65535)), draw(st.integers(1, 65535))
    seq, ack = draw(_u32), draw(_u32)
    flags = draw(st.integers(0, 0xFF).filter(lambda f: not (f & SYN and f & (FIN | RST))))
    window, urgent = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
    payload = draw(st.binary(max_size=200))
    mss = draw(st.none() | st.integers(0, 65535))
    wscale = draw(st.none() | st.integers(0, 255))
    sack_permitted = draw(st.booleans())
    ts = draw(st.none() | st.tuples(_u32, _u32))
    sack = draw(st.none() | st.lists(st.tuples(_u32, _u32), min_size=1, max_size=6).map(tuple))
    ts_val, ts_ecr = ts if ts else (None, None)
    sent = TcpSegment(sport, dport, seq, ack, flags, window, urgent, payload, mss=mss,
                      wscale=wscale, sack_permitted=sack_permitted, sack=sack, ts_val=ts_val,
                      ts_ecr=ts_ecr)
    other: dict[str, object] = {
        "mss": mss, "wscale": wscale, "sack_permitted": sack_permitted, "timestamp": ts,
    }
    expected = TcpSegment(sport, dport, seq, ack, flags, window, urgent, payload, mss=mss,
                          wscale=wscale, sack_permitted=sack_permitted,
                          sack=_fitting_sack(other, sack), ts_val=ts_val, ts_ecr=ts_ecr)
    return sent, expected


@settings(max_examples=150)
@given(_addrs, segments(), st.integers(0, 255), st.integers(0, 65535))
def test_tcp_round_trip(
    addrs: tuple[bytes, bytes], case: tuple[TcpSegment, TcpSegment], ttl: int, ident: int
) -> None:
    src, dst = addrs
    sent, expected = case
    pkt = emit_tcp_packet(src, dst, sent, ttl=ttl, ident=ident)
    ip = parse_ip(pkt)
    assert (ip.version, ip.src, ip.dst, ip.protocol, ip.ttl) == (
        4 if len(src) == 4 else 6, src, dst, IPPROTO_TCP, ttl)
    assert (ip.end, ip.fragment) == (len(pkt), False)
    got = parse_tcp(pkt, ip.offset, ip.end)
    assert got == expected
    assert got.bad_options is False
    assert got.header_len == 20 + len(sent.options_bytes())
    assert verify(memoryview(pkt)[ip.offset :],
                  pseudo_header_sum(src, dst, IPPROTO_TCP, ip.end - ip.offset))
    # Emitting the parsed record reproduces the packet byte for byte.
    assert emit_tcp_packet(src, dst, got, ttl=ttl, ident=ident) == pkt


@settings(max_examples=60)
@given(
    _addrs,
    segments(),
    st.lists(st.sampled_from([b"\x01", b"\x00", b"\x1e\x02", b"\x02\x04\x01\x00"]), max_size=8),
)
def test_tcp_round_trip_with_raw_options(
    addrs: tuple[bytes, bytes], case: tuple[TcpSegment, TcpSegment], extra: list[bytes]
) -> None:
    """Pre-encoded options (with unknown kinds and EOL) pass through emit and parse."""
    src, dst = addrs
    sent, _ = case
    opts = b"".join(extra)[:40]
    opts += b"\x00" * (-len(opts) % 4)
    pkt = emit_tcp_packet(src, dst, sent, options=opts)
    ip = parse_ip(pkt)
    got = parse_tcp(pkt, ip.offset, ip.end)
    assert got.header_len == 20 + len(opts)
    assert bytes(got.payload) == bytes(sent.payload)
    assert (got.src_port, got.dst_port, got.seq, got.ack, got.flags, got.window) == (
        sent.src_port, sent.dst_port, sent.seq, sent.ack, sent.flags, sent.window)
    assert verify(memoryview(pkt)[ip.offset :],
                  pseudo_header_sum(src, dst, IPPROTO_TCP, ip.end - ip.offset))


@settings(max_examples=200)
@given(
    _addrs,
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.binary(max_size=300),
    st.integers(0, 255),
    st.binary(max_size=20),
)
def test_udp_round_trip(
    addrs: tuple[bytes, bytes], sport: int, dport: int, payload: bytes, ttl: int, pad: bytes
) -> None:
    src, dst = addrs
    pkt = emit_udp_packet(src, dst, sport, dport, payload, ttl=ttl)
    ip = parse_ip(bytes(pkt) + pad)  # link padding is trimmed
    assert (ip.src, ip.dst, ip.protocol, ip.ttl, ip.end) == (src, dst, IPPROTO_UDP, ttl,
                                                             len(pkt))
    u = parse_udp(pkt, ip.offset, ip.end)
    assert (u.src_port, u.dst_port, u.length, bytes(u.payload)) == (
        sport, dport, 8 + len(payload), payload)
    assert u.checksum != 0
    assert verify(memoryview(pkt)[ip.offset :], pseudo_header_sum(src, dst, IPPROTO_UDP, u.length))


@settings(max_examples=200)
@given(
    _addrs,
    st.integers(0, 255),
    st.integers(0, 255),
    _u32,
    st.binary(max_size=200),
    st.integers(0, 255),
)
def test_icmp_round_trip(
    addrs: tuple[bytes, bytes], icmp_type: int, code: int, rest: int, body: bytes, ttl: int
) -> None:
    src, dst = addrs
    pkt = build_icmp_packet(src, dst, icmp_type, code, rest, body, ttl=ttl)
    ip = parse_ip(pkt)
    proto = IPPROTO_ICMP if len(src) == 4 else IPPROTO_ICMPV6
    assert (ip.src, ip.dst, ip.protocol, ip.ttl, ip.end) == (src, dst, proto, ttl, len(pkt))
    m = parse_icmp(pkt, ip.offset, ip.end)
    assert (m.type, m.code, m.rest, bytes(m.body)) == (icmp_type, code, rest, body)
    assert (m.ident, m.sequence) == (rest >> 16, rest & 0xFFFF)
    initial = 0 if len(src) == 4 else pseudo_header_sum(src, dst, IPPROTO_ICMPV6, len(pkt) - 40)
    assert verify(memoryview(pkt)[ip.offset :], initial)


@st.composite
def ipv4_headers(draw: st.DrawFn) -> Ipv4Header:
    opts = draw(st.binary(max_size=10).map(lambda b: b * 4))[:40]
    return Ipv4Header(
        src=draw(_v4),
        dst=draw(_v4),
        protocol=draw(st.integers(0, 255)),
        total_length=draw(st.integers(20 + len(opts), 65535)),
        ttl=draw(st.integers(0, 255)),
        ident=draw(st.integers(0, 65535)),
        tos=draw(st.integers(0, 255)),
        flags=draw(st.integers(0, 7)),
        fragment_offset=draw(st.integers(0, 0x1FFF)),
        options=opts,
    )


@settings(max_examples=200)
@given(ipv4_headers())
def test_ipv4_header_round_trip(h: Ipv4Header) -> None:
    raw = h.to_bytes()
    assert len(raw) == h.header_len
    assert verify(raw)
    assert Ipv4Header.parse(raw) == h
    assert Ipv4Header.parse(raw).to_bytes() == raw
    if h.total_length == len(raw):
        ip = parse_ip(raw)
        assert (ip.version, ip.src, ip.dst, ip.protocol, ip.offset, ip.end, ip.ttl) == (
            4, h.src, h.dst, h.protocol, h.header_len, h.header_len, h.ttl)
        assert ip.fragment == bool(h.flags & 1 or h.fragment_offset)


@settings(max_examples=200)
@given(
    _v6,
    _v6,
    st.integers(0, 255),
    st.integers(0, 65535),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 0xFFFFF),
)
def test_ipv6_header_round_trip(
    src: bytes, dst: bytes, nh: int, plen: int, hlim: int, tc: int, fl: int
) -> None:
    h = Ipv6Header(src=src, dst=dst, next_header=nh, payload_length=plen, hop_limit=hlim,
                   traffic_class=tc, flow_label=fl)
    raw = h.to_bytes()
    assert len(raw) == 40
    assert Ipv6Header.parse(raw) == h
    assert Ipv6Header.parse(raw).to_bytes() == raw
