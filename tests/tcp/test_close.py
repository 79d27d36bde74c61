# mypy: disable-error-code="comparison-overlap"
# (mypy keeps a narrowed attribute such as ``conn.state`` narrowed across calls that change it)
"""Closing: FIN-WAIT-1/2, CLOSING, TIME-WAIT, CLOSE-WAIT, LAST-ACK, simultaneous close,
half-close both ways, FIN retransmission, abort (C1-C5).
"""

from __future__ import annotations

import pytest

from tun2proxy.errors import FlowStateError
from tun2proxy.tcp import N_CLOSED, N_PEER_CLOSED, N_READABLE, TcpConfig

from .helpers import ACK, FIN, ISNS, PSH, RST, Rig, State, data_of, pattern


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("isn", ISNS)
def test_active_close(version: int, isn: int) -> None:
    r = Rig(version=version, local_isn=isn, remote_isn=isn)
    r.establish()
    r.conn.shutdown()
    assert r.conn.state is State.FIN_WAIT_1
    out = r.dispatch()
    assert [(o.f, o.seq, o.ack) for o in out] == [("F.", 0, 0)]
    assert r.send(ACK, ack=1) == []
    assert r.conn.state is State.FIN_WAIT_2
    assert not r.conn.notify & N_CLOSED
    out = r.send(FIN | ACK)
    assert [(o.f, o.seq, o.ack) for o in out] == [(".", 1, 1)]
    assert r.conn.state is State.TIME_WAIT
    assert r.conn.notify & N_PEER_CLOSED
    assert r.conn.notify & N_CLOSED  # the owner may release its side now
    assert r.conn.close_reason == "closed"
    assert r.conn.poll_at() == pytest.approx(r.now + r.config.time_wait)
    assert r.run_until(r.now + r.config.time_wait) == []
    assert r.conn.state is State.CLOSED
    assert r.conn.poll_at() is None


def test_fin_piggybacked_on_last_data_segment() -> None:
    r = Rig()
    r.establish(mss=1000)
    r.conn.send(pattern(2500))
    r.conn.shutdown()
    out = r.dispatch()
    assert [(o.f, o.seq, len(o.payload)) for o in out] == [
        (".", 0, 1000), (".", 1000, 1000), ("FP.", 2000, 500),
    ]
    r.send(ACK, ack=2500)
    assert r.conn.state is State.FIN_WAIT_1  # data acknowledged, FIN not yet
    r.send(ACK, ack=2501)
    assert r.conn.state is State.FIN_WAIT_2


def test_fin_after_data_already_sent() -> None:
    r = Rig()
    r.establish(mss=1000)
    r.conn.send(b"abc")
    r.dispatch()
    r.conn.shutdown()
    out = r.dispatch()
    assert [(o.f, o.seq, o.payload) for o in out] == [("F.", 3, b"")]


@pytest.mark.parametrize("state", ["FIN_WAIT_1", "LAST_ACK", "CLOSING"])
def test_fin_retransmitted_on_rto(state: str) -> None:
    r = Rig(TcpConfig(min_rto=1.0))
    r.to_state(state)
    out = r.run_until(r.now + 7.0)
    # (a retransmitted bare FIN may carry PSH: it goes out as "the last data segment")
    assert [(o.flags & (FIN | ACK), o.seq, o.payload, o.time) for o in out] == [
        (FIN | ACK, 0, b"", 1.0), (FIN | ACK, 0, b"", 3.0), (FIN | ACK, 0, b"", 7.0),
    ]
    assert r.conn.state is State[state]
    r.send(ACK, ack=1)
    expected = {"FIN_WAIT_1": "FIN_WAIT_2", "LAST_ACK": "CLOSED", "CLOSING": "TIME_WAIT"}
    assert r.conn.state is State[expected[state]]


def test_fin_with_data_retransmitted_together() -> None:
    r = Rig(TcpConfig(min_rto=1.0))
    r.establish(mss=1000)
    r.conn.send(b"tail")
    r.conn.shutdown()
    (o,) = r.dispatch()
    assert (o.f, o.payload) == ("FP.", b"tail")
    (again,) = r.run_until(1.0)
    assert (again.f, again.seq, again.payload) == ("FP.", 0, b"tail")


def test_fin_wait_1_gives_up_after_max_retries() -> None:
    r = Rig(TcpConfig(min_rto=1.0, max_retries=2))
    r.to_state("FIN_WAIT_1")
    out = r.run_until(100.0)
    assert [o.flags & ~PSH for o in out] == [FIN | ACK, FIN | ACK, RST | ACK]
    assert r.conn.close_reason == "timeout"


