"""tun2proxy under the soak benchmark: the ordinary CLI plus a probe thread (not a test).

    python benchmarks/_soak_runner.py TUN2PROXY-ARGUMENTS...

Environment: ``T2P_SOAK_DUMP`` (a path prefix; required), ``T2P_SOAK_TRACE=N`` (tracemalloc
with N frames), ``T2P_SOAK_TRIM_EVERY=S`` (``malloc_trim(0)`` every S seconds). When
``$T2P_SOAK_DUMP.req`` appears, holding ``base``, ``final`` or ``trim``, the probe thread
writes ``$T2P_SOAK_DUMP.json``: RSS, the objects the garbage collector tracks counted by
type, pymalloc's block count, and with tracemalloc the biggest differences from the ``base``
snapshot; ``trim`` also calls ``malloc_trim(0)`` and reports the RSS after it.
A thread and files rather than a signal: it works the same under asyncio and uvloop.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import json
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DUMP = os.environ["T2P_SOAK_DUMP"]
FRAMES = int(os.environ.get("T2P_SOAK_TRACE", "0") or 0)
#: ``malloc_trim(0)`` every this many seconds (0: never): is the growth free memory that the
#: C allocator keeps, or memory in use?
TRIM_EVERY = float(os.environ.get("T2P_SOAK_TRIM_EVERY", "0") or 0)


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _probe() -> None:
    base: tracemalloc.Snapshot | None = None
    libc = ctypes.CDLL("libc.so.6")
    req = Path(DUMP + ".req")
    next_trim = time.monotonic() + TRIM_EVERY
    while True:
        time.sleep(0.2)
        if TRIM_EVERY and time.monotonic() >= next_trim:
            libc.malloc_trim(0)
            next_trim = time.monotonic() + TRIM_EVERY
        if not req.exists():
            continue
        what = req.read_text().strip()
        req.unlink()
        gc.collect()
        out: dict[str, Any] = {"what": what, "rss_kib": _rss_kib()}
        counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
        out["objects"] = sum(counts.values())
        out["types"] = dict(counts.most_common(60))
        out["blocks"] = sys.getallocatedblocks()
        if FRAMES:
            snap = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)]
            )
            out["traced_kib"] = tracemalloc.get_traced_memory()[0] // 1024
            if what == "base" or base is None:
                base = snap
            else:
                out["top"] = [
                    "\n".join([str(d), *d.traceback.format()[-8:]])
                    for d in snap.compare_to(base, "traceback")[:6]
                ]
                out["top_lines"] = [str(d) for d in snap.compare_to(base, "lineno")[:15]]
        if what == "trim":
            libc.malloc_trim(0)
            out["rss_after_trim_kib"] = _rss_kib()
        tmp = Path(DUMP + ".tmp")
        tmp.write_text(json.dumps(out))
        tmp.replace(DUMP + ".json")


if __name__ == "__main__":
    if FRAMES:
        tracemalloc.start(FRAMES)
    threading.Thread(target=_probe, name="soak-probe", daemon=True).start()
    from tun2proxy.cli import main

    sys.exit(main(sys.argv[1:]))
