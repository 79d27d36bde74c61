"""Soak: memory under steady churn through dante, and every table back when it stops.

    sudo python benchmarks/soak.py [--minutes 30] [--loop asyncio|uvloop] [--warmup 3]
                                   [--connections 1000] [--udp 1000] [--bulk 2]
                                   [--trace 8] [--trim] [--json out.json]
                                   [-- extra tun2proxy arguments]

Builds its own lab (namespaces C, R, S of :mod:`tun2proxy.testing.netlab`, removed at the
end, also on failure): tun2proxy in R with dante (SOCKS5, CONNECT and UDP ASSOCIATE) on
127.0.0.1:1080, the line-protocol stream server and a UDP echo server in S, the kernel's
sockets in C as the applications. Each round: ``--connections`` sequential short TCP
connections, ``--udp`` UDP round trips (a new socket, so a new session, every 10), and a
bulk flow of ``--bulk`` seconds; rounds repeat for ``--minutes`` (issue 15 item 12).

After every round it samples tun2proxy's RSS, open fds, flows and timers (SIGUSR1). At the
end it fits a least-squares line through the RSS samples taken after ``--warmup`` minutes
and prints the slope in MiB/h with its standard error (and the slopes of each half, to see
whether it levels off); then it stops the churn and waits until every table in
``Driver.table_sizes()`` (flows, timers, UDP sessions, DNS mappings, dial queue, relays,
own endpoints...) and the fd count are back to their values before the churn.

``--trace N`` runs tun2proxy under tracemalloc (N frames) and prints the biggest differences
between the idle state before the churn and after it; the counts of objects by type (gc) are
compared in every mode. ``--trim`` calls ``malloc_trim(0)`` at the end to tell memory held
by live objects from memory the C allocator keeps. tracemalloc sees only Python's own
allocations: growth inside a C extension (uvloop, libuv) shows as RSS without a traced or
object-count difference. Not a test: read the slope against its error.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.servers import StreamServer, UdpEchoServer
from tun2proxy.testing.churn import (
    churn_round,
    fd_count,
    fit_slope,
    rss_kib,
    sigusr1_stats,
)
from tun2proxy.testing.netlab import SERVER_V4, TUN_NAME, Lab, missing_prerequisites, wait_for

HERE = Path(__file__).resolve().parent
RUNNER = str(HERE / "_soak_runner.py")
STREAM_PORT = 7000
UDP_PORT = 9999
DANTE_PORT = 1080
#: Tables that remember something bounded on purpose (log keys: at most 1,024).
BOUNDED_CACHES = ("log_keys",)

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


class Soak:
    """The lab, the servers, dante and tun2proxy of one soak run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.lab = Lab()
        self.servers: list[Any] = []

    def setup(self) -> None:
        lab = self.lab
        lab.setup()
        self.servers = [StreamServer(lab.S, SERVER_V4, STREAM_PORT),
                        UdpEchoServer(lab.S, SERVER_V4, UDP_PORT)]
        conf = lab.tmp / "sockd.conf"
        conf.write_text(DANTE_CONF.format(log=lab.tmp / "sockd-inner.log", port=DANTE_PORT,
                                          external=lab.router_if))
        lab.start("danted", lab.R, ["danted", "-f", str(conf), "-N", "4",
                                    "-p", str(lab.tmp / "sockd.pid")])
        time.sleep(1.0)
        self.dump = str(lab.tmp / "probe")
        os.environ["T2P_SOAK_DUMP"] = self.dump
        os.environ["T2P_SOAK_TRACE"] = str(self.args.trace or 0)
        os.environ["T2P_SOAK_TRIM_EVERY"] = str(self.args.trim_every or 0)
        argv = [sys.executable, RUNNER, "--tun", TUN_NAME, "--tun-netns", lab.C,
                "--proxy", f"socks5://127.0.0.1:{DANTE_PORT}", "--loop", self.args.loop,
                "-v", "info", *self.args.extra]
        self.t2p = lab.start("tun2proxy", lab.R, argv)
        if not wait_for(lambda: "upstream " in self.t2p.output() or not self.t2p.alive(), 20):
            raise RuntimeError(self.t2p.output())
        if not self.t2p.alive():
            raise RuntimeError(self.t2p.output())

    def close(self) -> None:
        for s in self.servers:
            s.close()
        self.lab.close()

    # -- probes ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return sigusr1_stats(self.t2p.pid, self.t2p.output)

    def probe(self, what: str) -> dict[str, Any]:
        """Ask the runner's probe thread for a dump (see ``_soak_runner.py``)."""
        out = Path(self.dump + ".json")
        out.unlink(missing_ok=True)
        Path(self.dump + ".req").write_text(what)
        if not wait_for(out.exists, timeout=120, interval=0.2):
            return {}
        return json.loads(out.read_text())  # type: ignore[no-any-return]

    def round(self) -> Any:
        lab, a = self.lab, self.args
        return churn_round(
            lambda: lab.socket(lab.C),
            lambda: lab.socket(lab.C, socket.AF_INET, socket.SOCK_DGRAM),
            (SERVER_V4, STREAM_PORT), (SERVER_V4, UDP_PORT),
            connections=a.connections, udp_round_trips=a.udp, bulk_seconds=a.bulk,
        )


