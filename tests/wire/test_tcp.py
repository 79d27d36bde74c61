"""TCP: header and option parsing, build_options layout, emit_tcp_packet golden bytes."""

from __future__ import annotations

import ipaddress
import itertools
import struct

import pytest

from tun2proxy.errors import MalformedPacket
from tun2proxy.wire import (
    ACK,
    CWR,
    ECE,
    FIN,
    IPPROTO_TCP,
    PSH,
    RST,
    SYN,
    URG,
    TcpSegment,
    build_options,
    emit_tcp_packet,
    flags_str,
    parse_ip,
    parse_tcp,
)

SRC4 = ipaddress.ip_address("192.0.2.1").packed
DST4 = ipaddress.ip_address("198.51.100.2").packed
SRC6 = ipaddress.ip_address("2001:db8::1").packed
DST6 = ipaddress.ip_address("2001:db8::2").packed


def ref_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def tcp_raw(
    options: bytes = b"",
    *,
    sport: int = 40000,
    dport: int = 80,
    seq: int = 1,
    ack: int = 2,
    flags: int = ACK,
    window: int = 1000,
    urgent: int = 0,
    payload: bytes = b"",
    doff: int | None = None,
) -> bytes:
    if doff is None:
        doff = (20 + len(options)) // 4
    return (
        struct.pack("!HHIIHHHH", sport, dport, seq, ack, (doff << 12) | flags, window, 0xBEEF,
                    urgent)
        + options
        + payload
    )


def parse(raw: bytes, prefix: int = 0) -> TcpSegment:
    data = b"\xaa" * prefix + raw + b"\xbb" * 3  # bytes outside [start, end) must not matter
    return parse_tcp(data, prefix, prefix + len(raw))


# --- golden bytes ---------------------------------------------------------------------------

GOLDEN_SYN = bytes.fromhex(
    # IPv4: 45 00 len=60 id=0 DF ttl=64 proto=6 sum=4e85 192.0.2.1 > 198.51.100.2
    "4500003c000040004006" "4e85" "c0000201" "c6336402"
    # TCP: 49152 > 443 seq=0x01020304 ack=0 doff=10 SYN win=64240 sum=56b0 urg=0
    "c00001bb" "01020304" "00000000" "a002" "faf0" "56b0" "0000"
    # MSS 1460 | SACK-permitted, TS val=0x11223344 ecr=0 | NOP, WS 7
    "020405b4" "0402080a1122334400000000" "01030307"
)


def test_golden_syn_emit() -> None:
    """Checksums by hand: IP words sum 0x2b178 -> 0x4e85; TCP+pseudo 0x4a94b -> 0x56b0."""
    seg = TcpSegment(49152, 443, 0x01020304, 0, SYN, 64240, mss=1460, sack_permitted=True,
                     ts_val=0x11223344, ts_ecr=0, wscale=7)
    assert bytes(emit_tcp_packet(SRC4, DST4, seg)) == GOLDEN_SYN
    pseudo = SRC4 + DST4 + bytes((0, IPPROTO_TCP)) + struct.pack("!H", 40)
    assert ref_sum(GOLDEN_SYN[:20]) == 0xFFFF
    assert ref_sum(pseudo + GOLDEN_SYN[20:]) == 0xFFFF


def test_golden_syn_parse_field_by_field() -> None:
    ip = parse_ip(GOLDEN_SYN)
    assert (ip.version, ip.src, ip.dst, ip.protocol, ip.ttl) == (4, SRC4, DST4, 6, 64)
    assert (ip.offset, ip.end, ip.fragment) == (20, 60, False)
    seg = parse_tcp(GOLDEN_SYN, ip.offset, ip.end)
    assert (seg.src_port, seg.dst_port) == (49152, 443)
    assert (seg.seq, seg.ack, seg.flags) == (0x01020304, 0, SYN)
    assert (seg.window, seg.urgent, seg.header_len) == (64240, 0, 40)
    assert seg.mss == 1460
    assert seg.sack_permitted is True
    assert (seg.ts_val, seg.ts_ecr) == (0x11223344, 0)
    assert seg.wscale == 7
    assert seg.sack is None
    assert seg.bad_options is False
    assert bytes(seg.payload) == b""


