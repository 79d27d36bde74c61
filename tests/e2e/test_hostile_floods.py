"""Hostile floods and bursts end to end (issue 15, items 3 and 4), the kernel as the client.

* spoofed SYNs (crafted with dpkt, written with a raw socket in the apps' namespace) through a
  fast upstream (``direct://`` to a listener in the server namespace) and through a slow one
  (a SOCKS5 server that waits before it dials), while a real client keeps connecting: the
  real client gets through, the tunnel's file descriptors and half-open handshakes stay
  bounded, and the target does not end up holding a connection per spoofed SYN;
* bursts of 1,000 concurrent connects (5,000 in all) through dante and directly: every one
  succeeds — none refused, none reset;
* 1,000 connects to a black-holed destination do not starve connects to a healthy one.

Outcomes are counted, never timed; connect times are printed for the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import resource
import selectors
import socket
import statistics
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from tun2proxy.link.netns import entered, netns_path
from tun2proxy.testing.netlab import SERVER_V4, Lab, Proc, run, wait_for

from .conftest import DANTE_PORT, Tun2Proxy, stats

pytestmark = pytest.mark.timeout(600)

FLOOD_PORT = 7300
SLOW_SOCKS_PORT = 1095
BLACKHOLE_NET = "10.201.0.0/24"
BLACKHOLE = "10.201.0.9"


class CountingEchoServer:
    """An asyncio echo server in namespace ``ns`` that counts the connections it holds."""

    def __init__(self, ns: str, host: str, port: int) -> None:
        with entered(netns_path(ns)):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(4096)
        self.open = 0
        self.peak = 0
        self.total = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self._ready.wait(5)

    def reset_peak(self) -> None:
        self.peak = self.open

    def _run(self) -> None:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.open += 1
            self.total += 1
            self.peak = max(self.peak, self.open)
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError, asyncio.CancelledError):
                pass  # a cancelled handler ends quietly (the server is closing)
            finally:
                self.open -= 1
                w.close()

        async def main() -> None:
            self._stop = asyncio.Event()
            server = await asyncio.start_server(handle, sock=self.sock, backlog=4096)
            self._ready.set()
            await self._stop.wait()
            server.close()
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(main())
        self.loop.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(5)


class SlowSocks5:
    """A SOCKS5 server (no auth, CONNECT to IPv4 only) in namespace ``ns`` on loopback that
    waits ``delay`` seconds before it dials: an upstream slower than the SYNs coming in."""

    def __init__(self, ns: str, port: int, delay: float) -> None:
        self.ns = ns
        self.port = port
        self.delay = delay
        self.requests = 0
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self._ready.wait(5)

    def _run(self) -> None:
        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                head = await r.readexactly(2)
                await r.readexactly(head[1])
                w.write(b"\x05\x00")
                req = await r.readexactly(4)
                if req[3] != 1:
                    w.close()
                    return
                addr = socket.inet_ntoa(await r.readexactly(4))
                (port,) = struct.unpack("!H", await r.readexactly(2))
                self.requests += 1
                await asyncio.sleep(self.delay)
                tr, tw = await asyncio.open_connection(addr, port)
                w.write(b"\x05\x00\x00\x01" + bytes(4) + b"\x00\x00")
                await asyncio.gather(pipe(r, tw), pipe(tr, w))
            except (ConnectionError, OSError, asyncio.IncompleteReadError):
                w.close()

        async def main() -> None:
            self._stop = asyncio.Event()
            server = await asyncio.start_server(handle, "127.0.0.1", self.port, backlog=4096)
            self._ready.set()
            await self._stop.wait()
            server.close()
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        # This thread lives in the router namespace for good: its sockets (the listener and
        # every dial) are created there.
        with entered(netns_path(self.ns)):
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(main())
            self.loop.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(5)


@pytest.fixture
def target(lab: Lab) -> Iterator[CountingEchoServer]:
    srv = CountingEchoServer(lab.S, SERVER_V4, FLOOD_PORT)
    yield srv
    srv.close()


@pytest.fixture
def many_fds() -> Iterator[None]:
    """Room for thousands of sockets here and in the tun2proxy started after it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 16384), max(hard, 16384)))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _spoofed_syns(n: int, dst: str, port: int, seed: int) -> list[bytes]:
    import dpkt

    rng = random.Random(seed)
    daddr = socket.inet_aton(dst)
    out = []
    for _ in range(n):  # random sources, ports and sequence numbers; nobody will ever ACK
        src = bytes((100, rng.randrange(64, 128), rng.randrange(256), rng.randrange(1, 255)))
        syn = dpkt.tcp.TCP(sport=rng.randrange(1024, 65535), dport=port,
                           flags=dpkt.tcp.TH_SYN, seq=rng.getrandbits(32), win=64240)
        ip = dpkt.ip.IP(src=src, dst=daddr, p=dpkt.ip.IP_PROTO_TCP, ttl=64, data=syn)
        ip.len = len(ip)
        out.append(bytes(ip))
    return out


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class _Sampler:
    """Samples tun2proxy's fds and handshake counts (SIGUSR1 stats) until stopped."""

    def __init__(self, p: Proc, interval: float = 0.3) -> None:
        self.p = p
        self.interval = interval
        self.samples: list[dict[str, int]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                st = stats(self.p)
            except AssertionError:
                continue
            states = st["tcp_states"]
            assert isinstance(states, dict)
            self.samples.append({
                "fds": _fds(self.p.pid),
                "syn_received": int(states.get("SYN-RECEIVED", 0)),
                "flows": int(st["tcp_flows"]),  # type: ignore[call-overload]
                "connecting": int(st["connecting"]),  # type: ignore[call-overload]
            })
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self.thread.join(10)
        keys = ("fds", "syn_received", "flows", "connecting")
        return {k: max((s[k] for s in self.samples), default=-1) for k in keys}


def _legit_client(lab: Lab, port: int, attempts: int, gap: float) -> list[float | None]:
    """A real client connecting over and over: each attempt's connect time, None if failed."""
    times: list[float | None] = []
    for i in range(attempts):
        s = lab.socket(lab.C)
        s.settimeout(15)
        t0 = time.monotonic()
        try:
            s.connect((SERVER_V4, port))
            dt = time.monotonic() - t0
            s.sendall(b"ping%d" % i)
            ok = s.recv(16) == b"ping%d" % i
            times.append(dt if ok else None)
        except OSError:
            times.append(None)
        finally:
            s.close()
        time.sleep(gap)
    return times


def _flood_with_legit_client(
    lab: Lab, p: Proc, target: CountingEchoServer, *, syns: int = 5000, label: str
) -> tuple[float, dict[str, int]]:
    """Spoofed SYNs at about 1,600/s while a real client connects; returns its success rate
    and the peaks sampled in tun2proxy."""
    flood = _spoofed_syns(syns, SERVER_V4, FLOOD_PORT, seed=15)
    with lab.inside(lab.C):
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    done = threading.Event()

    def blast() -> None:
        for i, pkt in enumerate(flood):  # paced: ~1,600 SYNs/s, as in the report
            with contextlib.suppress(OSError):
                raw.sendto(pkt, (SERVER_V4, 0))
            if i % 50 == 49:
                time.sleep(0.03)
        done.set()

    target.reset_peak()
    sampler = _Sampler(p)
    t = threading.Thread(target=blast, daemon=True)
    t.start()
    times = _legit_client(lab, FLOOD_PORT, attempts=80, gap=0.05)
    t.join(120)
    raw.close()
    peaks = sampler.stop()
    assert done.is_set()
    ok = [x for x in times if x is not None]
    rate = len(ok) / len(times)
    st = stats(p)
    timing = (
        f"connect time median {statistics.median(ok) * 1000:.1f} ms, max {max(ok) * 1000:.1f} ms"
        if ok else "no connection succeeded"
    )
    print(
        f"\n{label}: {syns} spoofed SYNs; real client {len(ok)}/{len(times)} "
        f"({rate:.0%}) succeeded, {timing}; tun2proxy peaks: {peaks}; target held at most "
        f"{target.peak} connections ({target.total} in all); syn_flood_episodes "
        f"{st['syn_flood_episodes']}, tcp_syn_received {st['tcp_syn_received']}, drops "
        f"{ {k: v for k, v in st['drops'].items() if 'tcp' in k} }"  # type: ignore[attr-defined]
    )
    return rate, peaks


def test_spoofed_syn_flood_through_a_fast_upstream(
    lab: Lab, tun2proxy: Tun2Proxy, target: CountingEchoServer, many_fds: None
) -> None:
    p = tun2proxy()  # direct://: every dial to the target connects at once
    fds0 = _fds(p.pid)
    rate, peaks = _flood_with_legit_client(lab, p, target, label="fast upstream")
    assert rate >= 0.9, f"the real client got through {rate:.0%} of the time"
    # Spoofed sources never complete a handshake: they must not hold upstream connections
    # (before the fix the target held one per spoofed SYN, about 3,000-4,000, for a minute).
    # What may reach it: the handshakes accepted before the flood mode came on (the
    # threshold, 128) and the dials then in flight (32 per destination), with some slack.
    assert target.peak <= 300, target.peak
    assert peaks["fds"] - fds0 <= 400, peaks
    # SYN-RECEIVED: the bounded half-open table plus handshakes accepted before the flood
    # mode came on (before the fix: every flow slot, 4,096).
    assert peaks["syn_received"] <= 2048 + 256, peaks
    assert p.alive()


def test_spoofed_syn_flood_through_a_slow_upstream(
    lab: Lab, tun2proxy: Tun2Proxy, target: CountingEchoServer, many_fds: None
) -> None:
    slow = SlowSocks5(lab.R, SLOW_SOCKS_PORT, delay=0.5)
    try:
        p = tun2proxy(proxy=f"socks5://127.0.0.1:{SLOW_SOCKS_PORT}")
        fds0 = _fds(p.pid)
        rate, peaks = _flood_with_legit_client(lab, p, target, label="slow upstream")
        print(f"slow upstream: {slow.requests} CONNECT requests reached the SOCKS server")
    finally:
        slow.close()
    assert rate >= 0.9, f"the real client got through {rate:.0%} of the time"
    assert target.peak <= 300, target.peak  # before the fix: 639
    assert peaks["fds"] - fds0 <= 400, peaks
    assert peaks["syn_received"] <= 2048 + 256, peaks
    assert p.alive()


def _burst(
    lab: Lab, dst: str, port: int, n: int, deadline: float
) -> tuple[Counter[str], list[float]]:
    """``n`` concurrent connects from the apps' namespace, each sending one byte and reading
    its echo; outcomes counted by kind, connect times of the successful ones."""
    sel = selectors.DefaultSelector()
    outcome: Counter[str] = Counter()
    started: dict[socket.socket, float] = {}
    times: list[float] = []
    for _ in range(n):
        s = lab.socket(lab.C)
        s.setblocking(False)
        started[s] = time.monotonic()
        rc = s.connect_ex((dst, port))
        if rc not in (0, errno.EINPROGRESS):
            outcome[errno.errorcode.get(rc, str(rc))] += 1
            s.close()
            continue
        sel.register(s, selectors.EVENT_WRITE, "connecting")
    end = time.monotonic() + deadline
    while sel.get_map() and time.monotonic() < end:
        for key, _ in sel.select(timeout=1.0):
            s = key.fileobj  # type: ignore[assignment]
            assert isinstance(s, socket.socket)
            if key.data == "connecting":
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    outcome["connect:" + errno.errorcode.get(err, str(err))] += 1
                    sel.unregister(s)
                    s.close()
                    continue
                times.append(time.monotonic() - started[s])
                try:
                    s.send(b"x")
                except OSError as e:
                    outcome["send:" + errno.errorcode.get(e.errno or 0, str(e))] += 1
                    sel.unregister(s)
                    s.close()
                    continue
                sel.modify(s, selectors.EVENT_READ, "echo")
            else:
                try:
                    got = s.recv(1)
                    outcome["ok" if got == b"x" else "closed-after-connect"] += 1
                except OSError as e:
                    outcome["after-connect:" + errno.errorcode.get(e.errno or 0, str(e))] += 1
                sel.unregister(s)
                s.close()
    for key in list(sel.get_map().values()):
        outcome["unfinished:" + str(key.data)] += 1
        key.fileobj.close()  # type: ignore[union-attr]
    sel.close()
    return outcome, times


@pytest.mark.parametrize("via", ["dante", "direct"])
def test_burst_of_1000_concurrent_connects(
    lab: Lab, tun2proxy: Tun2Proxy, target: CountingEchoServer, many_fds: None,
    request: pytest.FixtureRequest, via: str,
) -> None:
    if via == "dante":
        request.getfixturevalue("dante")
    p = tun2proxy(proxy=f"socks5://127.0.0.1:{DANTE_PORT}" if via == "dante" else "direct://")
    total: Counter[str] = Counter()
    times: list[float] = []
    for _ in range(5):  # 5 rounds of 1,000 at once: 5,000 connections
        outcome, t = _burst(lab, SERVER_V4, FLOOD_PORT, 1000, deadline=150)
        total += outcome
        times += t
        assert wait_for(lambda: target.open == 0, timeout=30)
    st = stats(p)
    times.sort()
    print(
        f"\nburst via {via}: {dict(total)}; connect time median "
        f"{times[len(times) // 2] * 1000:.1f} ms, p99 {times[int(len(times) * 0.99)] * 1000:.1f}"
        f" ms, max {times[-1] * 1000:.1f} ms; syn_flood_episodes {st['syn_flood_episodes']}, "
        f"drops { {k: v for k, v in st['drops'].items() if 'tcp' in k} }"  # type: ignore[attr-defined]
    )
    assert total == Counter(ok=5000), dict(total)  # none refused, none reset, none lost
    assert p.alive()


@pytest.fixture
def black_hole(lab: Lab) -> Iterator[str]:
    """A destination whose packets vanish: routed from R to S, dropped silently in S."""
    run("ip", "-n", lab.R, "route", "add", BLACKHOLE_NET, "via", SERVER_V4)
    run("ip", "-n", lab.S, "route", "add", "blackhole", BLACKHOLE_NET)
    try:
        yield BLACKHOLE
    finally:
        run("ip", "-n", lab.S, "route", "del", "blackhole", BLACKHOLE_NET, check=False)
        run("ip", "-n", lab.R, "route", "del", BLACKHOLE_NET, check=False)


def test_a_black_holed_destination_does_not_starve_the_others(
    lab: Lab, tun2proxy: Tun2Proxy, target: CountingEchoServer, many_fds: None, black_hole: str
) -> None:
    # The hole really swallows packets: a dial from R neither connects nor fails.
    probe = lab.socket(lab.R)
    probe.settimeout(1.0)
    with pytest.raises(TimeoutError):
        probe.connect((black_hole, 80))
    probe.close()
    p = tun2proxy()
    dead = []
    for _ in range(1000):  # 1,000 connects to the black hole, left waiting
        s = lab.socket(lab.C)
        s.setblocking(False)
        assert s.connect_ex((black_hole, 80)) == errno.EINPROGRESS
        dead.append(s)
    try:
        assert wait_for(lambda: int(stats(p)["connecting"]) > 0, timeout=20)  # type: ignore[call-overload]
        times = _legit_client(lab, FLOOD_PORT, attempts=20, gap=0.1)
        st = stats(p)
    finally:
        for s in dead:
            s.close()
    ok = [x for x in times if x is not None]
    print(
        f"\nblack hole: healthy destination {len(ok)}/{len(times)} succeeded"
        + (f", connect time median {statistics.median(ok) * 1000:.1f} ms, max "
           f"{max(ok) * 1000:.1f} ms" if ok else "")
        + f"; dials in progress {st['connecting']}, queued {st.get('queued')}"
    )
    assert len(ok) == len(times), times
    assert p.alive()