def _flat(t: dict[str, Any]) -> dict[str, int]:
    return {k: int(v) for k, v in t.items() if k not in BOUNDED_CACHES}


def run(args: argparse.Namespace) -> dict[str, Any]:
    soak = Soak(args)
    try:
        soak.setup()
        pid = soak.t2p.pid
        time.sleep(1.0)
        base_stats = soak.stats()
        base_tables = _flat(base_stats["tables"])
        base_fds = fd_count(pid)
        base_probe = soak.probe("base")
        start = time.monotonic()
        end = start + args.minutes * 60
        samples: list[dict[str, Any]] = []
        print(f"soak: loop {args.loop}, {args.minutes} min, rss {rss_kib(pid) / 1024:.1f} MiB,"
              f" fds {base_fds}, {base_probe.get('objects')} objects", flush=True)
        rnd = 0
        while time.monotonic() < end and soak.t2p.alive():
            r = soak.round()
            rnd += 1
            st = soak.stats()
            t = time.monotonic() - start
            s = {"t": t, "rss_kib": rss_kib(pid), "fds": fd_count(pid),
                 "flows": st["tcp_flows"], "timers": st["timer_heap"],
                 "udp": st["udp_sessions"], "tcp_ok": r.tcp_ok, "tcp_failed": r.tcp_failed,
                 "udp_ok": r.udp_ok, "udp_lost": r.udp_lost, "bulk": r.bulk_bytes}
            samples.append(s)
            print(f"round {rnd:3d} t={t / 60:5.1f}m rss {s['rss_kib'] / 1024:6.1f} MiB fds "
                  f"{s['fds']:4d} flows {s['flows']:4d} timers {s['timers']:5d} udp "
                  f"{s['udp']:4d} tcp {r.tcp_ok}/{r.tcp_ok + r.tcp_failed} udp "
                  f"{r.udp_ok}/{r.udp_ok + r.udp_lost} bulk {r.bulk_bytes >> 20} MiB"
                  + (f" errors {r.errors}" if r.errors else ""), flush=True)
        churn_end = time.monotonic()
        warm = [s for s in samples if s["t"] >= args.warmup * 60]
        pts = [(s["t"], s["rss_kib"]) for s in warm]
        fit = fit_slope(pts)
        half = len(pts) // 2
        fit1, fit2 = fit_slope(pts[:half]), fit_slope(pts[half:])
        # The churn stops: wait for TIME-WAIT, the UDP timeout and the stale timers.
        settled: dict[str, int] = {}
        while time.monotonic() < churn_end + args.settle:
            settled = _flat(soak.stats()["tables"])
            # (fds: uvloop opens one more, libuv's io_uring ring, on first use; reported)
            if settled == base_tables and fd_count(pid) <= base_fds + 1:
                break
            time.sleep(2.0)
        settle_s = time.monotonic() - churn_end
        fds_after = fd_count(pid)
        final = soak.probe("trim" if args.trim else "final")
        diff_tables = {k: (base_tables.get(k), v) for k, v in settled.items()
                       if base_tables.get(k) != v}
        types_before = base_probe.get("types", {})
        type_growth = sorted(
            ((n, final.get("types", {}).get(n, 0) - types_before.get(n, 0))
             for n in set(types_before) | set(final.get("types", {}))),
            key=lambda x: -abs(x[1]),
        )[:12]
        return {
            "loop": args.loop, "minutes": args.minutes, "rounds": rnd,
            "warmup_minutes": args.warmup,
            "rss_start_mib": samples[0]["rss_kib"] / 1024 if samples else None,
            "rss_end_mib": samples[-1]["rss_kib"] / 1024 if samples else None,
            "slope_mib_per_h": fit.mib_per_hour, "slope_stderr": fit.stderr,
            "slope_first_half": fit1.mib_per_hour, "slope_second_half": fit2.mib_per_hour,
            "residual_mib": fit.residual_mib, "points": fit.points,
            "fds_before": base_fds, "fds_after": fds_after,
            "fds_max": max((s["fds"] for s in samples), default=None),
            "tables_back_to_baseline": not diff_tables, "tables_differing": diff_tables,
            "settle_seconds": round(settle_s, 1),
            "tcp_failed": sum(s["tcp_failed"] for s in samples),
            "udp_lost": sum(s["udp_lost"] for s in samples),
            "objects_before": base_probe.get("objects"), "objects_after": final.get("objects"),
            "object_growth_by_type": type_growth,
            "rss_after_trim_mib": (final["rss_after_trim_kib"] / 1024
                                   if "rss_after_trim_kib" in final else None),
            "traced_kib": (base_probe.get("traced_kib"), final.get("traced_kib")),
            "tracemalloc_top": final.get("top_lines"),
            "tracemalloc_tracebacks": final.get("top"),
            "alive": soak.t2p.alive(),
            "samples": [(round(s["t"], 1), s["rss_kib"], s["fds"], s["timers"], s["udp"])
                        for s in samples],
        }
    finally:
        soak.close()


