"""A small network lab for end-to-end tests and benchmarks: namespaces, veths, processes.

Linux only, needs root. Not imported by the package itself.

Everything it creates is named with a per-run prefix and removed by :meth:`Lab.close`, even
after failures. Traffic stays inside the namespaces it creates; the host's own namespace,
routes and resolver are never touched. Processes are ended by PID, never by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tun2proxy.link.netns import entered, netns_path

ROUTER_V4 = "10.200.0.1"
SERVER_V4 = "10.200.0.2"
ROUTER_V6 = "fd20::1"
SERVER_V6 = "fd20::2"
TUN_NAME = "t2p0"
TUN_V4 = "10.0.0.33/24"
TUN_V6 = "fdfe:dcba:9876::1/125"


def run(*cmd: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing output; raise with its stderr on failure."""
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def missing_prerequisites(tools: Sequence[str] = ()) -> str | None:
    """Why end-to-end tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "end-to-end tests need root (network namespaces, TUN devices)"
    if not os.path.exists("/dev/net/tun"):
        return "end-to-end tests need /dev/net/tun"
    for t in ("ip", *tools):
        if shutil.which(t) is None:
            return f"end-to-end tests need {t!r} (run ./scripts/install-test-deps)"
    try:
        name = f"t2pprobe{os.getpid()}"
        run("ip", "netns", "add", name)
        run("ip", "netns", "del", name)
    except (RuntimeError, OSError) as e:
        return f"cannot create network namespaces here: {e}"
    return None


@dataclass
class Proc:
    """A process the lab started: ended by PID, with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int | None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode


@dataclass
class Lab:
    """Three namespaces: C (the apps; default routes into a TUN), R (tun2proxy and the SOCKS
    servers, on loopback), S (the servers apps talk to), with a veth between R and S."""

    prefix: str = field(default_factory=lambda: f"t2p{os.getpid() % 100000}")
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="t2p-e2e-")))
    procs: list[Proc] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    _netns_dirs: list[Path] = field(default_factory=list)

    @property
    def C(self) -> str:
        return f"{self.prefix}C"

    @property
    def R(self) -> str:
        return f"{self.prefix}R"

    @property
    def S(self) -> str:
        return f"{self.prefix}S"

    def setup(self) -> None:
        for ns in (self.C, self.R, self.S):
            run("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        rs, sr = f"{self.prefix}rs", f"{self.prefix}sr"
        run("ip", "link", "add", rs, "netns", self.R, "type", "veth", "peer", "name", sr,
            "netns", self.S)
        run("ip", "-n", self.R, "addr", "add", f"{ROUTER_V4}/24", "dev", rs)
        run("ip", "-n", self.R, "addr", "add", f"{ROUTER_V6}/64", "dev", rs, "nodad")
        run("ip", "-n", self.S, "addr", "add", f"{SERVER_V4}/24", "dev", sr)
        run("ip", "-n", self.S, "addr", "add", f"{SERVER_V6}/64", "dev", sr, "nodad")
        run("ip", "-n", self.R, "link", "set", rs, "up")
        run("ip", "-n", self.S, "link", "set", sr, "up")
        self.router_if = rs
        self.server_if = sr
        self.make_tun(TUN_NAME)

    def make_tun(self, name: str, mtu: int = 65535, *, multi_queue: bool = False) -> None:
        """A persistent TUN in C, addressed, up, and the default route (v4 and v6)."""
        C = self.C
        mq = ["multi_queue"] if multi_queue else []
        run("ip", "-n", C, "tuntap", "add", "dev", name, "mode", "tun", *mq)
        run("ip", "-n", C, "addr", "add", TUN_V4, "dev", name)
        run("ip", "-n", C, "addr", "add", TUN_V6, "dev", name, "nodad")
        run("ip", "-n", C, "link", "set", name, "up", "mtu", str(mtu))
        run("ip", "-n", C, "route", "replace", "default", "dev", name)
        run("ip", "-n", C, "-6", "route", "replace", "default", "dev", name)

    def start(self, name: str, ns: str | None, argv: Sequence[str]) -> Proc:
        """Start ``argv`` inside namespace ``ns`` (None: here); output goes to a log file."""
        log = self.tmp / f"{name}.log"
        cmd = list(argv) if ns is None else ["ip", "netns", "exec", ns, *argv]
        f = open(log, "wb")  # noqa: SIM115 - the Popen owns it
        popen = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        f.close()
        p = Proc(name, popen, log)
        self.procs.append(p)
        return p

    @contextlib.contextmanager
    def inside(self, ns: str) -> Iterator[None]:
        """Run a block in namespace ``ns`` (sockets created there stay there)."""
        with entered(netns_path(ns)):
            yield

    def socket(
        self, ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
    ) -> socket.socket:
        """A socket that lives in namespace ``ns``."""
        with self.inside(ns):
            return socket.socket(family, kind)

    def netns_resolver(self, ns: str, nameserver: str) -> None:
        """Give processes started in ``ns`` (``ip netns exec``) their own resolv.conf."""
        d = Path("/etc/netns") / ns
        d.mkdir(parents=True, exist_ok=True)
        (d / "resolv.conf").write_text(f"nameserver {nameserver}\n")
        self._netns_dirs.append(d)

    def close(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        for ns in reversed(self.namespaces):
            run("ip", "netns", "del", ns, check=False)
        for d in self._netns_dirs:
            shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


def wait_for(predicate: object, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll ``predicate()`` until true or ``timeout``; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        ok = predicate()  # type: ignore[operator]
        if ok or time.monotonic() > deadline:
            return bool(ok)
        time.sleep(interval)
