"""Two Drivers in one process, each with its own TUN and its own marked direct upstream,
chained: an app's connection enters TUN A, driver A dials it with mark 1, the policy routes
send that socket into TUN B, driver B dials it with mark 2 out to the server. Driver B must
not take driver A's socket for its own loop (a process-wide registry did: B refused every
flow). Then A stops and B alone carries a new flow.

The namespaces (N: both TUNs and the script; S: an echo server) are made and removed here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tun2proxy.testing.netlab import missing_prerequisites, run, wait_for

from .conftest import _unavailable

pytestmark = pytest.mark.timeout(120)

PORT = 7010

ECHO = f"PORT = {PORT}\n" + r"""
import asyncio
async def echo(r, w):
    while data := await r.read(65536):
        w.write(data)
        await w.drain()
    w.close()
async def main():
    srv = await asyncio.start_server(echo, "0.0.0.0", PORT)
    print("LISTENING", flush=True)
    await srv.serve_forever()
asyncio.run(main())
"""

SCRIPT = f"PORT = {PORT}\n" + r"""
import asyncio, hashlib, json, os, sys
from tun2proxy.driver import Driver, DriverConfig
from tun2proxy.link.netconf import InterfaceConfig
from tun2proxy.link.tun_linux import TunLink, open_tun
from tun2proxy.stack import StackConfig
from tun2proxy.upstream.direct import DirectUpstream

def driver(name, addr, mark):
    dev = open_tun(name, config=InterfaceConfig(addresses=(addr,), mtu=1500))
    link = TunLink(dev)
    return Driver(Driver.make_stack(StackConfig(mtu=link.mtu)), link,
                  DirectUpstream(fwmark=mark), DriverConfig(connect_timeout=5.0, udp="reject"))

async def echo(host, n):
    r, w = await asyncio.wait_for(asyncio.open_connection(host, PORT), 10)
    data = os.urandom(n)
    w.write(data)
    w.write_eof()
    got = await asyncio.wait_for(r.read(-1), 20)
    w.close()
    return hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()

a, b = driver("t2pA", "10.1.0.1/24", 1), driver("t2pB", "10.2.0.1/24", 2)  # before the loop

async def main():
    ta, tb = asyncio.create_task(a.run()), asyncio.create_task(b.run())
    print("UP", flush=True)
    sys.stdin.readline()  # the test sets the routes
    out = {}
    try:
        out["chained"] = await echo("10.9.0.2", 300_000)
    except Exception as e:
        out["chained"] = repr(e)
    out["a1"], out["b1"] = a.stats(), b.stats()
    a.stop()
    await asyncio.wait_for(ta, 5)
    out["b_alive"] = not tb.done()
    try:
        out["b_only"] = await echo("10.9.0.3", 300_000)
    except Exception as e:
        out["b_only"] = repr(e)
    out["a2"], out["b2"] = a.stats(), b.stats()
    b.stop()
    await asyncio.wait_for(tb, 5)
    print("RESULT " + json.dumps(out, default=str), flush=True)

asyncio.run(main())
"""


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    reason = missing_prerequisites(())
    if reason:
        _unavailable(reason)
    n, s = f"t2p2d{os.getpid() % 100000}N", f"t2p2d{os.getpid() % 100000}S"
    made: list[str] = []
    try:
        for ns in (n, s):
            run("ip", "netns", "add", ns)
            made.append(ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "link", "add", "t2p2dn", "netns", n, "type", "veth", "peer", "name", "t2p2ds",
            "netns", s)
        run("ip", "-n", n, "addr", "add", "10.9.0.1/24", "dev", "t2p2dn")
        run("ip", "-n", s, "addr", "add", "10.9.0.2/24", "dev", "t2p2ds")
        run("ip", "-n", s, "addr", "add", "10.9.0.3/24", "dev", "t2p2ds")
        run("ip", "-n", n, "link", "set", "t2p2dn", "up")
        run("ip", "-n", s, "link", "set", "t2p2ds", "up")
        for key in ("all", "default"):
            run("ip", "netns", "exec", n, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0")
        yield n, s
    finally:
        for ns in reversed(made):
            run("ip", "netns", "del", ns, check=False)


def test_two_drivers_in_one_process_chained_through_their_tuns(
    namespaces: tuple[str, str],
) -> None:
    n, s = namespaces
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    server = subprocess.Popen(
        ["ip", "netns", "exec", s, sys.executable, "-c", ECHO],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    proc = subprocess.Popen(
        ["ip", "netns", "exec", n, sys.executable, "-c", SCRIPT], env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "LISTENING"
        assert proc.stdout is not None and proc.stdin is not None
        first = proc.stdout.readline().strip()
        if first != "UP":
            proc.kill()
            pytest.fail(f"the script did not start: {proc.communicate(timeout=10)[1][-3000:]}")
        assert wait_for(lambda: "t2pB" in run("ip", "-n", n, "link").stdout, 5)
        for dev in ("t2pA", "t2pB"):
            run("ip", "netns", "exec", n, "sysctl", "-qw", f"net.ipv4.conf.{dev}.rp_filter=0")
        # The app reaches 10.9.0.2 through TUN A; A's sockets (mark 1) go into TUN B; B's
        # (mark 2) go out to the server. 10.9.0.3 goes straight into TUN B.
        run("ip", "-n", n, "route", "add", "10.9.0.2/32", "dev", "t2pA")
        run("ip", "-n", n, "route", "add", "10.9.0.3/32", "dev", "t2pB")
        run("ip", "-n", n, "route", "add", "10.9.0.0/24", "dev", "t2pB", "table", "101")
        run("ip", "-n", n, "route", "add", "10.9.0.0/24", "dev", "t2p2dn", "table", "102")
        run("ip", "-n", n, "rule", "add", "fwmark", "1", "lookup", "101", "priority", "101")
        run("ip", "-n", n, "rule", "add", "fwmark", "2", "lookup", "102", "priority", "102")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out_text, err = proc.communicate(timeout=90)
    finally:
        for p in (proc, server):
            if p.poll() is None:
                p.kill()
                p.wait(5)
    lines = [line for line in out_text.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no result; stderr:\n{err[-3000:]}"
    out = json.loads(lines[0][len("RESULT "):])
    a1, b1, a2, b2 = out["a1"], out["b1"], out["a2"], out["b2"]
    assert (a1["flows_looped"], b1["flows_looped"]) == (0, 0)  # B did not take A's as its own
    assert out["chained"] is True, (out["chained"], err[-3000:])
    assert (a1["flows_opened"], b1["flows_opened"]) == (1, 1)  # the one flow, through both
    assert out["b_alive"] is True and out["b_only"] is True
    assert (a2["flows_opened"], b2["flows_opened"]) == (1, 2)  # stopped A saw nothing more
