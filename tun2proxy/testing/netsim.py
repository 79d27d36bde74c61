"""A seeded network simulator with a virtual clock: impair packets, run whole transfers.

:class:`Impairment` describes a bad link (loss, reordering, duplication, delay, jitter,
corruption); :class:`ImpairedPipe` applies it to one direction of traffic with its own seeded
random generator, so every run with the same seed is the same run. :func:`run_transfer` puts
the pieces together: application-side TCP clients (this package's own TCP, in active mode)
talk through two impaired pipes to a :class:`~tun2proxy.stack.NetStack`, whose host side is an
in-memory upstream, and the bytes each side received are returned for comparison.

The same :class:`Impairment` is used in front of a real TUN device (``--impair``), where it
gives the kernel's TCP a bad link to cope with.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import MalformedPacket
from ..link.impair import ImpairedPipe, Impairment
from ..stack.config import StackConfig
from ..stack.events import (
    TcpClosed,
    TcpConnectRequest,
    TcpPeerClosed,
    TcpReadable,
    TcpWritable,
)
from ..stack.netstack import NetStack
from ..tcp.config import TcpConfig
from ..tcp.connection import TcpConnection
from ..tcp.state import CLOSED, TIME_WAIT
from ..wire.checksum import ones_sum
from ..wire.ip import parse_ip
from ..wire.tcp import ACK, FIN, RST, SYN, TcpSegment, emit_tcp_packet, parse_tcp

__all__ = ["ImpairedPipe", "Impairment", "TransferResult", "run_transfer"]


@dataclass
class TransferResult:
    """What a :func:`run_transfer` produced; compare ``upstream_received`` with what was sent."""

    upstream_received: list[bytes]
    app_received: list[bytes]
    completed: bool
    virtual_time: float
    iterations: int
    close_reasons: list[str]
    stack_stats: dict[str, object]
    pipe_stats: dict[str, int] = field(default_factory=dict)


def _verified_segment(packet: bytes) -> tuple[bytes, bytes, object] | None:
    """Parse a packet the way a real stack would: checksums first; None if it is corrupt."""
    try:
        ip = parse_ip(packet, verify_checksum=True)
        if ip.fragment or ip.protocol != 6:
            return None
        pseudo = int.from_bytes(ip.src, "big") + int.from_bytes(ip.dst, "big") + 6 + (
            ip.end - ip.offset
        )
        if ones_sum(memoryview(packet)[ip.offset : ip.end], pseudo) != 0:
            return None
        return ip.src, ip.dst, parse_tcp(packet, ip.offset, ip.end)
    except MalformedPacket:
        return None


def _rst_for(seg: TcpSegment, conn: TcpConnection) -> bytes | None:
    if seg.flags & RST:
        return None
    if seg.flags & ACK:
        rseg = TcpSegment(seg.dst_port, seg.src_port, seg.ack, 0, RST)
    else:
        n = len(seg.payload) + (1 if seg.flags & SYN else 0) + (1 if seg.flags & FIN else 0)
        rseg = TcpSegment(seg.dst_port, seg.src_port, 0, (seg.seq + n) & 0xFFFFFFFF, RST | ACK)
    return bytes(emit_tcp_packet(conn.local_addr, conn.remote_addr, rseg))


def run_transfer(
    up: list[bytes],
    down: list[bytes],
    *,
    impair_up: Impairment | None = None,
    impair_down: Impairment | None = None,
    seed: int = 0,
    version: int = 4,
    stack_config: StackConfig | None = None,
    client_config: TcpConfig | None = None,
    max_time: float = 600.0,
    max_iterations: int = 2_000_000,
    client_iss: int | None = None,
    chunk: int = 65536,
    trace: Callable[[str, float, bytes], None] | None = None,
) -> TransferResult:
    """Run ``len(up)`` TCP flows through a NetStack over an impaired link, in virtual time.

    Flow ``i``: the application sends ``up[i]`` then closes its side; the in-memory upstream
    sends ``down[i]`` then closes its side. The run ends when every flow is closed on both
    sides, or at ``max_time`` virtual seconds (then ``completed`` is False). ``trace`` is
    called with ``("app>", now, packet)`` or ``("stack>", now, packet)`` for every packet
    sent (before impairment).
    """
    if len(up) != len(down):
        raise ValueError("up and down must list the same number of flows")
    rng = random.Random(seed)
    imp_up = impair_up or Impairment()
    imp_down = impair_down or Impairment()
    pipe_up = ImpairedPipe(imp_up, random.Random(rng.getrandbits(64)))
    pipe_down = ImpairedPipe(imp_down, random.Random(rng.getrandbits(64)))
    cfg = stack_config or StackConfig(isn_secret=b"netsim-secret-00", mtu=1500)
    stack = NetStack(cfg)
    ccfg = client_config or TcpConfig()
    if version == 4:
        app_addr = bytes((10, 0, 0, 1))
        srv_addr = bytes((10, 0, 1, 1))
    else:
        app_addr = bytes.fromhex("fd000000000000000000000000000001")
        srv_addr = bytes.fromhex("fd000000000000000000000000010001")
    nflows = len(up)
    now = 0.0
    clients: list[TcpConnection] = []
    for i in range(nflows):
        iss = client_iss if client_iss is not None else rng.getrandbits(32)
        clients.append(
            TcpConnection.connect(
                ccfg, app_addr, 20000 + i, srv_addr, 80, iss + i * 7919, now,
                mss_limit=cfg.mss_for(version),
            )
        )
    by_port = {c.local_port: c for c in clients}
    up_sent = [0] * nflows
    down_sent = [0] * nflows
    up_got = [bytearray() for _ in range(nflows)]
    app_got = [bytearray() for _ in range(nflows)]
    flow_index: dict[int, int] = {}
    upstream_eof = [False] * nflows
    upstream_done = [False] * nflows
    closed_reasons: list[str] = []
    client_closed = [False] * nflows

    def feed_down(i: int, fid: int) -> None:
        data = down[i]
        while down_sent[i] < len(data):
            n = stack.send(fid, data[down_sent[i] : down_sent[i] + chunk])
            if not n:
                return
            down_sent[i] += n
        if not upstream_done[i]:
            upstream_done[i] = True
            stack.shutdown(fid)

    it = 0
    completed = False
    while it < max_iterations:
        it += 1
        # Link towards the application (checksums verified, corrupt packets dropped).
        for pkt in pipe_down.pop_due(now):
            parsed = _verified_segment(pkt)
            if parsed is None:
                continue
            _s, _d, seg = parsed
            cl2 = by_port.get(seg.dst_port)  # type: ignore[attr-defined]
            if cl2 is None:
                continue
            if cl2.state is CLOSED:
                # Like a real host: a segment for a connection that no longer exists draws
                # an RST (RFC 9293 §3.10.7.1), unless it is one.
                rst = _rst_for(seg, cl2)  # type: ignore[arg-type]
                if rst is not None:
                    pipe_up.push(rst, now)
                continue
            cl2.on_segment(seg, now)  # type: ignore[arg-type]
        # Application side: read, write, run timers, emit.
        for i, cl in enumerate(clients):
            if cl.state is CLOSED:
                client_closed[i] = True
                continue
            if cl.state is TIME_WAIT:
                client_closed[i] = True
            app_got[i] += cl.recv()
            if cl.state.value in ("ESTABLISHED", "CLOSE-WAIT") and not cl.fin_queued:
                while up_sent[i] < len(up[i]):
                    n = cl.send(up[i][up_sent[i] : up_sent[i] + chunk])
                    if not n:
                        break
                    up_sent[i] += n
                if up_sent[i] >= len(up[i]):
                    cl.shutdown()
            out: list[bytearray] = []
            cl.dispatch(now, out)
            cl.on_timer(now)
            cl.dispatch(now, out)
            for op in out:
                if trace is not None:
                    trace("app>", now, bytes(op))
                pipe_up.push(op, now)
        # Link towards the stack.
        stack.receive_many(pipe_up.pop_due(now), now)
        # Host side: the in-memory upstream.
        for _round in range(4):
            evs = stack.events()
            if not evs:
                break
            for ev in evs:
                if isinstance(ev, TcpConnectRequest):
                    i = ev.src[1] - 20000
                    flow_index[ev.flow_id] = i
                    stack.tcp_accept(ev.flow_id)
                    feed_down(i, ev.flow_id)
                elif isinstance(ev, TcpReadable):
                    up_got[flow_index[ev.flow_id]] += stack.recv(ev.flow_id)
                elif isinstance(ev, TcpWritable):
                    feed_down(flow_index[ev.flow_id], ev.flow_id)
                elif isinstance(ev, TcpPeerClosed):
                    i = flow_index[ev.flow_id]
                    up_got[i] += stack.recv(ev.flow_id)
                    upstream_eof[i] = True
                elif isinstance(ev, TcpClosed):
                    closed_reasons.append(ev.reason)
        for sp in stack.poll(now):
            if trace is not None:
                trace("stack>", now, bytes(sp))
            pipe_down.push(sp, now)
        if len(closed_reasons) >= nflows and all(client_closed) and not len(pipe_up) and not len(
            pipe_down
        ):
            completed = True
            break
        # Advance virtual time to the next thing that can happen.
        candidates = [pipe_up.next_due(), pipe_down.next_due(), stack.poll_at()]
        for cl in clients:
            if cl.state is not CLOSED:
                candidates.append(cl.poll_at())
        nxt = min((t for t in candidates if t is not None), default=None)
        if nxt is None:
            # Nothing scheduled: the clients may still owe output (dispatched next round).
            nxt = now + 0.001
        if nxt <= now:
            nxt = now + 1e-6
        now = nxt
        if now > max_time:
            break
    for i, cl in enumerate(clients):
        if cl.state is not CLOSED:
            app_got[i] += cl.recv()
    return TransferResult(
        upstream_received=[bytes(b) for b in up_got],
        app_received=[bytes(b) for b in app_got],
        completed=completed,
        virtual_time=now,
        iterations=it,
        close_reasons=closed_reasons,
        stack_stats=stack.stats(),
        pipe_stats={
            "up_lost": pipe_up.lost,
            "up_corrupted": pipe_up.corrupted,
            "down_lost": pipe_down.lost,
            "down_corrupted": pipe_down.corrupted,
            "up_sent": pipe_up.sent,
            "down_sent": pipe_down.sent,
        },
    )
