"""ESTABLISHED: data both ways, windows, buffers, acceptability and ACK validation.

Checklist R1, R2, R6, R8, S1, S4, S5, S7, T1.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tun2proxy.errors import FlowStateError
from tun2proxy.tcp import N_READABLE, N_WRITABLE, TcpConfig

from .helpers import ACK, FIN, ISNS, PSH, Rig, State, data_of, pattern


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("isn", ISNS)
@pytest.mark.parametrize("remote_isn", [*ISNS, 2**32 - 3000])
def test_in_order_data_both_ways_across_the_wrap(version: int, isn: int, remote_isn: int) -> None:
    r = Rig(version=version, local_isn=isn, remote_isn=remote_isn)
    r.establish(mss=1000)
    # peer -> us, in segments of different sizes
    stream = pattern(7000)
    pos = 0
    for size in (1, 999, 1000, 500, 1500, 3000):
        r.send(ACK | PSH, stream[pos : pos + size])
        pos += size
    assert pos == len(stream)
    out = r.advance(0.1)
    assert r.conn.recv() == stream
    assert r.log[-1].ack == 7000
    assert out == [] or out[-1].ack == 7000
    # us -> peer
    down = pattern(9000, seed=3)
    assert r.conn.send(down) == 9000
    got = r.dispatch()
    assert data_of(got) == down
    seq = 0
    for o in got:
        assert o.seq == seq
        assert len(o.payload) <= 1000
        assert o.ack == 7000
        seq += len(o.payload)
    assert r.conn.snd_una == r.conn.iss + 1
    r.send(ACK, ack=9000)
    assert r.conn.snd_una == r.conn.iss + 9001
    assert r.conn.rtx_deadline is None


def test_readable_notification_is_edge_triggered() -> None:
    r = Rig()
    r.establish()
    r.conn.notify = 0
    r.send(ACK, b"one")
    assert r.conn.notify & N_READABLE
    r.conn.notify = 0
    r.send(ACK, b"two")
    assert not r.conn.notify & N_READABLE  # not re-armed until the owner reads
    assert r.conn.recv() == b"onetwo"
    r.send(ACK, b"three")
    assert r.conn.notify & N_READABLE


def test_recv_partial() -> None:
    r = Rig()
    r.establish()
    r.send(ACK, b"abcdef")
    assert r.conn.recv(2) == b"ab"
    assert r.conn.readable == 4
    assert r.conn.recv(100) == b"cdef"
    assert r.conn.recv() == b""


def test_advertised_window_is_free_receive_buffer_room() -> None:
    r = Rig(TcpConfig(recv_buffer=8192))
    synack = r.establish()
    assert synack.window == 8192
    out = r.send(ACK, b"a" * 1000)
    assert (out[0].ack, out[0].window) == (1000, 7192)
    out = r.send(ACK, b"b" * 1000)
    assert (out[0].ack, out[0].window) == (2000, 6192)
    # recv() of a window the peer knows to be more than half open: no ACK of its own (the
    # update rides on the next ACK; Linux's tcp_cleanup_rbuf rule)...
    assert len(r.conn.recv()) == 2000
    assert r.dispatch() == []
    # ...but once the known window is small, reading that opens it a lot is announced at once.
    out = r.send(ACK, b"c" * 5000)
    assert (out[0].ack, out[0].window) == (7000, 3192)
    assert len(r.conn.recv()) == 5000
    out = r.dispatch()
    assert [(o.f, o.ack, o.window) for o in out] == [(".", 7000, 8192)]


def test_advertised_window_is_scaled() -> None:
    r = Rig(TcpConfig(recv_buffer=256 * 1024))
    r.establish(wscale=7)
    out = r.send(ACK, b"a" * 1000)
    shift = r.config.recv_wscale
    assert shift == 3
    free = 256 * 1024 - 1000
    # the right edge we advertise covers exactly the free room (rounded up to the scale unit)
    assert free <= out[0].window << shift < free + (1 << shift)


def test_small_recv_does_not_send_window_update() -> None:
    r = Rig(TcpConfig(recv_buffer=8192))
    r.establish()
    r.send(ACK, b"a" * 1000)
    r.conn.recv(10)
    assert r.dispatch() == []  # receiver SWS avoidance


def test_send_buffer_is_bounded_and_writable_fires_after_acks() -> None:
    r = Rig(TcpConfig(send_buffer=4096))
    r.establish(mss=1460)
    assert r.conn.send_capacity == 4096
    assert r.conn.send(b"x" * 10_000) == 4096
    assert r.conn.send(b"y") == 0
    assert r.conn.send_capacity == 0
    out = r.dispatch()
    assert [len(o.payload) for o in out] == [1460, 1460, 1176]
    r.conn.notify = 0
    r.send(ACK, ack=500)
    assert not r.conn.notify & N_WRITABLE  # 500 bytes free: less than a quarter
    assert r.conn.send_capacity == 500
    r.send(ACK, ack=2000)
    assert r.conn.notify & N_WRITABLE
    assert r.conn.send_capacity == 2000
    r.conn.notify = 0
    r.send(ACK, ack=4096)
    assert not r.conn.notify & N_WRITABLE  # once per blocked episode


def test_writable_not_notified_when_never_blocked() -> None:
    r = Rig(TcpConfig(send_buffer=4096))
    r.establish()
    assert r.conn.send(b"x" * 100) == 100
    r.dispatch()
    r.conn.notify = 0
    r.send(ACK, ack=100)
    assert not r.conn.notify & N_WRITABLE


def test_psh_on_last_segment_only() -> None:
    r = Rig()
    r.establish(mss=1000)
    r.conn.send(b"p" * 3500)
    out = r.dispatch()
    assert [o.f for o in out] == [".", ".", ".", "P."]
    assert [len(o.payload) for o in out] == [1000, 1000, 1000, 500]


@pytest.mark.parametrize("window", [1, 100, 1000, 2999, 3000, 5000])
def test_segments_respect_mss_and_peer_window(window: int) -> None:
    r = Rig()
    r.establish(mss=1000, window=window)
    r.send(ACK, ack=0, window=window)
    r.conn.send(pattern(20_000))
    out = r.dispatch()
    assert out, "something must go out while the window is open"
    assert all(len(o.payload) <= 1000 for o in out)
    assert sum(len(o.payload) for o in out) <= window
    # ACK everything sent: the next flight again fits the window
    sent = out[-1].seq + len(out[-1].payload)
    out = r.send(ACK, ack=sent, window=window)
    assert out and sum(len(o.payload) for o in out) <= window
    assert out[0].seq == sent


def test_data_beyond_window_is_trimmed() -> None:
    r = Rig(TcpConfig(recv_buffer=4096))
    r.establish()
    out = r.send(ACK, pattern(5000))
    assert r.conn.readable == 4096
    assert [(o.ack, o.window) for o in out] == [(4096, 0)]
    assert r.conn.recv() == pattern(5000)[:4096]
    r.dispatch()
    # The peer resends the trimmed tail: it is accepted now.
    r.send(ACK, pattern(5000)[4096:], seq=4096)
    assert r.conn.recv() == pattern(5000)[4096:]


def test_fin_beyond_window_goes_with_the_trimmed_data() -> None:
    r = Rig(TcpConfig(recv_buffer=4096))
    r.establish()
    out = r.send(ACK | FIN, pattern(5000))
    assert r.conn.state is State.ESTABLISHED  # the FIN lay beyond the window
    assert out[-1].ack == 4096
    # exactly at the edge: the FIN fits
    r2 = Rig(TcpConfig(recv_buffer=4096))
    r2.establish()
    out = r2.send(ACK | FIN, pattern(4096))
    assert r2.conn.state is State.CLOSE_WAIT
    assert out[-1].ack == 4097


def test_segment_without_ack_flag_is_ignored() -> None:
    r = Rig()
    r.establish()
    assert r.send(PSH, b"hello", advance=False) == []
    assert r.send(0, b"hello", advance=False) == []
    assert r.send(FIN, advance=False) == []
    assert r.conn.readable == 0
    assert r.conn.state is State.ESTABLISHED


def test_ack_above_snd_nxt_draws_ack_and_is_dropped() -> None:
    r = Rig()
    r.establish()
    r.conn.send(b"abc")
    r.dispatch()
    out = r.send(ACK, b"data", ack=10, advance=False)
    assert [(o.f, o.seq, o.ack) for o in out] == [(".", 3, 0)]
    assert r.conn.readable == 0
    assert r.conn.snd_una == r.conn.iss + 1
    r.send(ACK, b"data", ack=3)
    assert r.conn.recv() == b"data"


def test_too_old_ack_is_dropped_rfc5961_5_2() -> None:
    r = Rig()
    r.peer_window = 1000
    r.establish(window=1000)
    assert r.conn.max_snd_wnd == 1000
    for i in range(3):
        r.conn.send(b"z" * 1000)
        out = r.dispatch()
        assert [(o.seq, len(o.payload)) for o in out] == [(1000 * i, 1000)]
        if i < 2:
            r.send(ACK, ack=1000 * (i + 1), window=1000)
    # SND.UNA = 2000, MAX.SND.WND = 1000: acceptable ACKs are >= 1000.
    out = r.send(ACK, b"old", ack=500, advance=False)
    assert [o.f for o in out] == ["."]
    assert r.conn.readable == 0
    out = r.send(ACK, b"ok", ack=1500)
    assert r.conn.recv() == b"ok"
    assert r.conn.snd_una == r.conn.iss + 2001


def test_old_segment_cannot_shrink_window_wl1() -> None:
    r = Rig()
    r.establish(mss=1000)
    # The later segment (seq 100) arrives first, with a big window ...
    out = r.send(ACK, b"b" * 100, seq=100, window=10_000, ack=0)
    assert out[0].ack == 0  # out of order
    # ... then the earlier one with a tiny window: SND.WL1 says it is older.
    r.send(ACK, b"a" * 100, seq=0, window=500, ack=0)
    assert r.conn.recv() == b"a" * 100 + b"b" * 100
    r.conn.send(pattern(8000))
    out = r.dispatch()
    assert sum(len(o.payload) for o in out) == 8000


def test_old_ack_cannot_shrink_window_wl2() -> None:
    r = Rig()
    r.establish(mss=1000)
    r.conn.send(b"x" * 2000)
    r.dispatch()
    r.send(ACK, ack=2000, window=10_000)
    # same SEG.SEQ, older SEG.ACK (still acceptable): no window update
    r.send(ACK, ack=1000, window=100)
    r.conn.send(pattern(8000))
    out = r.dispatch()
    assert sum(len(o.payload) for o in out) == 8000
    # a newer ACK may shrink it (the right edge stays where it was here)
    r.send(ACK, ack=10_000, window=0)
    r.conn.send(b"more")
    assert r.dispatch() == []


def test_pure_window_update_resumes_sending() -> None:
    r = Rig()
    r.establish(mss=1000)
    r.send(ACK, ack=0, window=1000)
    r.conn.send(pattern(3000))
    out = r.dispatch()
    assert sum(len(o.payload) for o in out) == 1000
    out = r.send(ACK, ack=1000, window=0)
    assert out == []
    out = r.send(ACK, ack=1000, window=2000)
    assert [(o.seq, len(o.payload)) for o in out] == [(1000, 1000), (2000, 1000)]


@pytest.mark.parametrize("count", [1, 30])
def test_duplicate_data_is_acked_every_time(count: int) -> None:
    # R2 / smoltcp 9d532a7b: ACKs for out-of-window *data* are not rate limited.
    r = Rig()
    r.establish()
    r.send(ACK, b"hello")
    acks = []
    for _ in range(count):
        acks += r.send(ACK, b"hello", seq=0, advance=False)
    assert [(o.f, o.ack) for o in acks] == [(".", 5)] * count
    assert r.conn.recv() == b"hello"


def test_retransmission_straddling_rcv_nxt_delivers_only_new_bytes() -> None:
    r = Rig()
    r.establish()
    r.send(ACK, b"abcdef")
    out = r.send(ACK, b"defghi", seq=3)
    assert out[-1].ack == 9
    assert r.conn.recv() == b"abcdefghi"


def test_future_segment_beyond_window_draws_ack() -> None:
    r = Rig(TcpConfig(recv_buffer=4096))
    r.establish()
    out = r.send(ACK, b"far", seq=5000, advance=False)
    assert [(o.f, o.ack) for o in out] == [(".", 0)]
    assert r.conn.readable == 0
    assert r.conn.asm is None or not r.conn.asm.ranges


@pytest.mark.parametrize("probe", [b"", b"\x00", b"Z"])
def test_keepalive_probe_from_app_is_acked_not_delivered(probe: bytes) -> None:
    # T1: RFC 1122 §4.2.3.6 keep-alive: SEG.SEQ = RCV.NXT - 1 with 0 or 1 garbage byte.
    r = Rig()
    r.establish()
    r.send(ACK, b"abc")
    r.conn.recv()
    r.conn.notify = 0
    for _ in range(3):
        r.now += 15.0
        out = r.send(ACK, probe, seq=2, advance=False)
        assert [(o.f, o.seq, o.ack) for o in out] == [(".", 0, 3)]
    assert r.conn.readable == 0
    assert not r.conn.notify & N_READABLE
    assert r.conn.state is State.ESTABLISHED


def test_send_after_shutdown_raises() -> None:
    r = Rig()
    r.establish()
    r.conn.shutdown()
    with pytest.raises(FlowStateError):
        r.conn.send(b"x")
    assert r.conn.send_capacity == 0
    r.conn.shutdown()  # idempotent


def test_bulk_transfer_both_ways_with_acks_at_the_wrap() -> None:
    r = Rig(local_isn=2**32 - 3000, remote_isn=2**32 - 700)
    r.establish(mss=1460, wscale=2, sack_permitted=True, ts=(1, 0))
    sent = 0
    big = pattern(200_000, seed=9)
    received = bytearray()
    got = bytearray()
    pos = 0
    while sent < len(big) or pos < 50_000:
        if sent < len(big):
            sent += r.conn.send(big[sent:])
        out = r.dispatch()
        if pos < 50_000:
            out += r.send(ACK, pattern(1000, seed=pos)[: min(1000, 50_000 - pos)])
            pos += 1000
        for o in out:
            if o.payload and o.seq == len(received):
                received += o.payload
        got += r.conn.recv()
        out = r.send(ACK, ack=len(received))
        for o in out:
            if o.payload and o.seq == len(received):
                received += o.payload
        r.now += 0.001
    out = r.send(ACK, ack=len(received))
    while len(received) < len(big):
        out = r.dispatch() + r.advance(0.001)
        for o in out:
            if o.payload and o.seq == len(received):
                received += o.payload
        r.send(ACK, ack=len(received))
    assert bytes(received) == big
    assert len(got) == 50_000
    assert r.conn.segments_retransmitted == 0


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), st.integers(0, 6000), st.booleans()), max_size=60),
    st.sampled_from(ISNS),
    st.sampled_from([536, 1000, 1460]),
)
def test_sender_respects_window_and_mss_property(
    steps: list[tuple[int, int, bool]], isn: int, mss: int
) -> None:
    # The peer acknowledges some of what it got and advertises random windows (never moving
    # its right edge back); every new segment fits the edge and the MSS, and the stream is
    # delivered intact.
    r = Rig(TcpConfig(send_buffer=64 * 1024, min_rto=0.5), local_isn=isn)
    r.establish(mss=mss)
    data = pattern(30_000, seed=2)
    queued = r.conn.send(data)
    got = bytearray()
    acked = 0
    edge = 65535
    highest = 0

    def absorb(outs: list) -> None:  # type: ignore[type-arg]
        nonlocal highest
        for o in outs:
            end = o.seq + len(o.payload)
            assert len(o.payload) <= mss
            if end > highest:
                assert end <= edge, (o, edge)
                highest = end
            if o.payload and o.seq <= len(got) < end:
                got.extend(o.payload[len(got) - o.seq :])

    absorb(r.dispatch())
    for frac, window, tick in steps:
        acked = max(acked, min(len(got), acked + (len(got) - acked) * frac // 4))
        window = max(window, edge - acked)
        edge = acked + window
        absorb(r.send(ACK, ack=acked, window=window))
        if tick:
            absorb(r.advance(0.6))
        if queued < len(data):
            queued += r.conn.send(data[queued:])
            absorb(r.dispatch())
    for _ in range(200):
        if len(got) == len(data):
            break
        acked = len(got)
        edge = max(edge, acked + 65535)
        absorb(r.send(ACK, ack=acked, window=edge - acked))
        if queued < len(data):
            queued += r.conn.send(data[queued:])
            absorb(r.dispatch())
        absorb(r.advance(0.6))
    assert bytes(got) == data
