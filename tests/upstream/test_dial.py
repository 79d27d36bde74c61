"""upstream.dial and upstream.egress: outbound options, RFC 8305 racing, and the own-endpoint
registry (an Egress's, here one shared by these tests)."""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Any

import pytest

from tun2proxy.upstream import dial
from tun2proxy.upstream.dial import Outbound, udp_socket
from tun2proxy.upstream.egress import Egress
from tun2proxy.upstream.resolve import SystemResolver

#: The egress these tests dial through (a Driver has one of its own).
EG = Egress()
remember_endpoint = EG.remember
forget_endpoint = EG.forget
is_own_endpoint = EG.is_own


async def connect_tcp(host: str, port: int, factory: Any, outbound: Outbound | None = None,
                      **kw: Any) -> Any:
    """``dial.connect_tcp`` through :data:`EG`."""
    return await dial.connect_tcp(host, port, factory, outbound, egress=EG, **kw)

pytestmark = pytest.mark.timeout(30)


class _Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport


async def test_connect_tcp_to_a_literal_and_the_endpoint_is_ours_only_while_dialling() -> None:
    seen: list[bool] = []

    async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        host, port = w.get_extra_info("peername")[:2]
        seen.append(is_own_endpoint(host, port))  # the dial is complete by now
        w.close()

    srv = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    during: list[bool] = []
    real_sock_connect = asyncio.get_running_loop().sock_connect

    async def spy(sock: socket.socket, addr: Any) -> None:
        during.append(is_own_endpoint(*sock.getsockname()[:2]))
        await real_sock_connect(sock, addr)

    loop = asyncio.get_running_loop()
    loop.sock_connect = spy  # type: ignore[method-assign, assignment]
    try:
        t, p = await connect_tcp("127.0.0.1", port, _Sink)
    finally:
        del loop.sock_connect
    assert isinstance(p, _Sink) and p.transport is t
    assert t is not None
    local = t.get_extra_info("sockname")
    assert not is_own_endpoint(local[0], local[1])  # forgotten once connected
    t.close()
    await asyncio.sleep(0.05)
    srv.close()
    assert during in ([True], [])  # [] when the loopback connect completed at once
    assert seen == [False]


async def test_refused_raises_oserror_and_leaves_nothing_registered() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(OSError):
        await connect_tcp("127.0.0.1", port, _Sink)
    assert EG.own_count == 0


async def test_race_takes_the_address_that_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    srv = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    # The first address never answers (TEST-NET-1 blackhole stand-in: a connect that hangs),
    # the second is the server: the race starts it after ATTEMPT_DELAY and it wins.
    infos = [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", port)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
    ]

    async def fake_getaddrinfo(*a: Any, **k: Any) -> list[Any]:
        return infos

    real = loop.sock_connect

    async def hang_for_testnet(sock: socket.socket, addr: Any) -> None:
        if addr[0] == "192.0.2.1":
            await asyncio.sleep(3600)
        await real(sock, addr)

    monkeypatch.setattr(SystemResolver, "getaddrinfo", fake_getaddrinfo)
    monkeypatch.setattr(loop, "sock_connect", hang_for_testnet)
    t0 = loop.time()
    t, _ = await connect_tcp("name.test", port, _Sink)
    assert t.get_extra_info("peername")[0] == "127.0.0.1"
    assert dial.ATTEMPT_DELAY <= loop.time() - t0 < 2.0
    t.close()
    srv.close()
    await asyncio.sleep(0)
    assert EG.own_count == 0  # the losing attempt was cancelled and forgotten


def test_interleave_alternates_families() -> None:
    v6 = [(socket.AF_INET6, 0, 0, "", (f"2001:db8::{i}", 1)) for i in range(3)]
    v4 = [(socket.AF_INET, 0, 0, "", (f"192.0.2.{i}", 1)) for i in range(2)]
    out = dial._interleave(v6 + v4)
    assert [i[0] for i in out] == [socket.AF_INET6, socket.AF_INET, socket.AF_INET6,
                                   socket.AF_INET, socket.AF_INET6]


