"""Fixtures for end-to-end tests: the namespace lab, real SOCKS servers, tun2proxy itself.

Without root, /dev/net/tun or the tools, these tests skip with the reason — except under
``CI=true``, where a missing prerequisite fails the run: CI cannot go green without them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable, Iterator

import pytest

from tun2proxy.testing.netlab import (
    ROUTER_V4,
    SERVER_V4,
    SERVER_V6,
    TUN_NAME,
    Lab,
    Proc,
    missing_prerequisites,
    run,
    wait_for,
)

from .servers import HttpServer, StreamServer

STREAM_PORT = 7000
HTTP_PORT = 8080
CLOSED_PORT = 7999
DANTE_PORT = 1080
MICROSOCKS_PORT = 1081
MICROSOCKS_AUTH_PORT = 1082
SOCKS_USER = ("tunuser", "s3cret p@ss")
TOOLS = ("curl", "microsocks", "danted", "dnsmasq", "dig", "ping")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and the end-to-end suite cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    reason = missing_prerequisites(TOOLS)
    if reason:
        _unavailable(reason)
    lab = Lab()
    try:
        lab.setup()
        servers: list[StreamServer | HttpServer] = [
            StreamServer(lab.S, SERVER_V4, STREAM_PORT),
            StreamServer(lab.S, SERVER_V6, STREAM_PORT),
            HttpServer(lab.S, SERVER_V4, HTTP_PORT),
            HttpServer(lab.S, SERVER_V6, HTTP_PORT),
        ]
        yield lab
        for s in servers:
            s.close()
    finally:
        lab.close()


def _listening(lab: Lab, ns: str, port: int) -> bool:
    s = lab.socket(ns)
    s.settimeout(0.5)
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


DANTE_CONF = """\
debug: 1
logoutput: {log}
internal: 127.0.0.1 port = {port}
external: {external}
socksmethod: {method}
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 }}
socks pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 log: connect }}
socks pass {{ from: 0.0.0.0/0 to: ::/0 log: connect }}
socks pass {{ from: ::/0 to: 0.0.0.0/0 }}
socks pass {{ from: ::/0 to: ::/0 }}
socks pass {{ from: 0.0.0.0/0 to: .test log: connect }}
"""


@pytest.fixture(scope="session")
def dnsmasq(lab: Lab) -> Proc:
    """A real DNS server in S (name.test -> the server's addresses, plus a TXT record;
    loopback.test -> 127.0.0.1 and ::1, for test_hostile_addresses.py); R's processes (dante,
    tun2proxy's direct upstream) resolve through it."""
    p = lab.start(
        "dnsmasq", lab.S,
        ["dnsmasq", "--no-daemon", "--log-facility=-", "--log-queries", "--pid-file=",
         f"--listen-address={SERVER_V4}", f"--listen-address={SERVER_V6}", "--bind-interfaces",
         "--port=53", "--no-resolv", "--no-hosts",
         f"--address=/name.test/{SERVER_V4}", f"--address=/name.test/{SERVER_V6}",
         "--txt-record=name.test,hello-from-dnsmasq",
         "--address=/loopback.test/127.0.0.1", "--address=/loopback.test/::1"],
    )
    assert wait_for(lambda: "started" in p.output() or not p.alive()), p.output()
    assert p.alive(), p.output()
    lab.netns_resolver(lab.R, SERVER_V4)
    return p


UDP_PORT = 9999
EXTRA_V4 = ("10.200.0.3", "10.200.0.4")
EXTRA_V6 = ("fd20::3", "fd20::4")


@pytest.fixture(scope="session")
def udp_servers(lab: Lab) -> Iterator[dict[int, tuple[str, ...]]]:
    """UDP echo on three addresses per IP version in S."""
    from .servers import UdpEchoServer

    for a in EXTRA_V4:
        run("ip", "-n", lab.S, "addr", "add", f"{a}/24", "dev", lab.server_if)
    for a in EXTRA_V6:
        run("ip", "-n", lab.S, "addr", "add", f"{a}/64", "dev", lab.server_if, "nodad")
    addrs: dict[int, tuple[str, ...]] = {4: (SERVER_V4, *EXTRA_V4), 6: (SERVER_V6, *EXTRA_V6)}
    servers = [UdpEchoServer(lab.S, a, UDP_PORT) for v in addrs.values() for a in v]
    yield addrs
    for s in servers:
        s.close()


@pytest.fixture(scope="session")
def dante(lab: Lab, dnsmasq: Proc) -> Proc:
    conf = lab.tmp / "sockd.conf"
    conf.write_text(
        DANTE_CONF.format(
            log=lab.tmp / "sockd-inner.log", port=DANTE_PORT, external=lab.router_if,
            method="none",
        )
    )
    p = lab.start("danted", lab.R, ["danted", "-f", str(conf), "-p", str(lab.tmp / "sockd.pid")])
    assert wait_for(lambda: _listening(lab, lab.R, DANTE_PORT)), p.output()
    return p


