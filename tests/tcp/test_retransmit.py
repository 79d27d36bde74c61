"""Retransmission: RTO with backoff and give-up (S2), fast retransmit and SACK recovery (S3),
Karn's rule, across the sequence wrap (S7).
"""

from __future__ import annotations

import pytest

from tun2proxy.tcp import N_CLOSED, TcpConfig

from .helpers import ACK, ISNS, RST, Rig, State, data_of, pattern


def _rig(isn: int | None = None, **cfg: object) -> Rig:
    cfg.setdefault("min_rto", 1.0)  # the handshake's ~0 s sample would give 200 ms
    kw = {} if isn is None else {"local_isn": isn}
    return Rig(TcpConfig(**cfg), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("isn", ISNS)
def test_rto_exponential_backoff(isn: int) -> None:
    r = _rig(isn)
    r.establish(mss=1000)
    r.conn.send(pattern(2500))
    first = r.dispatch()
    assert [o.seq for o in first] == [0, 1000, 2000]
    out = r.run_until(31.5)
    assert [o.time for o in out] == [1.0, 3.0, 7.0, 15.0, 31.0]
    # after a timeout one segment (cwnd = 1 SMSS) from SND.UNA is resent
    assert all((o.seq, o.payload) == (0, pattern(2500)[:1000]) for o in out)
    assert r.conn.segments_retransmitted == 5
    assert r.conn.state is State.ESTABLISHED


def test_rto_backoff_capped_by_max_rto() -> None:
    r = _rig(max_rto=4.0)
    r.establish(mss=1000)
    r.conn.send(b"x" * 100)
    r.dispatch()
    out = r.run_until(20.0)
    assert [o.time for o in out] == [1.0, 3.0, 7.0, 11.0, 15.0, 19.0]


@pytest.mark.parametrize("retries", [1, 3, 10])
def test_give_up_after_max_retries(retries: int) -> None:
    r = _rig(max_retries=retries, max_rto=8.0)
    r.establish(mss=1000)
    r.send(ACK, b"in")
    r.conn.send(b"x" * 500)
    r.dispatch()
    out = r.run_until(1000.0)
    assert [o.f for o in out] == ["P."] * retries + ["R."]
    rst = out[-1]
    assert rst.flags == RST | ACK
    assert (rst.seq, rst.ack) == (500, 2)
    assert r.conn.state is State.CLOSED
    assert r.conn.close_reason == "timeout"
    assert r.conn.notify & N_CLOSED
    assert r.conn.poll_at() is None


def test_ack_of_new_data_ends_backoff() -> None:
    r = _rig()
    r.establish(mss=1000)
    r.conn.send(pattern(3000))
    r.dispatch()
    out = r.run_until(3.0)  # two timeouts: RTO now 4 s
    assert [o.time for o in out] == [1.0, 3.0]
    r.now = 3.5
    out = r.send(ACK, ack=1000)
    assert [o.seq for o in out] == [1000, 2000]  # slow start resumes from SND.UNA
    assert r.conn.rtx_deadline == pytest.approx(3.5 + 1.0)  # backoff over (RFC 6298 §5.7)


def test_partial_ack_restarts_the_timer() -> None:
    r = _rig()
    r.establish(mss=1000)
    r.conn.send(pattern(3000))
    r.dispatch()
    assert r.conn.rtx_deadline == pytest.approx(1.0)
    r.now = 0.6
    r.send(ACK, ack=1000)
    assert r.conn.rtx_deadline == pytest.approx(1.6)  # RFC 6298 (5.3)
    r.now = 0.8
    r.send(ACK, ack=3000)
    assert r.conn.rtx_deadline is None  # (5.2) all acknowledged
    assert r.run_until(10.0) == []


def test_after_timeout_everything_unacked_is_resent_once() -> None:
    r = _rig()
    r.establish(mss=1000)
    data = pattern(5000)
    r.conn.send(data)
    assert len(r.dispatch()) == 5
    out = r.run_until(1.0)
    assert [o.seq for o in out] == [0]
    resent = list(out)
    acked = 0
    while acked < 5000:
        acked = max(o.seq + len(o.payload) for o in resent)
        resent += r.send(ACK, ack=acked)
    seqs = [o.seq for o in resent]
    assert seqs == [0, 1000, 2000, 3000, 4000]
    assert data_of(resent) == data
    assert r.conn.segments_retransmitted == 5


@pytest.mark.parametrize("isn", [*ISNS, 2**32 - 2500])
def test_sack_retransmits_only_the_holes(isn: int) -> None:
    r = _rig(isn)
    r.establish(mss=1000, sack_permitted=True)
    r.conn.send(pattern(10_000))
    assert len(r.dispatch()) == 10
    # Segments 0 and 5 lost; the rest SACKed.
    out = r.send(ACK, ack=0, sack=[(1000, 5000), (6000, 10_000)])
    assert [(o.seq, len(o.payload)) for o in out] == [(0, 1000), (5000, 1000)]
    assert out[0].payload == pattern(10_000)[:1000]
    assert out[1].payload == pattern(10_000)[5000:6000]
    # more dup ACKs carry no new information: nothing more is resent
    assert r.send(ACK, ack=0, sack=[(1000, 5000), (6000, 10_000)]) == []
    out = r.send(ACK, ack=5000, sack=[(6000, 10_000)])
    assert out == []
    assert r.send(ACK, ack=10_000) == []
    assert r.run_until(30.0) == []
    assert r.conn.segments_retransmitted == 2


def test_sack_single_hole() -> None:
    r = _rig()
    r.establish(mss=1000, sack_permitted=True)
    r.conn.send(pattern(10_000))
    r.dispatch()
    out = r.send(ACK, ack=0, sack=[(1000, 10_000)])
    assert [(o.seq, len(o.payload)) for o in out] == [(0, 1000)]
    assert r.send(ACK, ack=10_000) == []
    assert r.conn.segments_retransmitted == 1


def test_invalid_sack_blocks_are_ignored() -> None:
    r = _rig()
    r.establish(mss=1000, sack_permitted=True)
    r.conn.send(pattern(10_000))
    r.dispatch()
    # beyond SND.NXT, reversed, below SND.UNA: none of them counts as SACKed data
    blocks_list = ([(5000, 20_000)], [(8000, 3000)], [(-5000, -1000)], [(2**31, 2**31 + 8000)])
    for i, blocks in enumerate(blocks_list):
        out = r.send(ACK, ack=0, sack=blocks)
        assert r.conn.sacked == [] and r.conn.sacked_bytes == 0
        # They are still duplicate ACKs (RFC 5681 §2): the third one triggers fast
        # retransmit of the first segment only, nothing "SACK-guided".
        if i == 2:
            assert [(o.seq, len(o.payload)) for o in out] == [(0, 1000)]
        else:
            assert out == []
    assert r.conn.segments_retransmitted == 1


def test_two_segments_outstanding_early_retransmit() -> None:
    # RFC 5827: with only two segments outstanding and nothing new to send, one dup ACK is
    # enough.
    r = _rig()
    r.establish(mss=1000)
    r.conn.send(pattern(2000))
    r.dispatch()
    out = r.send(ACK, ack=0)
    assert [(o.seq, len(o.payload)) for o in out] == [(0, 1000)]


def test_fewer_than_three_dup_acks_do_not_retransmit() -> None:
    r = _rig()
    r.establish(mss=1000)
    r.conn.send(pattern(10_000))
    r.dispatch()
    assert r.send(ACK, ack=0) == []
    assert r.send(ACK, ack=0) == []
    assert r.conn.dupacks == 2
    assert r.conn.segments_retransmitted == 0


def test_acks_with_data_or_window_change_are_not_duplicates() -> None:
    r = _rig()
    r.establish(mss=1000)
    r.conn.send(pattern(10_000))
    r.dispatch()
    r.send(ACK, b"data", ack=0)
    r.send(ACK, ack=0, window=60_000)
    r.send(ACK, b"more", ack=0, window=60_000)
    assert r.conn.dupacks == 0
    r.send(ACK, ack=0, window=60_000)
    assert r.conn.dupacks == 1


@pytest.mark.parametrize("isn", [2**32 - 20_001, 0xFFFFFF00 - 1460])
def test_fast_retransmit_after_three_dup_acks(isn: int) -> None:
    r = _rig(isn)
    r.establish(mss=1000)
    r.conn.send(pattern(10_000))
    r.dispatch()
    out = r.send(ACK, ack=0) + r.send(ACK, ack=0) + r.send(ACK, ack=0)
    assert [(o.seq, len(o.payload)) for o in out] == [(0, 1000)]


def test_sack_fast_retransmit_on_third_dup_ack() -> None:
    r = _rig()
    r.establish(mss=1000, sack_permitted=True)
    r.conn.send(pattern(10_000))
    r.dispatch()
    out = r.send(ACK, ack=0, sack=[(1000, 2000)])
    out += r.send(ACK, ack=0, sack=[(1000, 3000)])
    assert out == []
    out = r.send(ACK, ack=0, sack=[(1000, 4000)])
    assert [(o.seq, len(o.payload)) for o in out] == [(0, 1000)]


def test_karn_no_rtt_sample_from_retransmitted_segment() -> None:
    r = Rig()
    r.syn_received(mss=1000)
    r.now = 0.1
    r.send(ACK, ack=0)
    assert r.conn.rtt.srtt == pytest.approx(0.1)
    rto = r.conn.rtt.rto
    assert rto == pytest.approx(0.3)  # 0.1 + 4 * 0.05
    r.now = 1.0
    r.conn.send(b"a" * 100)
    r.dispatch()
    out = r.run_until(1.0 + rto)
    assert [o.seq for o in out] == [0]
    r.now = 1.35
    r.send(ACK, ack=100)
    assert r.conn.rtt.srtt == pytest.approx(0.1)  # ambiguous: no sample
    # A segment sent once is timed.
    r.now = 2.0
    r.conn.send(b"b" * 100)
    r.dispatch()
    r.now = 2.2
    r.send(ACK, ack=200)
    assert r.conn.rtt.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.2)


