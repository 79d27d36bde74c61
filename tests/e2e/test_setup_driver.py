"""The whole host through tun2proxy: HostSetup around a running Driver, as --setup will be.

Three namespaces: the "host" H (uplink to the ISP, default routes via it), the ISP I running
dante on a far address (198.51.100.9) and *not forwarding*, and a far network F behind I
holding an HTTP server (172.31.0.2, fd31::2). The only way from H to F is through the proxy.
A small script in H does what the CLI's --setup will do: open the TUN, mark its own sockets,
apply the host setup with --dns virtual, run the Driver, tear down on SIGTERM.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tun2proxy.testing.netlab import missing_prerequisites, run, wait_for

from .conftest import _unavailable
from .servers import HttpServer, payload

pytestmark = pytest.mark.timeout(180)

FAR_V4, FAR_V6 = "172.31.0.2", "fd31::2"
PROXY = "198.51.100.9"
BYPASSED = "203.0.113.5"  # on the ISP, reached without the proxy (--bypass)
LAN = "192.0.2.1"  # the ISP's address on the uplink: on-link, reached directly
TUN = "t2psd0"

SCRIPT = r"""
import asyncio, json, logging, signal, subprocess, sys
from tun2proxy.driver import Driver
from tun2proxy.driver.loop import DriverConfig
from tun2proxy.hostsetup import DEFAULT_FWMARK, HostSetup, SetupPlan
from tun2proxy.link.netconf import InterfaceConfig
from tun2proxy.link.tun_linux import TunLink, open_tun
from tun2proxy.service import notify_ready, notify_stopping
from tun2proxy.stack import StackConfig
from tun2proxy.upstream import upstream_from_url
from tun2proxy.upstream.egress import Egress, Outbound

cfg = json.loads(sys.argv[1])
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
outbound = Outbound(fwmark=DEFAULT_FWMARK)
egress = Egress(outbound)  # our own sockets stay out
dev = open_tun(cfg["tun"], config=InterfaceConfig(
    addresses=("10.0.0.33/24", "fdfe:dcba:9876::1/125"), mtu=1500))
link = TunLink(dev)
driver = Driver(Driver.make_stack(StackConfig(mtu=link.mtu)), link,
                upstream_from_url(cfg["proxy"]),
                DriverConfig(dns="virtual", dns_addr=("8.8.8.8", 53)), egress=egress)
plan = SetupPlan(tun=dev.name, proxies=[cfg["proxy_addr"]], dns="8.8.8.8",
                 exclude=cfg["bypass"], resolv_conf=cfg["resolv"], tun_created=True)

async def main() -> None:
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, driver.stop)
    with HostSetup(plan, state_dir=cfg["state_dir"]) as s:
        # "ip netns exec" bind-mounted the old file over /etc/resolv.conf for this process:
        # show it the replaced one, as a process on a real host would see it (this mount
        # namespace is ours alone: nothing propagates back)
        subprocess.run(["umount", "/etc/resolv.conf"], check=True)
        subprocess.run(["mount", "--bind", cfg["resolv"], "/etc/resolv.conf"], check=True)
        if cfg["own_resolver"]:  # our own lookups ask the original nameservers, marked
            from tun2proxy.upstream.own_dns import OwnResolver
            egress.resolver = OwnResolver(s.original_nameservers, outbound).getaddrinfo
        notify_ready("routing")
        print("READY", flush=True)
        await driver.run()
        notify_stopping()

