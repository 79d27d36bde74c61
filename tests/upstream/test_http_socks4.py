"""HTTP CONNECT, SOCKS4 and SOCKS4a upstreams: URL parsing, and real proxies on loopback.

The proxies are real servers run as processes (ended by PID): tinyproxy (HTTP CONNECT, with
and without Basic auth), dante (SOCKS4; it answers SOCKS4a requests with "rejected") and
Twisted's SOCKSv4 server, ``python -m twisted socks`` (SOCKS4 and SOCKS4a). pproxy is not
used: its SOCKS4 server (2.7.9) ignores the SOCKS4a host name and dials 0.0.0.1 instead, and
it grants a request before dialling, so a refusal is never reported. The destination is a
threaded server on 127.0.0.1 written here. Nothing needs root; nothing leaves loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import os
import queue
import random
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

from tun2proxy.errors import ConfigError, UpstreamError
from tun2proxy.proxy.address import Address
from tun2proxy.upstream import FlowInfo, Upstream, upstream_from_url
from tun2proxy.upstream.http import HttpConnectUpstream
from tun2proxy.upstream.socks4 import Socks4Upstream
from tun2proxy.upstream.url import redact_url

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20
HTTP_USER = ("tun-user", "s3cret.pass")  # tinyproxy's BasicAuth takes only [-a-z0-9._]
LOOPBACK = "127.0.0.1"


# ---------------------------------------------------------------------------- URL parsing


@pytest.mark.parametrize(
    ("url", "host", "port", "auth"),
    [
        ("http://127.0.0.1:3128", "127.0.0.1", 3128, None),
        ("http://proxy.example", "proxy.example", 8080, None),
        ("http://proxy.example/", "proxy.example", 8080, None),
        ("HTTP://[::1]:8888", "::1", 8888, None),
        ("http://u:p@h:1", "h", 1, ("u", "p")),
        ("http://u%40corp:p%3Ass%20w%25rd@10.0.0.1", "10.0.0.1", 8080, ("u@corp", "p:ss w%rd")),
        ("http://user:@h:2", "h", 2, ("user", "")),
        ("http://user@h:2", "h", 2, ("user", "")),
    ],
)
def test_http_urls(url: str, host: str, port: int, auth: tuple[str, str] | None) -> None:
    up = upstream_from_url(url)
    assert isinstance(up, HttpConnectUpstream)
    assert (up.host, up.port, up.auth) == (host, port, auth)
    assert up.describe() == f"http://{'user:***@' if auth else ''}{Address(host, port)}"
    assert up.name == "http"


@pytest.mark.parametrize(
    ("url", "host", "port", "user_id", "socks4a"),
    [
        ("socks4://127.0.0.1:1080", "127.0.0.1", 1080, "", False),
        ("socks4://proxy.example", "proxy.example", 1080, "", False),
        ("socks4a://[::1]:9050", "::1", 9050, "", True),
        ("SOCKS4A://alice@h:1", "h", 1, "alice", True),
        ("socks4://al%20ice%40corp@10.0.0.1", "10.0.0.1", 1080, "al ice@corp", False),
    ],
)
def test_socks4_urls(url: str, host: str, port: int, user_id: str, socks4a: bool) -> None:
    up = upstream_from_url(url)
    assert isinstance(up, Socks4Upstream)
    assert (up.host, up.port, up.user_id, up.socks4a) == (host, port, user_id, socks4a)
    scheme = "socks4a" if socks4a else "socks4"
    assert up.name == scheme
    assert up.describe() == f"{scheme}://{'***@' if user_id else ''}{Address(host, port)}"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("https://h:443", "https:// (TLS to the proxy) is not supported"),
        ("http://", "missing host"),
        ("http://h:99999", "bad port"),
        ("http://h:port", "bad port"),
        ("http://h:1/path", "unexpected path"),
        ("http://:pw@h:1", "empty user name"),
        ("http://h:1?x=1", "unexpected query"),
        ("http://h:1#frag", "unexpected query or fragment"),
        ("http://us%3Aer:pw@h:1", "cannot contain ':'"),
        ("http://bad..name:1", "bad host name"),
        ("http://" + "u" * 256 + ":p@h:1", "255 bytes"),
        ("socks4://", "missing host"),
        ("socks4a://h:0x10", "bad port"),
        ("socks4://h:1/x", "unexpected path"),
        ("socks4://id:pw@h", "SOCKS4 has no password"),
        ("socks4a://id:@h", "SOCKS4 has no password"),
        ("socks4://@h", "empty user id"),
        ("socks4://a%00b@h", "contains NUL"),
        ("socks4://" + "i" * 256 + "@h", "255 bytes"),
        ("socks4a://h?x", "unexpected query"),
        ("socks4://bad..name", "bad host name"),
    ],
)
def test_malformed_urls_name_the_problem(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as ei:
        upstream_from_url(url)
    msg = str(ei.value)
    assert fragment in msg
    assert "\n" not in msg
    assert msg.startswith(f"proxy URL {redact_url(url)!r}: ")  # no password echoed
    assert ":pw@" not in msg and ":p@" not in msg


def test_constructors_check_their_arguments() -> None:
    with pytest.raises(ValueError, match="':'"):
        HttpConnectUpstream("h", 1, auth=("a:b", "c"))
    with pytest.raises(ValueError, match="NUL"):
        Socks4Upstream("h", 1, user_id="a\x00b", socks4a=False)
    with pytest.raises(ValueError, match="255"):
        Socks4Upstream("h", 1, user_id="x" * 256, socks4a=True)


def test_no_udp() -> None:
    async def go(up: Upstream) -> str:
        with pytest.raises(UpstreamError) as ei:
            await up.open_udp(_flow(1), None)  # type: ignore[arg-type]
        return ei.value.reason

    for up in (HttpConnectUpstream("h", 1), Socks4Upstream("h", 1, socks4a=True)):
        assert asyncio.run(go(up)) == "unsupported"


@pytest.mark.parametrize(
    ("socks4a", "dst", "domain"),
    [
        (False, Address("example.com", 80), None),  # a name, and no 4a
        (False, Address("2001:db8::1", 80), None),  # IPv6: never SOCKS4
        (False, Address("2001:db8::1", 80), "example.com"),  # a known name does not help 4
        (True, Address("2001:db8::1", 80), None),  # IPv6 without a name: not even 4a
        (True, Address("0.0.0.7", 80), None),  # would read as the SOCKS4a marker
        (True, Address("x" * 300, 80), None),  # longer than a SOCKS4a host field
    ],
)
async def test_socks4_refuses_what_it_cannot_carry(
    socks4a: bool, dst: Address, domain: str | None
) -> None:
    # Port 9 on loopback: nothing must be dialled at all, so no server is needed.
    up = Socks4Upstream(LOOPBACK, 9, socks4a=socks4a)
    with pytest.raises(UpstreamError) as ei:
        await up.open_tcp(dst, Collector(), _flow(dst.port, domain=domain))
    assert ei.value.reason == "unsupported"
    if dst.is_domain and not socks4a:
        assert "SOCKS4 needs an IPv4 address" in str(ei.value)


async def test_http_refuses_an_unwritable_host_name() -> None:
    up = HttpConnectUpstream(LOOPBACK, 9)
    with pytest.raises(UpstreamError) as ei:
        await up.open_tcp(Address("a b", 80), Collector(), _flow(80))
    assert ei.value.reason == "unsupported"


async def test_proxy_not_listening_is_refused() -> None:
    port = _free_port()
    for up in (
        HttpConnectUpstream(LOOPBACK, port),
        Socks4Upstream(LOOPBACK, port, socks4a=False),
    ):
        with pytest.raises(UpstreamError) as ei:
            await up.open_tcp(Address(LOOPBACK, 80), Collector(), _flow(80))
        assert ei.value.reason == "refused"
        assert f"{LOOPBACK}:{port}" in str(ei.value)


# ---------------------------------------------------------------------------- helpers


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and a real proxy for these tests is missing: {reason}", pytrace=False)
    pytest.skip(reason)


def _need(tool: str, package: str) -> str:
    path = shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if path is None:
        _unavailable(f"needs {tool!r} (apt-get install {package}, or ./scripts/install-test-deps)")
    assert path is not None
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _flow(port: int, domain: str | None = None) -> FlowInfo:
    return FlowInfo(1, ("10.0.0.33", 40000), (LOOPBACK, port), domain=domain)


@lru_cache(maxsize=8)
def payload(n: int, seed: int) -> bytes:
    """``n`` deterministic pseudo-random bytes."""
    return random.Random(seed).randbytes(n)


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@dataclass
class Proc:
    """A proxy process of this module: output in a log file, ended by PID."""

    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)


def _start(argv: list[str], log: Path, port: int) -> Proc:
    with open(log, "wb") as f:
        popen = subprocess.Popen(
            argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    p = Proc(popen, log)
    deadline = time.monotonic() + 15
    while True:
        if popen.poll() is not None:
            pytest.fail(f"{argv[0]} exited at start ({popen.returncode}): {p.output()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex((LOOPBACK, port)) == 0:
                return p
        if time.monotonic() > deadline:
            p.stop()
            pytest.fail(f"{argv[0]} is not listening on {port}: {p.output()[-2000:]}")
        time.sleep(0.05)


# ---------------------------------------------------------------------------- the target


class _Handler(socketserver.BaseRequestHandler):
    """``ECHO``; ``REPLY_AFTER_EOF n seed`` (read to EOF, then send n bytes);
    ``SEND_THEN_SINK n seed`` (send n bytes and half-close, then read to EOF and report)."""

    server: _Target

    def handle(self) -> None:
        s: socket.socket = self.request
        s.settimeout(30)
        try:
            line = b""
            while not line.endswith(b"\n") and len(line) < 100:
                c = s.recv(1)
                if not c:
                    return
                line += c
            cmd, *args = line.decode().split()
            n = [int(a) for a in args[:2]]
            token = args[2] if len(args) > 2 else ""
            if cmd == "ECHO":
                while chunk := s.recv(262144):
                    s.sendall(chunk)
            elif cmd == "REPLY_AFTER_EOF":
                got = _read_to_eof(s)
                self.server.report(token, ("client-eof", _sha(got), len(got)))
                s.sendall(payload(n[0], n[1]))
            elif cmd == "SEND_THEN_SINK":
                s.sendall(payload(n[0], n[1]))
                s.shutdown(socket.SHUT_WR)
                got = _read_to_eof(s)
                self.server.report(token, ("server-eof", _sha(got), len(got)))
        except OSError as e:
            self.server.report(token, ("error", repr(e), 0))
        finally:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def _read_to_eof(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(262144):
        chunks.append(chunk)
    return b"".join(chunks)


class _Target(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__((LOOPBACK, 0), _Handler)
        self._reports: dict[str, queue.Queue[tuple[str, str, int]]] = {}
        self._lock = threading.Lock()
        self.port = int(self.server_address[1])

    def _queue(self, token: str) -> queue.Queue[tuple[str, str, int]]:
        with self._lock:
            return self._reports.setdefault(token, queue.Queue())

    def report(self, token: str, what: tuple[str, str, int]) -> None:
        """A handler's finding for the test that sent ``token``."""
        self._queue(token).put(what)

    def wait_report(self, token: str) -> tuple[str, str, int]:
        """The finding for ``token`` (blocks up to 10 s)."""
        return self._queue(token).get(timeout=10)


