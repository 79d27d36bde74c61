"""IPv4: parse_ip validation, options, padding, fragments; header emit and round trip."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from tun2proxy.errors import MalformedPacket
from tun2proxy.wire import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    Ipv4Header,
    emit_ipv4_header,
    emit_udp_packet,
    parse_ip,
    parse_udp,
)

SRC = ipaddress.ip_address("192.0.2.1").packed
DST = ipaddress.ip_address("198.51.100.2").packed


def ref_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def v4(
    payload: bytes = b"\x00" * 8,
    *,
    proto: int = IPPROTO_UDP,
    options: bytes = b"",
    total: int | None = None,
    ihl: int | None = None,
    frag: int = 0x4000,
    ttl: int = 64,
    version: int = 4,
    fix_checksum: bool = True,
) -> bytes:
    """A hand-built IPv4 packet with free choice of every field."""
    hl = 20 + len(options)
    if ihl is None:
        ihl = hl // 4
    if total is None:
        total = hl + len(payload)
    hdr = bytearray(
        struct.pack("!BBHHHBBH4s4s", (version << 4) | ihl, 0, total, 0x1234, frag, ttl, proto,
                    0, SRC, DST)
        + options
    )
    if fix_checksum:
        hdr[10:12] = struct.pack("!H", ref_checksum(bytes(hdr)))
    return bytes(hdr) + payload


def test_emit_ipv4_header_golden() -> None:
    buf = bytearray(24)
    n = emit_ipv4_header(buf, 2, SRC, DST, IPPROTO_TCP, 40)
    assert n == 20
    assert buf[:2] == b"\x00\x00" and buf[22:] == b"\x00\x00"
    # 4500 003c 0000 4000 4006 | sum | c000 0201 c633 6402; by hand the words add to
    # 0x2b178, folded 0xb17a, complemented 0x4e85.
    assert bytes(buf[2:22]) == bytes.fromhex("4500003c000040004006" "4e85" "c0000201c6336402")


def test_emit_ipv4_header_fields() -> None:
    buf = bytearray(20)
    emit_ipv4_header(buf, 0, SRC, DST, 1, 100, ttl=7, ident=0xBEEF, tos=0xB8,
                     dont_fragment=False)
    assert ref_checksum(bytes(buf)) == 0
    h = Ipv4Header.parse(buf)
    assert (h.src, h.dst, h.protocol, h.total_length) == (SRC, DST, 1, 120)
    assert (h.ttl, h.ident, h.tos, h.flags, h.fragment_offset) == (7, 0xBEEF, 0xB8, 0, 0)
    assert h.checksum == int.from_bytes(buf[10:12], "big")


def test_parse_ip_basic() -> None:
    pkt = v4(b"\x13\x88\x00\x35\x00\x08\x00\x00", ttl=9)
    ip = parse_ip(pkt)
    assert (ip.version, ip.src, ip.dst, ip.protocol) == (4, SRC, DST, IPPROTO_UDP)
    assert (ip.offset, ip.end, ip.ttl, ip.fragment) == (20, 28, 9, False)
    assert "v4" in repr(ip)


@pytest.mark.parametrize("n", [0, 1, 19])
def test_truncated(n: int) -> None:
    with pytest.raises(MalformedPacket) as e:
        parse_ip(v4()[:n])
    assert e.value.reason == "ip-truncated"


@pytest.mark.parametrize("version", [0, 1, 5, 7, 15])
def test_bad_version(version: int) -> None:
    with pytest.raises(MalformedPacket) as e:
        parse_ip(v4(version=version) + bytes(40))
    assert e.value.reason == "ip-version"


@pytest.mark.parametrize("ihl", [0, 1, 4])
def test_ihl_below_five(ihl: int) -> None:
    with pytest.raises(MalformedPacket) as e:
        parse_ip(v4(ihl=ihl))
    assert e.value.reason == "ipv4-ihl"
    with pytest.raises(MalformedPacket):
        Ipv4Header.parse(v4(ihl=ihl))


def test_total_length_beyond_buffer() -> None:
    pkt = v4(b"\x00" * 8, total=29)
    with pytest.raises(MalformedPacket) as e:
        parse_ip(pkt)
    assert e.value.reason == "ipv4-total-length"


def test_total_length_below_header() -> None:
    with pytest.raises(MalformedPacket) as e:
        parse_ip(v4(total=19))
    assert e.value.reason == "ipv4-total-length"
    with pytest.raises(MalformedPacket) as e:
        parse_ip(v4(options=b"\x01" * 4, total=23))
    assert e.value.reason == "ipv4-total-length"


def test_ipv4_header_total_length_below_header() -> None:
    with pytest.raises(MalformedPacket) as e:
        Ipv4Header.parse(v4(options=b"\x01" * 8, total=27))
    assert e.value.reason == "ipv4-total-length"
    # Ipv4Header parses a header alone: a total length beyond the buffer is allowed.
    assert Ipv4Header.parse(v4(b"", total=1500)).total_length == 1500


def test_ihl_beyond_buffer() -> None:
    pkt = v4(b"", ihl=15, total=60)  # claims 60 header bytes, has 20
    with pytest.raises(MalformedPacket):
        parse_ip(pkt)
    with pytest.raises(MalformedPacket) as e:
        Ipv4Header.parse(pkt)
    assert e.value.reason == "ipv4-ihl"


def test_bad_header_checksum_verify_on_and_off() -> None:
    good = bytearray(v4())
    bad = bytearray(good)
    bad[11] ^= 0x01
    with pytest.raises(MalformedPacket) as e:
        parse_ip(bad)
    assert e.value.reason == "ipv4-checksum"
    with pytest.raises(MalformedPacket) as e:
        parse_ip(bad, verify_checksum=True)
    assert e.value.reason == "ipv4-checksum"
    ip = parse_ip(bad, verify_checksum=False)
    assert (ip.protocol, ip.offset, ip.end) == (IPPROTO_UDP, 20, 28)
    with pytest.raises(MalformedPacket):
        Ipv4Header.parse(bad)
    assert Ipv4Header.parse(bad, verify=False).checksum == int.from_bytes(bad[10:12], "big")
    # A corrupted option byte is caught too: the checksum covers the whole IHL.
    withopt = bytearray(v4(options=b"\x94\x04\x00\x00"))
    parse_ip(withopt)
    withopt[22] ^= 0xFF
    with pytest.raises(MalformedPacket):
        parse_ip(withopt)


@pytest.mark.parametrize(
    "options",
    [
        b"\x94\x04\x00\x00",  # Router Alert
        b"\x01\x01\x01\x00",  # NOP NOP NOP EOL
        b"\x07\x0b\x04" + bytes(8) + b"\x00",  # Record Route, 2 slots, EOL
        bytes(40),  # maximal IHL 15
    ],
)
def test_options_are_skipped(options: bytes) -> None:
    udp = struct.pack("!HHHH", 1000, 53, 11, 0) + b"abc"
    pkt = v4(udp, options=options)
    ip = parse_ip(pkt)
    assert ip.offset == 20 + len(options)
    assert ip.end == len(pkt)
    u = parse_udp(pkt, ip.offset, ip.end)
    assert (u.src_port, u.dst_port, bytes(u.payload)) == (1000, 53, b"abc")
    h = Ipv4Header.parse(pkt)
    assert h.options == options
    assert h.header_len == 20 + len(options)


@pytest.mark.parametrize("padding", [1, 6, 18, 100])
def test_link_padding_trimmed(padding: int) -> None:
    pkt = bytes(emit_udp_packet(SRC, DST, 1000, 53, b"x"))
    ip = parse_ip(pkt + b"\xee" * padding)
    assert ip.end == len(pkt) == 29
    u = parse_udp(pkt + b"\xee" * padding, ip.offset, ip.end)
    assert bytes(u.payload) == b"x"


@pytest.mark.parametrize(
    ("frag", "is_fragment"),
    [
        (0x0000, False),
        (0x4000, False),  # DF only
        (0x8000, False),  # reserved (evil) bit only
        (0x2000, True),  # MF, offset 0: first fragment
        (0x0001, True),  # offset 8 bytes, last fragment
        (0x2005, True),  # MF and offset
        (0x1FFF, True),  # largest offset
        (0x6000, True),  # DF and MF
    ],
)
def test_fragments_flagged(frag: int, is_fragment: bool) -> None:
    ip = parse_ip(v4(frag=frag))
    assert ip.fragment is is_fragment
    h = Ipv4Header.parse(v4(frag=frag))
    assert h.flags == frag >> 13
    assert h.fragment_offset == frag & 0x1FFF


def test_memoryview_and_bytearray_inputs() -> None:
    pkt = v4(options=b"\x01\x01\x01\x01")
    for data in (pkt, bytearray(pkt), memoryview(pkt)):
        ip = parse_ip(data)
        assert (ip.src, ip.dst, ip.offset, ip.end) == (SRC, DST, 24, 32)
        assert isinstance(ip.src, bytes)


def test_ipv4_header_to_bytes_with_options_golden() -> None:
    h = Ipv4Header(
        src=SRC, dst=DST, protocol=IPPROTO_TCP, total_length=64, ttl=128, ident=0xABCD,
        tos=0x10, flags=0, fragment_offset=0, options=b"\x94\x04\x00\x00",
    )
    raw = h.to_bytes()
    expected_wo_sum = bytes.fromhex("46100040abcd0000 8006 0000 c0000201 c6336402 94040000")
    expected = bytearray(expected_wo_sum)
    expected[10:12] = ref_checksum(expected_wo_sum).to_bytes(2, "big")
    assert raw == bytes(expected)
    assert h.checksum == int.from_bytes(raw[10:12], "big")
    assert Ipv4Header.parse(raw) == h


@pytest.mark.parametrize("bad", [b"\x01", b"\x01\x01\x01", bytes(44)])
def test_ipv4_header_rejects_bad_option_lengths(bad: bytes) -> None:
    h = Ipv4Header(src=SRC, dst=DST, protocol=6, total_length=100, options=bad)
    with pytest.raises(ValueError, match="options"):
        h.to_bytes()


def test_ipv4_header_parse_version_check() -> None:
    pkt = bytearray(v4())
    pkt[0] = 0x65
    with pytest.raises(MalformedPacket) as e:
        Ipv4Header.parse(pkt)
    assert e.value.reason == "ip-version"
    with pytest.raises(MalformedPacket) as e:
        Ipv4Header.parse(pkt[:19])
    assert e.value.reason == "ip-truncated"