def test_emit_v6_with_payload_layout() -> None:
    seg = TcpSegment(1, 2, 2**32 - 1, 7, ACK | PSH, 512, 0, b"abc", ts_val=5, ts_ecr=6)
    pkt = emit_tcp_packet(SRC6, DST6, seg, ttl=9)
    assert len(pkt) == 40 + 32 + 3
    assert pkt[:8] == bytes.fromhex("60000000" "0023" "06" "09")
    assert pkt[8:24] == SRC6 and pkt[24:40] == DST6
    assert pkt[40 + 12] == 0x80  # data offset 8 words
    assert pkt[60:72] == b"\x01\x01\x08\x0a" + struct.pack("!II", 5, 6)
    assert pkt[72:] == b"abc"
    pseudo = SRC6 + DST6 + struct.pack("!I3xB", 35, IPPROTO_TCP)
    assert ref_sum(pseudo + bytes(pkt[40:])) == 0xFFFF


def test_emit_ip_fields_and_masking() -> None:
    seg = TcpSegment(5, 6, seq=2**32 + 9, ack=2**36 - 1, flags=FIN | ACK, window=3)
    pkt = emit_tcp_packet(SRC4, DST4, seg, ttl=1, ident=0x4242)
    assert pkt[4:6] == b"\x42\x42" and pkt[8] == 1
    got = parse_tcp(pkt, 20, len(pkt))
    assert (got.seq, got.ack) == (9, 0xFFFFFFFF)


def test_emit_options_override() -> None:
    seg = TcpSegment(5, 6, flags=ACK, mss=1000)
    raw_opts = b"\x01\x01\x01\x00"
    pkt = emit_tcp_packet(SRC4, DST4, seg, options=raw_opts)
    assert pkt[20 + 12] >> 4 == 6
    assert pkt[40:44] == raw_opts
    assert parse_tcp(pkt, 20, len(pkt)).mss is None
    pkt = emit_tcp_packet(SRC4, DST4, seg, options=b"")
    assert len(pkt) == 40


@pytest.mark.parametrize(("src", "dst"), [(SRC4, DST4), (SRC6, DST6)])
@pytest.mark.parametrize("payload", [b"", b"x", b"xy", bytes(range(255))])
def test_checksum_offload_holds_folded_pseudo_sum(src: bytes, dst: bytes, payload: bytes) -> None:
    seg = TcpSegment(1000, 2000, 5, 6, ACK, 100, 0, payload, ts_val=1, ts_ecr=2)
    full = emit_tcp_packet(src, dst, seg)
    part = emit_tcp_packet(src, dst, seg, checksum_offload=True)
    hl = 20 if len(src) == 4 else 40
    tcp_len = len(full) - hl
    assert full[:hl] == part[:hl]
    assert full[hl + 18 :] == part[hl + 18 :]
    if len(src) == 4:
        pseudo = src + dst + bytes((0, IPPROTO_TCP)) + struct.pack("!H", tcp_len)
    else:
        pseudo = src + dst + struct.pack("!I3xB", tcp_len, IPPROTO_TCP)
    field = int.from_bytes(part[hl + 16 : hl + 18], "big")
    assert field == ref_sum(pseudo)  # folded, not complemented, 1..0xFFFF
    # A device that sums the segment from the TCP header on produces the full checksum.
    assert ~ref_sum(bytes(part[hl:])) & 0xFFFF == int.from_bytes(full[hl + 16 : hl + 18], "big")


def test_checksum_offload_zero_pseudo_sum_is_ffff() -> None:
    """A pseudo-header sum that folds to zero is written as 0xFFFF, as Linux does."""
    src = bytes((10, 0, 0, 1))
    # Words 0a00 0001 | w 0000 | 0006 | 0014 (20-byte segment): choose w so they sum to -0.
    w = 0xFFFF - (0x0A00 + 0x0001 + IPPROTO_TCP + 20)
    dst = w.to_bytes(2, "big") + b"\x00\x00"
    pseudo = src + dst + bytes((0, IPPROTO_TCP)) + struct.pack("!H", 20)
    assert ref_sum(pseudo) == 0xFFFF
    part = emit_tcp_packet(src, dst, TcpSegment(1, 2, flags=ACK), checksum_offload=True)
    assert part[36:38] == b"\xff\xff"
    full = emit_tcp_packet(src, dst, TcpSegment(1, 2, flags=ACK))
    assert ~ref_sum(bytes(part[20:])) & 0xFFFF == int.from_bytes(full[36:38], "big")


