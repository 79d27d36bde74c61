"""Independent oracles: every packet our emitters build is parsed by scapy and by dpkt.

Both libraries must see the same fields we meant to send, and their own checksum code must
produce the checksums we wrote (scapy: checksum fields deleted and the packet rebuilt with
``raw()``; dpkt: checksum fields zeroed and the packet serialised with ``bytes()``, which
recomputes them with the right pseudo-header).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from tun2proxy.wire import (
    ACK,
    FIN,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    PSH,
    RST,
    SYN,
    URG,
    Ipv4Header,
    Ipv6Header,
    TcpSegment,
    build_icmp_packet,
    echo_reply,
    emit_tcp_packet,
    emit_udp_packet,
    parse_icmp,
    parse_ip,
    parse_tcp,
    parse_udp,
    unreachable,
)

A4 = ipaddress.ip_address("10.0.0.1").packed
B4 = ipaddress.ip_address("192.0.2.7").packed
A6 = ipaddress.ip_address("fd00::1").packed
B6 = ipaddress.ip_address("2001:db8::7").packed


# --- helpers --------------------------------------------------------------------------------


def ref_sum(data: bytes) -> int:
    """RFC 1071 sum with end-around carry, 0..0xFFFF (independent of tun2proxy)."""
    if len(data) % 2:
        data += b"\x00"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + bytes((0, proto)) + struct.pack("!H", length)
    return src + dst + struct.pack("!I3xB", length, proto)


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def scapy_parse(pkt: bytes) -> Any:
    return IP(pkt) if pkt[0] >> 4 == 4 else IPv6(pkt)


def dpkt_parse(pkt: bytes) -> Any:
    return dpkt.ip.IP(pkt) if pkt[0] >> 4 == 4 else dpkt.ip6.IP6(pkt)


def scapy_rebuilt(pkt: bytes) -> bytes:
    """scapy's bytes for ``pkt`` with the IP and transport checksums recomputed by scapy."""
    s = scapy_parse(pkt)
    if isinstance(s, IP):
        s.chksum = None
    upper = s.payload
    names = {f.name for f in upper.fields_desc}
    for name in ("chksum", "cksum"):
        if name in names:
            setattr(upper, name, None)
    return raw(s)


def dpkt_rebuilt(pkt: bytes) -> bytes:
    """dpkt's bytes for ``pkt`` with the IP and transport checksums recomputed by dpkt."""
    d = dpkt_parse(pkt)
    if isinstance(d, dpkt.ip.IP):
        d.sum = 0
    assert isinstance(d.data, dpkt.Packet)
    d.data.sum = 0
    return bytes(d)


def check_ip(pkt: bytes, src: bytes, dst: bytes, proto: int, ttl: int, df: bool = True) -> None:
    s = scapy_parse(pkt)
    d = dpkt_parse(pkt)
    assert packed(s.src) == src and packed(s.dst) == dst
    assert d.src == src and d.dst == dst
    if len(src) == 4:
        assert (s.version, s.ihl, s.len, s.proto, s.ttl, s.frag) == (4, 5, len(pkt), proto, ttl, 0)
        assert int(s.flags) == (2 if df else 0)
        assert (d.v, d.hl, d.len, d.p, d.ttl) == (4, 5, len(pkt), proto, ttl)
        assert (bool(d.df), bool(d.mf), d.offset) == (df, False, 0)
    else:
        assert (s.version, s.tc, s.fl, s.plen, s.nh, s.hlim) == (6, 0, 0, len(pkt) - 40, proto, ttl)
        assert (d.v, d.fc, d.flow, d.plen, d.nxt, d.hlim) == (6, 0, 0, len(pkt) - 40, proto, ttl)


# --- TCP ------------------------------------------------------------------------------------


