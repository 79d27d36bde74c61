"""--setup's host routing (tun2proxy.hostsetup) in a "host" namespace with an uplink to an "ISP".

Everything that changes routes, rules, the resolver or devices happens inside the namespaces
these tests create (HostSetup(netns=...), or a child started with ``ip netns exec``); the
resolver file is a temporary file. The host namespace has a veth uplink (192.0.2.2/24,
2001:db8:1::2/64) with default routes via the ISP (192.0.2.1, 2001:db8:1::1); the ISP holds
"far" addresses on its loopback (198.51.100.0/24, 2001:db8:ff::/64, 203.0.113.5).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tun2proxy.hostsetup import (
    HostSetup,
    InjectedFailure,
    SetupError,
    SetupPlan,
    build_pieces,
    cleanup,
    parse_ssh_connection,
)
from tun2proxy.link.netconf import InterfaceConfig
from tun2proxy.link.netns import entered, netns_path
from tun2proxy.link.tun_linux import TunDevice, open_tun
from tun2proxy.testing.netlab import missing_prerequisites, run

from .conftest import _unavailable

pytestmark = pytest.mark.timeout(120)

UPLINK_V4, ISP_V4 = "192.0.2.2", "192.0.2.1"
UPLINK_V6, ISP_V6 = "2001:db8:1::2", "2001:db8:1::1"
ADMIN_V4, ADMIN_V6 = "198.51.100.7", "2001:db8:ff::7"  # the SSH client, far away
FAR_V4, FAR_V6 = "198.51.100.8", "2001:db8:ff::8"  # an ordinary far server
PROXY_V4, PROXY_V6 = "198.51.100.9", "2001:db8:ff::9"
BYPASSED = "203.0.113.5"
TUN = "t2pst0"
TUN_ADDRS = ("10.0.0.33/24", "fdfe:dcba:9876::1/125")
ORIGINAL_RESOLV = b"# from DHCP\nnameserver 192.0.2.1\nsearch lan.example\n"
_ids = itertools.count()


@dataclass
class Host:
    """The two namespaces, the resolver file and the state directory of one test."""

    H: str
    I: str  # noqa: E741 - the ISP
    tmp: Path
    resolv: Path = field(init=False)
    state_dir: Path = field(init=False)
    devices: list[TunDevice] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.resolv = self.tmp / "resolv.conf"
        self.state_dir = self.tmp / "run"

    def open_tun(self) -> TunDevice:
        dev = open_tun(TUN, netns=self.H, config=InterfaceConfig(addresses=TUN_ADDRS, mtu=1500))
        self.devices.append(dev)
        return dev

    def plan(self, **kw: object) -> SetupPlan:
        args: dict[str, object] = {
            "tun": TUN, "proxies": [PROXY_V4, PROXY_V6], "exclude": ["203.0.113.0/24"],
            "ssh": parse_ssh_connection(f"{ADMIN_V4} 50022 {UPLINK_V4} 22"),
            "dns": "8.8.8.8", "resolv_conf": str(self.resolv),
        }
        args.update(kw)
        return SetupPlan(**args)  # type: ignore[arg-type]

    def setup(self, plan: SetupPlan | None = None, **kw: object) -> HostSetup:
        return HostSetup(plan or self.plan(), state_dir=self.state_dir, netns=self.H, **kw)  # type: ignore[arg-type]

    def ip(self, *args: str) -> str:
        return run("ip", "-n", self.H, *args).stdout

    def snapshot(self) -> dict[str, object]:
        """Everything --setup may touch, as text and bytes."""
        p = self.resolv
        return {
            "rule": self.ip("rule"),
            "rule6": self.ip("-6", "rule"),
            "route": self.ip("route", "show", "table", "all"),
            "route6": self.ip("-6", "route", "show", "table", "all"),
            "link": self.ip("-o", "link"),
            "resolv": p.read_bytes() if p.exists() else None,
            "resolv_link": os.readlink(p) if p.is_symlink() else None,
        }

    def state_files(self) -> list[str]:
        return sorted(p.name for p in self.state_dir.glob("setup-*.json"))


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    reason = missing_prerequisites()
    if reason:
        _unavailable(reason)
    n = f"t2ps{os.getpid() % 10000}x{next(_ids)}"
    h = Host(f"{n}H", f"{n}I", tmp_path)
    up, isp = f"{n}u", f"{n}i"
    try:
        for ns in (h.H, h.I):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
            # no duplicate address detection: link-local addresses (and their routes) are
            # there at once, not a second later in the middle of a comparison
            for conf in ("all", "default"):
                run("ip", "netns", "exec", ns, "sysctl", "-qw",
                    f"net.ipv6.conf.{conf}.accept_dad=0")
        run("ip", "link", "add", up, "netns", h.H, "type", "veth", "peer", "name", isp,
            "netns", h.I)
        run("ip", "-n", h.H, "addr", "add", f"{UPLINK_V4}/24", "dev", up)
        run("ip", "-n", h.H, "addr", "add", f"{UPLINK_V6}/64", "dev", up, "nodad")
        run("ip", "-n", h.I, "addr", "add", f"{ISP_V4}/24", "dev", isp)
        run("ip", "-n", h.I, "addr", "add", f"{ISP_V6}/64", "dev", isp, "nodad")
        for ns, dev in ((h.H, up), (h.I, isp)):
            run("ip", "-n", ns, "link", "set", dev, "up")
        run("ip", "-n", h.H, "route", "add", "default", "via", ISP_V4)
        run("ip", "-n", h.H, "-6", "route", "add", "default", "via", ISP_V6)
        for a in (ADMIN_V4, FAR_V4, PROXY_V4, BYPASSED):
            run("ip", "-n", h.I, "addr", "add", f"{a}/32", "dev", "lo")
        for a in (ADMIN_V6, FAR_V6, PROXY_V6):
            run("ip", "-n", h.I, "addr", "add", f"{a}/128", "dev", "lo", "nodad")
        h.resolv.write_bytes(ORIGINAL_RESOLV)
        yield h
    finally:
        for d in h.devices:
            with contextlib.suppress(OSError):
                os.close(d.fd)
        for ns in (h.H, h.I):
            run("ip", "netns", "del", ns, check=False)


EXPECTED_RULES = {
    "rule": [
        "9100:\tfrom all fwmark 0x3074 lookup main",
        f"9102:\tfrom all to {PROXY_V4} lookup main",
        f"9102:\tfrom all to {ADMIN_V4} lookup main",
        "9102:\tfrom all to 203.0.113.0/24 lookup main",
        "9102:\tfrom all to 127.0.0.0/8 lookup main",
        "9102:\tfrom all to 169.254.0.0/16 lookup main",
        "9102:\tfrom all to 224.0.0.0/4 lookup main",
        "9102:\tfrom all to 255.255.255.255 lookup main",
        "9103:\tfrom all lookup main suppress_prefixlength 0",
        "9104:\tfrom all lookup 7368",
    ],
    "rule6": [
        "9100:\tfrom all fwmark 0x3074 lookup main",
        f"9102:\tfrom all to {PROXY_V6} lookup main",
        "9102:\tfrom all to ::1 lookup main",
        "9102:\tfrom all to fe80::/10 lookup main",
        "9102:\tfrom all to ff00::/8 lookup main",
        "9103:\tfrom all lookup main suppress_prefixlength 0",
        "9104:\tfrom all lookup 7368",
    ],
    # this iproute2 shows both families in "ip route show table all"
    "route": [f"default dev {TUN} table 7368 proto static",
              f"default dev {TUN} table 7368 proto static metric 1024 pref medium"],
    "route6": [f"default dev {TUN} table 7368 proto static metric 1024 pref medium"],
}


def _added(before: dict[str, object], after: dict[str, object], key: str) -> list[str]:
    old = {ln.strip() for ln in str(before[key]).splitlines()}
    new = [ln.strip() for ln in str(after[key]).splitlines()]
    assert old <= set(new), f"{key}: lines disappeared"
    return [ln for ln in new if ln not in old]


def test_apply_adds_exactly_the_expected_pieces_and_teardown_removes_them(host: Host) -> None:
    host.open_tun()
    before = host.snapshot()
    s = host.setup()
    summary = s.apply()
    assert s.original_nameservers == ["192.0.2.1"]
    during = host.snapshot()
    for key, want in EXPECTED_RULES.items():
        assert _added(before, during, key) == [w.strip() for w in want], key
    assert during["link"] == before["link"]
    resolv = during["resolv"]
    assert isinstance(resolv, bytes)
    assert b"\nnameserver 8.8.8.8\n" in resolv
    assert b"192.0.2.1" not in resolv
    assert b"search lan.example\n" in resolv
    assert host.state_files() == [f"setup-{TUN}.json"]
    state = json.loads((host.state_dir / f"setup-{TUN}.json").read_text())
    assert state["pid"] == os.getpid()
    assert [p["kind"] for p in state["pieces"]][-1] == "resolv"
    for word in (f"{TUN} carries this host's IPv4+IPv6", "table 7368", "rules 9100-9104",
                 "0x3074", f"proxy server {PROXY_V4}/32 {PROXY_V6}/128",
                 f"SSH session {ADMIN_V4}/32", "bypass 203.0.113.0/24", "loopback",
                 "link-local", "multicast", "nameserver 8.8.8.8"):
        assert word in summary, word
    assert s.teardown() == []
    assert host.snapshot() == before
    assert host.state_files() == []
    assert s.teardown() == []  # idempotent


@pytest.mark.parametrize("ipv6", ["auto-without-v6-default", "off"])
def test_ipv6_is_left_alone_when_not_wanted(host: Host, ipv6: str) -> None:
    if ipv6 == "off":
        plan = host.plan(ipv6="off")
    else:
        host.ip("-6", "route", "del", "default")
        plan = host.plan()
    host.open_tun()
    before = host.snapshot()
    with host.setup(plan) as s:
        during = host.snapshot()
        assert during["rule6"] == before["rule6"]
        assert during["route6"] == before["route6"]
        assert _added(before, during, "route") == [EXPECTED_RULES["route"][0]]
        assert len(_added(before, during, "rule")) == len(EXPECTED_RULES["rule"])
        assert "IPv4+IPv6" not in s.summary
    assert host.snapshot() == before


def test_strict_dns_sends_every_dns_packet_into_the_tunnel(host: Host) -> None:
    host.open_tun()
    before = host.snapshot()
    with host.setup(host.plan(dns_strict=True)):
        during = host.snapshot()
        for key in ("rule", "rule6"):
            added = _added(before, during, key)
            assert "9101:\tfrom all ipproto udp dport 53 lookup 7368".strip() in added
            assert "9101:\tfrom all ipproto tcp dport 53 lookup 7368".strip() in added
    assert host.snapshot() == before


def test_a_symlinked_resolver_comes_back_as_the_same_symlink(host: Host) -> None:
    target = host.tmp / "nm-resolv.conf"
    target.write_bytes(ORIGINAL_RESOLV)
    host.resolv.unlink()
    host.resolv.symlink_to(target)
    host.open_tun()
    before = host.snapshot()
    with host.setup():
        assert not host.resolv.is_symlink()
        assert target.read_bytes() == ORIGINAL_RESOLV
    assert host.snapshot() == before
    assert host.resolv.is_symlink()


def test_an_exception_inside_the_block_still_tears_down(host: Host) -> None:
    host.open_tun()
    before = host.snapshot()
    with pytest.raises(ZeroDivisionError), host.setup():
        1 / 0  # noqa: B018
    assert host.snapshot() == before
    assert host.state_files() == []


def test_a_failure_after_any_step_leaves_the_host_as_it_was(host: Host) -> None:
    dev = host.open_tun()
    before = host.snapshot()
    plan = host.plan(dns_strict=True)
    steps = len(build_pieces(plan, ifindex=0, ipv6=True)) + 1  # + the resolver
    assert steps > 20
    for n in range(1, steps + 1):
        s = host.setup(plan, fail_after=n)
        with pytest.raises(InjectedFailure, match=f"after step {n}$"):
            s.apply()
        assert host.snapshot() == before, f"after a failure at step {n}"
        assert host.state_files() == [], n
    # and one step more than there are: no failure
    with host.setup(plan, fail_after=steps + 1) as s:
        assert s.summary
    assert host.snapshot() == before
    del dev


def test_a_real_failure_half_way_is_undone_and_reported_in_one_line(host: Host) -> None:
    host.open_tun()
    before = host.snapshot()
    plan = host.plan(resolv_conf=str(host.tmp / "no-such-dir" / "resolv.conf"))
    with pytest.raises(SetupError, match="cannot replace") as info:
        host.setup(plan).apply()
    assert "\n" not in str(info.value)
    assert host.snapshot() == before
    assert host.state_files() == []


def test_checks_refuse_before_anything_is_changed(host: Host) -> None:
    with pytest.raises(SetupError, match=f"device {TUN} does not exist"):
        host.setup().apply()
    host.open_tun()
    before = host.snapshot()
    host.ip("rule", "add", "priority", "9103", "lookup", "main")
    with pytest.raises(SetupError, match=r"priorities 9100-9104 are in use.*--setup-priority"):
        host.setup().apply()
    host.ip("rule", "del", "priority", "9103")
    host.ip("route", "add", "192.0.2.0/24", "dev", TUN, "table", "7368")
    with pytest.raises(SetupError, match=r"table 7368 is not empty.*--setup-table"):
        host.setup().apply()
    host.ip("route", "del", "192.0.2.0/24", "dev", TUN, "table", "7368")
    host.ip("route", "del", "default")
    host.ip("-6", "route", "del", "default")
    with pytest.raises(SetupError, match="no default route"):
        host.setup().apply()
    host.ip("route", "add", "default", "via", ISP_V4)
    host.ip("-6", "route", "add", "default", "via", ISP_V6)
    assert host.snapshot() == before
    assert host.state_files() == []


# --- a process that dies without tearing down -------------------------------------------

CHILD = r"""
import json, os, sys, time
from tun2proxy.link.netconf import InterfaceConfig
from tun2proxy.link.tun_linux import open_tun
from tun2proxy.hostsetup import HostSetup, SetupPlan, parse_ssh_connection
cfg = json.loads(sys.argv[1])
dev = open_tun(cfg["tun"], config=InterfaceConfig(addresses=tuple(cfg["addrs"]), mtu=1500))
worker = 0
if cfg["worker"]:  # a worker process holding the device (multi-queue) outlives us
    worker = os.fork()
    if worker == 0:
        time.sleep(100)
        os._exit(0)
