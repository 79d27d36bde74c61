"""In-process throughput of the pure core (NetStack + TcpConnection), no I/O at all.

Receive path: an application's data segments are fed with ``receive_many`` in batches, the
host drains them with ``recv`` and ``poll`` emits the ACKs. Send path: the host queues bytes
with ``send``, ``poll`` emits segments, and one ACK per batch comes back. Each is measured at
MSS 1460 (MTU 1500) and MSS 65000 (MTU 65040), with checksums computed and verified in Python
("plain") and with a link that offloads them ("offload"). Prints MiB/s and segments/s, the
median of several runs. Not a test: run it by hand to see regressions.

    python benchmarks/bench_core.py [--seconds 2] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from tun2proxy.stack import NetStack, StackConfig, TcpConnectRequest
from tun2proxy.tcp import TcpConfig
from tun2proxy.testing import ScriptedTcpPeer
from tun2proxy.wire import ACK

BUFFER = 4 * 1024 * 1024


def _setup(mss: int, offload: bool) -> tuple[NetStack, ScriptedTcpPeer, int]:
    cfg = StackConfig(
        isn_secret=b"bench-secret-key",
        mtu=mss + 40,
        checksum_offload=offload,
        verify_checksums=not offload,
        tcp=TcpConfig(recv_buffer=BUFFER, send_buffer=BUFFER),
    )
    st = NetStack(cfg)
    p = ScriptedTcpPeer(
        "10.0.0.1", 40000, "192.0.2.1", 80, iss=2**32 - 10_001, window=65535,
        verify_checksums=not offload,
    )
    st.receive(p.syn(mss=mss, wscale=7, sack_permitted=True), 0.0)
    (ev,) = st.events()
    assert isinstance(ev, TcpConnectRequest)
    st.tcp_accept(ev.flow_id)
    p.expect(st.poll(0.0), flags=0x12)
    st.receive(p.ack(), 0.0)
    st.poll(0.0)
    # One byte of data, so that the stack's ACK advertises its full (scaled) window.
    st.receive(p.data(b"x"), 0.0)
    st.recv(ev.flow_id)
    p.expect(st.poll(0.0), flags=ACK)
    return st, p, ev.flow_id


def bench_receive(mss: int, offload: bool, seconds: float) -> tuple[float, float]:
    st, p, fid = _setup(mss, offload)
    payload = bytes(range(256)) * (mss // 256 + 1)
    payload = payload[:mss]
    batch = 64
    # Pre-build one window of segments; sequence numbers advance per round.
    now = 0.001
    segs = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        pkts = [p.data(payload) for _ in range(batch)]
        st.receive_many(pkts, now, checksum_ok=offload)
        st.events()
        st.recv(fid)
        st.poll(now)
        segs += batch
        now += 0.0001
    dt = time.perf_counter() - t0
    # Building the app's packets is the peer's cost, not ours: measure and subtract it.
    t1 = time.perf_counter()
    for _ in range(segs // batch):
        [p.data(payload, advance=False) for _ in range(batch)]
    build = time.perf_counter() - t1
    core = max(dt - build, 1e-9)
    return segs * mss / core / 2**20, segs / core


def bench_send(mss: int, offload: bool, seconds: float) -> tuple[float, float]:
    st, p, fid = _setup(mss, offload)
    chunk = bytes(range(256)) * 1024  # 256 KiB per send call
    now = 0.001
    segs = 0
    sent_bytes = 0
    conn = st.connection(fid)
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        st.send(fid, chunk)
        out = st.poll(now)
        segs += len(out)
        # One cumulative ACK for everything sent, opening the window again.
        ack = (conn.snd_max) & 0xFFFFFFFF
        st.receive(p.segment(ACK, ack=ack, window=65535, advance=False), now, checksum_ok=offload)
        st.events()
        now += 0.0001
    dt = time.perf_counter() - t0
    sent_bytes = (conn.snd_una - conn.iss - 1)
    return sent_bytes / dt / 2**20, segs / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.5, help="duration of one run")
    ap.add_argument("--runs", type=int, default=5, help="runs per figure (median is shown)")
    args = ap.parse_args()
    print(f"{'path':8} {'mss':>6} {'checksums':10} {'MiB/s':>10} {'segments/s':>12}")
    for path, fn in (("receive", bench_receive), ("send", bench_send)):
        for mss in (1460, 65000):
            for offload in (False, True):
                results = [fn(mss, offload, args.seconds) for _ in range(args.runs)]
                mib = statistics.median(r[0] for r in results)
                sps = statistics.median(r[1] for r in results)
                mode = "offload" if offload else "plain"
                print(f"{path:8} {mss:>6} {mode:10} {mib:>10.1f} {sps:>12.0f}", flush=True)


if __name__ == "__main__":
    main()
