"""IcmpInput: ICMP and ICMPv6 from the app: echo answered locally, errors about our packets
(a UDP session ended, a TCP path MTU lowered), neighbour discovery ignored."""

from __future__ import annotations

from ..errors import MalformedPacket
from ..wire.addrclass import bad_source
from ..wire.checksum import ones_sum
from ..wire.icmp import (
    ICMP6_ECHO_REQUEST,
    ICMP6_PACKET_TOO_BIG,
    ICMP_DEST_UNREACH,
    ICMP_ECHO_REQUEST,
    IcmpMessage,
    echo_reply,
    is_icmp_error,
    parse_icmp,
    parse_quoted,
)
from ..wire.ip import IPPROTO_TCP, IPPROTO_UDP
from .base import StackBase, address_refused

__all__ = ["IcmpInput"]


class IcmpInput(StackBase):
    """ICMP and ICMPv6 from the app: echo answered locally, errors about our packets"""

    def _icmp_input(
        self,
        data: bytes | bytearray,
        version: int,
        src: bytes,
        dst: bytes,
        off: int,
        end: int,
        proto: int,
        verify: bool,
    ) -> None:
        msg = parse_icmp(data, off, end)
        if verify:
            initial = 0
            if version == 6:
                initial = int.from_bytes(src, "big") + int.from_bytes(dst, "big") + 58 + (end - off)
            if ones_sum(memoryview(data)[off:end], initial) != 0:
                raise MalformedPacket("icmp-checksum")
        st = self.stats_counters
        t = msg.type
        if (version == 4 and t == ICMP_ECHO_REQUEST) or (version == 6 and t == ICMP6_ECHO_REQUEST):
            # Answered locally, so a scoped destination is fine; a special one is not.
            why = address_refused(src, dst, True)
            if why:
                st.refuse_address("icmp-" + why)
            if self.config.icmp_echo == "reply" and not why:
                self._out.append(echo_reply(version, src, dst, msg))
                st.icmp_echo_replies += 1
            else:
                st.drop("icmp-echo-ignored")
            return
        if version == 6 and 130 <= t <= 143:
            # Neighbour discovery (133-137) and MLD (130-132, 143): a TUN has no neighbours.
            st.drop("icmp6-nd-mld")
            return
        if is_icmp_error(version, t):
            if bad_source(src):
                # An error "from" loopback, multicast...: forged, it must not end our flows.
                st.refuse_address("icmp-" + address_refused(src, dst, True))
                st.drop("icmp-error-bad-source")
                return
            self._icmp_error(msg, version)
            return
        st.drop("icmp-other")

    def _icmp_error(self, msg: IcmpMessage, version: int) -> None:
        """An ICMP error from the app's side about a packet we sent (checklist I1).

        UDP: the app's socket is gone, so its session ends. TCP: "packet too big" whose
        quoted sequence number is in flight lowers the flow's MSS; every other error is soft
        and never aborts a connection (RFC 5927 §4, RFC 1122 §4.2.3.9), only counted.
        """
        st = self.stats_counters
        try:
            q = parse_quoted(msg.body)
        except MalformedPacket:
            st.drop("icmp-error-unparseable")
            return
        if q.version != version:
            st.drop("icmp-error-unparseable")
            return
        if q.protocol == IPPROTO_UDP:
            # Our reply went from q.src to the app at (q.dst, q.dst_port): the app's socket is
            # gone; end its session now instead of waiting for the idle timeout.
            sess = self._udp.get(q.dst + q.dst_port.to_bytes(2, "big"))
            if sess is not None:
                self._close_udp(sess, "unreachable")
                st.drop("icmp-error-udp-session-closed")
                return
        elif q.protocol == IPPROTO_TCP:
            key = q.dst + q.src + q.dst_port.to_bytes(2, "big") + q.src_port.to_bytes(2, "big")
            conn = self._tcp.get(key)
            if conn is None:
                st.drop("icmp-error-no-flow")
                return
            t = msg.type
            if (version == 4 and t == ICMP_DEST_UNREACH and msg.code == 4) or (
                version == 6 and t == ICMP6_PACKET_TOO_BIG
            ):
                mtu = msg.rest & 0xFFFF if version == 4 else msg.rest
                if q.seq is None or not conn.on_packet_too_big(mtu, q.seq):
                    st.drop("icmp-error-bad-seq")  # RFC 5927 §4.1: not about data in flight
                    return
                st.tcp_mtu_reductions += 1
                self._touch(conn)
                return
        st.drop("icmp-error-ignored")