def test_passive_close_and_half_close_towards_app() -> None:
    # C2: after the app's FIN we keep sending the upstream's data.
    r = Rig()
    r.establish(mss=1000)
    r.send(ACK | PSH, b"request")
    out = r.send(FIN | ACK)
    assert r.conn.state is State.CLOSE_WAIT
    assert r.conn.notify & N_PEER_CLOSED
    assert out[-1].ack == 8
    assert r.conn.recv() == b"request"
    assert r.conn.recv() == b""
    assert r.conn.send(pattern(3000)) == 3000
    out = r.dispatch()
    assert data_of(out) == pattern(3000)
    assert all(o.ack == 8 for o in out)
    r.send(ACK, ack=3000)
    r.conn.shutdown()
    assert r.conn.state is State.LAST_ACK
    out = r.dispatch()
    assert [(o.f, o.seq, o.ack) for o in out] == [("F.", 3000, 8)]
    # a duplicate ACK (not covering the FIN) changes nothing
    r.send(ACK, ack=3000)
    assert r.conn.state is State.LAST_ACK
    r.conn.notify = 0
    assert r.send(ACK, ack=3001) == []
    assert r.conn.state is State.CLOSED
    assert r.conn.close_reason == "closed"
    assert r.conn.notify & N_CLOSED
    assert r.conn.poll_at() is None


def test_half_close_from_our_side_keeps_receiving() -> None:
    # C1: our FIN (upstream EOF) does not stop the app's data.
    r = Rig()
    r.to_state("FIN_WAIT_2")
    for i in range(5):
        r.send(ACK, pattern(500, seed=i))
    out = r.advance(0.1)
    assert r.log[-1].ack == 2500
    assert r.conn.recv() == b"".join(pattern(500, seed=i) for i in range(5))
    out = r.send(FIN | ACK)
    assert [(o.f, o.ack) for o in out] == [(".", 2501)]
    assert r.conn.state is State.TIME_WAIT


def test_data_in_fin_wait_1_is_delivered() -> None:
    r = Rig()
    r.to_state("FIN_WAIT_1")
    r.send(ACK, b"late", ack=0)
    assert r.conn.recv() == b"late"
    assert r.conn.state is State.FIN_WAIT_1


def test_simultaneous_close_via_closing() -> None:
    r = Rig()
    r.establish()
    r.conn.shutdown()
    r.dispatch()
    out = r.send(FIN | ACK, ack=0)  # crosses our FIN
    assert r.conn.state is State.CLOSING
    assert [(o.f, o.seq, o.ack) for o in out] == [(".", 1, 1)]
    assert r.send(ACK, ack=1) == []
    assert r.conn.state is State.TIME_WAIT
    r.run_until(r.now + r.config.time_wait)
    assert r.conn.state is State.CLOSED


def test_simultaneous_close_fin_acking_our_fin() -> None:
    r = Rig()
    r.to_state("FIN_WAIT_1")
    out = r.send(FIN | ACK, ack=1)
    assert r.conn.state is State.TIME_WAIT
    assert [(o.f, o.seq, o.ack) for o in out] == [(".", 1, 1)]


def test_simultaneous_close_with_data_both_ways() -> None:
    r = Rig()
    r.establish(mss=1000)
    r.conn.send(b"server-bye")
    r.conn.shutdown()
    out = r.dispatch()
    assert [(o.f, o.payload) for o in out] == [("FP.", b"server-bye")]
    # the app's data+FIN acknowledges part of our data only
    out = r.send(FIN | ACK | PSH, b"client-bye", ack=5)
    assert r.conn.state is State.CLOSING
    assert out[-1].ack == 11
    assert r.conn.recv() == b"client-bye"
    r.send(ACK, ack=11)
    assert r.conn.state is State.TIME_WAIT


def test_simultaneous_close_closing_then_fin_retransmit() -> None:
    r = Rig(TcpConfig(min_rto=1.0))
    r.to_state("CLOSING")
    # the peer did not see our ACK of its FIN: it retransmits the FIN
    out = r.send(FIN | ACK, seq=0, ack=0, advance=False)
    assert [(o.f, o.ack) for o in out] == [(".", 1)]
    (rtx,) = r.run_until(1.0)
    assert (rtx.flags & ~PSH, rtx.seq) == (FIN | ACK, 0)
    r.send(ACK, ack=1)
    assert r.conn.state is State.TIME_WAIT


@pytest.mark.parametrize("state", ["FIN_WAIT_1", "FIN_WAIT_2"])
def test_fin_out_of_order_in_fin_wait(state: str) -> None:
    # C3, packetdrill tcp_disorder_fin_in_FIN_WAIT.pkt
    r = Rig()
    r.to_state(state)
    ack = 0 if state == "FIN_WAIT_1" else 1
    out = r.send(FIN | ACK, b"world", seq=5, ack=ack, advance=False)
    assert all(o.ack == 0 for o in out) and out
    assert r.conn.state is State[state]
    out = r.send(ACK, b"hello", seq=0, ack=ack, advance=False)
    assert out[-1].ack == 11
    assert r.conn.recv() == b"helloworld"
    assert r.conn.state is (State.CLOSING if state == "FIN_WAIT_1" else State.TIME_WAIT)


