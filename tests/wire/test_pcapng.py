"""The pcapng encoder, read back by independent readers (scapy, dpkt)."""

from __future__ import annotations

import io

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.utils import PcapNgReader

from tun2proxy.wire import pcapng

TS = 1_700_000_000_123_456_789


def _capture(packets: list[tuple[bytes, int]], ts: int = TS) -> bytes:
    out = [pcapng.header("tun7")]
    for p, d in packets:
        block = b"".join(bytes(x) for x in pcapng.packet_block(p, ts, d))
        assert len(block) == pcapng.epb_size(len(p))
        out.append(block)
    return b"".join(out)


def test_scapy_reads_packets_directions_and_nanosecond_times(tmp_path: object) -> None:
    p1 = raw(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1234, dport=443, flags="S"))
    p2 = raw(IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=53, dport=999) / b"abcde")
    path = f"{tmp_path}/c.pcapng"
    with open(path, "wb") as f:
        f.write(_capture([(p1, pcapng.INBOUND), (p2, pcapng.OUTBOUND)]))
    got = list(PcapNgReader(path))
    assert [raw(g) for g in got] == [p1, p2]
    assert [g.direction for g in got] == [pcapng.INBOUND, pcapng.OUTBOUND]
    assert got[0].time == pytest.approx(TS / 1e9)
    assert str(got[0].time).startswith("1700000000.123456789")  # scapy keeps the ns exactly


@given(st.lists(st.binary(min_size=20, max_size=300), max_size=8),
       st.integers(min_value=0, max_value=(1 << 63) - 1))
def test_dpkt_reads_any_lengths(payloads: list[bytes], ts: int) -> None:
    data = _capture([(p, pcapng.OUTBOUND) for p in payloads], ts)
    reader = dpkt.pcapng.Reader(io.BytesIO(data))
    assert reader.datalink() == pcapng.LINKTYPE_RAW
    assert [bytes(buf) for _, buf in reader] == payloads


def test_header_is_one_section_and_one_interface() -> None:
    h = pcapng.header("tun0")
    assert h[:4] == b"\x0a\x0d\x0d\x0a"
    assert len(h) % 4 == 0
    reader = dpkt.pcapng.Reader(io.BytesIO(h))
    assert list(reader) == []
