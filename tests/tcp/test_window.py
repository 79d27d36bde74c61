"""Windows both ways: the peer's zero window and our persist probes (S6), our own zero window
(R7), receiver SWS avoidance and the never-shrinking right edge (R6).
"""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from tun2proxy.tcp import N_CLOSED, N_PEER_CLOSED, TcpConfig

from .helpers import ACK, FIN, ISNS, RST, Rig, State, data_of, pattern

# ---------------------------------------------------------------- the peer's zero window


def _zero_window_rig(**cfg: object) -> Rig:
    r = Rig(TcpConfig(**cfg))  # type: ignore[arg-type]
    r.establish(mss=1000)
    r.send(ACK, ack=0, window=0)
    return r


def test_no_data_sent_into_zero_window() -> None:
    r = _zero_window_rig()
    assert r.conn.send(pattern(3000)) == 3000
    assert r.dispatch() == []
    assert r.conn.persist_deadline is not None


def test_persist_probes_with_backoff_then_resume() -> None:
    r = _zero_window_rig(min_rto=1.0)
    r.conn.send(pattern(3000))
    assert r.dispatch() == []
    out = r.run_until(40.0)
    # a probe is an ACK with SEG.SEQ = SND.UNA - 1 and no data
    assert all((o.f, o.seq, o.ack, o.payload) == (".", -1, 0, b"") for o in out)
    times = [o.time for o in out]
    assert times == [1.0, 3.0, 7.0, 15.0, 31.0]
    # The window opens (answer to a probe): sending resumes at once.
    out = r.send(ACK, ack=0, window=2000)
    assert [(o.seq, len(o.payload)) for o in out] == [(0, 1000), (1000, 1000)]
    assert r.conn.persist_deadline is None
    out = r.send(ACK, ack=2000, window=5000)
    assert data_of(out) == pattern(3000)[2000:]


def test_persist_interval_capped_and_connection_kept() -> None:
    r = _zero_window_rig(min_rto=1.0, max_rto=8.0)
    r.conn.send(b"x")
    r.dispatch()
    out = r.run_until(100.0)
    gaps = [b.time - a.time for a, b in itertools.pairwise(out)]
    assert gaps[:2] == [2.0, 4.0]
    assert all(g <= 8.0 for g in gaps)
    # Probes answered (with a zero window) keep the connection alive.
    for _ in range(10):
        r.send(ACK, ack=0, window=0)
        r.run_until(r.now + 10.0)
    assert r.conn.state is State.ESTABLISHED


def test_probe_answer_with_zero_window_keeps_probing() -> None:
    r = _zero_window_rig(min_rto=1.0)
    r.conn.send(b"abc")
    r.dispatch()
    (probe,) = r.run_until(1.0)
    assert probe.seq == -1
    assert r.send(ACK, ack=0, window=0) == []
    out = r.run_until(3.0)
    assert [o.seq for o in out] == [-1]


def test_zero_window_fin_waits_for_window() -> None:
    r = _zero_window_rig(min_rto=1.0)
    r.conn.shutdown()
    assert r.dispatch() == []
    assert r.conn.state is State.FIN_WAIT_1
    (probe,) = r.run_until(1.0)
    assert probe.seq == -1
    out = r.send(ACK, ack=0, window=100)
    assert [(o.f, o.seq) for o in out] == [("F.", 0)]


def test_peer_window_shrinking_is_survived() -> None:
    # S5: the peer moves its right edge back (RFC 9293 discourages it but it happens).
    r = Rig()
    r.establish(mss=1000)
    r.send(ACK, ack=0, window=10_000)
    r.conn.send(pattern(20_000))
    out = r.dispatch()
    assert sum(len(o.payload) for o in out) == 10_000
    out = r.send(ACK, ack=1000, window=0)  # edge now at 1000 < SND.NXT 10000
    assert out == []
    out = r.send(ACK, ack=10_000, window=0)
    assert out == []
    out = r.send(ACK, ack=10_000, window=3000)
    assert [(o.seq, len(o.payload)) for o in out] == [
        (10_000, 1000), (11_000, 1000), (12_000, 1000),
    ]


# ---------------------------------------------------------------- our zero window