@dataclass
class Servers:
    """Every proxy of this module and the target they lead to."""

    target: _Target
    closed_port: int  # allowed by tinyproxy's ConnectPort; nothing listens there
    forbidden_port: int  # not allowed by tinyproxy's ConnectPort
    tinyproxy: int = 0
    tinyproxy_auth: int = 0
    dante: int = 0
    twisted: int = 0
    twisted_proc: Proc | None = None


TINYPROXY_CONF = """\
Port {port}
Listen 127.0.0.1
Timeout 60
MaxClients 64
LogLevel Info
Allow 127.0.0.1
ConnectPort {target}
ConnectPort {closed}
{auth}
"""

DANTE_CONF = """\
logoutput: {log}
internal: 127.0.0.1 port = {port}
external: 127.0.0.1
socksmethod: none
clientmethod: none
{users}
client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}
socks pass {{ from: 127.0.0.0/8 to: 127.0.0.0/8 }}
"""


@pytest.fixture(scope="module")
def tmp() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="t2p-http-socks4-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def servers(tmp: Path) -> Iterator[Servers]:
    target = _Target()
    thread = threading.Thread(target=target.serve_forever, daemon=True)
    thread.start()
    sv = Servers(target, _free_port(), _free_port())
    yield sv
    target.shutdown()
    target.server_close()


