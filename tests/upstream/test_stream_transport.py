"""SocketTransport keeps the asyncio transport contract the relays rely on, on asyncio's loop
and on uvloop: connection_made first, half-close both ways, write-buffer water marks,
pause/resume reading, close after the buffer, abort at once, connection_lost exactly once and
never from inside the call that caused it. (The upstream conformance suite runs it end to end
through real proxies: ``tests/testing/test_conformance*.py``.)"""

from __future__ import annotations

import asyncio
import socket

import pytest

from tun2proxy.upstream.stream import SocketTransport

from .loops import LOOPS, run_on


class Recorder(asyncio.Protocol):
    """Records every callback in order."""

    def __init__(self, keep_open: bool = True) -> None:
        self.calls: list[str] = []
        self.data = bytearray()
        self.keep_open = keep_open
        self.transport: asyncio.BaseTransport | None = None
        loop = asyncio.get_running_loop()
        self.lost: asyncio.Future[Exception | None] = loop.create_future()
        self.eof: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.calls.append("made")
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.calls.append("eof")
        self.eof.set_result(None)
        return self.keep_open

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append("lost")
        self.lost.set_result(exc)


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


async def _read_all(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    out = bytearray()
    while len(out) < n:
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            break
        out += chunk
    return bytes(out)


@pytest.mark.parametrize("kind", LOOPS)
def test_half_close_both_ways_and_one_connection_lost(kind: str) -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        a, b = _pair()
        p = Recorder(keep_open=True)
        t = SocketTransport(loop, a, p)
        assert p.calls == ["made"] and t.is_reading() and t.can_write_eof()
        b.send(b"from peer")
        b.shutdown(socket.SHUT_WR)
        await p.eof
        assert bytes(p.data) == b"from peer" and not t.is_reading()
        t.resume_reading()  # after the peer's EOF there is nothing to resume
        await asyncio.sleep(0.02)
        assert p.calls.count("eof") == 1 and not t.is_reading()
        t.write(b"still writing after their EOF")  # half-close: our side stays open
        t.write_eof()
        with pytest.raises(RuntimeError):
            t.write(b"after write_eof")
        assert await _read_all(b, 1 << 20) == b"still writing after their EOF"
        t.close()
        assert "lost" not in p.calls  # never from inside close()
        assert await p.lost is None
        t.close()
        t.abort()
        await asyncio.sleep(0.01)
        assert p.calls.count("lost") == 1
        assert t.get_extra_info("socket") is None
        b.close()

    run_on(kind, go)


@pytest.mark.parametrize("kind", LOOPS)
def test_eof_without_keep_open_closes(kind: str) -> None:
    async def go() -> None:
        a, b = _pair()
        p = Recorder(keep_open=False)
        t = SocketTransport(asyncio.get_running_loop(), a, p)
        b.close()
        assert await p.lost is None
        assert p.calls == ["made", "eof", "lost"] and t.is_closing()

    run_on(kind, go)


@pytest.mark.parametrize("kind", LOOPS)
def test_water_marks_pause_and_resume_the_protocol_and_close_flushes(kind: str) -> None:
    async def go() -> None:
        a, b = _pair()
        p = Recorder()
        t = SocketTransport(asyncio.get_running_loop(), a, p)
        t.set_write_buffer_limits(high=64 * 1024)
        assert t.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        payload = bytes(range(256)) * 8192  # 2 MiB: more than the socket takes at once
        t.write(payload)
        assert t.get_write_buffer_size() > 64 * 1024
        assert p.calls == ["made", "pause"]
        t.close()  # after the buffer: nothing is lost
        got = await _read_all(b, len(payload))
        assert got == payload
        assert await p.lost is None
        assert p.calls == ["made", "pause", "resume", "lost"]
        b.close()

    run_on(kind, go)


@pytest.mark.parametrize("kind", LOOPS)
def test_pause_reading_holds_the_bytes_until_resumed(kind: str) -> None:
    async def go() -> None:
        a, b = _pair()
        p = Recorder()
        t = SocketTransport(asyncio.get_running_loop(), a, p)
        t.pause_reading()
        assert not t.is_reading()
        b.send(b"held")
        await asyncio.sleep(0.05)
        assert p.data == b""
        t.resume_reading()
        for _ in range(100):  # bounded: until the loop delivers it
            if p.data:
                break
            await asyncio.sleep(0.01)
        assert p.data == b"held"
        t.abort()
        assert await p.lost is None
        b.close()

    run_on(kind, go)


@pytest.mark.parametrize("kind", LOOPS)
def test_abort_drops_the_buffer_and_a_reset_is_an_error(kind: str) -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        a, b = _pair()
        p = Recorder()
        t = SocketTransport(loop, a, p)
        t.write(bytes(4 << 20))  # most of it buffered
        t.abort()
        assert t.get_write_buffer_size() == 0 and t.is_closing()
        assert await p.lost is None
        b.close()
        # A TCP peer's reset arrives as connection_lost(OSError).
        srv = socket.create_server(("127.0.0.1", 0))
        c = socket.create_connection(srv.getsockname())
        c.setblocking(False)
        peer, _ = srv.accept()
        p2 = Recorder()
        SocketTransport(loop, c, p2)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.close()  # RST
        exc = await p2.lost
        assert isinstance(exc, ConnectionResetError)
        srv.close()

    run_on(kind, go)
