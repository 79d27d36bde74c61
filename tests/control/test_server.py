"""The control API server in one process: a Driver with in-process apps, the server on a
unix socket and on loopback TCP; bad requests, size limits, the token, the endpoints."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from driver.test_driver_inprocess import LoopbackUpstream, _echo, running, server

from tun2proxy.control import server as server_mod
from tun2proxy.control.client import ControlClient, ControlClientError
from tun2proxy.control.server import ControlError, ControlServer
from tun2proxy.driver import Driver

pytestmark = pytest.mark.timeout(60)

TOKEN = "t0ken-abc"


async def _raw(address: str | tuple[str, int], data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data``, read one response: status, headers, body."""
    if isinstance(address, str):
        r, w = await asyncio.open_unix_connection(address)
    else:
        r, w = await asyncio.open_connection(*address)
    try:
        w.write(data)
        await w.drain()
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for ln in lines[1:]:
            if ln:
                k, _, v = ln.partition(":")
                headers[k.lower()] = v.strip()
        body = await r.readexactly(int(headers["content-length"]))
        return status, headers, body
    finally:
        w.close()


def _get(path: str, *extra: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: x", *extra]) + "\r\n\r\n").encode()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[object, Driver, ControlServer, ControlServer]]:
    async with server(_echo) as port, running(LoopbackUpstream({80: port})) as (host, driver):
        unix = ControlServer(driver, str(tmp_path / "ctl.sock"))
        tcp = ControlServer(driver, ("127.0.0.1", 0), TOKEN)
        await unix.start()
        await tcp.start()
        try:
            yield host, driver, unix, tcp
        finally:
            await unix.close()
            await tcp.close()


async def test_unix_socket_is_private_and_removed(env: tuple) -> None:  # type: ignore[type-arg]
    _host, _driver, unix, _tcp = env
    path = unix.address
    assert isinstance(path, str)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    await unix.close()
    assert not os.path.exists(path)


async def test_flows_get_and_delete(env: tuple) -> None:  # type: ignore[type-arg]
    host, _driver, unix, _tcp = env
    app = host.connect("192.0.2.1", 80)
    await host.send_all(app, b"x" * 5000)
    await host.wait(app, lambda a: len(a.received) >= 5000)
    client = ControlClient(unix.address)
    flows = await asyncio.to_thread(client.flows)
    assert len(flows) == 1
    f = flows[0]
    assert f["dst"] == ["192.0.2.1", 80] and f["bytes_up"] == 5000 and f["protocol"] == "tcp"
    assert f["worker"] == 0
    one = await asyncio.to_thread(client.request, "GET", f"/flows/{f['id']}")
    assert one["flow"]["id"] == f["id"]
    assert await asyncio.to_thread(client.flows, dst="192.0.2.9") == []
    assert await asyncio.to_thread(client.close_flow, f["id"]) == [f["id"]]
    await host.wait(app, lambda a: a.closed, timeout=5)
    assert app.close_reason == "reset"
    with pytest.raises(ControlClientError, match="404"):
        await asyncio.to_thread(client.close_flow, f["id"])
    client.close()


async def test_long_flow_lists_are_built_in_chunks(
    env: tuple, monkeypatch: pytest.MonkeyPatch  # type: ignore[type-arg]
) -> None:
    host, _driver, unix, _tcp = env
    monkeypatch.setattr(server_mod, "CHUNK", 1)  # every flow its own chunk; JSON on a thread
    apps = [host.connect(f"192.0.2.{i}", 80) for i in (1, 2, 3)]
    for a in apps:
        await host.send_all(a, b"hi")
        await host.wait(a, lambda x: len(x.received) >= 2)
    status, _, body = await _raw(unix.address, _get("/flows"))
    assert status == 200
    assert sorted(f["dst"][0] for f in json.loads(body)["flows"]) == [
        "192.0.2.1", "192.0.2.2", "192.0.2.3"]
    status, _, body = await _raw(unix.address, _get("/flows?dst=192.0.2.2"))
    assert [f["dst"][0] for f in json.loads(body)["flows"]] == ["192.0.2.2"]


async def test_delete_by_filter_and_empty_filter(env: tuple) -> None:  # type: ignore[type-arg]
    host, _driver, unix, _tcp = env
    a1, a2 = host.connect("192.0.2.1", 80), host.connect("192.0.2.2", 80)
    for a in (a1, a2):
        await host.send_all(a, b"hi")
        await host.wait(a, lambda x: len(x.received) >= 2)
    status, _, body = await _raw(unix.address, b"DELETE /flows HTTP/1.1\r\n\r\n")
    assert status == 400 and b"at least one" in body
    status, _, body = await _raw(unix.address, b"DELETE /flows?dst=192.0.2.2%3A80 HTTP/1.1\r\n\r\n")
    assert status == 200 and len(json.loads(body)["closed"]) == 1
    await host.wait(a2, lambda a: a.closed, timeout=5)
    assert not a1.closed


async def test_stats_has_counters_and_rss(env: tuple) -> None:  # type: ignore[type-arg]
    _host, _driver, unix, _tcp = env
    st = await asyncio.to_thread(ControlClient(unix.address).stats)
    assert st["rss_bytes"] > 1 << 20
    assert "drops" in st["stats"] and "flows_opened" in st["stats"]
    assert st["workers"] == 1 and st["flows_live"] == 0


async def test_tcp_needs_the_token(env: tuple) -> None:  # type: ignore[type-arg]
    _host, _driver, _unix, tcp = env
    status, headers, _ = await _raw(tcp.address, _get("/stats"))
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    status, _, _ = await _raw(tcp.address, _get("/stats", "Authorization: Bearer wrong"))
    assert status == 401
    status, _, _ = await _raw(tcp.address, _get("/stats", f"Authorization: Basic {TOKEN}"))
    assert status == 401
    status, _, body = await _raw(tcp.address, _get("/stats", f"Authorization: Bearer {TOKEN}"))
    assert status == 200 and "stats" in json.loads(body)
    with pytest.raises(ControlClientError, match="401"):
        await asyncio.to_thread(ControlClient(tcp.address, "nope").stats)
    assert "stats" in await asyncio.to_thread(ControlClient(tcp.address, TOKEN).stats)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"garbage\r\n\r\n", 400),
        (b"GET /flows HTTP/2.0\r\n\r\n", 505),
        (b"GET flows HTTP/1.1\r\n\r\n", 400),
        (b"GET /flows HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET /flows HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n", 413),
        (b"GET /flows HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400),
        (b"POST /flows HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"POST /flows HTTP/1.1\r\n\r\n", 405),
        (b"GET /nothing HTTP/1.1\r\n\r\n", 404),
        (b"GET /flows/abc HTTP/1.1\r\n\r\n", 404),
        (b"GET /flows?colour=red HTTP/1.1\r\n\r\n", 400),
        (b"GET /flows HTTP/1.1\r\n" + b"X-A: b\r\n" * 100 + b"\r\n", 431),
        (b"GET /flows HTTP/1.1\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n", 431),
    ],
)
async def test_bad_requests(env: tuple, request_bytes: bytes, status: int) -> None:  # type: ignore[type-arg]
    _host, _driver, unix, _tcp = env
    got, headers, body = await _raw(unix.address, request_bytes)
    assert got == status, body
    assert "error" in json.loads(body)
    assert headers["connection"] == "close"
    # the server still answers afterwards
    got, _, _ = await _raw(unix.address, _get("/"))
    assert got == 200


