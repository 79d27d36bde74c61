"""The whole program without root: ``python -m tun2proxy --tun-fd N`` over a SEQPACKET
socketpair (one packet per message, like a TUN fd), through a SOCKS5 server written here
independently of tun2proxy's own codec, to an echo server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from tun2proxy.testing.apps import AppHost

pytestmark = pytest.mark.timeout(60)


async def _socks5_server(echo_port: int, seen: list[tuple[str, int]]) -> asyncio.Server:
    """A minimal RFC 1928 server: no auth, CONNECT only; every target goes to the echo port."""

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ver, n = await r.readexactly(2)
        methods = await r.readexactly(n)
        assert ver == 5 and 0 in methods
        w.write(b"\x05\x00")
        ver, _cmd, _rsv, atyp = await r.readexactly(4)
        if atyp == 1:
            host = socket.inet_ntop(socket.AF_INET, await r.readexactly(4))
        elif atyp == 4:
            host = socket.inet_ntop(socket.AF_INET6, await r.readexactly(16))
        else:
            host = (await r.readexactly((await r.readexactly(1))[0])).decode()
        (port,) = struct.unpack("!H", await r.readexactly(2))
        seen.append((host, port))
        if port == 9:  # "discard": refuse, as a proxy whose target refused
            w.write(b"\x05\x05\x00\x01" + bytes(6))
            await w.drain()
            w.close()
            return
        ur, uw = await asyncio.open_connection("127.0.0.1", echo_port)
        w.write(b"\x05\x00\x00\x01\x7f\x00\x00\x01" + struct.pack("!H", echo_port))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()

        await asyncio.gather(pipe(r, uw), pipe(ur, w))
        w.close()
        uw.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def _echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while data := await r.read(65536):
        w.write(data)
        await w.drain()
    w.close()


@contextlib.asynccontextmanager
async def tun2proxy_on_socketpair(
    proxy_port: int,
) -> AsyncIterator[tuple[AppHost, subprocess.Popen[bytes]]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tun2proxy", "--tun-fd", str(theirs.fileno()), "--mtu", "1500",
         "--proxy", f"socks5://127.0.0.1:{proxy_port}", "-v", "debug"],
        pass_fds=[theirs.fileno()], stderr=subprocess.PIPE,
    )
    theirs.close()
    ours.setblocking(False)
    loop = asyncio.get_running_loop()
    def transmit(pkts: list[bytes]) -> None:
        for p in pkts:
            ours.send(p)

    host = AppHost(transmit=transmit)

    def readable() -> None:
        batch = []
        with contextlib.suppress(BlockingIOError):
            while True:
                batch.append(ours.recv(65536))
        host.receive(batch)

    loop.add_reader(ours.fileno(), readable)
    try:
        yield host, proc
    finally:
        loop.remove_reader(ours.fileno())
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        ours.close()


async def test_echo_through_the_real_program_and_a_socks5_server() -> None:
    seen: list[tuple[str, int]] = []
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    socks = await _socks5_server(echo.sockets[0].getsockname()[1], seen)
    async with tun2proxy_on_socketpair(socks.sockets[0].getsockname()[1]) as (host, proc):
        for dst in ("192.0.2.7", "2001:db8::7"):
            app = host.connect(dst, 443)
            data = os.urandom(200_000)
            await host.send_all(app, data)
            host.shutdown(app)
            await host.wait(app, lambda a: a.conn.peer_fin, timeout=20)
            assert bytes(app.received) == data
        # A refusal from the proxy is a reset at the app, and the program lives on.
        app = host.connect("192.0.2.7", 9)
        await host.wait(app, lambda a: a.closed, timeout=10)
        assert app.close_reason == "refused"
        assert proc.poll() is None
    assert proc.returncode == 0
    assert ("192.0.2.7", 443) in seen and ("2001:db8::7", 443) in seen
    echo.close()
    socks.close()
