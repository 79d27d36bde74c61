"""UoT channels against a scripted SOCKS5 + UoT peer written here from sing's description
(independent of :mod:`tun2proxy.proxy.uot`'s parser)."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from tun2proxy.errors import MalformedPacket, UpstreamError
from tun2proxy.proxy.address import Address
from tun2proxy.upstream.base import FlowInfo
from tun2proxy.upstream.socks5 import Socks5Upstream
from tun2proxy.upstream.uot import MAX_BUFFERED, UotUdpChannel

pytestmark = pytest.mark.timeout(20)

FLOW = FlowInfo(1, ("10.0.0.1", 5000), ("192.0.2.1", 9999), "udp")


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

    async def wait(self, n: int) -> None:
        while len(self.got) + len(self.lost) < n:
            self.event.clear()
            await asyncio.wait_for(self.event.wait(), 5)


async def _read_uot_addr(r: asyncio.StreamReader) -> bytes:
    """One address in uot's form (0 IPv4, 1 IPv6, 2 name), returned raw."""
    fam = await r.readexactly(1)
    if fam == b"\x00":
        return fam + await r.readexactly(6)
    if fam == b"\x01":
        return fam + await r.readexactly(18)
    assert fam == b"\x02", fam
    n = await r.readexactly(1)
    return fam + n + await r.readexactly(n[0] + 2)


