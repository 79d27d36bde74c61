# mypy: disable-error-code="comparison-overlap"
# (mypy keeps a narrowed attribute such as ``conn.state`` narrowed across calls that change it)
"""Timers: delayed ACK (R5), keep-alive towards the app, idle timeout, half-close timeout and
TIME-WAIT (T2, C6, C7).
"""

from __future__ import annotations

import pytest

from tun2proxy.errors import ConfigError
from tun2proxy.tcp import N_CLOSED, TcpConfig

from .helpers import ACK, FIN, RST, Rig, State, pattern


def _past_quickack(r: Rig, size: int = 10) -> None:
    for _ in range(20):
        r.send(ACK, b"q" * size)
    r.run_until(r.now + 1.0)
    r.conn.recv()
    r.dispatch()


def test_first_segments_are_acked_at_once() -> None:
    r = Rig()
    r.establish()
    for i in range(16):
        out = r.send(ACK, b"x")
        assert [o.ack for o in out] == [i + 1]


@pytest.mark.parametrize("delay", [0.04, 0.2, 0.499])
def test_delayed_ack(delay: float) -> None:
    r = Rig(TcpConfig(delayed_ack=delay))
    r.establish()
    _past_quickack(r)
    t0 = r.now
    nxt = r.peer_nxt
    assert r.send(ACK, b"small") == []
    assert r.conn.poll_at() == pytest.approx(t0 + delay)
    assert r.at(t0 + delay * 0.9) == []
    out = r.run_until(t0 + delay)
    assert [(o.f, o.ack, o.time) for o in out] == [(".", nxt + 5, pytest.approx(t0 + delay))]
    assert r.run_until(t0 + 10.0) == []  # once


def test_ack_at_least_every_second_full_segment() -> None:
    r = Rig()
    r.establish(mss=1460)
    _past_quickack(r, 1460)
    nxt = r.peer_nxt
    assert r.send(ACK, pattern(1460)) == []
    out = r.send(ACK, pattern(1460))
    assert [o.ack for o in out] == [nxt + 2920]
    assert r.send(ACK, pattern(1460)) == []
    out = r.send(ACK, pattern(1460))
    assert [o.ack for o in out] == [nxt + 4 * 1460]


def test_delayed_ack_rides_on_data() -> None:
    r = Rig()
    r.establish()
    _past_quickack(r)
    nxt = r.peer_nxt
    assert r.send(ACK, b"request") == []
    r.conn.send(b"response")
    (o,) = r.dispatch()
    assert (o.payload, o.ack) == (b"response", nxt + 7)
    # nothing is owed any more: the delayed-ACK timer produces no pure ACK
    assert [o for o in r.run_until(r.now + 0.15) if not o.payload] == []


def test_delayed_ack_config_bound() -> None:
    with pytest.raises(ConfigError):
        TcpConfig(delayed_ack=0.5)
    TcpConfig(delayed_ack=0.0)


def test_keepalive_off_by_default() -> None:
    r = Rig()
    r.establish()
    assert r.run_until(599.0) == []
    assert r.conn.state is State.ESTABLISHED


def test_keepalive_probes_then_reset() -> None:
    r = Rig(TcpConfig(keepalive_idle=10.0, keepalive_interval=2.0, keepalive_count=3))
    r.establish()
    r.send(ACK, b"abc")
    r.run_until(1.0)
    out = r.run_until(100.0)
    probes, rst = out[:-1], out[-1]
    assert [(o.f, o.seq, o.ack, o.payload, o.time) for o in probes] == [
        (".", -1, 3, b"", 10.0), (".", -1, 3, b"", 12.0), (".", -1, 3, b"", 14.0),
    ]
    assert (rst.flags, rst.time) == (RST | ACK, 16.0)
    assert r.conn.close_reason == "timeout"
    assert r.conn.notify & N_CLOSED


def test_keepalive_answered_keeps_connection() -> None:
    r = Rig(TcpConfig(keepalive_idle=10.0, keepalive_interval=2.0, keepalive_count=2))
    r.establish()
    for k in range(5):
        (probe,) = r.run_until(r.now + 10.0)
        assert probe.seq == -1
        assert r.send(ACK) == []  # the app's TCP answers the probe
        assert r.conn.state is State.ESTABLISHED, k
    assert r.conn.keepalive_probes == 0


@pytest.mark.parametrize("state", ["ESTABLISHED", "CLOSE_WAIT"])
def test_idle_timeout_resets(state: str) -> None:
    r = Rig(TcpConfig(idle_timeout=30.0, half_close_timeout=1000.0))
    r.to_state(state)
    out = r.run_until(29.9)
    assert out == []
    out = r.run_until(30.0)
    assert [(o.flags, o.time) for o in out] == [(RST | ACK, 30.0)]
    assert r.conn.state is State.CLOSED
    assert r.conn.close_reason == "idle"


