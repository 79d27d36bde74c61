"""Every built-in proxy upstream runs :func:`check_upstream` through real servers on loopback.

Each upstream x server pair runs every check except the ones that server (or the protocol)
makes impossible; each exclusion names its reason, and the reason is proved below with a
plain client — raw sockets for SOCKS4 and HTTP, the sans-I/O codec of
:mod:`tun2proxy.proxy.shadowsocks` over plain asyncio streams for Shadowsocks, no
``tun2proxy.upstream`` code at all — that sees the same behaviour through the same server, and
passes the same probe through a server that does not have the fault. So an exclusion that
stops being needed (a server fixed upstream) fails here rather than hiding a regression.

Servers: dante (SOCKS4, with ``debug: 1`` so it passes resets on), Twisted's SOCKS4/4a server,
tinyproxy (HTTP CONNECT), ss-server from shadowsocks-libev (AEAD-2017), and one sing-box with
HTTP, SOCKS (4, 4a, 5) and Shadowsocks inbounds (AEAD-2017 and 2022). Missing tools skip the
tests that need them with the reason, except under ``CI=true``, where they fail. DirectUpstream,
Socks5Upstream through dante and RejectUpstream are covered in ``test_conformance.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from tun2proxy.proxy.address import Address
from tun2proxy.testing.conformance import CHECKS, check_upstream, run_check_upstream
from tun2proxy.upstream.base import FlowInfo, Upstream
from tun2proxy.upstream.http import HttpConnectUpstream
from tun2proxy.upstream.socks4 import Socks4Upstream
from tun2proxy.upstream.socks5 import Socks5Upstream

from .proxy_servers import (
    LOOPBACK,
    Proc,
    free_port,
    start_dante,
    start_sing_box,
    start_ss_server,
    start_tinyproxy,
    start_twisted_socks,
)
from .ss_relay import ReferenceSsServer

pytestmark = pytest.mark.timeout(120)

# Big enough to overflow the socket buffers of a paused reader, small enough to stay quick.
SIZE = 4 << 20
AEAD = ("aes-128-gcm", "aes-256-gcm", "chacha20-ietf-poly1305")
SS2022 = ("2022-blake3-aes-128-gcm", "2022-blake3-aes-256-gcm", "2022-blake3-chacha20-poly1305")
PASSWORD = "c0nformance pa55"

# -- why a check cannot pass through a server (each reason is proved by a plain client below)

#: The server closes both directions at the client's EOF: a reply sent after it is lost.
CLOSES_AT_CLIENT_EOF = "closes both directions at the client's EOF (no half-close)"
#: The server closes both directions at the destination's EOF: what we send after it is lost.
CLOSES_AT_SERVER_EOF = "closes both directions at the destination's EOF (no half-close)"
#: large_transfer's destination half-closes as soon as it has sent its bytes, while ours are
#: still on their way; a server that closes at that EOF cuts them off (timing decides how many).
CUTS_UPLOAD = "the destination's EOF comes while we still upload, and the server closes then"
#: The server ends the client's stream with FIN when the destination resets.
RST_AS_FIN = "turns the destination's RST into a FIN"
#: Shadowsocks has no connect reply: open_tcp cannot see a refusal before it returns; the
#: refused destination shows as the stream closing (tested below: the app gets a reset).
SS_NO_REPLY = "Shadowsocks has no connect reply (a refusal ends the stream later)"
#: sing-box's HTTP inbound answers 200 before it dials, then resets the stream.
HTTP_200_FIRST = "sing-box's HTTP inbound answers 200 before it dials (then resets)"

TWISTED_NA = {
    "large_transfer": CUTS_UPLOAD,
    "half_close_by_us": CLOSES_AT_CLIENT_EOF,
    "half_close_by_server": CLOSES_AT_SERVER_EOF,
    "reset": RST_AS_FIN,
}
TINYPROXY_NA = dict(TWISTED_NA)
SING_BOX_PROXY_NA = {"reset": RST_AS_FIN}
SS_SERVER_NA = {
    "large_transfer": CUTS_UPLOAD,
    "half_close_by_us": CLOSES_AT_CLIENT_EOF,
    "half_close_by_server": CLOSES_AT_SERVER_EOF,
    "refused": SS_NO_REPLY,
    "reset": RST_AS_FIN,
}
SING_BOX_SS_NA = {
    "large_transfer": CUTS_UPLOAD,
    "half_close_by_server": CLOSES_AT_SERVER_EOF,  # sing-box's HTTP and SOCKS inbounds do not
    "refused": SS_NO_REPLY,
    "reset": RST_AS_FIN,
}


def _psk(method: str) -> str:
    n = 16 if "128" in method else 32
    return base64.b64encode(hashlib.sha256(method.encode()).digest()[:n]).decode()


def _secret(method: str) -> str:
    return _psk(method) if method.startswith("2022-") else PASSWORD


# --------------------------------------------------------------------------- the servers


@pytest.fixture(scope="module")
def tmp() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="t2p-conf-builtin-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def dante(tmp: Path) -> Iterator[int]:
    proc, port = start_dante(tmp)
    yield port
    proc.stop()


@pytest.fixture(scope="module")
def twisted(tmp: Path) -> Iterator[int]:
    proc, port = start_twisted_socks(tmp)
    yield port
    proc.stop()


@pytest.fixture(scope="module")
def tinyproxy(tmp: Path) -> Iterator[int]:
    proc, port = start_tinyproxy(tmp)
    yield port
    proc.stop()


@pytest.fixture(scope="module")
def ss_server(tmp: Path) -> Iterator[dict[str, int]]:
    """One ss-server per AEAD-2017 method: method -> port."""
    procs: list[Proc] = []
    ports: dict[str, int] = {}
    try:
        for method in AEAD:
            proc, ports[method] = start_ss_server(tmp, method, PASSWORD)
            procs.append(proc)
        yield ports
    finally:
        for proc in procs:
            proc.stop()


@pytest.fixture(scope="module")
def sing_box(tmp: Path) -> Iterator[dict[str, int]]:
    """One sing-box: ``http``, ``socks`` (4, 4a and 5) and one Shadowsocks inbound per method
    (AEAD-2017 and 2022): name -> port."""
    ports = {name: free_port() for name in ("http", "socks", *AEAD, *SS2022)}
    inbounds: list[dict[str, object]] = [
        {"type": "http", "listen_port": ports["http"]},
        {"type": "socks", "listen_port": ports["socks"]},
    ]
    inbounds += [
        {"type": "shadowsocks", "listen_port": ports[m], "method": m, "password": _secret(m)}
        for m in (*AEAD, *SS2022)
    ]
    proc = start_sing_box(tmp, inbounds)
    yield ports
    proc.stop()


def _ss_upstream(port: int, method: str) -> Upstream:
    pytest.importorskip("cryptography")
    if method.startswith("2022-"):
        pytest.importorskip("blake3")
    from tun2proxy.upstream.shadowsocks import ShadowsocksUpstream

    return ShadowsocksUpstream(LOOPBACK, port, method, _secret(method))


# --------------------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class Case:
    """One upstream through one server: which checks cannot pass there, and why."""

    id: str
    server: str  # the fixture
    key: str  # the port's key in a dict fixture ("" for a plain port)
    make: Callable[[int], Upstream]
    not_applicable: dict[str, str]
    udp: bool = False
    host: str = LOOPBACK  # where the check's own servers listen (the destinations)


def _socks4(port: int) -> Upstream:
    return Socks4Upstream(LOOPBACK, port, socks4a=False)


def _socks4a(port: int) -> Upstream:
    return Socks4Upstream(LOOPBACK, port, socks4a=True)


def _http(port: int) -> Upstream:
    return HttpConnectUpstream(LOOPBACK, port)


def _socks5(port: int) -> Upstream:
    return Socks5Upstream(LOOPBACK, port)


def _ss(method: str) -> Callable[[int], Upstream]:
    return lambda port: _ss_upstream(port, method)


CASES = [
    # dante answers SOCKS4a requests with "rejected": SOCKS4a goes through Twisted and sing-box.
    Case("socks4-dante", "dante", "", _socks4, {}),
    Case("socks4-twisted", "twisted", "", _socks4, TWISTED_NA),
    Case("socks4a-twisted", "twisted", "", _socks4a, TWISTED_NA),
    Case("socks4-sing-box", "sing_box", "socks", _socks4, SING_BOX_PROXY_NA),
    Case("socks4a-sing-box", "sing_box", "socks", _socks4a, SING_BOX_PROXY_NA),
    Case("http-tinyproxy", "tinyproxy", "", _http, TINYPROXY_NA),
    Case("http-sing-box", "sing_box", "http", _http,
         {**SING_BOX_PROXY_NA, "refused": HTTP_200_FIRST}),
    # A second SOCKS5 server beside dante (test_conformance.py), with UDP ASSOCIATE.
    Case("socks5-sing-box", "sing_box", "socks", _socks5, SING_BOX_PROXY_NA, udp=True),
    *(Case(f"ss-{m}-ss-server", "ss_server", m, _ss(m), SS_SERVER_NA, udp=True) for m in AEAD),
    *(Case(f"ss-{m}-sing-box", "sing_box", m, _ss(m), SING_BOX_SS_NA, udp=True)
      for m in (*AEAD, *SS2022)),
    # IPv6 destinations (SOCKS4 and 4a cannot carry them): the address forms of HTTP CONNECT
    # ("[::1]:port"), SOCKS5 and the Shadowsocks header.
    Case("http-tinyproxy-ipv6", "tinyproxy", "", _http, TINYPROXY_NA, host="::1"),
    Case("http-sing-box-ipv6", "sing_box", "http", _http,
         {**SING_BOX_PROXY_NA, "refused": HTTP_200_FIRST}, host="::1"),
    Case("socks5-sing-box-ipv6", "sing_box", "socks", _socks5, SING_BOX_PROXY_NA, udp=True,
         host="::1"),
    Case("ss-aes-256-gcm-ss-server-ipv6", "ss_server", "aes-256-gcm", _ss("aes-256-gcm"),
         SS_SERVER_NA, udp=True, host="::1"),
    Case("ss-2022-blake3-aes-256-gcm-sing-box-ipv6", "sing_box", "2022-blake3-aes-256-gcm",
         _ss("2022-blake3-aes-256-gcm"), SING_BOX_SS_NA, udp=True, host="::1"),
]


def _ipv6_loopback() -> bool:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_builtin_upstream_passes_through_a_real_server(
    case: Case, request: pytest.FixtureRequest
) -> None:
    if case.host == "::1" and not _ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    served = request.getfixturevalue(case.server)
    port = int(served[case.key] if case.key else served)
    checks = [c for c in CHECKS if c not in case.not_applicable and (case.udp or c != "udp")]
    report = run_check_upstream(lambda: case.make(port), host=case.host, size=SIZE,
                                udp=case.udp, checks=checks, timeout=20.0)
    assert [r.name for r in report.results] == checks


def test_every_exclusion_names_a_known_check_and_a_reason() -> None:
    for case in CASES:
        assert set(case.not_applicable) <= set(CHECKS), case.id
        assert all(case.not_applicable.values()), case.id


def test_every_check_passes_somewhere_for_each_upstream_but_the_documented_ones() -> None:
    """What no real server here lets an upstream pass; docs/upstreams.md says the same."""
    never: dict[str, set[str]] = {}
    for case in CASES:
        if case.host != LOOPBACK:
            continue
        kind = case.id.split("-")[0]
        ran = set(CHECKS) - set(case.not_applicable) - (set() if case.udp else {"udp"})
        never[kind] = never.get(kind, set(CHECKS)) - ran
    assert never == {
        "socks4": {"udp"},  # SOCKS4 has no UDP
        # No SOCKS4a server here passes a reset on (dante, which does, refuses SOCKS4a); the
        # handshake code SOCKS4a shares with SOCKS4 passes `reset` through dante.
        "socks4a": {"udp", "reset"},
        "http": {"udp", "reset"},  # no UDP; no HTTP proxy here passes a reset on (as above)
        "socks5": {"reset"},  # (through dante with `debug: 1` in test_conformance.py)
        "ss": {"large_transfer", "half_close_by_server", "refused", "reset"},
    }


@pytest.mark.parametrize("method", AEAD)
async def test_shadowsocks_passes_what_real_servers_exclude_through_a_half_closing_relay(
    method: str,
) -> None:
    """The Shadowsocks exclusions are the servers', not ShadowsocksUpstream's: through an
    in-process AEAD-2017 relay that half-closes and passes resets on (tests/testing/ss_relay.py,
    built from the sans-I/O codec) every check but `refused` (the protocol's) passes. The 2022
    methods share the same transport; their codec is run through sing-box above."""
    checks = [c for c in CHECKS if c not in ("refused", "udp")]
    async with ReferenceSsServer(method, PASSWORD) as port:
        report = await check_upstream(lambda: _ss_upstream(port, method), size=SIZE,
                                      checks=checks, timeout=20.0)
    report.raise_for_failures()
    assert [r.name for r in report.results] == checks


# --------------------------------------------------------------------------- the proofs
#
# A plain client — no tun2proxy.upstream code — runs three probes through a server:
#   upload_after_server_eof  the destination sends 1000 bytes and half-closes; once we have
#                            read its EOF we send 64 KiB and half-close: does it get them all?
#   reply_after_client_eof   we send 1000 bytes and half-close; the destination reads to our
#                            EOF, then replies 1000 bytes: do we get them?
#   reset                    the destination resets (SO_LINGER 0) mid-stream: do we see a
#                            reset ("reset") or a clean end ("eof")?
# "delivered" is what a half-closing, reset-passing server gives (dante shows it); "cut" is
# the server closing both directions at the first EOF.

_UPLOAD = 64 * 1024
_REPLY = 1000
_PROBE_DEADLINE = 5.0


class _Codec(Protocol):
    """What a plain tunnel needs of a Shadowsocks session (or of no encryption at all)."""

    def first_bytes(self, payload: bytes = b"") -> bytes: ...

    def encrypt(self, data: bytes) -> bytes: ...

    def decrypt(self, data: bytes | bytearray | memoryview) -> bytes: ...

    def feed_eof(self) -> None: ...


class _Clear:
    """No encryption (SOCKS4, HTTP)."""

    def first_bytes(self, payload: bytes = b"") -> bytes:
        return payload

    def encrypt(self, data: bytes) -> bytes:
        return data

    def decrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        return bytes(data)

    def feed_eof(self) -> None:
        pass


class PlainTunnel:
    """One stream through a proxy, opened by hand; for Shadowsocks the bytes go through the
    sans-I/O session (tun2proxy.proxy), never through tun2proxy.upstream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 codec: _Codec) -> None:
        self.reader = reader
        self.writer = writer
        self.codec = codec

    def write(self, data: bytes) -> None:
        self.writer.write(self.codec.encrypt(data))

    async def read_to_end(self, limit: int = 1 << 20) -> tuple[bytes, str]:
        """Everything until the end, and how it ended: ``eof`` or ``reset``."""
        got = bytearray()
        try:
            while len(got) < limit:
                raw = await self.reader.read(65536)
                if not raw:
                    with contextlib.suppress(Exception):  # cut inside a chunk: still an end
                        self.codec.feed_eof()
                    return bytes(got), "eof"
                got += self.codec.decrypt(raw)
        except ConnectionError:
            return bytes(got), "reset"
        return bytes(got), "limit"

    async def read_exactly(self, n: int) -> bytes:
        got = bytearray()
        while len(got) < n:
            raw = await self.reader.read(65536)
            if not raw:
                raise EOFError(f"the stream ended after {len(got)} of {n} bytes")
            got += self.codec.decrypt(raw)
        return bytes(got)

    def close(self) -> None:
        self.writer.transport.abort()


