"""TcpInput: TCP segments from the app: demux to a connection, a new SYN's admission
and ISN, RSTs for unknown flows, and the connection's notifications turned into events."""

from __future__ import annotations

import functools
import ipaddress

try:  # the BLAKE2 module alone: hashlib would map OpenSSL's libcrypto (about 3.5 MiB of RSS)
    from _blake2 import blake2s
except ImportError:  # pragma: no cover - an interpreter without the builtin module
    from hashlib import blake2s


from ..errors import MalformedPacket
from ..tcp.connection import N_CLOSED, N_ESTABLISHED, N_PEER_CLOSED, N_READABLE, N_WRITABLE
from ..tcp.state import CLOSED, TIME_WAIT
from ..wire.addrclass import bad_destination, bad_source
from ..wire.seq import SEQ_MASK
from ..wire.tcp import ACK, FIN, RST, SYN, TcpSegment, parse_tcp
from .base import StackBase, address_refused
from .events import TcpClosed, TcpConnectRequest, TcpPeerClosed, TcpReadable, TcpWritable
from .flow import StackConnection

__all__ = ["TcpInput"]


class TcpInput(StackBase):
    """TCP segments from the app: demux to a connection, a new SYN's admission"""

    def _tcp_input(
        self,
        data: bytes | bytearray,
        src: bytes,
        dst: bytes,
        off: int,
        end: int,
        now: float,
        verify: bool,
    ) -> None:
        if verify:
            # R9: the checksum is verified before any state is looked up or changed.
            n = int.from_bytes(memoryview(data)[off:end], "big")
            if (end - off) & 1:
                n <<= 8
            pseudo = int.from_bytes(src, "big") + int.from_bytes(dst, "big") + 6 + (end - off)
            if (n + pseudo) % 0xFFFF:
                raise MalformedPacket("tcp-checksum")
        seg = parse_tcp(data, off, end)
        key = src + dst + bytes(data[off : off + 4])
        conn = self._tcp.get(key)
        if conn is not None and conn.state is CLOSED:
            # Closed, kept only until the host reads what is left: the 4-tuple is free.
            del self._tcp[key]
            conn = None
        if conn is not None:
            if conn.state is TIME_WAIT and seg.flags & SYN and not seg.flags & ACK:
                # C6: a new SYN may reopen a 4-tuple in TIME-WAIT when its sequence number
                # is beyond the old connection's (RFC 9293 §3.10.7.4, MAY-2).
                if ((seg.seq - conn.rcv_nxt) & SEQ_MASK) < 0x80000000:
                    self._remove(conn)
                    conn = None
            if conn is not None:
                conn.packets_in += 1
                conn.on_segment(seg, now)
                self._touch(conn)
                return
        flags = seg.flags
        st = self.stats_counters
        if flags & RST:
            st.drop("tcp-rst-unknown-flow")  # never answer an RST with an RST
            return
        if src == dst or bad_source(src) or bad_destination(dst, self.config.allow_link_local):
            # Never answered: loopback, mapped, multicast... (wire/addrclass.py); LAND too.
            st.drop("tcp-bad-address")
            st.refuse_address("tcp-" + address_refused(src, dst, self.config.allow_link_local))
            return
        if flags & SYN and not flags & ACK:
            self._new_syn(data, seg, key, src, dst, off, now)
            return
        # A segment for no connection: RST (RFC 9293 §3.10.7.1), rate limited.
        st.drop("tcp-unknown-flow")
        seglen = len(seg.payload) + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        if flags & ACK:
            self._send_rst(src, dst, seg.dst_port, seg.src_port, seg.ack, 0, RST, now)
        else:
            self._send_rst(
                src, dst, seg.dst_port, seg.src_port, 0, seg.seq + seglen, RST | ACK, now
            )

    def _new_syn(
        self,
        data: bytes | bytearray,
        seg: TcpSegment,
        key: bytes,
        src: bytes,
        dst: bytes,
        off: int,
        now: float,
    ) -> None:
        cfg = self.config
        st = self.stats_counters
        adm = self._adm
        over_budget = (
            cfg.memory_limit is not None and self.memory_estimate() >= cfg.memory_limit
        )
        if not over_budget and len(self._tcp) >= cfg.max_flows:
            # A handshake nobody answered yields its slot before a new SYN is refused.
            old = adm.evict_oldest(now)
            if old is not None:
                st.drop("tcp-half-open-evicted")
                old.forget()
                self._remove(old)
        if over_budget or len(self._tcp) >= cfg.max_flows:
            st.drop("tcp-memory-limit" if over_budget else "tcp-flow-limit")
            self._send_rst(
                src, dst, seg.dst_port, seg.src_port, 0, seg.seq + 1 + len(seg.payload),
                RST | ACK, now,
            )
            return
        immediate = cfg.accept_policy == "immediate"
        if not immediate:
            if adm.update(now):
                # RFC 4987: too many requests the host is dialling for, or handshakes holding
                # an upstream connection unanswered; from now on a source must complete the
                # handshake before it costs an upstream connection.
                st.syn_flood_episodes += 1
            immediate = adm.flood
        if immediate:
            # Handshake first: answer no more SYNs than the host can queue (an app must not
            # see an open connection that is then reset for want of room).
            refusal = adm.queue_refusal(dst)
            if refusal is None and len(adm.half_open) >= cfg.max_half_open:
                old = adm.evict_oldest(now)
                if old is not None:
                    st.drop("tcp-half-open-evicted")
                    old.forget()  # silently: an RST to a likely spoofed source helps no one
                    self._remove(old)
        else:
            refusal = adm.pending_refusal(src)
        if refusal is not None:
            st.drop(refusal)  # the app retransmits its SYN
            return
        h = blake2s(key, key=cfg.isn_secret[:32], digest_size=8).digest()
        # RFC 6528: ISN = M + F(4-tuple, secret), M a 4-microsecond clock.
        iss = (int(now * 250_000) + int.from_bytes(h[:4], "big")) & SEQ_MASK
        conn = StackConnection.from_syn(
            seg,
            self._tcp_cfg,
            dst,
            src,
            iss,
            now,
            mss_limit=cfg.mss_for(4 if len(src) == 4 else 6),
            ts_offset=int.from_bytes(h[4:], "big"),
            checksum_offload=self._offload,
        )
        fid = self._next_id
        self._next_id += 1
        conn.init_flow(fid, key)
        self._tcp[key] = conn
        self._flows[fid] = conn
        st.tcp_syn_received += 1
        if immediate:
            conn.accept()
            adm.add_half_open(fid, conn, now)
            self._touch(conn)
            return
        conn.close_deadline = now + cfg.pending_timeout
        adm.add_pending(src)
        self._syn_quote[fid] = bytes(data[: off + 28])
        self._timers.schedule(conn)
        self._events.append(
            TcpConnectRequest(
                fid,
                (_ip_text(src), seg.src_port),
                (_ip_text(dst), seg.dst_port),
            )
        )

    def _collect(self, conn: StackConnection) -> None:
        """Turn a connection's notification bits into events (in a fixed, causal order)."""
        n = conn.notify
        conn.notify = 0
        fid = conn.flow_id
        ev = self._events
        adm = self._adm
        if fid in adm.half_open:
            if n & N_CLOSED:
                # Never announced to the host (a handshake that did not complete): no event.
                adm.pop_half_open(fid)
                self._closing.append(conn)
                return
            if not n & N_ESTABLISHED:
                return
            adm.pop_half_open(fid)
            adm.add_awaiting(fid, conn.local_addr)
            ev.append(
                TcpConnectRequest(
                    fid,
                    (_ip_text(conn.remote_addr), conn.remote_port),
                    (_ip_text(conn.local_addr), conn.local_port),
                    established=True,
                )
            )
        elif n & (N_ESTABLISHED | N_CLOSED) and adm.held:
            adm.held.pop(fid, None)  # the handshake the host accepted ended, either way
        if n & N_READABLE:
            ev.append(TcpReadable(fid))
        if n & N_PEER_CLOSED:
            ev.append(TcpPeerClosed(fid))
        if n & N_WRITABLE:
            ev.append(TcpWritable(fid))
        if n & N_CLOSED:
            self._unpend(conn)
            adm.discard_awaiting(fid)
            reason = conn.close_reason or "closed"
            if reason == "closed" and conn.readable:
                self._lingering[fid] = self._now + self._tcp_cfg.half_close_timeout
                return
            ev.append(TcpClosed(fid, reason))
            self.stats_counters.tcp_closed[reason] = self.stats_counters.tcp_closed.get(
                reason, 0
            ) + 1
            self._closing.append(conn)

    def _unpend(self, conn: StackConnection) -> None:
        if self._syn_quote.pop(conn.flow_id, None) is None:
            return
        self._adm.remove_pending(conn.remote_addr)


@functools.lru_cache(maxsize=4096)
def _ip_text(packed: bytes) -> str:
    """A packed address as text; cached: apps open many flows to few addresses, and parsing
    is a dozen Python calls per address on every SYN."""
    return str(ipaddress.ip_address(packed))