# --- header validation ----------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 19])
def test_truncated(n: int) -> None:
    with pytest.raises(MalformedPacket) as e:
        parse_tcp(tcp_raw(), 0, n)
    assert e.value.reason == "tcp-truncated"


@pytest.mark.parametrize("doff", [0, 1, 4])
def test_data_offset_below_five(doff: int) -> None:
    with pytest.raises(MalformedPacket) as e:
        parse(tcp_raw(doff=doff, payload=bytes(40)))
    assert e.value.reason == "tcp-offset"


@pytest.mark.parametrize(("doff", "extra"), [(6, 0), (6, 3), (15, 39), (8, 0)])
def test_data_offset_beyond_segment(doff: int, extra: int) -> None:
    raw = tcp_raw(doff=doff) + bytes(extra)
    with pytest.raises(MalformedPacket) as e:
        parse(raw)
    assert e.value.reason == "tcp-offset"


def test_data_offset_bounded_by_end_not_buffer() -> None:
    raw = tcp_raw(doff=6) + b"\x01\x01\x01\x01"
    assert parse_tcp(raw, 0, 24).header_len == 24
    with pytest.raises(MalformedPacket):
        parse_tcp(raw, 0, 23)


@pytest.mark.parametrize(
    "flags", [SYN | FIN, SYN | RST, SYN | FIN | RST, SYN | FIN | ACK, SYN | RST | ACK | PSH]
)
def test_impossible_flags(flags: int) -> None:
    with pytest.raises(MalformedPacket) as e:
        parse(tcp_raw(flags=flags))
    assert e.value.reason == "tcp-flags"


@pytest.mark.parametrize(
    "flags", [SYN, SYN | ACK, FIN | ACK, RST, RST | ACK, ACK | PSH | URG | ECE | CWR, 0]
)
def test_possible_flags(flags: int) -> None:
    assert parse(tcp_raw(flags=flags)).flags == flags


@pytest.mark.parametrize(("sport", "dport"), [(0, 80), (80, 0), (0, 0)])
def test_zero_port(sport: int, dport: int) -> None:
    with pytest.raises(MalformedPacket) as e:
        parse(tcp_raw(sport=sport, dport=dport))
    assert e.value.reason == "tcp-port"


def test_basic_fields_and_payload_view() -> None:
    raw = tcp_raw(sport=65535, dport=1, seq=2**32 - 1, ack=0x80000000, flags=ACK | URG,
                  window=0xFFFF, urgent=7, payload=b"hello")
    for prefix in (0, 14, 40):
        seg = parse(raw, prefix)
        assert (seg.src_port, seg.dst_port, seg.seq, seg.ack) == (65535, 1, 2**32 - 1, 2**31)
        assert (seg.flags, seg.window, seg.urgent, seg.header_len) == (ACK | URG, 0xFFFF, 7, 20)
        assert isinstance(seg.payload, memoryview)
        assert bytes(seg.payload) == b"hello"
        assert (seg.mss, seg.wscale, seg.sack, seg.ts_val, seg.ts_ecr) == (None,) * 5
        assert seg.sack_permitted is False and seg.bad_options is False


