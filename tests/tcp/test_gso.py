"""GSO sending: with ``gso_max_size`` and checksum offload, new data leaves in packets of many
MSS-sized segments (a :class:`GsoPacket` the device cuts); retransmissions stay single
segments; the byte stream and the sequence accounting are those of ordinary segments."""

from __future__ import annotations

import pytest

from tun2proxy.tcp import TcpConfig
from tun2proxy.testing.peer import parse_tcp_packet
from tun2proxy.wire import GsoPacket

from .helpers import ACK, Rig, pattern


def _rig(gso: int = 65000, version: int = 4) -> Rig:
    r = Rig(TcpConfig(gso_max_size=gso), version=version, mss_limit=1460)
    r.establish(mss=1460)
    r.conn.offload = True  # what a stack with checksum_offload gives its connections
    return r


def _emit(r: Rig) -> list[bytearray]:
    out: list[bytearray] = []
    r.conn.dispatch(r.now, out)
    return out


@pytest.mark.parametrize("version", [4, 6])
def test_new_data_goes_out_as_gso_packets_of_whole_segments(version: int) -> None:
    r = _rig(version=version)
    data = pattern(200_000)
    assert r.conn.send(data) == 200_000
    r.peer_window = 65535
    out = _emit(r)
    assert out and all(isinstance(p, GsoPacket) for p in out)
    mss = r.conn.snd_mss
    got = b""
    for p in out:
        _src, _dst, seg = parse_tcp_packet(p, verify=False)
        assert p.gso_size == mss  # type: ignore[attr-defined]
        assert len(seg.payload) > mss
        got += bytes(seg.payload)
    # The first flight is the initial window (10 segments): one packet of 10 * MSS.
    assert len(got) == 10 * mss
    assert got == data[: len(got)]


def test_without_offload_or_with_gso_off_segments_are_plain() -> None:
    for gso, offload in ((65000, False), (0, True)):
        r = Rig(TcpConfig(gso_max_size=gso), mss_limit=1460)
        r.establish(mss=1460)
        r.conn.offload = offload
        r.conn.send(pattern(50_000))
        out = _emit(r)
        assert out and not any(isinstance(p, GsoPacket) for p in out)
        assert all(len(parse_tcp_packet(p, verify=False)[2].payload) <= r.conn.snd_mss
                   for p in out)


def test_acks_of_the_segments_advance_and_retransmissions_are_single_segments() -> None:
    r = _rig()
    data = pattern(100_000)
    r.conn.send(data)
    out = _emit(r)
    mss = r.conn.snd_mss
    first = parse_tcp_packet(out[0], verify=False)[2]
    # The peer acknowledges the first two segments only, then three duplicate ACKs.
    una = r.conn.snd_una
    sent = r.send(ACK, ack=2 * mss)
    assert r.conn.snd_una == una + 2 * mss
    for _ in range(3):
        sent += r.send(ACK, ack=2 * mss)
    lost = [o for o in sent if o.seg.seq == (first.seq + 2 * mss) & 0xFFFFFFFF]
    assert lost, "the segment after the acknowledged ones is resent"
    assert len(lost[0].payload) == mss  # one segment, not a GSO packet