@pytest.fixture(scope="module")
def tinyproxy(servers: Servers, tmp: Path) -> Iterator[Servers]:
    """Two tinyproxies on loopback: one open, one with Basic auth."""
    exe = _need("tinyproxy", "tinyproxy")
    procs = []
    for auth in ("", f"BasicAuth {HTTP_USER[0]} {HTTP_USER[1]}"):
        port = _free_port()
        conf = tmp / f"tinyproxy-{port}.conf"
        conf.write_text(TINYPROXY_CONF.format(
            port=port, target=servers.target.port, closed=servers.closed_port, auth=auth))
        procs.append(_start([exe, "-d", "-c", str(conf)], tmp / f"tinyproxy-{port}.log", port))
        if auth:
            servers.tinyproxy_auth = port
        else:
            servers.tinyproxy = port
    yield servers
    for p in procs:
        p.stop()


@pytest.fixture(scope="module")
def dante(servers: Servers, tmp: Path) -> Iterator[Servers]:
    """danted on loopback, no authentication (it serves SOCKS4 then)."""
    exe = _need("danted", "dante-server")
    port = _free_port()
    users = "user.privileged: root\nuser.unprivileged: nobody" if os.geteuid() == 0 else ""
    conf = tmp / "sockd.conf"
    conf.write_text(DANTE_CONF.format(log=tmp / "sockd-inner.log", port=port, users=users))
    p = _start([exe, "-f", str(conf), "-p", str(tmp / "sockd.pid")], tmp / "sockd.log", port)
    servers.dante = port
    yield servers
    p.stop()


