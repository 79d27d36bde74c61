"""The control API, `top`, flow logs and JSON logs of a real tun2proxy, with the kernel's
TCP as the apps and dante as the upstream: a running transfer is in GET /flows with bytes
growing; DELETE of it resets the app's socket while another flow goes on; `top` renders it
in a pseudo-terminal (tmux); a TCP control address wants the token (401); each ended flow is
one log line with its byte counts; --log-format json lines all parse.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from tun2proxy.control.client import ControlClient
from tun2proxy.testing.netlab import SERVER_V4, TUN_NAME, Lab, wait_for

from .conftest import DANTE_PORT, STREAM_PORT, Tun2Proxy, connect

pytestmark = pytest.mark.timeout(180)


def _echo(s: socket.socket, data: bytes) -> None:
    s.sendall(data)
    got = 0
    while got < len(data):
        chunk = s.recv(min(65536, len(data) - got))
        assert chunk, f"EOF after {got} of {len(data)} bytes"
        got += len(chunk)


def _drain(s: socket.socket) -> None:
    while s.recv(65536):
        pass


def _flow_to(client: ControlClient, src_port: int) -> dict[str, object]:
    flows = [f for f in client.flows() if f["src"][1] == src_port]
    assert len(flows) == 1, flows
    return flows[0]


def _tmux(sock: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tmux", "-S", sock, *args], capture_output=True, text=True,
                          timeout=20, check=False)


@pytest.mark.usefixtures("dante")
def test_flows_delete_top_and_flow_logs(lab: Lab, tun2proxy: Tun2Proxy) -> None:
    ctl = str(lab.tmp / "control.sock")
    p = tun2proxy("--control", ctl, "--stats-interval", "1",
                  proxy=f"socks5://127.0.0.1:{DANTE_PORT}")
    assert wait_for(lambda: f"control API on {ctl}" in p.output()), p.output()[-2000:]
    client = ControlClient(ctl)

    victim = connect(lab, 4, timeout=10)
    other = connect(lab, 4, timeout=10)
    for s in (victim, other):
        s.sendall(b"ECHO\n")
    # a running transfer: it is listed, with bytes growing
    _echo(victim, os.urandom(300_000))
    first = _flow_to(client, victim.getsockname()[1])
    assert first["dst"] == [SERVER_V4, STREAM_PORT] and first["protocol"] == "tcp"
    assert first["upstream"] == "proxy" and first["state"] == "open"
    _echo(victim, os.urandom(700_000))
    later = _flow_to(client, victim.getsockname()[1])
    assert later["id"] == first["id"]
    assert later["bytes_up"] == 5 + 1_000_000 and later["bytes_down"] == 1_000_000
    assert later["bytes_up"] > first["bytes_up"]  # type: ignore[operator]
    assert later["packets_up"] > first["packets_up"]  # type: ignore[operator]

    # `top` in a pseudo-terminal shows the flows
    tsock = str(lab.tmp / "tmux.sock")
    cmd = f"{sys.executable} -m tun2proxy top --control {ctl} --interval 0.5"
    started = _tmux(tsock, "new-session", "-d", "-s", "top", "-x", "180", "-y", "30",
                    f"env PYTHONPATH={os.environ.get('PYTHONPATH', '')} {cmd}")
    assert started.returncode == 0, started.stderr
    try:
        port = str(victim.getsockname()[1])
        assert wait_for(lambda: port in _tmux(tsock, "capture-pane", "-p", "-t", "top").stdout,
                        timeout=20), _tmux(tsock, "capture-pane", "-p", "-t", "top").stdout
        screen = _tmux(tsock, "capture-pane", "-p", "-t", "top").stdout
        assert "tun2proxy top" in screen and "UP/s" in screen and "proxy" in screen
        assert f"{SERVER_V4}:{STREAM_PORT}" in screen
        (lab.tmp / "top-screen.txt").write_text(screen)
        _tmux(tsock, "send-keys", "-t", "top", "s")  # change the sort column
        assert wait_for(lambda: "sort bytes" in _tmux(tsock, "capture-pane", "-p", "-t",
                                                      "top").stdout, timeout=10)
        _tmux(tsock, "send-keys", "-t", "top", "q")
        assert wait_for(lambda: _tmux(tsock, "has-session", "-t", "top").returncode != 0,
                        timeout=10), "top did not quit on q"
    finally:
        _tmux(tsock, "kill-server")

    # DELETE: the app's socket sees a reset; the other flow carries on
    fid = int(later["id"])  # type: ignore[call-overload]
    t0 = time.monotonic()
    assert client.request("DELETE", f"/flows/{fid}")["closed"] == [fid]
    victim.settimeout(5)
    with pytest.raises(ConnectionResetError):
        _drain(victim)
    reset_after = time.monotonic() - t0
    victim.close()
    _echo(other, os.urandom(200_000))
    assert fid not in [f["id"] for f in client.flows()]

    # the other flow ends in order: one flow log line with its byte counts
    other.shutdown(socket.SHUT_WR)
    other.settimeout(10)
    while other.recv(65536):
        pass
    oport = other.getsockname()[1]
    other.close()
    pat = re.compile(
        rf"flow (\d+) tcp 10\.0\.0\.\d+:{oport} -> {re.escape(SERVER_V4)}:{STREAM_PORT} "
        rf"via proxy: 200005 B up, 200000 B down, [\d.]+ s, (app-fin|upstream-eof)"
    )
    assert wait_for(lambda: pat.search(p.output()), timeout=10), p.output()[-3000:]
    assert re.search(rf"flow {fid} tcp .* 1000005 B up, 1000000 B down, [\d.]+ s, closed",
                     p.output()), p.output()[-3000:]
    assert wait_for(lambda: "INFO stats: " in p.output(), timeout=10), p.output()[-2000:]
    st = client.stats()
    assert st["rss_bytes"] > 0 and st["stats"]["flows_opened"] >= 2
    print(f"reset seen {reset_after:.3f}s after DELETE")
    assert p.stop() == 0, p.output()[-3000:]
    assert not os.path.exists(ctl), p.output()[-3000:]


def test_tcp_control_needs_the_token_and_json_logs_parse(
    lab: Lab, tun2proxy: Tun2Proxy
) -> None:
    token = lab.tmp / "token"
    token.write_text("s3cret-token-42\n")
    token.chmod(0o600)
    port = 9181
    p = tun2proxy("--control", f"127.0.0.1:{port}", "--control-token-file", str(token),
                  "--log-format", "json")
    assert wait_for(lambda: "control API on 127.0.0.1" in p.output()), p.output()[-2000:]

    def ask(headers: str) -> str:
        s = lab.socket(lab.R)
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(f"GET /stats HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"
                      .encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return data.decode()
        finally:
            s.close()

    assert ask("").startswith("HTTP/1.1 401 ")
    assert ask("Authorization: Bearer wrong\r\n").startswith("HTTP/1.1 401 ")
    ok = ask("Authorization: Bearer s3cret-token-42\r\n")
    assert ok.startswith("HTTP/1.1 200 ") and '"rss_bytes"' in ok

    # the CLI with the token file, from the namespace the port is in
    s = connect(lab, 4, timeout=10)
    s.sendall(b"ECHO\n")
    _echo(s, b"x" * 12345)
    out = subprocess.run(
        ["ip", "netns", "exec", lab.R, sys.executable, "-m", "tun2proxy", "flows", "--json",
         "--control", f"127.0.0.1:{port}", "--control-token-file", str(token)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert out.returncode == 0, out.stderr
    flows = json.loads(out.stdout)["flows"]
    assert [f["bytes_up"] for f in flows if f["src"][1] == s.getsockname()[1]] == [12350]
    bad = subprocess.run(
        ["ip", "netns", "exec", lab.R, sys.executable, "-m", "tun2proxy", "flows",
         "--control", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=30,
        check=False,
    )
    assert bad.returncode == 1 and "HTTP 401" in bad.stderr, bad.stderr
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    s.close()
    assert wait_for(lambda: '"event":"flow"' in p.output(), timeout=10), p.output()[-2000:]
    p.stop()
    lines = [ln for ln in p.output().splitlines() if ln.strip()]
    parsed = [json.loads(ln) for ln in lines]  # every line is JSON
    assert all({"ts", "level", "logger", "msg"} <= set(x) for x in parsed)
    flow = [x for x in parsed if x.get("event") == "flow"]
    assert len(flow) == 1
    assert flow[0]["bytes_up"] == 12350 and flow[0]["bytes_down"] == 12345
    assert flow[0]["end"] in ("app-fin", "upstream-eof") and flow[0]["protocol"] == "tcp"


def test_a_control_socket_that_cannot_listen_is_one_error_line(lab: Lab) -> None:
    p = lab.start("tun2proxy-badctl", lab.R, [
        sys.executable, "-m", "tun2proxy", "--tun", TUN_NAME, "--tun-netns", lab.C,
        "--control", str(lab.tmp / "no-such-dir" / "c.sock"),
    ])
    assert p.popen.wait(30) == 1, p.output()
    out = p.output()
    assert "cannot listen: No such file or directory" in out, out
    assert "Traceback" not in out and out.count("ERROR") == 1, out
