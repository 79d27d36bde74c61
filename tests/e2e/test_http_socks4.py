"""HTTP CONNECT, SOCKS4 and SOCKS4a upstreams end to end: the kernel's TCP in C through a real
TUN and tun2proxy in R, via tinyproxy (with and without Basic auth), dante (SOCKS4) and
Twisted's SOCKSv4 server (SOCKS4a, names resolved by the proxy through the lab's dnsmasq), to
the stream server in S.

pproxy is not used for SOCKS4a: its SOCKS4 server (2.7.9) reads only the 4-byte address, so a
SOCKS4a request makes it dial 0.0.0.1 and pass the host name on as data.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tun2proxy.testing.netlab import ROUTER_V4, SERVER_V4, Lab, Proc, wait_for

from .conftest import (
    CLOSED_PORT,
    DANTE_PORT,
    STREAM_PORT,
    Tun2Proxy,
    _listening,
    _unavailable,
    connect,
)
from .servers import payload

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20
SIZE = 16 * MiB
TINYPROXY_PORT = 3128
TINYPROXY_AUTH_PORT = 3129
TWISTED_SOCKS_PORT = 1083
HTTP_USER = ("tun-user", "s3cret.pass")  # tinyproxy's BasicAuth takes only [-a-z0-9._]

TINYPROXY_CONF = """\
Port {port}
Listen 127.0.0.1
Timeout 120
MaxClients 64
LogLevel Info
Allow 127.0.0.1
ConnectPort {stream}
ConnectPort {closed}
{auth}
"""


@pytest.fixture(scope="module")
def tinyproxies(lab: Lab) -> Iterator[dict[int, Proc]]:
    """tinyproxy in R on 127.0.0.1: open on 3128, Basic auth on 3129 (ended by PID)."""
    exe = shutil.which("tinyproxy", path="/usr/bin:/usr/sbin:/bin:/sbin")
    if exe is None:
        _unavailable("needs 'tinyproxy' (apt-get install tinyproxy; ./scripts/install-test-deps)")
    assert exe is not None
    procs: dict[int, Proc] = {}
    for port, auth in ((TINYPROXY_PORT, ""), (TINYPROXY_AUTH_PORT, "BasicAuth {} {}")):
        conf = lab.tmp / f"tinyproxy-{port}.conf"
        conf.write_text(TINYPROXY_CONF.format(
            port=port, stream=STREAM_PORT, closed=CLOSED_PORT, auth=auth.format(*HTTP_USER)))
        p = lab.start(f"tinyproxy-{port}", lab.R, [exe, "-d", "-c", str(conf)])
        procs[port] = p
        assert wait_for(lambda port=port: _listening(lab, lab.R, port)), p.output()
    yield procs
    for p in procs.values():
        p.stop()


@pytest.fixture(scope="module")
def twisted_socks(lab: Lab, dnsmasq: Proc) -> Iterator[Proc]:
    """Twisted's SOCKSv4/4a server in R on 127.0.0.1:1083; it resolves names through dnsmasq
    (R's resolv.conf, set up by the dnsmasq fixture before this process starts)."""
    if importlib.util.find_spec("twisted") is None:
        _unavailable("needs Twisted for its SOCKS4a server (pip install twisted)")
    p = lab.start(
        "twisted-socks", lab.R,
        [sys.executable, "-m", "twisted", "socks", "-i", "127.0.0.1", "-p",
         str(TWISTED_SOCKS_PORT)],
    )
    assert wait_for(lambda: _listening(lab, lab.R, TWISTED_SOCKS_PORT), timeout=20), p.output()
    yield p
    p.stop()


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _recv_all(s: socket.socket) -> bytes:
    chunks = []
    while c := s.recv(1 << 20):
        chunks.append(c)
    return b"".join(chunks)


def _virtual_name(lab: Lab) -> str:
    """Ask tun2proxy's virtual DNS (through the tunnel) for name.test: a fake IPv4 address."""
    res = subprocess.run(
        ["ip", "netns", "exec", lab.C, "dig", "+short", "+time=2", "+tries=2",
         f"@{SERVER_V4}", "name.test", "A"],
        capture_output=True, text=True, timeout=15, check=True,
    )
    fake = res.stdout.strip()
    assert fake.startswith("198.1"), res
    return fake


def _both_ways(lab: Lab, host: str | None) -> None:
    """16 MiB down and 16 MiB up, each compared by SHA-256 (``host``: the address the app
    dials; None for the server's own)."""
    def conn() -> socket.socket:
        if host is None:
            return connect(lab, 4)
        s = lab.socket(lab.C)
        s.settimeout(30)
        s.connect((host, STREAM_PORT))
        return s

    s = conn()
    s.sendall(f"SOURCE {SIZE} 21\n".encode())
    got = _recv_all(s)
    s.close()
    assert len(got) == SIZE
    assert _sha(got) == _sha(payload(SIZE, 21))
    data = payload(SIZE, 22)
    s = conn()
    s.sendall(f"SINKN {SIZE}\n".encode())
    s.sendall(data)
    reply = _recv_all(s).decode().split()
    s.close()
    assert reply == [_sha(data), str(SIZE)]


@pytest.mark.parametrize("auth", [False, True], ids=["open", "basic-auth"])
def test_http_connect_16mib_both_ways(
    lab: Lab, tun2proxy: Tun2Proxy, tinyproxies: dict[int, Proc], auth: bool
) -> None:
    if auth:
        user, password = HTTP_USER
        port = TINYPROXY_AUTH_PORT
        url = f"http://{user}:{password.replace('.', '%2E')}@127.0.0.1:{port}"
    else:
        port = TINYPROXY_PORT
        url = f"http://127.0.0.1:{port}"
    p = tun2proxy(proxy=url)
    before = tinyproxies[port].output().count(f"CONNECT {SERVER_V4}:{STREAM_PORT} HTTP/1.1")
    _both_ways(lab, None)
    assert p.alive()
    after = tinyproxies[port].output().count(f"CONNECT {SERVER_V4}:{STREAM_PORT} HTTP/1.1")
    assert after - before == 2  # both streams went through this proxy


def test_socks4_dante_16mib_both_ways(lab: Lab, tun2proxy: Tun2Proxy, dante: Proc) -> None:
    p = tun2proxy(proxy=f"socks4://127.0.0.1:{DANTE_PORT}")
    _both_ways(lab, None)
    assert p.alive()
    # dante logged SOCKS4 requests (its log says so per request at debug: 1).
    log = (lab.tmp / "sockd-inner.log").read_text(errors="replace")
    assert "socks_v4" in log, log[-2000:]


def test_socks4a_by_name_16mib_both_ways(
    lab: Lab, tun2proxy: Tun2Proxy, twisted_socks: Proc, dnsmasq: Proc
) -> None:
    p = tun2proxy("--dns", "virtual", proxy=f"socks4a://t2p@127.0.0.1:{TWISTED_SOCKS_PORT}")
    fake = _virtual_name(lab)
    queries_before = dnsmasq.output().count(f"name.test from {ROUTER_V4}")
    _both_ways(lab, fake)
    assert p.alive()
    # The proxy, not the app, resolved the name (dnsmasq saw R ask for it), and the fake
    # address never reached the proxy: it connected to the real one.
    assert dnsmasq.output().count(f"name.test from {ROUTER_V4}") > queries_before
    log = twisted_socks.output()
    assert f"connection to {SERVER_V4}:{STREAM_PORT} (user b't2p') authorized" in log, log[-2000:]
    assert fake not in log


@pytest.mark.usefixtures("tinyproxies")
def test_http_wrong_credentials_refused_quickly_one_log_line(
    lab: Lab, tun2proxy: Tun2Proxy
) -> None:
    p = tun2proxy(proxy=f"http://{HTTP_USER[0]}:wrong@127.0.0.1:{TINYPROXY_AUTH_PORT}")
    for _ in range(3):
        t0 = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            connect(lab, 4)
        assert time.monotonic() - t0 < 1.0
    assert p.alive()
    warnings = [ln for ln in p.output().splitlines() if "WARNING" in ln]
    assert len(warnings) == 1, warnings
    assert "(auth)" in warnings[0] and "rejected the credentials" in warnings[0], warnings
    assert "wrong" not in p.output()  # the password is never logged


@pytest.mark.usefixtures("tinyproxies")
def test_http_closed_port_and_socks4_ipv6_are_refused(
    lab: Lab, tun2proxy: Tun2Proxy, dante: Proc
) -> None:
    """A closed port behind tinyproxy (its 500 answer), and an IPv6 destination SOCKS4 cannot
    carry: the app's connect is refused at once, and the next flow works."""
    for url, family, port in (
        (f"http://127.0.0.1:{TINYPROXY_PORT}", 4, CLOSED_PORT),
        (f"socks4://127.0.0.1:{DANTE_PORT}", 6, STREAM_PORT),
    ):
        p = tun2proxy(proxy=url)
        t0 = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            connect(lab, family, port)
        assert time.monotonic() - t0 < 1.0
        s = connect(lab, 4)
        s.sendall(b"ECHO\nping")
        assert s.recv(4) == b"ping"
        s.close()
        assert p.alive()
        p.stop()


def test_socks4_without_4a_refuses_a_name(lab: Lab, tun2proxy: Tun2Proxy, dante: Proc) -> None:
    """Plain SOCKS4 cannot send the name virtual DNS knows, and must not send the fake address:
    the flow is reset at once, with one log line saying why."""
    p = tun2proxy("--dns", "virtual", proxy=f"socks4://127.0.0.1:{DANTE_PORT}")
    fake = _virtual_name(lab)
    s = lab.socket(lab.C)
    s.settimeout(5)
    t0 = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        s.connect((fake, STREAM_PORT))
    assert time.monotonic() - t0 < 1.0
    s.close()
    assert p.alive()
    warnings = [ln for ln in p.output().splitlines() if "WARNING" in ln]
    assert len(warnings) == 1, warnings
    assert "(unsupported)" in warnings[0] and "SOCKS4 needs an IPv4 address" in warnings[0]