def main() -> int:
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    ap.add_argument("--warmup", type=float, default=None,
                    help="minutes left out of the fit (default: a fifth of the run, <= 5)")
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--udp", type=int, default=1000)
    ap.add_argument("--bulk", type=float, default=2.0)
    ap.add_argument("--settle", type=float, default=120.0,
                    help="seconds to wait for the tables after the churn")
    ap.add_argument("--trace", type=int, default=0, metavar="FRAMES")
    ap.add_argument("--trim", action="store_true",
                    help="malloc_trim(0) at the end: RSS of live memory against free memory kept")
    ap.add_argument("--trim-every", type=float, default=0.0, metavar="SECONDS",
                    help="malloc_trim(0) in tun2proxy every SECONDS during the run")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    args.extra = extra
    if args.warmup is None:
        args.warmup = min(5.0, args.minutes / 5)
    why = missing_prerequisites(("danted",))
    if why:
        print(f"soak: {why}", file=sys.stderr)
        return 2
    res = run(args)
    brief = {k: v for k, v in res.items()
             if k not in ("object_growth_by_type", "tracemalloc_top", "tracemalloc_tracebacks",
                          "samples")}
    print(json.dumps(brief, default=str))
    print("objects by type, after - before:",
          ", ".join(f"{n} {d:+d}" for n, d in res["object_growth_by_type"]))
    for line in res["tracemalloc_top"] or []:
        print("  tracemalloc:", line)
    for tb in res["tracemalloc_tracebacks"] or []:
        print("  ", tb.replace("\n", "\n    "))
    print(f"\nRSS slope after {args.warmup:g} min warm-up: {res['slope_mib_per_h']:+.2f} ± "
          f"{res['slope_stderr']:.2f} MiB/h over {res['points']} rounds (halves "
          f"{res['slope_first_half']:+.2f}, {res['slope_second_half']:+.2f}); fds "
          f"{res['fds_before']} -> {res['fds_after']}; tables back to baseline: "
          f"{res['tables_back_to_baseline']} after {res['settle_seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
