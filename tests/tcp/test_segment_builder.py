"""The segment builder on its own: what it emits is what scapy reads, checksums included."""

from __future__ import annotations

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from tun2proxy.tcp.segment_builder import (
    SACK_EDGES,
    SACK_HEAD,
    TS_OPTION,
    TS_WORD,
    SegmentBuilder,
)
from tun2proxy.wire.gso import GsoPacket
from tun2proxy.wire.tcp import ACK, FIN, PSH, RST, SYN

from .helpers import ADDRS

PAYLOAD = bytearray(bytes(range(256)) * 20)


def _builder(version: int, offload: bool = False) -> SegmentBuilder:
    local, remote = ADDRS[version]
    return SegmentBuilder(local, 80, remote, 49500, offload)


def _scapy(pkt: bytes | bytearray, version: int) -> IP | IPv6:
    return IP(bytes(pkt)) if version == 4 else IPv6(bytes(pkt))


def _recomputed(pkt: bytes | bytearray, version: int) -> bytes:
    """The packet rebuilt by scapy with its own checksums."""
    p = _scapy(pkt, version)
    if version == 4:
        del p[IP].chksum
    del p[TCP].chksum
    return raw(p)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize(
    ("flags", "pstart", "pend"),
    [(ACK, 0, 0), (ACK | PSH, 100, 1560), (FIN | ACK, 5, 6), (RST | ACK, 0, 0), (SYN, 0, 0)],
)
def test_headers_payload_and_checksums(version: int, flags: int, pstart: int, pend: int) -> None:
    b = _builder(version)
    seq = (1 << 32) + 123  # unwrapped numbers go out modulo 2**32
    ack = (5 << 32) + 456
    pkt = b.build(flags, seq, ack, 0x1234, b"", PAYLOAD, pstart, pend)
    p = _scapy(pkt, version)
    t = p[TCP]
    assert (t.sport, t.dport, t.seq, t.ack) == (80, 49500, 123, 456)
    assert (int(t.flags), t.window, t.dataofs, t.urgptr) == (flags, 0x1234, 5, 0)
    assert bytes(t.payload) == bytes(PAYLOAD[pstart:pend])
    local, remote = ADDRS[version]
    if version == 4:
        assert (p.src, p.dst, p.ttl, p.proto, p.len) == (
            ".".join(map(str, local)), ".".join(map(str, remote)), 64, 6, len(pkt)
        )
        assert p.flags == "DF"
    else:
        assert (p.hlim, p.nh, p.plen) == (64, 6, len(pkt) - 40)
    assert _recomputed(pkt, version) == bytes(pkt)


@pytest.mark.parametrize("version", [4, 6])
def test_timestamp_and_sack_options(version: int) -> None:
    opts = TS_OPTION.pack(TS_WORD, 0xDEADBEEF, 77)
    opts += SACK_HEAD.pack(1, 1, 5, 2 + 16) + SACK_EDGES.pack(1000, 2000)
    opts += SACK_EDGES.pack(3000, 4000)
    pkt = _builder(version).build(ACK, 1, 2, 100, opts, PAYLOAD, 0, 7)  # odd length
    t = _scapy(pkt, version)[TCP]
    got = {k: v for k, v in t.options if k in ("Timestamp", "SAck")}
    assert got == {"Timestamp": (0xDEADBEEF, 77), "SAck": (1000, 2000, 3000, 4000)}
    assert t.dataofs == 5 + len(opts) // 4
    assert bytes(t.payload) == bytes(PAYLOAD[:7])
    assert _recomputed(pkt, version) == bytes(pkt)


@pytest.mark.parametrize("version", [4, 6])
def test_with_checksum_offload_the_tcp_field_holds_the_pseudo_header_sum(version: int) -> None:
    plain = _builder(version).build(ACK, 10, 20, 300, b"", PAYLOAD, 0, 99)
    off = _builder(version, offload=True).build(ACK, 10, 20, 300, b"", PAYLOAD, 0, 99)
    h = 20 if version == 4 else 40
    assert off[: h + 16] == plain[: h + 16] and off[h + 18 :] == plain[h + 18 :]
    assert off[h + 16 : h + 18] != plain[h + 16 : h + 18]
    # What the device does: the ones' complement sum of the segment with the partial sum in
    # the field, inverted, is the real checksum.
    seg = bytes(off[h:]) + b"\x00"
    s = sum(int.from_bytes(seg[i : i + 2], "big") for i in range(0, len(seg) - 1, 2))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    assert ~s & 0xFFFF == int.from_bytes(plain[h + 16 : h + 18], "big")

def test_gso_packets_carry_their_segment_size() -> None:
    b = _builder(4, offload=True)
    pkt = b.build(ACK, 0, 0, 100, b"", PAYLOAD, 0, 3000, 1000)
    assert isinstance(pkt, GsoPacket) and pkt.gso_size == 1000
    assert len(pkt) == 40 + 3000
    assert not isinstance(b.build(ACK, 0, 0, 100, b"", PAYLOAD, 0, 1000), GsoPacket)
