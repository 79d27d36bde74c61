"""pretty.describe: tcpdump-style lines for every protocol, and for malformed input."""

from __future__ import annotations

import ipaddress

import pytest

from tun2proxy.wire import (
    ACK,
    FIN,
    PSH,
    SYN,
    TcpSegment,
    build_icmp_packet,
    describe,
    emit_tcp_packet,
    emit_udp_packet,
    format_address,
)

A4 = ipaddress.ip_address("192.0.2.1").packed
B4 = ipaddress.ip_address("198.51.100.2").packed
A6 = ipaddress.ip_address("2001:db8::1").packed
B6 = ipaddress.ip_address("2001:db8::2").packed


def test_format_address() -> None:
    assert format_address(A4) == "192.0.2.1"
    assert format_address(B6) == "2001:db8::2"
    assert format_address(bytes(16)) == "::"


def test_tcp_syn_with_options() -> None:
    seg = TcpSegment(49152, 443, 0x01020304, 0, SYN, 64240, mss=1460, sack_permitted=True,
                     ts_val=287454020, ts_ecr=0, wscale=7)
    assert describe(emit_tcp_packet(A4, B4, seg)) == (
        "IP 192.0.2.1.49152 > 198.51.100.2.443: Flags [S], seq 16909060, win 64240, "
        "options [mss 1460,sackOK,TS val 287454020 ecr 0,wscale 7], length 0"
    )


def test_tcp_v6_data_with_sack() -> None:
    seg = TcpSegment(1000, 80, 5, 6, PSH | ACK, 100, 0, b"abc", sack=((10, 20), (30, 40)))
    assert describe(emit_tcp_packet(A6, B6, seg)) == (
        "IP6 2001:db8::1.1000 > 2001:db8::2.80: Flags [P.], seq 5:8, ack 6, win 100, "
        "options [sack 10:20 30:40], length 3"
    )


def test_tcp_seq_range_wraps() -> None:
    seg = TcpSegment(1, 2, 2**32 - 1, 0, ACK, 1, 0, b"xyz")
    out = describe(emit_tcp_packet(A4, B4, seg))
    assert "seq 4294967295:2," in out
    assert "length 3" in out


def test_tcp_pure_ack_and_fin() -> None:
    ack = describe(emit_tcp_packet(A4, B4, TcpSegment(1, 2, 9, 77, ACK, 5)))
    assert ack == "IP 192.0.2.1.1 > 198.51.100.2.2: Flags [.], ack 77, win 5, length 0"
    fin = describe(emit_tcp_packet(A4, B4, TcpSegment(1, 2, 9, 77, FIN | ACK, 5)))
    assert "Flags [F.], seq 9, ack 77" in fin


@pytest.mark.parametrize(
    ("src", "dst", "expected"),
    [
        (A4, B4, "IP 192.0.2.1.5353 > 198.51.100.2.53: UDP, length 3"),
        (A6, B6, "IP6 2001:db8::1.5353 > 2001:db8::2.53: UDP, length 3"),
    ],
)
def test_udp(src: bytes, dst: bytes, expected: str) -> None:
    assert describe(emit_udp_packet(src, dst, 5353, 53, b"abc")) == expected


def test_icmp() -> None:
    assert describe(build_icmp_packet(A4, B4, 8, 0, 1, b"ping")) == (
        "IP 192.0.2.1 > 198.51.100.2: ICMP type 8 code 0, length 4"
    )
    assert describe(build_icmp_packet(A6, B6, 129, 0, 1, b"")) == (
        "IP6 2001:db8::1 > 2001:db8::2: ICMP6 type 129 code 0, length 0"
    )


def test_fragment_and_other_protocols() -> None:
    pkt = bytearray(emit_udp_packet(A4, B4, 1, 2, b"abcd"))
    pkt[6] |= 0x20  # MF; header checksum is not verified by describe
    assert describe(pkt) == "IP 192.0.2.1 > 198.51.100.2: fragment proto 17, length 12"
    gre = bytearray(pkt)
    gre[6] &= ~0x20 & 0xFF
    gre[9] = 47
    assert describe(gre) == "IP 192.0.2.1 > 198.51.100.2: proto 47, length 12"
    nonext = bytes.fromhex("6000000000003b40") + A6 + B6
    assert describe(nonext) == "IP6 2001:db8::1 > 2001:db8::2: proto 59, length 0"


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (b"", "malformed (ip-truncated), 0 bytes"),
        (b"\x45\x00\x00", "malformed (ip-truncated), 3 bytes"),
        (b"\x75" + bytes(39), "malformed (ip-version), 40 bytes"),
    ],
)
def test_malformed(packet: bytes, expected: str) -> None:
    assert describe(packet) == expected


def test_malformed_upper_layer() -> None:
    pkt = bytearray(emit_tcp_packet(A4, B4, TcpSegment(1, 2, 0, 0, SYN, 1)))
    pkt[33] |= 0x01  # SYN+FIN
    assert describe(pkt) == f"malformed (tcp-flags), {len(pkt)} bytes"
    udp = bytearray(emit_udp_packet(A6, B6, 1, 2, b""))
    udp[45] = 200  # UDP length beyond the datagram
    assert describe(memoryview(udp)) == "malformed (udp-length), 48 bytes"
