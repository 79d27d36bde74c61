"""``--workers 2``: a multi-queue TUN created by tun2proxy in C, one process per queue.

Shows that the kernel really spreads flows over both workers, that every byte arrives
(SHA-256, both ways, IPv4 and IPv6, through dante), that virtual DNS addresses made by one
worker resolve in the other (the flows' names reach dante), that SIGUSR1 reaches every
worker, and that SIGTERM stops them all and removes the device.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from tun2proxy.control.client import Cluster
from tun2proxy.testing.netlab import SERVER_V4, SERVER_V6, Lab, Proc, run, wait_for

from .conftest import DANTE_PORT, OFFLOAD, STREAM_PORT
from .servers import payload

pytestmark = pytest.mark.timeout(240)

DEV = "t2pmq0"
FLOWS = 24
SIZE = 1 << 20


def _start(lab: Lab, *extra: str) -> Proc:
    p = lab.start("tun2proxy-workers", lab.R, [
        sys.executable, "-m", "tun2proxy", "--tun", DEV, "--tun-netns", lab.C,
        "--proxy", f"socks5://127.0.0.1:{DANTE_PORT}", "--workers", "2", "-v", "debug",
        "--offload", OFFLOAD, *extra,
    ])
    assert wait_for(lambda: "2 queues" in p.output() or not p.alive(), 15), p.output()
    assert p.alive(), p.output()
    # Routes in C that prefer the multi-queue device to the lab's own TUN.
    for dst in (f"{SERVER_V4}/32", "198.18.0.0/15"):
        run("ip", "-n", lab.C, "route", "replace", dst, "dev", DEV)
    run("ip", "-n", lab.C, "-6", "route", "replace", f"{SERVER_V6}/128", "dev", DEV)
    return p


def _stop(lab: Lab, p: Proc) -> None:
    p.popen.send_signal(signal.SIGTERM)
    assert p.popen.wait(20) == 0, p.output()[-3000:]
    gone = run("ip", "-n", lab.C, "link", "show", DEV, check=False)
    assert gone.returncode != 0, "the device we created went away with us"


def _round_trip(lab: Lab, host: str, seed: int) -> bool:
    """SOURCE then SINKN of SIZE bytes on two connections; True if both hashes match."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with lab.socket(lab.C, fam) as s:
        s.settimeout(60)
        s.connect((host, STREAM_PORT))
        s.sendall(f"SOURCE {SIZE} {seed}\n".encode())
        got = b""
        while c := s.recv(1 << 20):
            got += c
    ok = hashlib.sha256(got).digest() == hashlib.sha256(payload(SIZE, seed)).digest()
    data = payload(SIZE, seed + 1000)
    with lab.socket(lab.C, fam) as s:
        s.settimeout(60)
        s.connect((host, STREAM_PORT))
        s.sendall(f"SINKN {SIZE}\n".encode())
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while c := s.recv(4096):
            reply += c
    return ok and reply.decode().split() == [hashlib.sha256(data).hexdigest(), str(SIZE)]


def _worker_flows(p: Proc) -> dict[int, int]:
    """TCP flows each worker opened, from the lines workers log as they stop."""
    found = re.findall(r"tun2proxy\[(\d)\]: INFO worker \d of 2 done: (\d+) TCP flows",
                       p.output())
    return {int(w): int(n) for w, n in found}


@pytest.mark.usefixtures("dante")
def test_two_workers_carry_parallel_flows_both_ways(lab: Lab) -> None:
    ctl = str(lab.tmp / "workers.sock")
    p = _start(lab, "--control", ctl)
    try:
        hosts = [SERVER_V4 if i % 2 == 0 else SERVER_V6 for i in range(FLOWS)]
        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            results = list(ex.map(lambda a: _round_trip(lab, *a),
                                  [(h, 40 + i) for i, h in enumerate(hosts)]))
        assert all(results), results
        before = p.output().count("stats {")
        p.popen.send_signal(signal.SIGUSR1)
        assert wait_for(lambda: p.output().count("stats {") >= before + 2, 5), p.output()[-2000:]
        # --control: one API per worker (PATH, PATH.1); the client asks them all
        assert wait_for(lambda: os.path.exists(ctl + ".1"), 10), p.output()[-2000:]
        cluster = Cluster(ctl)
        assert cluster.workers == 2
        st = cluster.stats()
        assert [s["worker"] for s in st] == [0, 1]
        assert sum(s["flows_ended"] for s in st) == 2 * FLOWS
        cluster.close()
    finally:
        _stop(lab, p)
    assert not os.path.exists(ctl) and not os.path.exists(ctl + ".1")
    flows = _worker_flows(p)
    assert set(flows) == {0, 1}, p.output()[-3000:]
    assert sum(flows.values()) == 2 * FLOWS
    assert min(flows.values()) > 0, f"the kernel used one queue only: {flows}"


@pytest.mark.usefixtures("dante", "dnsmasq")
def test_virtual_dns_names_resolve_in_every_worker(lab: Lab) -> None:
    p = _start(lab, "--dns", "virtual", "--dns-addr", SERVER_V4)
    log = lab.tmp / "sockd-inner.log"
    before = log.read_text() if log.exists() else ""
    try:
        # Each query and each connection is a new flow: over 16 of each, the queries and
        # the connections land on both workers in every combination.
        for i in range(16):
            fake = subprocess.run(
                ["ip", "netns", "exec", lab.C, "dig", "+short", "+time=2", "+tries=2",
                 f"@{SERVER_V4}", f"n{i}.name.test", "A"],
                capture_output=True, text=True, timeout=20, check=True,
            ).stdout.strip()
            assert fake.startswith("198.1"), fake
            res = subprocess.run(
                ["ip", "netns", "exec", lab.C, "curl", "-sS", "--fail", "-m", "20",
                 "--resolve", f"n{i}.name.test:8080:{fake}",
                 f"http://n{i}.name.test:8080/bytes/1000/{i}"],
                capture_output=True, timeout=30, check=False,
            )
            assert res.returncode == 0, (i, fake, res.stderr, p.output()[-2000:])
            assert len(res.stdout) == 1000
    finally:
        _stop(lab, p)
    new = log.read_text()[len(before):]
    for i in range(16):
        assert f"client requested target n{i}.name.test.8080" in new, new[-2000:]
    assert set(_worker_flows(p)) == {0, 1}


def test_workers_refuse_an_inherited_fd() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "tun2proxy", "--tun-fd", "3", "--workers", "2"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert res.returncode == 2
    assert "--workers needs a TUN device it opens itself" in res.stderr


@pytest.mark.usefixtures("dante")
def test_one_worker_attaches_to_an_existing_multi_queue_device(lab: Lab) -> None:
    run("ip", "-n", lab.C, "tuntap", "add", "dev", "t2pmq1", "mode", "tun", "multi_queue")
    try:
        p = lab.start("tun2proxy-mq1", lab.R, [
            sys.executable, "-m", "tun2proxy", "--tun", "t2pmq1", "--tun-netns", lab.C,
            "--proxy", f"socks5://127.0.0.1:{DANTE_PORT}", "-v", "debug",
        ])
        assert wait_for(lambda: "attached to t2pmq1" in p.output() or not p.alive(), 15)
        assert p.alive(), p.output()
        p.popen.send_signal(signal.SIGTERM)
        assert p.popen.wait(20) == 0, p.output()
    finally:
        run("ip", "-n", lab.C, "link", "del", "t2pmq1", check=False)
