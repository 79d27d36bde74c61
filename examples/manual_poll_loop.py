"""The sans-I/O core driven by hand: no sockets, no event loop, no TUN — just packets and time.

An "application" (tun2proxy's own TCP in active mode, standing in for a kernel) connects to
203.0.113.7:7 through a NetStack whose host logic answers every flow as an echo service.
This is the shape of embedding in a VPN tool that owns its own loop, sockets and threads:

    stack.receive_many(packets, now) -> stack.events() -> act -> stack.poll(now) -> stack.poll_at()

Run: python examples/manual_poll_loop.py
"""

from __future__ import annotations

import ipaddress
import os

from tun2proxy import (
    NetStack,
    StackConfig,
    TcpClosed,
    TcpConnectRequest,
    TcpPeerClosed,
    TcpReadable,
)
from tun2proxy.tcp import TcpConfig, TcpConnection
from tun2proxy.wire import parse_ip, parse_tcp


def main() -> None:
    stack = NetStack(StackConfig(isn_secret=os.urandom(16), mtu=1500))
    app = TcpConnection.connect(
        TcpConfig(), ipaddress.ip_address("10.0.0.2").packed, 40000,
        ipaddress.ip_address("203.0.113.7").packed, 7, 12345, 0.0, mss_limit=1460,
    )
    message = b"hello through a userspace TCP/IP stack" * 100
    received = bytearray()
    now = 0.0
    sent = False
    for _ in range(1000):
        # The app side emits packets: "the kernel writes them into the TUN".
        to_stack: list[bytearray] = []
        app.dispatch(now, to_stack)
        stack.receive_many(to_stack, now)
        # The host reacts to events: here every flow is an echo service.
        for ev in stack.events():
            if isinstance(ev, TcpConnectRequest):
                print(f"connect request {ev.src} -> {ev.dst}: accepted")
                stack.tcp_accept(ev.flow_id)
            elif isinstance(ev, TcpReadable):
                stack.send(ev.flow_id, stack.recv(ev.flow_id))
            elif isinstance(ev, TcpPeerClosed):
                stack.shutdown(ev.flow_id)
            elif isinstance(ev, TcpClosed):
                print(f"flow {ev.flow_id} closed: {ev.reason}")
        # Packets due now go back to the app: "tun2proxy writes them into the TUN".
        for packet in stack.poll(now):
            ip = parse_ip(packet)
            app.on_segment(parse_tcp(packet, ip.offset, ip.end), now)
        received += app.recv()
        if app.state.value == "ESTABLISHED" and not sent:
            app.send(message)
            app.shutdown()
            sent = True
        if app.state.value in ("TIME-WAIT", "CLOSED") and stack.poll_at() is None:
            break
        # Sleep until the next deadline (here: jump there; a real host would wait).
        deadlines = [t for t in (stack.poll_at(), app.poll_at()) if t is not None]
        now = max(now, min(deadlines)) if deadlines else now + 0.01
    assert bytes(received) == message, "echo mismatch"
    print(f"echoed {len(received)} bytes; stack stats: {stack.stats()['packets_in']} packets in")


if __name__ == "__main__":
    main()
