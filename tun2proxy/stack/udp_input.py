"""UdpInput: UDP datagrams from the app: checksum and address checks, one session per app
source (endpoint-independent), LRU eviction at the cap, idle expiry."""

from __future__ import annotations

from ..errors import MalformedPacket
from ..udp.session import UdpSession
from ..wire.addrclass import bad_destination, bad_source
from ..wire.checksum import ones_sum
from ..wire.udp import parse_udp
from .base import StackBase, address_refused
from .events import UdpDatagram, UdpSessionClosed

__all__ = ["UdpInput"]


class UdpInput(StackBase):
    """UDP datagrams from the app: checksum and address checks, one session per app"""

    def _udp_input(
        self,
        data: bytes | bytearray,
        version: int,
        src: bytes,
        dst: bytes,
        off: int,
        end: int,
        now: float,
        verify: bool,
    ) -> None:
        u = parse_udp(data, off, end)
        st = self.stats_counters
        if verify:
            if u.checksum == 0:
                if version == 6:
                    raise MalformedPacket("udp-zero-checksum-v6")  # RFC 8200 §8.1
            else:
                pseudo = int.from_bytes(src, "big") + int.from_bytes(dst, "big") + 17 + u.length
                if ones_sum(memoryview(data)[off : off + u.length], pseudo) != 0:
                    raise MalformedPacket("udp-checksum")
        if src == dst or bad_source(src):
            st.refuse_address("udp-" + address_refused(src, dst, True))
            raise MalformedPacket("udp-bad-source")
        if bad_destination(dst, self.config.allow_link_local) or not u.dst_port:
            # mDNS, SSDP, LLMNR, WS-Discovery, ::ffff:127.0.0.1...: never proxied
            # (tun2proxy#172, #231; wire/addrclass.py).
            if u.dst_port:
                st.refuse_address(
                    "udp-" + address_refused(src, dst, self.config.allow_link_local)
                )
            st.drop("udp-multicast-or-local")
            return
        if not u.src_port:
            raise MalformedPacket("udp-port-zero")
        key = src + u.src_port.to_bytes(2, "big")
        sess = self._udp.get(key)
        if sess is None:
            sess = self._new_udp(key, src, u.src_port, u.dst_port, now)
        else:
            self._udp.move_to_end(key)
        sess.last_activity = now
        sess.datagrams_in += 1
        payload = bytes(u.payload)
        sess.bytes_in += len(payload)
        sess.last_head = bytes(data[: off + 8])
        st.udp_datagrams_in += 1
        self._events.append(
            UdpDatagram(sess.flow_id, sess.src_text, (sess.name_of(dst), u.dst_port), payload)
        )

    def _new_udp(
        self, key: bytes, src: bytes, sport: int, dport: int, now: float
    ) -> UdpSession:
        cfg = self.config
        if len(self._udp) >= cfg.max_udp_sessions:
            _k, old = self._udp.popitem(last=False)  # LRU eviction keeps the cap
            self._udp_by_id.pop(old.flow_id, None)
            old.sched = None
            self.stats_counters.udp_evicted += 1
            self._count_udp_closed("evicted")
            self._events.append(UdpSessionClosed(old.flow_id, "evicted"))
        fid = self._next_id
        self._next_id += 1
        timeout = cfg.dns_timeout if dport == 53 else cfg.udp_timeout
        sess = UdpSession(fid, key, src, sport, now, timeout)
        self._udp[key] = sess
        self._udp_by_id[fid] = sess
        self.stats_counters.udp_sessions_opened += 1
        self._timers.push(sess, sess.deadline())
        return sess

    def _close_udp(self, sess: UdpSession, reason: str) -> None:
        self._udp.pop(sess.key, None)
        self._udp_by_id.pop(sess.flow_id, None)
        sess.sched = None
        self._count_udp_closed(reason)
        self._events.append(UdpSessionClosed(sess.flow_id, reason))

    def _count_udp_closed(self, reason: str) -> None:
        d = self.stats_counters.udp_closed
        d[reason] = d.get(reason, 0) + 1

    def _udp_timer(self, sess: UdpSession, now: float) -> None:
        if self._udp_by_id.get(sess.flow_id) is not sess:
            return
        due = sess.deadline()
        if now >= due:
            self._close_udp(sess, "idle")
        else:
            self._timers.push(sess, due)