def expected_options(seg: TcpSegment) -> dict[str, object]:
    """What the options should say, with SACK blocks cut to what fits in 40 bytes."""
    used = (4 if seg.mss is not None else 0) + (4 if seg.wscale is not None else 0)
    if seg.ts_val is not None:
        used += 12
    elif seg.sack_permitted:
        used += 4
    sack = None
    if seg.sack:
        n = min(4, (40 - used - 4) // 8)
        sack = tuple((a & 0xFFFFFFFF, b & 0xFFFFFFFF) for a, b in seg.sack[:n]) or None
    return {
        "mss": seg.mss,
        "wscale": seg.wscale,
        "sackok": seg.sack_permitted,
        "ts": (seg.ts_val, seg.ts_ecr or 0) if seg.ts_val is not None else None,
        "sack": sack,
    }


def scapy_options(opts: list[tuple[str, Any]]) -> dict[str, object]:
    out: dict[str, object] = {"mss": None, "wscale": None, "sackok": False, "ts": None,
                              "sack": None}
    for name, value in opts:
        if name == "MSS":
            out["mss"] = value
        elif name == "WScale":
            out["wscale"] = value
        elif name == "SAckOK":
            assert value == b""
            out["sackok"] = True
        elif name == "Timestamp":
            out["ts"] = tuple(value)
        elif name == "SAck":
            out["sack"] = tuple(zip(value[::2], value[1::2], strict=True))
        else:
            assert name in ("NOP", "EOL"), name
    return out


def dpkt_options(buf: bytes) -> dict[str, object]:
    out: dict[str, object] = {"mss": None, "wscale": None, "sackok": False, "ts": None,
                              "sack": None}
    for item in dpkt.tcp.parse_opts(buf):
        assert item is not None, "dpkt found a malformed option"
        kind, data = item
        if kind == dpkt.tcp.TCP_OPT_MSS:
            (out["mss"],) = struct.unpack("!H", data)
        elif kind == dpkt.tcp.TCP_OPT_WSCALE:
            (out["wscale"],) = struct.unpack("!B", data)
        elif kind == dpkt.tcp.TCP_OPT_SACKOK:
            assert data == b""
            out["sackok"] = True
        elif kind == dpkt.tcp.TCP_OPT_TIMESTAMP:
            out["ts"] = struct.unpack("!II", data)
        elif kind == dpkt.tcp.TCP_OPT_SACK:
            words = struct.unpack(f"!{len(data) // 4}I", data)
            out["sack"] = tuple(zip(words[::2], words[1::2], strict=True))
        else:
            assert kind in (dpkt.tcp.TCP_OPT_NOP, dpkt.tcp.TCP_OPT_EOL), kind
    return out


def check_tcp(
    src: bytes,
    dst: bytes,
    seg: TcpSegment,
    *,
    ttl: int = 64,
    ident: int = 0,
    offload: bool = False,
) -> None:
    pkt = bytes(emit_tcp_packet(src, dst, seg, ttl=ttl, ident=ident, checksum_offload=offload))
    hl = 20 if len(src) == 4 else 40
    opts = expected_options(seg)
    check_ip(pkt, src, dst, IPPROTO_TCP, ttl)
    tcp_len = len(pkt) - hl
    payload = bytes(seg.payload)

    s = scapy_parse(pkt)
    if len(src) == 4:
        assert s.id == ident
    t = s[TCP]
    assert (t.sport, t.dport, t.seq, t.ack) == (seg.src_port, seg.dst_port,
                                                seg.seq & 0xFFFFFFFF, seg.ack & 0xFFFFFFFF)
    assert (int(t.flags), t.window, t.urgptr, t.reserved) == (seg.flags, seg.window, seg.urgent,
                                                              0)
    assert t.dataofs * 4 == tcp_len - len(payload)
    assert scapy_options(t.options) == opts
    assert bytes(t.payload) == payload

    d = dpkt_parse(pkt)
    if len(src) == 4:
        assert d.id == ident
    dt = d.data
    assert isinstance(dt, dpkt.tcp.TCP)
    assert (dt.sport, dt.dport, dt.seq, dt.ack) == (t.sport, t.dport, t.seq, t.ack)
    assert (dt.flags, dt.win, dt.urp, dt.off) == (seg.flags, seg.window, seg.urgent, t.dataofs)
    assert dpkt_options(dt.opts) == opts
    assert bytes(dt.data) == payload

    # Our own parser agrees with both.
    ip = parse_ip(pkt)
    mine = parse_tcp(pkt, ip.offset, ip.end)
    assert (mine.mss, mine.wscale, mine.sack_permitted, mine.sack) == (
        opts["mss"], opts["wscale"], opts["sackok"], opts["sack"])
    assert (mine.ts_val, mine.ts_ecr) == (opts["ts"] or (None, None))

    field = int.from_bytes(pkt[hl + 16 : hl + 18], "big")
    s_full, d_full = scapy_rebuilt(pkt), dpkt_rebuilt(pkt)
    if not offload:
        assert s_full == pkt
        assert d_full == pkt
        assert field == t.chksum == dt.sum
    else:
        # The field holds the folded pseudo-header sum; finishing it over the segment (what
        # the device does) gives the checksum the oracles compute.
        assert field == ref_sum(pseudo_header(src, dst, IPPROTO_TCP, tcp_len))
        device = ~ref_sum(pkt[hl:]) & 0xFFFF
        full = pkt[: hl + 16] + device.to_bytes(2, "big") + pkt[hl + 18 :]
        assert s_full == full
        assert d_full == full


_u32 = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**31, 2**32 - 1]))
_flags = st.integers(0, 0xFF).filter(lambda f: not (f & SYN and f & (FIN | RST)))