# --- options --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (b"\x02\x04\x05\xb4", {"mss": 1460}),
        (b"\x02\x04\xff\xff", {"mss": 65535}),
        (b"\x01\x03\x03\x0e", {"wscale": 14}),
        (b"\x03\x03\x00\x01", {"wscale": 0}),
        (b"\x01\x01\x04\x02", {"sack_permitted": True}),
        (b"\x04\x02\x01\x01", {"sack_permitted": True}),
        (b"\x01\x01\x05\x0a" + struct.pack("!II", 1, 2), {"sack": ((1, 2),)}),
        (
            b"\x01\x01\x05\x12" + struct.pack("!4I", 1, 2, 3, 4),
            {"sack": ((1, 2), (3, 4))},
        ),
        (
            b"\x01\x01\x05\x1a" + struct.pack("!6I", 1, 2, 3, 4, 2**32 - 1, 0),
            {"sack": ((1, 2), (3, 4), (2**32 - 1, 0))},
        ),
        (
            b"\x01\x01\x05\x22" + struct.pack("!8I", *range(8)),
            {"sack": ((0, 1), (2, 3), (4, 5), (6, 7))},
        ),
        (b"\x01\x01\x08\x0a" + struct.pack("!II", 7, 8), {"ts_val": 7, "ts_ecr": 8}),
        (b"\x08\x0a" + struct.pack("!II", 7, 8) + b"\x01\x01", {"ts_val": 7, "ts_ecr": 8}),
        (b"\x01" * 8, {}),
        (b"\x00" * 4, {}),
        (
            b"\x02\x04\x05\xb4\x04\x02\x08\x0a" + struct.pack("!II", 9, 10) + b"\x01\x03\x03\x07",
            {"mss": 1460, "sack_permitted": True, "ts_val": 9, "ts_ecr": 10, "wscale": 7},
        ),
        # Unknown kinds with a sane length are skipped.
        (b"\x1e\x04\xab\xcd\x02\x04\x01\x00", {"mss": 256}),
        (b"\xfe\x06\x00\x00\x00\x00\x03\x03\x05\x01", {"wscale": 5}),
    ],
)
def test_option_decoding(options: bytes, expected: dict[str, object]) -> None:
    options += b"\x00" * (-len(options) % 4)
    seg = parse(tcp_raw(options, payload=b"data"))
    defaults: dict[str, object] = {
        "mss": None, "wscale": None, "sack_permitted": False, "sack": None,
        "ts_val": None, "ts_ecr": None,
    }
    defaults.update(expected)
    got = {k: getattr(seg, k) for k in defaults}
    assert got == defaults
    assert seg.bad_options is False
    assert seg.header_len == 20 + len(options)
    assert bytes(seg.payload) == b"data"


def test_eol_stops_parsing_garbage_after_it() -> None:
    opts = b"\x02\x04\x05\xb4\x00\x02\x00\xff\x03\x03\x07\x01"  # garbage is a bad option
    seg = parse(tcp_raw(opts))
    assert seg.mss == 1460
    assert seg.wscale is None
    assert seg.bad_options is False


@pytest.mark.parametrize(
    "bad",
    [
        b"\x03\x00\x01\x01",  # length 0
        b"\x03\x01\x01\x01",  # length 1
        b"\x08\x0a\x00\x00",  # TS running past the header
        b"\x1e\xff\x00\x00",  # unknown kind running past the header
        b"\x01\x01\x01\x02",  # kind in the last byte, no room for a length
        b"\x05\x00\x00\x00",  # SACK with length 0
    ],
)
def test_malformed_length_sets_bad_options_keeps_earlier(bad: bytes) -> None:
    opts = b"\x02\x04\x05\xb4" + b"\x01\x01\x04\x02" + bad
    for payload in (b"p", b""):
        raw = tcp_raw(opts, payload=payload)
        # In a larger buffer, and with the header ending exactly at the end of the buffer.
        for seg in (parse(raw), parse_tcp(raw, 0, len(raw))):
            assert seg.bad_options is True
            assert seg.mss == 1460
            assert seg.sack_permitted is True
            assert seg.wscale is None and seg.ts_val is None and seg.sack is None
            assert seg.header_len == 32
            assert bytes(seg.payload) == payload


def test_malformed_option_does_not_read_past_header() -> None:
    """A length that fits the buffer but not the header is still malformed."""
    opts = b"\x01\x01\x08\x0c"  # TS-sized option claiming 12 bytes, 4 left in the header
    raw = tcp_raw(opts, payload=struct.pack("!II", 1, 2) + b"zz")
    seg = parse(raw)
    assert seg.bad_options is True
    assert seg.ts_val is None
    assert bytes(seg.payload) == struct.pack("!II", 1, 2) + b"zz"


