"""SOCKS5 UDP ASSOCIATE channels against a minimal server written here (RFC 1928 §7)."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from tun2proxy.errors import UpstreamError
from tun2proxy.proxy.address import Address
from tun2proxy.upstream.socks5 import Socks5Upstream
from tun2proxy.upstream.udp import Socks5UdpChannel, open_socks5_udp

pytestmark = pytest.mark.timeout(20)


class Receiver:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, Address]] = []
        self.lost: list[BaseException | None] = []
        self.event = asyncio.Event()

    def datagram_received(self, payload: bytes, src: Address) -> None:
        self.got.append((payload, src))
        self.event.set()

    def channel_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)
        self.event.set()


def _parse(data: bytes) -> tuple[int, str, int, bytes]:
    frag, atyp = data[2], data[3]
    if atyp == 1:
        host, i = socket.inet_ntoa(data[4:8]), 8
    elif atyp == 4:
        host, i = socket.inet_ntop(socket.AF_INET6, data[4:20]), 20
    else:
        n = data[4]
        host, i = data[5 : 5 + n].decode(), 5 + n
    (port,) = struct.unpack("!H", data[i : i + 2])
    return frag, host, port, data[i + 2 :]


class Server:
    """Control connections on TCP; one UDP relay per association; echoes each datagram back
    as if from its destination (FRAG byte set to 1 when the payload asks for it)."""

    def __init__(
        self, rep: int = 0, bnd_zero: bool = True, announce: str | None = None,
        relay_port: int = 0,
    ) -> None:
        self.rep = rep
        self.relay_port = relay_port
        self.bnd_zero = bnd_zero
        self.announce = announce  # a relay address to name instead of the real one
        self.controls: list[asyncio.StreamWriter] = []
        self.relays: list[socket.socket] = []
        self.requests = 0

    async def start(self) -> int:
        self.srv = await asyncio.start_server(self._control, "127.0.0.1", 0)
        return int(self.srv.sockets[0].getsockname()[1])

    async def _control(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.requests += 1
        _ver, n = await r.readexactly(2)
        await r.readexactly(n)
        w.write(b"\x05\x00")
        head = await r.readexactly(4)
        assert head[1] == 3  # UDP ASSOCIATE
        await r.readexactly(6 if head[3] == 1 else 18)
        if self.rep:
            w.write(bytes([5, self.rep, 0, 1]) + bytes(6))
            await w.drain()
            w.close()
            return
        fresh = not (self.relay_port and self.relays)  # a fixed port: one relay for all
        if fresh:
            relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            relay.bind(("127.0.0.1", self.relay_port))
            relay.setblocking(False)
            self.relays.append(relay)
        relay = self.relays[-1]
        port = relay.getsockname()[1]
        bnd = bytes(4) if self.bnd_zero else socket.inet_aton("127.0.0.1")
        if self.announce is not None:  # behind NAT: an address unreachable from the client
            bnd = socket.inet_aton(self.announce)
            port = 9
        w.write(b"\x05\x00\x00\x01" + bnd + struct.pack("!H", port))
        self.controls.append(w)
        if fresh:
            loop = asyncio.get_running_loop()
            loop.add_reader(relay.fileno(), self._relay_readable, relay)
        await r.read()  # until the client closes its control connection

    def _relay_readable(self, relay: socket.socket) -> None:
        data, addr = relay.recvfrom(65535)
        _frag, host, port, payload = _parse(data)
        frag = 1 if payload == b"fragment me" else 0
        head = b"\x00\x00" + bytes([frag]) + b"\x01" + socket.inet_aton(host) + struct.pack(
            "!H", port
        )
        relay.sendto(head + payload, addr)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for r in self.relays:
            loop.remove_reader(r.fileno())
            r.close()
        self.srv.close()


async def test_round_trip_and_zero_bnd_means_the_proxy() -> None:
    srv = Server(bnd_zero=True)
    port = await srv.start()
    rcv = Receiver()
    ch = await open_socks5_udp("127.0.0.1", port, None, rcv)
    assert ch.transport is not None
    assert ch.transport.get_extra_info("peername")[0] == "127.0.0.1"
    for dst in ("192.0.2.1", "198.51.100.7", "203.0.113.9"):  # one association, many peers
        ch.send(dst.encode(), Address(dst, 7))
    while len(rcv.got) < 3:
        rcv.event.clear()
        await asyncio.wait_for(rcv.event.wait(), 5)
    assert {(p, s) for p, s in rcv.got} == {
        (d.encode(), Address(d, 7)) for d in ("192.0.2.1", "198.51.100.7", "203.0.113.9")
    }
    assert srv.requests == 1
    ch.close()
    srv.close()


async def test_fragmented_datagrams_are_dropped_and_counted() -> None:
    srv = Server()
    port = await srv.start()
    rcv = Receiver()
    ch = await open_socks5_udp("127.0.0.1", port, None, rcv)
    ch.send(b"fragment me", Address("192.0.2.1", 7))
    ch.send(b"whole", Address("192.0.2.1", 7))
    await asyncio.wait_for(rcv.event.wait(), 5)
    await asyncio.sleep(0.1)
    assert [p for p, _ in rcv.got] == [b"whole"]
    assert ch.dropped_fragments == 1
    ch.close()
    srv.close()


async def test_only_the_relay_is_heard() -> None:
    srv = Server()
    port = await srv.start()
    rcv = Receiver()
    ch = await open_socks5_udp("127.0.0.1", port, None, rcv)
    assert ch.transport is not None
    ours = ch.transport.get_extra_info("sockname")
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.sendto(b"\x00\x00\x00\x01" + bytes(6) + b"spoof", ours)
    await asyncio.sleep(0.2)
    assert rcv.got == []
    stranger.close()
    ch.close()
    srv.close()


async def test_control_connection_loss_ends_the_channel() -> None:
    srv = Server()
    port = await srv.start()
    rcv = Receiver()
    ch = await open_socks5_udp("127.0.0.1", port, None, rcv)
    srv.controls[0].close()
    await asyncio.wait_for(rcv.event.wait(), 5)
    assert len(rcv.lost) == 1
    ch.close()
    srv.close()


async def test_unsupported_udp_is_remembered() -> None:
    srv = Server(rep=7)  # command not supported, as microsocks 1.0.3 answers
    port = await srv.start()
    up = Socks5Upstream("127.0.0.1", port)
    from tun2proxy.upstream.base import FlowInfo

    flow = FlowInfo(1, ("10.0.0.1", 5000), ("192.0.2.1", 53), "udp")
    with pytest.raises(UpstreamError) as e1:
        await up.open_udp(flow, Receiver())
    assert e1.value.reason == "unsupported"
    with pytest.raises(UpstreamError):
        await up.open_udp(flow, Receiver())
    assert srv.requests == 1  # the second refusal came from memory: no handshake storm
    srv.close()


async def test_udp_relay_override_replaces_an_unreachable_announced_relay() -> None:
    from tun2proxy.upstream.base import FlowInfo

    flow = FlowInfo(1, ("10.0.0.1", 5000), ("192.0.2.1", 53), "udp")
    free = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    free.bind(("127.0.0.1", 0))
    relay_port = free.getsockname()[1]
    free.close()
    # Behind NAT: the server names TEST-NET-1 (nothing answers there) and port 9 while its
    # relay listens on 127.0.0.1:relay_port.
    srv = Server(announce="192.0.2.1", relay_port=relay_port)
    port = await srv.start()
    ch = await Socks5Upstream("127.0.0.1", port).open_udp(flow, Receiver())
    assert isinstance(ch, Socks5UdpChannel)
    assert ch.transport is not None
    assert ch.transport.get_extra_info("peername") == ("192.0.2.1", 9)  # as announced
    ch.close()
    rcv = Receiver()
    up = Socks5Upstream("127.0.0.1", port, udp_relay=Address("127.0.0.1", relay_port))
    ch = await up.open_udp(flow, rcv)
    assert isinstance(ch, Socks5UdpChannel)
    ch.send(b"via the override", Address("198.51.100.7", 7))
    await asyncio.wait_for(rcv.event.wait(), 5)
    assert rcv.got == [(b"via the override", Address("198.51.100.7", 7))]
    ch.close()
    srv.close()
