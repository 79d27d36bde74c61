"""Instructions per unit of work in the pure core, counted by valgrind (callgrind), not timed.

Wall-clock figures on a shared machine swing by a factor of several; callgrind's instruction
count for the same interpreter, code and input is the same on every run, so a change to the
core can be compared before/after on a busy machine. Each workload runs N and 2N units in two
processes under ``valgrind --tool=callgrind``; the difference divided by N is the cost of one
unit, without the interpreter's start-up and imports.

    python benchmarks/core_instructions.py [--units 2000] [--workloads receive,send,connect]
    python benchmarks/core_instructions.py --run receive 2000      # one run, no valgrind

Workloads: ``receive`` one 1460-byte data segment from the app (plain checksums), read and
ACKed; ``send`` one 1460-byte segment towards the app; ``connect`` one whole short flow (SYN,
accept, handshake, 100 bytes each way, FIN both ways, the last ACK).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import _setup

from tun2proxy.stack import NetStack, StackConfig, TcpClosed, TcpConnectRequest
from tun2proxy.testing import ScriptedTcpPeer
from tun2proxy.wire import ACK

MSS = 1460


def run_receive(units: int) -> None:
    """``units`` data segments from the app, in batches of 50."""
    st, p, fid = _setup(MSS, False)
    payload = bytes(range(256)) * 6
    payload = payload[:MSS]
    now = 0.001
    for _ in range(units // 50):
        st.receive_many([p.data(payload) for _ in range(50)], now)
        st.events()
        st.recv(fid)
        st.poll(now)
        now += 0.0001


def run_send(units: int) -> None:
    """``units`` segments towards the app, ACKed every 50."""
    st, p, fid = _setup(MSS, False)
    conn = st.connection(fid)
    chunk = bytes(MSS * 50)
    now = 0.001
    for _ in range(units // 50):
        st.send(fid, chunk)
        st.poll(now)
        st.receive(p.segment(ACK, ack=conn.snd_max & 0xFFFFFFFF, window=65535, advance=False), now)
        st.events()
        now += 0.0001


def run_connect(units: int) -> None:
    """``units`` short flows, one after the other, each from its own source port."""
    st = NetStack(StackConfig(isn_secret=b"bench-secret-key", mtu=1500))
    now = 0.0
    for i in range(units):
        p = ScriptedTcpPeer("10.0.0.1", 10000 + i % 50000, "192.0.2.1", 80, iss=1000)
        st.receive(p.syn(mss=MSS, wscale=7, sack_permitted=True), now)
        (ev,) = st.events()
        assert isinstance(ev, TcpConnectRequest)
        fid = ev.flow_id
        st.tcp_accept(fid)
        p.expect(st.poll(now), flags=0x12)
        st.receive(p.ack(), now)
        st.receive(p.data(b"q" * 100), now)
        st.events()
        st.recv(fid)
        st.send(fid, b"r" * 100)
        st.shutdown(fid)
        p.expect(st.poll(now), count=None)  # the data and our FIN
        st.receive(p.fin(), now)
        st.poll(now)
        events = st.events()
        assert any(isinstance(e, TcpClosed) for e in events), events
        now += 0.001


WORKLOADS = {"receive": run_receive, "send": run_send, "connect": run_connect}


def _instructions(workload: str, units: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             sys.executable, __file__, "--run", workload, str(units)],
            capture_output=True, text=True, check=False,
        )
        m = re.search(r"Collected : (\d+)", proc.stderr)
        if proc.returncode != 0 or m is None:
            raise SystemExit(f"valgrind failed for {workload}: {proc.stderr[-500:]}")
        return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--units", type=int, default=2000)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--run", nargs=2, metavar=("WORKLOAD", "UNITS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        WORKLOADS[args.run[0]](int(args.run[1]))
        return
    print(f"{'workload':10} {'instructions/unit':>18}")
    for name in args.workloads.split(","):
        one = _instructions(name, args.units)
        two = _instructions(name, 2 * args.units)
        print(f"{name:10} {(two - one) / args.units:>18.0f}", flush=True)


if __name__ == "__main__":
    main()
