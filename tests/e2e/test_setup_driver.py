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
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tun2proxy.testing.netlab import missing_prerequisites

from .conftest import _unavailable
from .hostworld import BYPASSED, FAR_V4, FAR_V6, LAN, PROXY, TOOLS, World, curl, iperf3, make_world
from .servers import payload

pytestmark = pytest.mark.timeout(180)

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

@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One lab for this module: every test gives H back as it found it (and checks it)."""
    reason = missing_prerequisites(TOOLS)
    if reason:
        _unavailable(reason)
    with make_world("t2pd", tmp_path_factory.mktemp("setup-driver")) as w:
        yield w


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


def test_the_host_reaches_the_far_network_only_through_the_proxy(world: World) -> None:
    w = world
    size, seed = 2_000_000, 7
    want = hashlib.sha256(payload(size, seed)).hexdigest()
    # before: the ISP does not forward, so the far server is out of reach
    assert curl(w, f"http://{FAR_V4}:8080/bytes/10/1", max_time=2).returncode != 0
    before = w.snapshot()
    with _tun2proxy(w, PROXY, own_resolver=False) as out:
        assert b"setup: " + TUN.encode() + b" carries" in out[0]
        for url in (f"http://{FAR_V4}:8080/bytes/{size}/{seed}",
                    f"http://[{FAR_V6}]:8080/bytes/{size}/{seed}",
                    f"http://far.test:8080/bytes/{size}/{seed}"):  # resolved by the host
            res = curl(w, url)
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
            sent, received = iperf3(w, FAR_V4, reverse)
            assert sent >= 20 << 20
            assert received > 0
        # a bypassed destination and the LAN are reached directly: the proxy sees nothing
        for addr in (BYPASSED, LAN):
            res = curl(w, f"http://{addr}:8080/bytes/1000/5")
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
        res = curl(w, f"http://{FAR_V4}:8080/bytes/1000/3", max_time=10)
        assert (res.returncode == 0) is own_resolver, res.stderr
        if own_resolver:
            assert res.stdout == payload(1000, 3)
    assert w.snapshot() == before
