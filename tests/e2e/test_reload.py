"""SIGHUP re-reads --config in a running tun2proxy: a changed rule sends new flows the new
way (a named upstream, then reject) while a flow opened before keeps streaming through the
proxy it started with; a broken file is one error line and the previous configuration stays.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from tun2proxy.testing.netlab import Lab, Proc, wait_for

from .conftest import DANTE_PORT, MICROSOCKS_PORT, STREAM_PORT, Tun2Proxy, connect

pytestmark = pytest.mark.timeout(120)

HEAD = f'upstream = ["ms=socks5://127.0.0.1:{MICROSOCKS_PORT}"]\n'


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


def _hup(p: Proc, word: str) -> str:
    """SIGHUP, and the reload line it logged (the first new line containing ``word``)."""
    before = p.output().count(word)
    os.kill(p.pid, signal.SIGHUP)
    assert wait_for(lambda: p.output().count(word) > before or not p.alive(), timeout=10), \
        p.output()[-3000:]
    assert p.alive(), p.output()[-3000:]
    return [ln for ln in p.output().splitlines() if word in ln][-1]


def _echo(s: socket.socket, data: bytes) -> None:
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(65536)
        assert chunk, f"EOF after {len(got)} of {len(data)} bytes"
        got += chunk
    assert got == data


def _routes(p: Proc, target: str) -> int:
    return sum(
        1 for ln in p.output().splitlines()
        if f":{STREAM_PORT} -> {target} [" in ln and "route tcp flow" in ln
    )


@pytest.mark.usefixtures("dante", "microsocks")
def test_sighup_changes_new_flows_while_an_old_flow_keeps_going(
    lab: Lab, tun2proxy: Tun2Proxy
) -> None:
    conf = lab.tmp / "reload.toml"
    _write(conf, HEAD + f'rule = ["port:{STREAM_PORT} -> proxy"]\n')
    p = tun2proxy("--config", str(conf), proxy=f"socks5://127.0.0.1:{DANTE_PORT}")
    old = connect(lab, 4, timeout=20)
    old.sendall(b"ECHO\n")
    _echo(old, os.urandom(100_000))
    assert _routes(p, "proxy") == 1 and _routes(p, "ms") == 0

    # 1. the rule now names the other upstream: a new flow goes through microsocks
    _write(conf, HEAD + f'rule = ["port:{STREAM_PORT} -> ms"]\nmtu = 1400\n')
    line = _hup(p, "reloaded ")
    assert f"reloaded {conf}: changed rules (1 flows keep the previous configuration)" in line
    assert "mtu changed in the file but need a restart" in p.output()
    new = connect(lab, 4, timeout=20)
    new.sendall(b"ECHO\n")
    _echo(new, b"through microsocks")
    new.close()
    assert _routes(p, "ms") == 1 and _routes(p, "proxy") == 1
    _echo(old, os.urandom(500_000))  # the old flow streams on through dante

    # 2. reject: a new flow is refused, the old one goes on
    _write(conf, HEAD + f'rule = ["port:{STREAM_PORT} -> reject"]\n')
    _hup(p, "reloaded ")
    with pytest.raises(ConnectionRefusedError):
        connect(lab, 4, timeout=20)
    _echo(old, os.urandom(200_000))

    # 3. a broken file: one error line; new flows still follow the previous configuration
    errors = p.output().count("ERROR")
    _write(conf, HEAD + f'rule = ["port:{STREAM_PORT} -> ms"\n')  # no closing bracket
    line = _hup(p, "rejected, the previous configuration stays")
    assert f"reload {conf} rejected" in line and "not valid TOML" in line
    assert p.output().count("ERROR") == errors + 1, p.output()[-3000:]
    with pytest.raises(ConnectionRefusedError):
        connect(lab, 4, timeout=20)
    _echo(old, os.urandom(200_000))
    old.shutdown(socket.SHUT_WR)
    assert old.recv(1) == b""
    old.close()
    assert _routes(p, "ms") == 1 and "Traceback" not in p.output()


def test_sighup_without_a_config_file_is_one_line(lab: Lab, tun2proxy: Tun2Proxy) -> None:
    p = tun2proxy()
    line = _hup(p, "nothing to reload")
    assert "without --config" in line
    s = connect(lab, 4, timeout=20)
    s.sendall(b"ECHO\n")
    _echo(s, b"still serving")
    s.close()


@pytest.mark.usefixtures("dante")
def test_sighup_reaches_every_worker(lab: Lab) -> None:
    from .test_workers import _start, _stop

    conf = lab.tmp / "reload-workers.toml"
    _write(conf, f'rule = ["port:{STREAM_PORT} -> proxy"]\n')
    p = _start(lab, "--config", str(conf))
    try:
        # the parent reloads, then passes SIGHUP on: each worker re-reads the file itself
        _write(conf, f'rule = ["port:{STREAM_PORT} -> reject"]\n')
        os.kill(p.pid, signal.SIGHUP)
        assert wait_for(lambda: all(
            f"tun2proxy[{i}]: INFO reloaded {conf}: changed rules" in p.output()
            for i in (0, 1)), timeout=15), p.output()[-3000:]
        refused = 0
        for _ in range(6):  # the kernel spreads them over both queues: all refused
            try:
                connect(lab, 4, timeout=20).close()
            except ConnectionRefusedError:
                refused += 1
        assert refused == 6, p.output()[-3000:]
        # a broken file: the parent's one error line, and the workers are not asked
        _write(conf, "rule = [\n")
        os.kill(p.pid, signal.SIGHUP)
        assert wait_for(lambda: "rejected, the previous configuration stays" in p.output(),
                        timeout=15), p.output()[-3000:]
        assert p.output().count("rejected, the previous configuration stays") == 1
    finally:
        _stop(lab, p)