@pytest.fixture(scope="module")
def twisted_socks(servers: Servers, tmp: Path) -> Iterator[Servers]:
    """Twisted's SOCKSv4/4a server (``python -m twisted socks``) on loopback."""
    if importlib.util.find_spec("twisted") is None:
        _unavailable("needs Twisted for its SOCKS4a server (pip install twisted)")
    port = _free_port()
    p = _start(
        [sys.executable, "-m", "twisted", "socks", "-i", LOOPBACK, "-p", str(port)],
        tmp / "twisted-socks.log", port,
    )
    servers.twisted = port
    servers.twisted_proc = p
    yield servers
    p.stop()


# ---------------------------------------------------------------------------- the client


class Collector(asyncio.Protocol):
    """The relay's stand-in: hashes what arrives, notes EOF and loss; keeps half-closed
    connections open."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.hash = hashlib.sha256()
        self.n = 0
        self.want = -1
        loop = asyncio.get_running_loop()
        self.eof: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.enough: asyncio.Event = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.hash.update(data)
        self.n += len(data)
        if 0 <= self.want <= self.n:
            self.enough.set()

    def eof_received(self) -> bool:
        if not self.eof.done():
            self.eof.set_result(None)
        return True  # keep our sending side open (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.eof.done():
            self.eof.set_result(None)
        if not self.lost.done():
            self.lost.set_result(None)


async def _open(up: Upstream, dst: Address, domain: str | None = None) -> Collector:
    c = Collector()
    t = await asyncio.wait_for(up.open_tcp(dst, c, _flow(dst.port, domain)), 10)
    assert c.transport is t
    return c


async def _echo_4mib(up: Upstream, dst: Address, domain: str | None = None) -> None:
    """4 MiB up and the same 4 MiB back, compared by SHA-256, then an orderly close.

    The EOF is sent only once everything is back: some proxies end both directions at the
    first EOF (they have no half-close)."""
    c = await _open(up, dst, domain)
    assert c.transport is not None
    data = payload(4 * MiB, 7)
    c.want = len(data)
    c.transport.write(b"ECHO\n")
    c.transport.write(data)
    await asyncio.wait_for(c.enough.wait(), 30)
    c.transport.write_eof()
    await asyncio.wait_for(c.eof, 10)
    assert c.n == len(data)
    assert c.hash.hexdigest() == _sha(data)
    c.transport.close()
    await asyncio.wait_for(c.lost, 5)


async def _half_close_client_first(
    up: Upstream, sv: Servers, dst: Address, token: str, *, full: bool = True
) -> None:
    """We send and half-close first; the server reads to EOF, then replies.

    ``full=False`` for proxies without half-close: the bytes before our FIN must still reach
    the server intact and our side must see an orderly EOF, but the reply may be lost."""
    c = await _open(up, dst)
    assert c.transport is not None
    body = payload(MiB, 11)
    c.transport.write(f"REPLY_AFTER_EOF 2000000 12 {token}\n".encode() + body)
    c.transport.write_eof()  # our side is done: the reply must still arrive in full
    await asyncio.wait_for(c.eof, 30)
    got = await asyncio.to_thread(sv.target.wait_report, token)
    assert got == ("client-eof", _sha(body), len(body))
    reply = payload(2_000_000, 12)
    if full:
        assert (c.n, c.hash.hexdigest()) == (len(reply), _sha(reply))
    else:
        assert c.hash.hexdigest() == _sha(reply[: c.n])  # whatever came is a true prefix
    c.transport.close()


async def _half_close_server_first(
    up: Upstream, sv: Servers, dst: Address, token: str, *, full: bool = True
) -> None:
    """The server sends and half-closes first; we keep sending, then half-close.

    ``full=False`` for proxies without half-close: every byte before the server's FIN must
    arrive, followed by an orderly EOF; what we send afterwards may be dropped."""
    c = await _open(up, dst)
    assert c.transport is not None
    c.transport.write(f"SEND_THEN_SINK 1500000 13 {token}\n".encode())
    await asyncio.wait_for(c.eof, 30)  # the server's FIN, after all its bytes
    assert (c.n, c.hash.hexdigest()) == (1_500_000, _sha(payload(1_500_000, 13)))
    body = payload(MiB, 14)
    if full:
        assert not c.lost.done()
    if not c.lost.done():
        c.transport.write(body)  # the other direction still works
        c.transport.write_eof()
    got = await asyncio.to_thread(sv.target.wait_report, token)
    if full or got[2]:
        assert got == ("server-eof", _sha(body), len(body))
    else:
        assert got[0] in ("server-eof", "error"), got
    c.transport.close()
    await asyncio.wait_for(c.lost, 10)


# ---------------------------------------------------------------------------- HTTP CONNECT


async def test_http_4mib_echo(tinyproxy: Servers) -> None:
    up = upstream_from_url(f"http://127.0.0.1:{tinyproxy.tinyproxy}")
    await _echo_4mib(up, Address(LOOPBACK, tinyproxy.target.port))


async def test_http_4mib_echo_with_percent_encoded_credentials(tinyproxy: Servers) -> None:
    user, password = HTTP_USER
    enc_user = "".join(f"%{b:02X}" for b in user.encode())  # every byte percent-encoded
    enc_pass = password.replace(".", "%2E")
    up = upstream_from_url(f"http://{enc_user}:{enc_pass}@127.0.0.1:{tinyproxy.tinyproxy_auth}")
    assert isinstance(up, HttpConnectUpstream) and up.auth == HTTP_USER
    await _echo_4mib(up, Address(LOOPBACK, tinyproxy.target.port))


async def test_http_sends_the_known_name(tinyproxy: Servers) -> None:
    """With ``flow.domain`` set, the CONNECT names the host: tinyproxy resolves it."""
    up = HttpConnectUpstream(LOOPBACK, tinyproxy.tinyproxy)
    await _echo_4mib(up, Address("127.0.0.9", tinyproxy.target.port), domain="localhost")


@pytest.mark.parametrize("auth", [None, ("tun-user", "wrong"), ("nobody", HTTP_USER[1])])
async def test_http_wrong_credentials_fail_with_auth(
    tinyproxy: Servers, auth: tuple[str, str] | None
) -> None:
    up = HttpConnectUpstream(LOOPBACK, tinyproxy.tinyproxy_auth, auth=auth)
    t0 = time.monotonic()
    with pytest.raises(UpstreamError) as ei:
        await _open(up, Address(LOOPBACK, tinyproxy.target.port))
    assert ei.value.reason == "auth"
    msg = str(ei.value)
    # 407 without credentials; tinyproxy 1.11 answers wrong ones with 401 (not a proxy status).
    assert ("407" if auth is None else "401") in msg
    assert f"HTTP proxy 127.0.0.1:{tinyproxy.tinyproxy_auth}: " in msg
    assert ("wants credentials" if auth is None else "rejected the credentials") in msg
    assert time.monotonic() - t0 < 2


async def test_http_closed_target_port(tinyproxy: Servers) -> None:
    up = HttpConnectUpstream(LOOPBACK, tinyproxy.tinyproxy)
    with pytest.raises(UpstreamError) as ei:
        await _open(up, Address(LOOPBACK, tinyproxy.closed_port))
    # tinyproxy answers "500 Unable to connect": no more precise reason can be given.
    assert ei.value.reason in ("refused", "error")
    assert "500" in str(ei.value)


async def test_http_forbidden_port_is_denied(tinyproxy: Servers) -> None:
    up = HttpConnectUpstream(LOOPBACK, tinyproxy.tinyproxy)
    with pytest.raises(UpstreamError) as ei:
        await _open(up, Address(LOOPBACK, tinyproxy.forbidden_port))
    assert ei.value.reason == "denied"
    assert "403" in str(ei.value)


async def test_http_half_close_as_far_as_tinyproxy_goes(tinyproxy: Servers) -> None:
    """tinyproxy 1.11 has no half-close: at the first EOF either way it flushes what it holds,
    then closes both sockets (src/reqs.c, relay_connection). What it does carry — every byte
    before a FIN, then the FIN itself — must come through intact both ways; full half-close
    through these upstreams is shown with dante below."""
    up = HttpConnectUpstream(LOOPBACK, tinyproxy.tinyproxy)
    dst = Address(LOOPBACK, tinyproxy.target.port)
    await _half_close_client_first(up, tinyproxy, dst, "http-c", full=False)
    await _half_close_server_first(up, tinyproxy, dst, "http-s", full=False)


# ---------------------------------------------------------------------------- SOCKS4 / 4a


async def test_socks4_dante_4mib_echo(dante: Servers) -> None:
    up = upstream_from_url(f"socks4://127.0.0.1:{dante.dante}")
    await _echo_4mib(up, Address(LOOPBACK, dante.target.port))


async def test_socks4_dante_closed_port_is_refused(dante: Servers) -> None:
    up = Socks4Upstream(LOOPBACK, dante.dante, socks4a=False)
    with pytest.raises(UpstreamError) as ei:
        await _open(up, Address(LOOPBACK, dante.closed_port))
    assert ei.value.reason == "refused"
    assert "reply 91" in str(ei.value)


async def test_socks4_dante_half_close_both_ways(dante: Servers) -> None:
    up = Socks4Upstream(LOOPBACK, dante.dante, socks4a=False)
    dst = Address(LOOPBACK, dante.target.port)
    await _half_close_client_first(up, dante, dst, "dante-c")
    await _half_close_server_first(up, dante, dst, "dante-s")


async def test_socks4a_to_a_server_without_4a_is_refused(dante: Servers) -> None:
    """dante has no SOCKS4a: it rejects the request (CD 91) rather than misreading it."""
    up = Socks4Upstream(LOOPBACK, dante.dante, socks4a=True)
    with pytest.raises(UpstreamError) as ei:
        await _open(up, Address("localhost", dante.target.port))
    assert ei.value.reason == "refused"


async def test_socks4a_twisted_by_name(twisted_socks: Servers) -> None:
    up = upstream_from_url(f"socks4a://tunnel%2Did@127.0.0.1:{twisted_socks.twisted}")
    port = twisted_socks.target.port
    await _echo_4mib(up, Address("localhost", port))
    # The name known for a flow (virtual DNS) wins over its (fake) address.
    await _echo_4mib(up, Address("127.0.0.9", port), domain="localhost")
    proc = twisted_socks.twisted_proc
    assert proc is not None
    log = proc.output()
    assert f"connection to 127.0.0.1:{port} (user b'tunnel-id') authorized" in log


async def test_socks4_twisted_by_ipv4(twisted_socks: Servers) -> None:
    up = upstream_from_url(f"socks4://127.0.0.1:{twisted_socks.twisted}")
    await _echo_4mib(up, Address(LOOPBACK, twisted_socks.target.port))


async def test_socks4_twisted_closed_port_is_refused(twisted_socks: Servers) -> None:
    up = Socks4Upstream(LOOPBACK, twisted_socks.twisted, socks4a=True)
    with pytest.raises(UpstreamError) as ei:
        await _open(up, Address("localhost", twisted_socks.closed_port))
    assert ei.value.reason == "refused"
