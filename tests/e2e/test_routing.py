"""Routing through a real TUN: --bypass goes direct, rules pick named upstreams by sniffed SNI,
and tun2proxy's own connections routed back into the TUN are refused (no loop)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tun2proxy.testing import tls_client_hello
from tun2proxy.testing.netlab import SERVER_V4, SERVER_V6, TUN_NAME, Lab, wait_for

from .conftest import DANTE_PORT, MICROSOCKS_PORT, Tun2Proxy, connect
from .servers import AsyncEchoServer

pytestmark = pytest.mark.timeout(120)

DANTE = f"socks5://127.0.0.1:{DANTE_PORT}"
MICROSOCKS = f"socks5://127.0.0.1:{MICROSOCKS_PORT}"
ECHO_PORT = 7300


def _dante_lines(lab: Lab) -> list[str]:
    """dante's log lines of new connections to the echo port (not debug, not session ends)."""
    log = Path(lab.tmp / "sockd-inner.log")
    if not log.exists():
        return []
    return [ln for ln in log.read_text(errors="replace").splitlines()
            if f".{ECHO_PORT}" in ln and "tcp/connect [:" in ln]  # "[": session opened


@pytest.fixture
def echo(lab: Lab) -> Iterator[None]:
    servers = [AsyncEchoServer(lab.S, SERVER_V4, ECHO_PORT),
               AsyncEchoServer(lab.S, SERVER_V6, ECHO_PORT)]
    yield
    for s in servers:
        s.close()


def _echo_once(lab: Lab, family: int, data: bytes) -> bytes:
    s = connect(lab, family, ECHO_PORT, timeout=15)
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    s.close()
    return got


@pytest.mark.usefixtures("dante", "echo")
def test_bypassed_network_goes_direct_and_the_rest_through_the_proxy(
    lab: Lab, tun2proxy: Tun2Proxy
) -> None:
    p = tun2proxy("--bypass", "10.200.0.0/24", proxy=DANTE)
    before = len(_dante_lines(lab))
    assert _echo_once(lab, 4, b"bypassed") == b"bypassed"
    time.sleep(0.5)
    assert len(_dante_lines(lab)) == before, "dante saw the bypassed flow"
    assert "-> direct [bypass]" in p.output()
    # IPv6 is not bypassed: that flow goes through dante, which logs it.
    assert _echo_once(lab, 6, b"proxied") == b"proxied"
    assert wait_for(lambda: len(_dante_lines(lab)) > before, timeout=5)
    assert "-> proxy [default]" in p.output()


@pytest.mark.usefixtures("dante", "microsocks", "echo")
def test_rule_on_a_sniffed_sni_picks_a_named_upstream(lab: Lab, tun2proxy: Tun2Proxy) -> None:
    # Main proxy: microsocks. A rule sends the TLS name "name.test" to "work" (dante); dante
    # then resolves the name through the lab's DNS and logs the CONNECT to it.
    p = tun2proxy("--upstream", f"work={DANTE}", "--sniff",
                  "--rule", "domain:name.test -> work", proxy=MICROSOCKS)
    before = len(_dante_lines(lab))
    log = Path(lab.tmp / "sockd-inner.log")
    offset = log.stat().st_size if log.exists() else 0
    hello = tls_client_hello("name.test")
    assert _echo_once(lab, 4, hello) == hello  # the peeked bytes reach the server intact
    assert wait_for(lambda: len(_dante_lines(lab)) > before, 5)  # dante carried it...
    with log.open("rb") as f:
        f.seek(offset)
        assert b"name.test" in f.read()  # ...asked for by name (its debug log shows it)
    assert "-> work [rule 1: domain:name.test -> work]" in p.output()
    # A flow without a name goes to the main proxy (by IP): dante sees nothing.
    mark = len(_dante_lines(lab))
    assert _echo_once(lab, 4, b"no name in here\n") == b"no name in here\n"
    time.sleep(0.5)
    assert len(_dante_lines(lab)) == mark
    assert "-> proxy [default]" in p.output()


@pytest.mark.usefixtures("echo")
def test_own_connections_routed_into_the_tun_are_refused_not_looped(lab: Lab) -> None:
    # tun2proxy inside C itself, where the default route leads into the TUN: its own direct
    # connection to the server goes back into the TUN. It must refuse that flow at once.
    p = lab.start("tun2proxy-loop", lab.C, [
        sys.executable, "-m", "tun2proxy", "--tun", TUN_NAME, "--proxy", "direct://",
        "-v", "debug", "--connect-timeout", "5",
    ])
    try:
        assert wait_for(lambda: "attached to" in p.output() or not p.alive()), p.output()
        t0 = time.monotonic()
        with pytest.raises(OSError):  # refused (RST) or reset: either way not a hang
            _echo_once(lab, 4, b"loop?")
        assert time.monotonic() - t0 < 5
        assert wait_for(lambda: "routing loop" in p.output(), 5), p.output()
        assert p.output().count("routing loop") == 1  # one line, rate-limited
        fds = len(os.listdir(f"/proc/{p.pid}/fd"))
        assert fds < 64, f"{fds} open fds: the loop was not cut"
        assert p.alive()
    finally:
        p.stop()