asyncio.run(main())
print("EXITED", flush=True)
"""

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
    H: str
    I: str  # noqa: E741
    F: str
    tmp: Path
    resolv: Path
    dante_log: Path

    def ip(self, *args: str) -> str:
        return run("ip", "-n", self.H, *args).stdout

    def snapshot(self) -> dict[str, object]:
        return {
            "rule": self.ip("rule"), "rule6": self.ip("-6", "rule"),
            "route": self.ip("route", "show", "table", "all"),
            "route6": self.ip("-6", "route", "show", "table", "all"),
            "link": self.ip("-o", "link"), "resolv": self.resolv.read_bytes(),
        }


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    reason = missing_prerequisites(("danted", "curl", "dnsmasq", "iperf3"))
    if reason:
        _unavailable(reason)
    n = f"t2pd{os.getpid() % 10000}"
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
        for ns, dev, v4, v6 in ((w.H, f"{n}u", "192.0.2.2/24", "2001:db8:1::2/64"),
                                (w.I, f"{n}i", "192.0.2.1/24", "2001:db8:1::1/64"),
                                (w.I, f"{n}f", "172.31.0.1/24", "fd31::1/64"),
                                (w.F, f"{n}s", f"{FAR_V4}/24", f"{FAR_V6}/64")):
            run("ip", "-n", ns, "addr", "add", v4, "dev", dev)
            run("ip", "-n", ns, "addr", "add", v6, "dev", dev, "nodad")
            run("ip", "-n", ns, "link", "set", dev, "up")
        run("ip", "-n", w.H, "route", "add", "default", "via", "192.0.2.1")
        run("ip", "-n", w.H, "-6", "route", "add", "default", "via", "2001:db8:1::1")
        run("ip", "-n", w.I, "addr", "add", f"{PROXY}/32", "dev", "lo")
        run("ip", "-n", w.I, "addr", "add", f"{BYPASSED}/32", "dev", "lo")
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
        assert wait_for(lambda: w.dante_log.exists() and _listening(w.I, PROXY, 1080))
        # the host's original nameserver (on the LAN) knows the proxy by name
        dlog = open(tmp_path / "dnsmasq.out", "wb")  # noqa: SIM115 - the Popen owns it
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", w.I, "dnsmasq", "--no-daemon", "--pid-file=",
             "--listen-address=192.0.2.1", "--bind-interfaces", "--port=53", "--no-resolv",
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


def _listening(ns: str, addr: str, port: int) -> bool:
    r = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Hltn", f"src {addr}:{port}"],
                       capture_output=True, text=True, check=False)
    return bool(r.stdout.strip())


def _curl(w: World, url: str, max_time: int = 30) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["ip", "netns", "exec", w.H, "curl", "-sS", "-g", "--max-time", str(max_time), "-o", "-",
         url],
        capture_output=True, timeout=60, check=False,
    )


@contextlib.contextmanager
def _tun2proxy(w: World, proxy: str, *, own_resolver: bool) -> Iterator[list[bytes]]:
    """The script above in H; yields its output so far (a one-element list), then SIGTERM."""
    cfg = {"tun": TUN, "proxy": f"socks5://{proxy}:1080", "proxy_addr": PROXY,
           "resolv": str(w.resolv), "state_dir": str(w.tmp / "run"),
           "own_resolver": own_resolver, "bypass": [f"{BYPASSED}/32"]}
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    p = subprocess.Popen(
        ["ip", "netns", "exec", w.H, sys.executable, "-c", SCRIPT, json.dumps(cfg)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )
    out = [b""]
    try:
        assert p.stdout is not None
        while b"READY" not in out[0] and p.poll() is None:
            r, _, _ = select.select([p.stdout], [], [], 30)
            if not r:
                break
            out[0] += os.read(p.stdout.fileno(), 65536)
        assert b"READY" in out[0], out[0].decode(errors="replace")
        yield out
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGTERM)
        try:
            rest, _ = p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            rest, _ = p.communicate()
        out[0] += rest or b""
    assert p.returncode == 0, out[0].decode(errors="replace")
    assert b"setup: undone" in out[0]


def _iperf3(w: World, server: str, extra: list[str]) -> tuple[int, int]:
    """``(sent, received)`` bytes of a 20 MiB iperf3 transfer between H and ``server`` in F
    (the receiver's count is taken when the sender is done, so it may be a little short)."""
    srv = subprocess.Popen(["ip", "netns", "exec", w.F, "iperf3", "-s", "-1", "-B", server],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: _listening(w.F, server, 5201))
        out = w.tmp / "iperf3.json"  # a file, not a pipe: -J writes everything at the end
        with open(out, "wb") as f:
            res = subprocess.run(
                ["ip", "netns", "exec", w.H, "iperf3", "-c", server, "-n", "20M", "-J", *extra],
                stdout=f, stderr=subprocess.PIPE, timeout=120, check=False,
            )
        assert res.returncode == 0, res.stderr
        end = json.loads(out.read_text())["end"]
        return int(end["sum_sent"]["bytes"]), int(end["sum_received"]["bytes"])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(srv.pid, signal.SIGTERM)
        srv.wait(10)


def test_the_host_reaches_the_far_network_only_through_the_proxy(world: World) -> None:
    w = world
    size, seed = 2_000_000, 7
    want = hashlib.sha256(payload(size, seed)).hexdigest()
    # before: the ISP does not forward, so the far server is out of reach
    assert _curl(w, f"http://{FAR_V4}:8080/bytes/10/1", max_time=2).returncode != 0
    before = w.snapshot()
    with _tun2proxy(w, PROXY, own_resolver=False) as out:
        assert b"setup: " + TUN.encode() + b" carries" in out[0]
        for url in (f"http://{FAR_V4}:8080/bytes/{size}/{seed}",
                    f"http://[{FAR_V6}]:8080/bytes/{size}/{seed}",
                    f"http://far.test:8080/bytes/{size}/{seed}"):  # resolved by the host
            res = _curl(w, url)
            assert res.returncode == 0, (url, res.stderr)
            assert hashlib.sha256(res.stdout).hexdigest() == want, url
        lines = [ln for ln in w.dante_log.read_text(errors="replace").splitlines()
                 if ".8080" in ln and "tcp/connect [:" in ln]
        # the literal and the name (which dante resolved itself: it logs the result)
        assert sum(f"{FAR_V4}.8080" in ln for ln in lines) >= 2, lines
        assert any(f"{FAR_V6}.8080" in ln for ln in lines), lines
        # the host's resolver got a virtual address from tun2proxy, not the real one
        res2 = subprocess.run(
            ["ip", "netns", "exec", w.H, "curl", "-sS", "--max-time", "30", "-o", "/dev/null",
             "-w", "%{remote_ip}", "http://far.test:8080/bytes/10/1"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert res2.returncode == 0, res2.stderr
        fake = ipaddress.ip_address(res2.stdout.strip())
        assert any(fake in ipaddress.ip_network(n)
                   for n in ("198.18.0.0/15", "fd27:4a46:c40a::/64")), fake
        # iperf3 (kernel TCP both ends), both directions, a fixed amount each way
        for reverse in ([], ["-R"]):
            sent, received = _iperf3(w, FAR_V4, reverse)
            assert sent >= 20 << 20
            assert received > 0
        # a bypassed destination and the LAN are reached directly: the proxy sees nothing
        for addr in (BYPASSED, LAN):
            res = _curl(w, f"http://{addr}:8080/bytes/1000/5")
            assert res.stdout == payload(1000, 5), (addr, res.stderr)
        log = w.dante_log.read_text(errors="replace")
        assert BYPASSED not in log
        assert f"{LAN}.8080" not in log
    assert w.snapshot() == before


@pytest.mark.parametrize("own_resolver", [True, False], ids=["own-resolver", "control-system"])
def test_a_proxy_given_by_name_is_resolved_outside_the_tunnel(
    world: World, own_resolver: bool
) -> None:
    """tun2proxy resolves the proxy's name for every connection. With the host resolver
    pointed into the tunnel, the system resolver's (unmarked) query comes back to tun2proxy
    itself and gets a virtual address: the control run shows the connection then fails;
    OwnResolver asks the original nameserver from a marked socket and it works."""
    w = world
    before = w.snapshot()
    with _tun2proxy(w, "proxy.test", own_resolver=own_resolver):
        res = _curl(w, f"http://{FAR_V4}:8080/bytes/1000/3", max_time=10)
        assert (res.returncode == 0) is own_resolver, res.stderr
        if own_resolver:
            assert res.stdout == payload(1000, 3)
    assert w.snapshot() == before
