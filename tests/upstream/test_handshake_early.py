"""The proxy handshake attached while the connect is in progress (``connect_tcp_early``), on
asyncio's loop and on uvloop: a refused proxy is still ``refused``, the handshake's first write
waits for the connect, the egress registry holds the socket only until the proxy answers."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tun2proxy.errors import UpstreamError
from tun2proxy.proxy.address import Address
from tun2proxy.proxy.socks5 import Socks5Handshake
from tun2proxy.upstream.dial import connect_tcp_early
from tun2proxy.upstream.egress import Egress
from tun2proxy.upstream.handshake import open_via_handshake

from .loops import LOOPS, run_on


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


class _Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.eof = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        if not self.eof.done():
            self.eof.set_result(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.eof.done():
            self.eof.set_result(None)


@pytest.mark.parametrize("kind", LOOPS)
def test_a_refused_proxy_is_refused_and_nothing_stays_registered(kind: str) -> None:
    async def go() -> None:
        eg = Egress()
        hs = Socks5Handshake(Address("192.0.2.1", 80))
        with pytest.raises(UpstreamError) as ei:
            await open_via_handshake("127.0.0.1", _closed_port(), hs, _Sink(), "SOCKS5 proxy",
                                     egress=eg)
        assert ei.value.reason == "refused"
        assert "connection refused" in str(ei.value)
        assert eg.own_count == 0

    run_on(kind, go)


@pytest.mark.parametrize("kind", LOOPS)
def test_the_transport_exists_before_the_connect_completes_and_a_failure_is_an_oserror(
    kind: str,
) -> None:
    async def go() -> None:
        eg = Egress()
        lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

        class P(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                transport.write(b"queued until connected")  # type: ignore[attr-defined]

            def connection_lost(self, exc: Exception | None) -> None:
                lost.set_result(exc)

        t, _p, settle = await connect_tcp_early("127.0.0.1", _closed_port(), P, egress=eg)
        assert eg.own_count == 1  # still dialling: a flow from this endpoint would be a loop
        exc = await lost
        assert isinstance(exc, ConnectionRefusedError)
        settle()
        settle()  # once, however often
        assert eg.own_count == 0
        t.abort()

    run_on(kind, go)


@pytest.mark.parametrize("kind", LOOPS)
def test_the_whole_socks5_exchange_and_the_registry_ends_when_the_proxy_answers(
    kind: str,
) -> None:
    async def go() -> None:
        eg = Egress()
        seen: list[bytes] = []
        owned_while_waiting: list[bool] = []
        answer = asyncio.Event()

        async def proxy(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            host, port = w.get_extra_info("peername")[:2]
            owned_while_waiting.append(eg.is_own(host, port))
            await answer.wait()
            seen.append(await r.readexactly(3))  # greeting: version 5, one method: none
            w.write(b"\x05\x00")
            seen.append(await r.readexactly(10))  # CONNECT 192.0.2.1:80
            w.write(b"\x05\x00\x00\x01\xc0\x00\x02\x01\x00\x50hello")
            await w.drain()
            w.close()

        srv = await asyncio.start_server(proxy, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        sink = _Sink()
        hs = Socks5Handshake(Address("192.0.2.1", 80))
        task = asyncio.ensure_future(
            open_via_handshake("127.0.0.1", port, hs, sink, "SOCKS5 proxy", egress=eg)
        )
        for _ in range(200):  # bounded: until the proxy has the connection
            if owned_while_waiting:
                break
            await asyncio.sleep(0.01)
        assert owned_while_waiting == [True]
        assert eg.own_count == 1
        answer.set()
        t = await task
        assert eg.own_count == 0
        await sink.eof
        assert sink.data == b"hello"  # the bytes after the reply reach the relay's protocol
        assert seen == [b"\x05\x01\x00", b"\x05\x01\x00\x01\xc0\x00\x02\x01\x00\x50"]
        t.close()
        srv.close()
        await srv.wait_closed()

    run_on(kind, go)


@pytest.mark.parametrize("kind", LOOPS)
def test_a_cancelled_dial_aborts_and_forgets(kind: str) -> None:
    async def go() -> None:
        eg = Egress()
        accepted: list[asyncio.StreamWriter] = []

        async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            accepted.append(w)  # never answers
            await r.read()

        srv = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        hs = Socks5Handshake(Address("192.0.2.1", 80))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await open_via_handshake("127.0.0.1", port, hs, _Sink(), "SOCKS5 proxy",
                                         egress=eg)
        assert eg.own_count == 0
        assert len(accepted) == 1
        for w in accepted:
            w.close()
        srv.close()
        await srv.wait_closed()

    run_on(kind, go)
