"""Urgent data (checklist A2): URG is parsed and tolerated, urgent bytes are delivered inline.

SOCKS, HTTP CONNECT and Shadowsocks carry a plain byte stream, so out-of-band data cannot be
relayed as such; RFC 6093 §5 recommends inline delivery, which is what we do. A pointer
beyond the segment (RFC 6093 §4: it may point into later data) or beyond the window must
change nothing.
"""

from __future__ import annotations

import pytest

from tun2proxy.wire.tcp import URG

from .helpers import ACK, FIN, ISNS, PSH, Rig, State, pattern


def _urgent(r: Rig, payload: bytes, pointer: int, flags: int = ACK | PSH | URG) -> None:
    seg = r.segment(flags, payload)
    seg.urgent = pointer
    r.input(seg)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("isn", ISNS)
@pytest.mark.parametrize("pointer", [0, 1, 5, 100, 1000, 0xFFFF])
def test_urgent_bytes_are_delivered_inline_in_order(version: int, isn: int, pointer: int) -> None:
    r = Rig(version=version, remote_isn=isn)
    r.establish()
    data = pattern(300)
    r.send(ACK | PSH, data[:100])
    _urgent(r, data[100:200], pointer)  # the pointer may lie in this segment or far beyond
    r.send(ACK | PSH, data[200:])
    r.advance(0.5)
    assert r.conn.recv() == data  # every byte once, in order, the urgent ones inline
    assert r.log[-1].ack == 300
    assert r.conn.state is State.ESTABLISHED


def test_urgent_flag_without_payload_is_a_plain_ack() -> None:
    r = Rig()
    r.establish()
    _urgent(r, b"", 0xFFFF, ACK | URG)
    _urgent(r, b"", 0, ACK | URG)
    r.send(ACK | PSH, b"abc")
    r.advance(0.5)
    assert r.conn.recv() == b"abc"
    assert r.conn.state is State.ESTABLISHED


def test_urgent_with_fin_closes_normally() -> None:
    r = Rig()
    r.establish()
    _urgent(r, b"last", 4, ACK | PSH | URG | FIN)
    r.advance(0.5)
    assert r.conn.recv() == b"last"
    assert r.conn.state is State.CLOSE_WAIT
    assert r.log[-1].ack == 5  # the four bytes and the FIN


def test_urgent_segment_out_of_order_is_reassembled() -> None:
    r = Rig()
    r.establish()
    data = pattern(3000, seed=2)
    late = r.segment(ACK | PSH | URG, data[1000:2000], seq=1000, advance=False)
    late.urgent = 2500  # beyond this segment and beyond the data so far
    r.input(late)
    r.send(ACK, data[:1000], seq=0)
    r.send(ACK | PSH, data[2000:], seq=2000)
    r.advance(0.5)
    assert r.conn.recv() == data