def _ss_session(method: str, dst: Address) -> _Codec:
    pytest.importorskip("cryptography")
    if method.startswith("2022-"):
        pytest.importorskip("blake3")
        from tun2proxy.proxy.shadowsocks import Ss2022TcpSession

        return Ss2022TcpSession(method, _secret(method), dst, os.urandom, time.time)
    from tun2proxy.proxy.shadowsocks import AeadTcpSession, password_to_key

    return AeadTcpSession(method, password_to_key(method, PASSWORD), dst, os.urandom)


async def plain_open(kind: str, port: int, dst_port: int, first: bytes) -> PlainTunnel:
    """Connect through the proxy on ``port`` (``socks4``, ``http`` or a Shadowsocks method)
    to 127.0.0.1:``dst_port`` by hand and send ``first``."""
    codec: _Codec = _Clear()
    if kind not in ("socks4", "http"):  # built first: it may skip
        codec = _ss_session(kind, Address(LOOPBACK, dst_port))
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    if kind == "socks4":
        writer.write(struct.pack(">BBH4s", 4, 1, dst_port, socket.inet_aton(LOOPBACK)) + b"\0")
        reply = await reader.readexactly(8)
        assert reply[1] == 0x5A, f"SOCKS4 request rejected: {reply!r}"
    elif kind == "http":
        target = f"{LOOPBACK}:{dst_port}"
        writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"200", f"CONNECT answered {head!r}"
    # Shadowsocks: the address header goes with the first bytes (no reply comes).
    writer.write(codec.first_bytes(first))
    return PlainTunnel(reader, writer, codec)


