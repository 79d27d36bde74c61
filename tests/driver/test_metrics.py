"""--metrics: a real HTTP scrape of a running Driver, parsed by prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import os
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tun2proxy.driver.dialing import DIAL_BUCKETS, DialStats
from tun2proxy.metrics import families, serve_metrics

from .test_driver_inprocess import LoopbackUpstream, _echo, running, server

pytestmark = pytest.mark.timeout(60)


def _scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_a_scrape_reports_traffic_flows_failures_and_dial_latency() -> None:
    async with server(_echo) as port, running(LoopbackUpstream({80: port})) as (host, driver):
        metrics = serve_metrics(driver, "127.0.0.1", 0)
        try:
            before = await asyncio.to_thread(_scrape, metrics.port)
            app = host.connect("192.0.2.1", 80)
            data = os.urandom(1 << 20)
            await host.send_all(app, data)
            host.shutdown(app)
            await host.wait(app, lambda a: len(a.received) >= len(data) and a.closed)
            refused = host.connect("192.0.2.1", 81)  # no such service: the dial fails
            await host.wait(refused, lambda a: a.closed, timeout=5)
            after = await asyncio.to_thread(_scrape, metrics.port)
        finally:
            metrics.close()

    def grew(name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
        return after[name][labels] - before.get(name, {}).get(labels, 0.0)

    assert grew("tun2proxy_link_receive_bytes_total") >= 1 << 20
    assert grew("tun2proxy_link_transmit_bytes_total") >= 1 << 20
    assert grew("tun2proxy_link_receive_packets_total") > 0
    assert grew("tun2proxy_flows_opened_total", (("protocol", "tcp"),)) == 1
    assert after["tun2proxy_flows_closed_total"][(("protocol", "tcp"), ("reason", "closed"))] >= 1
    assert after["tun2proxy_upstream_dial_failures_total"][
        (("protocol", "tcp"), ("reason", "refused"))] == 1
    assert after["tun2proxy_upstream_dial_duration_seconds_count"][()] == 1
    assert after["tun2proxy_upstream_dial_duration_seconds_bucket"][(("le", "+Inf"),)] == 1
    assert after["tun2proxy_upstream_dial_duration_seconds_sum"][()] > 0
    assert after["tun2proxy_tcp_flows"][()] == 0
    assert "tun2proxy_tcp_flows_by_state" not in after  # a scrape does not walk the flows
    assert after["process_resident_memory_bytes"][()] > 0
    assert after["tun2proxy_flows_failed_total"][()] == 1


def test_every_family_of_an_empty_snapshot_is_well_formed() -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.registry import Collector

    stats = DialStats()
    stats.observe(0.003, None)
    stats.observe(20.0, None)
    stats.observe(1.0, "timeout")
    snap = {"dials": stats.snapshot(), "link": {"packets_in": 3, "pcap_packets": 2,
                                                "pcap_dropped": 1, "pcap_bytes": 9,
                                                "pcap_stopped": 0}}

    class One(Collector):
        def collect(self):  # type: ignore[no-untyped-def]
            return families(snap)

    reg = CollectorRegistry()
    reg.register(One())
    text = generate_latest(reg).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    buckets = {s.labels["le"]: s.value for s in fams["tun2proxy_upstream_dial_duration_seconds"]
               .samples if s.name.endswith("_bucket")}
    assert len(buckets) == len(DIAL_BUCKETS) + 1
    assert buckets["0.0025"] == 0 and buckets["0.005"] == 1 and buckets["+Inf"] == 2
    assert fams["tun2proxy_pcap_dropped_packets"].samples[0].value == 1
    for f in fams.values():
        assert f.name.startswith("tun2proxy_")
        if f.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in f.samples)


def test_a_scrape_waiting_for_a_stopped_loop_fails_at_close() -> None:
    import threading

    from tun2proxy.metrics import LoopSnapshot

    class Stopped:
        loop = asyncio.new_event_loop()  # never run: a snapshot asked of it never comes

        def stats(self, per_flow: bool = True) -> dict[str, object]:
            raise AssertionError

    snap = LoopSnapshot(Stopped(), timeout=120)
    got: list[BaseException] = []

    def scrape() -> None:
        try:
            snap()
        except BaseException as e:
            got.append(e)

    t = threading.Thread(target=scrape)
    t.start()
    while not snap._pending:
        t.join(0.01)
    snap.close()
    t.join(30)
    Stopped.loop.close()
    assert [type(e) for e in got] == [RuntimeError]
    with pytest.raises(RuntimeError, match="stopped"):
        snap()


def test_a_snapshot_without_the_flow_walk_has_the_same_counters() -> None:
    from tun2proxy.driver import Driver
    from tun2proxy.stack import StackConfig
    from tun2proxy.stack.events import TcpConnectRequest
    from tun2proxy.testing.packets import tcp_packet

    st = Driver.make_stack(StackConfig())
    st.receive_many([tcp_packet("10.0.0.2", "192.0.2.1", 1000 + i, 80, seq=1, flags=0x02)
                     for i in range(50)], 1.0)
    for ev in st.events():
        if isinstance(ev, TcpConnectRequest):
            st.tcp_accept(ev.flow_id)
    st.poll(1.0)
    full, quick = st.stats(), st.stats(per_flow=False)
    assert full["tcp_states"] == {"SYN-RECEIVED": 50} and quick["tcp_states"] == {}
    del full["tcp_states"], quick["tcp_states"]
    assert full == quick