@st.composite
def tcp_segments(draw: st.DrawFn) -> TcpSegment:
    ts = draw(st.none() | st.tuples(_u32, _u32))
    return TcpSegment(
        draw(st.integers(1, 65535)),
        draw(st.integers(1, 65535)),
        draw(_u32),
        draw(_u32),
        draw(_flags),
        draw(st.integers(0, 65535)),
        draw(st.integers(0, 65535)),
        draw(st.binary(max_size=80)),
        mss=draw(st.none() | st.integers(0, 65535)),
        wscale=draw(st.none() | st.integers(0, 14)),
        sack_permitted=draw(st.booleans()),
        sack=draw(st.none() | st.lists(st.tuples(_u32, _u32), min_size=1, max_size=5).map(tuple)),
        ts_val=None if ts is None else ts[0],
        ts_ecr=None if ts is None else ts[1],
    )


_addr_pair = st.one_of(
    st.tuples(st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4)),
    st.tuples(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16)),
)


@settings(max_examples=120)
@given(_addr_pair, tcp_segments(), st.integers(1, 255), st.integers(0, 65535), st.booleans())
def test_tcp_oracle_hypothesis(
    addrs: tuple[bytes, bytes], seg: TcpSegment, ttl: int, ident: int, offload: bool
) -> None:
    check_tcp(addrs[0], addrs[1], seg, ttl=ttl, ident=ident, offload=offload)


TCP_CASES = [
    TcpSegment(40000, 80, 1, 0, SYN, 65535, mss=1460, wscale=7, sack_permitted=True,
               ts_val=100, ts_ecr=0),
    TcpSegment(80, 40000, 2**32 - 1, 2, SYN | ACK, 28960, mss=1400, sack_permitted=True,
               wscale=0),
    TcpSegment(40000, 80, 5, 6, ACK, 512),
    TcpSegment(40000, 80, 5, 6, ACK | PSH, 512, 0, b"odd"),
    TcpSegment(40000, 80, 5, 6, ACK | PSH, 512, 0, b"even"),
    TcpSegment(40000, 80, 5, 6, ACK | PSH, 512, 0, bytes(range(256)) * 4 + b"z",
               ts_val=2**32 - 1, ts_ecr=7),
    TcpSegment(1, 65535, 9, 10, ACK, 1, 0, b"x", sack=((100, 200),)),
    TcpSegment(1, 65535, 9, 10, ACK, 1, 0, b"xy",
               sack=((1, 2), (3, 4), (5, 6), (2**32 - 2, 2**32 - 1))),
    TcpSegment(1, 65535, 9, 10, ACK, 1, 0, b"", ts_val=3, ts_ecr=4,
               sack=((1, 2), (3, 4), (5, 6), (7, 8))),
    TcpSegment(443, 50000, 9, 10, ACK | URG | PSH, 100, 3, b"urgent!"),
    TcpSegment(443, 50000, 9, 10, FIN | ACK, 100),
    TcpSegment(443, 50000, 9, 0, RST, 0),
]


@pytest.mark.parametrize("offload", [False, True])
@pytest.mark.parametrize(("src", "dst"), [(A4, B4), (A6, B6)])
@pytest.mark.parametrize("seg", TCP_CASES, ids=repr)
def test_tcp_oracle_cases(src: bytes, dst: bytes, seg: TcpSegment, offload: bool) -> None:
    check_tcp(src, dst, seg, offload=offload)


# --- UDP ------------------------------------------------------------------------------------