@pytest.mark.parametrize(
    "wrong",
    [
        b"\x02\x03\x05\x01",  # MSS length 3
        b"\x02\x06\x05\xb4\x00\x00",  # MSS length 6
        b"\x03\x04\x07\x00",  # WS length 4
        b"\x03\x02\x01\x01",  # WS length 2
        b"\x04\x03\x00\x01",  # SACK-permitted length 3
        b"\x05\x02\x01\x01",  # SACK with no block
        b"\x05\x0b" + bytes(9),  # SACK not a whole number of blocks
        b"\x08\x08" + bytes(6),  # TS length 8
        b"\x08\x0c" + bytes(10),  # TS length 12
    ],
)
def test_wrong_length_known_options_ignored(wrong: bytes) -> None:
    opts = wrong + b"\x01\x03\x03\x09"
    opts += b"\x01" * (-len(opts) % 4)
    seg = parse(tcp_raw(opts))
    assert seg.bad_options is False
    assert seg.wscale == 9  # parsing continued past the ignored option
    assert seg.mss is None and seg.sack is None and seg.ts_val is None
    assert seg.sack_permitted is False


def test_sack_with_five_blocks_ignored() -> None:
    # Five blocks need 42 bytes, more than the 40-byte option area: the length overruns.
    seg = parse(tcp_raw(b"\x05\x2a" + bytes(38)))
    assert seg.sack is None
    assert seg.bad_options is True


def test_timestamp_fast_path_skips_general_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    import tun2proxy.wire.tcp as tcp_module

    def boom(*args: object) -> None:
        raise AssertionError("general option parser called")

    monkeypatch.setattr(tcp_module, "_parse_options", boom)
    seg = parse(tcp_raw(b"\x01\x01\x08\x0a" + struct.pack("!II", 3, 4)))
    assert (seg.ts_val, seg.ts_ecr) == (3, 4)
    with pytest.raises(AssertionError, match="general option parser"):
        parse(tcp_raw(b"\x08\x0a" + struct.pack("!II", 3, 4) + b"\x01\x01"))


def test_timestamp_fast_path() -> None:
    """NOP NOP TS as the only options takes the fast path and gives the same result."""
    fast = parse(tcp_raw(b"\x01\x01\x08\x0a" + struct.pack("!II", 2**32 - 1, 12345)))
    slow = parse(tcp_raw(b"\x08\x0a" + struct.pack("!II", 2**32 - 1, 12345) + b"\x01\x00"))
    assert fast.header_len == slow.header_len == 32
    assert (fast.ts_val, fast.ts_ecr) == (slow.ts_val, slow.ts_ecr) == (2**32 - 1, 12345)
    assert fast == slow
    assert fast.bad_options is False
    # The same prefix in a longer header goes through the general parser.
    longer = parse(tcp_raw(b"\x01\x01\x08\x0a" + struct.pack("!II", 1, 2) + b"\x02\x04\x01\x00"))
    assert (longer.ts_val, longer.ts_ecr, longer.mss) == (1, 2, 256)


# --- build_options --------------------------------------------------------------------------

TS = (0x01020304, 0x0A0B0C0D)
TSB = struct.pack("!II", *TS)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, b""),
        ({"mss": 1460}, b"\x02\x04\x05\xb4"),
        ({"wscale": 7}, b"\x01\x03\x03\x07"),
        ({"sack_permitted": True}, b"\x01\x01\x04\x02"),
        ({"timestamp": TS}, b"\x01\x01\x08\x0a" + TSB),
        ({"sack_permitted": True, "timestamp": TS}, b"\x04\x02\x08\x0a" + TSB),
        (
            {"mss": 1460, "sack_permitted": True, "timestamp": TS, "wscale": 7},
            b"\x02\x04\x05\xb4\x04\x02\x08\x0a" + TSB + b"\x01\x03\x03\x07",
        ),
        (
            {"mss": 536, "sack_permitted": True, "wscale": 0},
            b"\x02\x04\x02\x18\x01\x01\x04\x02\x01\x03\x03\x00",
        ),
        ({"sack": [(1, 2)]}, b"\x01\x01\x05\x0a" + struct.pack("!II", 1, 2)),
        (
            {"timestamp": TS, "sack": ((5, 6), (7, 8))},
            b"\x01\x01\x08\x0a" + TSB + b"\x01\x01\x05\x12" + struct.pack("!4I", 5, 6, 7, 8),
        ),
        ({"sack": ()}, b""),
        ({"sack": [(2**32 + 1, -1)]}, b"\x01\x01\x05\x0a" + struct.pack("!II", 1, 2**32 - 1)),
    ],
)
def test_build_options_layout(kwargs: dict[str, object], expected: bytes) -> None:
    assert build_options(**kwargs) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "blocks"),
    [
        ({}, 4),
        ({"mss": 1460}, 4),
        ({"wscale": 2}, 4),
        ({"mss": 1460, "wscale": 2}, 3),
        ({"timestamp": TS}, 3),
        ({"timestamp": TS, "sack_permitted": True}, 3),
        ({"timestamp": TS, "mss": 1}, 2),
        ({"timestamp": TS, "wscale": 1}, 2),
        ({"mss": 1460, "sack_permitted": True, "timestamp": TS, "wscale": 7}, 2),
    ],
)
def test_build_options_truncates_sack_to_fit(kwargs: dict[str, object], blocks: int) -> None:
    sack = [(10 * k, 10 * k + 5) for k in range(6)]
    out = build_options(sack=sack, **kwargs)  # type: ignore[arg-type]
    assert len(out) <= 40 and len(out) % 4 == 0
    seg = parse(tcp_raw(out))
    assert seg.bad_options is False
    assert seg.sack == tuple(sack[:blocks])


