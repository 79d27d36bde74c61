# mypy: disable-error-code="comparison-overlap"
# (mypy keeps a narrowed attribute such as ``conn.state`` narrowed across calls that change it)
"""Out-of-order data: reassembly, SACK blocks, duplicate ACKs, bounds, FIN out of order.

Checklist R3, R4, R5 (dup ACKs), O4 (receiver side).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tun2proxy.tcp import N_PEER_CLOSED, N_READABLE, TcpConfig

from .helpers import ACK, FIN, ISNS, Rig, State, pattern

STREAM = pattern(2000, seed=1)


def chunk(a: int, b: int) -> bytes:
    return STREAM[a:b]


def _sack_rig(**syn: object) -> Rig:
    r = Rig()
    r.establish(mss=1460, sack_permitted=True, **syn)
    return r


def _exhaust_quickack(r: Rig) -> None:
    for _ in range(20):
        r.send(ACK, b"q")
    r.conn.recv()
    r.advance(0.5)


@pytest.mark.parametrize("isn", ISNS)
def test_out_of_order_held_and_delivered_once(isn: int) -> None:
    r = Rig(remote_isn=isn, local_isn=isn ^ 0x5A5A5A5A)
    r.establish()
    base = 0
    out = r.send(ACK, chunk(100, 200), seq=100, advance=False)
    assert [(o.f, o.ack) for o in out] == [(".", base)]
    out = r.send(ACK, chunk(300, 400), seq=300, advance=False)
    assert [(o.f, o.ack) for o in out] == [(".", base)]
    assert r.conn.readable == 0
    r.conn.notify = 0
    out = r.send(ACK, chunk(0, 100), seq=0, advance=False)
    assert [(o.f, o.ack) for o in out] == [(".", 200)]  # gap filled: ACK at once
    assert r.conn.notify & N_READABLE
    out = r.send(ACK, chunk(200, 300), seq=200, advance=False)
    assert [(o.f, o.ack) for o in out] == [(".", 400)]
    assert r.conn.recv() == chunk(0, 400)
    assert r.conn.asm is None or not r.conn.asm.ranges
    # A late duplicate of held-then-delivered data adds nothing.
    out = r.send(ACK, chunk(300, 400), seq=300, advance=False)
    assert [(o.f, o.ack) for o in out] == [(".", 400)]
    assert r.conn.recv() == b""


def test_dup_ack_for_every_out_of_order_segment_even_after_quickack() -> None:
    r = Rig()
    r.establish()
    _exhaust_quickack(r)
    base = r.peer_nxt
    for k in range(1, 6):
        seq = base + 100 * k
        out = r.send(ACK, b"o" * 50, seq=seq, advance=False)
        assert [(o.f, o.ack) for o in out] == [(".", base)], k
    # the filling segment is acknowledged at once too (no delayed ACK)
    out = r.send(ACK, b"f" * 100, seq=base, advance=False)
    assert [(o.f, o.ack) for o in out] == [(".", base + 150)]


def test_overlaps_and_duplicates_keep_the_first_copy() -> None:
    r = Rig()
    r.establish()
    r.send(ACK, b"AAAA", seq=10, advance=False)
    r.send(ACK, b"BBBBBB", seq=12, advance=False)  # overlaps 12..14, extends to 18
    r.send(ACK, b"CC", seq=10, advance=False)  # exact duplicate region
    r.send(ACK, b"DDDDDDDDDDDDDDDDDDDD", seq=5, advance=False)  # covers everything held
    r.send(ACK, b"0123456789", seq=0, advance=False)
    data = r.conn.recv()
    assert len(data) == 25
    assert data[:10] == b"0123456789"  # the in-order segment itself
    assert data[10:14] == b"AAAA"  # held first
    assert data[14:18] == b"BBBB"
    assert data[18:25] == b"DDDDDDD"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1999), st.integers(1, 400)), min_size=1, max_size=25),
    st.randoms(use_true_random=False),
)
def test_reassembly_property_exactly_once_in_order(
    pieces: list[tuple[int, int]], rnd: object
) -> None:
    # Random segments of one stream, shuffled and duplicated, then the whole stream in
    # order: the app reads the stream exactly once, in order.
    r = Rig(remote_isn=2**32 - 700)
    r.establish(mss=1460, sack_permitted=True)
    segs = [(a, min(a + n, len(STREAM))) for a, n in pieces]
    segs += segs[: len(segs) // 3]
    rnd.shuffle(segs)  # type: ignore[attr-defined]
    got = bytearray()
    for a, b in segs:
        for o in r.send(ACK, chunk(a, b), seq=a, advance=False):
            assert o.ack <= len(STREAM)
            assert not o.sack or all(0 < s < e <= len(STREAM) for s, e in o.sack)
        got += r.conn.recv()
    for a in range(0, len(STREAM), 1000):
        r.send(ACK, chunk(a, a + 1000), seq=a, advance=False)
        got += r.conn.recv()
    assert bytes(got) == STREAM
    assert r.conn.rcv_nxt == r.conn.irs + 1 + len(STREAM)


def test_sack_blocks_most_recent_first() -> None:
    r = _sack_rig()
    out = r.send(ACK, chunk(100, 200), seq=100, advance=False)
    assert out[0].sack == ((100, 200),)
    out = r.send(ACK, chunk(300, 400), seq=300, advance=False)
    assert out[0].sack == ((300, 400), (100, 200))
    out = r.send(ACK, chunk(500, 600), seq=500, advance=False)
    assert out[0].sack == ((500, 600), (300, 400), (100, 200))
    out = r.send(ACK, chunk(700, 800), seq=700, advance=False)
    assert out[0].sack == ((700, 800), (500, 600), (300, 400), (100, 200))
    out = r.send(ACK, chunk(900, 1000), seq=900, advance=False)
    assert out[0].sack == ((900, 1000), (700, 800), (500, 600), (300, 400))  # 4 at most
    # A segment that lands in an older range makes that block first.
    out = r.send(ACK, chunk(150, 250), seq=150, advance=False)
    assert (out[0].sack or ())[0] == (100, 250)
    # After the gap fills the acknowledged block disappears.
    out = r.send(ACK, chunk(0, 100), seq=0, advance=False)
    assert out[0].ack == 250
    assert (100, 250) not in (out[0].sack or ())
    assert all(s >= 250 for s, _ in out[0].sack or ())


def test_sack_at_most_three_blocks_with_timestamps() -> None:
    r = _sack_rig(ts=(1, 0))
    for k in range(5):
        out = r.send(ACK, b"s" * 10, seq=100 * (k + 1), advance=False)
    assert out[0].ts_val is not None
    assert out[0].sack == ((500, 510), (400, 410), (300, 310))


def test_no_sack_option_unless_negotiated() -> None:
    r = Rig()
    r.establish(mss=1460)
    out = r.send(ACK, b"x" * 10, seq=100, advance=False)
    assert out[0].sack is None
    assert out[0].seg.header_len == 20


def test_sack_blocks_have_no_duplicates_after_extension() -> None:
    r = _sack_rig()
    r.send(ACK, chunk(100, 200), seq=100, advance=False)
    r.send(ACK, chunk(300, 400), seq=300, advance=False)
    out = r.send(ACK, chunk(200, 250), seq=200, advance=False)  # extends [100,200)
    assert out[0].sack == ((100, 250), (300, 400))


def test_sack_never_reports_data_below_the_ack() -> None:
    r = _sack_rig()
    r.send(ACK, chunk(100, 200), seq=100, advance=False)
    r.send(ACK, chunk(200, 300), seq=200, advance=False)  # extends the held range
    r.send(ACK, chunk(500, 600), seq=500, advance=False)
    out = r.send(ACK, chunk(0, 100), seq=0, advance=False)
    assert out[0].ack == 300
    assert out[0].sack == ((500, 600),)


@pytest.mark.parametrize("isn", [*ISNS, 2**32 - 150])
def test_sack_blocks_across_the_wrap(isn: int) -> None:
    r = Rig(remote_isn=isn)
    r.establish(mss=1460, sack_permitted=True)
    out = r.send(ACK, chunk(100, 200), seq=100, advance=False)
    assert out[0].seg.sack is not None
    (left, right) = out[0].seg.sack[0]
    assert left == (isn + 1 + 100) & 0xFFFFFFFF
    assert right == (isn + 1 + 200) & 0xFFFFFFFF
    assert out[0].sack == ((100, 200),)


def test_range_cap_holds() -> None:
    r = Rig(TcpConfig(max_ooo_ranges=2))
    r.establish()
    for s in (100, 300, 500):
        out = r.send(ACK, chunk(s, s + 100), seq=s, advance=False)
        assert [(o.f, o.ack) for o in out] == [(".", 0)]  # a dup ACK each time
    assert r.conn.asm is not None and len(r.conn.asm.ranges) == 2
    # Extending a held range is still allowed (no new range).
    r.send(ACK, chunk(200, 250), seq=200, advance=False)
    assert len(r.conn.asm.ranges) == 2
    out = r.send(ACK, chunk(0, 100), seq=0, advance=False)
    assert out[-1].ack == 250
    out = r.send(ACK, chunk(250, 450), seq=250, advance=False)
    assert out[-1].ack == 450  # [500, 600) was refused, so the stream stops at 450
    assert r.conn.recv() == chunk(0, 450)


def test_out_of_order_bytes_bounded_by_window() -> None:
    r = Rig(TcpConfig(recv_buffer=4096))
    r.establish()
    r.send(ACK, pattern(1500), seq=3500, advance=False)  # [3500, 5000): tail beyond 4096
    assert r.conn.asm is not None and r.conn.asm.nbytes == 596
    out = r.send(ACK, pattern(3500, seed=4), seq=0, advance=False)
    assert out[-1].ack == 4096
    assert r.conn.readable == 4096


@pytest.mark.parametrize("with_data", [True, False])
def test_fin_out_of_order_processed_when_gap_fills(with_data: bool) -> None:
    r = Rig()
    r.establish()
    if with_data:
        out = r.send(ACK | FIN, chunk(100, 200), seq=100, advance=False)
        fin_at = 200
    else:
        out = r.send(ACK | FIN, seq=100, advance=False)
        fin_at = 100
    assert out and all((o.f, o.ack) == (".", 0) for o in out)
    assert r.conn.state is State.ESTABLISHED
    assert not r.conn.notify & N_PEER_CLOSED
    out = r.send(ACK, chunk(0, 100), seq=0, advance=False)
    assert r.conn.state is State.CLOSE_WAIT
    assert r.conn.notify & N_PEER_CLOSED
    assert [(o.f, o.ack) for o in out] == [(".", fin_at + 1)]
    assert r.conn.recv() == chunk(0, fin_at)


def test_fin_out_of_order_with_two_holes() -> None:
    r = Rig()
    r.establish()
    r.send(ACK | FIN, chunk(300, 400), seq=300, advance=False)
    r.send(ACK, chunk(100, 200), seq=100, advance=False)
    r.send(ACK, chunk(0, 100), seq=0, advance=False)
    assert r.conn.state is State.ESTABLISHED
    out = r.send(ACK, chunk(200, 300), seq=200, advance=False)
    assert r.conn.state is State.CLOSE_WAIT
    assert out[-1].ack == 401
    assert r.conn.recv() == chunk(0, 400)


def test_out_of_order_data_with_fin_draws_one_dup_ack() -> None:
    r = Rig()
    r.establish()
    out = r.send(ACK | FIN, chunk(100, 200), seq=100, advance=False)
    assert [(o.f, o.ack) for o in out] == [(".", 0)]