def check_udp(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    payload: bytes,
    *,
    ttl: int = 64,
    ident: int = 0,
    offload: bool = False,
) -> None:
    pkt = bytes(emit_udp_packet(src, dst, sport, dport, payload, ttl=ttl, ident=ident,
                                checksum_offload=offload))
    hl = 20 if len(src) == 4 else 40
    ulen = 8 + len(payload)
    check_ip(pkt, src, dst, IPPROTO_UDP, ttl)

    s = scapy_parse(pkt)
    u = s[UDP]
    assert (u.sport, u.dport, u.len) == (sport, dport, ulen)
    assert bytes(u.payload) == payload
    d = dpkt_parse(pkt)
    du = d.data
    assert isinstance(du, dpkt.udp.UDP)
    assert (du.sport, du.dport, du.ulen, bytes(du.data)) == (sport, dport, ulen, payload)
    ip = parse_ip(pkt)
    mine = parse_udp(pkt, ip.offset, ip.end)
    assert (mine.src_port, mine.dst_port, mine.length, bytes(mine.payload)) == (
        sport, dport, ulen, payload)

    field = int.from_bytes(pkt[hl + 6 : hl + 8], "big")
    s_full = scapy_rebuilt(pkt)
    d_full = bytearray(dpkt_rebuilt(pkt))
    if len(src) == 16 and d_full[hl + 6 : hl + 8] == b"\x00\x00":
        # dpkt's IPv6 path does not apply RFC 768's "0 is sent as 0xFFFF"; scapy does.
        d_full[hl + 6 : hl + 8] = b"\xff\xff"
    if not offload:
        assert field != 0
        assert s_full == pkt
        assert bytes(d_full) == pkt
    else:
        assert field == ref_sum(pseudo_header(src, dst, IPPROTO_UDP, ulen))
        device = (~ref_sum(pkt[hl:]) & 0xFFFF) or 0xFFFF
        full = pkt[: hl + 6] + device.to_bytes(2, "big") + pkt[hl + 8 :]
        assert s_full == full
        assert bytes(d_full) == full


@settings(max_examples=120)
@given(
    _addr_pair,
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.binary(max_size=120),
    st.integers(1, 255),
    st.integers(0, 65535),
    st.booleans(),
)
def test_udp_oracle_hypothesis(
    addrs: tuple[bytes, bytes],
    sport: int,
    dport: int,
    payload: bytes,
    ttl: int,
    ident: int,
    offload: bool,
) -> None:
    check_udp(addrs[0], addrs[1], sport, dport, payload, ttl=ttl, ident=ident, offload=offload)


def _zero_checksum_payload(src: bytes, dst: bytes) -> bytes:
    """Two payload bytes that make the UDP checksum compute to 0 (sent as 0xFFFF)."""
    partial = ref_sum(pseudo_header(src, dst, IPPROTO_UDP, 10) + struct.pack("!HHH", 7, 9, 10))
    return struct.pack("!H", 0xFFFF - partial)


@pytest.mark.parametrize("offload", [False, True])
@pytest.mark.parametrize(("src", "dst"), [(A4, B4), (A6, B6)])
@pytest.mark.parametrize("kind", ["empty", "odd", "even", "zero-sum", "large"])
def test_udp_oracle_cases(src: bytes, dst: bytes, kind: str, offload: bool) -> None:
    payload = {
        "empty": b"",
        "odd": b"abc",
        "even": b"abcd",
        "zero-sum": _zero_checksum_payload(src, dst),
        "large": bytes(range(256)) * 6 + b"!",
    }[kind]
    check_udp(src, dst, 7, 9, payload, offload=offload)


# --- ICMP -----------------------------------------------------------------------------------


