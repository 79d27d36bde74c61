"""Hostile addresses end to end (issue 15 item 1): the host's loopback stays out of reach.

tun2proxy runs in R with ``direct://``; a listener is bound to ``127.0.0.1`` *only*, in R
(tun2proxy's own namespace): a service that trusts loopback, like a local SOCKS server. The
attacker is in C, where the TUN is. A kernel socket in C cannot send ``::ffff:127.0.0.1``
into the TUN (its own kernel keeps that address local), but anyone root in C — the command
of ``--unshare`` is — can write a raw packet to the TUN, and that is what these tests do,
with an ``AF_PACKET`` socket on the TUN device. Each attack is preceded by the same injection
to a real server, which must be answered, so the absence of an answer means something.

The last tests use no raw packets: a name (through virtual DNS) that resolves to loopback in
R, reached by an ordinary kernel client in C, is refused when the direct upstream dials it.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Callable, Iterator

import pytest

from tun2proxy.testing import tcp_packet, udp_packet
from tun2proxy.testing.netlab import SERVER_V4, SERVER_V6, TUN_NAME, TUN_V6, Lab, wait_for
from tun2proxy.testing.packets import pack
from tun2proxy.wire import ACK, RST, SYN, parse_ip, parse_tcp, parse_udp

from .conftest import STREAM_PORT, UDP_PORT, Tun2Proxy, stats

pytestmark = pytest.mark.timeout(180)

APP6 = TUN_V6.split("/")[0]  # C's address on the TUN: the source of the injected packets
LOOP_PORT = 7301  # the loopback-only listeners in R
ETH_P_ALL = 0x0003
ETH_P_IPV6 = 0x86DD
PACKET_OUTGOING = 4
MAPPED = {"::ffff:127.0.0.1": "mapped-loopback", "::ffff:0.0.0.0": "mapped-unspecified"}


class Tap:
    """An ``AF_PACKET`` socket on the TUN in C: writes raw packets into the TUN (tun2proxy
    reads them) and reads what tun2proxy writes back."""

    def __init__(self, lab: Lab) -> None:
        with lab.inside(lab.C):
            self.sock = socket.socket(
                socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL)
            )
        self.sock.bind((TUN_NAME, ETH_P_ALL))
        self.sock.settimeout(0.2)

    def send(self, packet: bytes) -> None:
        self.sock.sendto(packet, (TUN_NAME, ETH_P_IPV6))

    def wait(self, want: Callable[[bytes], bool], timeout: float = 10.0) -> bytes | None:
        """The first packet from tun2proxy for which ``want`` is true (None: none in time)."""
        found: list[bytes] = []

        def poll() -> bool:
            with contextlib.suppress(TimeoutError):
                data, addr = self.sock.recvfrom(1 << 16)
                if addr[2] != PACKET_OUTGOING and data[:1] == b"\x60" and want(data):
                    found.append(data)
            return bool(found)

        wait_for(poll, timeout=timeout, interval=0)
        return found[0] if found else None

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def tap(lab: Lab) -> Iterator[Tap]:
    t = Tap(lab)
    yield t
    t.close()


def _from(src: str, proto: int, flags: int | None = None) -> Callable[[bytes], bool]:
    """A packet from ``src`` of ``proto`` (TCP: with exactly ``flags`` among SYN/ACK/RST)."""
    def want(data: bytes) -> bool:
        ip = parse_ip(data)
        if ip.src != pack(src) or ip.protocol != proto:
            return False
        if flags is None:
            return True
        return parse_tcp(data, ip.offset, ip.end).flags & (SYN | ACK | RST) == flags
    return want


@pytest.fixture
def tcp_listener(lab: Lab) -> Iterator[socket.socket]:
    """A TCP listener on 127.0.0.1:LOOP_PORT in R only."""
    s = lab.socket(lab.R)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", LOOP_PORT))
    s.listen(16)
    s.setblocking(False)
    yield s
    s.close()


@pytest.fixture
def udp_listener(lab: Lab) -> Iterator[socket.socket]:
    """A UDP socket on 127.0.0.1:LOOP_PORT in R only."""
    s = lab.socket(lab.R, socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", LOOP_PORT))
    s.setblocking(False)
    yield s
    s.close()


def _accepted(listener: socket.socket, got: list[socket.socket]) -> int:
    with contextlib.suppress(BlockingIOError):
        while True:
            got.append(listener.accept()[0])
    return len(got)


def _received(listener: socket.socket, got: list[bytes]) -> int:
    with contextlib.suppress(BlockingIOError):
        while True:
            got.append(listener.recv(1 << 16))
    return len(got)


def _refused(p: object, key: str) -> int:
    return int(stats(p).get("addresses_refused", {}).get(key, 0))  # type: ignore[arg-type, attr-defined]


@pytest.mark.parametrize("target", list(MAPPED))
def test_tcp_to_ipv4_mapped_loopback_never_reaches_the_host(
    lab: Lab, tun2proxy: Tun2Proxy, tap: Tap, tcp_listener: socket.socket, target: str
) -> None:
    p = tun2proxy()  # direct://
    # Control: the same injection to a real server is answered with SYN-ACK.
    tap.send(tcp_packet(APP6, SERVER_V6, 40001, STREAM_PORT, flags=SYN, seq=1000, mss=1400))
    assert tap.wait(_from(SERVER_V6, 6, SYN | ACK)) is not None, p.output()[-3000:]
    # The attack: a SYN to [::ffff:127.0.0.1]:LOOP_PORT (or ::ffff:0.0.0.0, which a dial
    # turns into 127.0.0.1 too).
    key = f"tcp-dst-{MAPPED[target]}"
    conns: list[socket.socket] = []
    tap.send(tcp_packet(APP6, target, 40002, LOOP_PORT, flags=SYN, seq=2000, mss=1400))
    assert wait_for(lambda: _accepted(tcp_listener, conns) or _refused(p, key), 20, 0.3)
    synack = tap.wait(_from(target, 6, SYN | ACK), timeout=0.5)
    for c in conns:
        c.close()
    assert conns == [], "the app reached a service bound to tun2proxy's loopback"
    assert synack is None
    assert _refused(p, key) == 1
    assert p.alive()


@pytest.mark.parametrize("target", list(MAPPED))
def test_udp_to_ipv4_mapped_loopback_never_reaches_the_host(
    lab: Lab, tun2proxy: Tun2Proxy, tap: Tap, udp_listener: socket.socket,
    udp_servers: dict[int, tuple[str, ...]], target: str,
) -> None:
    p = tun2proxy()  # direct://
    # Control: a datagram injected to the echo server comes back.
    tap.send(udp_packet(APP6, SERVER_V6, 40003, UDP_PORT, b"control"))

    def echo(data: bytes) -> bool:
        ip = parse_ip(data)
        return _from(SERVER_V6, 17)(data) and bytes(
            parse_udp(data, ip.offset, ip.end).payload) == b"control"

    assert tap.wait(echo) is not None, p.output()[-3000:]
    key = f"udp-dst-{MAPPED[target]}"
    got: list[bytes] = []
    tap.send(udp_packet(APP6, target, 40004, LOOP_PORT, b"attack"))
    assert wait_for(lambda: _received(udp_listener, got) or _refused(p, key), 20, 0.3)
    assert got == [], "a datagram reached a socket bound to tun2proxy's loopback"
    assert _refused(p, key) == 1
    assert p.alive()


# ----------------------------------------------------- a name resolving to loopback


def _dig(lab: Lab, *args: str) -> str:
    res = subprocess.run(
        ["ip", "netns", "exec", lab.C, "dig", "+time=3", "+tries=1", "+short", *args],
        capture_output=True, text=True, timeout=30, check=False,
    )
    return res.stdout.strip()


@pytest.mark.usefixtures("dnsmasq")
def test_tcp_to_a_name_resolving_to_loopback_is_refused_at_dial_time(
    lab: Lab, tun2proxy: Tun2Proxy, tcp_listener: socket.socket
) -> None:
    """``loopback.test`` resolves to 127.0.0.1 and ::1 in R (dnsmasq, like ``localtest.me``
    or a DNS-rebinding answer would); the app in C only ever sees a fake address."""
    p = tun2proxy("--dns", "virtual")  # direct://
    fake = _dig(lab, f"@{SERVER_V4}", "loopback.test", "A")
    assert fake.startswith("198.1"), fake
    s = lab.socket(lab.C)
    s.settimeout(20)
    conns: list[socket.socket] = []
    try:
        with pytest.raises(ConnectionRefusedError):  # RST from tun2proxy, at once
            s.connect((fake, LOOP_PORT))
    finally:
        s.close()
        _accepted(tcp_listener, conns)
        for c in conns:
            c.close()
    assert conns == []
    assert wait_for(lambda: "a loopback address" in p.output()), p.output()[-3000:]
    assert p.alive()


@pytest.mark.usefixtures("dnsmasq")
def test_udp_to_a_name_resolving_to_loopback_is_dropped_at_dial_time(
    lab: Lab, tun2proxy: Tun2Proxy, udp_listener: socket.socket
) -> None:
    p = tun2proxy("--dns", "virtual")  # direct://
    fake = _dig(lab, f"@{SERVER_V4}", "loopback.test", "A")
    assert fake.startswith("198.1"), fake
    s = lab.socket(lab.C, socket.AF_INET, socket.SOCK_DGRAM)
    got: list[bytes] = []
    try:
        s.sendto(b"attack", (fake, LOOP_PORT))
        assert wait_for(
            lambda: _received(udp_listener, got) or "UDP to loopback.test" in p.output(), 20
        )
    finally:
        s.close()
    assert got == [], "a datagram reached a socket bound to tun2proxy's loopback"
    assert "127.0.0.1 is a loopback address" in p.output()
    assert p.alive()
