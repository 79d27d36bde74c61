"""The capture tap: packets both ways reach the file (read back by dpkt and scapy), the
writer's backlog is bounded with drops counted, --pcap-max stops on a block boundary, and a
reader that goes away stops the capture but not the link."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import Callable, Sequence

import dpkt
from scapy.compat import raw
from scapy.layers.inet import IP, TCP, UDP
from scapy.utils import PcapNgReader

from tun2proxy.link.base import Link
from tun2proxy.link.pcap import CaptureWriter, PcapLink, open_capture_fd
from tun2proxy.wire import pcapng
from tun2proxy.wire.pcapfilter import parse_filter

SYN = raw(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=443, flags="S"))
SYNACK = raw(IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=443, dport=40000, flags="SA"))
DNS = raw(IP(src="10.0.0.1", dst="10.0.0.9") / UDP(sport=5353, dport=53) / b"query")


class MemLink(Link):
    """Packets handed in by the test; written packets kept."""

    name = "mem0"

    def __init__(self) -> None:
        self.deliver: Callable[[list[bytes]], None] | None = None
        self.written: list[bytes] = []
        self.closed = False

    def start(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[list[bytes]], None],
              on_error: Callable[[BaseException], None]) -> None:
        self.deliver = deliver

    def write_batch(self, packets: Sequence[bytes | bytearray]) -> None:
        self.written += [bytes(p) for p in packets]

    def close(self) -> None:
        self.closed = True

    def stats(self) -> dict[str, int]:
        return {"packets_in": 0}


def _tap(path: str, **kw: object) -> tuple[MemLink, PcapLink, list[list[bytes]]]:
    fd, owned = open_capture_fd(path)
    inner = MemLink()
    link = PcapLink(inner, CaptureWriter(fd, owned=owned, **kw))  # type: ignore[arg-type]
    got: list[list[bytes]] = []
    link.start(None, got.append, lambda e: None)  # type: ignore[arg-type]
    return inner, link, got


def test_both_directions_are_captured_and_passed_through(tmp_path: object) -> None:
    path = f"{tmp_path}/c.pcapng"
    inner, link, got = _tap(path)
    assert inner.deliver is not None
    inner.deliver([SYN, DNS])
    link.write_batch([SYNACK])
    assert got == [[SYN, DNS]] and inner.written == [SYNACK]
    link.close()
    assert inner.closed
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    pkts = list(PcapNgReader(path))
    assert [raw(p) for p in pkts] == [SYN, DNS, SYNACK]
    assert [p.direction for p in pkts] == [pcapng.INBOUND, pcapng.INBOUND, pcapng.OUTBOUND]
    st = link.stats()
    assert st["pcap_packets"] == 3 and st["pcap_dropped"] == 0 and st["packets_in"] == 0


def test_the_filter_keeps_only_matching_packets(tmp_path: object) -> None:
    path = f"{tmp_path}/f.pcapng"
    fd, _ = open_capture_fd(path)
    inner = MemLink()
    link = PcapLink(inner, CaptureWriter(fd), parse_filter("tcp and port 443"))
    link.start(None, lambda b: None, lambda e: None)  # type: ignore[arg-type]
    assert inner.deliver is not None
    inner.deliver([SYN, DNS])
    link.write_batch([SYNACK, DNS])
    link.close()
    assert [raw(p) for p in PcapNgReader(path)] == [SYN, SYNACK]
    assert inner.written == [SYNACK, DNS]  # the filter decides the capture, not the traffic


def test_a_stalled_reader_costs_bounded_memory_and_counts_drops() -> None:
    r, w = os.pipe()  # nobody reads: the writer thread blocks once the pipe is full
    try:
        writer = CaptureWriter(w, owned=False, buffer=256 << 10)
        inner = MemLink()
        link = PcapLink(inner, writer)
        big = raw(IP(src="10.0.0.2", dst="10.0.0.1") / TCP() / (b"x" * 60000))
        for _ in range(50):  # 3 MB offered, far more than pipe + buffer
            link.write_batch([big])
        assert len(inner.written) == 50  # the link itself never waits
        assert link.dropped > 0
        assert writer.accepted - writer.written <= 256 << 10
        assert link.captured + link.dropped == 50
        assert link.stats()["pcap_dropped"] == link.dropped
    finally:
        os.close(r)  # the blocked write fails with EPIPE: the thread ends
        writer.close()
        os.close(w)
    assert writer.stopped == "gone"


def test_max_bytes_stops_the_capture_on_a_block_boundary(tmp_path: object) -> None:
    path = f"{tmp_path}/m.pcapng"
    fd, _ = open_capture_fd(path)
    limit = len(pcapng.header("mem0")) + 5 * pcapng.epb_size(len(SYN)) + 10
    inner = MemLink()
    link = PcapLink(inner, CaptureWriter(fd, max_bytes=limit))
    for _ in range(4):
        link.write_batch([SYN, SYN])
    link.close()
    with open(path, "rb") as f:
        data = f.read()
    assert len(data) <= limit
    assert len(list(dpkt.pcapng.Reader(io.BytesIO(data)))) == 5
    assert link.writer.stopped == "max"
    assert len(inner.written) == 8
    assert link.dropped == 0  # a cap is not a drop


def test_a_reader_that_goes_away_stops_the_capture_only() -> None:
    r, w = os.pipe()
    os.close(r)
    writer = CaptureWriter(w)
    inner = MemLink()
    link = PcapLink(inner, writer)
    link.write_batch([SYN])
    for _ in range(500):  # the writer thread sees the EPIPE
        if writer.stopped:
            break
        time.sleep(0.01)
    assert writer.stopped == "gone"
    link.write_batch([SYN])
    assert len(inner.written) == 2
    link.close()


def test_snaplen_keeps_the_head_of_each_packet_and_its_whole_length(tmp_path: object) -> None:
    path = f"{tmp_path}/s.pcapng"
    fd, _ = open_capture_fd(path)
    inner = MemLink()
    link = PcapLink(inner, CaptureWriter(fd), snaplen=64)
    big = raw(IP(src="10.0.0.2", dst="10.0.0.1") / TCP() / (b"x" * 3000))
    link.write_batch([bytearray(big), SYN])
    link.close()
    with open(path, "rb") as f:
        reader = dpkt.pcapng.Reader(f)
        got = [bytes(buf) for _, buf in reader]
    assert got == [big[:64], SYN]
    assert inner.written == [big, SYN]
    with open(path, "rb") as f:
        data = f.read()
    off = len(pcapng.header("mem0", snaplen=64))
    end = off + int.from_bytes(data[off + 4:off + 8], "little")
    epb = dpkt.pcapng.EnhancedPacketBlockLE(data[off:end])
    assert (epb.caplen, epb.pkt_len) == (64, len(big))  # the original length is kept
