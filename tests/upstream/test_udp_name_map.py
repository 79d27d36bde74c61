"""The direct UDP channel's per-session maps (name -> address, reply address -> name) stay
bounded however many names and ports one session talks to (issue 15 item 12)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from tun2proxy.proxy.address import Address
from tun2proxy.upstream import udp
from tun2proxy.upstream.egress import Egress


class _Receiver:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, Address]] = []

    def datagram_received(self, payload: bytes, src: Address) -> None:
        self.got.append((payload, src))

    def channel_lost(self, exc: BaseException | None) -> None:
        pass


async def _resolve(host: str, port: int | None, family: int, type: int) -> list[Any]:
    """Every name.N.test is 127.0.0.1 (a sink: nothing listens on the ports used)."""
    return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("127.0.0.1", port or 0))]


async def test_reply_name_map_is_capped_and_keeps_recent_entries() -> None:
    rx = _Receiver()
    ch = await udp.open_direct_udp(
        socket.AF_INET, rx, refuse_local=False, egress=Egress(resolver=_resolve)
    )
    try:
        # One name, many ports: each (address, port) pair is a reply-map entry.
        ch.send(b"x", Address("many.test", 1))
        for _ in range(50):
            if ch._names:
                break

            await asyncio.sleep(0.01)
        assert "many.test" in ch._names
        n = udp._REVERSE_CAP * 3
        for port in range(2, n):
            ch.send(b"x", Address("many.test", 20000 + port))
        assert len(ch._reverse) == udp._REVERSE_CAP
        # The most recent ones are kept: a reply from the last port is shown with the name.
        ch.datagram_from_socket(b"r", ("127.0.0.1", 20000 + n - 1))
        assert rx.got[-1][1] == Address("many.test", 20000 + n - 1)
    finally:
        ch.close()


async def test_name_cache_is_capped() -> None:

    ch = await udp.open_direct_udp(
        socket.AF_INET, _Receiver(), refuse_local=False, egress=Egress(resolver=_resolve)
    )
    try:
        for i in range(udp._NAME_CACHE * 2):
            ch.send(b"x", Address(f"name{i}.test", 9))
            if i % 50 == 0:
                await asyncio.sleep(0.01)
        for _ in range(100):
            if not ch._resolving:
                break
            await asyncio.sleep(0.01)
        assert len(ch._names) <= udp._NAME_CACHE
        assert len(ch._reverse) <= udp._REVERSE_CAP
    finally:
        ch.close()