def check_icmp(pkt: bytes, *, src: bytes, dst: bytes, icmp_type: int, code: int, rest: int,
               body: bytes) -> None:
    v4 = len(src) == 4
    check_ip(pkt, src, dst, IPPROTO_ICMP if v4 else IPPROTO_ICMPV6, 64, df=False)
    s = scapy_parse(pkt)
    layer = s.payload
    assert (layer.type, layer.code) == (icmp_type, code)
    d = dpkt_parse(pkt)
    di = d.data
    assert (di.type, di.code) == (icmp_type, code)
    hl = 20 if v4 else 40
    assert pkt[hl + 4 : hl + 8] == rest.to_bytes(4, "big")
    if icmp_type in (0, 8, 128, 129):
        assert (layer.id, layer.seq) == (rest >> 16, rest & 0xFFFF)
        scapy_body = layer.data if not v4 else bytes(layer.payload)
        assert bytes(scapy_body) == body
        assert (di.data.id, di.data.seq, bytes(di.data.data)) == (rest >> 16, rest & 0xFFFF, body)
    else:
        # An error quoting the offending packet. (scapy reads a quote over 128 bytes with
        # RFC 4884 heuristics, so compare the raw message body and the quoted addresses.)
        assert raw(layer)[8:] == body
        assert bytes(di)[8:] == body
        quoted = layer.payload
        assert packed(quoted.src) == dst
        if v4:
            assert layer.nexthopmtu == (rest & 0xFFFF if code == 4 else 0)
            assert di.data.mtu == rest & 0xFFFF
        elif icmp_type == 2:
            assert layer.mtu == rest
            assert di.data.mtu == rest
    ip = parse_ip(pkt)
    m = parse_icmp(pkt, ip.offset, ip.end)
    assert (m.type, m.code, m.rest, bytes(m.body)) == (icmp_type, code, rest, body)

    # Checksums: scapy rebuilds the whole packet; dpkt's in_cksum over the message (with the
    # IPv6 pseudo-header for ICMPv6) must give our field.
    assert scapy_rebuilt(pkt) == pkt
    msg = bytearray(pkt[hl:])
    field = int.from_bytes(msg[2:4], "big")
    msg[2:4] = b"\x00\x00"
    prefix = b"" if v4 else pseudo_header(src, dst, IPPROTO_ICMPV6, len(msg))
    assert dpkt.in_cksum(prefix + bytes(msg)) == field
    if v4:
        assert dpkt.in_cksum(pkt[:10] + b"\x00\x00" + pkt[12:20]) == int.from_bytes(
            pkt[10:12], "big")
    assert dpkt_rebuilt(pkt) == pkt


@settings(max_examples=80)
@given(
    st.sampled_from([(A4, B4, 8), (A4, B4, 0), (A6, B6, 128), (A6, B6, 129)]),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=100),
)
def test_icmp_echo_oracle_hypothesis(
    case: tuple[bytes, bytes, int], rest: int, body: bytes
) -> None:
    src, dst, icmp_type = case
    if len(src) == 4 and icmp_type == 0 and rest == 0 and not any(body):
        body += b"\x01"  # the all-zero ICMPv4 message is the known bug tested below
    pkt = bytes(build_icmp_packet(src, dst, icmp_type, 0, rest, body))
    check_icmp(pkt, src=src, dst=dst, icmp_type=icmp_type, code=0, rest=rest, body=body)


@pytest.mark.parametrize(("src", "dst", "req", "rep"), [(A4, B4, 8, 0), (A6, B6, 128, 129)])
@pytest.mark.parametrize("body", [b"", b"q", b"abcdefgh" * 8])
def test_echo_reply_oracle(src: bytes, dst: bytes, req: int, rep: int, body: bytes) -> None:
    request = bytes(build_icmp_packet(src, dst, req, 0, 0x77770003, body))
    check_icmp(request, src=src, dst=dst, icmp_type=req, code=0, rest=0x77770003, body=body)
    ip = parse_ip(request)
    reply = bytes(echo_reply(ip.version, ip.src, ip.dst, parse_icmp(request, ip.offset, ip.end)))
    check_icmp(reply, src=dst, dst=src, icmp_type=rep, code=0, rest=0x77770003, body=body)


def test_all_zero_icmpv4_message_oracle() -> None:
    pkt = bytes(build_icmp_packet(A4, B4, 0, 0, 0, b""))
    assert scapy_rebuilt(pkt) == pkt


V4_CODES = {"net": 0, "host": 1, "port": 3, "admin": 13, "mtu": 4}
V6_CODES = {"net": (1, 0), "host": (1, 3), "port": (1, 4), "admin": (1, 1), "mtu": (2, 0)}


def _originals(version: int) -> list[bytes]:
    src, dst = (A4, B4) if version == 4 else (A6, B6)
    return [
        bytes(emit_tcp_packet(src, dst, TcpSegment(40000, 443, 1, 0, SYN, 65535, mss=1460,
                                                   sack_permitted=True, ts_val=1, ts_ecr=0))),
        bytes(emit_udp_packet(src, dst, 5000, 53, b"query")),
        bytes(emit_udp_packet(src, dst, 5000, 53, bytes(range(256)) * 8)),  # quote is cut
    ]


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("reason", sorted(V4_CODES))
def test_unreachable_v4_oracle(reason: str, which: int) -> None:
    orig = _originals(4)[which]
    err = bytes(unreachable(orig, reason, mtu=1400))
    check_icmp(err, src=B4, dst=A4, icmp_type=3, code=V4_CODES[reason],
               rest=1400 if reason == "mtu" else 0, body=orig[:548])
    assert len(err) <= 576


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("reason", sorted(V6_CODES))
def test_unreachable_v6_oracle(reason: str, which: int) -> None:
    orig = _originals(6)[which]
    other = packed("2001:db8::ffff")
    err = bytes(unreachable(orig, reason, src=other, mtu=1280))
    icmp_type, code = V6_CODES[reason]
    check_icmp(err, src=other, dst=A6, icmp_type=icmp_type, code=code,
               rest=1280 if reason == "mtu" else 0, body=orig[:1232])
    assert len(err) <= 1280


