"""``python -m tun2proxy --setup`` and ``--cleanup``, the command itself, in a "host" namespace.

The lab (tests/e2e/hostworld.py): H's uplink goes to an ISP namespace I that runs dante on a
far address and does not forward; the far network F is reachable only through the proxy.
tun2proxy runs inside H (``ip netns exec``), with H's resolver file
``/etc/netns/H/resolv.conf`` as ``--setup-resolv-conf`` and a state directory of the test's
own: nothing outside the namespaces and files these tests create is touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tun2proxy.testing.netlab import missing_prerequisites, run, wait_for

from .conftest import LOOP, OFFLOAD, _unavailable
from .hostworld import (
    ADMIN_V4,
    BYPASSED,
    FAR_V4,
    FAR_V6,
    LAN,
    PROXY,
    TOOLS,
    UPLINK_V4,
    World,
    curl,
    iperf3,
    make_world,
)
from .servers import payload
from .test_setup import EchoServer, _client, _echoes
from .unprivileged import readable_package

pytestmark = pytest.mark.timeout(240)

TUN = "t2pcs0"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", name="w")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One lab for this module: every test leaves H as it found it (and checks it)."""
    reason = missing_prerequisites((*TOOLS, "dig", "getent", "setpriv"))
    if reason:
        _unavailable(reason)
    with make_world("t2pc", tmp_path_factory.mktemp("cli-setup")) as w:
        yield w


