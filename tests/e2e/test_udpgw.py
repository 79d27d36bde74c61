"""UDP through microsocks (no UDP at all) by udpgw: tun2proxy in R, the built-in udpgw
server in S (so it sends from the server side), the kernel's UDP sockets in C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from tun2proxy.testing.netlab import SERVER_V4, SERVER_V6, TUN_NAME, Lab, Proc, wait_for

from .conftest import DANTE_PORT, LOOP, MICROSOCKS_PORT, OFFLOAD, UDP_PORT, stats

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("microsocks")]

GW_PORT = 7300
MICROSOCKS = f"socks5://127.0.0.1:{MICROSOCKS_PORT}"

Start = Callable[..., Proc]


def _start_gw(lab: Lab, *extra: str) -> Proc:
    p = lab.start(
        f"udpgw-{len(lab.procs)}", lab.S,
        [sys.executable, "-m", "tun2proxy.udpgw", "--listen", f"{SERVER_V4}:{GW_PORT}", *extra],
    )
    assert wait_for(lambda: "listening on" in p.output() or not p.alive()), p.output()
    assert p.alive(), p.output()
    return p


@pytest.fixture
def gw(lab: Lab) -> Iterator[Start]:
    """Start (and afterwards stop, by PID) the udpgw server in S."""
    started: list[Proc] = []

    def start(*extra: str) -> Proc:
        p = _start_gw(lab, *extra)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def t2p(lab: Lab) -> Iterator[Start]:
    """tun2proxy through microsocks with UDP via udpgw (``--udpgw-server``)."""
    started: list[Proc] = []

    def start(
        *extra: str, proxy: str = MICROSOCKS, server: str = f"{SERVER_V4}:{GW_PORT}"
    ) -> Proc:
        argv = [
            sys.executable, "-m", "tun2proxy", "--udpgw-server", server,
            "--tun", TUN_NAME, "--tun-netns", lab.C, "--proxy", proxy, "-v", "debug",
            "--loop", LOOP, "--offload", OFFLOAD, *extra,
        ]
        p = lab.start(f"t2p-udpgw-{len(lab.procs)}", lab.R, argv)
        started.append(p)
        assert wait_for(lambda: "UDP via udpgw" in p.output() or not p.alive()), p.output()
        assert p.alive(), p.output()
        return p

    yield start
    for p in started:
        p.stop()


def _gw_stats(p: Proc) -> dict[str, object]:
    before = p.output().count("stats {")
    os.kill(p.pid, signal.SIGUSR1)
    assert wait_for(lambda: p.output().count("stats {") > before, timeout=5), p.output()[-2000:]
    line = [ln for ln in p.output().splitlines() if "stats {" in ln][-1]
    return json.loads(line.split("stats ", 1)[1])  # type: ignore[no-any-return]


def _client(p: Proc) -> dict[str, object]:
    """The udpgw client's counters: the main upstream's, inside the router (the proxy is a
    server here, so its own address is routed direct)."""
    return stats(p)["upstream"]["upstreams"]["proxy"]  # type: ignore[index,no-any-return]


def _udpgw(p: Proc) -> dict[str, object]:
    return _client(p)["udpgw"]  # type: ignore[return-value]


def _udp(lab: Lab, family: int, timeout: float = 3.0) -> socket.socket:
    s = lab.socket(lab.C, socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    return s


def _round_trips(s: socket.socket, n: int, tag: int = 0) -> int:
    """``n`` echo round trips on connected ``s``; the number lost or corrupted."""
    bad = 0
    for i in range(n):
        msg = tag.to_bytes(2, "big") + i.to_bytes(4, "big") * 16
        s.send(msg)
        try:
            if s.recv(2048) != msg:
                bad += 1
        except TimeoutError:
            bad += 1
    return bad


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_10000_round_trips_and_every_size(
    lab: Lab, gw: Start, t2p: Start, udp_servers: dict[int, tuple[str, ...]], family: int
) -> None:
    gw()
    p = t2p()
    s = _udp(lab, family)
    s.connect((udp_servers[family][0], UDP_PORT))
    assert _round_trips(s, 10_000) == 0
    # every size up to the largest the TUN's MTU (65535) allows less the IP and UDP headers;
    # a udpgw message (65535 at most) holds it with its 9- or 21-byte header.
    largest = 65535 - (28 if family == 4 else 48)
    for size in (1, 2, 64, 512, 1200, 1472, 9000, 32_000, 65_000, largest):
        msg = os.urandom(size)
        s.send(msg)
        assert s.recv(65535) == msg, size
    s.close()
    st = stats(p)
    assert st["udp_sessions_opened"] == 1
    u = _udpgw(p)
    assert u["sessions_opened"] == 1 and u["drops"] == {}, u
    assert u["datagrams_down"] == u["datagrams_up"] == 10_000 + 10, u


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_one_socket_three_servers_one_session(
    lab: Lab, gw: Start, t2p: Start, udp_servers: dict[int, tuple[str, ...]], family: int
) -> None:
    gw()
    p = t2p()
    s = _udp(lab, family)
    peers = udp_servers[family]
    for rnd in range(20):
        for addr in peers:
            s.sendto(b"%d to %s" % (rnd, addr.encode()), (addr, UDP_PORT))
        replies = {}
        for _ in peers:
            data, src = s.recvfrom(2048)
            replies[src[0]] = data
        assert replies == {a: b"%d to %s" % (rnd, a.encode()) for a in peers}
    s.close()
    assert stats(p)["udp_sessions_opened"] == 1  # endpoint-independent: one session
    u = _udpgw(p)
    assert u["sessions_opened"] == 1 and u["conids_opened"] == 3, u  # one conid per peer


def _dig(lab: Lab, *args: str) -> str:
    r = subprocess.run(
        ["ip", "netns", "exec", lab.C, "dig", "+time=3", "+tries=2", "+short", *args],
        check=False, capture_output=True, text=True, timeout=30,
    )
    return r.stdout.strip()


@pytest.mark.usefixtures("dnsmasq")
def test_dig_through_udpgw(lab: Lab, gw: Start, t2p: Start) -> None:
    gw()
    p = t2p()
    assert _dig(lab, f"@{SERVER_V4}", "name.test", "A") == SERVER_V4
    assert _dig(lab, f"@{SERVER_V6}", "name.test", "AAAA") == SERVER_V6
    assert '"hello-from-dnsmasq"' in _dig(lab, f"@{SERVER_V4}", "name.test", "TXT")
    assert _udpgw(p)["datagrams_down"] >= 3  # type: ignore[operator]


@pytest.mark.usefixtures("dnsmasq")
def test_transparent_dns_uses_the_servers_resolver(lab: Lab, gw: Start, t2p: Start) -> None:
    gw("--dns", f"{SERVER_V4}:53")
    t2p("--udpgw-transparent-dns")
    # 192.0.2.53 (TEST-NET-1) answers nothing: the DNS flag makes the udpgw server ask its own
    # resolver, and the answer comes back as if from the address dig asked.
    assert _dig(lab, "@192.0.2.53", "name.test", "A") == SERVER_V4


def test_killed_udpgw_connection_recovers(
    lab: Lab, gw: Start, t2p: Start, udp_servers: dict[int, tuple[str, ...]]
) -> None:
    server = gw()
    p = t2p("--udpgw-connections", "1")
    s = _udp(lab, 4, timeout=0.5)
    s.connect((udp_servers[4][0], UDP_PORT))
    assert _round_trips(s, 200) == 0
    server.stop()  # the TCP connection dies with the server process
    assert not server.alive()
    assert _round_trips(s, 5, tag=1) == 5  # nothing gets through while it is gone
    gw()  # a new server on the same address
    ok = False
    for i in range(60):  # bounded: the client redials within its backoff (at most 30 s)
        if _round_trips(s, 1, tag=2 + i) == 0:
            ok = True
            break
    assert ok, p.output()[-3000:]
    s.settimeout(3)
    assert _round_trips(s, 500, tag=99) == 0  # and later round trips all succeed
    s.close()
    u = _udpgw(p)
    assert u["connections_lost"] >= 1 and u["connects"] >= 2, u  # type: ignore[operator]
    assert sum(u["drops"].values()) >= 1, u  # type: ignore[attr-defined]  # the gap, counted
    assert stats(p)["udp_sessions_opened"] == 1  # the same session carried on


def test_conid_cap_per_connection_holds(
    lab: Lab, gw: Start, t2p: Start, udp_servers: dict[int, tuple[str, ...]]
) -> None:
    cap = 8
    server = gw("--max-connections-per-client", str(cap))
    p = t2p("--udpgw-connections", "1", "--udpgw-conids-per-connection", str(cap))
    socks = []
    for i in range(3 * cap):  # three times the cap in sessions, each with a round trip
        s = _udp(lab, 4)
        s.connect((udp_servers[4][0], UDP_PORT))
        assert _round_trips(s, 1, tag=i) == 0
        socks.append(s)
    # the oldest session, evicted long ago, works again (it takes a fresh conid)
    assert _round_trips(socks[0], 3, tag=500) == 0
    for s in socks:
        s.close()
    u = _udpgw(p)
    assert u["sessions_opened"] == 3 * cap and u["conids"] == cap, u
    assert u["conids_evicted"] == 3 * cap + 1 - cap, u
    g = _gw_stats(server)
    # the server never held more sockets for the connection than the cap, and never had to
    # evict one itself: the client's numbering kept it within the cap
    assert g["peak_conids_per_client"] == cap and g["conids_evicted"] == 0, g
    assert g["sockets"] == cap, g


@pytest.mark.parametrize(
    ("proxy", "native"),
    [(f"socks4://127.0.0.1:{DANTE_PORT}", False), (f"socks5://127.0.0.1:{DANTE_PORT}", True)],
    ids=["socks4-auto", "socks5-always"],
)
def test_any_tcp_upstream_and_the_mode(
    lab: Lab, gw: Start, t2p: Start, dante: Proc, udp_servers: dict[int, tuple[str, ...]],
    proxy: str, native: bool,
) -> None:
    """SOCKS4 has no UDP: ``auto`` takes udpgw. dante's SOCKS5 has UDP ASSOCIATE: ``always``
    still sends every session through udpgw."""
    gw()
    p = t2p(*(["--udpgw-mode", "always"] if native else []), proxy=proxy)
    s = _udp(lab, 4)
    s.connect((udp_servers[4][0], UDP_PORT))
    assert _round_trips(s, 1000) == 0
    s.close()
    st = _client(p)
    assert st["native_udp"] == 0 and st["udpgw"]["sessions_opened"] == 1, st  # type: ignore[index]


def test_udpgw_server_on_loopback_with_the_direct_upstream(
    lab: Lab, t2p: Start, udp_servers: dict[int, tuple[str, ...]]
) -> None:
    """direct:// refuses this host's loopback to applications, but the udpgw connection is
    tun2proxy's own (``FlowInfo.internal``): a udpgw server on 127.0.0.1 next to tun2proxy
    is reached."""
    srv = lab.start(
        f"udpgw-lo-{len(lab.procs)}", lab.R,
        [sys.executable, "-m", "tun2proxy.udpgw", "--listen", f"127.0.0.1:{GW_PORT + 1}"],
    )
    try:
        assert wait_for(lambda: "listening on" in srv.output() or not srv.alive()), srv.output()
        p = t2p("--udpgw-mode", "always", proxy="direct://", server=f"127.0.0.1:{GW_PORT + 1}")
        s = _udp(lab, 4)
        s.connect((udp_servers[4][0], UDP_PORT))
        assert _round_trips(s, 200) == 0
        s.close()
        u = stats(p)["upstream"]["udpgw"]  # type: ignore[index]
        assert u["connect_failures"] == 0 and u["sessions_opened"] == 1, u
        assert u["datagrams_down"] == 200, u
    finally:
        srv.stop()
