"""Helper run inside a namespace by benchmarks/e2e.py (not a benchmark by itself).

    python _netclient.py connrate HOST PORT SECONDS   -> prints connections per second
    python _netclient.py hold HOST PORT N             -> opens N connections, prints "ready",
                                                         holds them until stdin closes,
                                                         then checks each still echoes
    python _netclient.py echo-server HOST PORT        -> asyncio echo server
"""

from __future__ import annotations

import asyncio
import resource
import socket
import sys
import time


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def connrate(host: str, port: int, seconds: float) -> None:
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        s = socket.socket(_family(host), socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect((host, port))
        s.sendall(b"x")
        if s.recv(1) != b"x":
            raise SystemExit("bad echo")
        s.close()
        n += 1
    print(f"{n / (time.perf_counter() - t0):.1f}", flush=True)


def hold(host: str, port: int, count: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, count + 100), max(hard, count + 100)))
    socks = []
    for _ in range(count):
        s = socket.socket(_family(host), socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect((host, port))
        s.sendall(b"h")
        if s.recv(1) != b"h":
            raise SystemExit("bad echo")
        socks.append(s)
    print("ready", flush=True)
    sys.stdin.read()
    ok = 0
    for s in socks:
        try:
            s.sendall(b"k")
            ok += s.recv(1) == b"k"
        except OSError:
            pass
        s.close()
    print(f"alive {ok}", flush=True)


async def echo_server(host: str, port: int) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except ConnectionError:
            pass
        w.close()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 20000), max(hard, 20000)))
    srv = await asyncio.start_server(handle, host, port, backlog=4096)
    async with srv:
        await srv.serve_forever()


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "connrate":
        connrate(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    elif cmd == "hold":
        hold(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "echo-server":
        asyncio.run(echo_server(sys.argv[2], int(sys.argv[3])))
    else:
        raise SystemExit(f"unknown command {cmd}")