plan = SetupPlan(tun=dev.name, proxies=cfg["proxies"], dns="8.8.8.8",
                 ssh=parse_ssh_connection(cfg["ssh"]), resolv_conf=cfg["resolv"],
                 tun_created=True)
HostSetup(plan, state_dir=cfg["state_dir"]).apply()
print("APPLIED", worker, flush=True)
time.sleep(100)
"""


@contextlib.contextmanager
def _child_with_setup(
    host: Host, *, worker: bool = False
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    cfg = {
        "tun": TUN, "addrs": list(TUN_ADDRS), "proxies": [PROXY_V4], "worker": worker,
        "ssh": f"{ADMIN_V4} 50022 {UPLINK_V4} 22", "resolv": str(host.resolv),
        "state_dir": str(host.state_dir),
    }
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    p = subprocess.Popen(
        ["ip", "netns", "exec", host.H, sys.executable, "-c", CHILD, json.dumps(cfg)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    grandchild = 0
    try:
        assert p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], 30)
        line = p.stdout.readline() if ready else ""
        assert line.startswith("APPLIED"), line + (p.stdout.read() if p.poll() is not None else "")
        grandchild = int(line.split()[1])
        yield p, grandchild
    finally:
        for pid in (p.pid, grandchild):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        p.wait(10)


@pytest.mark.parametrize(
    "worker", [False, True], ids=["device-dies-with-it", "worker-holds-device"]
)
def test_after_sigkill_cleanup_restores_everything(host: Host, worker: bool) -> None:
    before = host.snapshot()
    with _child_with_setup(host, worker=worker) as (child, grandchild):
        during = host.snapshot()
        assert during["rule"] != before["rule"]
        assert during["resolv"] != before["resolv"]
        # while it runs: --cleanup refuses, and so does a second --setup
        with pytest.raises(SetupError, match=f"PID {child.pid}\\) is still running"):
            cleanup(host.state_dir, netns=host.H)
        other = host.setup(host.plan(tun="t2pother"))
        with pytest.raises(SetupError, match=f"another tun2proxy --setup \\(PID {child.pid}\\)"):
            other.apply()
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        assert host.state_files() == [f"setup-{TUN}.json"]
        assert host.snapshot()["rule"] == during["rule"]  # the rules outlive the process
        done = cleanup(host.state_dir, netns=host.H)
        assert len(done) == 1
        assert f"PID {child.pid}" in done[0]
        if grandchild:  # the worker still runs: the device it holds is gone all the same
            os.kill(grandchild, 0)
            assert TUN not in host.ip("-o", "link")
    assert host.snapshot() == before
    assert host.state_files() == []
    assert cleanup(host.state_dir, netns=host.H) == []  # nothing left to do


def test_a_new_setup_cleans_up_after_a_dead_one_first(host: Host) -> None:
    before = host.snapshot()
    with _child_with_setup(host) as (child, _):
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    host.open_tun()
    with_tun = host.snapshot()
    assert with_tun["rule"] != before["rule"]  # the dead one's rules are still there
    with host.setup() as s:
        # the stale rules were removed, ours added: exactly one set of them
        during = host.snapshot()
        assert str(during["rule"]).count("lookup 7368") == 1
        assert s.pieces[-1].kind == "resolv"
    after = host.snapshot()
    for key in ("rule", "rule6", "resolv", "resolv_link"):
        assert after[key] == before[key], key
    for key in ("route", "route6"):  # the TUN's own routes are there, ours are not
        assert "table 7368" not in str(after[key])
    assert host.state_files() == []


# --- traffic: the SSH session, the LAN, the tunnel, our own marked sockets ----------------


class EchoServer:
    """A threaded TCP echo server whose socket lives in namespace ``ns``."""

    def __init__(self, ns: str, addr: str, port: int) -> None:
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        with entered(netns_path(ns)):
            self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, port))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def _client(ns: str, dst: str, port: int, *, bind: str | None = None,
            mark: int | None = None, timeout: float = 5) -> socket.socket:
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with entered(netns_path(ns)):
        s = socket.socket(fam, socket.SOCK_STREAM)
    if mark is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    if bind:
        s.bind((bind, 0))
    s.settimeout(timeout)
    s.connect((dst, port))
    return s


def _echoes(s: socket.socket, data: bytes) -> bool:
    try:
        s.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = s.recv(65536)
            if not chunk:
                return False
            got += chunk
        return got == data
    except OSError:
        return False


@pytest.mark.parametrize("excluded", [True, False], ids=["ssh-excluded", "control-no-exclusion"])
def test_an_ssh_session_open_before_setup_keeps_working(host: Host, excluded: bool) -> None:
    """The admin (far away, beyond the ISP) is connected to a server on the host, as to sshd.
    With SSH_CONNECTION honoured the session survives setup and teardown; the control run
    without it shows the session would otherwise be captured by the tunnel."""
    host.open_tun()
    server = EchoServer(host.H, UPLINK_V4, 2222)
    try:
        admin = _client(host.I, UPLINK_V4, 2222, bind=ADMIN_V4, timeout=3)
        assert _echoes(admin, b"before")
        port = admin.getsockname()[1]
        ssh = parse_ssh_connection(f"{ADMIN_V4} {port} {UPLINK_V4} 2222") if excluded else None
        with host.setup(host.plan(ssh=ssh)):
            assert _echoes(admin, b"during" * 1000) is excluded
        if excluded:
            assert _echoes(admin, b"after")
        admin.close()
    finally:
        server.close()


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_what_goes_where_after_setup(host: Host, family: int) -> None:
    """A far address enters the TUN; a marked socket (tun2proxy's own) reaches it directly;
    the LAN (the ISP's on-link address) and a bypassed network stay direct."""
    dev = host.open_tun()
    far, lan = (FAR_V4, ISP_V4) if family == 4 else (FAR_V6, ISP_V6)
    servers = [EchoServer(host.I, a, 7001) for a in (far, lan)]
    if family == 4:
        servers.append(EchoServer(host.I, BYPASSED, 7001))
    try:
        with host.setup(host.plan(exclude=["203.0.113.0/24"])):
            marked = _client(host.H, far, 7001, mark=0x3074)
            assert _echoes(marked, b"own socket, direct")
            marked.close()
            direct = _client(host.H, lan, 7001)
            assert _echoes(direct, b"LAN, direct")
            direct.close()
            if family == 4:
                bypassed = _client(host.H, BYPASSED, 7001)
                assert _echoes(bypassed, b"bypass, direct")
                bypassed.close()
            # an ordinary connection to the far server: its SYN comes out of the TUN
            with entered(netns_path(host.H)):
                app = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6,
                                    socket.SOCK_STREAM)
            app.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                app.connect((far, 7001))
            assert _syn_on_tun(dev.fd, family, far)
            app.close()
    finally:
        for s in servers:
            s.close()


def _syn_on_tun(fd: int, family: int, dst: str) -> bool:
    want = socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6, dst)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.5)
        if not r:
            continue
        pkt = os.read(fd, 65536)
        if family == 4 and pkt[0] >> 4 == 4 and pkt[9] == 6 and pkt[16:20] == want:
            return True
        if family == 6 and pkt[0] >> 4 == 6 and pkt[6] == 6 and pkt[24:40] == want:
            return True
    return False