class Cli:
    """``python -m tun2proxy ...`` running in H; its output collected by a thread."""

    def __init__(self, w: World, args: list[str], env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        full_env.pop("SSH_CONNECTION", None)
        full_env.update(env or {})
        self.p = subprocess.Popen(
            ["ip", "netns", "exec", w.H, sys.executable, "-m", "tun2proxy", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env,
        )
        self._out: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in iter(self.p.stdout.readline, b""):
            self._out.append(line)

    @property
    def pid(self) -> int:
        return self.p.pid  # ip netns exec execs the command: the same process

    def output(self) -> str:
        return b"".join(self._out).decode(errors="replace")

    def wait(self, timeout: float = 30) -> int:
        try:
            code = self.p.wait(timeout)
        finally:
            self._reader.join(5)
        return code

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.p.wait(10)


def _args(w: World, *extra: str) -> list[str]:
    return ["--setup", "--tun", TUN, "--setup-resolv-conf", str(w.resolv),
            "--setup-state-dir", str(w.tmp / "run"), "--mtu", "1500", "-v", "debug",
            "--loop", LOOP, "--offload", OFFLOAD, *extra]


def _proxy_file(w: World) -> Path:
    f = w.tmp / "proxy.url"
    # by name: tun2proxy resolves it for every connection, from marked sockets to the
    # original nameserver (with --setup-dns-strict an unmarked query would enter the tunnel)
    f.write_text("# the proxy, kept out of the command line\nsocks5://proxy.test:1080\n")
    f.chmod(0o600)
    return f


def _state_files(w: World) -> list[str]:
    return sorted(p.name for p in (w.tmp / "run").glob("setup-*.json"))


def _route_get(w: World, dst: str, *extra: str) -> str:
    return run("ip", "-n", w.H, "route", "get", dst, *extra).stdout


def _in_h(w: World, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", w.H, *argv], capture_output=True, text=True,
                          timeout=60, check=False)


@contextlib.contextmanager
def _notify_socket(w: World) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""
    path = str(w.tmp / "notify.sock")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(60)
    try:
        yield s, path
    finally:
        s.close()
        os.unlink(path)


def _wait_for_message(s: socket.socket, word: str) -> str:
    for _ in range(20):
        msg = s.recv(4096).decode()
        if word in msg:
            return msg
    raise AssertionError(f"no {word} from tun2proxy")


def test_setup_routes_the_host_through_the_proxy_and_sigterm_gives_it_back(w: World) -> None:
    before = w.snapshot()
    dante_before = w.dante_log.read_text(errors="replace")
    size, seed = 1_000_000, 11
    want = hashlib.sha256(payload(size, seed)).hexdigest()
    # the SSH session: an admin far away, connected to a server on the host before --setup
    sshd = EchoServer(w.H, UPLINK_V4, 2222)
    admin = _client(w.I, UPLINK_V4, 2222, bind=ADMIN_V4, timeout=5)
    assert _echoes(admin, b"before")
    ssh = f"{ADMIN_V4} {admin.getsockname()[1]} {UPLINK_V4} 2222"
    pid_file = w.tmp / "tun2proxy.pid"
    cli: Cli | None = None
    try:
        with _notify_socket(w) as (notify, path):
            cli = Cli(w, _args(w, "--proxy-file", str(_proxy_file(w)), "--dns", "virtual",
                               "--bypass", f"{BYPASSED}/32", "--setup-dns-strict",
                               "--pid-file", str(pid_file)),
                      env={"SSH_CONNECTION": ssh, "NOTIFY_SOCKET": path})
            ready = _wait_for_message(notify, "READY=1")
            out = cli.output()
            assert f"MAINPID={cli.pid}" in ready, ready
            # the summary line: what was set up and what is kept out
            assert f"setup: {TUN} carries this host's IPv4+IPv6" in out, out
            for word in (f"proxy server {PROXY}/32", f"SSH session {ADMIN_V4}/32",
                         f"bypass {BYPASSED}/32", "own sockets marked 0x3074"):
                assert word in out, word
            assert pid_file.read_text().strip() == str(cli.pid)
            assert b"socks5://" not in Path(f"/proc/{cli.pid}/cmdline").read_bytes()
            assert _state_files(w) == [f"setup-{TUN}.json"]

            # the kernel routes: far destinations into the TUN; the proxy (marked or not),
            # the bypassed address and the LAN not
            assert f"dev {TUN}" in _route_get(w, FAR_V4)
            assert f"dev {TUN}" in _route_get(w, "8.8.8.8")  # the resolver's nameserver
            for dst in (PROXY, BYPASSED, LAN):
                assert f"dev {TUN}" not in _route_get(w, dst), dst
            assert f"dev {TUN}" not in _route_get(w, FAR_V4, "mark", "0x3074")

            # curl and iperf3 (kernel TCP) in H reach F, over IPv4 and IPv6, and by a name
            # only the proxy knows (resolved by H's resolver into the tunnel)
            for url in (f"http://{FAR_V4}:8080/bytes/{size}/{seed}",
                        f"http://[{FAR_V6}]:8080/bytes/{size}/{seed}",
                        f"http://far.test:8080/bytes/{size}/{seed}"):
                res = curl(w, url)
                assert res.returncode == 0, (url, res.stderr, cli.output()[-3000:])
                assert hashlib.sha256(res.stdout).hexdigest() == want, url
            for server, extra in ((FAR_V4, []), (FAR_V6, ["-R"])):
                sent, received = iperf3(w, server, extra, amount="4M")
                assert sent >= 4 << 20 and received > 0, server

            # H's resolver answers from tun2proxy (virtual addresses), and with
            # --setup-dns-strict even a query to the LAN resolver is answered in the tunnel
            resolv = w.resolv.read_text()
            assert "nameserver 8.8.8.8" in resolv and "192.0.2.1" not in resolv, resolv
            got = _in_h(w, "getent", "ahostsv4", "far.test")
            assert got.returncode == 0, got
            assert ipaddress.ip_address(got.stdout.split()[0]) in ipaddress.ip_network(
                "198.18.0.0/15"), got.stdout
            lan_dns = _in_h(w, "dig", "+short", "+time=5", "+tries=1", "@192.0.2.1", "proxy.test")
            assert lan_dns.stdout.strip().startswith("198.18."), lan_dns  # not 198.51.100.9

            # the proxy saw the far connections, from H's uplink (its own connection was not
            # looped into the TUN); the bypassed address and the LAN are reached without it
            for addr in (BYPASSED, LAN):
                res = curl(w, f"http://{addr}:8080/bytes/1000/5")
                assert res.stdout == payload(1000, 5), (addr, res.stderr)
            log = w.dante_log.read_text(errors="replace")[len(dante_before):]
            lines = [ln for ln in log.splitlines() if ".8080" in ln and "tcp/connect [:" in ln]
            assert sum(f"{FAR_V4}.8080" in ln for ln in lines) >= 2, lines  # literal + name
            assert any(f"{FAR_V6}.8080" in ln for ln in lines), lines
            assert all(f"{UPLINK_V4}." in ln for ln in lines), lines
            assert BYPASSED not in log and f"{LAN}.8080" not in log

            # the SSH session is untouched; a SIGHUP (reload) does not end the run
            assert _echoes(admin, b"during" * 1000)
            os.kill(cli.pid, signal.SIGHUP)
            assert wait_for(lambda: "reload" in cli.output()[len(out):], timeout=20)
            assert cli.p.poll() is None

            # SIGTERM; more signals while it shuts down (an impatient admin, systemd) must
            # not cut the teardown short
            os.kill(cli.pid, signal.SIGTERM)
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT) * 20:
                if cli.p.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.kill(cli.pid, sig)
                time.sleep(0.005)
            code = cli.wait(30)
            # exit 0; or, for a signal that came after the host was given back (when the
            # process is exiting and its handlers are the default ones again), death by it
            undone = "setup: undone" in cli.output()
            late = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
            assert code == 0 or (undone and -code in late), (code, cli.output()[-3000:])
            assert "STOPPING=1" in _wait_for_message(notify, "STOPPING=1")
        assert undone, cli.output()[-3000:]
        assert w.snapshot() == before
        assert _state_files(w) == []
        assert not pid_file.exists()
        assert _echoes(admin, b"after")
    finally:
        if cli is not None:
            cli.kill()
        admin.close()
        sshd.close()


def test_cleanup_after_sigkill_restores_the_host(w: World) -> None:
    before = w.snapshot()
    # two workers: the device has two queues, one held by a worker process
    cli = Cli(w, _args(w, "--proxy", f"socks5://{PROXY}:1080", "--dns", "virtual",
                       "--workers", "2"))
    try:
        assert wait_for(lambda: f"setup: {TUN} carries" in cli.output() or cli.p.poll() is not None,
                        timeout=60), cli.output()
        assert cli.p.poll() is None, cli.output()
        during = w.snapshot()
        fetched = curl(w, f"http://{FAR_V4}:8080/bytes/1000/9")
        assert fetched.stdout == payload(1000, 9), (fetched.stderr, cli.output()[-3000:])
        # while it runs, --cleanup and a second --setup refuse (one line, exit 2)
        state = ["--setup-state-dir", str(w.tmp / "run")]
        res = _in_h(w, sys.executable, "-m", "tun2proxy", "--cleanup", *state)
        assert res.returncode == 2 and f"PID {cli.pid}) is still running" in res.stderr, res
        second = _in_h(w, sys.executable, "-m", "tun2proxy", *_args(w, "--tun", "t2pcs1"))
        assert second.returncode == 2, second
        assert f"another tun2proxy --setup (PID {cli.pid}" in second.stderr, second
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
        cli.kill()
        # the TUN (and its routes) went with the process; the rules and resolver stayed
        after_kill = w.snapshot()
        assert after_kill["rule"] == during["rule"] and after_kill["resolv"] == during["resolv"]
        assert after_kill["resolv"] != before["resolv"]
        assert _state_files(w) == [f"setup-{TUN}.json"]
        res = _in_h(w, sys.executable, "-m", "tun2proxy", "--cleanup", *state)
        assert res.returncode == 0, res
        assert f"undid the setup of {TUN} by PID {cli.pid}" in res.stderr, res.stderr
        assert w.snapshot() == before
        assert _state_files(w) == []
        res = _in_h(w, sys.executable, "-m", "tun2proxy", "--cleanup", *state)
        assert res.returncode == 0 and "nothing to undo" in res.stderr, res
    finally:
        cli.kill()


def _started(cli: Cli) -> None:
    assert wait_for(lambda: f"setup: {TUN} carries" in cli.output() or cli.p.poll() is not None,
                    timeout=60), cli.output()
    assert cli.p.poll() is None, cli.output()


def test_a_new_setup_cleans_up_after_a_killed_one_first(w: World) -> None:
    before = w.snapshot()
    args = _args(w, "--proxy", f"socks5://{PROXY}:1080")
    first = Cli(w, args)
    second: Cli | None = None
    try:
        _started(first)
        during = w.snapshot()
        first.kill()
        assert _state_files(w) == [f"setup-{TUN}.json"]
        second = Cli(w, args)
        _started(second)
        out = second.output()
        assert f"a previous --setup did not exit cleanly: undid the setup of {TUN} by PID " \
            f"{first.pid}" in out, out
        assert w.snapshot()["rule"] == during["rule"]  # one set of rules: the new one's
        res = curl(w, f"http://{FAR_V4}:8080/bytes/1000/4")
        assert res.stdout == payload(1000, 4), res.stderr
        os.kill(second.pid, signal.SIGTERM)
        assert second.wait(30) == 0, second.output()[-3000:]
        assert w.snapshot() == before
        assert _state_files(w) == []
    finally:
        first.kill()
        if second is not None:
            second.kill()


def _refused(w: World, *extra: str, env: dict[str, str] | None = None,
             prefix: tuple[str, ...] = ()) -> str:
    """Run a --setup that must fail: one line on stderr, exit 2, H as it was."""
    before = w.snapshot()
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    res = subprocess.run(
        ["ip", "netns", "exec", w.H, *prefix, sys.executable, "-m", "tun2proxy",
         *_args(w, "--proxy", f"socks5://{PROXY}:1080", *extra)],
        capture_output=True, text=True, timeout=60, check=False, env=full_env,
    )
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("tun2proxy: error:")]
    assert res.returncode == 2, res
    assert len(errors) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert w.snapshot() == before
    assert _state_files(w) == []
    return errors[0]


