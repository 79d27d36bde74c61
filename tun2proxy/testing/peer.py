"""A scripted application-side TCP peer, for packetdrill-style tests of the stack.

The peer builds the segments an application's TCP would send (``<`` lines in packetdrill)
and checks the segments the stack emits (``>`` lines), tracking both sides' sequence numbers
so scripts can be written relative to the handshake::

    peer = ScriptedTcpPeer("10.0.0.1", 40000, "10.0.0.2", 80, iss=2**32 - 10_001)
    stack.receive(peer.syn(mss=1460), now)
    req = stack.events()[0]; stack.tcp_accept(req.flow_id)
    synack = peer.expect(stack.poll(now), flags=SYN | ACK)
    stack.receive(peer.ack(), now)
"""

from __future__ import annotations

from collections.abc import Sequence

from ..wire.checksum import ones_sum
from ..wire.ip import parse_ip
from ..wire.seq import SEQ_MASK
from ..wire.tcp import ACK, FIN, RST, SYN, TcpSegment, flags_str, parse_tcp
from .packets import pack, tcp_packet

__all__ = ["ExpectationError", "ScriptedTcpPeer", "parse_tcp_packet"]


class ExpectationError(AssertionError):
    """The stack emitted something other than what the script expected."""


def parse_tcp_packet(
    packet: bytes | bytearray, verify: bool = True
) -> tuple[bytes, bytes, TcpSegment]:
    """Parse an emitted packet, checking the IP and TCP checksums; return (src, dst, segment).

    Pass ``verify=False`` for packets from a stack that leaves checksums to the device.
    """
    ip = parse_ip(packet, verify_checksum=verify)
    if ip.protocol != 6:
        raise ExpectationError(f"expected TCP, got protocol {ip.protocol}")
    pseudo = int.from_bytes(ip.src, "big") + int.from_bytes(ip.dst, "big") + 6 + ip.end - ip.offset
    if verify and ones_sum(memoryview(packet)[ip.offset : ip.end], pseudo) != 0:
        raise ExpectationError("bad TCP checksum")
    return ip.src, ip.dst, parse_tcp(packet, ip.offset, ip.end)


