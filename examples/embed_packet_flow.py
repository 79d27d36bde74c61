"""Embedding mode A: the Driver on a background thread, packets handed over by the host.

This is how a host without a TUN fd (an iOS ``NEPacketTunnelProvider``, another VPN tool)
uses tun2proxy: it feeds the packets it reads into ``link.feed_threadsafe`` and writes what
``on_output`` gives it. Here the "host OS" is the main thread running an application TCP,
and flows go to an in-process echo server through a custom Upstream of a few lines.

Run: python examples/embed_packet_flow.py
"""

from __future__ import annotations

import asyncio
import ipaddress
import queue
import threading
import time

from tun2proxy.driver import Driver
from tun2proxy.link import PacketFlowLink
from tun2proxy.proxy import Address
from tun2proxy.stack import StackConfig
from tun2proxy.tcp import TcpConfig, TcpConnection
from tun2proxy.upstream import FlowInfo, Upstream
from tun2proxy.wire import parse_ip, parse_tcp


class EchoServerUpstream(Upstream):
    """Every flow goes to one local TCP server (a custom upstream in a dozen lines)."""

    name = "local-echo"

    def __init__(self, port: int) -> None:
        self.port = port

    async def open_tcp(
        self, dst: Address, protocol: asyncio.Protocol, flow: FlowInfo
    ) -> asyncio.Transport:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(lambda: protocol, "127.0.0.1", self.port)
        return transport


def main() -> None:
    outbox: queue.Queue[bytes] = queue.Queue()

    def write_packets(pkts: list[bytes | bytearray], fams: list[int]) -> None:
        for p in pkts:
            outbox.put(bytes(p))

    link = PacketFlowLink(write_packets)
    ready = threading.Event()
    holder: dict[str, object] = {}

    def driver_thread() -> None:
        async def run() -> None:
            async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                while data := await r.read(65536):
                    w.write(data)
                w.close()

            server = await asyncio.start_server(echo, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            stack = Driver.make_stack(StackConfig(mtu=1500))
            driver = Driver(stack, link, EchoServerUpstream(port))
            holder["driver"] = driver
            ready.set()
            await driver.run()
            server.close()

        asyncio.run(run())

    t = threading.Thread(target=driver_thread, daemon=True)
    t.start()
    ready.wait()
    # The host side: an application connection whose packets we pass through the link.
    app = TcpConnection.connect(
        TcpConfig(), ipaddress.ip_address("10.0.0.2").packed, 40000,
        ipaddress.ip_address("198.51.100.1").packed, 443, 777, time.monotonic(), mss_limit=1460,
    )
    message = b"packets in, packets out " * 1000
    got = bytearray()
    sent = False
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not app.peer_fin:
        now = time.monotonic()
        out: list[bytearray] = []
        app.on_timer(now)
        app.dispatch(now, out)
        if out:
            link.feed_threadsafe([bytes(p) for p in out])  # e.g. from readPackets' handler
        try:
            pkt = outbox.get(timeout=0.01)  # e.g. into writePackets
            ip = parse_ip(pkt)
            app.on_segment(parse_tcp(pkt, ip.offset, ip.end), time.monotonic())
        except queue.Empty:
            pass
        got += app.recv()
        if app.state.value == "ESTABLISHED" and not sent:
            app.send(message)
            app.shutdown()
            sent = True
    driver = holder["driver"]
    assert isinstance(driver, Driver)
    driver.stop_threadsafe()
    t.join(5)
    assert bytes(got) == message, f"got {len(got)} of {len(message)} bytes"
    print(f"echoed {len(got)} bytes through the driver on a background thread")


if __name__ == "__main__":
    main()
