"""Driver.flows(), close_flow/close_flows and the flow-end hooks, in one process: apps (this
package's TCP) on a PacketFlowLink, upstreams reaching loopback servers."""

from __future__ import annotations

import asyncio
import dataclasses
import os

import pytest

from tun2proxy.driver import Driver, DriverConfig
from tun2proxy.driver.flows import FlowFilter, FlowSnapshot
from tun2proxy.testing import tls_client_hello

from .test_driver_inprocess import LoopbackUpstream, _echo, running, server

pytestmark = pytest.mark.timeout(60)


async def _wait_for(pred: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():  # type: ignore[operator]
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def _one(driver: Driver, fid: int | None = None) -> FlowSnapshot:
    flows = [f for f in driver.flows() if fid is None or f.id == fid]
    assert len(flows) == 1, flows
    return flows[0]


async def test_snapshot_counts_bytes_and_packets_each_way() -> None:
    async with server(_echo) as port, running(LoopbackUpstream({80: port})) as (host, driver):
        app = host.connect("192.0.2.1", 80)
        data = os.urandom(200_000)
        await host.send_all(app, data)
        await host.wait(app, lambda a: len(a.received) >= len(data))
        s = _one(driver)
        assert s.protocol == "tcp"
        assert s.dst == ("192.0.2.1", 80)
        assert s.src[1] == app.conn.local_port
        assert s.upstream == "loopback"
        assert s.state == "open" and s.tcp_state == "ESTABLISHED"
        assert s.bytes_up == len(data) and s.bytes_down == len(data)
        assert s.packets_up > len(data) // 1460 and s.packets_down > len(data) // 1460
        assert s.age >= s.idle >= 0.0
        assert s.end is None
        d = s.as_dict()
        assert d["dst"] == ["192.0.2.1", 80] and d["bytes_up"] == len(data)


async def test_rates_appear_after_a_window() -> None:
    async with server(_echo) as port, running(LoopbackUpstream({80: port})) as (host, driver):
        app = host.connect("192.0.2.1", 80)
        await host.send_all(app, b"x" * 1000)
        await host.wait(app, lambda a: len(a.received) >= 1000)
        first = _one(driver)
        assert first.rate_up == 0.0
        await asyncio.sleep(1.05)
        await host.send_all(app, b"y" * 50_000)
        await host.wait(app, lambda a: len(a.received) >= 51_000)
        later = _one(driver)
        assert later.rate_up > 0.0 and later.rate_down > 0.0


async def test_close_flow_resets_the_app_and_closes_the_upstream() -> None:
    upstream_closed = asyncio.Event()

    async def echo_then_note(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except ConnectionError:
            pass
        upstream_closed.set()
        w.close()

    ended: list[FlowSnapshot] = []
    async with server(echo_then_note) as port, running(LoopbackUpstream({80: port})) as (
        host, driver,
    ):
        driver.add_flow_end_hook(ended.append)
        victim = host.connect("192.0.2.1", 80)
        other = host.connect("192.0.2.2", 80)
        for a in (victim, other):
            await host.send_all(a, b"hello")
            await host.wait(a, lambda x: len(x.received) >= 5)
        fid = next(f.id for f in driver.flows() if f.dst[0] == "192.0.2.1")
        assert driver.close_flow(fid)
        await host.wait(victim, lambda a: a.closed, timeout=5)
        assert victim.close_reason == "reset"
        await asyncio.wait_for(upstream_closed.wait(), 5)
        # the other flow carries on
        await host.send_all(other, b"still here")
        await host.wait(other, lambda a: len(a.received) >= 15)
        assert not other.closed
        assert [f.dst[0] for f in driver.flows()] == ["192.0.2.2"]
        assert not driver.close_flow(fid)  # gone already
        assert not driver.close_flow(999_999)
        assert len(ended) == 1 and ended[0].end == "closed" and ended[0].id == fid
        assert ended[0].bytes_up == 5 and ended[0].bytes_down == 5


async def test_close_a_flow_while_its_upstream_is_dialled() -> None:
    ended: list[FlowSnapshot] = []
    async with server(_echo) as port, running(LoopbackUpstream({80: port}, delay=3.0)) as (
        host, driver,
    ):
        driver.add_flow_end_hook(ended.append)
        app = host.connect("192.0.2.1", 80)
        await _wait_for(lambda: [f.state for f in driver.flows()] == ["dialing"])
        assert driver.flows()[0].tcp_state == "LISTEN"
        assert driver.close_flow(driver.flows()[0].id)
        await host.wait(app, lambda a: a.closed, timeout=5)
        assert app.close_reason == "refused"  # the SYN was answered with an RST
        await _wait_for(lambda: len(ended) == 1)
        assert ended[0].end == "closed"
        assert driver.flows() == []


async def test_close_a_sniffing_flow() -> None:
    async with server(_echo) as port, running(
        LoopbackUpstream({80: port}), DriverConfig(sniff=True, sniff_timeout=5.0)
    ) as (host, driver):
        app = host.connect("192.0.2.1", 80)
        await host.wait(app, lambda a: a.established, timeout=5)
        await _wait_for(lambda: [f.state for f in driver.flows()] == ["sniffing"])
        assert driver.close_flow(driver.flows()[0].id)
        await host.wait(app, lambda a: a.closed, timeout=5)
        assert app.close_reason == "reset"


async def test_a_sniffed_name_is_the_flows_host() -> None:
    async with server(_echo) as port, running(
        LoopbackUpstream({443: port}), DriverConfig(sniff=True)
    ) as (host, driver):
        app = host.connect("192.0.2.1", 443)
        hello = tls_client_hello("www.example.com")
        await host.send_all(app, hello)
        await host.wait(app, lambda a: len(a.received) >= len(hello))
        s = _one(driver)
        assert s.host == "www.example.com" and s.state == "open"
        assert driver.close_flows(host="example.com") == [s.id]


async def test_close_flows_by_filter() -> None:
    async with server(_echo) as port, running(LoopbackUpstream({80: port, 81: port})) as (
        host, driver,
    ):
        apps = [host.connect("192.0.2.1", 80), host.connect("192.0.2.1", 81),
                host.connect("192.0.2.3", 80)]
        for a in apps:
            await host.send_all(a, b"hi")
            await host.wait(a, lambda x: len(x.received) >= 2)
        assert driver.close_flows() == []  # an empty filter closes nothing
        closed = driver.close_flows(dst="192.0.2.1:81")
        assert len(closed) == 1
        await host.wait(apps[1], lambda a: a.closed, timeout=5)
        closed = driver.close_flows(FlowFilter(dst="192.0.2.1"))
        assert len(closed) == 1
        await host.wait(apps[0], lambda a: a.closed, timeout=5)
        assert not apps[2].closed
        assert driver.close_flows(upstream="nope") == []
        assert len(driver.close_flows(upstream="loopback")) == 1


async def test_flow_end_record_for_an_orderly_close_and_a_refusal() -> None:
    ended: list[FlowSnapshot] = []
    async with server(_echo) as port, running(LoopbackUpstream({80: port})) as (host, driver):
        driver.add_flow_end_hook(ended.append)
        app = host.connect("192.0.2.1", 80)
        await host.send_all(app, b"z" * 30_000)
        host.shutdown(app)
        await host.wait(app, lambda a: a.closed, timeout=10)
        await _wait_for(lambda: len(ended) == 1)
        e = ended[0]
        assert e.end == "app-fin", e
        assert e.bytes_up == 30_000 and e.bytes_down == 30_000
        assert e.state == "closed"
        refused = host.connect("192.0.2.1", 99)  # no such service: refused upstream
        await host.wait(refused, lambda a: a.closed, timeout=5)
        await _wait_for(lambda: len(ended) == 2)
        assert ended[1].end == "refused"
        assert ended[1].detail is not None and "refused" in ended[1].detail
        assert driver.flows() == []


async def test_a_failing_hook_does_not_break_the_flow() -> None:
    def bad(_s: FlowSnapshot) -> None:
        raise RuntimeError("observer bug")

    async with server(_echo) as port, running(LoopbackUpstream({80: port})) as (host, driver):
        driver.add_flow_end_hook(bad)
        app = host.connect("192.0.2.1", 80)
        await host.send_all(app, b"abc")
        host.shutdown(app)
        await host.wait(app, lambda a: a.closed, timeout=10)
        driver.remove_flow_end_hook(bad)
        assert app.received == b"abc"


async def test_shutdown_reports_open_flows() -> None:
    ended: list[FlowSnapshot] = []
    async with server(_echo) as port, running(LoopbackUpstream({80: port})) as (host, driver):
        driver.add_flow_end_hook(ended.append)
        app = host.connect("192.0.2.1", 80)
        await host.send_all(app, b"abc")
        await host.wait(app, lambda a: len(a.received) >= 3)
    assert [e.end for e in ended] == ["shutdown"]


def test_as_dict_has_every_field() -> None:
    s = FlowSnapshot(
        id=1, protocol="udp", src=("10.0.0.1", 1), dst=("10.0.0.2", 53), host=None,
        upstream=None, state="dns", tcp_state=None, bytes_up=1, bytes_down=2, packets_up=3,
        packets_down=4, age=5.0, idle=6.0, end="idle",
    )
    d = s.as_dict()
    assert list(d) == [f.name for f in dataclasses.fields(FlowSnapshot)]
    assert d["dst"] == ["10.0.0.2", 53] and d["end"] == "idle" and d["packets_down"] == 4


def test_filter_terms() -> None:
    s = FlowSnapshot(
        id=1, protocol="tcp", src=("10.0.0.1", 1234), dst=("2001:db8::1", 443),
        host="www.Example.com", upstream="proxy", state="open", tcp_state="ESTABLISHED",
        bytes_up=0, bytes_down=0, packets_up=0, packets_down=0, age=0.0, idle=0.0,
    )
    assert FlowFilter(host="example.com").matches(s)
    assert FlowFilter(host="www.example.com.").matches(s)
    assert not FlowFilter(host="ample.com").matches(s)
    assert FlowFilter(dst="[2001:db8::1]:443").matches(s)
    assert FlowFilter(dst="2001:db8::1").matches(s)
    assert not FlowFilter(dst="[2001:db8::1]:80").matches(s)
    assert FlowFilter(upstream="proxy", protocol="tcp").matches(s)
    assert not FlowFilter(upstream="proxy", protocol="udp").matches(s)
    assert not FlowFilter().matches(s)


def test_records_of_flows_the_stack_forgot_are_bounded() -> None:
    # Handshakes handed back under a SYN flood whose app never answers end without an event:
    # their records must not pile up.
    from tun2proxy.driver.flows import FlowTable
    from tun2proxy.stack import StackConfig

    stack = Driver.make_stack(StackConfig(max_flows=4, max_udp_sessions=4))
    table = FlowTable(stack, {}, lambda _fid: "pending", lambda: 0.0)
    for fid in range(1, 10_001):
        table.tcp_started(fid, ("10.0.0.1", fid), ("192.0.2.1", 80))
    assert len(table) <= 2 * (4 + 4) + 64
    assert table.snapshot() == []  # none of them is in the stack