# --- IP headers alone -----------------------------------------------------------------------

_IP_OPTIONS = [
    b"\x94\x04\x00\x00",  # Router Alert
    b"\x01",  # NOP
    b"\x07\x07\x04\x00\x00\x00\x00",  # Record Route, 1 slot
    b"\x44\x0c\x05\x00" + bytes(8),  # Timestamp, 2 slots
]


@st.composite
def ipv4_headers(draw: st.DrawFn) -> Ipv4Header:
    opts = b"".join(draw(st.lists(st.sampled_from(_IP_OPTIONS), max_size=3)))
    if len(opts) % 4:
        opts += b"\x00" * (4 - len(opts) % 4)  # EOL padding
    return Ipv4Header(
        src=draw(st.binary(min_size=4, max_size=4)),
        dst=draw(st.binary(min_size=4, max_size=4)),
        protocol=draw(st.sampled_from([253, 254, 59])),
        total_length=20 + len(opts) + draw(st.integers(0, 64)),
        ttl=draw(st.integers(0, 255)),
        ident=draw(st.integers(0, 65535)),
        tos=draw(st.integers(0, 255)),
        flags=draw(st.integers(0, 7)),
        fragment_offset=draw(st.integers(0, 0x1FFF)),
        options=opts,
    )


@settings(max_examples=100)
@given(ipv4_headers())
def test_ipv4_header_oracle(h: Ipv4Header) -> None:
    hdr = h.to_bytes()
    pkt = hdr + bytes(h.total_length - h.header_len)
    s = IP(pkt)
    assert (s.version, s.ihl * 4, s.tos, s.len, s.id) == (4, h.header_len, h.tos,
                                                          h.total_length, h.ident)
    assert (int(s.flags), s.frag, s.ttl, s.proto, s.chksum) == (h.flags, h.fragment_offset, h.ttl,
                                                                h.protocol, h.checksum)
    assert packed(s.src) == h.src and packed(s.dst) == h.dst
    assert b"".join(raw(o) for o in s.options) == h.options
    d = dpkt.ip.IP(pkt)
    assert (d.hl * 4, d.tos, d.len, d.id, d.ttl, d.p, d.sum) == (
        h.header_len, h.tos, h.total_length, h.ident, h.ttl, h.protocol, h.checksum)
    assert (bool(d.rf), bool(d.df), bool(d.mf), d.offset) == (
        bool(h.flags & 4), bool(h.flags & 2), bool(h.flags & 1), h.fragment_offset)
    assert bytes(d.opts) == h.options
    assert (d.src, d.dst) == (h.src, h.dst)
    s.chksum = None
    assert raw(s)[: h.header_len] == hdr
    d.sum = 0
    assert bytes(d)[: h.header_len] == hdr
    assert Ipv4Header.parse(pkt) == h


@settings(max_examples=100)
@given(
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=16, max_size=16),
    st.sampled_from([59, 253]),
    st.integers(0, 64),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 0xFFFFF),
)
def test_ipv6_header_oracle(
    src: bytes, dst: bytes, nh: int, plen: int, hlim: int, tc: int, fl: int
) -> None:
    h = Ipv6Header(src=src, dst=dst, next_header=nh, payload_length=plen, hop_limit=hlim,
                   traffic_class=tc, flow_label=fl)
    pkt = h.to_bytes() + bytes(plen)
    s = IPv6(pkt)
    assert (s.version, s.tc, s.fl, s.plen, s.nh, s.hlim) == (6, tc, fl, plen, nh, hlim)
    assert packed(s.src) == src and packed(s.dst) == dst
    assert raw(s) == pkt
    d = dpkt.ip6.IP6(pkt)
    assert (d.v, d.fc, d.flow, d.plen, d.nxt, d.hlim) == (6, tc, fl, plen, nh, hlim)
    assert (d.src, d.dst) == (src, dst)
    assert Ipv6Header.parse(pkt) == h
