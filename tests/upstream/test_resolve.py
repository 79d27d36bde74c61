"""Name resolution for our own sockets (tun2proxy/upstream/resolve.py): literals without a
thread, names on a bounded pool of threads, never the event loop's getaddrinfo."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest

from tun2proxy.upstream.egress import Egress
from tun2proxy.upstream.resolve import SystemResolver, literal_answer

pytestmark = pytest.mark.timeout(30)


def test_literals_are_answered_in_getaddrinfo_shape() -> None:
    assert literal_answer("192.0.2.1", 80) == [
        (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("192.0.2.1", 80))
    ]
    assert literal_answer("2001:db8::1", None, 0, socket.SOCK_DGRAM) == [
        (socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_UDP, "", ("2001:db8::1", 0, 0, 0))
    ]
    assert literal_answer("192.0.2.1", 80, socket.AF_INET6) == []
    assert literal_answer("example.test", 80) is None


async def test_the_event_loops_getaddrinfo_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # uvloop's getaddrinfo runs on libuv's small shared pool; asyncio's on the loop's default
    # executor, whose threads are joined at exit. Neither is used for our own names.
    loop = asyncio.get_running_loop()

    async def refuse(*a: object, **k: object) -> list[Any]:
        raise AssertionError("loop.getaddrinfo called")

    monkeypatch.setattr(loop, "getaddrinfo", refuse)
    eg = Egress()
    infos = await eg.getaddrinfo("localhost", 80, socket.AF_INET, socket.SOCK_STREAM)
    assert infos and infos[0][4][0] == "127.0.0.1"
    assert await eg.getaddrinfo("10.1.2.3", 53, 0, socket.SOCK_DGRAM) == [
        (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP, "", ("10.1.2.3", 53))
    ]
    assert eg.system_resolver.counts["resolved"] == 1  # the literal took no thread


async def test_lookups_run_at_most_max_workers_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    lock = threading.Lock()
    running = [0, 0]  # now, most

    def slow(host: str, port: object, family: int = 0, type: int = 0) -> list[Any]:
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        release.wait(10)
        with lock:
            running[0] -= 1
        return [(socket.AF_INET, type, 0, "", ("192.0.2.7", port or 0))]

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    r = SystemResolver(max_workers=3, max_queued=100)
    tasks = [asyncio.create_task(r.getaddrinfo(f"n{i}.test", 80)) for i in range(20)]
    await asyncio.sleep(0.3)
    assert running[1] == 3
    assert r.queued == 17
    release.set()
    results = await asyncio.gather(*tasks)
    assert all(res[0][4] == ("192.0.2.7", 80) for res in results)
    assert running[1] == 3
    assert r.counts["resolved"] == 20


async def test_a_full_queue_refuses_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def slow(host: str, port: object, family: int = 0, type: int = 0) -> list[Any]:
        release.wait(10)
        return []

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    r = SystemResolver(max_workers=1, max_queued=2)
    tasks = [asyncio.create_task(r.getaddrinfo("n0.test", 80))]
    await asyncio.sleep(0.2)  # running
    tasks += [asyncio.create_task(r.getaddrinfo(f"n{i}.test", 80)) for i in (1, 2)]
    await asyncio.sleep(0.1)  # waiting
    try:
        assert r.queued == 2
        with pytest.raises(socket.gaierror, match="too many name lookups"):
            await r.getaddrinfo("one-more.test", 80)
        assert r.counts["refused"] == 1
    finally:
        release.set()
    await asyncio.gather(*tasks)


async def test_a_cancelled_lookup_is_dropped_and_errors_reach_the_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()

    def lookup(host: str, port: object, family: int = 0, type: int = 0) -> list[Any]:
        if host == "slow.test":
            release.wait(10)
            return []
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    r = SystemResolver(max_workers=2)
    t = asyncio.create_task(r.getaddrinfo("slow.test", 80))
    await asyncio.sleep(0.1)
    t.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await t
    with pytest.raises(socket.gaierror):
        await r.getaddrinfo("nope.test", 80)
    await asyncio.sleep(0.1)
    assert r.counts == {"resolved": 1, "failed": 1, "refused": 0}


def test_one_resolver_serves_two_event_loops() -> None:
    r = SystemResolver(max_workers=1)
    for _ in range(2):
        infos = asyncio.run(r.getaddrinfo("localhost", None, socket.AF_INET))
        assert infos[0][4][0] == "127.0.0.1"
