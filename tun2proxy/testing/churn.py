"""Churn workloads and process probes for the soak benchmark and its short CI version.

The workload runs as the application in a lab namespace (:class:`~tun2proxy.testing.netlab.Lab`)
against the line-protocol stream server and a UDP echo server (``tests/e2e/servers.py``):
sequential short TCP connections, UDP round trips from fresh sockets (new sessions), and a
bulk flow. The probes read another process's RSS, open fds and the counters tun2proxy logs
on SIGUSR1. Linux only; not imported by the package itself.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "ChurnResult",
    "Slope",
    "churn_round",
    "fd_count",
    "fit_slope",
    "rss_kib",
    "sigusr1_stats",
]


@dataclass
class ChurnResult:
    """What one round did, and what failed."""

    tcp_ok: int = 0
    tcp_failed: int = 0
    udp_ok: int = 0
    udp_lost: int = 0
    bulk_bytes: int = 0
    errors: list[str] = field(default_factory=list)


def _tcp_once(make: Callable[[], socket.socket], dst: tuple[str, int], payload: bytes) -> bool:
    s = make()
    try:
        s.settimeout(10)
        s.connect(dst)
        s.sendall(b"ECHO\n" + payload)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        return got == payload
    finally:
        s.close()


def _udp_burst(make: Callable[[], socket.socket], dst: tuple[str, int], n: int) -> int:
    """``n`` round trips from one fresh socket (one new UDP session); returns how many came
    back."""
    s = make()
    ok = 0
    try:
        s.settimeout(1.0)
        for i in range(n):
            msg = b"udp-%d" % i
            try:
                s.sendto(msg, dst)
                data, _ = s.recvfrom(2048)
            except OSError:
                continue
            ok += data == msg
    finally:
        s.close()
    return ok


def _bulk(make: Callable[[], socket.socket], dst: tuple[str, int], seconds: float) -> int:
    s = make()
    sent = 0
    try:
        s.settimeout(30)
        s.connect(dst)
        s.sendall(b"SINK\n")
        block = os.urandom(1 << 16)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            s.sendall(block)
            sent += len(block)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(256):
            reply += chunk
        if not reply.strip().endswith(str(sent).encode()):
            return -1
    finally:
        s.close()
    return sent


def churn_round(
    tcp_socket: Callable[[], socket.socket],
    udp_socket: Callable[[], socket.socket],
    tcp_dst: tuple[str, int],
    udp_dst: tuple[str, int],
    *,
    connections: int = 1000,
    udp_round_trips: int = 1000,
    udp_per_socket: int = 10,
    bulk_seconds: float = 2.0,
) -> ChurnResult:
    """One round: ``connections`` sequential TCP echo exchanges, ``udp_round_trips`` UDP
    round trips (a new socket, so a new session, every ``udp_per_socket``), one bulk flow
    of ``bulk_seconds``. The socket factories make sockets in the app's namespace."""
    r = ChurnResult()
    for i in range(connections):
        try:
            ok = _tcp_once(tcp_socket, tcp_dst, b"churn %d\n" % i)
        except OSError as e:
            ok = False
            if len(r.errors) < 5:
                r.errors.append(f"tcp: {e}")
        r.tcp_ok += ok
        r.tcp_failed += not ok
    left = udp_round_trips
    while left > 0:
        n = min(udp_per_socket, left)
        got = _udp_burst(udp_socket, udp_dst, n)
        r.udp_ok += got
        r.udp_lost += n - got
        left -= n
    if bulk_seconds > 0:
        try:
            r.bulk_bytes = _bulk(tcp_socket, tcp_dst, bulk_seconds)
        except OSError as e:
            r.errors.append(f"bulk: {e}")
    return r


def rss_kib(pid: int) -> int:
    """The resident set size of process ``pid`` (KiB)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    """How many file descriptors process ``pid`` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def sigusr1_stats(pid: int, output: Callable[[], str], timeout: float = 10.0) -> dict[str, object]:
    """Send SIGUSR1 to a tun2proxy and return the counters it logs (its last ``stats {``
    line in ``output()``)."""
    before = output().count("stats {")
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = output()
        if text.count("stats {") > before:
            line = [ln for ln in text.splitlines() if "stats {" in ln][-1]
            with contextlib.suppress(ValueError):
                return json.loads(line.split("stats ", 1)[1])  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise TimeoutError("no stats line after SIGUSR1")


@dataclass(frozen=True)
class Slope:
    """A least-squares line through (hours, MiB) points: slope in MiB/h and its standard
    error, and the residuals' standard deviation."""

    mib_per_hour: float
    stderr: float
    residual_mib: float
    points: int


def fit_slope(points: list[tuple[float, float]]) -> Slope:
    """Fit ``y = a + b x`` to ``points`` of (seconds, KiB); the slope in MiB per hour."""
    n = len(points)
    if n < 3:
        return Slope(math.nan, math.nan, math.nan, n)
    xs = [p[0] / 3600 for p in points]
    ys = [p[1] / 1024 for p in points]
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return Slope(math.nan, math.nan, math.nan, n)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    a = my - b * mx
    res = [y - (a + b * x) for x, y in zip(xs, ys, strict=True)]
    s2 = sum(e * e for e in res) / (n - 2)
    return Slope(b, math.sqrt(s2 / sxx), math.sqrt(s2), n)
