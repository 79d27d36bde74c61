"""Churn in the pure core: the timer heap stays proportional to the live flows (stale lazy-
deletion entries are compacted away), and every table empties when the churn stops."""

from __future__ import annotations

import gc

from tun2proxy.stack import NetStack
from tun2proxy.tcp.connection import TcpConnection
from tun2proxy.testing import ScriptedTcpPeer, udp_packet

from .helpers import establish, make_stack, peer

LIVE = 200


def _tables(st: NetStack) -> dict[str, int]:
    s = st.stats()
    return {k: int(s[k]) for k in (  # type: ignore[call-overload]
        "tcp_flows", "tcp_pending", "tcp_half_open", "tcp_handshakes_held", "tcp_queued",
        "udp_sessions", "timer_heap",
    )}


def _open_exchange_close(st: NetStack, p: ScriptedTcpPeer, now: float) -> None:
    """One short connection: a request, a reply, our FIN, the app's FIN."""
    fid = establish(st, p, now)
    st.receive(p.data(b"request"), now)
    st.poll(now)
    st.recv(fid)
    st.send(fid, b"reply")
    st.shutdown(fid)
    p.expect(st.poll(now))
    st.receive(p.fin(), now)
    st.poll(now)
    st.events()
    st.poll(now)


def test_timer_heap_stays_bounded_under_tcp_churn() -> None:
    st = make_stack(max_flows=5000)
    now = 0.0
    worst = 0
    ratio = 0.0
    for i in range(3000):
        _open_exchange_close(st, peer(sport=10000 + i), now)
        now += 0.01  # 100 connections/s; TIME-WAIT (2 s) keeps about LIVE flows keyed
        t = _tables(st)
        worst = max(worst, t["timer_heap"])
        ratio = max(ratio, t["timer_heap"] / (t["tcp_flows"] + 1))
    # Before compaction: one stale entry per closed flow for ~30 s, about 2,800 here.
    assert worst <= 3 * (LIVE + 20) + 64, worst
    assert ratio <= 3 + 64 / 10, ratio
    assert st.stats_counters.timer_compactions > 0
    for _ in range(40):
        now += 1.0
        st.poll(now)
        st.events()
    assert all(v == 0 for v in _tables(st).values()), _tables(st)


def test_closed_connections_are_not_held_by_the_heap() -> None:
    st = make_stack(max_flows=5000)
    now = 0.0
    for i in range(2000):
        _open_exchange_close(st, peer(sport=20000 + i), now)
        now += 0.01
    gc.collect()
    held = sum(isinstance(o, TcpConnection) for o in gc.get_objects())
    # The flows still keyed (TIME-WAIT) and the few stale entries compaction has not reached
    # yet; before compaction about 1,800 closed connections waited for their timers here.
    assert held <= 3 * (LIVE + 20) + 64, (held, st.stats()["tcp_flows"])


def test_udp_sessions_and_their_timers_empty_after_churn() -> None:
    st = make_stack(udp_timeout=5.0, max_udp_sessions=4096)
    now = 0.0
    worst = 0
    for rnd in range(20):
        for i in range(200):
            st.receive(udp_packet(f"10.0.{rnd}.{i + 1}", "192.0.2.1", 5000 + i, 53, b"q"), now)
        st.events()
        st.poll(now)
        worst = max(worst, st.table_sizes()["stack_timers"])
        now += 1.0
    assert worst <= 3 * 1200 + 64
    for _ in range(20):
        now += 1.0
        st.poll(now)
        st.events()
    assert all(v == 0 for v in _tables(st).values()), _tables(st)
