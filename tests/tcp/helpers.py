"""A scripted harness for one passive :class:`TcpConnection` (smoltcp's send!/recv! idea).

The test plays the application's TCP (the *peer*). Sequence numbers in scripts are relative:

* peer numbers (``seq=`` of segments we send, ``.ack`` of segments we receive) count from
  IRS + 1, i.e. 0 is the peer's first data byte;
* connection numbers (``.seq`` of emitted segments, ``ack=`` of segments we send) count from
  ISS + 1, so the SYN-ACK has ``seq == -1`` and the first data byte is 0.

Both ISNs default to values just below 2**32 (smoltcp's REMOTE_SEQ = -10001), so every script
crosses the wrap. Every emitted packet is parsed with ``parse_tcp_packet`` (checksums
verified) and its addresses and ports checked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tun2proxy.tcp import TcpConfig, TcpConnection
from tun2proxy.tcp.state import State
from tun2proxy.testing.peer import parse_tcp_packet
from tun2proxy.wire.seq import SEQ_HALF, SEQ_MASK, SEQ_MOD
from tun2proxy.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpSegment, flags_str

__all__ = [
    "ACK",
    "ADDRS",
    "FIN",
    "ISNS",
    "LOCAL_ISN",
    "LOCAL_PORT",
    "PSH",
    "REMOTE_ISN",
    "REMOTE_PORT",
    "RST",
    "SYN",
    "Out",
    "Rig",
    "State",
    "data_of",
    "pattern",
]

REMOTE_ISN = SEQ_MOD - 10_001  # the application's ISN (smoltcp REMOTE_SEQ = -10001)
LOCAL_ISN = SEQ_MOD - 20_001  # our ISS, also before the wrap
LOCAL_PORT = 80
REMOTE_PORT = 49_500
#: ISNs worth parametrizing over (RFC 9293 §3.4; lwIP uses 0xFFFFFF00 - MSS).
ISNS = [0, 2**31, 2**32 - 1, 0xFFFFFF00 - 1460]
#: (local = the address the app dialled, remote = the app) per IP version.
ADDRS = {
    4: (bytes([192, 0, 2, 10]), bytes([10, 0, 0, 1])),
    6: (
        bytes.fromhex("20010db8000000000000000000000010"),
        bytes.fromhex("fd000000000000000000000000000001"),
    ),
}

_DEFAULT = object()


def _signed(d: int) -> int:
    d &= SEQ_MASK
    return d - SEQ_MOD if d >= SEQ_HALF else d


@dataclass
class Out:
    """One emitted segment, numbers made relative (see the module docstring)."""

    flags: int
    seq: int
    ack: int
    window: int
    payload: bytes
    seg: TcpSegment
    time: float = 0.0
    sack: tuple[tuple[int, int], ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def end(self) -> int:
        """Relative sequence number after this segment (payload, SYN and FIN counted)."""
        return self.seq + len(self.payload) + bool(self.flags & SYN) + bool(self.flags & FIN)

    @property
    def f(self) -> str:
        """tcpdump-style flags, e.g. ``'.'`` for a pure ACK, ``'FP.'`` for FIN|PSH|ACK."""
        return flags_str(self.flags)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "seg":
            raise AttributeError(name)
        # mss, wscale, sack_permitted, ts_val, ts_ecr, ... straight from the parsed segment
        return getattr(self.seg, name)

    def __repr__(self) -> str:
        return (
            f"Out([{self.f}] seq={self.seq} ack={self.ack} win={self.window} "
            f"len={len(self.payload)} sack={self.sack} ts={self.seg.ts_val}/{self.seg.ts_ecr})"
        )


class Rig:
    """One connection under test plus the peer's view of it.

    Typical use::

        r = Rig()
        r.establish()                      # SYN, accept, SYN-ACK, ACK
        out = r.send(payload=b"abc")       # peer data at its next sequence number
        assert out == [] and r.conn.recv() == b"abc"
    """

    def __init__(
        self,
        config: TcpConfig | None = None,
        *,
        version: int = 4,
        local_isn: int = LOCAL_ISN,
        remote_isn: int = REMOTE_ISN,
        mss_limit: int = 1460,
        now: float = 0.0,
        ts_offset: int = 7_000_000,
    ) -> None:
        self.config = config if config is not None else TcpConfig()
        self.local, self.remote = ADDRS[version]
        self.version = version
        self.iss = local_isn & SEQ_MASK
        self.irs = remote_isn & SEQ_MASK
        self.mss_limit = mss_limit
        self.ts_offset = ts_offset
        self.now = now
        self.conn: TcpConnection = None  # type: ignore[assignment]
        #: peer's next relative sequence number
        self.peer_nxt = 0
        #: relative ack the peer sends by default (sticky: updated by every explicit ack=)
        self.peer_ack = 0
        #: peer's default window field
        self.peer_window = 65535
        #: peer timestamp clock (None: the peer does not send timestamps)
        self.peer_ts: int | None = None
        #: the last TSval seen from the connection (the peer's TS.Recent)
        self.ts_recent = 0
        self.log: list[Out] = []

    # ------------------------------------------------------------------ numbers

    def rseq(self, rel: int) -> int:
        """Wire value of the peer's relative sequence number ``rel``."""
        return (self.irs + 1 + rel) & SEQ_MASK

    def lseq(self, rel: int) -> int:
        """Wire value of the connection's relative sequence number ``rel``."""
        return (self.iss + 1 + rel) & SEQ_MASK

    # ------------------------------------------------------------------ building input

    def syn_segment(
        self,
        *,
        mss: int | None = 1460,
        wscale: int | None = None,
        sack_permitted: bool = False,
        ts: tuple[int, int] | None = None,
        window: int = 65535,
        payload: bytes = b"",
    ) -> TcpSegment:
        return TcpSegment(
            REMOTE_PORT, LOCAL_PORT, self.irs, 0, SYN, window, 0, payload,
            mss=mss, wscale=wscale, sack_permitted=sack_permitted,
            ts_val=ts[0] if ts else None, ts_ecr=ts[1] if ts else None,
        )

    def segment(
        self,
        flags: int = ACK,
        payload: bytes = b"",
        *,
        seq: int | None = None,
        ack: int | None = None,
        window: int | None = None,
        ts: Any = _DEFAULT,
        sack: Iterable[tuple[int, int]] | None = None,
        advance: bool | None = None,
        **opts: Any,
    ) -> TcpSegment:
        """A peer segment; ``seq`` relative to IRS+1, ``ack``/``sack`` relative to ISS+1.

        ``seq`` defaults to the peer's next number (and then advances past payload/SYN/FIN
        unless ``advance=False``); ``ack`` defaults to the last ack used.
        """
        if seq is None:
            seq = self.peer_nxt
            if advance is None:
                advance = True
        if advance:
            self.peer_nxt = seq + len(payload) + bool(flags & FIN) + bool(flags & SYN)
        if ack is None:
            ack = self.peer_ack
        else:
            self.peer_ack = ack
        if ts is _DEFAULT:
            if self.peer_ts is not None and not flags & RST:
                self.peer_ts += 1
                ts = (self.peer_ts, self.ts_recent)
            else:
                ts = None
        wire_sack = None
        if sack is not None:
            wire_sack = tuple((self.lseq(a), self.lseq(b)) for a, b in sack)
        return TcpSegment(
            REMOTE_PORT,
            LOCAL_PORT,
            self.rseq(seq),
            self.lseq(ack) if flags & ACK else 0,
            flags,
            self.peer_window if window is None else window,
            0,
            payload,
            sack=wire_sack,
            ts_val=ts[0] if ts else None,
            ts_ecr=ts[1] if ts else None,
            **opts,
        )

    # ------------------------------------------------------------------ driving

    def input(self, seg: TcpSegment) -> list[Out]:
        """Feed one segment at the current time, then dispatch as the owner does."""
        self.conn.on_segment(seg, self.now)
        return self.dispatch()

    def send(self, flags: int = ACK, payload: bytes = b"", **kw: Any) -> list[Out]:
        """Build a peer segment (see :meth:`segment`), feed it, return what came out."""
        return self.input(self.segment(flags, payload, **kw))

    def dispatch(self) -> list[Out]:
        raw: list[bytearray] = []
        self.conn.dispatch(self.now, raw)
        return [self._parse(p) for p in raw]

    def _parse(self, p: bytes | bytearray) -> Out:
        src, dst, seg = parse_tcp_packet(p, verify=not self.conn.offload)
        assert src == self.local and dst == self.remote, "wrong addresses"
        assert (seg.src_port, seg.dst_port) == (LOCAL_PORT, REMOTE_PORT), "wrong ports"
        assert seg.urgent == 0
        sack = None
        if seg.sack is not None:
            sack = tuple(
                (_signed(a - self.irs - 1), _signed(b - self.irs - 1)) for a, b in seg.sack
            )
        if seg.ts_val is not None:
            self.ts_recent = seg.ts_val
        o = Out(
            flags=seg.flags,
            seq=_signed(seg.seq - self.iss - 1),
            ack=_signed(seg.ack - self.irs - 1) if seg.flags & ACK else 0,
            window=seg.window,
            payload=bytes(seg.payload),
            seg=seg,
            time=self.now,
            sack=sack,
        )
        self.log.append(o)
        return o

    def at(self, t: float) -> list[Out]:
        """Set the clock to ``t``, run timers, dispatch."""
        assert t >= self.now
        self.now = t
        self.conn.on_timer(t)
        return self.dispatch()

    def advance(self, dt: float) -> list[Out]:
        return self.at(self.now + dt)

    def run_until(self, t: float, *, limit: int = 10_000) -> list[Out]:
        """Fire every timer due up to ``t`` in order (each at its own time); return output."""
        outs: list[Out] = []
        for _ in range(limit):
            due = self.conn.poll_at()
            if due is None or due > t:
                break
            outs += self.at(max(due, self.now))
            if self.conn.poll_at() == due:
                raise AssertionError(f"timer at {due} did not move")
        else:
            raise AssertionError("too many timer events")
        if t > self.now:
            self.now = t
        return outs

    def app_send(self, data: bytes) -> tuple[int, list[Out]]:
        n = self.conn.send(data)
        return n, self.dispatch()

    # ------------------------------------------------------------------ reaching states

    def listen(self, **syn_opts: Any) -> TcpConnection:
        """A connection for the peer's SYN, pending in LISTEN (options as keywords)."""
        peer_ts = syn_opts.get("ts")
        syn = self.syn_segment(**syn_opts)
        if peer_ts is not None:
            self.peer_ts = peer_ts[0]
        self.conn = TcpConnection.from_syn(
            syn, self.config, self.local, self.remote, self.iss, self.now,
            mss_limit=self.mss_limit, ts_offset=self.ts_offset,
        )
        assert self.conn.state is State.LISTEN
        return self.conn

    def syn_received(self, **syn_opts: Any) -> Out:
        """LISTEN, accept, dispatch: return the SYN-ACK."""
        self.listen(**syn_opts)
        self.conn.accept()
        out = self.dispatch()
        assert len(out) == 1 and out[0].flags == SYN | ACK, out
        assert self.conn.state is State.SYN_RECEIVED
        return out[0]

    def establish(self, **syn_opts: Any) -> Out:
        """Complete the handshake; return the SYN-ACK."""
        synack = self.syn_received(**syn_opts)
        out = self.send(ACK, ack=0)
        assert out == [], out
        assert self.conn.state is State.ESTABLISHED
        return synack

    def to_state(self, name: str, **syn_opts: Any) -> None:
        """Bring a fresh connection to the named state with no data exchanged."""
        self.establish(**syn_opts)
        if name == "ESTABLISHED":
            return
        if name in ("FIN_WAIT_1", "FIN_WAIT_2", "CLOSING", "TIME_WAIT"):
            self.conn.shutdown()
            out = self.dispatch()
            assert [o.f for o in out] == ["F."] and out[0].seq == 0, out
            if name == "FIN_WAIT_2":
                assert self.send(ACK, ack=1) == []
            elif name == "CLOSING":
                out = self.send(FIN | ACK, ack=0)
                assert [(o.f, o.ack) for o in out] == [(".", 1)], out
            elif name == "TIME_WAIT":
                assert self.send(ACK, ack=1) == []
                out = self.send(FIN | ACK)
                assert [(o.f, o.ack) for o in out] == [(".", 1)], out
        elif name in ("CLOSE_WAIT", "LAST_ACK"):
            out = self.send(FIN | ACK)
            assert [(o.f, o.ack) for o in out] == [(".", 1)], out
            if name == "LAST_ACK":
                self.conn.shutdown()
                out = self.dispatch()
                assert [(o.f, o.seq, o.ack) for o in out] == [("F.", 0, 1)], out
        else:
            raise ValueError(name)
        assert self.conn.state is State[name], self.conn.state


def data_of(outs: Iterable[Out]) -> bytes:
    """Concatenated payloads, in emission order."""
    return b"".join(o.payload for o in outs)


def pattern(n: int, seed: int = 0) -> bytes:
    """``n`` recognisable bytes."""
    return bytes((i * 7 + seed) & 0xFF for i in range(n))