def test_karn_with_timestamps() -> None:
    r = Rig(TcpConfig(min_rto=0.5))
    r.syn_received(mss=1000, ts=(10, 0))
    r.now = 0.1
    r.send(ACK, ack=0)
    srtt = r.conn.rtt.srtt
    assert srtt == pytest.approx(0.1)
    r.now = 1.0
    r.conn.send(b"a" * 100)
    (orig,) = r.dispatch()
    (rtx,) = r.run_until(2.0)
    assert rtx.seq == orig.seq and rtx.ts_val > orig.ts_val
    # An echo of the original transmission's TSval: ambiguous, no sample.
    r.now = rtx.time + 0.05
    r.send(ACK, ack=100, ts=(20, orig.ts_val))
    assert r.conn.rtt.srtt == srtt
    # Timestamps measure every later ACK (RFC 7323 §4.1).
    r.now = 3.0
    r.conn.send(b"b" * 100)
    (o,) = r.dispatch()
    r.now = 3.04
    r.send(ACK, ack=200, ts=(21, o.ts_val))
    assert r.conn.rtt.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.04)


def test_retransmission_carries_current_ack_and_window() -> None:
    r = _rig()
    r.establish(mss=1000)
    r.conn.send(b"z" * 100)
    r.dispatch()
    r.now = 0.5
    r.send(ACK, b"peer", ack=0)
    (o,) = r.run_until(1.0)
    assert (o.seq, o.ack, o.payload) == (0, 4, b"z" * 100)


def test_rto_reinitialised_to_3s_after_synack_timeout() -> None:
    r = Rig()
    r.syn_received(mss=1000)
    r.run_until(1.0)  # one SYN-ACK retransmission
    r.now = 1.2
    r.send(ACK, ack=0)
    r.conn.send(b"x")
    r.dispatch()
    assert r.conn.rtx_deadline == pytest.approx(1.2 + 3.0)
