"""ICMPv4 / ICMPv6: parse, golden echo bytes, echo replies, unreachable and packet-too-big."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from tun2proxy.errors import MalformedPacket
from tun2proxy.wire import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    TcpSegment,
    build_icmp_packet,
    echo_reply,
    emit_tcp_packet,
    emit_udp_packet,
    is_icmp_error,
    parse_icmp,
    parse_ip,
    parse_quoted,
    unreachable,
)

A4 = ipaddress.ip_address("10.0.0.1").packed
B4 = ipaddress.ip_address("10.0.0.2").packed
C4 = ipaddress.ip_address("192.0.2.99").packed
A6 = ipaddress.ip_address("fd00::1").packed
B6 = ipaddress.ip_address("2001:db8::2").packed
C6 = ipaddress.ip_address("2001:db8::99").packed


def ref_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def icmp_checksum_ok(pkt: bytes | bytearray) -> bool:
    """Verify the ICMP checksum independently (ICMPv6 covers the RFC 8200 pseudo-header)."""
    ip = parse_ip(pkt)
    msg = bytes(pkt[ip.offset : ip.end])
    if ip.version == 4:
        return ref_sum(msg) == 0xFFFF
    ph = ip.src + ip.dst + struct.pack("!I3xB", len(msg), IPPROTO_ICMPV6)
    return ref_sum(ph + msg) == 0xFFFF


GOLDEN_ECHO = bytes.fromhex(
    # IPv4: len 32, id 0, no DF, ttl 64, proto 1; header words 0x9924 -> checksum 0x66db
    "45000020" "00000000" "4001" "66db" "0a000001" "0a000002"
    # ICMP echo request, code 0; words 0xf905 -> checksum 0x06fa; id 0x1234 seq 1 "ping"
    "0800" "06fa" "1234" "0001" "70696e67"
)


def test_golden_echo_request_emit() -> None:
    assert bytes(build_icmp_packet(A4, B4, 8, 0, 0x12340001, b"ping")) == GOLDEN_ECHO
    assert ref_sum(GOLDEN_ECHO[:20]) == 0xFFFF
    assert ref_sum(GOLDEN_ECHO[20:]) == 0xFFFF


def test_golden_echo_request_parse_field_by_field() -> None:
    ip = parse_ip(GOLDEN_ECHO)
    assert (ip.version, ip.src, ip.dst, ip.protocol, ip.ttl) == (4, A4, B4, IPPROTO_ICMP, 64)
    assert (ip.offset, ip.end, ip.fragment) == (20, 32, False)
    m = parse_icmp(GOLDEN_ECHO, ip.offset, ip.end)
    assert (m.type, m.code, m.checksum, m.rest) == (8, 0, 0x06FA, 0x12340001)
    assert (m.ident, m.sequence) == (0x1234, 1)
    assert bytes(m.body) == b"ping"
    assert "type=8" in repr(m)


def test_icmpv6_layout_and_checksum() -> None:
    pkt = build_icmp_packet(A6, B6, 128, 0, 0xABCD0007, b"xyz", ttl=5)
    assert pkt[:8] == bytes.fromhex("60000000" "000b" "3a" "05")
    assert pkt[8:24] == A6 and pkt[24:40] == B6
    assert pkt[40:42] == b"\x80\x00" and pkt[44:48] == b"\xab\xcd\x00\x07" and pkt[48:] == b"xyz"
    assert icmp_checksum_ok(pkt)


@pytest.mark.parametrize("n", [0, 4, 7])
def test_parse_truncated(n: int) -> None:
    with pytest.raises(MalformedPacket) as e:
        parse_icmp(GOLDEN_ECHO, 20, 20 + n)
    assert e.value.reason == "icmp-truncated"


def test_parse_respects_end() -> None:
    m = parse_icmp(GOLDEN_ECHO + b"padding", 20, 30)
    assert bytes(m.body) == b"pi"


@pytest.mark.parametrize(
    ("version", "src", "dst", "req_type", "rep_type"),
    [(4, A4, B4, 8, 0), (6, A6, B6, 128, 129)],
)
@pytest.mark.parametrize("body", [b"", b"a", b"abcdefgh" * 7 + b"x"])
def test_echo_reply(
    version: int, src: bytes, dst: bytes, req_type: int, rep_type: int, body: bytes
) -> None:
    req = build_icmp_packet(src, dst, req_type, 0, 0x0BAD0102, body)
    ip = parse_ip(req)
    msg = parse_icmp(req, ip.offset, ip.end)
    rep = echo_reply(version, ip.src, ip.dst, msg)
    assert icmp_checksum_ok(rep)
    rip = parse_ip(rep)
    assert (rip.version, rip.src, rip.dst) == (version, dst, src)
    r = parse_icmp(rep, rip.offset, rip.end)
    assert (r.type, r.code, r.ident, r.sequence) == (rep_type, 0, 0x0BAD, 0x0102)
    assert bytes(r.body) == body


@pytest.mark.parametrize("body", [b"", bytes(56)], ids=["empty", "56-zeros"])
def test_echo_reply_with_zero_id_seq_and_zero_data(body: bytes) -> None:
    """Echo request id 0 seq 0 with zero data: the reply message is all zero bytes."""
    req = build_icmp_packet(A4, B4, 8, 0, 0, body)
    assert icmp_checksum_ok(req)
    ip = parse_ip(req)
    rep = echo_reply(4, ip.src, ip.dst, parse_icmp(req, ip.offset, ip.end))
    assert rep[20:24] == bytes.fromhex("0000ffff")
    assert icmp_checksum_ok(rep)


V4_CODES = {"net": 0, "host": 1, "port": 3, "admin": 13}
V6_CODES = {"net": 0, "host": 3, "port": 4, "admin": 1}


def _orig4(payload_len: int = 10) -> bytearray:
    return emit_tcp_packet(A4, B4, TcpSegment(40000, 80, 1, 0, 0x02, 100, 0,
                                              bytes(payload_len)))


def _orig6(payload_len: int = 10) -> bytearray:
    return emit_udp_packet(A6, B6, 40000, 53, bytes(payload_len))


@pytest.mark.parametrize("reason", sorted(V4_CODES))
def test_unreachable_v4(reason: str) -> None:
    orig = _orig4()
    err = unreachable(orig, reason)
    assert icmp_checksum_ok(err)
    ip = parse_ip(err)
    assert (ip.version, ip.src, ip.dst, ip.protocol) == (4, B4, A4, IPPROTO_ICMP)
    m = parse_icmp(err, ip.offset, ip.end)
    assert (m.type, m.code, m.rest) == (3, V4_CODES[reason], 0)
    assert bytes(m.body) == bytes(orig)
    assert is_icmp_error(4, m.type)


@pytest.mark.parametrize("reason", sorted(V6_CODES))
def test_unreachable_v6(reason: str) -> None:
    orig = _orig6()
    err = unreachable(orig, reason, src=C6)
    assert icmp_checksum_ok(err)
    ip = parse_ip(err)
    assert (ip.version, ip.src, ip.dst, ip.protocol) == (6, C6, A6, IPPROTO_ICMPV6)
    m = parse_icmp(err, ip.offset, ip.end)
    assert (m.type, m.code, m.rest) == (1, V6_CODES[reason], 0)
    assert bytes(m.body) == bytes(orig)
    assert is_icmp_error(6, m.type)


def test_unreachable_mtu_v4() -> None:
    """RFC 1191: type 3 code 4, next-hop MTU in the low 16 bits of the second word."""
    err = unreachable(_orig4(), "mtu", src=C4, mtu=1400)
    assert icmp_checksum_ok(err)
    ip = parse_ip(err)
    assert (ip.src, ip.dst) == (C4, A4)
    m = parse_icmp(err, ip.offset, ip.end)
    assert (m.type, m.code, m.rest) == (3, 4, 1400)
    assert err[24:28] == b"\x00\x00\x05\x78"


def test_unreachable_mtu_v6() -> None:
    """RFC 4443 §3.2: Packet Too Big, type 2 code 0, 32-bit MTU."""
    err = unreachable(_orig6(), "mtu", mtu=70000)
    assert icmp_checksum_ok(err)
    ip = parse_ip(err)
    assert (ip.src, ip.dst) == (B6, A6)
    m = parse_icmp(err, ip.offset, ip.end)
    assert (m.type, m.code, m.rest) == (2, 0, 70000)
    assert is_icmp_error(6, m.type)


def test_quote_limits() -> None:
    """ICMPv4 errors stay within 576 bytes (RFC 1812), ICMPv6 within 1280 (RFC 4443 §2.4)."""
    big4 = _orig4(3000)
    err4 = unreachable(big4, "port")
    assert len(err4) == 576
    assert err4[28:] == big4[:548]
    assert icmp_checksum_ok(err4)
    big6 = _orig6(3000)
    err6 = unreachable(big6, "mtu", mtu=1280)
    assert len(err6) == 1280
    assert err6[48:] == big6[:1232]
    assert icmp_checksum_ok(err6)
    small = _orig4(0)
    assert len(unreachable(small, "host")) == 28 + len(small)


@pytest.mark.parametrize("version", [4, 6])
def test_parse_quoted_from_our_errors(version: int) -> None:
    orig = _orig4(3000) if version == 4 else _orig6(3000)
    err = unreachable(orig, "port")
    ip = parse_ip(err)
    q = parse_quoted(parse_icmp(err, ip.offset, ip.end).body)
    expected = (4, A4, B4, 6, 40000, 80) if version == 4 else (6, A6, B6, 17, 40000, 53)
    assert (q.version, q.src, q.dst, q.protocol, q.src_port, q.dst_port) == expected
    assert "40000" in repr(q)


def test_parse_quoted_minimal_and_truncated() -> None:
    orig4 = bytes(_orig4())
    with_options = bytearray(orig4[:20] + b"\x01\x01\x01\x00" + orig4[20:])
    with_options[0] = 0x46
    q = parse_quoted(with_options[:28])  # header with options plus the two ports
    assert (q.src_port, q.dst_port) == (40000, 80)
    for body in (b"", orig4[:23], bytes(with_options[:27]), _orig6()[:43]):
        with pytest.raises(MalformedPacket) as e:
            parse_quoted(body)
        assert e.value.reason == "icmp-quote-truncated"
    bad_ihl = bytearray(orig4)
    bad_ihl[0] = 0x44
    with pytest.raises(MalformedPacket):
        parse_quoted(bad_ihl)
    with pytest.raises(MalformedPacket) as e:
        parse_quoted(b"\x50" + bytes(60))
    assert e.value.reason == "icmp-quote-version"


@pytest.mark.parametrize(
    ("version", "icmp_type", "error"),
    [
        (4, 0, False),
        (4, 3, True),
        (4, 4, True),
        (4, 5, True),
        (4, 8, False),
        (4, 11, True),
        (4, 12, True),
        (4, 13, False),
        (4, 14, False),
        (6, 1, True),
        (6, 2, True),
        (6, 3, True),
        (6, 4, True),
        (6, 127, True),
        (6, 128, False),
        (6, 129, False),
        (6, 135, False),
    ],
)
def test_is_icmp_error(version: int, icmp_type: int, error: bool) -> None:
    assert is_icmp_error(version, icmp_type) is error
