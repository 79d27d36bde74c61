"""Two Drivers in one process: each its own link, upstream, Egress (outbound options and
own-endpoint registry), stats; stopping one leaves the other carrying traffic."""

from __future__ import annotations

import asyncio
import os

import pytest

from tun2proxy.driver import Driver, DriverConfig
from tun2proxy.stack import StackConfig
from tun2proxy.testing.apps import AppHost
from tun2proxy.upstream.egress import Egress, Outbound

from .test_driver_inprocess import LoopbackUpstream, _echo, server

pytestmark = pytest.mark.timeout(60)


def _driver(host: AppHost, up: LoopbackUpstream, egress: Egress | None = None) -> Driver:
    stack = Driver.make_stack(StackConfig(mtu=1500))
    return Driver(stack, host.link, up, DriverConfig(connect_timeout=1.0), egress=egress)


async def _echo_once(host: AppHost, size: int = 200_000) -> None:
    app = host.connect("192.0.2.1", 80)
    data = os.urandom(size)
    await host.send_all(app, data)
    host.shutdown(app)
    await host.wait(app, lambda a: len(a.received) >= len(data) and a.conn.peer_fin)
    assert app.received == data


async def test_each_driver_has_its_own_egress_bound_into_its_upstream() -> None:
    ha, hb = AppHost(), AppHost()
    ua, ub = LoopbackUpstream({}), LoopbackUpstream({})
    mine = Egress(Outbound(fwmark=7))
    a, b = _driver(ha, ua, mine), _driver(hb, ub)
    assert a.egress is mine and ua.egress is mine
    assert b.egress is ub.egress and b.egress is not a.egress
    assert b.egress.outbound == Outbound()


async def test_two_drivers_carry_traffic_and_detect_only_their_own_loops() -> None:
    async with server(_echo) as pa, server(_echo) as pb:
        ha, hb = AppHost(), AppHost()  # both apps are 10.0.0.2 and use the same ports
        ua, ub = LoopbackUpstream({80: pa}), LoopbackUpstream({80: pb})
        a, b = _driver(ha, ua), _driver(hb, ub)
        ta, tb = asyncio.create_task(a.run()), asyncio.create_task(b.run())
        await asyncio.sleep(0)
        try:
            await _echo_once(ha)
            await _echo_once(hb)
            # Driver A is dialling from 10.0.0.2:<the next app port>: a flow with that
            # source is A's own connection come back through A's TUN; through B's it is an
            # ordinary flow (before, one process-wide registry made it B's loop too).
            key = ("10.0.0.2", ha._next_port + 1)
            assert hb._next_port + 1 == key[1]
            a.egress._own[key] = 1
            try:
                looped = ha.connect("192.0.2.1", 80)
                await ha.wait(looped, lambda x: x.closed, timeout=5)
                await _echo_once(hb)
            finally:
                a.egress._own.pop(key, None)
            assert looped.close_reason == "refused"
            sa, sb = a.stats(), b.stats()
            assert (sa["flows_looped"], sb["flows_looped"]) == (1, 0)
            assert (sa["flows_opened"], sb["flows_opened"]) == (1, 2)
            assert (len(ua.opened), len(ub.opened)) == (1, 2)
            # Stopping A leaves B running and carrying traffic.
            a.stop()
            await asyncio.wait_for(ta, 5)
            assert not tb.done()
            await _echo_once(hb)
            assert b.stats()["flows_opened"] == 3 and a.stats()["flows_opened"] == 1
        finally:
            a.stop()
            b.stop()
            await asyncio.wait_for(asyncio.gather(ta, tb, return_exceptions=True), 5)
