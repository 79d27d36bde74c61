"""A small lab for whole-host routing (``--setup``): a "host" namespace H with an uplink to an
"ISP" namespace I that runs dante on a far address and does *not* forward, and a far network
F behind I. The only way from H to F is through the proxy.

Addresses: H's uplink 192.0.2.2/24 and 2001:db8:1::2/64 (default routes via I's 192.0.2.1 and
2001:db8:1::1); dante on 198.51.100.9:1080 (I's loopback), leaving towards F; F's HTTP servers
on 172.31.0.2 and fd31::2 (port 8080), whose names (far.test) only dante knows; an HTTP server
on a "bypassed" address 203.0.113.5 (I's loopback) and on the LAN address 192.0.2.1 (on-link).
H's resolver file is ``/etc/netns/H/resolv.conf`` (nameserver 192.0.2.1: a dnsmasq in I that
knows proxy.test). Everything lives in namespaces made here and is removed on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tun2proxy.testing.netlab import run, wait_for

from .servers import HttpServer

FAR_V4, FAR_V6 = "172.31.0.2", "fd31::2"
PROXY = "198.51.100.9"
BYPASSED = "203.0.113.5"  # on the ISP, reached without the proxy (--bypass)
LAN = "192.0.2.1"  # the ISP's address on the uplink: on-link, reached directly
UPLINK_V4 = "192.0.2.2"
ADMIN_V4 = "198.51.100.7"  # far away beyond the ISP: the SSH client
TOOLS = ("danted", "curl", "dnsmasq", "iperf3")

DANTE = """\
logoutput: {log}
internal: {proxy} port = 1080
external: {external}
socksmethod: none
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 }}
socks pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 log: connect }}
socks pass {{ from: 0.0.0.0/0 to: ::/0 log: connect }}
socks pass {{ from: 0.0.0.0/0 to: .test log: connect }}
"""


@dataclass
class World:
    """The namespaces, H's resolver file and dante's log."""

    H: str
    I: str  # noqa: E741 - the ISP
    F: str
    tmp: Path
    resolv: Path
    dante_log: Path

    def ip(self, *args: str) -> str:
        return run("ip", "-n", self.H, *args).stdout

    def snapshot(self) -> dict[str, object]:
        """Everything --setup may touch in H, as text and bytes."""
        return {
            "rule": self.ip("rule"), "rule6": self.ip("-6", "rule"),
            "route": self.ip("route", "show", "table", "all"),
            "route6": self.ip("-6", "route", "show", "table", "all"),
            "link": self.ip("-o", "link"), "resolv": self.resolv.read_bytes(),
            "resolv_link": os.readlink(self.resolv) if self.resolv.is_symlink() else None,
        }


def listening(ns: str, addr: str, port: int) -> bool:
    r = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Hltn", f"src {addr}:{port}"],
                       capture_output=True, text=True, check=False)
    return bool(r.stdout.strip())


@contextlib.contextmanager
def make_world(prefix: str, tmp_path: Path) -> Iterator[World]:
    """Build the lab (namespace names start with ``prefix``, at most 6 characters); removed
    again on exit, whatever happened."""
    n = f"{prefix}{os.getpid() % 10000}"
    w = World(f"{n}H", f"{n}I", f"{n}F", tmp_path, Path("/etc/netns") / f"{n}H" / "resolv.conf",
              tmp_path / "dante.log")
    procs: list[subprocess.Popen[bytes]] = []
    servers: list[HttpServer] = []
    etc = [Path("/etc/netns") / w.H, Path("/etc/netns") / w.I]
    try:
        for ns in (w.H, w.I, w.F):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
            for conf in ("all", "default"):
                run("ip", "netns", "exec", ns, "sysctl", "-qw",
                    f"net.ipv6.conf.{conf}.accept_dad=0")
        run("ip", "link", "add", f"{n}u", "netns", w.H, "type", "veth", "peer", "name",
            f"{n}i", "netns", w.I)
        run("ip", "link", "add", f"{n}f", "netns", w.I, "type", "veth", "peer", "name",
            f"{n}s", "netns", w.F)
        for ns, dev, v4, v6 in ((w.H, f"{n}u", f"{UPLINK_V4}/24", "2001:db8:1::2/64"),
                                (w.I, f"{n}i", f"{LAN}/24", "2001:db8:1::1/64"),
                                (w.I, f"{n}f", "172.31.0.1/24", "fd31::1/64"),
                                (w.F, f"{n}s", f"{FAR_V4}/24", f"{FAR_V6}/64")):
            run("ip", "-n", ns, "addr", "add", v4, "dev", dev)
            run("ip", "-n", ns, "addr", "add", v6, "dev", dev, "nodad")
            run("ip", "-n", ns, "link", "set", dev, "up")
        run("ip", "-n", w.H, "route", "add", "default", "via", LAN)
        run("ip", "-n", w.H, "-6", "route", "add", "default", "via", "2001:db8:1::1")
        for a in (PROXY, BYPASSED, ADMIN_V4):
            run("ip", "-n", w.I, "addr", "add", f"{a}/32", "dev", "lo")
        for d in etc:
            d.mkdir(parents=True, exist_ok=True)
        w.resolv.write_bytes(b"nameserver 192.0.2.1\n")
        # dante resolves the names it is given from its namespace's hosts file
        (etc[1] / "hosts").write_text(f"{FAR_V4} far.test\n{FAR_V6} far.test\n")
        sockd = tmp_path / "sockd.conf"
        sockd.write_text(DANTE.format(log=w.dante_log, proxy=PROXY, external=f"{n}f"))
        log = open(tmp_path / "danted.out", "wb")  # noqa: SIM115 - the Popen owns it
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", w.I, "danted", "-f", str(sockd), "-p",
             str(tmp_path / "sockd.pid")], stdout=log, stderr=subprocess.STDOUT))
        log.close()
        assert wait_for(lambda: w.dante_log.exists() and listening(w.I, PROXY, 1080))
        # the host's original nameserver (on the LAN) knows the proxy by name
        dlog = open(tmp_path / "dnsmasq.out", "wb")  # noqa: SIM115 - the Popen owns it
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", w.I, "dnsmasq", "--no-daemon", "--pid-file=",
             f"--listen-address={LAN}", "--bind-interfaces", "--port=53", "--no-resolv",
             "--no-hosts", f"--address=/proxy.test/{PROXY}", "--log-queries",
             "--log-facility=-"], stdout=dlog, stderr=subprocess.STDOUT))
        dlog.close()
        assert wait_for(lambda: "started" in (tmp_path / "dnsmasq.out").read_text())
        servers = [HttpServer(w.F, FAR_V4, 8080), HttpServer(w.F, FAR_V6, 8080),
                   HttpServer(w.I, BYPASSED, 8080), HttpServer(w.I, LAN, 8080)]
        yield w
    finally:
        for s in servers:
            s.close()
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        for ns in (w.H, w.I, w.F):
            run("ip", "netns", "del", ns, check=False)
        for d in etc:
            shutil.rmtree(d, ignore_errors=True)


def curl(w: World, url: str, max_time: int = 30) -> subprocess.CompletedProcess[bytes]:
    """curl run by the kernel in H (its resolver: H's resolver file)."""
    return subprocess.run(
        ["ip", "netns", "exec", w.H, "curl", "-sS", "-g", "--max-time", str(max_time), "-o", "-",
         url],
        capture_output=True, timeout=60, check=False,
    )


def iperf3(w: World, server: str, extra: list[str], amount: str = "20M") -> tuple[int, int]:
    """``(sent, received)`` bytes of an iperf3 transfer of ``amount`` between H and
    ``server`` in F (the receiver's count is taken when the sender is done, so it may be a
    little short)."""
    srv = subprocess.Popen(["ip", "netns", "exec", w.F, "iperf3", "-s", "-1", "-B", server],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: listening(w.F, server, 5201))
        out = w.tmp / "iperf3.json"  # a file, not a pipe: -J writes everything at the end
        with open(out, "wb") as f:
            res = subprocess.run(
                ["ip", "netns", "exec", w.H, "iperf3", "-c", server, "-n", amount, "-J", *extra],
                stdout=f, stderr=subprocess.PIPE, timeout=120, check=False,
            )
        assert res.returncode == 0, res.stderr
        end = json.loads(out.read_text())["end"]
        return int(end["sum_sent"]["bytes"]), int(end["sum_received"]["bytes"])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(srv.pid, signal.SIGTERM)
        srv.wait(10)