@contextlib.asynccontextmanager
async def destination(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 running ``handler``; yields its port; aborts everything."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        writers.append(w)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await handler(r, w)

    srv = await asyncio.start_server(serve, LOOPBACK, 0)
    try:
        yield int(srv.sockets[0].getsockname()[1])
    finally:
        srv.close()
        for w in writers:
            w.transport.abort()
        await asyncio.sleep(0)


async def _read_all(r: asyncio.StreamReader) -> tuple[int, str]:
    n = 0
    try:
        while data := await r.read(65536):
            n += len(data)
    except ConnectionError:
        return n, "reset"
    return n, "eof"


async def probe_upload_after_server_eof(kind: str, port: int) -> str:
    seen: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readexactly(3)
        w.write(b"x" * _REPLY)
        await w.drain()
        w.write_eof()
        seen.set_result(await _read_all(r))

    async with destination(handler) as dst_port:
        t = await plain_open(kind, port, dst_port, b"go\n")
        try:
            got, end = await t.read_to_end()
            assert (len(got), end) == (_REPLY, "eof"), (len(got), end)
            await asyncio.sleep(0.05)
            with contextlib.suppress(ConnectionError):
                for _ in range(16):
                    t.write(b"u" * (_UPLOAD // 16))
                    await t.writer.drain()
                t.writer.write_eof()
            try:
                n, dst_end = await asyncio.wait_for(seen, _PROBE_DEADLINE)
            except TimeoutError:
                return "cut: the destination saw no end"
        finally:
            t.close()
    if (n, dst_end) == (_UPLOAD, "eof"):
        return "delivered"
    return f"cut: the destination got {n} of {_UPLOAD} bytes, then {dst_end}"


async def probe_reply_after_client_eof(kind: str, port: int) -> str:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _read_all(r)
        w.write(b"r" * _REPLY)
        await w.drain()
        w.write_eof()
        await _read_all(r)

    async with destination(handler) as dst_port:
        t = await plain_open(kind, port, dst_port, b"d" * _REPLY)
        try:
            t.writer.write_eof()
            got, end = await asyncio.wait_for(t.read_to_end(), _PROBE_DEADLINE)
        finally:
            t.close()
    if (len(got), end) == (_REPLY, "eof"):
        return "delivered"
    return f"cut: we got {len(got)} of the {_REPLY} reply bytes, then {end}"


async def probe_reset(kind: str, port: int) -> str:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readexactly(3)
        w.write(b"x" * _REPLY)
        await w.drain()
        await r.readexactly(3)
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()

    async with destination(handler) as dst_port:
        t = await plain_open(kind, port, dst_port, b"go\n")
        try:
            await asyncio.wait_for(t.read_exactly(_REPLY), _PROBE_DEADLINE)
            t.write(b"go\n")
            _got, end = await asyncio.wait_for(t.read_to_end(), _PROBE_DEADLINE)
        finally:
            t.close()
    return end


PROBES = {
    "upload_after_server_eof": probe_upload_after_server_eof,
    "reply_after_client_eof": probe_reply_after_client_eof,
    "reset": probe_reset,
}


@dataclass(frozen=True)
class Proof:
    """What the plain client sees through one server: probe -> "delivered", "cut", "reset"
    or "eof"."""

    id: str
    server: str
    key: str
    kind: str
    expect: dict[str, str]


#: The fault-free outcome (dante, with `debug: 1`).
GOOD = {"upload_after_server_eof": "delivered", "reply_after_client_eof": "delivered",
        "reset": "reset"}
#: No half-close, RST as FIN: the three exclusions of TWISTED_NA, TINYPROXY_NA, SS_SERVER_NA.
NO_HALF_CLOSE = {"upload_after_server_eof": "cut", "reply_after_client_eof": "cut",
                 "reset": "eof"}

PROOFS = [
    Proof("socks4-dante", "dante", "", "socks4", GOOD),  # the control: the probes can pass
    Proof("socks4-twisted", "twisted", "", "socks4", NO_HALF_CLOSE),
    Proof("http-tinyproxy", "tinyproxy", "", "http", NO_HALF_CLOSE),
    Proof("socks4-sing-box", "sing_box", "socks", "socks4", {**GOOD, "reset": "eof"}),
    Proof("http-sing-box", "sing_box", "http", "http", {**GOOD, "reset": "eof"}),
    *(Proof(f"ss-{m}-ss-server", "ss_server", m, m, NO_HALF_CLOSE) for m in AEAD[1:2]),
    # sing-box's Shadowsocks inbound half-closes towards the destination, not back.
    *(Proof(f"ss-{m}-sing-box", "sing_box", m, m,
            {**NO_HALF_CLOSE, "reply_after_client_eof": "delivered"})
      for m in ("aes-256-gcm", "2022-blake3-aes-256-gcm")),
]


@pytest.mark.parametrize("proof", PROOFS, ids=[p.id for p in PROOFS])
async def test_the_server_behaves_as_its_exclusions_say(
    proof: Proof, request: pytest.FixtureRequest
) -> None:
    served = request.getfixturevalue(proof.server)
    port = int(served[proof.key] if proof.key else served)
    seen = {}
    for name, probe in PROBES.items():
        seen[name] = await asyncio.wait_for(probe(proof.kind, port), 3 * _PROBE_DEADLINE)
    assert {k: v.split(":")[0] for k, v in seen.items()} == proof.expect, seen


async def test_sing_box_http_answers_200_before_it_dials(sing_box: dict[str, int]) -> None:
    """Why `refused` cannot pass through sing-box's HTTP inbound (tinyproxy, which dials
    first, passes it): CONNECT to a closed port is answered 200, then the stream resets."""
    closed = free_port()
    t = await plain_open("http", sing_box["http"], closed, b"")
    try:
        _got, end = await asyncio.wait_for(t.read_to_end(), _PROBE_DEADLINE)
    finally:
        t.close()
    assert end == "reset"


# --------------------------------------------------------------------------- refusals later


class _Watch(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.eof = False
        self.lost: asyncio.Future[Exception | None] = (
            asyncio.get_running_loop().create_future())

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


@pytest.mark.parametrize(
    ("server", "key"),
    [("ss_server", "aes-256-gcm"), ("sing_box", "aes-256-gcm"),
     ("sing_box", "2022-blake3-aes-256-gcm"), ("sing_box", "http")],
)
async def test_a_refusal_the_protocol_cannot_report_ends_in_a_reset(
    server: str, key: str, request: pytest.FixtureRequest
) -> None:
    """Where `refused` is excluded, a closed destination still never looks like a clean
    stream: open_tcp returns, then connection_lost(exc) comes (the app gets RST, not FIN)."""
    port = request.getfixturevalue(server)[key]
    up = _http(port) if key == "http" else _ss_upstream(port, key)
    closed = free_port()
    w = _Watch()
    t = await up.open_tcp(Address(LOOPBACK, closed), w,
                          FlowInfo(1, ("10.0.0.2", 40001), (LOOPBACK, closed)))
    try:
        exc = await asyncio.wait_for(w.lost, _PROBE_DEADLINE)
    finally:
        t.abort()
        await up.close()
    assert isinstance(exc, Exception), exc
    assert (w.data, w.eof) == (b"", False)
    assert "half-close" not in str(exc)  # we sent no EOF: that cause is not named


async def test_ss_server_ending_the_stream_at_our_eof_is_named_beside_a_wrong_key(
    ss_server: dict[str, int],
) -> None:
    """Regression: ss-server ends the whole stream at the client's EOF, so an app that
    half-closes before any answer gets a reset; the reason named both causes it can be, not
    only "wrong password or method?" (the password here is right)."""
    method = "aes-256-gcm"
    up = _ss_upstream(ss_server[method], method)

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _read_all(r)
        w.write(b"an answer after the EOF")
        await w.drain()

    async with destination(handler) as dst_port:
        watch = _Watch()
        t = await up.open_tcp(Address(LOOPBACK, dst_port), watch,
                              FlowInfo(1, ("10.0.0.2", 40001), (LOOPBACK, dst_port)))
        try:
            t.write(b"a request")
            t.write_eof()
            exc = await asyncio.wait_for(watch.lost, _PROBE_DEADLINE)
        finally:
            t.abort()
            await up.close()
    assert isinstance(exc, Exception), exc
    assert "closed the stream before any authenticated data: wrong password or method?" in str(
        exc)
    assert "the server ended the stream at our EOF (it has no half-close)" in str(exc)
    assert (watch.data, watch.eof) == (b"", False)


def _uot(make: Callable[[int], Upstream]) -> Callable[[int], Upstream]:
    """The same upstream with ``?uot=2``: UDP as sing-box's UDP-over-TCP."""

    def build(port: int) -> Upstream:
        up = make(port)
        up.uot = 2  # type: ignore[attr-defined]
        return up

    return build


@pytest.mark.parametrize("host", [LOOPBACK, "::1"], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize(
    ("key", "make"),
    [("socks", _uot(_socks5)), ("2022-blake3-aes-256-gcm", _uot(_ss("2022-blake3-aes-256-gcm")))],
    ids=["socks5-uot", "ss-2022-uot"],
)
def test_uot_carries_the_udp_check_through_sing_box(
    sing_box: dict[str, int], key: str, make: Callable[[int], Upstream], host: str
) -> None:
    """UDP-over-TCP v2 through sing-box's SOCKS and Shadowsocks inbounds: the TCP checks are
    the same upstream's above; the ``udp`` check goes over one UoT stream per channel."""
    if host == "::1" and not _ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    report = run_check_upstream(lambda: make(sing_box[key]), host=host, udp=True,
                                checks=["udp"], timeout=20.0)
    assert report.passed, str(report)

    async def channel_kind() -> str:  # the check's channels were UoT ones, not UDP sockets
        from tun2proxy.upstream.base import FlowInfo

        class Quiet:
            def datagram_received(self, payload: bytes, src: object) -> None: ...
            def channel_lost(self, exc: BaseException | None) -> None: ...

        up = make(sing_box[key])
        ch = await up.open_udp(FlowInfo(1, ("10.0.0.1", 1), (host, 9), "udp"), Quiet())
        ch.close()
        await up.close()
        return type(ch).__name__

    assert asyncio.run(channel_kind()) == "UotUdpChannel"