@pytest.fixture(scope="session")
def microsocks(lab: Lab) -> Proc:
    argv = ["microsocks", "-i", "127.0.0.1", "-p", str(MICROSOCKS_PORT)]
    p = lab.start("microsocks", lab.R, argv)
    assert wait_for(lambda: _listening(lab, lab.R, MICROSOCKS_PORT)), p.output()
    return p


@pytest.fixture(scope="session")
def microsocks_auth(lab: Lab) -> Proc:
    p = lab.start(
        "microsocks-auth", lab.R,
        ["microsocks", "-i", "127.0.0.1", "-p", str(MICROSOCKS_AUTH_PORT), "-u", SOCKS_USER[0],
         "-P", SOCKS_USER[1]],
    )
    assert wait_for(lambda: _listening(lab, lab.R, MICROSOCKS_AUTH_PORT)), p.output()
    return p


Tun2Proxy = Callable[..., Proc]

#: Offloads (IFF_VNET_HDR) for the tun2proxy under test: ``on`` by default; CI runs the
#: end-to-end suite a second time with ``T2P_TEST_OFFLOAD=off`` (scripts/test).
OFFLOAD = os.environ.get("T2P_TEST_OFFLOAD", "on")
#: The event loop tun2proxy runs on: asyncio's own by default; CI's second pass uses uvloop.
LOOP = os.environ.get("T2P_TEST_LOOP", "asyncio")


@pytest.fixture
def tun2proxy(lab: Lab) -> Iterator[Tun2Proxy]:
    """Start tun2proxy in R, attached to the TUN in C; stopped (by PID) after the test."""
    started: list[Proc] = []

    def start(*extra: str, proxy: str = "direct://", name: str = "tun2proxy") -> Proc:
        offload = [] if "--impair" in extra else ["--offload", OFFLOAD]
        argv = [
            sys.executable, "-m", "tun2proxy", "--tun", TUN_NAME, "--tun-netns", lab.C,
            "--proxy", proxy, "-v", "debug", "--loop", LOOP, *offload, *extra,
        ]
        p = lab.start(f"{name}-{len(lab.procs)}", lab.R, argv)
        started.append(p)
        # the CLI's own line, which names the offload mode, comes after the link's line
        assert wait_for(
            lambda: (" offload " in p.output() and "event loop:" in p.output()) or not p.alive()
        ), p.output()
        assert p.alive(), p.output()
        if offload:  # the mode asked for is the mode in use
            want = "offload none" if OFFLOAD == "off" else "offload csum"
            assert want in p.output(), p.output()
        assert f"event loop: {LOOP}" in p.output(), p.output()
        return p

    yield start
    for p in started:
        p.stop()


UPSTREAMS: dict[str, Callable[[], str]] = {
    "direct": lambda: "direct://",
    "microsocks": lambda: f"socks5://127.0.0.1:{MICROSOCKS_PORT}",
    "dante": lambda: f"socks5://127.0.0.1:{DANTE_PORT}",
}


@pytest.fixture(params=list(UPSTREAMS))
def upstream_url(request: pytest.FixtureRequest, lab: Lab) -> str:
    """Each upstream the tests run through (the SOCKS servers are started on demand)."""
    name = request.param
    if name != "direct":
        request.getfixturevalue(name)
    return UPSTREAMS[name]()


@pytest.fixture(params=[4, 6], ids=["ipv4", "ipv6"])
def family(request: pytest.FixtureRequest) -> int:
    return request.param  # type: ignore[no-any-return]


def server_addr(family: int) -> str:
    return SERVER_V4 if family == 4 else SERVER_V6


def connect(lab: Lab, family: int, port: int = STREAM_PORT, timeout: float = 30.0) -> socket.socket:
    """A TCP connection from the app namespace to the server namespace, through the tunnel."""
    s = lab.socket(lab.C, socket.AF_INET if family == 4 else socket.AF_INET6)
    s.settimeout(timeout)
    s.connect((server_addr(family), port))
    return s


__all__ = [
    "CLOSED_PORT",
    "HTTP_PORT",
    "ROUTER_V4",
    "SOCKS_USER",
    "connect",
    "server_addr",
    "shutil",
]


def stats(p: Proc) -> dict[str, object]:
    """tun2proxy's counters: SIGUSR1, then the JSON line it logs."""
    before = p.output().count("stats {")
    os.kill(p.pid, signal.SIGUSR1)
    assert wait_for(lambda: p.output().count("stats {") > before, timeout=5), p.output()[-2000:]
    line = [ln for ln in p.output().splitlines() if "stats {" in ln][-1]
    return json.loads(line.split("stats ", 1)[1])  # type: ignore[no-any-return]
