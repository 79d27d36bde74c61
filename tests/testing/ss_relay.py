"""A reference Shadowsocks AEAD-2017 server in-process, built from the sans-I/O codec.

Real Shadowsocks servers (ss-server, sing-box) close both directions at the destination's
EOF and turn the destination's RST into a FIN, so some conformance checks cannot pass through
them whatever the client does. This relay keeps both directions apart — an EOF is passed on
as ``write_eof`` and the other direction goes on — and passes a reset on as a reset
(SO_LINGER 0), so the checks the real servers make impossible can run against
``ShadowsocksUpstream``'s own code. It is a test peer, beside the real servers, not instead of
them: loopback only, one task per direction, everything aborted on close.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from types import TracebackType

from tun2proxy.proxy.shadowsocks import (
    AeadStreamDecryptor,
    AeadStreamEncryptor,
    SaltFilter,
    ShadowsocksError,
    decode_address,
    password_to_key,
)

_READ = 65536


def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort with SO_LINGER 0: the peer gets RST, not FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class ReferenceSsServer:
    """``async with ReferenceSsServer(method, password) as port:`` an AEAD-2017 server on
    127.0.0.1 that half-closes and passes resets on; a refused destination resets the client."""

    def __init__(self, method: str, password: str) -> None:
        self.method = method
        self.key = password_to_key(method, password)
        self.salts = SaltFilter()
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.server is not None:
            self.server.close()
        for w in self.writers:
            w.transport.abort()
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=2.0)

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.append(cw)
        try:
            await self._relay(cr, cw)
        except (ShadowsocksError, ConnectionError, asyncio.IncompleteReadError):
            _reset(cw)
        finally:
            self.tasks.discard(task)
            cw.close()  # after a reset: already aborted; otherwise flush, then FIN

    async def _relay(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        dec = AeadStreamDecryptor(self.method, self.key, salt_filter=self.salts)
        enc = AeadStreamEncryptor(self.method, self.key, os.urandom, salt_filter=self.salts)
        first = b""
        while not first:  # the address header comes in the first chunk
            data = await cr.read(_READ)
            if not data:
                return
            first = dec.feed(data)
        dst, used = decode_address(first)
        try:
            dr, dw = await asyncio.open_connection(dst.host, dst.port)
        except OSError:
            _reset(cw)  # Shadowsocks has no reply: a refusal can only end the stream
            return
        self.writers.append(dw)
        if first[used:]:
            dw.write(first[used:])

        async def up() -> None:  # client -> destination, decrypted
            try:
                while data := await cr.read(_READ):
                    plain = dec.feed(data)
                    if plain:
                        dw.write(plain)
                        await dw.drain()
                dec.feed_eof()
                dw.write_eof()
            except (ConnectionError, ShadowsocksError):
                _reset(dw)
                _reset(cw)

        async def down() -> None:  # destination -> client, encrypted
            try:
                while data := await dr.read(_READ):
                    cw.write(enc.encrypt(data))
                    await cw.drain()
                cw.write_eof()
            except ConnectionError:
                _reset(cw)
                _reset(dw)

        try:
            await asyncio.gather(up(), down())
        finally:
            dw.transport.close()
