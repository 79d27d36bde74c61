"""The built-in udpgw server, spoken to with hand-made bytes (not the client's codec).

Each message: 2-byte little-endian length; flags; conid little-endian; IPv4 address and
port in network order (or 16 bytes of IPv6 with flag 0x08); payload (badvpn udpgw.c).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tun2proxy.udpgw import ServerConfig, UdpgwServer
from tun2proxy.udpgw.cli import main as server_main
from tun2proxy.udpgw.server import parse_endpoint, system_resolver


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[object, ...]) -> None:
        self.t.sendto(b"echo:" + data, addr)


async def _echo(host: str) -> tuple[asyncio.DatagramTransport, int]:
    t, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        _Echo, local_addr=(host, 0)
    )
    return t, t.get_extra_info("sockname")[1]


async def _read_msg(r: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(r.readexactly(2), 5)
    return await asyncio.wait_for(r.readexactly(int.from_bytes(head, "little")), 5)


Started = Callable[..., Awaitable[tuple[UdpgwServer, int]]]


@pytest.fixture
async def server() -> AsyncIterator[Started]:
    made: list[UdpgwServer] = []

    async def start(**kw: object) -> tuple[UdpgwServer, int]:
        s = UdpgwServer(ServerConfig(**kw))  # type: ignore[arg-type]
        await s.start([("127.0.0.1", 0)])
        made.append(s)
        return s, s.ports[0]

    yield start
    for s in made:
        await s.close()


async def test_ipv4_datagram_and_reply_by_hand(server: Started) -> None:
    srv, port = await server()
    echo, eport = await _echo("127.0.0.1")
    r, w = await asyncio.open_connection("127.0.0.1", port)
    p = eport.to_bytes(2, "big")
    # len 3+4+2+3 = 12 -> 0c 00; flags 00; conid 0x0201 -> 01 02; 127.0.0.1; port; "abc"
    w.write(bytes.fromhex("0c00" "00" "0102" "7f000001") + p + b"abc")
    reply = await _read_msg(r)
    # flags 00, conid 01 02 (LE 0x0201), the address the client used, then the payload
    assert reply == bytes.fromhex("00" "0102" "7f000001") + p + b"echo:abc"
    w.close()
    echo.close()
    assert srv.stats()["datagrams_up"] == 1


async def test_ipv6_flag(server: Started) -> None:
    try:
        echo, eport = await _echo("::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    _srv, port = await server()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    addr = bytes(15) + b"\x01"  # ::1
    body = b"\x08" + b"\x07\x00" + addr + eport.to_bytes(2, "big") + b"v6"
    w.write(len(body).to_bytes(2, "little") + body)
    reply = await _read_msg(r)
    assert reply == b"\x08\x07\x00" + addr + eport.to_bytes(2, "big") + b"echo:v6"
    w.close()
    echo.close()


async def test_keepalive_malformed_and_then_data(server: Started) -> None:
    srv, port = await server()
    echo, eport = await _echo("127.0.0.1")
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(bytes.fromhex("0300" "01" "0000"))  # keepalive, 3-byte form
    w.write(bytes.fromhex("0900" "01" "0000" "000000000000"))  # keepalive, 9-byte form
    w.write(bytes.fromhex("0200" "0000"))  # too short for a header: skipped
    w.write(bytes.fromhex("0500" "00" "0100" "7f00"))  # too short for the address: skipped
    w.write(bytes.fromhex("0a00" "00" "0100" "7f000001") + eport.to_bytes(2, "big") + b"z")
    assert (await _read_msg(r)).endswith(b"echo:z")
    st = srv.stats()
    assert st["keepalives"] == 2
    assert st["drops"] == {"short-header": 1, "short-address": 1}
    w.close()
    echo.close()


async def test_address_change_replaces_the_socket(server: Started) -> None:
    srv, port = await server()
    e1, p1 = await _echo("127.0.0.1")
    e2, p2 = await _echo("127.0.0.1")
    r, w = await asyncio.open_connection("127.0.0.1", port)
    for p in (p1, p2):
        w.write(bytes.fromhex("0a00" "00" "0500" "7f000001") + p.to_bytes(2, "big") + b"q")
        reply = await _read_msg(r)
        assert reply[7:9] == p.to_bytes(2, "big")  # the reply names that destination
    assert srv.stats()["conids_opened"] == 2 and srv.stats()["sockets"] == 1
    w.close()
    e1.close()
    e2.close()


async def test_dns_flag_goes_to_the_configured_resolver(server: Started) -> None:
    echo, eport = await _echo("127.0.0.1")
    _srv, port = await server(dns=("127.0.0.1", eport))
    r, w = await asyncio.open_connection("127.0.0.1", port)
    # flags DNS (0x04), conid 3, to 192.0.2.1:53 (TEST-NET: never reached)
    w.write(bytes.fromhex("0c00" "04" "0300" "c0000201" "0035") + b"qry")
    reply = await _read_msg(r)
    assert reply == bytes.fromhex("00" "0300" "c0000201" "0035") + b"echo:qry"
    w.close()
    echo.close()


async def test_per_client_cap_evicts_the_least_recently_used(server: Started) -> None:
    srv, port = await server(max_connections_per_client=2)
    echo, eport = await _echo("127.0.0.1")
    r, w = await asyncio.open_connection("127.0.0.1", port)
    for conid in (1, 2, 3, 4):
        w.write(bytes((10, 0, 0, conid, 0, 127, 0, 0, 1)) + eport.to_bytes(2, "big") + b"c")
        await _read_msg(r)
    st = srv.stats()
    assert st["sockets"] == 2 and st["conids_evicted"] == 2
    assert st["peak_conids_per_client"] == 2
    w.close()
    echo.close()


async def test_max_clients_refuses_the_excess(server: Started) -> None:
    srv, port = await server(max_clients=1)
    _r1, w1 = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(0.05)
    r2, w2 = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(r2.read(), 5) == b""  # closed at once
    assert srv.stats()["clients_refused"] == 1
    w1.close()
    w2.close()


async def test_client_timeout_and_message_split_over_writes(server: Started) -> None:
    _srv, port = await server(client_timeout=0.5)
    echo, eport = await _echo("127.0.0.1")
    r, w = await asyncio.open_connection("127.0.0.1", port)
    msg = bytes.fromhex("0b00" "00" "0900" "7f000001") + eport.to_bytes(2, "big") + b"ab"
    for b in msg:
        w.write(bytes([b]))
        await w.drain()
    assert (await _read_msg(r)).endswith(b"echo:ab")
    assert await asyncio.wait_for(r.read(), 5) == b""  # idle: disconnected
    echo.close()


def test_parse_endpoint_and_resolver(tmp_path: object) -> None:
    assert parse_endpoint("[::1]:7300") == ("::1", 7300)
    assert parse_endpoint("10.0.0.1:7300") == ("10.0.0.1", 7300)
    for bad in ("7300", "host:", "h:0", "h:99999"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)
    import pathlib

    p = pathlib.Path(str(tmp_path)) / "resolv.conf"
    p.write_text("# x\nsearch lan\nnameserver 10.1.2.3\nnameserver 10.9.9.9\n")
    assert system_resolver(str(p)) == ("10.1.2.3", 53)
    assert system_resolver(str(p) + ".missing") is None


def test_cli_bad_listen_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert server_main(["--listen", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HOST:PORT" in err

