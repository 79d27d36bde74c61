"""How much slower a bulk transfer gets on an impaired link (``--impair``), beside a clean run.

The kernel's TCP in namespace C talks to tun2proxy through the TUN; tun2proxy impairs every
packet both ways (``--impair``) and relays through dante to an iperf3 server in S (the
topology of ``benchmarks/e2e.py``, which this reuses). For each scenario, ``iperf3 -n SIZE``
moves SIZE bytes each way; the table gives the median time of ``--runs`` runs (each with its
own seed) and the ratio to the clean run of the same session. Needs root, iperf3, dante.

    sudo python benchmarks/impairment.py [--size 32M] [--runs 3] [--mtu 65535]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e import Bench

from tun2proxy.testing.netlab import SERVER_V4

SCENARIOS = {
    "clean": "",
    "loss 1%": "loss=1%",
    "loss 5%": "loss=5%",
    "reorder 10%": "reorder=10%,reorder-delay=2ms",
    "dup 2%": "dup=2%",
    "mix": "loss=2%,reorder=5%,dup=1%,corrupt=0.1%,jitter=1ms",
}


def transfer_seconds(b: Bench, size: str, reverse: bool) -> float:
    """Seconds iperf3 needed to move ``size`` through the tunnel (receiver's view)."""
    cmd = [*b.prefix("tun2proxy"), "iperf3", "-c", SERVER_V4, "-n", size, "-J"]
    if reverse:
        cmd.append("-R")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    try:
        return float(json.loads(res.stdout)["end"]["sum_received"]["seconds"])
    except (ValueError, KeyError) as e:
        raise RuntimeError(f"iperf3 failed: {res.stdout[-400:]} {res.stderr}") from e


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="32M", help="bytes each way per run (iperf3 -n syntax)")
    ap.add_argument("--runs", type=int, default=3, help="runs per figure; the median is shown")
    ap.add_argument("--mtu", type=int, default=65535, help="MTU of the TUN device")
    ap.add_argument("--only", nargs="*", default=None, help="scenario names to run")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (network namespaces and TUN devices)")
    for tool in ("ip", "iperf3", "danted"):
        if shutil.which(tool) is None:
            raise SystemExit(f"missing {tool}: run ./scripts/install-test-deps")
    args.upstream = "dante"
    args.extra = []
    b = Bench(args)
    rows: list[tuple[str, float, float]] = []
    try:
        b.setup()
        for name, spec in SCENARIOS.items():
            if args.only and name not in args.only and name != "clean":
                continue
            up: list[float] = []
            down: list[float] = []
            for run in range(args.runs):
                args.extra = ["--impair", f"{spec},seed={run + 1}"] if spec else []
                b.start_tun2proxy()
                up.append(transfer_seconds(b, args.size, reverse=False))
                down.append(transfer_seconds(b, args.size, reverse=True))
            print(f"  {name:12} up {', '.join(f'{s:.2f}' for s in up)} s; "
                  f"down {', '.join(f'{s:.2f}' for s in down)} s", flush=True)
            rows.append((name, statistics.median(up), statistics.median(down)))
    finally:
        b.close()
    clean_up, clean_down = rows[0][1], rows[0][2]
    print()
    print(f"{args.size} each way through tun2proxy (TUN MTU {args.mtu}, dante upstream), "
          f"--impair both ways, medians of {args.runs} runs")
    head = f"{'scenario':14} {'app->server':>12} {'vs clean':>9} "
    head += f"{'server->app':>12} {'vs clean':>9}"
    print(head)
    print("-" * len(head))
    for name, u, d in rows:
        print(f"{name:14} {u:>10.2f} s {u / clean_up:>8.1f}x {d:>10.2f} s {d / clean_down:>8.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
