"""End to end over a real TUN: the Linux kernel's TCP is the client, through tun2proxy,
directly or via real SOCKS5 servers (microsocks, dante), to servers in another namespace."""

from __future__ import annotations

import hashlib
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tun2proxy.testing.netlab import Lab, wait_for

from .conftest import (
    CLOSED_PORT,
    HTTP_PORT,
    MICROSOCKS_AUTH_PORT,
    MICROSOCKS_PORT,
    SOCKS_USER,
    UPSTREAMS,
    Tun2Proxy,
    connect,
    server_addr,
    stats,
)
from .servers import payload

pytestmark = pytest.mark.timeout(180)

MiB = 1024 * 1024
BIG = 64 * MiB


def _recv_all(s: socket.socket, limit: int | None = None) -> bytes:
    chunks = []
    n = 0
    while True:
        c = s.recv(1 << 20)
        if not c:
            break
        chunks.append(c)
        n += len(c)
        if limit is not None and n >= limit:
            break
    return b"".join(chunks)


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_download_and_upload_with_sockets(
    lab: Lab, tun2proxy: Tun2Proxy, upstream_url: str, family: int
) -> None:
    tun2proxy(proxy=upstream_url)
    # Download 64 MiB.
    s = connect(lab, family)
    s.sendall(f"SOURCE {BIG} 1\n".encode())
    got = _recv_all(s)
    s.close()
    assert len(got) == BIG
    assert _sha(got) == _sha(payload(BIG, 1))
    # Upload 64 MiB; the server answers with the SHA-256 of what it received.
    data = payload(BIG, 2)
    s = connect(lab, family)
    s.sendall(f"SINKN {BIG}\n".encode())
    s.sendall(data)
    reply = _recv_all(s).decode().split()
    s.close()
    assert reply == [_sha(data), str(BIG)]


def test_download_and_upload_with_curl(
    lab: Lab, tun2proxy: Tun2Proxy, upstream_url: str, family: int
) -> None:
    tun2proxy(proxy=upstream_url)
    host = server_addr(family)
    url_host = host if family == 4 else f"[{host}]"
    out = lab.tmp / f"dl-{family}.bin"
    subprocess.run(
        ["ip", "netns", "exec", lab.C, "curl", "-sS", "--fail", "-m", "120", "-o", str(out),
         f"http://{url_host}:{HTTP_PORT}/bytes/{BIG}/3"],
        check=True, timeout=150,
    )
    assert _sha(out.read_bytes()) == _sha(payload(BIG, 3))
    up = lab.tmp / f"ul-{family}.bin"
    up.write_bytes(payload(BIG, 4))
    res = subprocess.run(
        ["ip", "netns", "exec", lab.C, "curl", "-sS", "--fail", "-m", "120", "-T", str(up),
         f"http://{url_host}:{HTTP_PORT}/upload"],
        check=True, timeout=150, capture_output=True, text=True,
    )
    assert res.stdout.split() == [_sha(payload(BIG, 4)), str(BIG)]
    out.unlink()
    up.unlink()


