"""UDP session churn in one process: what stays after the sessions expire? (issue 15, item 11)

    python benchmarks/udp_churn_memory.py [--sources 5000] [--per-source 10] [--rounds 4]
                                          [--trace]

Each round sends ``per-source`` datagrams from each of ``sources`` application endpoints
through a Driver (a PacketFlowLink, no root needed) to a UDP echo server on loopback, over
real direct UDP sockets, then waits until every session has expired. After each round it
prints RSS, what pymalloc holds (arenas) against what is live in it (allocated blocks), the
number of objects the garbage collector tracks, the session tables and open fds, and what
``malloc_trim(0)`` gives back. With ``--trace``, tracemalloc's biggest differences between
the idle state before the first round and after the last are printed too (slower: sessions
then open more slowly than they expire, so use a longer ``--udp-timeout``).

RSS that grows while live blocks, objects and tables stay flat is allocator high-water
(pymalloc keeps an arena while any block in it lives), not memory kept by tun2proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import os
import socket
import sys
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tun2proxy.driver import Driver, DriverConfig
from tun2proxy.link.packet_flow import PacketFlowLink
from tun2proxy.proxy.address import Address
from tun2proxy.stack import StackConfig
from tun2proxy.testing import udp_packet
from tun2proxy.upstream.base import DatagramReceiver, FlowInfo, UdpChannel, Upstream
from tun2proxy.upstream.udp import open_direct_udp


def rss_mib() -> float:
    """This process's resident set size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pymalloc() -> dict[str, int]:
    """Arenas and allocated bytes from ``sys._debugmallocstats`` (it writes to fd 2; it says
    nothing while tracemalloc wraps the allocator: then all are 0)."""
    r, w = os.pipe()
    saved = os.dup(2)
    try:
        os.dup2(w, 2)
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(w)
    chunks = []
    while chunk := os.read(r, 1 << 16):
        chunks.append(chunk)
    os.close(r)
    out = dict.fromkeys(
        ("arenas allocated current", "arenas highwater mark", "bytes in allocated blocks"), 0
    )
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        for key in ("arenas allocated current", "arenas highwater mark",
                    "bytes in allocated blocks"):
            if key in line:
                out[key] = int(line.split("=")[1].strip().replace(",", ""))
    return out


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.transport.sendto(data, addr)


class ToEcho(Upstream):
    """Direct UDP sockets whose every datagram goes to the loopback echo server."""

    name = "to-echo"

    def __init__(self, port: int) -> None:
        self.port = port

    async def open_tcp(self, dst: Address, protocol: asyncio.Protocol, flow: FlowInfo) -> Any:
        raise OSError("UDP only")

    async def open_udp(self, flow: FlowInfo, receiver: DatagramReceiver) -> UdpChannel:
        ch = await open_direct_udp(socket.AF_INET, receiver, egress=self.egress)
        send = ch.send
        port = self.port
        ch.send = lambda payload, dst: send(payload, Address("127.0.0.1", port))  # type: ignore[method-assign]
        return ch


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    port = echo.get_extra_info("sockname")[1]
    link = PacketFlowLink(lambda packets, families: None, mtu=1500)
    stack = Driver.make_stack(StackConfig(
        mtu=1500, udp_timeout=args.udp_timeout, max_udp_sessions=max(4096, args.sources),
    ))
    driver = Driver(stack, link, ToEcho(port), DriverConfig())
    task = asyncio.create_task(driver.run())
    await asyncio.sleep(0)
    libc = ctypes.CDLL("libc.so.6")
    gc.collect()
    before = tracemalloc.take_snapshot() if args.trace else None
    m = pymalloc()
    live = m["bytes in allocated blocks"] / 2**20
    print(f"idle: rss {rss_mib():.1f} MiB, pymalloc live {live:.2f}"
          f" MiB in {m['arenas allocated current']} arenas, {len(gc.get_objects())} objects")
    sources = [(f"10.{1 + i // 62500}.{(i // 250) % 250}.{i % 250 + 1}", 10000 + i % 50000)
               for i in range(args.sources)]
    for rnd in range(args.rounds):
        for _ in range(args.per_source):
            link.feed([udp_packet(h, "192.0.2.1", p, 9999, b"x" * 64) for h, p in sources])
            await asyncio.sleep(0.05)
        for _ in range(int(args.udp_timeout * 20) + 200):
            await asyncio.sleep(0.05)
            st = driver.stats()
            if not st["udp_sessions"] and not st["udp_relays"] and not st["timer_heap"]:
                break
        await asyncio.sleep(0.2)
        gc.collect()
        st = driver.stats()
        m = pymalloc()
        rss = rss_mib()
        libc.malloc_trim(0)
        print(
            f"round {rnd}: rss {rss:.1f} MiB ({rss_mib():.1f} after malloc_trim), pymalloc live "
            f"{m['bytes in allocated blocks'] / 2**20:.2f} MiB in {m['arenas allocated current']}"
            f" arenas (high-water {m['arenas highwater mark']}), {len(gc.get_objects())} objects;"
            f" sessions {st['udp_sessions']}, relays {st['udp_relays']}, timers "
            f"{st['timer_heap']}, own endpoints {driver.egress.own_count}, fds "
            f"{len(os.listdir('/proc/self/fd'))}; opened so far {st['udp_sessions_opened']}",
            flush=True,
        )
    if before is not None:
        after = tracemalloc.take_snapshot()
        print("tracemalloc, idle before the first round -> after the last:")
        for diff in after.compare_to(before, "lineno")[:12]:
            print("  ", diff)
    driver.stop()
    await task
    echo.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sources", type=int, default=5000)
    ap.add_argument("--per-source", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--udp-timeout", type=float, default=2.0)
    ap.add_argument("--trace", action="store_true")
    args = ap.parse_args()
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.sources + 1024), hard))
    if args.trace:
        tracemalloc.start(1)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