async def test_a_silent_client_gets_408(env: tuple, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[type-arg]
    _host, _driver, unix, _tcp = env
    monkeypatch.setattr(server_mod, "HEAD_TIMEOUT", 0.2)
    got, _, _ = await _raw(unix.address, b"GET /flo")
    assert got == 408


async def test_keep_alive_serves_several_requests(env: tuple) -> None:  # type: ignore[type-arg]
    _host, _driver, unix, _tcp = env
    assert isinstance(unix.address, str)
    r, w = await asyncio.open_unix_connection(unix.address)
    try:
        for _ in range(3):
            w.write(_get("/stats"))
            await w.drain()
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200") and b"keep-alive" in head
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            await r.readexactly(length)
    finally:
        w.close()


async def test_too_many_clients_get_503(env: tuple) -> None:  # type: ignore[type-arg]
    _host, _driver, unix, _tcp = env
    assert isinstance(unix.address, str)
    held = [await asyncio.open_unix_connection(unix.address) for _ in range(unix.max_clients)]
    await asyncio.sleep(0.1)
    try:
        got, _, _ = await _raw(unix.address, _get("/"))
        assert got == 503
    finally:
        for _r, w in held:
            w.close()


async def test_start_refuses_what_it_must(tmp_path: Path) -> None:
    async with running(LoopbackUpstream({})) as (_host, driver):
        with pytest.raises(ControlError, match="token"):
            ControlServer(driver, ("127.0.0.1", 0))
        plain = tmp_path / "file"
        plain.write_text("x")
        with pytest.raises(ControlError, match="not a socket"):
            await ControlServer(driver, str(plain)).start()
        # a stale socket (nobody listening) is replaced
        stale = tmp_path / "stale.sock"
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(stale))
        s.close()
        srv = ControlServer(driver, str(stale))
        await srv.start()
        try:
            with pytest.raises(ControlError, match="another process"):
                await ControlServer(driver, str(stale)).start()
        finally:
            await srv.close()
        with pytest.raises(ControlError, match="cannot listen"):
            await ControlServer(driver, str(tmp_path / "no" / "dir.sock")).start()
