"""IPv6: fixed header, extension-header walk (RFC 8200 §4), fragments, bounds."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from tun2proxy.errors import MalformedPacket
from tun2proxy.wire import IPPROTO_TCP, IPPROTO_UDP, Ipv6Header, emit_ipv6_header, parse_ip
from tun2proxy.wire.ip import (
    IPPROTO_AH,
    IPPROTO_DSTOPTS,
    IPPROTO_ESP,
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_NONE,
    IPPROTO_ROUTING,
    MAX_EXTENSION_HEADERS,
)

SRC = ipaddress.ip_address("2001:db8::1").packed
DST = ipaddress.ip_address("2001:db8::2").packed
UDP = struct.pack("!HHHH", 5000, 53, 12, 0) + b"abcd"


def v6(nh: int, payload: bytes, *, plen: int | None = None, hlim: int = 64) -> bytes:
    if plen is None:
        plen = len(payload)
    return struct.pack("!IHBB16s16s", 0x60000000, plen, nh, hlim, SRC, DST) + payload


def opts_header(nh: int, options: bytes = b"") -> bytes:
    """Hop-by-Hop / Destination Options header padded with Pad1/PadN to a multiple of 8."""
    body = options
    room = (-(2 + len(body))) % 8
    if room == 1:
        body += b"\x00"
    elif room:
        body += bytes((1, room - 2)) + bytes(room - 2)
    return bytes((nh, (2 + len(body)) // 8 - 1)) + body


def routing(nh: int, rtype: int, segments_left: int, extra_units: int = 0) -> bytes:
    return bytes((nh, extra_units, rtype, segments_left)) + bytes(4 + 8 * extra_units)


def fragment(nh: int, offset: int, more: bool, ident: int = 0xCAFE) -> bytes:
    return struct.pack("!BBHI", nh, 0, (offset << 3) | int(more), ident)


def ah(nh: int, payload_len: int = 4) -> bytes:
    """Authentication Header, RFC 4302: length in 4-byte units minus 2."""
    return bytes((nh, payload_len)) + bytes((payload_len + 2) * 4 - 2)


def test_emit_ipv6_header_fields() -> None:
    buf = bytearray(42)
    n = emit_ipv6_header(buf, 1, SRC, DST, IPPROTO_TCP, 1234, hop_limit=3, traffic_class=0xB8,
                         flow_label=0xABCDE)
    assert n == 40
    assert buf[0] == 0 and buf[41] == 0
    assert bytes(buf[1:9]) == bytes.fromhex("6b8abcde04d20603")
    assert bytes(buf[9:25]) == SRC and bytes(buf[25:41]) == DST


def test_ipv6_header_round_trip() -> None:
    h = Ipv6Header(src=SRC, dst=DST, next_header=IPPROTO_UDP, payload_length=8, hop_limit=255,
                   traffic_class=0x12, flow_label=0xFFFFF)
    raw = h.to_bytes()
    assert raw[:8] == bytes.fromhex("612fffff" "0008" "11" "ff")
    assert Ipv6Header.parse(raw) == h
    assert Ipv6Header.parse(raw + b"trailing") == h


def test_ipv6_header_parse_errors() -> None:
    raw = v6(IPPROTO_UDP, UDP)
    with pytest.raises(MalformedPacket) as e:
        Ipv6Header.parse(raw[:39])
    assert e.value.reason == "ip-truncated"
    bad = bytearray(raw)
    bad[0] = 0x40
    with pytest.raises(MalformedPacket) as e:
        Ipv6Header.parse(bad)
    assert e.value.reason == "ip-version"


def test_plain_udp() -> None:
    pkt = v6(IPPROTO_UDP, UDP, hlim=17)
    ip = parse_ip(pkt)
    assert (ip.version, ip.src, ip.dst, ip.protocol) == (6, SRC, DST, IPPROTO_UDP)
    assert (ip.offset, ip.end, ip.ttl, ip.fragment) == (40, 52, 17, False)


@pytest.mark.parametrize("n", [20, 39])
def test_truncated_fixed_header(n: int) -> None:
    with pytest.raises(MalformedPacket) as e:
        parse_ip(v6(IPPROTO_UDP, UDP)[:n])
    assert e.value.reason == "ip-truncated"


def test_payload_length_beyond_buffer() -> None:
    with pytest.raises(MalformedPacket) as e:
        parse_ip(v6(IPPROTO_UDP, UDP, plen=13))
    assert e.value.reason == "ipv6-payload-length"


def test_trailing_padding_trimmed() -> None:
    pkt = v6(IPPROTO_UDP, UDP)
    ip = parse_ip(pkt + bytes(30))
    assert ip.end == len(pkt) == 52


def test_hop_by_hop_walked() -> None:
    pkt = v6(IPPROTO_HOPOPTS, opts_header(IPPROTO_UDP, b"\x05\x02\x00\x00") + UDP)
    ip = parse_ip(pkt)
    assert (ip.protocol, ip.offset, ip.end) == (IPPROTO_UDP, 48, len(pkt))


def test_destination_options_walked() -> None:
    ext = opts_header(IPPROTO_UDP, b"\x1e\x03abc")  # unknown type 0x1e, action bits 00: skip
    assert len(ext) == 8
    pkt = v6(IPPROTO_DSTOPTS, ext + UDP)
    ip = parse_ip(pkt)
    assert (ip.protocol, ip.offset) == (IPPROTO_UDP, 48)


@pytest.mark.parametrize(
    "options",
    [
        b"\x00\x00\x00\x00\x00\x00",  # six Pad1
        b"\x01\x04\x00\x00\x00\x00",  # one PadN of 4
        b"\x00\x01\x03\x00\x00\x00",  # Pad1 then PadN of 3
        b"\x01\x00\x01\x00\x01\x00",  # three empty PadN
        b"\x01\x0c" + bytes(12),  # PadN longer than 8 bytes -> 16-byte header
    ],
)
def test_padding_options_accepted(options: bytes) -> None:
    ext = bytes((IPPROTO_UDP, (2 + len(options)) // 8 - 1)) + options
    assert len(ext) % 8 == 0
    ip = parse_ip(v6(IPPROTO_DSTOPTS, ext + UDP))
    assert (ip.protocol, ip.offset) == (IPPROTO_UDP, 40 + len(ext))


@pytest.mark.parametrize("opt_type", [0x40, 0x80, 0xC0, 0xC2, 0x7F, 0xFE])
@pytest.mark.parametrize("header", [IPPROTO_HOPOPTS, IPPROTO_DSTOPTS])
def test_unknown_option_with_action_bits_raises(opt_type: int, header: int) -> None:
    pkt = v6(header, opts_header(IPPROTO_UDP, bytes((opt_type, 2, 0, 0))) + UDP)
    with pytest.raises(MalformedPacket) as e:
        parse_ip(pkt)
    assert e.value.reason == "ipv6-option-unknown"


@pytest.mark.parametrize(
    "options",
    [
        b"\x00\x00\x00\x00\x00\x05",  # type byte is the last byte: no length
        b"\x01\x05\x00\x00\x00\x00",  # PadN claims 5 bytes, 4 remain
        b"\x1e\xff\x00\x00\x00\x00",
    ],
)
def test_option_overrunning_header_raises(options: bytes) -> None:
    ext = bytes((IPPROTO_UDP, 0)) + options
    with pytest.raises(MalformedPacket) as e:
        parse_ip(v6(IPPROTO_DSTOPTS, ext + UDP))
    assert e.value.reason == "ipv6-option-truncated"


def test_hop_by_hop_not_first_raises() -> None:
    ext = opts_header(IPPROTO_HOPOPTS) + opts_header(IPPROTO_UDP)
    with pytest.raises(MalformedPacket) as e:
        parse_ip(v6(IPPROTO_DSTOPTS, ext + UDP))
    assert e.value.reason == "ipv6-hop-by-hop-not-first"


@pytest.mark.parametrize("rtype", [0, 2, 3, 4, 253])
def test_routing_segments_left_zero_walked(rtype: int) -> None:
    pkt = v6(IPPROTO_ROUTING, routing(IPPROTO_UDP, rtype, 0, extra_units=2) + UDP)
    ip = parse_ip(pkt)
    assert (ip.protocol, ip.offset) == (IPPROTO_UDP, 40 + 24)


def test_routing_type0_with_segments_left_raises() -> None:
    """RFC 5095 deprecates RH0; with segments left the packet must be discarded."""
    with pytest.raises(MalformedPacket) as e:
        parse_ip(v6(IPPROTO_ROUTING, routing(IPPROTO_UDP, 0, 1, extra_units=2) + UDP))
    assert e.value.reason == "ipv6-routing-type-0"


@pytest.mark.parametrize("rtype", [2, 3, 4])
def test_routing_other_type_with_segments_left_raises(rtype: int) -> None:
    with pytest.raises(MalformedPacket) as e:
        parse_ip(v6(IPPROTO_ROUTING, routing(IPPROTO_UDP, rtype, 1, extra_units=2) + UDP))
    assert e.value.reason == "ipv6-routing-segments-left"


def test_atomic_fragment_processed_normally() -> None:
    """RFC 6946: offset 0 and M 0 is an atomic fragment, handled as an ordinary packet."""
    pkt = v6(IPPROTO_FRAGMENT, fragment(IPPROTO_UDP, 0, False) + UDP)
    ip = parse_ip(pkt)
    assert ip.fragment is False
    assert (ip.protocol, ip.offset, ip.end) == (IPPROTO_UDP, 48, len(pkt))


def test_atomic_fragment_reserved_bits_ignored() -> None:
    frag = bytearray(fragment(IPPROTO_UDP, 0, False))
    frag[1] = 0xFF  # reserved byte
    frag[3] |= 0x06  # the two reserved bits of the offset word
    ip = parse_ip(v6(IPPROTO_FRAGMENT, bytes(frag) + UDP))
    assert ip.fragment is False
    assert ip.protocol == IPPROTO_UDP


@pytest.mark.parametrize(("offset", "more"), [(0, True), (1, False), (185, True), (8191, False)])
def test_real_fragment_flagged(offset: int, more: bool) -> None:
    pkt = v6(IPPROTO_FRAGMENT, fragment(IPPROTO_UDP, offset, more) + UDP)
    ip = parse_ip(pkt)
    assert ip.fragment is True
    assert (ip.protocol, ip.offset) == (IPPROTO_UDP, 48)


def test_chain_of_several_headers() -> None:
    ext = (
        opts_header(IPPROTO_DSTOPTS)
        + opts_header(IPPROTO_ROUTING)
        + routing(IPPROTO_FRAGMENT, 2, 0)
        + fragment(IPPROTO_AH, 0, False)
        + ah(IPPROTO_DSTOPTS)
        + opts_header(IPPROTO_TCP, b"\x01\x0a" + bytes(10))
    )
    pkt = v6(IPPROTO_HOPOPTS, ext + bytes(20))
    ip = parse_ip(pkt)
    assert (ip.protocol, ip.offset, ip.end, ip.fragment) == (IPPROTO_TCP, 40 + len(ext),
                                                             len(pkt), False)


def test_ah_length_in_four_byte_units() -> None:
    ext = ah(IPPROTO_UDP, payload_len=5)
    assert len(ext) == 28
    ip = parse_ip(v6(IPPROTO_AH, ext + UDP))
    assert (ip.protocol, ip.offset) == (IPPROTO_UDP, 68)


def test_max_extension_headers_accepted() -> None:
    ext = b"".join(opts_header(IPPROTO_DSTOPTS) for _ in range(MAX_EXTENSION_HEADERS - 1))
    ext += opts_header(IPPROTO_UDP)
    ip = parse_ip(v6(IPPROTO_DSTOPTS, ext + UDP))
    assert (ip.protocol, ip.offset) == (IPPROTO_UDP, 40 + 8 * MAX_EXTENSION_HEADERS)


def test_more_than_max_extension_headers_raises() -> None:
    ext = b"".join(opts_header(IPPROTO_DSTOPTS) for _ in range(MAX_EXTENSION_HEADERS))
    ext += opts_header(IPPROTO_UDP)
    with pytest.raises(MalformedPacket) as e:
        parse_ip(v6(IPPROTO_DSTOPTS, ext + UDP))
    assert e.value.reason == "ipv6-too-many-extensions"


@pytest.mark.parametrize(
    ("nh", "ext"),
    [
        (IPPROTO_DSTOPTS, bytes((IPPROTO_UDP, 3)) + bytes(6)),  # claims 32 bytes
        (IPPROTO_HOPOPTS, bytes((IPPROTO_UDP, 255)) + bytes(6)),
        (IPPROTO_ROUTING, bytes((IPPROTO_UDP, 1, 0, 0)) + bytes(4)),
        (IPPROTO_AH, bytes((IPPROTO_UDP, 10)) + bytes(6)),
        (IPPROTO_DSTOPTS, bytes((IPPROTO_UDP, 0, 1, 0))),  # fewer than 8 bytes left
        (IPPROTO_FRAGMENT, bytes((IPPROTO_UDP, 0, 0, 0))),
        (IPPROTO_FRAGMENT, bytes((IPPROTO_UDP, 0, 0, 1))),  # a real fragment, cut short
        (IPPROTO_AH, bytes((IPPROTO_UDP, 0))),
    ],
)
def test_extension_overrunning_packet_raises(nh: int, ext: bytes) -> None:
    pkt = v6(nh, ext)  # nothing after the extension header
    with pytest.raises(MalformedPacket) as e:
        parse_ip(pkt)
    assert e.value.reason == "ipv6-extension-truncated"
    # ... also when the bytes exist in the buffer but lie beyond the payload length.
    with pytest.raises(MalformedPacket):
        parse_ip(pkt + bytes(300))


def test_no_next_header() -> None:
    ip = parse_ip(v6(IPPROTO_NONE, b""))
    assert (ip.protocol, ip.offset, ip.end) == (IPPROTO_NONE, 40, 40)
    ip = parse_ip(v6(IPPROTO_DSTOPTS, opts_header(IPPROTO_NONE) + b"ignored"))
    assert (ip.protocol, ip.offset) == (IPPROTO_NONE, 48)


def test_esp_is_upper_layer() -> None:
    ip = parse_ip(v6(IPPROTO_ESP, bytes(16)))
    assert (ip.protocol, ip.offset) == (IPPROTO_ESP, 40)


def test_memoryview_input() -> None:
    pkt = v6(IPPROTO_HOPOPTS, opts_header(IPPROTO_UDP) + UDP)
    ip = parse_ip(memoryview(bytearray(pkt)))
    assert (ip.src, ip.dst, ip.protocol, ip.offset) == (SRC, DST, IPPROTO_UDP, 48)
