"""Interleaved A/B of tun2proxy variants in one namespace lab (issue 14).

On a shared machine, two benchmark invocations minutes apart differ by more than most levers
buy. This runs the variants in turn, round after round, in one lab (each turn a fresh
tun2proxy process; each round starts with the next variant), and reports medians of the
connection rate (or UDP round trips), the median time per connection and tun2proxy's CPU
time per connection, with the SOCKS-direct and kernel paths measured at the end.

    sudo python benchmarks/ab.py [--rounds 5] [--metric conn|udp] VARIANT...

A variant is ``TREE[,pipe][,ARG...]``: the directory whose ``tun2proxy`` package runs (an
older checkout: ``git archive REV tun2proxy | tar -x -C DIR``), optionally ``pipe``
(``?pipeline=1`` to dante) and extra tun2proxy arguments. Example:

    sudo python benchmarks/ab.py --rounds 5 /tmp/old . .,pipe

With ``--callgrind`` each tun2proxy runs under ``valgrind --tool=callgrind`` (instrumentation
switched on only around the measured run) and the figure is user-space **instructions per
connection** (or per UDP round trip): counted, not timed, so it does not move with the
machine's load, and a lever of a few per cent shows in two rounds. Rates and times under
valgrind mean nothing and are not shown; what the instructions leave out is the kernel's work.

    sudo python benchmarks/ab.py --callgrind --rounds 2 --seconds 10 /tmp/old .
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import e2e


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--metric", choices=("conn", "udp"), default="conn")
    ap.add_argument("--callgrind", action="store_true",
                    help="count tun2proxy's instructions per connection under valgrind")
    ap.add_argument("variants", nargs="+")
    a = ap.parse_args()
    a.variants = [str(Path(v.split(",")[0]).resolve()) + v[len(v.split(",")[0]):]
                  for v in a.variants]
    args = argparse.Namespace(
        mtu=65535, runs=1, seconds=a.seconds, held=10, idle=0, upstream="dante", profile=None,
        metrics=a.metric, paths="tun2proxy", extra=[], pipeline=False,
    )
    b = e2e.Bench(args)
    res: dict[str, list[tuple[float, float, float, float]]] = {v: [] for v in a.variants}
    try:
        b.setup()
        for r in range(a.rounds):
            k = r % len(a.variants)  # each round starts with the next variant: no order bias
            for v in a.variants[k:] + a.variants[:k]:
                tree, *opts = v.split(",")
                # PYTHONPATH alone is not enough: ``python -m`` puts the working directory
                # first on sys.path, so from a checkout every variant would run that
                # checkout's package. tun2proxy inherits this working directory.
                os.environ["PYTHONPATH"] = str(Path(tree).resolve())
                os.chdir(Path(tree).resolve())
                args.pipeline = "pipe" in opts
                args.extra = [o for o in opts if o != "pipe"]
                if a.callgrind:
                    args.wrap = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                                 f"--callgrind-out-file={b.lab.tmp}/cg.%p"]
                b.start_tun2proxy()
                assert b.t2p is not None
                if a.callgrind:
                    time.sleep(8.0)  # start-up under valgrind is slow
                b.connrate_warmup("tun2proxy")
                if a.callgrind:
                    _callgrind(b.t2p.pid, "--instr=on")
                user0, sys0 = e2e._cpu_split(b.t2p.pid)
                if a.metric == "conn":
                    rate = b.connrate("tun2proxy")
                    p50 = b.conn_p50["tun2proxy"][-1]
                    n = b.conn_count
                else:
                    rate = b.udprtt("tun2proxy")
                    p50 = b.udp_p50["tun2proxy"][-1]
                    n = int(rate * a.seconds)
                user1, sys1 = e2e._cpu_split(b.t2p.pid)
                cpu = (user1 - user0 + sys1 - sys0) / max(n, 1) * 1e6
                sys_us = (sys1 - sys0) / max(n, 1) * 1e6
                if a.callgrind:
                    ir = _callgrind_dump(b.t2p.pid, b.lab.tmp) / max(n, 1)
                    res[v].append((ir, float(n), 0.0, 0.0))
                    print(f"round {r} {v}: {ir / 1000:.0f}k instructions per "
                          f"{'connection' if a.metric == 'conn' else 'round trip'} "
                          f"({n} of them)", flush=True)
                    continue
                res[v].append((rate, p50, cpu, sys_us))
                print(f"round {r} {v}: {rate:.0f}/s, p50 {p50:.3f} ms, CPU {cpu:.0f} us "
                      f"(system {sys_us:.0f})", flush=True)
        if a.callgrind:
            print(f"\n{'variant':40} {'instructions per ' + a.metric:>24}  (medians)")
            for v, rows in res.items():
                print(f"{v:40} {statistics.median(x[0] for x in rows):24,.0f}")
            return 0
        for path in ("socks", "kernel"):
            fn = b.connrate if a.metric == "conn" else b.udprtt
            p50s = b.conn_p50 if a.metric == "conn" else b.udp_p50
            res[path] = [(fn(path), p50s[path][-1], 0.0, 0.0) for _ in range(3)]
    finally:
        b.close()
    print(f"\n{'variant':40} {'rate/s':>8} {'p50 ms':>8} {'CPU us':>8} {'sys us':>8}  (medians)")
    for v, s in res.items():
        cpu = statistics.median(x[2] for x in s)
        sys_us = statistics.median(x[3] for x in s)
        print(f"{v:40} {statistics.median(x[0] for x in s):8.0f} "
              f"{statistics.median(x[1] for x in s):8.3f} {cpu if cpu else float('nan'):8.0f} "
              f"{sys_us if cpu else float('nan'):8.0f}")
    return 0


def _callgrind(pid: int, *opts: str) -> None:
    """Run ``callgrind_control`` on tun2proxy (in its namespace the pid is the same)."""
    subprocess.run(["callgrind_control", *opts, str(pid)], capture_output=True, timeout=120,
                   check=True)


def _callgrind_dump(pid: int, tmp: Path) -> int:
    """Dump the counts since instrumentation went on, switch it off; the instructions."""
    before = set(tmp.glob(f"cg.{pid}*"))
    _callgrind(pid, "--dump")
    _callgrind(pid, "--instr=off")
    new = sorted(set(tmp.glob(f"cg.{pid}*")) - before)
    if not new:
        raise RuntimeError("callgrind wrote no dump")
    for line in new[-1].read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {new[-1]}")


if __name__ == "__main__":
    raise SystemExit(main())