def test_a_failure_half_way_or_a_refusal_leaves_nothing_behind(w: World) -> None:
    # a real failure at the last step (the resolver file cannot be written), after every
    # rule and route was added: all of it is removed again, the TUN too
    msg = _refused(w, "--setup-resolv-conf", str(w.tmp / "no-such-dir" / "resolv.conf"))
    assert re.search(r"cannot replace .*no-such-dir/resolv.conf", msg), msg
    # systemd-resolved's stub: refused before anything (the TUN included) is created
    stub = w.tmp / "stub-resolv.conf"
    stub.write_text("nameserver 127.0.0.53\noptions edns0\n")
    msg = _refused(w, "--setup-resolv-conf", str(stub))
    assert "systemd-resolved" in msg and "--setup-dns off" in msg, msg
    # rule priorities already taken
    run("ip", "-n", w.H, "rule", "add", "priority", "9102", "lookup", "main")
    try:
        msg = _refused(w)
        assert "--setup-priority" in msg, msg
    finally:
        run("ip", "-n", w.H, "rule", "del", "priority", "9102")
    # no default route: no uplink for the proxy connections
    run("ip", "-n", w.H, "route", "del", "default")
    run("ip", "-n", w.H, "-6", "route", "del", "default")
    try:
        msg = _refused(w)
        assert "no default route" in msg, msg
    finally:
        run("ip", "-n", w.H, "route", "add", "default", "via", LAN)
        run("ip", "-n", w.H, "-6", "route", "add", "default", "via", "2001:db8:1::1")
    # pyroute2 missing (an import that fails, put first on the path)
    shim = w.tmp / "no-pyroute2"
    (shim / "pyroute2").mkdir(parents=True, exist_ok=True)
    (shim / "pyroute2" / "__init__.py").write_text("raise ImportError('not installed')\n")
    msg = _refused(w, env={"PYTHONPATH": f"{shim}:{ROOT}"})
    assert "pip install pyroute2" in msg, msg
    # not root (no CAP_NET_ADMIN)
    # (nobody reads its own copy of the package: the checkout may be readable by root only)
    copy = readable_package(w.tmp / "nobody")
    # (asyncio's loop: what nobody may import of root's site-packages is not the point here)
    msg = _refused(w, "--loop", "asyncio", env={"PYTHONPATH": str(copy)},
                   prefix=("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           "--inh-caps=-all", "--"))
    assert "run them as root" in msg, msg