def test_registry_counts_and_normalises_mapped_addresses() -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::ffff:127.0.0.1", 0))
    port = s.getsockname()[1]
    k1 = remember_endpoint(s)
    k2 = remember_endpoint(s)
    assert is_own_endpoint("127.0.0.1", port)
    assert is_own_endpoint("::ffff:127.0.0.1", port)
    forget_endpoint(k1)
    assert is_own_endpoint("127.0.0.1", port)
    forget_endpoint(k2)
    assert not is_own_endpoint("127.0.0.1", port)
    assert not is_own_endpoint("not an address", 1)
    s.close()


def test_udp_socket_applies_options_and_connects() -> None:
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    sock = udp_socket(socket.AF_INET, Outbound(fwmark=7, bind="127.0.0.1"),
                      remote=peer.getsockname())
    try:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 7
        assert sock.getsockname()[0] == "127.0.0.1"
        assert sock.getpeername() == peer.getsockname()
        assert sock.getblocking() is False
    finally:
        sock.close()
        peer.close()


def test_outbound_describe_and_default() -> None:
    assert Outbound().describe() == ""
    assert Outbound(interface="eth0", fwmark=3).describe() == "interface=eth0 fwmark=3"
    before = dial.default_outbound()
    try:
        dial.set_default_outbound(Outbound(fwmark=1))
        assert dial.default_outbound().fwmark == 1
    finally:
        dial.set_default_outbound(before)


def test_bind_of_the_other_family_is_ignored() -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        Outbound(bind="127.0.0.1").apply(s)
        assert s.getsockname()[1] == 0  # not bound: the address is IPv4
    finally:
        s.close()


@pytest.mark.parametrize(
    ("family", "wildcard"), [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]
)
def test_a_wildcard_bound_socket_is_ours_from_any_local_address_on_its_port(
    family: int, wildcard: str
) -> None:
    # A direct UDP session's socket is bound to the wildcard address: its datagrams leave from
    # whatever address the route picks (the TUN's own, in a loop), so that is ours too.
    s = udp_socket(family)
    port = s.getsockname()[1]
    key = remember_endpoint(s)
    try:
        assert key == (wildcard, port)
        local = "127.0.0.1" if family == socket.AF_INET else "::1"
        assert is_own_endpoint(local, port)
        if family == socket.AF_INET6:
            assert is_own_endpoint("127.0.0.1", port)  # dual-stack: IPv4 leaves from it too
        else:
            assert not is_own_endpoint("::1", port)  # an IPv4 socket sends no IPv6
        assert not is_own_endpoint("192.0.2.1", port)  # not an address of this host
        assert not is_own_endpoint(local, 1 if port != 1 else 2)  # another port
    finally:
        forget_endpoint(key)
        s.close()
    assert not is_own_endpoint("127.0.0.1", port)


async def test_a_direct_udp_session_registers_its_socket_until_closed() -> None:
    from tun2proxy.proxy.address import Address
    from tun2proxy.upstream.udp import open_direct_udp

    class Receiver:
        def datagram_received(self, payload: bytes, src: Address) -> None:
            pass

        def channel_lost(self, exc: BaseException | None) -> None:
            pass

    ch = await open_direct_udp(socket.AF_INET, Receiver(), egress=EG)
    assert ch.transport is not None
    port = ch.transport.get_extra_info("sockname")[1]
    assert is_own_endpoint("127.0.0.1", port)
    ch.close()
    await asyncio.sleep(0)
    assert not is_own_endpoint("127.0.0.1", port)
    assert EG.own_count == 0


@pytest.mark.parametrize("mark", [1 << 31, (1 << 32) - 1])
def test_a_mark_of_2_31_and_above_is_set(mark: int) -> None:
    # SO_MARK is an unsigned 32-bit value; setsockopt's int form takes a C int, so these
    # marks were a TypeError on every flow (issue 15 item 9).
    sock = udp_socket(socket.AF_INET, Outbound(fwmark=mark))
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK, 4)
        assert int.from_bytes(raw, sys.byteorder) == mark
    finally:
        sock.close()