def test_build_options_every_combination_aligned_and_bounded() -> None:
    sacks = [None, [(1, 2)], [(1, 2)] * 2, [(1, 2)] * 3, [(1, 2)] * 4, [(1, 2)] * 9]
    for mss, ws, sp, ts, sack in itertools.product(
        [None, 1460], [None, 14], [False, True], [None, TS], sacks
    ):
        out = build_options(mss=mss, wscale=ws, sack_permitted=sp, timestamp=ts, sack=sack)
        assert len(out) % 4 == 0
        assert len(out) <= 40
        seg = parse(tcp_raw(out))
        assert (seg.mss, seg.wscale, seg.sack_permitted) == (mss, ws, sp)
        assert (seg.ts_val, seg.ts_ecr) == (ts if ts else (None, None))
        if sack:
            assert seg.sack is not None and 1 <= len(seg.sack) <= min(4, len(sack))
        else:
            assert seg.sack is None


# --- TcpSegment and flags_str ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "text"),
    [
        (0, "none"),
        (SYN, "S"),
        (SYN | ACK, "S."),
        (FIN | PSH | ACK, "FP."),
        (RST, "R"),
        (ACK, "."),
        (SYN | ECE | CWR, "SEW"),
        (URG | ACK, ".U"),
    ],
)
def test_flags_str(flags: int, text: str) -> None:
    assert flags_str(flags) == text


def test_segment_equality_and_repr() -> None:
    a = TcpSegment(1, 2, 3, 4, ACK, 5, 0, b"xy", sack=((1, 2),), ts_val=9, ts_ecr=None)
    b = TcpSegment(1, 2, 3, 4, ACK, 5, 0, memoryview(b"xy"), sack=((1, 2),), ts_val=9,
                   ts_ecr=None)
    assert a == b
    assert a != TcpSegment(1, 2, 3, 4, ACK, 5, 0, b"xz", sack=((1, 2),), ts_val=9)
    assert a != TcpSegment(1, 2, 3, 4, ACK, 6, 0, b"xy", sack=((1, 2),), ts_val=9)
    assert a.__eq__(object()) is NotImplemented
    # ts_ecr only matters when a timestamp is present.
    assert TcpSegment(1, 2, ts_ecr=5) == TcpSegment(1, 2, ts_ecr=6)
    with pytest.raises(TypeError):
        hash(a)
    r = repr(TcpSegment(1, 2, 3, 4, SYN | ACK, 5, mss=1460, wscale=7, sack_permitted=True,
                        sack=((10, 20),), ts_val=1, ts_ecr=2))
    assert "1 > 2 [S.]" in r and "mss 1460" in r and "wscale 7" in r and "sackOK" in r
    assert "sack 10:20" in r and "TS val 1 ecr 2" in r


def test_options_bytes_matches_build_options() -> None:
    seg = TcpSegment(1, 2, mss=1200, wscale=3, sack_permitted=True, ts_val=5, ts_ecr=None,
                     sack=((1, 2),))
    assert seg.options_bytes() == build_options(
        mss=1200, wscale=3, sack_permitted=True, timestamp=(5, 0), sack=((1, 2),)
    )
