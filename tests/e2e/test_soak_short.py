"""The soak benchmark's short version (issue 15 item 12): churn through dante — sequential
TCP connections, UDP sessions, a bulk flow — then, once the churn stops, tun2proxy's fds,
flows, timers and every table in ``Driver.table_sizes()`` are back to their values before it.

Bounded counts only, no timings and no RSS figure (``benchmarks/soak.py`` measures the RSS
slope over 30 minutes).
"""

from __future__ import annotations

import socket
import time

import pytest

from tun2proxy.testing.churn import churn_round, fd_count
from tun2proxy.testing.netlab import SERVER_V4, Lab, wait_for

from .conftest import DANTE_PORT, STREAM_PORT, UDP_PORT, Tun2Proxy, stats

pytestmark = pytest.mark.timeout(120)

#: Bounded on purpose, not keyed by flow: rate-limited log keys (at most 1,024).
BOUNDED = ("log_keys",)


def _tables(st: dict[str, object]) -> dict[str, int]:
    t = st["tables"]
    assert isinstance(t, dict)
    return {k: int(v) for k, v in t.items() if k not in BOUNDED}


@pytest.mark.usefixtures("dante")
def test_tables_fds_and_timers_back_to_baseline_after_churn(
    lab: Lab, tun2proxy: Tun2Proxy, udp_servers: dict[int, tuple[str, ...]]
) -> None:
    p = tun2proxy("--udp-timeout", "2", proxy=f"socks5://127.0.0.1:{DANTE_PORT}")
    time.sleep(0.5)
    base = stats(p)
    base_tables = _tables(base)

    def churn(n: int, bulk: float) -> None:
        r = churn_round(
            lambda: lab.socket(lab.C),
            lambda: lab.socket(lab.C, socket.AF_INET, socket.SOCK_DGRAM),
            (SERVER_V4, STREAM_PORT), (SERVER_V4, UDP_PORT),
            connections=n, udp_round_trips=n, bulk_seconds=bulk,
        )
        assert r.tcp_failed == 0, r.errors
        assert r.udp_ok >= n * 0.95, r  # UDP may lose a datagram; the sessions are what counts
        assert r.bulk_bytes > 0, r.errors

    # A short warm-up first: the event loop makes some fds on first use (uvloop: libuv's
    # io_uring ring), which are not the churn's; the fd baseline is taken after it.
    churn(20, 0.1)
    assert wait_for(lambda: _tables(stats(p)) == base_tables, timeout=30, interval=0.5)
    base_fds = fd_count(p.pid)
    peak_timers = 0
    peak_ratio = 0.0
    for _ in range(3):
        churn(200, 0.5)
        st = stats(p)
        t = _tables(st)
        peak_timers = max(peak_timers, t["stack_timers"])
        live = t["stack_tcp_keys"] + t["stack_udp_sessions"]
        peak_ratio = max(peak_ratio, (t["stack_timers"] - 64) / (live or 1))
    # During the churn: the timer heap follows the live flows (stale entries compacted).
    assert peak_ratio <= 3, (peak_timers, peak_ratio)

    # The churn stops: TIME-WAIT (2 s), the UDP timeout (2 s), SOCKS5 associations closing.
    def settled() -> bool:
        return _tables(stats(p)) == base_tables and fd_count(p.pid) <= base_fds

    wait_for(settled, timeout=30, interval=1.0)
    after = stats(p)
    tables = _tables(after)
    assert {k: (base_tables.get(k), v) for k, v in tables.items()
            if base_tables.get(k) != v} == {}
    assert fd_count(p.pid) <= base_fds
    assert after["tcp_flows"] == 0 and after["udp_sessions"] == 0
    assert after["timer_heap"] == 0
    assert after["relays"] == 0 and after["udp_relays"] == 0
    assert int(after["flows_opened"]) >= 620  # type: ignore[call-overload]
    assert p.alive()
