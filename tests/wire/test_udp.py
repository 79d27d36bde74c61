"""UDP: parse_udp bounds, emit_udp_packet golden bytes, zero checksum, offload."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from tun2proxy.errors import MalformedPacket
from tun2proxy.wire import IPPROTO_UDP, emit_udp_packet, parse_ip, parse_udp

SRC4 = ipaddress.ip_address("10.0.0.1").packed
DST4 = ipaddress.ip_address("10.0.0.2").packed
SRC6 = ipaddress.ip_address("2001:db8::1").packed
DST6 = ipaddress.ip_address("2001:db8::2").packed


def ref_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def pseudo(src: bytes, dst: bytes, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + bytes((0, IPPROTO_UDP)) + struct.pack("!H", length)
    return src + dst + struct.pack("!I3xB", length, IPPROTO_UDP)


GOLDEN_V6 = bytes.fromhex(
    # IPv6: version 6, tc 0, flow 0 | plen 11 | nh 17 | hlim 64
    "60000000" "000b" "11" "40"
    "20010db8000000000000000000000001"
    "20010db8000000000000000000000002"
    # UDP 5353 > 53, length 11, checksum: pseudo words 0x5b91 + UDP words 0xd98b = 0x1351c
    # -> 0x351d -> complement 0xcae2
    "14e9" "0035" "000b" "cae2"
    "616263"
)


def test_golden_ipv6_udp_emit() -> None:
    assert bytes(emit_udp_packet(SRC6, DST6, 5353, 53, b"abc")) == GOLDEN_V6
    assert ref_sum(pseudo(SRC6, DST6, 11) + GOLDEN_V6[40:]) == 0xFFFF


def test_golden_ipv6_udp_parse_field_by_field() -> None:
    ip = parse_ip(GOLDEN_V6)
    assert (ip.version, ip.src, ip.dst, ip.protocol, ip.ttl) == (6, SRC6, DST6, IPPROTO_UDP, 64)
    assert (ip.offset, ip.end, ip.fragment) == (40, 51, False)
    u = parse_udp(GOLDEN_V6, ip.offset, ip.end)
    assert (u.src_port, u.dst_port, u.length, u.checksum) == (5353, 53, 11, 0xCAE2)
    assert bytes(u.payload) == b"abc"
    assert isinstance(u.payload, memoryview)
    assert "5353 > 53" in repr(u)


def test_ipv4_udp_layout() -> None:
    pkt = emit_udp_packet(SRC4, DST4, 1, 65535, b"hello", ttl=3, ident=0x0102)
    assert len(pkt) == 20 + 8 + 5
    assert pkt[:12] == bytes.fromhex("45000021" "01024000" "0311") + pkt[10:12]
    assert ref_sum(bytes(pkt[:20])) == 0xFFFF
    assert pkt[20:26] == bytes.fromhex("0001ffff000d")
    assert ref_sum(pseudo(SRC4, DST4, 13) + bytes(pkt[20:])) == 0xFFFF
    assert pkt[28:] == b"hello"


@pytest.mark.parametrize(("src", "dst"), [(SRC4, DST4), (SRC6, DST6)])
def test_empty_payload(src: bytes, dst: bytes) -> None:
    pkt = emit_udp_packet(src, dst, 7, 9, b"")
    ip = parse_ip(pkt)
    u = parse_udp(pkt, ip.offset, ip.end)
    assert (u.src_port, u.dst_port, u.length, bytes(u.payload)) == (7, 9, 8, b"")
    assert ref_sum(pseudo(src, dst, 8) + bytes(pkt[ip.offset :])) == 0xFFFF


def _zero_sum_payload(src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    """A 2-byte payload that makes the computed checksum 0 (sum of everything else = -0)."""
    ulen = 10
    partial = ref_sum(pseudo(src, dst, ulen) + struct.pack("!HHH", sport, dport, ulen))
    return struct.pack("!H", 0xFFFF - partial) if partial != 0xFFFF else b"\xff\xff"


@pytest.mark.parametrize(("src", "dst"), [(SRC4, DST4), (SRC6, DST6)])
def test_computed_zero_checksum_sent_as_ffff(src: bytes, dst: bytes) -> None:
    """RFC 768 / RFC 8200 §8.1: a computed 0 is transmitted as all ones."""
    payload = _zero_sum_payload(src, dst, 1000, 2000)
    assert ~ref_sum(pseudo(src, dst, 10) + struct.pack("!HHHH", 1000, 2000, 10, 0) + payload) \
        & 0xFFFF == 0
    pkt = emit_udp_packet(src, dst, 1000, 2000, payload)
    hl = 20 if len(src) == 4 else 40
    assert pkt[hl + 6 : hl + 8] == b"\xff\xff"
    assert ref_sum(pseudo(src, dst, 10) + bytes(pkt[hl:])) == 0xFFFF


@pytest.mark.parametrize(("src", "dst"), [(SRC4, DST4), (SRC6, DST6)])
@pytest.mark.parametrize("payload", [b"", b"a", b"ab", bytes(1001)])
def test_checksum_offload(src: bytes, dst: bytes, payload: bytes) -> None:
    full = emit_udp_packet(src, dst, 1234, 53, payload)
    part = emit_udp_packet(src, dst, 1234, 53, payload, checksum_offload=True)
    hl = 20 if len(src) == 4 else 40
    ulen = 8 + len(payload)
    assert full[: hl + 6] == part[: hl + 6] and full[hl + 8 :] == part[hl + 8 :]
    assert int.from_bytes(part[hl + 6 : hl + 8], "big") == ref_sum(pseudo(src, dst, ulen))
    assert ~ref_sum(bytes(part[hl:])) & 0xFFFF == int.from_bytes(full[hl + 6 : hl + 8], "big")


def test_checksum_offload_zero_pseudo_sum_is_ffff() -> None:
    src = bytes((10, 0, 0, 1))
    w = 0xFFFF - (0x0A00 + 0x0001 + IPPROTO_UDP + 8)
    dst = w.to_bytes(2, "big") + b"\x00\x00"
    assert ref_sum(pseudo(src, dst, 8)) == 0xFFFF
    part = emit_udp_packet(src, dst, 0, 0, b"", checksum_offload=True)
    assert part[26:28] == b"\xff\xff"


def test_too_large() -> None:
    with pytest.raises(ValueError, match="too large"):
        emit_udp_packet(SRC6, DST6, 1, 2, bytes(0xFFFF - 7))


def _udp(length: int, available: int) -> bytes:
    return struct.pack("!HHHH", 1000, 53, length, 0) + bytes(range(available - 8))


@pytest.mark.parametrize("n", [0, 1, 7])
def test_truncated(n: int) -> None:
    with pytest.raises(MalformedPacket) as e:
        parse_udp(_udp(8, 8), 0, n)
    assert e.value.reason == "udp-truncated"


@pytest.mark.parametrize("length", [0, 1, 7])
def test_length_below_header(length: int) -> None:
    with pytest.raises(MalformedPacket) as e:
        parse_udp(_udp(length, 20), 0, 20)
    assert e.value.reason == "udp-length"


@pytest.mark.parametrize(("length", "available"), [(9, 8), (21, 20), (0xFFFF, 100)])
def test_length_beyond_available(length: int, available: int) -> None:
    data = _udp(length, available) + bytes(length)  # bytes past `end` must not count
    with pytest.raises(MalformedPacket) as e:
        parse_udp(data, 0, available)
    assert e.value.reason == "udp-length"


@pytest.mark.parametrize(("length", "available"), [(8, 20), (10, 11), (15, 100)])
def test_length_below_available_trims(length: int, available: int) -> None:
    prefix = b"\xee" * 6
    data = prefix + _udp(length, available)
    u = parse_udp(data, 6, 6 + available)
    assert u.length == length
    assert bytes(u.payload) == bytes(range(length - 8))