class Peer:
    """SOCKS5 without auth; CONNECT to the UoT v2 magic name, then the request, then frames,
    each echoed back with the same address (``mode`` changes the answer)."""

    def __init__(self, mode: str = "echo") -> None:
        self.mode = mode
        self.targets: list[bytes] = []
        self.requests: list[bytes] = []
        self.frames: list[tuple[bytes, bytes]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.reading = asyncio.Event()

    async def start(self) -> int:
        self.srv = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return int(self.srv.sockets[0].getsockname()[1])

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.writers.append(w)
        try:
            _ver, n = await r.readexactly(2)
            await r.readexactly(n)
            w.write(b"\x05\x00")
            head = await r.readexactly(5)  # VER CMD RSV ATYP=3 LEN
            assert head[:4] == b"\x05\x01\x00\x03", head
            target = await r.readexactly(head[4] + 2)
            self.targets.append(target)
            if self.mode == "refuse":
                w.write(b"\x05\x04\x00\x01" + bytes(6))  # host unreachable
                await w.drain()
                w.close()
                return
            w.write(b"\x05\x00\x00\x01" + bytes(6))
            # the request: IsConnect, then a SOCKS5 address
            is_connect = await r.readexactly(1)
            atyp = await r.readexactly(1)
            size = {1: 6, 4: 18}.get(atyp[0])
            rest = await r.readexactly(size) if size else None
            if rest is None:
                n1 = await r.readexactly(1)
                rest = n1 + await r.readexactly(n1[0] + 2)
            self.requests.append(is_connect + atyp + rest)
            if self.mode == "stall":
                await asyncio.sleep(30)
                return
            self.reading.set()
            while True:
                addr = await _read_uot_addr(r)
                (length,) = struct.unpack("!H", await r.readexactly(2))
                data = await r.readexactly(length)
                self.frames.append((addr, data))
                if self.mode == "garbage":
                    w.write(b"\x03garbage")
                elif self.mode == "mapped" and addr[0] == 0:
                    w.write(b"\x01" + bytes(10) + b"\xff\xff" + addr[1:7]
                            + struct.pack("!H", length) + data)
                elif self.mode == "close":
                    w.close()
                    return
                else:
                    w.write(addr + struct.pack("!H", length) + data)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the test ended the connection (or the loop)

    def close(self) -> None:
        for w in self.writers:
            w.close()
        self.srv.close()


async def _open(mode: str = "echo") -> tuple[Peer, UotUdpChannel, Receiver]:
    peer = Peer(mode)
    port = await peer.start()
    rcv = Receiver()
    up = Socks5Upstream("127.0.0.1", port, uot=2)
    ch = await up.open_udp(FLOW, rcv)
    assert isinstance(ch, UotUdpChannel)
    return peer, ch, rcv


async def test_round_trips_to_many_destinations_over_one_stream() -> None:
    peer, ch, rcv = await _open()
    dsts = [Address("192.0.2.1", 9999), Address("fd20::3", 53), Address("name.test", 7)]
    for i, d in enumerate(dsts):
        ch.send(f"hello {i}".encode(), d)
    ch.send(b"", dsts[0])  # an empty datagram is a frame too
    await rcv.wait(4)
    assert rcv.got == [
        (b"hello 0", dsts[0]), (b"hello 1", dsts[1]), (b"hello 2", dsts[2]), (b"", dsts[0]),
    ]
    # the stream went to sp.v2.udp-over-tcp.arpa port 0, one for the whole session
    assert peer.targets == [b"sp.v2.udp-over-tcp.arpa" + b"\x00\x00"]
    # the request: non-connect (0), the first destination as SOCKS5 ATYP 1 (IPv4)
    assert peer.requests == [b"\x00\x01" + socket.inet_aton("192.0.2.1") + b"\x27\x0f"]
    assert peer.frames[1][0] == b"\x01" + socket.inet_pton(socket.AF_INET6, "fd20::3") + b"\x00\x35"
    assert peer.frames[2][0] == b"\x02\x09name.test\x00\x07"
    assert ch.sent == 4 and ch.received == 4
    ch.close()
    ch.close()  # idempotent
    await asyncio.sleep(0.05)
    assert rcv.lost == []  # closed by us: the receiver is not told
    peer.close()


async def test_large_datagrams_and_the_size_limits() -> None:
    peer, ch, rcv = await _open()
    edge = bytes(range(256)) * 64  # 16,384 bytes: the largest sing-box carries
    ch.send(edge, Address("192.0.2.1", 9))
    ch.send(edge + b"!", Address("192.0.2.1", 9))  # sing-box would reset the stream: dropped
    ch.max_datagram = 0xFFFF  # a server with bigger buffers: up to the frame limit
    big = bytes(range(256)) * 255 + b"x" * 255  # 65,535 bytes: the largest frame
    ch.send(big, Address("192.0.2.1", 9))
    ch.send(b"y" * 65536, Address("192.0.2.1", 9))  # does not fit a frame
    await rcv.wait(2)
    assert rcv.got == [(edge, Address("192.0.2.1", 9)), (big, Address("192.0.2.1", 9))]
    assert ch.dropped_too_big == 2
    ch.close()
    peer.close()


async def test_ipv4_mapped_reply_is_reported_as_ipv4() -> None:
    peer, ch, rcv = await _open("mapped")
    ch.send(b"m", Address("192.0.2.1", 9999))
    await rcv.wait(1)
    assert rcv.got == [(b"m", Address("192.0.2.1", 9999))]
    ch.close()
    peer.close()


async def test_stream_end_ends_the_channel_once() -> None:
    peer, ch, rcv = await _open("close")
    ch.send(b"bye", Address("192.0.2.1", 9999))
    await rcv.wait(1)
    await asyncio.sleep(0.05)
    assert len(rcv.lost) == 1 and ch.closed
    ch.send(b"after", Address("192.0.2.1", 9999))  # ignored, no error
    peer.close()


async def test_malformed_reply_ends_the_channel() -> None:
    peer, ch, rcv = await _open("garbage")
    ch.send(b"x", Address("192.0.2.1", 9999))
    await rcv.wait(1)
    assert len(rcv.lost) == 1
    assert isinstance(rcv.lost[0], MalformedPacket)
    assert rcv.got == []
    peer.close()


async def test_a_peer_that_does_not_read_costs_bounded_memory() -> None:
    peer, ch, _rcv = await _open("stall")
    assert ch.transport is not None
    ch.max_datagram = 0xFFFF
    payload = b"z" * 60000
    for _ in range(400):  # 24 MB offered; the kernel's buffers and ours take a bounded part
        ch.send(payload, Address("192.0.2.1", 9999))
        assert ch.transport.get_write_buffer_size() <= MAX_BUFFERED + 70000
        await asyncio.sleep(0)
    assert ch.dropped_congested > 0
    assert ch.sent + ch.dropped_congested == 400
    ch.close()
    peer.close()


async def test_a_proxy_that_refuses_the_magic_name_fails_the_open() -> None:
    peer = Peer("refuse")
    port = await peer.start()
    up = Socks5Upstream("127.0.0.1", port, uot=2)
    with pytest.raises(UpstreamError) as e:
        await up.open_udp(FLOW, Receiver())
    assert e.value.reason == "unreachable"
    assert "UDP-over-TCP" in str(e.value)
    peer.close()


async def test_version_1_has_no_request_header() -> None:
    seen: list[bytes] = []

    async def conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readexactly(3)
        w.write(b"\x05\x00")
        head = await r.readexactly(5)
        seen.append(await r.readexactly(head[4] + 2))
        w.write(b"\x05\x00\x00\x01" + bytes(6))
        seen.append(await r.readexactly(7 + 2 + 1))  # straight to the first frame
        w.close()

    srv = await asyncio.start_server(conn, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    rcv = Receiver()
    ch = await Socks5Upstream("127.0.0.1", port, uot=1).open_udp(FLOW, rcv)
    ch.send(b"1", Address("192.0.2.1", 9999))
    await rcv.wait(1)
    assert seen == [
        b"sp.udp-over-tcp.arpa\x00\x00",
        b"\x00" + socket.inet_aton("192.0.2.1") + b"\x27\x0f" + b"\x00\x01" + b"1",
    ]
    srv.close()
