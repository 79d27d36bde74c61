"""Faults a hostile or unlucky setup causes, for real (issue 15, items 5 and 6).

* A UDP routing loop: tun2proxy with ``direct://`` inside the namespace whose default route is
  the TUN, so its own UDP socket's datagram comes back through the TUN. One datagram must not
  become a storm of sessions: the returning datagram is refused, counted and logged once.
* The interface going down and up under running flows: tun2proxy waits for it, the running
  flow completes with the right bytes, new flows work; deleting the device then ends the
  process with one clear error.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from tun2proxy.testing.netlab import SERVER_V4, SERVER_V6, TUN_NAME, Lab, Proc, run, wait_for

from .conftest import LOOP, OFFLOAD, STREAM_PORT, UDP_PORT, stats
from .servers import payload

pytestmark = pytest.mark.timeout(120)


def _udp_sessions(p: Proc) -> tuple[int, int, int]:
    """(sessions opened, sessions open now, datagrams refused as a loop) from the stats."""
    st = stats(p)
    drops = st["drops"]
    opened, open_now = st["udp_sessions_opened"], st["udp_sessions"]
    assert isinstance(drops, dict) and isinstance(opened, int) and isinstance(open_now, int)
    return opened, open_now, int(drops.get("udp-routing-loop", 0))


@pytest.mark.usefixtures("udp_servers")
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_udp_routing_loop_is_refused_counted_and_logged_once(lab: Lab, family: int) -> None:
    # tun2proxy inside C, where the default routes lead into the TUN: its direct UDP socket's
    # datagram to the server goes back into the TUN, with that socket's port as the source.
    p = lab.start(f"tun2proxy-udploop{family}", lab.C, [
        sys.executable, "-m", "tun2proxy", "--tun", TUN_NAME, "--proxy", "direct://",
        "-v", "debug", "--dns", "direct", "--loop", LOOP, "--offload", OFFLOAD,
    ])
    try:
        assert wait_for(lambda: "upstream " in p.output() or not p.alive()), p.output()
        assert p.alive(), p.output()
        fam = socket.AF_INET if family == 4 else socket.AF_INET6
        s = lab.socket(lab.C, fam, socket.SOCK_DGRAM)
        try:
            s.sendto(b"loop?", (SERVER_V4 if family == 4 else SERVER_V6, UDP_PORT))
        finally:
            s.close()
        # The app's session and the one its relay's datagram made coming back: then no more.
        assert wait_for(lambda: _udp_sessions(p)[0] >= 2, 5), p.output()[-3000:]
        time.sleep(1.0)
        opened, _, looped = _udp_sessions(p)
        time.sleep(1.0)
        opened2, open_now, looped2 = _udp_sessions(p)
        assert opened == opened2 == 2, f"{opened} then {opened2} UDP sessions: the loop goes on"
        assert looped == looped2 == 1
        assert open_now <= 1  # the refused session is not kept either
        assert p.output().count("routing loop") == 1, p.output()[-3000:]  # one line
        assert "own UDP socket" in p.output()
        assert p.alive()
    finally:
        p.stop()


# ------------------------------------------------------------------ link down and up

FLAP_DEV = "t2pflap"


@pytest.fixture
def flap_ns(lab: Lab) -> Iterator[str]:
    """A namespace of this test's own for the apps; its TUN is created by tun2proxy."""
    ns = f"{lab.prefix}F"
    run("ip", "netns", "add", ns)
    try:
        run("ip", "-n", ns, "link", "set", "lo", "up")
        yield ns
    finally:
        run("ip", "netns", "del", ns, check=False)


def _routes(ns: str) -> None:
    """Default routes into the TUN. The kernel removes them (and IPv6 addresses) when the
    device goes down: whoever set them up restores them when it is back up."""
    run("ip", "-n", ns, "route", "replace", "default", "dev", FLAP_DEV)


class _SlowReader(threading.Thread):
    """Reads a SOURCE stream slowly (so it is still running when the link flaps), hashing."""

    def __init__(self, sock: socket.socket, size: int) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.size = size
        self.got = 0
        self.hash = hashlib.sha256()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while self.got < self.size:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self.hash.update(chunk)
                self.got += len(chunk)
                time.sleep(0.01)
        except OSError as e:
            self.error = e


def _echo(lab: Lab, ns: str, data: bytes) -> bytes:
    s = lab.socket(ns)
    s.settimeout(15)
    try:
        s.connect((SERVER_V4, STREAM_PORT))
        s.sendall(b"ECHO\n" + data)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        return got
    finally:
        s.close()


