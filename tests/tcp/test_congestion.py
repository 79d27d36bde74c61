"""Congestion control on its own (NewReno: RFC 5681, RFC 3465, RFC 6582, RFC 6675 §5, RFC 6928),
and the connection driving a controller only through the ``CongestionControl`` interface."""

from __future__ import annotations

import pytest

from tun2proxy.tcp import CongestionControl, NewReno, TcpConfig
from tun2proxy.tcp.congestion import MAX_CWND, new_controller

from .helpers import ACK, Rig, pattern

MSS = 1000


def _started(sack: bool = True, iw: int = 10) -> NewReno:
    cc = NewReno(iw)
    cc.on_start(MSS, sack)
    return cc


def test_initial_window_is_ten_segments_of_the_negotiated_mss() -> None:
    cc = NewReno(10)
    assert cc.cwnd == 10 * 536  # before the handshake: the default MSS
    cc.on_start(MSS, True)
    assert cc.cwnd == 10 * MSS
    assert cc.ssthresh == MAX_CWND
    assert new_controller(TcpConfig(initial_window=4)).cwnd == 4 * 536


def test_slow_start_counts_bytes_at_most_two_segments_per_ack() -> None:
    cc = _started()
    cc.on_ack(500)
    assert cc.cwnd == 10 * MSS + 500
    cc.on_ack(10 * MSS)  # a stretch ACK: ABC with L = 2 (RFC 3465)
    assert cc.cwnd == 12 * MSS + 500


def test_congestion_avoidance_adds_one_segment_per_window() -> None:
    cc = _started()
    cc.ssthresh = 10 * MSS
    for _ in range(9):
        cc.on_ack(MSS)
    assert cc.cwnd == 10 * MSS  # nine tenths of a window acknowledged
    cc.on_ack(MSS)
    assert cc.cwnd == 11 * MSS
    for _ in range(11):
        cc.on_ack(MSS)
    assert cc.cwnd == 12 * MSS


def test_the_window_is_capped() -> None:
    cc = _started()
    cc.cwnd = MAX_CWND - 10
    cc.on_ack(MSS)
    assert cc.cwnd == MAX_CWND


def test_fast_recovery_with_sack_sets_cwnd_to_half_the_flight() -> None:
    cc = _started(sack=True)
    cc.cwnd = 40 * MSS
    cc.on_recovery_start(30 * MSS)
    assert cc.ssthresh == 15 * MSS
    assert cc.cwnd == 15 * MSS  # RFC 6675 §5: pipe governs sending, not inflation
    cc.on_dup_ack()
    cc.on_partial_ack(3 * MSS)
    assert cc.cwnd == 15 * MSS
    cc.on_recovery_end()
    assert cc.cwnd == 15 * MSS


def test_newreno_recovery_without_sack_inflates_and_deflates() -> None:
    cc = _started(sack=False)
    cc.on_recovery_start(20 * MSS)
    assert cc.ssthresh == 10 * MSS
    assert cc.cwnd == 13 * MSS  # ssthresh + 3 segments (RFC 6582 §3.2 step 2)
    cc.on_dup_ack()
    cc.on_dup_ack()
    assert cc.cwnd == 15 * MSS  # step 4: one segment per duplicate ACK
    cc.on_partial_ack(4 * MSS)
    assert cc.cwnd == 12 * MSS  # step 5: minus what was acknowledged, plus one segment
    cc.on_partial_ack(100 * MSS)
    assert cc.cwnd == MSS  # never below one segment
    cc.on_recovery_end()
    assert cc.cwnd == 10 * MSS  # step 6: back to ssthresh


def test_loss_never_takes_ssthresh_below_two_segments() -> None:
    cc = _started()
    cc.on_recovery_start(MSS)
    assert cc.ssthresh == 2 * MSS
    cc.on_rto(0, first=True)
    assert cc.ssthresh == 2 * MSS


def test_a_timeout_collapses_the_window_and_halves_ssthresh_once() -> None:
    cc = _started()
    cc.cwnd = 50 * MSS
    cc.on_rto(40 * MSS, first=True)
    assert (cc.cwnd, cc.ssthresh) == (MSS, 20 * MSS)
    cc.on_rto(MSS, first=False)  # a backed-off repeat in the same episode
    assert (cc.cwnd, cc.ssthresh) == (MSS, 20 * MSS)
    # slow start again from one segment, up to ssthresh
    cc.on_ack(MSS)
    assert cc.cwnd == 2 * MSS


