"""The driver's admission path in one process (issue 15, items 3 and 4): bursts beyond
max_connecting wait in the dial queue instead of being refused, a hanging destination holds
a few dial slots and not all, the queue has a deadline, and spoofed SYNs through a fast
upstream cost no upstream connection."""

from __future__ import annotations

import asyncio

import pytest

from tun2proxy.driver import DriverConfig
from tun2proxy.proxy.address import Address
from tun2proxy.testing import tcp_packet
from tun2proxy.testing.apps import AppConnection, AppHost
from tun2proxy.upstream.base import FlowInfo, Upstream

from .test_driver_inprocess import LoopbackUpstream, _echo, running, server

pytestmark = pytest.mark.timeout(60)


async def _echo_once(host: AppHost, app: AppConnection, data: bytes) -> None:
    await host.wait(app, lambda a: a.established or a.closed, timeout=20)
    assert not app.closed, app.close_reason
    await host.send_all(app, data)
    await host.wait(app, lambda a: bytes(a.received) == data or a.closed, timeout=20)
    assert bytes(app.received) == data, app.close_reason


async def test_a_burst_beyond_max_connecting_is_queued_not_refused() -> None:
    cfg = DriverConfig(connect_timeout=5.0, max_connecting=4, max_connecting_per_destination=4)
    upstream = LoopbackUpstream({80: 0}, delay=0.02)
    async with server(_echo) as port, running(upstream, cfg) as (host, driver):
        upstream.ports[80] = port
        apps = [host.connect("192.0.2.1", 80) for _ in range(40)]
        queued = 0
        for _ in range(50):
            await asyncio.sleep(0.005)
            queued = max(queued, int(driver.stats()["queued"]))  # type: ignore[call-overload]
        await asyncio.gather(*(_echo_once(host, a, b"hello %d" % i) for i, a in enumerate(apps)))
        assert queued > 0  # it was a real queue: 40 flows, 4 dials at a time
        assert driver.flows_failed == 0 and driver.flows_opened == 40


class _HalfDead(Upstream):
    """Dials to 192.0.2.66 hang (a black hole); the rest reach a loopback port."""

    name = "half-dead"

    def __init__(self) -> None:
        self.port = 0
        self.hanging = 0

    async def open_tcp(
        self, dst: Address, protocol: asyncio.Protocol, flow: FlowInfo
    ) -> asyncio.Transport:
        if dst.host == "192.0.2.66":
            self.hanging += 1
            await asyncio.sleep(3600)
        loop = asyncio.get_running_loop()
        t, _ = await loop.create_connection(lambda: protocol, "127.0.0.1", self.port)
        return t


async def test_a_hanging_destination_does_not_starve_the_others() -> None:
    cfg = DriverConfig(connect_timeout=30.0, max_connecting=16, max_connecting_per_destination=4)
    upstream = _HalfDead()
    async with server(_echo) as port, running(upstream, cfg) as (host, driver):
        upstream.port = port
        dead = [host.connect("192.0.2.66", 80) for _ in range(40)]
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert upstream.hanging == 4  # 4 slots held; the other 36 wait at no cost
        healthy = [host.connect("192.0.2.1", 80) for _ in range(3)]
        await asyncio.gather(*(_echo_once(host, a, b"alive") for a in healthy))
        assert not any(a.closed for a in dead)  # still waiting, neither refused nor reset
        assert int(driver.stats()["queued"]) == 36  # type: ignore[call-overload]


async def test_a_flow_waits_in_the_queue_until_its_deadline() -> None:
    cfg = DriverConfig(connect_timeout=30.0, max_connecting=1, queue_timeout=0.3)
    upstream = _HalfDead()
    async with running(upstream, cfg) as (host, driver):
        first = host.connect("192.0.2.66", 80)
        second = host.connect("192.0.2.66", 80)
        await host.wait(second, lambda a: bool(a.icmp), timeout=5)
        assert second.icmp == [(3, 1)]  # host unreachable, as for a dial that timed out
        assert not first.icmp and not first.closed  # dialling, not queued: its own timeout
        assert driver.stats()["queue_expired"] == 1


async def test_spoofed_syns_through_a_fast_upstream_cost_no_upstream_connection() -> None:
    upstream = LoopbackUpstream({80: 0})
    async with server(_echo) as port, running(
        upstream, syn_flood_threshold=8, half_open_timeout=0.5
    ) as (host, driver):
        upstream.ports[80] = port
        spoofed = [
            tcp_packet(f"100.64.0.{i + 1}", "192.0.2.1", 2000 + i, 80, flags=0x02, seq=i)
            for i in range(100)
        ]
        host.link.feed(spoofed)  # one batch: nobody will answer the SYN-ACKs
        await asyncio.sleep(0.05)
        st = driver.stats()
        assert st["syn_flood_mode"]
        real = host.connect("192.0.2.1", 80)
        await _echo_once(host, real, b"real")
        # Every spoofed SYN got a SYN-ACK from the stack, none an upstream connection.
        assert [f.src[0] for f in upstream.opened] == ["10.0.0.2"]
        await asyncio.sleep(1.0)  # the unanswered handshakes expire under pressure
        st = driver.stats()
        assert st["tcp_flows"] == 1 and st["tcp_half_open"] == 0