def test_time_wait_retransmitted_fin_is_reacked_and_restarts_timer() -> None:
    r = Rig()
    r.to_state("TIME_WAIT")
    start = r.now
    assert r.conn.poll_at() == pytest.approx(start + 2.0)
    r.now = start + 1.5
    out = r.send(FIN | ACK, seq=0, ack=1, advance=False)
    assert [(o.f, o.seq, o.ack) for o in out] == [(".", 1, 1)]
    assert r.conn.poll_at() == pytest.approx(start + 3.5)
    assert r.run_until(start + 3.4) == []
    assert r.conn.state is State.TIME_WAIT
    r.run_until(start + 3.5)
    assert r.conn.state is State.CLOSED


def test_time_wait_lasts_config_time_wait() -> None:
    r = Rig(TcpConfig(time_wait=0.5))
    r.to_state("TIME_WAIT")
    r.run_until(0.49)
    assert r.conn.state is State.TIME_WAIT
    r.run_until(0.5)
    assert r.conn.state is State.CLOSED
    assert r.conn.close_reason == "closed"


def test_time_wait_ignores_stray_ack_and_sends_no_data() -> None:
    r = Rig()
    r.to_state("TIME_WAIT")
    assert r.send(ACK, ack=1) == []
    assert r.conn.state is State.TIME_WAIT
    with pytest.raises(FlowStateError):
        r.conn.send(b"x")


def test_rst_in_time_wait_closes_it() -> None:
    r = Rig()
    r.to_state("TIME_WAIT")
    r.send(RST, seq=1)
    assert r.conn.state is State.CLOSED


def test_close_wait_data_after_fin_is_not_delivered() -> None:
    r = Rig()
    r.to_state("CLOSE_WAIT")
    r.conn.notify = 0
    out = r.send(ACK, b"bogus")
    assert [(o.f, o.ack) for o in out] == [(".", 1)]
    assert r.conn.readable == 0
    assert not r.conn.notify & N_READABLE


def test_close_wait_fin_retransmission_is_reacked() -> None:
    r = Rig()
    r.to_state("CLOSE_WAIT")
    out = r.send(FIN | ACK, seq=0, advance=False)
    assert [(o.f, o.ack) for o in out] == [(".", 1)]
    assert r.conn.state is State.CLOSE_WAIT


def test_mutual_close_with_pending_data_is_delivered_first() -> None:
    r = Rig()
    r.establish(mss=1000)
    r.send(ACK, b"abc")
    r.send(FIN | ACK)
    assert r.conn.recv() == b"abc"
    r.conn.send(b"xyz")
    r.conn.shutdown()
    out = r.dispatch()
    assert [(o.f, o.seq, o.ack, o.payload) for o in out] == [("FP.", 0, 4, b"xyz")]
    r.send(ACK, ack=4)
    assert r.conn.state is State.CLOSED


@pytest.mark.parametrize("state", ["ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "CLOSE_WAIT",
                                   "LAST_ACK", "CLOSING"])
def test_abort_sends_rst_ack(state: str) -> None:
    r = Rig()
    r.to_state(state)
    r.send(ACK, b"", ack=r.peer_ack)
    snd_max = r.conn.snd_max - r.conn.iss - 1
    rcv_nxt = r.conn.rcv_nxt - r.conn.irs - 1
    r.conn.notify = 0
    r.conn.abort()
    out = r.dispatch()
    assert [(o.flags, o.seq, o.ack) for o in out] == [(RST | ACK, snd_max, rcv_nxt)]
    assert r.conn.state is State.CLOSED
    assert r.conn.close_reason == "aborted"
    assert r.conn.notify & N_CLOSED
    assert r.conn.poll_at() is None
    r.conn.abort()  # no-op once closed
    assert r.dispatch() == []
    assert r.send(ACK, b"after") == []


def test_abort_in_time_wait_sends_nothing() -> None:
    r = Rig()
    r.to_state("TIME_WAIT")
    r.conn.abort()
    assert r.dispatch() == []
    assert r.conn.state is State.CLOSED


def test_closed_connection_ignores_everything() -> None:
    r = Rig()
    r.to_state("LAST_ACK")
    r.send(ACK, ack=1)
    assert r.conn.state is State.CLOSED
    for flags, payload in ((ACK, b"x"), (FIN | ACK, b""), (RST, b"")):
        assert r.send(flags, payload, advance=False) == []
    assert r.conn.state is State.CLOSED
    assert r.conn.close_reason == "closed"
