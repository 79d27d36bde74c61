"""Churn through a Driver in one process: TCP connections opened and closed one after
another, UDP sessions from many sources; the timer heap stays proportional to the live flows
during the churn, and every table in ``Driver.table_sizes()`` is back to its value before
the churn once it stops (issue 15 item 12)."""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import pytest

from tun2proxy.driver import Driver, DriverConfig
from tun2proxy.proxy.address import Address
from tun2proxy.stack import StackConfig
from tun2proxy.tcp import TcpConfig
from tun2proxy.testing import udp_packet
from tun2proxy.testing.apps import AppHost
from tun2proxy.upstream.base import DatagramReceiver, FlowInfo, UdpChannel
from tun2proxy.upstream.udp import open_direct_udp

from .test_driver_inprocess import LoopbackUpstream, _echo, server

pytestmark = pytest.mark.timeout(120)


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.transport.sendto(data, addr)


class LoopbackBoth(LoopbackUpstream):
    """TCP to loopback ports by destination port; every UDP datagram to one loopback echo."""

    def __init__(self, ports: dict[int, int], udp_port: int) -> None:
        super().__init__(ports)
        self.udp_port = udp_port

    async def open_udp(self, flow: FlowInfo, receiver: DatagramReceiver) -> UdpChannel:
        ch = await open_direct_udp(socket.AF_INET, receiver, egress=self.egress,
                                   refuse_local=False)
        send = ch.send
        port = self.udp_port
        ch.send = lambda payload, dst: send(payload, Address("127.0.0.1", port))  # type: ignore[method-assign]
        return ch


async def test_tables_return_to_baseline_after_churn() -> None:
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(_UdpEcho, local_addr=("127.0.0.1", 0))
    udp_port = echo.get_extra_info("sockname")[1]
    host = AppHost()
    stack = Driver.make_stack(StackConfig(
        mtu=1500, udp_timeout=0.5, tcp=TcpConfig(time_wait=0.2),
    ))
    try:
        async with server(_echo) as port:
            driver = Driver(stack, host.link, LoopbackBoth({80: port}, udp_port),
                            DriverConfig(connect_timeout=2.0))
            task = asyncio.create_task(driver.run())
            await asyncio.sleep(0)
            baseline = driver.table_sizes()
            fds = len(os.listdir("/proc/self/fd"))
            worst_ratio = 0.0
            for rnd in range(3):
                for i in range(100):
                    app = host.connect("192.0.2.1", 80)
                    await host.send_all(app, b"ping %d" % i)
                    host.shutdown(app)
                    await host.wait(app, lambda a: a.closed, timeout=10)
                    assert app.close_reason == "closed"
                    t = driver.table_sizes()
                    live = t["stack_tcp_keys"] + t["stack_udp_sessions"]
                    worst_ratio = max(worst_ratio, t["stack_timers"] / (live + 22))
                host.link.feed([
                    udp_packet(f"10.0.{rnd}.{i + 1}", "192.0.2.1", 5000 + i, 9999, b"u")
                    for i in range(200)
                ])
                await asyncio.sleep(0.1)
            assert driver.flows_opened == 300
            assert worst_ratio <= 3, worst_ratio  # stale timer entries are compacted away
            # The churn stops: TIME-WAIT (0.2 s) and the UDP timeout (0.5 s) pass, and the
            # stale timers of the closed flows (their longest deadlines) too.
            deadline = loop.time() + 40
            while driver.table_sizes() != baseline and loop.time() < deadline:
                await asyncio.sleep(0.2)
            after = driver.table_sizes()
            changed = {k: (baseline[k], v) for k, v in after.items() if baseline.get(k) != v}
            assert not changed, changed
            assert len(os.listdir("/proc/self/fd")) <= fds
            assert "tables" in driver.stats()
            driver.stop()
            await asyncio.wait_for(task, 5)
    finally:
        echo.close()