def _full_rig() -> Rig:
    r = Rig(TcpConfig(recv_buffer=4096))
    r.establish(mss=1460)
    out = r.send(ACK, pattern(4096))
    assert [(o.ack, o.window) for o in out] == [(4096, 0)]
    return r


def test_our_zero_window_when_buffer_full() -> None:
    r = _full_rig()
    assert r.conn.readable == 4096
    out = r.send(ACK, b"more", advance=False)
    assert all((o.ack, o.window) == (4096, 0) for o in out)
    assert r.conn.readable == 4096
    assert r.conn.recv() == pattern(4096)


def test_zero_window_probe_below_rcv_nxt_is_acked() -> None:
    r = _full_rig()
    for probe in (b"", b"p"):
        out = r.send(ACK, probe, seq=4095, advance=False)
        assert [(o.f, o.ack, o.window) for o in out] == [(".", 4096, 0)]


def test_zero_window_probe_at_rcv_nxt_is_acked() -> None:
    r = _full_rig()
    out = r.send(ACK, b"p", seq=4096, advance=False)
    out += r.send(ACK, b"more data", seq=4096, advance=False)
    assert [(o.f, o.ack, o.window) for o in out] == [(".", 4096, 0)] * 2


def test_ack_field_processed_at_zero_window() -> None:
    r = _full_rig()
    r.conn.send(b"down")
    r.dispatch()
    r.send(ACK, b"z", seq=4096, ack=4, advance=False)
    assert r.conn.snd_una == r.conn.iss + 5
    assert r.conn.readable == 4096


def test_rst_processed_at_zero_window() -> None:
    r = _full_rig()
    assert r.send(RST, seq=4096) == []
    assert r.conn.state is State.CLOSED
    assert r.conn.close_reason == "reset"
    assert r.conn.notify & N_CLOSED


def test_fin_at_rcv_nxt_processed_at_zero_window() -> None:
    r = _full_rig()
    out = r.send(ACK | FIN, seq=4096)
    assert r.conn.state is State.CLOSE_WAIT
    assert r.conn.notify & N_PEER_CLOSED
    assert [(o.f, o.ack, o.window) for o in out] == [(".", 4097, 0)]
    assert r.conn.recv() == pattern(4096)


def test_window_reopens_after_recv() -> None:
    r = _full_rig()
    r.conn.recv(100)
    assert r.dispatch() == []  # SWS: not worth announcing yet
    out = r.send(ACK, seq=4095, advance=False)  # a probe shows the window is still 0
    assert out[0].window == 0
    r.conn.recv(2000)
    out = r.dispatch()
    assert [(o.f, o.ack, o.window) for o in out] == [(".", 4096, 2100)]
    r.send(ACK, pattern(2100, seed=5), seq=4096)
    assert r.conn.readable == 1996 + 2100


# ---------------------------------------------------------------- right edge


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("data"), st.integers(1, 60_000)),
            st.tuples(st.just("recv"), st.integers(1, 60_000)),
        ),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([None, 2]),
    st.sampled_from(ISNS),
    st.sampled_from([8192, 100_001]),
)
def test_right_edge_never_moves_back(ops: list[tuple[str, int]], wscale: int | None,
                                     isn: int, cap: int) -> None:
    r = Rig(TcpConfig(recv_buffer=cap), remote_isn=isn)
    synack = r.establish(mss=1460, wscale=wscale)
    shift = synack.wscale or 0
    edge = synack.window  # the SYN-ACK's window is never scaled
    nxt = 0
    for op, n in ops:
        if op == "data":
            size = min(n, 20_000)
            out = r.send(ACK, pattern(size, seed=nxt), seq=nxt, advance=False)
            accepted = min(nxt + size, edge)
            nxt = max(nxt, accepted)
        else:
            r.conn.recv(n)
            out = r.dispatch()
        out += r.advance(0.05)
        for o in out:
            e = o.ack + (o.window << shift)
            assert e >= edge, "right edge moved back"
            edge = e
            assert o.ack == nxt
        # (a scaled window is rounded up to the scale unit: at most 2**shift - 1 extra bytes)
        assert r.conn.readable <= cap + (1 << shift) - 1
        assert r.conn.rcv_nxt - r.conn.irs - 1 == nxt
