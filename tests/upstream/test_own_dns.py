"""OwnResolver: tun2proxy's own lookups against a real UDP DNS peer on loopback."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tun2proxy.upstream import dial
from tun2proxy.upstream.egress import Egress
from tun2proxy.upstream.own_dns import OwnResolver, build_query, parse_answer

ZONE = {"proxy.test": ["192.0.2.9", "2001:db8::9"], "v4only.test": ["192.0.2.10"]}


def _answer(query: bytes, rcode: int = 0) -> bytes:
    qid, _flags, _qd = struct.unpack_from("!HHH", query)
    off, labels = 12, []
    while query[off]:
        labels.append(query[off + 1:off + 1 + query[off]].decode())
        off += 1 + query[off]
    qtype = struct.unpack_from("!H", query, off + 1)[0]
    question = query[12:off + 5]
    name = ".".join(labels).lower()
    if name not in ZONE:
        return struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question
    want = 4 if qtype == 1 else 16
    rrs = [socket.inet_pton(socket.AF_INET if want == 4 else socket.AF_INET6, a)
           for a in ZONE[name] if (":" in a) == (want == 16)]
    # a CNAME first, as resolvers often send: it must be skipped
    body = b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 60, 2) + b"\xc0\x0c"
    for r in rrs:
        body += b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, 120, len(r)) + r
    return struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, 1 + len(rrs), 0, 0) + question + body


@pytest.fixture
def dns_server() -> Iterator[tuple[int, list[bytes]]]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.2)
    seen: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                q, peer = s.recvfrom(4096)
            except TimeoutError:
                continue
            seen.append(q)
            s.sendto(b"\x00junk", peer)  # not an answer: must be ignored
            s.sendto(_answer(q), peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield s.getsockname()[1], seen
    stop.set()
    t.join(2)
    s.close()


def test_query_and_answer_round_trip() -> None:
    q = build_query(0x1234, "Proxy.Test.", 1)
    assert q[:2] == b"\x12\x34"
    assert b"\x05Proxy\x04Test\x00" in q
    rcode, addrs, ttl = parse_answer(_answer(q), 0x1234, 1)
    assert (rcode, addrs, ttl) == (0, ["192.0.2.9"], 120)
    with pytest.raises(ValueError, match="not our answer"):
        parse_answer(_answer(q), 0x4321, 1)
    with pytest.raises(ValueError, match="malformed"):
        parse_answer(_answer(q)[:20], 0x1234, 1)


async def test_resolves_both_families_and_caches(
    dns_server: tuple[int, list[bytes]], tmp_path: Path
) -> None:
    port, seen = dns_server
    r = OwnResolver(["127.0.0.1", "not-an-ip"], port=port, hosts_file=str(tmp_path / "none"))
    assert r.nameservers == ["127.0.0.1"]
    assert sorted(await r.lookup("proxy.test")) == ["192.0.2.9", "2001:db8::9"]
    n = len(seen)
    assert sorted(await r.lookup("PROXY.test.")) == ["192.0.2.9", "2001:db8::9"]
    assert len(seen) == n  # from the cache
    infos = await r.getaddrinfo("proxy.test", 1080, family=socket.AF_INET)
    assert infos == [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                      ("192.0.2.9", 1080))]
    with pytest.raises(socket.gaierror):
        await r.lookup("missing.test")
    with pytest.raises(socket.gaierror):
        await r.getaddrinfo("v4only.test", 1, family=socket.AF_INET6)


async def test_hosts_file_and_literals_need_no_query(
    dns_server: tuple[int, list[bytes]], tmp_path: Path
) -> None:
    port, seen = dns_server
    hosts = tmp_path / "hosts"
    hosts.write_text("# comment\n192.0.2.77 Box box.lan  # the box\n")
    r = OwnResolver(["127.0.0.1"], port=port, hosts_file=str(hosts))
    assert await r.lookup("box.lan") == ["192.0.2.77"]
    assert await r.lookup("192.0.2.5") == ["192.0.2.5"]
    assert seen == []


async def test_a_silent_nameserver_is_skipped_within_the_timeout(
    dns_server: tuple[int, list[bytes]], tmp_path: Path
) -> None:
    port, _ = dns_server
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.2", port))  # answers nothing
    try:
        r = OwnResolver(["127.0.0.2", "127.0.0.1"], port=port, timeout=0.3,
                        hosts_file=str(tmp_path / "none"))
        assert "192.0.2.9" in await r.lookup("proxy.test")
    finally:
        silent.close()


async def test_dial_uses_the_installed_resolver() -> None:
    asked: list[str] = []

    async def fake(host: str, port: int | None, family: int, type: int) -> list[object]:
        asked.append(host)
        return [(socket.AF_INET, type, 0, "", ("127.0.0.1", port))]

    eg = Egress(resolver=fake)
    infos = await eg.getaddrinfo("anything.test", 80)
    assert infos[0][4] == ("127.0.0.1", 80)
    await eg.getaddrinfo("127.0.0.1", 80)  # literals never ask
    assert asked == ["anything.test"]
    assert (await Egress().getaddrinfo("localhost", 80, socket.AF_INET))[0][4][0] == "127.0.0.1"
    # The deprecated process-wide hook still applies to egresses made afterwards.
    dial.set_resolver(fake)
    try:
        infos = await dial.getaddrinfo("other.test", 80)
        assert infos[0][4] == ("127.0.0.1", 80)
        assert asked == ["anything.test", "other.test"]
    finally:
        dial.set_resolver(None)
    assert (await dial.getaddrinfo("localhost", 80, family=socket.AF_INET))[0][4][0] == "127.0.0.1"
    await asyncio.sleep(0)
