"""``socks5://...?pipeline=1`` against real servers (issue 14): dante takes the greeting and
the request in one write, and a capture on R's loopback shows them leaving as one segment;
microsocks drops what follows the greeting, so the flow fails after --connect-timeout and
the log says why.
"""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from tun2proxy.testing.netlab import SERVER_V4, Lab, wait_for

from .conftest import (
    DANTE_PORT,
    MICROSOCKS_PORT,
    STREAM_PORT,
    UDP_PORT,
    Tun2Proxy,
    connect,
)

pytestmark = pytest.mark.timeout(180)

#: The greeting (3 bytes: VER NMETHODS NO_AUTH) and an IPv4 CONNECT request (10 bytes).
GREETING, REQUEST_V4 = 3, 10


def _echo(lab: Lab) -> None:
    s = connect(lab, 4)
    s.sendall(b"ECHO\n" + b"pipelined")
    got = b""
    while len(got) < len(b"pipelined"):
        chunk = s.recv(100)
        assert chunk, got
        got += chunk
    assert got == b"pipelined"
    s.close()


def _client_payloads(lab: Lab, port: int, run: object) -> list[int]:
    """Payload sizes of the segments sent to ``port`` on R's loopback while ``run()`` runs."""
    pcap = lab.tmp / f"lo-{port}-{time.monotonic_ns()}.pcap"
    cap = subprocess.Popen(
        ["ip", "netns", "exec", lab.R, "tshark", "-q", "-i", "lo", "-w", str(pcap),
         "-f", f"tcp dst port {port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        assert wait_for(lambda: pcap.exists() and pcap.stat().st_size > 0, timeout=20)
        time.sleep(0.3)
        run()  # type: ignore[operator]
        time.sleep(0.5)
    finally:
        cap.terminate()
        cap.wait(10)
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", "tcp.len > 0", "-T", "fields", "-e", "tcp.len"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    return [int(x) for x in out.split()]


@pytest.mark.usefixtures("dante")
@pytest.mark.parametrize("pipeline", [True, False], ids=["pipelined", "default"])
def test_dante_takes_the_pipelined_handshake(
    lab: Lab, tun2proxy: Tun2Proxy, pipeline: bool
) -> None:
    query = "?pipeline=1" if pipeline else ""
    tun2proxy(proxy=f"socks5://127.0.0.1:{DANTE_PORT}{query}")
    _echo(lab)  # the first flow also warms up the path
    sizes = _client_payloads(lab, DANTE_PORT, lambda: _echo(lab))
    # tun2proxy's segments to dante: the handshake, then the tunnel data (ECHO line + bytes).
    hs = sizes[:1] if pipeline else sizes[:2]
    assert hs == ([GREETING + REQUEST_V4] if pipeline else [GREETING, REQUEST_V4]), sizes


@pytest.mark.usefixtures("dante")
def test_udp_associate_pipelined_through_dante(
    lab: Lab, tun2proxy: Tun2Proxy, udp_servers: dict[int, tuple[str, ...]]
) -> None:
    tun2proxy(proxy=f"socks5://127.0.0.1:{DANTE_PORT}?pipeline=1")
    s = lab.socket(lab.C, socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.connect((SERVER_V4, UDP_PORT))
    for i in range(20):
        s.send(b"u%d" % i)
        assert s.recv(100) == b"u%d" % i
    s.close()


@pytest.mark.usefixtures("microsocks")
def test_microsocks_does_not_take_pipelining_and_the_log_says_so(
    lab: Lab, tun2proxy: Tun2Proxy
) -> None:
    p = tun2proxy("--connect-timeout", "1",
                  proxy=f"socks5://127.0.0.1:{MICROSOCKS_PORT}?pipeline=1")
    s = lab.socket(lab.C, socket.AF_INET)
    s.settimeout(20)
    with pytest.raises(OSError):  # refused once the dial times out: never a fake open
        s.connect((SERVER_V4, STREAM_PORT))
    s.close()
    assert wait_for(lambda: "may not accept pipelining" in p.output()), p.output()[-2000:]
    assert "remove ?pipeline=1" in p.output()


@pytest.mark.usefixtures("microsocks")
def test_microsocks_works_without_pipelining(lab: Lab, tun2proxy: Tun2Proxy) -> None:
    tun2proxy(proxy=f"socks5://127.0.0.1:{MICROSOCKS_PORT}")
    _echo(lab)