def test_link_down_and_up_keeps_the_flows_and_deleting_the_device_ends_the_process(
    lab: Lab, flap_ns: str
) -> None:
    ns = flap_ns
    p = lab.start("tun2proxy-flap", lab.R, [
        sys.executable, "-m", "tun2proxy", "--tun", FLAP_DEV, "--tun-netns", ns,
        "--mtu", "1500", "--proxy", "direct://", "-v", "debug", "--loop", LOOP,
        "--offload", OFFLOAD,
    ])
    try:
        assert wait_for(lambda: "upstream" in p.output() or not p.alive()), p.output()
        assert p.alive(), p.output()
        _routes(ns)
        assert _echo(lab, ns, b"before") == b"before"

        size = 48 << 20
        s = lab.socket(ns)
        s.settimeout(60)
        s.connect((SERVER_V4, STREAM_PORT))
        s.sendall(f"SOURCE {size} 21\n".encode())
        reader = _SlowReader(s, size)
        reader.start()
        try:
            assert wait_for(lambda: reader.got >= 1 << 20, 15), reader.got
            run("ip", "-n", ns, "link", "set", FLAP_DEV, "down")
            assert 0 < reader.got < size, "the transfer was not running when the link went down"
            time.sleep(3)
            assert p.alive(), p.output()[-3000:]
            run("ip", "-n", ns, "link", "set", FLAP_DEV, "up")
            _routes(ns)
            reader.join(90)
        finally:
            s.close()
        assert reader.error is None, reader.error
        assert reader.got == size
        assert reader.hash.digest() == hashlib.sha256(payload(size, 21)).digest()
        assert p.alive(), p.output()[-3000:]
        out = p.output()
        assert out.count(f"{FLAP_DEV} is down") == 1, out[-3000:]
        assert out.count(f"{FLAP_DEV} is back up") == 1, out[-3000:]
        assert _echo(lab, ns, b"after") == b"after"  # new flows work

        run("ip", "-n", ns, "link", "del", FLAP_DEV)
        assert p.popen.wait(10) == 1
        errors = [ln for ln in p.output().splitlines() if ln.split()[1:2] == ["ERROR"]]
        assert len(errors) == 1, p.output()[-3000:]
        assert FLAP_DEV in errors[0] and "removed" in errors[0], errors
    finally:
        with contextlib.suppress(Exception):
            p.stop()


def test_link_down_longer_than_link_down_timeout_ends_the_process(
    lab: Lab, flap_ns: str
) -> None:
    """--link-down-timeout bounds the wait: one error line, exit code 1, the device that
    tun2proxy created is removed."""
    ns = flap_ns
    p = lab.start("tun2proxy-flap-timeout", lab.R, [
        sys.executable, "-m", "tun2proxy", "--tun", FLAP_DEV, "--tun-netns", ns,
        "--mtu", "1500", "--proxy", "direct://", "-v", "info", "--loop", LOOP,
        "--offload", OFFLOAD, "--link-down-timeout", "1",
    ])
    try:
        assert wait_for(lambda: "upstream" in p.output() or not p.alive()), p.output()
        assert p.alive(), p.output()
        _routes(ns)
        assert _echo(lab, ns, b"before") == b"before"
        # A transfer towards the app: tun2proxy learns that the device is down when a write
        # to it fails (an idle link goes unnoticed until a packet has to cross it).
        s = lab.socket(ns)
        s.settimeout(30)
        try:
            s.connect((SERVER_V4, STREAM_PORT))
            s.sendall(f"SOURCE {64 << 20} 3\n".encode())
            reader = _SlowReader(s, 64 << 20)
            reader.start()
            assert wait_for(lambda: reader.got >= 1 << 20, 15), reader.got
            run("ip", "-n", ns, "link", "set", FLAP_DEV, "down")
            assert wait_for(lambda: not p.alive(), 15), p.output()[-3000:]
        finally:
            s.close()
        assert p.popen.wait(1) == 1, p.output()[-3000:]
        out = p.output()
        assert "waiting for it to come back (up to 1s)" in out, out[-3000:]
        errors = [ln for ln in out.splitlines() if ln.split()[1:2] == ["ERROR"]]
        assert len(errors) == 1 and "down for more than 1s" in errors[0], out[-3000:]
        links = run("ip", "-n", ns, "-o", "link", "show").stdout
        assert FLAP_DEV not in links, links
    finally:
        with contextlib.suppress(Exception):
            p.stop()