class ScriptedTcpPeer:
    """The application's end of one TCP connection, driven by a test script.

    ``snd_nxt`` is the peer's next sequence number; ``rcv_nxt`` is what it acknowledges,
    updated from every segment passed to :meth:`expect` (and settable by hand).
    """

    def __init__(
        self,
        src: str,
        sport: int,
        dst: str,
        dport: int,
        *,
        iss: int = 1000,
        window: int = 65535,
        ts: bool = False,
        verify_checksums: bool = True,
    ) -> None:
        self.src = pack(src)
        self.dst = pack(dst)
        self.sport = sport
        self.dport = dport
        self.iss = iss & SEQ_MASK
        self.snd_nxt = self.iss
        self.rcv_nxt = 0
        self.window = window
        self.ts = ts
        self.tsval = 1000
        self.ts_recent = 0
        self.received = bytearray()
        self.verify_checksums = verify_checksums

    # ------------------------------------------------------------------ building

    def segment(
        self,
        flags: int,
        payload: bytes = b"",
        *,
        seq: int | None = None,
        ack: int | None = None,
        window: int | None = None,
        advance: bool = True,
        **options: object,
    ) -> bytes:
        """A packet from the app; ``seq``/``ack`` default to the peer's running state."""
        s = self.snd_nxt if seq is None else seq
        a = self.rcv_nxt if ack is None else ack
        if self.ts and "ts" not in options and not flags & RST:
            options["ts"] = (self.tsval, self.ts_recent)
            self.tsval += 1
        pkt = tcp_packet(
            self.src,
            self.dst,
            self.sport,
            self.dport,
            seq=s,
            ack=a if flags & ACK else 0,
            flags=flags,
            window=self.window if window is None else window,
            payload=payload,
            **options,  # type: ignore[arg-type]
        )
        if advance and seq is None:
            self.snd_nxt = (s + len(payload) + (1 if flags & SYN else 0) + (
                1 if flags & FIN else 0
            )) & SEQ_MASK
        return pkt

    def syn(self, **options: object) -> bytes:
        """The opening SYN (options such as ``mss=1460, wscale=7, sack_permitted=True``)."""
        self.snd_nxt = self.iss
        return self.segment(SYN, **options)  # type: ignore[arg-type]

    def ack(self, **kw: object) -> bytes:
        """A pure ACK of everything received so far."""
        return self.segment(ACK, **kw)  # type: ignore[arg-type]

    def data(self, payload: bytes, flags: int = ACK, **kw: object) -> bytes:
        """A data segment (ACK set) continuing the peer's stream."""
        return self.segment(flags, payload, **kw)  # type: ignore[arg-type]

    def fin(self, **kw: object) -> bytes:
        """FIN+ACK."""
        return self.segment(FIN | ACK, **kw)  # type: ignore[arg-type]

    def rst(self, **kw: object) -> bytes:
        """RST (with ACK unless ``flags`` says otherwise)."""
        return self.segment(RST | ACK, **kw)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ checking

    def expect(
        self,
        packets: Sequence[bytes | bytearray],
        *,
        flags: int | None = None,
        seq: int | None = None,
        ack: int | None = None,
        payload: bytes | None = None,
        window: int | None = None,
        count: int | None = 1,
    ) -> TcpSegment:
        """Check that ``packets`` holds ``count`` segment(s) of this connection; return the last.

        Each given field must match every segment. Payloads are appended to ``received`` and
        ``rcv_nxt`` moves past data and FIN, as the app's TCP would.
        """
        segs = []
        for p in packets:
            s, d, seg = parse_tcp_packet(p, self.verify_checksums)
            if s == self.dst and d == self.src and seg.src_port == self.dport and (
                seg.dst_port == self.sport
            ):
                segs.append(seg)
        if count is not None and len(segs) != count:
            raise ExpectationError(
                f"expected {count} segment(s), got {len(segs)}: {[repr(x) for x in segs]}"
            )
        if not segs:
            raise ExpectationError("expected a segment, got none")
        for seg in segs:
            problems = []
            if flags is not None and seg.flags != flags:
                problems.append(f"flags {flags_str(seg.flags)} != {flags_str(flags)}")
            if seq is not None and seg.seq != seq & SEQ_MASK:
                problems.append(f"seq {seg.seq} != {seq & SEQ_MASK}")
            if ack is not None and seg.ack != ack & SEQ_MASK:
                problems.append(f"ack {seg.ack} != {ack & SEQ_MASK}")
            if payload is not None and bytes(seg.payload) != payload:
                problems.append(f"payload {bytes(seg.payload)[:40]!r} != {payload[:40]!r}")
            if window is not None and seg.window != window:
                problems.append(f"window {seg.window} != {window}")
            if problems:
                raise ExpectationError(f"{seg!r}: " + "; ".join(problems))
            self._absorb(seg)
        return segs[-1]

    def expect_none(self, packets: Sequence[bytes | bytearray]) -> None:
        """Check that no segment of this connection is among ``packets``."""
        for p in packets:
            s, d, seg = parse_tcp_packet(p, self.verify_checksums)
            if s == self.dst and d == self.src and seg.dst_port == self.sport:
                raise ExpectationError(f"expected nothing, got {seg!r}")

    def _absorb(self, seg: TcpSegment) -> None:
        if seg.flags & SYN:
            self.rcv_nxt = (seg.seq + 1) & SEQ_MASK
        n = len(seg.payload)
        if n and seg.seq == self.rcv_nxt:
            self.received += seg.payload
            self.rcv_nxt = (self.rcv_nxt + n) & SEQ_MASK
        if seg.flags & FIN and (seg.seq + n) & SEQ_MASK == self.rcv_nxt:
            self.rcv_nxt = (self.rcv_nxt + 1) & SEQ_MASK
        if seg.ts_val is not None:
            self.ts_recent = seg.ts_val
