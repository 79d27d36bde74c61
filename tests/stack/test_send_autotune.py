"""Send-buffer growth (``TcpConfig.send_buffer_max``): a flow whose buffer is nearly all in
flight — the app keeps up — gets a bigger buffer, doubling up to the cap; a flow whose app
reads slowly (its window, not the buffer, is the limit) does not; memory pressure stops it."""

from __future__ import annotations

from tun2proxy.stack import NetStack, StackConfig
from tun2proxy.tcp import TcpConfig
from tun2proxy.testing import ScriptedTcpPeer

from .helpers import establish

KIB = 1024
BASE = 64 * KIB


def _open(
    window: int, *, send_max: int, memory_limit: int | None = None
) -> tuple[NetStack, ScriptedTcpPeer, int]:
    st = NetStack(StackConfig(
        isn_secret=b"autotune-test-key", mtu=65535, memory_limit=memory_limit,
        tcp=TcpConfig(send_buffer=BASE, send_buffer_max=send_max, recv_buffer=BASE),
    ))
    p = ScriptedTcpPeer("10.0.0.1", 40000, "192.0.2.1", 80, window=window)
    return st, p, establish(st, p, mss=16000, wscale=7)


def _cap(st: NetStack, fid: int) -> int:
    return st.connection(fid).snd_cap


def _fill_and_ack(st: NetStack, p: ScriptedTcpPeer, fid: int, rounds: int) -> list[int]:
    """Offer more than fits each round; the app keeps up, acknowledging a quarter of what is
    in flight each round (what it received before the last flight): the buffer is in flight
    when more is offered, as in a download whose buffer is the limit (and the congestion
    window grows with each ACK)."""
    caps = []
    now = 0.0
    chunk = b"d" * (1024 * KIB)
    for _ in range(rounds):
        st.send(fid, chunk)
        now += 0.001
        out = st.poll(now)
        if out:
            p.expect(out, count=None)
        conn = st.connection(fid)
        in_flight = conn.snd_max - conn.snd_una
        keep = in_flight - in_flight // 4  # still in flight after this ACK
        st.receive(p.ack(ack=(p.rcv_nxt - keep) & 0xFFFFFFFF), now)
        st.poll(now)
        caps.append(_cap(st, fid))
    return caps


def test_a_flow_limited_by_its_buffer_grows_it_to_the_cap() -> None:
    st, p, fid = _open(window=60000, send_max=4 * BASE)  # x 2^7: a 7.3 MiB window
    assert _cap(st, fid) == BASE
    caps = _fill_and_ack(st, p, fid, 6)
    assert caps[-1] == 4 * BASE
    assert sorted(caps) == caps  # it only grows, by doubling
    assert set(caps) <= {BASE, 2 * BASE, 4 * BASE}
    assert len(st.connection(fid).sbuf) > BASE  # send() took more than the configured size


def test_without_a_cap_nothing_grows() -> None:
    st, p, fid = _open(window=60000, send_max=0)
    assert _fill_and_ack(st, p, fid, 4) == [BASE] * 4


def test_a_slow_app_keeps_the_configured_buffer() -> None:
    # The app's window (4 KiB, no window scaling) holds the data back: the buffer fills with
    # unsent bytes, and growing it would only hold more of them.
    st = NetStack(StackConfig(
        isn_secret=b"autotune-test-key", mtu=65535,
        tcp=TcpConfig(send_buffer=BASE, send_buffer_max=4 * BASE, recv_buffer=BASE),
    ))
    p = ScriptedTcpPeer("10.0.0.1", 40001, "192.0.2.1", 80, window=4096)
    fid = establish(st, p, mss=1460)  # no window scaling: a 4 KiB window
    now = 0.0
    for _ in range(8):
        st.send(fid, b"s" * (256 * KIB))
        now += 0.001
        out = st.poll(now)
        if out:
            p.expect(out, count=None)
        st.receive(p.ack(), now)
        st.poll(now)
    assert _cap(st, fid) == BASE
    conn = st.connection(fid)
    assert len(conn.sbuf) == BASE  # full, of bytes the app's window has not let out


def test_memory_pressure_stops_the_growth_and_scales_it_back() -> None:
    # A 1 MiB budget: once the grown buffer holds more than half of it, pressure scales the
    # buffer back below its configured size and it grows no more.
    st, p, fid = _open(window=60000, send_max=16 * BASE, memory_limit=1 << 20)
    caps = _fill_and_ack(st, p, fid, 16)
    assert max(caps) > BASE  # it grew while there was room in the budget
    assert max(caps) < 16 * BASE
    assert caps[-1] <= BASE  # scaled back under pressure
    conn = st.connection(fid)
    assert conn.snd_cap_max == conn.snd_cap  # no growth while under pressure
    assert caps[-4:] == [caps[-1]] * 4
