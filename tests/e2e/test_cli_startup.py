"""Start-up is interruptible and bounded (issue 15 item 7): a SIGTERM or SIGINT while the
proxy's name is being resolved ends the program at once with exit code 0 and nothing left
behind, on asyncio and on uvloop; a resolver that never answers is given up on after
--connect-timeout with one clear line.

The resolver that never answers is a UDP socket bound to 127.0.0.1:53 inside a namespace the
test creates, which reads nothing and replies nothing; tun2proxy runs in that namespace with
a private mount of a resolv.conf naming it (``unshare -m``), so the host's resolver is never
touched.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tun2proxy.link.netns import entered, netns_path
from tun2proxy.testing.netlab import missing_prerequisites, run

pytestmark = pytest.mark.timeout(120)

DEVICE = "t2pst0"
PROXY = "socks5://proxy.blackhole.test:1080"


@dataclass
class SilentNs:
    """A namespace whose resolver takes queries and never answers."""

    name: str
    tmp: Path
    resolver: socket.socket

    def query_arrived(self, timeout: float) -> bool:
        """Whether a DNS query reached the silent resolver (the name is being resolved)."""
        ready, _, _ = select.select([self.resolver], [], [], timeout)
        return bool(ready)

    def start(self, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"log{len(list(self.tmp.glob('log*')))}"
        script = f"mount --bind {self.tmp}/resolv.conf /etc/resolv.conf && exec \"$@\""
        with log.open("wb") as f:
            p = subprocess.Popen(
                ["ip", "netns", "exec", self.name, "unshare", "-m", "sh", "-c", script, "sh",
                 sys.executable, "-m", "tun2proxy", *args],
                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return p, log

    def device_exists(self) -> bool:
        return run("ip", "-n", self.name, "link", "show", DEVICE, check=False).returncode == 0


@pytest.fixture
def silent_ns() -> Iterator[SilentNs]:
    reason = missing_prerequisites(("unshare", "mount"))
    if reason:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"t2pst{os.getpid() % 100000}"
    tmp = Path(tempfile.mkdtemp(prefix="t2p-startup-"))
    run("ip", "netns", "add", name)
    sock: socket.socket | None = None
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        with entered(netns_path(name)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 53))
        (tmp / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:30 attempts:1\n")
        yield SilentNs(name, tmp, sock)
    finally:
        if sock is not None:
            sock.close()
        run("ip", "netns", "del", name, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def _stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("mode", ["tun", "unshare"])
def test_a_signal_while_resolving_the_proxy_stops_at_once(
    silent_ns: SilentNs, loop: str, sig: signal.Signals, mode: str
) -> None:
    where = ["--tun", DEVICE] if mode == "tun" else ["--unshare", "--", "sleep", "60"]
    p, log = silent_ns.start("--proxy", PROXY, "--connect-timeout", "60", "-v", "debug",
                             "--loop", loop, *where)
    try:
        # The query reaching the resolver: the name is being resolved now.
        assert silent_ns.query_arrived(30), log.read_text()
        assert p.poll() is None, log.read_text()
        p.send_signal(sig)
        # The resolver holds the query for 30 s and --connect-timeout allows 60: an exit
        # within 10 s is the signal's doing.
        rc = p.wait(10)
    finally:
        _stop(p)
    out = log.read_text()
    assert rc == 0, out
    assert "Traceback" not in out and "Exception in callback" not in out, out
    assert not silent_ns.device_exists()
    assert _group_gone(p.pid)  # no child left behind (the --unshare command never ran)


def test_a_resolver_that_never_answers_is_bounded_by_connect_timeout(silent_ns: SilentNs) -> None:
    p, log = silent_ns.start("--proxy", PROXY, "--connect-timeout", "1", "--tun", DEVICE)
    try:
        rc = p.wait(20)  # the resolver's own timeout is 30 s
    finally:
        _stop(p)
    out = log.read_text()
    assert rc == 1, out
    errors = [ln for ln in out.splitlines() if "ERROR" in ln]
    assert errors == [
        "tun2proxy: ERROR proxy host 'proxy.blackhole.test': no answer from the resolver "
        "within 1 s (--connect-timeout bounds it)"
    ], out
    assert "Traceback" not in out
    assert not silent_ns.device_exists()
