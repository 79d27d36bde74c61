"""The Driver, relays and upstreams in one process, without root: applications (this
package's TCP) on a PacketFlowLink, upstreams reaching real loopback servers."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Callable

import pytest

from tun2proxy.driver import Driver, DriverConfig
from tun2proxy.errors import UpstreamError
from tun2proxy.proxy.address import Address
from tun2proxy.stack import StackConfig
from tun2proxy.tcp import TcpConfig
from tun2proxy.testing import tls_client_hello
from tun2proxy.testing.apps import AppHost
from tun2proxy.upstream.base import FlowInfo, Upstream, upstream_error_from_os
from tun2proxy.wire import parse_icmp, parse_ip

pytestmark = pytest.mark.timeout(60)


class LoopbackUpstream(Upstream):
    """Sends every flow to a loopback port chosen by the destination port (test only)."""

    name = "loopback"

    def __init__(self, ports: dict[int, int], delay: float = 0.0) -> None:
        self.ports = ports
        self.delay = delay
        self.opened: list[FlowInfo] = []

    async def open_tcp(
        self, dst: Address, protocol: asyncio.Protocol, flow: FlowInfo
    ) -> asyncio.Transport:
        self.opened.append(flow)
        if self.delay:
            await asyncio.sleep(self.delay)
        port = self.ports.get(dst.port)
        if port is None:
            raise UpstreamError(f"no such service {dst}", "refused")
        loop = asyncio.get_running_loop()
        try:
            t, _ = await loop.create_connection(lambda: protocol, "127.0.0.1", port)
        except OSError as e:
            raise upstream_error_from_os(e, str(dst)) from None
        return t


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], "asyncio.Future[None]"]


async def _echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while data := await r.read(65536):
        w.write(data)
        await w.drain()
    w.close()


@contextlib.asynccontextmanager
async def server(handler: object) -> AsyncIterator[int]:
    srv = await asyncio.start_server(handler, "127.0.0.1", 0)  # type: ignore[arg-type]
    port = srv.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        srv.close()


@contextlib.asynccontextmanager
async def running(
    upstream: Upstream, driver_config: DriverConfig | None = None, **stack_kw: object
) -> AsyncIterator[tuple[AppHost, Driver]]:
    host = AppHost()
    tcp = stack_kw.pop("tcp", TcpConfig())
    stack = Driver.make_stack(StackConfig(mtu=1500, tcp=tcp, **stack_kw))  # type: ignore[arg-type]
    driver = Driver(
        stack, host.link, upstream, driver_config or DriverConfig(connect_timeout=1.0)
    )
    task = asyncio.create_task(driver.run())
    await asyncio.sleep(0)
    try:
        yield host, driver
    finally:
        driver.stop()
        await asyncio.wait_for(task, 5)


@pytest.mark.parametrize("dst", ["192.0.2.1", "2001:db8::1"])
async def test_echo_both_ways(dst: str) -> None:
    async with server(_echo) as port, running(LoopbackUpstream({80: port})) as (host, _):
        app = host.connect(dst, 80)
        data = os.urandom(1_000_000)
        await host.send_all(app, data)
        host.shutdown(app)
        await host.wait(app, lambda a: len(a.received) >= len(data) and a.conn.peer_fin)
        assert hashlib.sha256(app.received).digest() == hashlib.sha256(data).digest()
        await host.wait(app, lambda a: a.closed)
        assert app.close_reason == "closed"


async def test_refused_upstream_resets_the_app() -> None:
    async with running(LoopbackUpstream({})) as (host, driver):
        app = host.connect("192.0.2.1", 80)
        await host.wait(app, lambda a: a.closed, timeout=5)
        assert app.close_reason == "refused"
        assert driver.flows_failed == 1


async def test_unreachable_upstream_is_icmp_unreachable() -> None:
    class Unreachable(Upstream):
        async def open_tcp(
            self, dst: Address, protocol: asyncio.Protocol, flow: FlowInfo
        ) -> asyncio.Transport:
            raise UpstreamError("no route", "unreachable")

    async with running(Unreachable()) as (host, _):
        app = host.connect("192.0.2.1", 80)
        await host.wait(app, lambda a: bool(a.icmp), timeout=5)
        assert app.icmp == [(3, 1)]  # host unreachable


async def test_connect_timeout_rejects() -> None:
    class Hang(Upstream):
        async def open_tcp(
            self, dst: Address, protocol: asyncio.Protocol, flow: FlowInfo
        ) -> asyncio.Transport:
            await asyncio.sleep(3600)
            raise AssertionError

    async with running(Hang()) as (host, driver):
        app = host.connect("192.0.2.1", 80)
        await host.wait(app, lambda a: bool(a.icmp), timeout=5)
        assert driver.stats()["connecting"] == 0


async def test_server_speaks_first_before_accept() -> None:
    async def banner(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"220 hello\r\n")
        await w.drain()
        await r.read()
        w.close()

    async with server(banner) as port, running(LoopbackUpstream({25: port})) as (host, _):
        app = host.connect("192.0.2.1", 25)
        await host.wait(app, lambda a: bytes(a.received) == b"220 hello\r\n")
        host.shutdown(app)
        await host.wait(app, lambda a: a.closed)


async def test_half_close_app_first_then_reply() -> None:
    async def reply_after_eof(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        body = await r.read()  # until the app's FIN
        w.write(hashlib.sha256(body).digest() * 1000)
        await w.drain()
        w.close()

    async with server(reply_after_eof) as port, running(LoopbackUpstream({80: port})) as (host, _):
        app = host.connect("192.0.2.1", 80)
        data = os.urandom(300_000)
        await host.send_all(app, data)
        host.shutdown(app)
        await host.wait(app, lambda a: a.conn.peer_fin)
        assert bytes(app.received) == hashlib.sha256(data).digest() * 1000


async def test_upstream_reset_mid_transfer_resets_the_app() -> None:
    async def reset_after_some(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"x" * 100_000)
        await w.drain()
        sock = w.get_extra_info("socket")
        import socket
        import struct

        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.close()

    async with server(reset_after_some) as port, running(LoopbackUpstream({80: port})) as (host, _):
        app = host.connect("192.0.2.1", 80)
        loop = asyncio.get_running_loop()
        await host.wait(app, lambda a: a.closed, timeout=5)
        assert app.close_reason == "reset"
        del loop


async def test_slow_upstream_reader_bounds_memory_with_the_window() -> None:
    gate = asyncio.Event()
    got = bytearray()

    async def slow(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await gate.wait()
        while data := await r.read(65536):
            got.extend(data)
        w.close()

    tcp = TcpConfig(recv_buffer=64 * 1024)
    async with server(slow) as port, running(LoopbackUpstream({80: port}), tcp=tcp) as (
        host, driver,
    ):
        app = host.connect("192.0.2.1", 80)
        data = os.urandom(8_000_000)
        sender = asyncio.create_task(host.send_all(app, data, timeout=60))
        await asyncio.sleep(1.0)
        # The upstream is not reading: the app is held back by our window, and what we
        # buffer stays within the receive buffer plus the socket's write buffer.
        assert not sender.done()
        flow = next(iter(driver._relays))
        conn = driver.stack.connection(flow)
        assert len(conn.rcv_buf) <= 64 * 1024 + 1500
        relay = driver._relays[flow]
        assert relay.transport is not None
        assert relay.transport.get_write_buffer_size() <= 2 * 1024 * 1024
        gate.set()
        await sender
        host.shutdown(app)
        await host.wait(app, lambda a: a.closed)
        await asyncio.sleep(0.1)
        assert bytes(got) == data


async def test_slow_app_reader_pauses_the_upstream() -> None:
    async def firehose(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(400):
                w.write(b"y" * 65536)
                await w.drain()
        w.close()

    tcp = TcpConfig(send_buffer=128 * 1024)
    async with server(firehose) as port, running(LoopbackUpstream({80: port}), tcp=tcp) as (
        host, driver,
    ):
        host.read = False
        app = host.connect("192.0.2.1", 80)
        await host.wait(app, lambda a: a.established)
        await asyncio.sleep(1.0)
        flow = next(iter(driver._relays))
        conn = driver.stack.connection(flow)
        relay = driver._relays[flow]
        assert len(conn.sbuf) <= 128 * 1024  # bounded by the send buffer
        assert len(relay.stash) <= 256 * 1024  # at most one read of the upstream socket
        assert relay.transport is not None and not relay.transport.is_reading()
        host.read = True
        host.schedule()
        await host.wait(app, lambda a: a.conn.peer_fin, timeout=30)
        assert len(app.received) == 400 * 65536


async def test_shutdown_resets_open_flows_and_closes_the_link() -> None:
    async with server(_echo) as port:
        host = AppHost()
        stack = Driver.make_stack(StackConfig(mtu=1500))
        driver = Driver(stack, host.link, LoopbackUpstream({80: port}))
        task = asyncio.create_task(driver.run())
        app = host.connect("192.0.2.1", 80)
        await host.wait(app, lambda a: a.established)
        driver.stop()
        await asyncio.wait_for(task, 5)
        host.pump()
        assert app.closed
        assert app.close_reason in ("reset", "closed")


async def test_udp_upstream_raising_anything_ends_the_session_with_port_unreachable() -> None:
    from tun2proxy.testing import udp_packet
    from tun2proxy.upstream.base import DatagramReceiver, UdpChannel

    class Broken(LoopbackUpstream):
        calls = 0

        async def open_udp(self, flow: FlowInfo, receiver: DatagramReceiver) -> UdpChannel:
            Broken.calls += 1
            raise RuntimeError("a bug in a custom upstream")

    async with running(Broken({})) as (host, driver):
        for _ in range(2):  # the session is gone after the failure: the next one tries again
            host.link.feed([udp_packet("10.0.0.2", "192.0.2.1", 5353, 9999, b"hello")])
            for _ in range(100):
                await asyncio.sleep(0.01)
                if any(parse_ip(p).protocol == 1 for p in host.other_packets):
                    break
            icmp = [p for p in host.other_packets if parse_ip(p).protocol == 1]
            assert icmp, "the app gets ICMP port unreachable"
            msg = parse_icmp(icmp[-1], parse_ip(icmp[-1]).offset, parse_ip(icmp[-1]).end)
            assert (msg.type, msg.code) == (3, 3)
            host.other_packets.clear()
            assert driver.stats()["udp_relays"] == 0
        assert Broken.calls == 2


async def test_own_connection_coming_back_through_the_tun_is_refused() -> None:
    up = LoopbackUpstream({80: 1})
    async with running(up) as (host, driver):
        key = ("10.0.0.2", host._next_port + 1)  # the port the next app connection uses
        driver.egress._own[key] = 1  # as if tun2proxy were dialling from that endpoint now
        try:
            app = host.connect("192.0.2.1", 80)
            await host.wait(app, lambda a: a.closed, timeout=5)
        finally:
            driver.egress._own.pop(key, None)
        assert app.close_reason == "refused"
        assert driver.stats()["flows_looped"] == 1
        assert up.opened == []  # never dialled again


async def test_own_udp_socket_coming_back_through_the_tun_is_refused_once_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tun2proxy.testing import udp_packet
    from tun2proxy.upstream.base import DatagramReceiver, UdpChannel

    class Counting(LoopbackUpstream):
        udp_opened = 0

        async def open_udp(self, flow: FlowInfo, receiver: DatagramReceiver) -> UdpChannel:
            Counting.udp_opened += 1
            raise UpstreamError("not here", "refused")

    key = ("10.0.0.2", 40000)
    async with running(Counting({})) as (host, driver):
        driver.egress._own[key] = 1  # as if one of our UDP sockets sent from that endpoint
        try:
            for _ in range(3):
                host.link.feed([udp_packet("10.0.0.2", "192.0.2.1", 40000, 9999, b"again")])
                await asyncio.sleep(0.01)
            st = driver.stats()
            assert st["udp_looped"] == 3
            assert st["drops"]["udp-routing-loop"] == 3  # type: ignore[index]
            assert st["udp_sessions"] == 0 and st["udp_relays"] == 0  # nothing kept
        finally:
            driver.egress._own.pop(key, None)
    assert Counting.udp_opened == 0  # never relayed
    assert sum("routing loop" in r.getMessage() for r in caplog.records) == 1


async def test_udp_sessions_from_many_sources_leave_every_table_empty_when_they_expire() -> None:
    # Issue 15, item 11: RSS stayed up after 5,000 sources' sessions expired. Nothing may be
    # kept: sessions, relays, timers, our own-endpoint registry and sockets all go back.
    from tun2proxy.testing import udp_packet
    from tun2proxy.upstream.base import DatagramReceiver, UdpChannel
    from tun2proxy.upstream.udp import open_direct_udp

    loop = asyncio.get_running_loop()

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[object, ...]) -> None:
            self.transport.sendto(data, addr)  # type: ignore[attr-defined]

    echo, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    port = echo.get_extra_info("sockname")[1]

    class ToEcho(LoopbackUpstream):
        async def open_udp(self, flow: FlowInfo, receiver: DatagramReceiver) -> UdpChannel:
            # The echo server is on loopback, which the direct upstream refuses by default.
            ch = await open_direct_udp(
                socket.AF_INET, receiver, refuse_local=False, egress=self.egress
            )
            send = ch.send
            ch.send = lambda payload, dst: send(payload, Address("127.0.0.1", port))  # type: ignore[method-assign]
            return ch

    fds = len(os.listdir("/proc/self/fd"))
    try:
        # 2 s: long enough that a loaded machine never lets a session expire between the
        # three feeds (it would be opened twice), short enough to wait out.
        async with running(ToEcho({}), udp_timeout=2.0) as (host, driver):
            sources = [(f"10.1.{i // 250}.{i % 250 + 1}", 20000 + i) for i in range(300)]
            for _ in range(3):
                host.link.feed([udp_packet(h, "192.0.2.1", p, 9999, b"x" * 32) for h, p in sources])
                await asyncio.sleep(0.02)
            assert driver.stats()["udp_sessions_opened"] == 300
            for _ in range(200):
                await asyncio.sleep(0.05)
                st = driver.stats()
                if not st["udp_sessions"] and not st["udp_relays"] and not st["timer_heap"]:
                    break
            st = driver.stats()
            assert any(parse_ip(p).protocol == 17 for p in host.other_packets), "no replies"
            assert (st["udp_sessions"], st["udp_relays"], st["timer_heap"]) == (0, 0, 0)
            assert driver._udp == {} and driver.stack._udp_by_id == {}
            assert driver.egress.own_count == 0
            await asyncio.sleep(0.05)
            assert len(os.listdir("/proc/self/fd")) <= fds
    finally:
        echo.close()


@pytest.mark.parametrize(
    ("exc", "says"),
    [(TimeoutError(), "failed: TimeoutError"), (ConnectionResetError(), "ConnectionResetError"),
     (None, "TimeoutError (no answer within 0.2s)")],
    ids=["timeout", "reset", "no-answer"],
)
async def test_a_failed_dns_forward_names_its_reason(
    exc: BaseException | None, says: str, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dns.message

    from tun2proxy.driver import dns as driver_dns
    from tun2proxy.testing import udp_packet

    monkeypatch.setattr(driver_dns, "_FORWARD_TIMEOUT", 0.2)

    class Failing(LoopbackUpstream):
        async def open_tcp(
            self, dst: Address, protocol: asyncio.Protocol, flow: FlowInfo
        ) -> asyncio.Transport:
            if exc is None:
                await asyncio.sleep(10)  # never answers
            raise exc  # type: ignore[misc]

    query = dns.message.make_query("name.example", "A").to_wire()
    cfg = DriverConfig(connect_timeout=1.0, dns="over-tcp", dns_addr=("192.0.2.53", 53))
    async with running(Failing({}), cfg) as (host, driver):
        host.link.feed([udp_packet("10.0.0.2", "192.0.2.53", 5353, 53, query)])
        for _ in range(100):
            await asyncio.sleep(0.01)
            if driver.dns.failed:
                break
        assert driver.dns.failed == 1
    lines = [r.getMessage() for r in caplog.records if "DNS over TCP" in r.getMessage()]
    assert len(lines) == 1 and says in lines[0], lines
    assert not lines[0].endswith(": "), lines


@pytest.mark.parametrize(
    ("first", "name"),
    [
        (tls_client_hello("sni.example"), "sni.example"),
        (b"GET / HTTP/1.1\r\nHost: web.example:8080\r\n\r\n", "web.example"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", None),
    ],
    ids=["tls", "http", "other"],
)
async def test_sniffing_gives_the_upstream_the_name(first: bytes, name: str | None) -> None:
    async with server(_echo) as port:
        up = LoopbackUpstream({443: port})
        cfg = DriverConfig(connect_timeout=1.0, sniff=True, sniff_timeout=2.0)
        async with running(up, cfg) as (host, driver):
            app = host.connect("192.0.2.1", 443)
            await host.wait(app, lambda a: a.established, timeout=5)
            assert up.opened == []  # handshake first, no dial yet
            # The first bytes arrive in two pieces: the sniffer waits for the whole hello.
            await host.send_all(app, first[:7])
            await asyncio.sleep(0.05)
            await host.send_all(app, first[7:])
            await host.wait(app, lambda a: len(a.received) >= len(first), timeout=5)
            assert app.received == first  # nothing lost: the bytes peeked are relayed
            assert [f.domain for f in up.opened] == [name]
            assert driver.stats()["sniff"] == {"found": int(name is not None),
                                               "none": int(name is None)}


async def test_sniffing_waits_boundedly_for_a_silent_app() -> None:
    async with server(_echo) as port:
        up = LoopbackUpstream({25: port})
        cfg = DriverConfig(connect_timeout=1.0, sniff=True, sniff_timeout=0.2)
        async with running(up, cfg) as (host, _):
            app = host.connect("192.0.2.1", 25)
            await host.wait(app, lambda a: a.established, timeout=5)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            while not up.opened and loop.time() - t0 < 5:
                await asyncio.sleep(0.01)
            assert up.opened and up.opened[0].domain is None
            assert 0.15 <= loop.time() - t0 < 2.0


async def test_sniffed_flow_whose_dial_fails_is_reset() -> None:
    cfg = DriverConfig(connect_timeout=1.0, sniff=True, sniff_timeout=0.1)
    async with running(LoopbackUpstream({}), cfg) as (host, driver):
        app = host.connect("192.0.2.1", 443)
        await host.wait(app, lambda a: a.established, timeout=5)
        await host.wait(app, lambda a: a.closed, timeout=5)
        assert app.close_reason in ("reset", "refused")
        assert driver.flows_failed == 1


async def test_upstream_gone_at_write_eof_resets_the_app_and_others_go_on() -> None:
    import errno

    class EofFailsUpstream(LoopbackUpstream):
        async def open_tcp(
            self, dst: Address, protocol: asyncio.Protocol, flow: FlowInfo
        ) -> asyncio.Transport:
            t = await super().open_tcp(dst, protocol, flow)
            if dst.port == 81:
                def write_eof() -> None:
                    raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

                t.write_eof = write_eof  # type: ignore[method-assign]
            return t

    async with server(_echo) as port, running(EofFailsUpstream({80: port, 81: port})) as (
        host, driver,
    ):
        bad = host.connect("192.0.2.1", 81)
        good = host.connect("192.0.2.1", 80)
        await host.send_all(bad, b"bye")
        await host.wait(bad, lambda a: bytes(a.received) == b"bye")
        host.shutdown(bad)  # the app's FIN: write_eof upstream raises
        await host.wait(bad, lambda a: a.closed, timeout=5)
        assert bad.close_reason == "reset"
        # The loop went on: the other flow still carries data both ways.
        await host.send_all(good, b"still here")
        await host.wait(good, lambda a: bytes(a.received) == b"still here")
        assert driver.stats()["relays"] == 1


async def test_an_event_handler_that_raises_resets_only_its_flow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tun2proxy.driver.relay import TcpRelay

    async with server(_echo) as port, running(LoopbackUpstream({80: port})) as (host, driver):
        bad = host.connect("192.0.2.1", 80)
        await host.wait(bad, lambda a: a.conn.state.name == "ESTABLISHED")
        (target,) = driver._relays  # the only flow so far
        good = host.connect("192.0.2.1", 80)
        await host.wait(good, lambda a: a.conn.state.name == "ESTABLISHED")
        original = TcpRelay.on_readable

        def on_readable(self: TcpRelay) -> None:
            if self.flow_id == target:
                raise RuntimeError("a bug in one flow's handling")
            original(self)

        monkeypatch.setattr(TcpRelay, "on_readable", on_readable)
        await host.send_all(bad, b"ping")
        await host.send_all(good, b"ping")
        await host.wait(bad, lambda a: a.closed, timeout=5)
        assert bad.close_reason == "reset"
        await host.wait(good, lambda a: bytes(a.received) == b"ping")
        assert not good.closed
        drops = driver.stats()["drops"]
        assert isinstance(drops, dict) and drops.get("driver-handler-error") == 1, drops


async def test_an_upstream_answering_synchronously_inside_the_pump_loses_nothing() -> None:
    # A channel that replies from inside send(): udp_reply runs while the driver's pump is
    # handling the datagram event. Every datagram must still get its echo, in order.
    from tun2proxy.testing import udp_packet
    from tun2proxy.upstream.base import DatagramReceiver, UdpChannel

    class Mirror(UdpChannel):
        def __init__(self, receiver: DatagramReceiver) -> None:
            self.receiver = receiver

        def send(self, payload: bytes, dst: Address) -> None:
            self.receiver.datagram_received(b"echo:" + payload, dst)

        def close(self) -> None:
            pass

    class MirrorUpstream(LoopbackUpstream):
        async def open_udp(self, flow: FlowInfo, receiver: DatagramReceiver) -> UdpChannel:
            return Mirror(receiver)

    async with running(MirrorUpstream({})) as (host, _):
        sent = [f"d{i}".encode() for i in range(20)]
        host.link.feed([udp_packet("10.0.0.2", "192.0.2.1", 5353, 9999, sent[0])])
        await asyncio.sleep(0.05)  # the session opens with the first datagram
        host.link.feed([udp_packet("10.0.0.2", "192.0.2.1", 5353, 9999, d) for d in sent[1:]])
        udp: list[bytes] = []
        for _ in range(100):
            await asyncio.sleep(0.01)
            udp = [p for p in host.other_packets if parse_ip(p).protocol == 17]
            if len(udp) >= len(sent):
                break
        got = [bytes(p[parse_ip(p).offset + 8 : parse_ip(p).end]) for p in udp]
        assert got == [b"echo:" + d for d in sent]


class HandsOverThenWaits(Upstream):
    """Hands its stream to the relay (``connection_made``), then keeps ``open_tcp`` pending
    until the test releases it (and then fails if told to): what a proxy upstream looks like
    between the proxy's reply and the dial's task resuming."""

    name = "hands-over"

    def __init__(self, port: int, fail_after: bool = False) -> None:
        self.port = port
        self.fail_after = fail_after
        self.handed_over = asyncio.Event()
        self.release = asyncio.Event()

    async def open_tcp(
        self, dst: Address, protocol: asyncio.Protocol, flow: FlowInfo
    ) -> asyncio.Transport:
        loop = asyncio.get_running_loop()
        t, _ = await loop.create_connection(lambda: protocol, "127.0.0.1", self.port)
        self.handed_over.set()
        await self.release.wait()
        if self.fail_after:
            raise UpstreamError("failed after the hand-over", "error")
        return t


async def test_flow_is_accepted_when_the_upstream_hands_over_its_stream() -> None:
    """The SYN-ACK leaves in the wake-up in which the upstream stream became ready (its
    ``connection_made``), not when the dial's task resumes: here the task never resumes
    until the app has already exchanged data (issue 14)."""
    async with server(_echo) as port:
        up = HandsOverThenWaits(port)
        async with running(up) as (host, driver):
            app = host.connect("192.0.2.1", 80)
            await host.wait(app, lambda a: a.established)
            assert up.handed_over.is_set() and not up.release.is_set()
            await host.send_all(app, b"early bird")
            await host.wait(app, lambda a: bytes(a.received) == b"early bird")
            assert driver.flows_opened == 1
            up.release.set()  # the task resumes: nothing is accepted twice
            for _ in range(5):
                await asyncio.sleep(0)
            assert driver.flows_opened == 1 and driver.flows_failed == 0
            await host.send_all(app, b"!")
            await host.wait(app, lambda a: bytes(a.received) == b"early bird!")
            host.shutdown(app)
            await host.wait(app, lambda a: a.closed)
            assert app.close_reason == "closed"


async def test_upstream_failing_after_the_hand_over_resets_the_accepted_app() -> None:
    async with server(_echo) as port:
        up = HandsOverThenWaits(port, fail_after=True)
        async with running(up) as (host, _):
            app = host.connect("192.0.2.1", 80)
            await host.wait(app, lambda a: a.established)
            up.release.set()
            await host.wait(app, lambda a: a.closed, timeout=5)
            assert app.close_reason == "reset"
