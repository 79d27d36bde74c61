"""Connections tun2proxy opens for itself (``FlowInfo.internal``) may reach this host's own
addresses through the direct upstream; an application's may not (issue 15 item 1).

The DNS forwarder (``--dns over-tcp`` to a resolver on loopback, e.g. 127.0.0.53) and the
udpgw client (``--udpgw-server`` on loopback with ``direct://``) are such connections."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest

from tun2proxy.driver import DriverConfig
from tun2proxy.errors import UpstreamError
from tun2proxy.proxy.address import Address
from tun2proxy.udpgw import ServerConfig, UdpgwServer
from tun2proxy.upstream.base import FlowInfo
from tun2proxy.upstream.direct import DirectUpstream
from tun2proxy.upstream.udpgw import UdpgwSettings, UdpgwUpstream

from .test_driver_inprocess import running

pytestmark = pytest.mark.timeout(30)


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[object, ...]) -> None:
        self.t.sendto(data, addr)


class _Receiver:
    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue()

    def datagram_received(self, payload: bytes, src: Address) -> None:
        self.got.put_nowait((payload, src))

    def channel_lost(self, exc: BaseException | None) -> None:
        pass


async def _tcp_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.read(100))
    await writer.drain()
    writer.close()


async def test_direct_refuses_loopback_to_apps_and_allows_it_to_internal_flows() -> None:
    srv = await asyncio.start_server(_tcp_echo, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    up = DirectUpstream()
    loop = asyncio.get_running_loop()
    try:
        app = FlowInfo(1, ("10.0.0.2", 5000), ("127.0.0.1", port))
        with pytest.raises(UpstreamError):
            await up.open_tcp(Address("127.0.0.1", port), asyncio.Protocol(), app)
        own = FlowInfo(1, ("10.0.0.2", 5000), ("127.0.0.1", port), internal=True)
        done: asyncio.Future[bytes] = loop.create_future()

        class P(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                transport.write(b"ping")  # type: ignore[attr-defined]

            def data_received(self, data: bytes) -> None:
                if not done.done():
                    done.set_result(data)

        t = await up.open_tcp(Address("127.0.0.1", port), P(), own)
        assert await asyncio.wait_for(done, 5) == b"ping"
        t.close()
    finally:
        srv.close()


def test_a_flow_is_not_internal_unless_our_code_says_so() -> None:
    assert FlowInfo(1, ("10.0.0.2", 1), ("127.0.0.1", 2)).internal is False


@pytest.fixture
async def gw() -> AsyncIterator[UdpgwServer]:
    s = UdpgwServer(ServerConfig())
    await s.start([("127.0.0.1", 0)])
    yield s
    await s.close()


async def test_udpgw_server_on_loopback_through_the_direct_upstream(gw: UdpgwServer) -> None:
    """``direct://`` with ``--udpgw-server 127.0.0.1:PORT --udpgw-mode always``: the
    udpgw connection is ours, so loopback is allowed for it."""
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    # the datagram goes to the echo by its loopback address *at the udpgw server* (its own
    # policy); what matters here is that the TCP connection to the server was allowed
    dst = Address("127.0.0.1", echo.get_extra_info("sockname")[1])
    up = UdpgwUpstream(
        DirectUpstream(), UdpgwSettings(Address("127.0.0.1", gw.ports[0]), mode="always")
    )
    try:
        rx = _Receiver()
        ch = await up.open_udp(FlowInfo(1, ("10.0.0.2", 5000), (dst.host, dst.port), "udp"), rx)
        ch.send(b"via udpgw", dst)
        assert await asyncio.wait_for(rx.got.get(), 5) == (b"via udpgw", dst)
        st = up.stats()["udpgw"]
        assert st["connect_failures"] == 0 and st["connections_up"] == 1  # type: ignore[index]
        ch.close()
    finally:
        await up.close()
        echo.close()


async def _dns_over_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A resolver that answers every query with its own id and a marker (no parsing)."""
    (n,) = struct.unpack("!H", await reader.readexactly(2))
    query = await reader.readexactly(n)
    answer = query[:2] + b"\x81\x80" + query[4:] + b"LOOPBACK-RESOLVER"
    writer.write(struct.pack("!H", len(answer)) + answer)
    await writer.drain()
    writer.close()


async def test_dns_over_tcp_to_a_loopback_resolver_through_the_direct_upstream() -> None:
    """``--dns over-tcp --dns-addr 127.0.0.1:PORT`` (systemd-resolved's 127.0.0.53 is the
    common case) with ``direct://``: the forwarder's connection is ours."""
    from tun2proxy.testing import udp_packet

    srv = await asyncio.start_server(_dns_over_tcp, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    query = (  # id 0x1234, RD, one question: name.example A IN
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        b"\x04name\x07example\x00\x00\x01\x00\x01"
    )
    cfg = DriverConfig(connect_timeout=2.0, dns="over-tcp", dns_addr=("127.0.0.1", port))
    try:
        async with running(DirectUpstream(), cfg) as (host, driver):
            host.link.feed([udp_packet("10.0.0.2", "192.0.2.53", 5353, 53, query)])
            for _ in range(300):
                await asyncio.sleep(0.01)
                if driver.dns.forwarded or driver.dns.failed:
                    break
            assert (driver.dns.forwarded, driver.dns.failed) == (1, 0)
            assert any(b"LOOPBACK-RESOLVER" in bytes(p) for p in host.other_packets)
    finally:
        srv.close()
