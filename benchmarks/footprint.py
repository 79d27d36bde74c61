"""Resident memory by import stage, and of the idle process (issue 14).

Each stage runs in a fresh interpreter that imports the stage's modules cumulatively and
reports its VmRSS after each step, so a row says what that step added on top of the ones
above. ``--process`` (root) also starts the real ``python -m tun2proxy --tun ... --proxy
socks5://...`` in a namespace lab and reports its idle RSS and the number of modules it
imported.

    python benchmarks/footprint.py [--no-site] [--process]

The interpreter's own ``site`` step runs whatever ``.pth`` files the installation has (a
sandbox may add its own): ``--no-site`` (``python -S``, the repository on ``PYTHONPATH``)
leaves them out so the rows are the project's alone; optional packages then cannot be found,
so their rows are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
import importlib, json, sys
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
out = [("interpreter", rss())]
for step in sys.argv[1:]:
    name, _, mods = step.partition("=")
    try:
        for m in mods.split(","):
            if m == "!ssl":  # what tun2proxy.cli does while importing the run
                sys.modules["ssl"] = None
            elif m == "ssl!":
                if sys.modules.get("ssl", 0) is None:
                    del sys.modules["ssl"]
            else:
                importlib.import_module(m)
    except ImportError as e:
        out.append((name, None))
        continue
    out.append((name, rss()))
print(json.dumps(out))
"""

#: (label, modules imported by that step), cumulative.
CLI_STAGES = [
    ("asyncio (ssl held back, as the CLI does)", "!ssl,asyncio,ssl!"),
    ("tun2proxy's run (app.run: options, stack, driver, upstreams)", "tun2proxy.app.run"),
]
PLAIN_STAGES = [
    ("asyncio as imported plainly (pulls in ssl)", "asyncio"),
    ("hashlib (OpenSSL's libcrypto)", "hashlib"),
]
OPTIONAL = [
    ("+ pyroute2 (--setup, a device created)", "pyroute2"),
    ("+ cryptography AEAD (ss://)", "cryptography.hazmat.primitives.ciphers.aead"),
    ("+ blake3 (ss:// 2022)", "blake3"),
    ("+ dnslib (--dns virtual)", "dnslib"),
    ("+ uvloop (--loop uvloop/auto)", "uvloop"),
]


def stages(steps: list[tuple[str, str]], site: bool) -> list[tuple[str, int | None]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = env.get("PYTHONPATH") or str(ROOT)
    argv = [sys.executable, *([] if site else ["-S"]), "-c", PROBE,
            *[f"{label}={mods}" for label, mods in steps]]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, check=True)
    return [(a, b) for a, b in json.loads(res.stdout)]


def table(rows: list[tuple[str, int | None]], base: int | None = None) -> None:
    print("| stage | RSS (MiB) | added (MiB) |")
    print("|---|---|---|")
    prev = base
    for label, kib in rows:
        if kib is None:
            print(f"| {label} | not installed | |")
            continue
        added = "" if prev is None else f"{(kib - prev) / 1024:+.1f}"
        print(f"| {label} | {kib / 1024:.1f} | {added} |")
        prev = kib


def process_rss() -> tuple[int, int]:
    """Idle RSS (KiB) of the real process, and how many modules it imported."""
    sys.path.insert(0, str(ROOT))
    from tun2proxy.testing.netlab import TUN_NAME, Lab, wait_for

    lab = Lab(prefix=f"t2pf{os.getpid() % 10000}")
    try:
        lab.setup()
        os.environ["PYTHONPROFILEIMPORTTIME"] = "1"
        p = lab.start("t2p", lab.R, [
            sys.executable, "-m", "tun2proxy", "--tun", TUN_NAME, "--tun-netns", lab.C,
            "--proxy", "socks5://127.0.0.1:1080", "--loop", "asyncio", "-v", "debug"])
        os.environ.pop("PYTHONPROFILEIMPORTTIME")
        wait_for(lambda: "event loop:" in p.output() or not p.alive(), timeout=30)
        time.sleep(1.5)
        with open(f"/proc/{p.pid}/status") as f:
            rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))  # type: ignore[union-attr]
        mods = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$", p.output(), re.M))
        return rss, len(mods)
    finally:
        lab.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-site", action="store_true", help="python -S: no .pth files")
    ap.add_argument("--process", action="store_true", help="also the real idle process (root)")
    ap.add_argument("--plain-asyncio", action="store_true",
                    help="import asyncio plainly in the CLI stages (to measure an older tree, "
                    "PYTHONPATH=DIR, whose CLI did not hold ssl back)")
    args = ap.parse_args()
    if args.plain_asyncio:
        CLI_STAGES[0] = PLAIN_STAGES[0]
    site = not args.no_site
    print(f"Python {sys.version.split()[0]}, {'with' if site else 'without'} site")
    print("\nWhat the command line imports for --proxy socks5:// (cumulative):\n")
    cli = stages(CLI_STAGES, site)
    table(cli)
    print("\nWhat each optional feature adds on top of that (one interpreter each):\n")
    print("| feature | RSS (MiB) | added (MiB) |")
    print("|---|---|---|")
    for label, mods in OPTIONAL:
        rows = stages([*CLI_STAGES, (label, mods)], site)
        kib, before = rows[-1][1], rows[-2][1]
        if kib is None or before is None:
            print(f"| {label} | not installed | |")
        else:
            print(f"| {label} | {kib / 1024:.1f} | {(kib - before) / 1024:+.1f} |")
    print("\nFor comparison, asyncio imported plainly, and hashlib:\n")
    table(stages(PLAIN_STAGES, site))
    if args.process:
        rss, n = process_rss()
        print(f"\nidle `python -m tun2proxy --tun ... --proxy socks5://... --loop asyncio`: "
              f"{rss / 1024:.1f} MiB, {n} modules imported")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