def test_200_concurrent_connections(lab: Lab, tun2proxy: Tun2Proxy, upstream_url: str) -> None:
    tun2proxy(proxy=upstream_url)
    n = 200
    socks = [connect(lab, 4 if i % 2 else 6, timeout=60) for i in range(n)]
    errors: list[str] = []

    def work(i: int, s: socket.socket) -> None:
        data = payload(20_000 + 97 * i, 1000 + i)
        try:
            s.sendall(b"ECHO\n" + data)
            back = _recv_all(s, limit=len(data))
            if back != data:
                errors.append(f"conn {i}: {len(back)} bytes back, expected {len(data)}")
        except OSError as e:
            errors.append(f"conn {i}: {e}")
        finally:
            s.close()

    threads = [threading.Thread(target=work, args=(i, s)) for i, s in enumerate(socks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:5]


#: The upstreams that keep a half-closed connection open. microsocks does not: it closes both
#: directions at the first EOF (rofl0r/microsocks sockssrv.c, copyloop: ``if(n <= 0)
#: return;``), so it gets its own test of what happens instead (below).
HALF_CLOSE_UPSTREAMS = [name for name in UPSTREAMS if name != "microsocks"]


@pytest.fixture(params=HALF_CLOSE_UPSTREAMS)
def half_close_upstream(request: pytest.FixtureRequest, lab: Lab) -> str:
    """Each upstream that supports half-close (the SOCKS servers started on demand)."""
    name = request.param
    if name != "direct":
        request.getfixturevalue(name)
    return UPSTREAMS[name]()


def test_half_close_client_first(
    lab: Lab, tun2proxy: Tun2Proxy, half_close_upstream: str, family: int
) -> None:
    tun2proxy(proxy=half_close_upstream)
    s = connect(lab, family)
    s.sendall(b"REPLY_AFTER_EOF 3000000 5\n" + b"request body" * 1000)
    s.shutdown(socket.SHUT_WR)  # our side is done; the reply must still arrive in full
    got = _recv_all(s)
    s.close()
    assert got == payload(3_000_000, 5)


@pytest.mark.usefixtures("microsocks")
def test_microsocks_ends_the_whole_flow_at_the_apps_fin(
    lab: Lab, tun2proxy: Tun2Proxy, family: int
) -> None:
    """microsocks has no half-close: at the app's FIN it closes both directions, so the reply
    a server sends after the client's EOF is lost. What tun2proxy must make of that: the
    app gets a clean EOF (a FIN, not a reset, not a hang) after everything microsocks did
    relay, the flow is gone from the table, and no RST is sent."""
    p = tun2proxy(proxy=f"socks5://127.0.0.1:{MICROSOCKS_PORT}")
    # Before the FIN, data goes both ways as through any proxy.
    data = payload(300_000, 7)
    s = connect(lab, family)
    s.sendall(b"ECHO\n" + data)
    assert _recv_all(s, limit=len(data)) == data
    s.close()
    assert wait_for(lambda: stats(p)["tcp_flows"] == 0, 10), stats(p)
    before = stats(p)
    # The half-close test's exchange: the server answers only after the client's EOF.
    s = connect(lab, family)
    s.sendall(b"REPLY_AFTER_EOF 3000000 5\n" + b"request body" * 1000)
    s.shutdown(socket.SHUT_WR)
    got = _recv_all(s)  # returns at a FIN; a reset raises, a hang times out (30 s)
    s.close()
    assert got == b"", f"{len(got)} bytes: does microsocks support half-close now?"
    assert wait_for(lambda: stats(p)["tcp_flows"] == 0, 10), stats(p)
    after = stats(p)
    assert after["tcp_rst_sent"] == before["tcp_rst_sent"], (before, after)
    closed = {k: v - before["tcp_closed"].get(k, 0)  # type: ignore[attr-defined]
              for k, v in after["tcp_closed"].items()}  # type: ignore[attr-defined]
    assert {k: v for k, v in closed.items() if v} == {"closed": 1}, closed
    assert p.alive()


def test_server_closes_first(
    lab: Lab, tun2proxy: Tun2Proxy, upstream_url: str, family: int
) -> None:
    tun2proxy(proxy=upstream_url)
    s = connect(lab, family)
    s.sendall(b"CLOSE_FIRST 2000000 6\n")
    got = _recv_all(s)  # EOF comes after every byte
    assert got == payload(2_000_000, 6)
    s.close()


def test_closed_port_is_refused_within_a_second(
    lab: Lab, tun2proxy: Tun2Proxy, upstream_url: str, family: int
) -> None:
    p = tun2proxy(proxy=upstream_url)
    t0 = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        connect(lab, family, CLOSED_PORT)
    assert time.monotonic() - t0 < 1.0
    # The process stays healthy for the next flow.
    s = connect(lab, family)
    s.sendall(b"ECHO\nping")
    assert _recv_all(s, limit=4) == b"ping"
    s.close()
    assert p.alive()


def test_socks_server_down_is_refused_then_recovers(lab: Lab, tun2proxy: Tun2Proxy) -> None:
    port = 1099
    p = tun2proxy(proxy=f"socks5://127.0.0.1:{port}")
    for _ in range(3):
        t0 = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            connect(lab, 4)
        assert time.monotonic() - t0 < 1.0
    assert p.alive()
    # One clear line per kind of failure, not one per flow.
    failures = [ln for ln in p.output().splitlines() if "refused" in ln and "WARNING" in ln]
    assert len(failures) == 1, failures
    # The proxy comes up: the same tun2proxy serves the next flows.
    ms = lab.start("microsocks-late", lab.R, ["microsocks", "-i", "127.0.0.1", "-p", str(port)])
    try:
        assert wait_for(lambda: _try_echo(lab), timeout=10)
    finally:
        ms.stop()


def _try_echo(lab: Lab) -> bool:
    try:
        s = connect(lab, 4, timeout=5)
    except OSError:
        return False
    s.sendall(b"ECHO\nhello")
    ok = _recv_all(s, limit=5) == b"hello"
    s.close()
    return ok


@pytest.mark.usefixtures("microsocks_auth")
def test_socks_credentials(lab: Lab, tun2proxy: Tun2Proxy) -> None:
    user, password = SOCKS_USER
    quoted = password.replace(" ", "%20").replace("@", "%40")
    bad = tun2proxy(proxy=f"socks5://{user}:wrong@127.0.0.1:{MICROSOCKS_AUTH_PORT}", name="bad")
    t0 = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        connect(lab, 4)
    assert time.monotonic() - t0 < 1.0
    assert bad.alive()
    assert any("auth" in ln.lower() for ln in bad.output().splitlines() if "WARNING" in ln)
    bad.stop()
    tun2proxy(proxy=f"socks5://{user}:{quoted}@127.0.0.1:{MICROSOCKS_AUTH_PORT}", name="good")
    assert _try_echo(lab)


@pytest.mark.parametrize("upstream", ["direct", "microsocks"])
def test_unshare_runs_one_command_and_leaves_nothing(
    lab: Lab, upstream: str, request: pytest.FixtureRequest
) -> None:
    proxy = "direct://"
    if upstream == "microsocks":
        request.getfixturevalue("microsocks")
        proxy = "socks5://127.0.0.1:1081"
    links_before = subprocess.run(
        ["ip", "-n", lab.R, "-o", "link"], capture_output=True, text=True, check=True
    ).stdout
    out = lab.tmp / f"unshare-{upstream}.bin"
    t = lab.start(
        f"unshare-{upstream}", lab.R,
        [sys.executable, "-m", "tun2proxy", "--unshare", "--proxy", proxy, "--",
         "curl", "-sS", "--fail", "-m", "60", "-o", str(out),
         f"http://{server_addr(4)}:{HTTP_PORT}/bytes/5000000/9"],
    )
    rc = t.popen.wait(90)
    assert rc == 0, t.output()
    assert _sha(out.read_bytes()) == _sha(payload(5_000_000, 9))
    # Nothing left behind: no process of ours, no device in R, the private namespace gone.
    children = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(t.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert children == []
    links_after = subprocess.run(
        ["ip", "-n", lab.R, "-o", "link"], capture_output=True, text=True, check=True
    ).stdout
    assert links_after == links_before


def test_unshare_exit_code_is_the_commands(lab: Lab) -> None:
    t = lab.start(
        "unshare-rc", lab.R,
        [sys.executable, "-m", "tun2proxy", "--unshare", "--", "sh", "-c", "exit 7"],
    )
    assert t.popen.wait(30) == 7, t.output()


def test_sigterm_during_transfers_ends_cleanly_within_2s(
    lab: Lab, tun2proxy: Tun2Proxy
) -> None:
    p = tun2proxy()
    socks = []
    for i in range(4):
        s = connect(lab, 4 if i % 2 else 6)
        s.sendall(b"FOREVER\n")
        socks.append(s)
    for s in socks:
        assert len(s.recv(65536)) > 0  # the transfers are running
    t0 = time.monotonic()
    p.popen.send_signal(signal.SIGTERM)
    rc = p.popen.wait(5)
    elapsed = time.monotonic() - t0
    assert rc == 0, p.output()
    assert elapsed < 2.0
    for s in socks:
        s.settimeout(5)
        with pytest.raises((ConnectionResetError, TimeoutError)):
            _recv_all(s)
        s.close()
