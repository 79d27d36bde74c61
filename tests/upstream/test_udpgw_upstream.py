"""The udpgw client upstream against the built-in server on loopback (direct TCP as the
main upstream)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tun2proxy.errors import UpstreamError
from tun2proxy.proxy.address import Address
from tun2proxy.testing.conformance import check_upstream
from tun2proxy.udpgw import ServerConfig, UdpgwServer
from tun2proxy.upstream.base import DatagramReceiver, FlowInfo, UdpChannel
from tun2proxy.upstream.direct import DirectUpstream
from tun2proxy.upstream.udpgw import UdpgwSettings, UdpgwUpstream, parse_server

FLOW = FlowInfo(1, ("10.0.0.1", 5000), ("127.0.0.1", 1), protocol="udp")


def _n(counters: dict[str, object], key: str) -> int:
    """One integer counter out of a stats() dict."""
    value = counters[key]
    assert isinstance(value, int)
    return value


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[object, ...]) -> None:
        self.t.sendto(data, addr)


class _Receiver:
    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue()
        self.lost = 0

    def datagram_received(self, payload: bytes, src: Address) -> None:
        self.got.put_nowait((payload, src))

    def channel_lost(self, exc: BaseException | None) -> None:
        self.lost += 1

    async def next(self) -> tuple[bytes, Address]:
        return await asyncio.wait_for(self.got.get(), 5)


class _NoUdp(DirectUpstream):
    allow_local = True  # the udpgw server under test listens on loopback
    async def open_udp(self, flow: FlowInfo, receiver: DatagramReceiver) -> UdpChannel:
        raise UpstreamError("no UDP here", "unsupported")


async def _echo() -> tuple[asyncio.DatagramTransport, Address]:
    t, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        _Echo, local_addr=("127.0.0.1", 0)
    )
    return t, Address("127.0.0.1", t.get_extra_info("sockname")[1])


@pytest.fixture
async def gw() -> AsyncIterator[UdpgwServer]:
    s = UdpgwServer(ServerConfig(max_connections_per_client=64))
    await s.start([("127.0.0.1", 0)])
    yield s
    await s.close()


def _up(gw: UdpgwServer, inner: DirectUpstream | None = None, **kw: object) -> UdpgwUpstream:
    settings = UdpgwSettings(Address("127.0.0.1", gw.ports[0]), **kw)  # type: ignore[arg-type]
    return UdpgwUpstream(inner or _NoUdp(), settings)


async def test_one_session_many_destinations(gw: UdpgwServer) -> None:
    up = _up(gw, mode="always")
    echoes = [await _echo() for _ in range(3)]
    rx = _Receiver()
    ch = await up.open_udp(FLOW, rx)
    for i, (_, dst) in enumerate(echoes):
        ch.send(b"to-%d" % i, dst)
    got = {await rx.next() for _ in echoes}
    assert got == {(b"to-%d" % i, dst) for i, (_, dst) in enumerate(echoes)}
    st = up.stats()["udpgw"]
    assert st["conids"] == 3 and st["sessions"] == 1  # type: ignore[index]
    ch.close()
    assert up.stats()["udpgw"]["conids"] == 0  # type: ignore[index]
    await up.close()
    for t, _ in echoes:
        t.close()


async def test_auto_uses_the_upstreams_own_udp_first(gw: UdpgwServer) -> None:
    up = _up(gw, DirectUpstream(allow_local=True))
    ch = await up.open_udp(FLOW, _Receiver())
    assert up.native_sessions == 1 and up.stats()["udpgw"]["sessions_opened"] == 0  # type: ignore[index]
    ch.close()
    up2 = _up(gw)  # _NoUdp: falls back to udpgw
    ch2 = await up2.open_udp(FLOW, _Receiver())
    assert up2.native_sessions == 0 and up2.stats()["udpgw"]["sessions_opened"] == 1  # type: ignore[index]
    ch2.close()
    await up.close()
    await up2.close()


async def test_sessions_spread_over_the_connections(gw: UdpgwServer) -> None:
    up = _up(gw, connections=2)
    chans = [await up.open_udp(FLOW, _Receiver()) for _ in range(5)]
    st = up.stats()["udpgw"]
    assert st["connections_up"] == 2 and st["connects"] == 2  # type: ignore[index]
    assert sorted(len(s.channels) for s in up.pool.slots) == [2, 3]
    for c in chans:
        c.close()
    await up.close()


async def test_conid_cap_evicts_least_recently_used(gw: UdpgwServer) -> None:
    up = _up(gw, connections=1, max_conids=2)
    echoes = [await _echo() for _ in range(3)]
    rx = _Receiver()
    ch = await up.open_udp(FLOW, rx)
    for _, dst in echoes:
        ch.send(b"x", dst)
        await rx.next()
    st = up.stats()["udpgw"]
    assert st["conids"] == 2 and st["conids_evicted"] == 1  # type: ignore[index]
    assert _n(gw.stats(), "peak_conids_per_client") == 2
    # the evicted destination works again with a fresh conid
    ch.send(b"again", echoes[0][1])
    assert await rx.next() == (b"again", echoes[0][1])
    await up.close()
    for t, _ in echoes:
        t.close()


async def test_reconnect_after_the_connection_drops(gw: UdpgwServer) -> None:
    up = _up(gw, connections=1)
    t, dst = await _echo()
    rx = _Receiver()
    ch = await up.open_udp(FLOW, rx)
    ch.send(b"before", dst)
    assert await rx.next() == (b"before", dst)
    for c in list(gw.clients):
        c.writer.transport.abort()  # the server side kills the TCP connection
    for _ in range(100):
        if not up.pool.slots[0].up:
            break
        await asyncio.sleep(0.02)
    ch.send(b"in-the-gap", dst)  # may be dropped: counted
    ok = False
    for i in range(100):  # bounded: the connection comes back within the backoff
        await asyncio.sleep(0.05)
        ch.send(b"after-%d" % i, dst)
        try:
            payload, _ = await asyncio.wait_for(rx.got.get(), 0.5)
        except TimeoutError:
            continue
        if payload.startswith(b"after-"):
            ok = True
            break
    assert ok
    st = up.stats()["udpgw"]
    assert st["connections_lost"] == 1 and st["connects"] == 2  # type: ignore[index]
    assert rx.lost == 0  # the session survived
    await up.close()
    t.close()


async def test_keepalives_are_sent_when_idle(gw: UdpgwServer) -> None:
    up = _up(gw, connections=1, keepalive=0.1)
    ch = await up.open_udp(FLOW, _Receiver())
    for _ in range(100):
        if _n(gw.stats(), "keepalives") >= 2:
            break
        await asyncio.sleep(0.05)
    assert _n(gw.stats(), "keepalives") >= 2
    ch.close()
    await up.close()


async def test_names_cannot_be_sent_and_are_counted(gw: UdpgwServer) -> None:
    up = _up(gw)
    ch = await up.open_udp(FLOW, _Receiver())
    ch.send(b"q", Address("example.test", 53))
    assert up.stats()["udpgw"]["drops"] == {"udpgw-name-destination": 1}  # type: ignore[index]
    await up.close()


async def test_transparent_dns_flag() -> None:
    t, resolver = await _echo()
    srv = UdpgwServer(ServerConfig(dns=(resolver.host, resolver.port)))
    await srv.start([("127.0.0.1", 0)])
    up = _up(srv, transparent_dns=True)
    rx = _Receiver()
    ch = await up.open_udp(FLOW, rx)
    app_dst = Address("192.0.2.53", 53)  # TEST-NET: only the server's resolver answers
    ch.send(b"query", app_dst)
    assert await rx.next() == (b"query", app_dst)
    await up.close()
    await srv.close()
    t.close()


async def test_unreachable_server_is_an_upstream_error() -> None:
    probe = UdpgwServer()
    await probe.start([("127.0.0.1", 0)])
    port = probe.ports[0]
    await probe.close()  # nothing listens there now
    up = UdpgwUpstream(_NoUdp(), UdpgwSettings(Address("127.0.0.1", port)))
    with pytest.raises(UpstreamError):
        await up.open_udp(FLOW, _Receiver())
    assert up.stats()["udpgw"]["connect_failures"] == 1  # type: ignore[index]
    await up.close()


def test_settings_and_parse_server() -> None:
    assert parse_server("[fd00::1]:7300") == Address("fd00::1", 7300)
    assert parse_server("gw.example:7300") == Address("gw.example", 7300)
    for bad in ("gw", "gw:0", ":7300"):
        with pytest.raises(ValueError):
            parse_server(bad)
    with pytest.raises(ValueError):
        UdpgwSettings(Address("1.2.3.4", 1), mode="sometimes")
    with pytest.raises(ValueError):
        UdpgwSettings(Address("1.2.3.4", 1), connections=0)


async def test_conformance_checks_pass(gw: UdpgwServer) -> None:
    """The public upstream conformance checks (TCP through the inner upstream, UDP by udpgw)."""
    report = await check_upstream(
        lambda: _up(gw, DirectUpstream(allow_local=True), mode="always"), udp=True, size=1 << 20
    )
    report.raise_for_failures()
    assert any(r.name == "udp" for r in report.results), report


async def test_sessions_opened_together_spread_too(gw: UdpgwServer) -> None:
    up = _up(gw, connections=3)
    chans = await asyncio.gather(*(up.open_udp(FLOW, _Receiver()) for _ in range(6)))
    assert sorted(len(s.channels) for s in up.pool.slots) == [2, 2, 2]
    for c in chans:
        c.close()
    await up.close()


async def test_sessions_move_to_a_connection_that_is_up(gw: UdpgwServer) -> None:
    up = _up(gw, connections=2)
    t, dst = await _echo()
    rx = [_Receiver(), _Receiver()]
    chans = [await up.open_udp(FLOW, r) for r in rx]
    for c, r in zip(chans, rx, strict=True):
        c.send(b"hello", dst)
        assert await r.next() == (b"hello", dst)
    victim = up.pool.slots[0]
    assert victim.transport is not None
    local = victim.transport.get_extra_info("sockname")
    for client in list(gw.clients):  # kill the server's side of slot 0's connection only
        if client.writer.get_extra_info("peername")[:2] == local[:2]:
            client.writer.transport.abort()
    for _ in range(100):
        if up.pool.counters["connections_lost"]:
            break
        await asyncio.sleep(0.02)
    assert up.pool.counters["connections_lost"] == 1
    assert not victim.channels  # both sessions are on the connection that stayed up
    for c, r in zip(chans, rx, strict=True):
        c.send(b"moved", dst)
        assert await r.next() == (b"moved", dst)
    st = up.stats()["udpgw"]
    assert st["sessions_moved"] == 1 and st["connects"] == 2, st  # type: ignore[index]  # no redial
    await up.close()
    t.close()


async def test_a_server_at_its_client_limit_is_not_redialled_per_session() -> None:
    """badvpn-udpgw serves 3 clients by default and closes the rest at once: those slots
    wait out a backoff instead of being dialled for every new session."""
    srv = UdpgwServer(ServerConfig(max_clients=2))
    await srv.start([("127.0.0.1", 0)])
    t, dst = await _echo()
    up = _up(srv, connections=4)
    rx = [_Receiver() for _ in range(12)]
    chans = []
    for r in rx:
        chans.append(await up.open_udp(FLOW, r))
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    for c, r in zip(chans, rx, strict=True):
        c.send(b"hi", dst)
        assert await r.next() == (b"hi", dst)  # every session works, on the two served
    assert _n(srv.stats(), "clients_refused") <= 4  # two slots refused about once each
    await up.close()
    await srv.close()
    t.close()
