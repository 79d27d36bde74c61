"""Helper run inside a namespace by benchmarks/e2e.py (not a benchmark by itself).

    python _netclient.py connrate HOST PORT SECONDS [SOCKS_HOST SOCKS_PORT]
                                                      -> prints connections per second
                                                         (optionally each through SOCKS5)
    python _netclient.py hold HOST PORT N             -> opens N connections, prints "ready",
                                                         holds them until stdin closes,
                                                         then checks each still echoes
    python _netclient.py udprtt HOST PORT SECONDS [SOCKS_HOST SOCKS_PORT]
                                                      -> sequential UDP round trips per
                                                         second (optionally through a SOCKS5
                                                         UDP ASSOCIATE), and the median
                                                         round trip in ms
    python _netclient.py echo-server HOST PORT        -> asyncio echo server, TCP and UDP
"""

from __future__ import annotations

import asyncio
import resource
import socket
import struct
import sys
import time
import typing


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _socks5_connect(proxy: tuple[str, int], host: str, port: int) -> socket.socket:
    """A SOCKS5 CONNECT (RFC 1928), greeting and request sent at once (dante accepts that)."""
    s = socket.create_connection(proxy, timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton(host)
              + struct.pack("!H", port))
    rep = b""
    while len(rep) < 12:
        chunk = s.recv(12 - len(rep))
        if not chunk:
            raise SystemExit("SOCKS5 proxy closed the connection")
        rep += chunk
    if rep[:2] != b"\x05\x00" or rep[3] != 0:
        raise SystemExit(f"SOCKS5 CONNECT refused: {rep!r}")
    return s


def connrate(host: str, port: int, seconds: float, socks: tuple[str, int] | None = None) -> None:
    n = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        if socks is not None:
            s = _socks5_connect(socks, host, port)
        else:
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


def _socks5_udp(proxy: tuple[str, int]) -> tuple[socket.socket, tuple[str, int]]:
    """A SOCKS5 UDP ASSOCIATE (RFC 1928 section 7): the control connection and the relay."""
    ctl = socket.create_connection(proxy, timeout=10)
    ctl.sendall(b"\x05\x01\x00")
    if ctl.recv(2) != b"\x05\x00":
        raise SystemExit("SOCKS5 greeting refused")
    ctl.sendall(b"\x05\x03\x00\x01" + bytes(6))
    rep = ctl.recv(64)
    if len(rep) < 10 or rep[1] != 0 or rep[3] != 1:
        raise SystemExit(f"UDP ASSOCIATE refused: {rep!r}")
    relay_host = socket.inet_ntoa(rep[4:8])
    relay = ("127.0.0.1" if relay_host == "0.0.0.0" else relay_host,
             struct.unpack("!H", rep[8:10])[0])
    return ctl, relay


def udprtt(host: str, port: int, seconds: float, socks: tuple[str, int] | None) -> None:
    s = socket.socket(_family(host), socket.SOCK_DGRAM)
    s.settimeout(1.0)
    ctl = None
    if socks is None:
        s.connect((host, port))
        wrap = b""
    else:
        ctl, relay = _socks5_udp(socks)
        s.connect(relay)
        wrap = b"\x00\x00\x00\x01" + socket.inet_aton(host) + struct.pack("!H", port)
    payload = wrap + b"r" * 64
    n = lost = 0
    rtts: list[float] = []
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end:
        sent = time.perf_counter()
        s.send(payload)
        try:
            if s.recv(2048)[len(wrap):] != b"r" * 64:
                raise SystemExit("bad UDP echo")
            rtts.append(time.perf_counter() - sent)
            n += 1
        except TimeoutError:
            lost += 1
            if lost > 10:
                raise SystemExit(f"UDP echo lost {lost} times after {n} round trips") from None
    if n == 0:
        raise SystemExit("no UDP echo came back")
    rtts.sort()
    # the last line: round trips per second, then the median round trip in milliseconds
    print(f"{n / (time.perf_counter() - t0):.1f} {rtts[len(rtts) // 2] * 1000:.3f}", flush=True)
    if ctl is not None:
        ctl.close()


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


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
    await asyncio.get_running_loop().create_datagram_endpoint(_UdpEcho, local_addr=(host, port))
    async with srv:
        await srv.serve_forever()


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "connrate":
        via = (sys.argv[5], int(sys.argv[6])) if len(sys.argv) > 6 else None
        connrate(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), via)
    elif cmd == "hold":
        hold(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "udprtt":
        socks = (sys.argv[5], int(sys.argv[6])) if len(sys.argv) > 6 else None
        udprtt(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), socks)
    elif cmd == "echo-server":
        asyncio.run(echo_server(sys.argv[2], int(sys.argv[3])))
    else:
        raise SystemExit(f"unknown command {cmd}")