def test_congestion_avoidance_starts_afresh_after_a_loss() -> None:
    cc = _started()
    cc.ssthresh = 10 * MSS
    for _ in range(9):
        cc.on_ack(MSS)
    cc.on_recovery_start(20 * MSS)
    cc.on_recovery_end()
    assert cc.cwnd == 10 * MSS
    for _ in range(9):
        cc.on_ack(MSS)
    assert cc.cwnd == 10 * MSS  # the acknowledgments before the loss do not count


def test_a_smaller_mss_keeps_at_least_two_segments() -> None:
    cc = _started()
    cc.cwnd = MSS
    cc.set_mss(600)
    assert (cc.mss, cc.cwnd) == (600, 1200)
    cc.cwnd = 5000
    cc.set_mss(500)
    assert cc.cwnd == 5000


class Recorder:
    """A controller that logs every call and keeps a fixed, large window."""

    def __init__(self) -> None:
        self.cwnd = 1 << 20
        self.ssthresh = 1 << 20
        self.calls: list[tuple[object, ...]] = []

    def on_start(self, mss: int, sack: bool) -> None:
        self.calls.append(("on_start", mss, sack))

    def set_mss(self, mss: int) -> None:
        self.calls.append(("set_mss", mss))

    def on_ack(self, acked: int) -> None:
        self.calls.append(("on_ack", acked))

    def on_dup_ack(self) -> None:
        self.calls.append(("on_dup_ack",))

    def on_recovery_start(self, flight: int) -> None:
        self.calls.append(("on_recovery_start", flight))

    def on_partial_ack(self, acked: int) -> None:
        self.calls.append(("on_partial_ack", acked))

    def on_recovery_end(self) -> None:
        self.calls.append(("on_recovery_end",))

    def on_rto(self, flight: int, first: bool) -> None:
        self.calls.append(("on_rto", flight, first))


def _rig_with_recorder(monkeypatch: pytest.MonkeyPatch, **cfg: object) -> tuple[Rig, Recorder]:
    rec = Recorder()

    def factory(config: TcpConfig) -> CongestionControl:
        return rec

    monkeypatch.setattr("tun2proxy.tcp.tcb.new_controller", factory)
    cfg.setdefault("min_rto", 1.0)
    r = Rig(TcpConfig(**cfg))  # type: ignore[arg-type]
    return r, rec


@pytest.mark.parametrize("sack", [True, False])
def test_the_connection_reports_each_congestion_event(
    monkeypatch: pytest.MonkeyPatch, sack: bool
) -> None:
    r, rec = _rig_with_recorder(monkeypatch)
    r.establish(mss=1000, sack_permitted=sack)
    assert rec.calls == [("on_start", 1000, sack)]
    r.conn.send(pattern(8000))
    out = r.dispatch()
    assert [o.seq for o in out] == list(range(0, 8000, 1000))  # the controller's window
    r.send(ACK, ack=1000)
    assert rec.calls[-1] == ("on_ack", 1000)
    # segment 1000-2000 is lost: three duplicate ACKs (SACKing what arrived after it)
    for i in range(3):
        blocks = [(2000, 3000 + 1000 * i)] if sack else None
        out = r.send(ACK, ack=1000, sack=blocks)
    assert rec.calls[-1] == ("on_recovery_start", 7000 - (3000 if sack else 0))
    assert ("on_dup_ack",) not in rec.calls  # the three came before recovery started
    assert out and out[0].seq == 1000  # fast retransmit
    r.send(ACK, ack=1000, sack=[(2000, 6000)] if sack else None)
    assert rec.calls[-1:] == [("on_dup_ack",)]
    r.send(ACK, ack=5000)  # a partial ACK: 5000-6000 is missing too
    assert rec.calls[-1] == ("on_partial_ack", 4000)
    r.send(ACK, ack=8000)
    assert rec.calls[-2:] == [("on_recovery_end",), ("on_ack", 3000)]
    # a timeout: the first of an episode, then a backed-off one
    r.conn.send(pattern(1000))
    r.dispatch()
    r.run_until(r.now + 3.5)
    rto = [c for c in rec.calls if c[0] == "on_rto"]
    assert rto == [("on_rto", 1000, True), ("on_rto", 1000, False)]


def test_the_congestion_window_limits_what_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    r, rec = _rig_with_recorder(monkeypatch)
    r.establish(mss=1000)
    rec.cwnd = 3000
    r.conn.send(pattern(8000))
    assert [o.seq for o in r.dispatch()] == [0, 1000, 2000]
    rec.cwnd = 5000
    assert [o.seq for o in r.send(ACK, ack=1000)] == [3000, 4000, 5000]
