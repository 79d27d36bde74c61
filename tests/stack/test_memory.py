"""Memory: what a flow costs the stack, the running estimate, and the memory budget."""

from __future__ import annotations

import gc
import tracemalloc

from tun2proxy.stack import NetStack, StackConfig, TcpConnectRequest
from tun2proxy.stack.netstack import FLOW_OVERHEAD
from tun2proxy.tcp import TcpConfig
from tun2proxy.testing import ScriptedTcpPeer
from tun2proxy.wire import ACK, RST

SECRET = b"memory-test-key!"


def _open(st: NetStack, sport: int, now: float = 0.0) -> tuple[int, ScriptedTcpPeer]:
    p = ScriptedTcpPeer("10.0.0.1", sport, "192.0.2.1", 80, iss=1000 + sport, ts=True)
    st.receive(p.syn(mss=1460, wscale=7, sack_permitted=True), now)
    (ev,) = st.events()
    assert isinstance(ev, TcpConnectRequest)
    st.tcp_accept(ev.flow_id)
    p.expect(st.poll(now), flags=0x12)
    st.receive(p.ack(), now)
    st.poll(now)
    return ev.flow_id, p


def test_idle_flow_cost_matches_the_estimate() -> None:
    st = NetStack(StackConfig(isn_secret=SECRET, max_flows=5000))
    for i in range(50):
        _open(st, 10000 + i)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1000):
            _open(st, 20000 + i)
        gc.collect()
        per_flow = (tracemalloc.get_traced_memory()[0] - before) / 1000
    finally:
        tracemalloc.stop()
    # The fixed per-flow estimate used for the memory budget stays within 30 % of reality,
    # and an idle flow costs the stack no buffers at all.
    assert 0.7 * FLOW_OVERHEAD <= per_flow <= 1.3 * FLOW_OVERHEAD, per_flow
    assert st.stats()["tcp_buffered_bytes"] == 0


def test_running_estimate_follows_buffered_bytes() -> None:
    st = NetStack(StackConfig(isn_secret=SECRET))
    fid, p = _open(st, 30000)
    base = st.memory_estimate()
    st.receive(p.data(b"x" * 10_000), 0.1)
    assert st.memory_estimate() == base + 10_000
    st.recv(fid)
    assert st.memory_estimate() == base
    st.send(fid, b"y" * 50_000)
    assert st.memory_estimate() == base + 50_000
    now = 0.1
    while st.memory_estimate() > base and now < 5:  # the app acknowledges what it gets
        p.expect(st.poll(now), count=None)
        st.receive(p.ack(), now)
        now += 0.01
    assert st.memory_estimate() == base  # acknowledged bytes are released
    st.abort(fid)
    st.poll(0.3)
    assert st.memory_estimate() == 0


def test_budget_shrinks_windows_then_refuses_new_flows() -> None:
    limit = 2 << 20
    cfg = StackConfig(
        isn_secret=SECRET, memory_limit=limit,
        tcp=TcpConfig(recv_buffer=1 << 20, send_buffer=1 << 20),
    )
    st = NetStack(cfg)
    windows: list[int] = []
    refused_at = None
    for i in range(40):
        p = ScriptedTcpPeer("10.0.0.1", 40000 + i, "192.0.2.1", 80, iss=1000 + i)
        st.receive(p.syn(mss=1460, wscale=7), 0.0)
        evs = st.events()
        if not evs:
            p.expect(st.poll(0.0), flags=RST | ACK)  # refused at once: over budget
            refused_at = i
            break
        st.tcp_accept(evs[0].flow_id)
        p.expect(st.poll(0.0), flags=0x12)
        st.receive(p.ack(), 0.0)
        st.poll(0.0)
        # The app fills whatever window it is offered; the host never reads (slow upstream).
        conn = st.connection(evs[0].flow_id)
        for _ in range(100):
            window = conn.rcv_adv - conn.rcv_nxt  # what the app was last offered
            if window <= 0:
                break
            st.receive(p.data(b"z" * min(window, 60_000)), 0.0)
            p.expect(st.poll(0.0), count=None)
        windows.append(conn.rcv_cap)
        st.events()
        assert st.memory_estimate() <= limit + (1 << 20)  # never beyond one window's worth
    assert refused_at is not None and refused_at > 1
    assert st.stats()["drops"]["tcp-memory-limit"] == 1  # type: ignore[index]
    # Buffers shrank as the budget filled: later flows were offered far less than 1 MiB.
    assert windows[0] > 1 << 19  # the first flow, alone, was offered nearly its whole MiB
    assert windows[-1] < 1 << 18