def test_idle_timeout_deferred_by_traffic_either_way() -> None:
    r = Rig(TcpConfig(idle_timeout=30.0))
    r.establish()
    r.now = 20.0
    r.send(ACK, b"ping")  # the app sends
    assert r.run_until(49.0) == [] or r.conn.state is State.ESTABLISHED
    r.conn.recv()
    r.now = 45.0
    r.conn.send(b"pong")  # we send
    r.dispatch()
    r.send(ACK, ack=4, advance=False, seq=4)
    out = r.run_until(74.9)
    assert r.conn.state is State.ESTABLISHED
    out = r.run_until(75.0)
    assert [o.flags for o in out] == [RST | ACK]
    assert r.conn.close_reason == "idle"


@pytest.mark.parametrize("state", ["FIN_WAIT_2", "CLOSE_WAIT"])
def test_half_close_timeout(state: str) -> None:
    r = Rig(TcpConfig(half_close_timeout=5.0))
    r.to_state(state)
    assert r.run_until(4.99) == []
    out = r.run_until(5.0)
    assert [(o.flags, o.time) for o in out] == [(RST | ACK, 5.0)]
    assert r.conn.state is State.CLOSED
    assert r.conn.close_reason == "timeout"


def test_half_close_timeout_deferred_by_traffic() -> None:
    r = Rig(TcpConfig(half_close_timeout=5.0))
    r.to_state("FIN_WAIT_2")
    r.now = 4.0
    r.send(ACK, b"still talking", ack=1)
    r.conn.recv()
    assert all(o.flags == ACK for o in r.run_until(8.9))
    assert r.conn.state is State.FIN_WAIT_2
    out = r.run_until(9.0)
    assert [o.flags for o in out] == [RST | ACK]
    # CLOSE-WAIT: data we send counts as traffic too
    r = Rig(TcpConfig(half_close_timeout=5.0, min_rto=1.0))
    r.to_state("CLOSE_WAIT")
    r.now = 3.0
    r.conn.send(b"late reply")
    r.dispatch()
    r.send(ACK, ack=10)
    assert r.run_until(7.9) == []
    assert [o.flags for o in r.run_until(8.0)] == [RST | ACK]


def test_time_wait_ends_after_time_wait() -> None:
    for tw in (0.1, 2.0, 30.0):
        r = Rig(TcpConfig(time_wait=tw, half_close_timeout=1.0))
        r.to_state("TIME_WAIT")
        assert r.conn.poll_at() == pytest.approx(tw)
        assert r.run_until(tw) == []
        assert r.conn.state is State.CLOSED
        assert r.conn.close_reason == "closed"


def test_time_wait_not_cut_by_half_close_timeout() -> None:
    r = Rig(TcpConfig(time_wait=10.0, half_close_timeout=1.0, idle_timeout=2.0))
    r.to_state("TIME_WAIT")
    r.run_until(9.9)
    assert r.conn.state is State.TIME_WAIT
    r.run_until(10.0)
    assert r.conn.state is State.CLOSED


def test_poll_at_and_early_on_timer() -> None:
    r = Rig(TcpConfig(min_rto=1.0, idle_timeout=100.0))
    r.establish()
    assert r.conn.poll_at() == pytest.approx(100.0)
    r.conn.send(b"x")
    r.dispatch()
    assert r.conn.poll_at() == pytest.approx(1.0)
    assert r.at(0.5) == []  # nothing is due yet
    assert r.conn.poll_at() == pytest.approx(1.0)
    r.send(ACK, ack=1)
    assert r.conn.poll_at() == pytest.approx(100.0)


def test_fin_wait_2_half_close_timeout_starts_when_fin_acked() -> None:
    r = Rig(TcpConfig(half_close_timeout=5.0, min_rto=1.0))
    r.establish()
    r.conn.shutdown()
    r.dispatch()
    r.now = 0.5
    r.send(ACK, ack=1)
    assert r.conn.state is State.FIN_WAIT_2
    r.run_until(5.4)
    assert r.conn.state is State.FIN_WAIT_2
    r.run_until(5.5)
    assert r.conn.state is State.CLOSED


def test_peer_fin_after_long_fin_wait_2_before_timeout() -> None:
    r = Rig(TcpConfig(half_close_timeout=5.0))
    r.to_state("FIN_WAIT_2")
    r.run_until(4.0)
    out = r.send(FIN | ACK, ack=1)
    assert [o.ack for o in out] == [1]
    assert r.conn.state is State.TIME_WAIT
