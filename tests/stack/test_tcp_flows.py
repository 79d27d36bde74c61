"""NetStack TCP behaviour: decide at the SYN, events, flow lifecycle, unknown flows."""

from __future__ import annotations

import pytest

from tun2proxy.errors import FlowStateError
from tun2proxy.stack import (
    TcpClosed,
    TcpConnectRequest,
    TcpPeerClosed,
    TcpReadable,
    TcpWritable,
)
from tun2proxy.tcp import TcpConfig
from tun2proxy.testing import parse_tcp_packet, tcp_packet
from tun2proxy.wire import ACK, FIN, PSH, RST, SYN, parse_icmp, parse_ip

from .helpers import ADDRS, establish, make_stack, peer

VERSIONS = [4, 6]


@pytest.mark.parametrize("version", VERSIONS)
def test_syn_becomes_connect_request_with_endpoints(version: int) -> None:
    st = make_stack()
    p = peer(version, sport=40001, dport=443)
    st.receive(p.syn(mss=1460), 0.0)
    (ev,) = st.events()
    assert isinstance(ev, TcpConnectRequest)
    assert ev.src == (ADDRS[version][0], 40001)
    assert ev.dst == (ADDRS[version][1], 443)
    # Nothing is sent until the host decides.
    assert st.poll(0.0) == []
    assert st.stats()["tcp_pending"] == 1


def test_retransmitted_syn_while_pending_is_ignored() -> None:
    st = make_stack()
    p = peer()
    syn = p.syn()
    st.receive(syn, 0.0)
    assert len(st.events()) == 1
    st.receive(syn, 1.0)
    st.receive(syn, 3.0)
    assert st.events() == []
    assert st.poll(3.0) == []
    assert st.stats()["tcp_flows"] == 1


@pytest.mark.parametrize("version", VERSIONS)
def test_accept_then_full_exchange_and_orderly_close(version: int) -> None:
    st = make_stack()
    p = peer(version)
    fid = establish(st, p)
    # App -> upstream.
    st.receive(p.data(b"hello", flags=ACK | PSH), 0.01)
    assert st.events() == [TcpReadable(fid)]
    assert st.recv(fid) == b"hello"
    # Upstream -> app.
    assert st.send(fid, b"world") == 5
    seg = p.expect(st.poll(0.01), flags=ACK | PSH, payload=b"world", ack=p.snd_nxt)
    assert seg.ack == p.snd_nxt
    # App closes its side; we close ours after; exactly one TcpClosed.
    st.receive(p.fin(), 0.02)
    assert st.events() == [TcpPeerClosed(fid)]
    st.poll(0.02)
    st.shutdown(fid)
    p.expect(st.poll(0.03), flags=FIN | ACK)
    st.receive(p.ack(), 0.04)
    assert st.events() == [TcpClosed(fid, "closed")]
    st.poll(0.04)
    assert fid not in st
    assert st.stats()["tcp_flows"] == 0
    with pytest.raises(FlowStateError):
        st.send(fid, b"x")


def test_time_wait_keeps_key_and_absorbs_retransmitted_fin() -> None:
    st = make_stack(tcp=TcpConfig(time_wait=1.0))
    p = peer()
    fid = establish(st, p)
    st.shutdown(fid)
    p.expect(st.poll(0.1), flags=FIN | ACK)
    st.receive(p.ack(), 0.1)  # -> FIN-WAIT-2
    st.poll(0.1)
    fin = p.fin()
    st.receive(fin, 0.2)  # -> TIME-WAIT
    assert st.events() == [TcpPeerClosed(fid), TcpClosed(fid, "closed")]
    p.expect(st.poll(0.2), flags=ACK)
    assert st.stats()["tcp_states"] == {"TIME-WAIT": 1}
    # The app's FIN again (our ACK was "lost"): re-ACKed, no new event.
    st.receive(fin, 0.5)
    p.expect(st.poll(0.5), flags=ACK)
    assert st.events() == []
    # TIME-WAIT ends and the key is forgotten.
    st.poll(2.0)
    assert st.stats()["tcp_flows"] == 0
    assert st.poll_at() is None


def test_new_syn_reopens_time_wait() -> None:
    st = make_stack(tcp=TcpConfig(time_wait=30.0))
    p = peer()
    fid = establish(st, p)
    st.shutdown(fid)
    p.expect(st.poll(0.1), flags=FIN | ACK)
    st.receive(p.fin(), 0.1)
    st.events()
    st.poll(0.1)
    assert st.stats()["tcp_states"] == {"TIME-WAIT": 1}
    p2 = peer(iss=(p.snd_nxt + 100_000) & 0xFFFFFFFF)
    st.receive(p2.syn(), 1.0)
    (ev,) = st.events()
    assert isinstance(ev, TcpConnectRequest) and ev.flow_id != fid


def test_reject_with_reset() -> None:
    st = make_stack()
    p = peer(iss=5000)
    st.receive(p.syn(), 0.0)
    (ev,) = st.events()
    st.tcp_reject(ev.flow_id)
    assert st.events() == [TcpClosed(ev.flow_id, "rejected")]
    seg = p.expect(st.poll(0.0), flags=RST | ACK, ack=5001)
    assert seg.seq == 0
    assert st.stats()["tcp_flows"] == 0 and st.stats()["tcp_pending"] == 0


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("reason", ["port", "host", "net", "admin"])
def test_reject_with_icmp_quotes_the_syn(version: int, reason: str) -> None:
    st = make_stack()
    p = peer(version)
    syn = p.syn()
    st.receive(syn, 0.0)
    (ev,) = st.events()
    st.tcp_reject(ev.flow_id, reason)  # type: ignore[arg-type]  # each reason by name
    (pkt,) = st.poll(0.0)
    ip = parse_ip(pkt)
    assert ip.protocol == (1 if version == 4 else 58)
    assert ip.dst == p.src and ip.src == p.dst
    msg = parse_icmp(pkt, ip.offset, ip.end)
    assert msg.type == (3 if version == 4 else 1)
    assert bytes(msg.body[: len(syn)]) == syn[: len(msg.body)]


def test_rst_from_app_withdraws_pending_request() -> None:
    st = make_stack()
    p = peer(iss=777)
    st.receive(p.syn(), 0.0)
    (ev,) = st.events()
    st.receive(p.segment(RST, seq=778), 0.1)
    assert st.events() == [TcpClosed(ev.flow_id, "reset")]
    st.poll(0.1)
    with pytest.raises(FlowStateError):
        st.tcp_accept(ev.flow_id)


def test_pending_timeout_closes_request() -> None:
    st = make_stack(pending_timeout=5.0)
    p = peer()
    st.receive(p.syn(), 0.0)
    (ev,) = st.events()
    assert st.poll_at() == pytest.approx(5.0)
    st.poll(5.0)
    assert st.events() == [TcpClosed(ev.flow_id, "timeout")]
    st.poll(5.0)
    assert st.stats()["tcp_pending"] == 0 and st.stats()["tcp_flows"] == 0


def test_pending_cap_drops_extra_syns_and_counts_them() -> None:
    st = make_stack(max_pending=3)
    for i in range(5):
        st.receive(peer(sport=41000 + i).syn(), 0.0)
    assert len(st.events()) == 3
    assert st.stats()["drops"]["tcp-pending-limit"] == 2  # type: ignore[index]
    assert st.poll(0.0) == []  # dropped, not refused: the app will retransmit


def test_pending_per_source_cap() -> None:
    st = make_stack(max_pending_per_source=2)
    for i in range(3):
        st.receive(peer(sport=42000 + i).syn(), 0.0)
    st.receive(peer(6, sport=42000).syn(), 0.0)
    assert len(st.events()) == 3
    assert st.stats()["drops"]["tcp-pending-per-source-limit"] == 1  # type: ignore[index]


def test_flow_cap_refuses_with_rst() -> None:
    st = make_stack(max_flows=2)
    for i in range(2):
        st.receive(peer(sport=43000 + i).syn(), 0.0)
    p = peer(sport=43999, iss=100)
    st.receive(p.syn(), 0.0)
    assert len(st.events()) == 2
    p.expect(st.poll(0.0), flags=RST | ACK, ack=101)


def test_segment_for_unknown_flow_draws_rst() -> None:
    st = make_stack()
    p = peer()
    # With ACK: <SEQ=SEG.ACK><CTL=RST>
    st.receive(p.segment(ACK, b"data", seq=1000, ack=5555), 0.0)
    seg = p.expect(st.poll(0.0), flags=RST, seq=5555)
    assert seg.ack == 0
    # Without ACK: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>
    st.receive(p.segment(FIN, b"ab", seq=2000), 0.0)
    p.expect(st.poll(0.0), flags=RST | ACK, seq=0, ack=2003)
    # An RST is never answered.
    st.receive(p.segment(RST, seq=1), 0.0)
    assert st.poll(0.0) == []
    assert st.stats()["drops"]["tcp-rst-unknown-flow"] == 1  # type: ignore[index]


def test_rsts_to_unknown_flows_are_rate_limited() -> None:
    st = make_stack()
    p = peer()
    for i in range(1000):
        st.receive(p.segment(ACK, seq=i, ack=i), 0.0)
    out = st.poll(0.0)
    assert 0 < len(out) <= 200
    assert st.stats()["drops"]["tcp-rst-rate-limited"] == 1000 - len(out)  # type: ignore[index]


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("127.0.0.1", "192.0.2.1"),
        ("0.0.0.0", "192.0.2.1"),
        ("224.0.0.1", "192.0.2.1"),
        ("10.0.0.1", "255.255.255.255"),
        ("10.0.0.1", "239.1.1.1"),
        ("10.0.0.1", "127.0.0.1"),
        ("::1", "2001:db8::1"),
        ("fd00::1", "ff02::1"),
        ("fd00::1", "fe80::1"),
        ("fd00::1", "::"),
    ],
)
def test_invalid_addresses_are_never_answered(src: str, dst: str) -> None:
    st = make_stack()
    st.receive(tcp_packet(src, dst, 1234, 80, flags=SYN), 0.0)
    st.receive(tcp_packet(src, dst, 1234, 80, flags=ACK, seq=1, ack=1), 0.0)
    assert st.events() == []
    assert st.poll(0.0) == []
    assert st.stats()["drops"]["tcp-bad-address"] == 2  # type: ignore[index]


def test_link_local_allowed_when_configured() -> None:
    st = make_stack(allow_link_local=True)
    st.receive(tcp_packet("fe80::2", "fe80::1", 1234, 80, flags=SYN), 0.0)
    assert isinstance(st.events()[0], TcpConnectRequest)


def test_bad_checksum_is_dropped_before_any_state() -> None:
    st = make_stack()
    pkt = bytearray(peer().syn())
    pkt[-1] ^= 0x01  # break the TCP checksum (last byte of the options)
    st.receive(bytes(pkt), 0.0)
    assert st.events() == []
    assert st.stats()["drops"]["tcp-checksum"] == 1  # type: ignore[index]
    # A link that verified checksums itself may say so.
    st.receive(bytes(pkt), 0.0, checksum_ok=True)
    assert len(st.events()) == 1


def test_abort_sends_rst_and_closes() -> None:
    st = make_stack()
    p = peer()
    fid = establish(st, p)
    st.abort(fid)
    assert st.events() == [TcpClosed(fid, "aborted")]
    p.expect(st.poll(0.1), flags=RST | ACK)
    assert fid not in st


def test_app_rst_closes_with_reset() -> None:
    st = make_stack()
    p = peer()
    fid = establish(st, p)
    st.receive(p.rst(), 0.1)
    assert st.events() == [TcpClosed(fid, "reset")]
    st.poll(0.1)
    assert st.stats()["tcp_flows"] == 0


def test_writable_event_after_short_send() -> None:
    st = make_stack(tcp=TcpConfig(send_buffer=4096))
    p = peer()
    fid = establish(st, p, mss=1000)
    assert st.send(fid, b"x" * 10_000) == 4096
    assert st.send_capacity(fid) == 0
    p.expect(st.poll(0.01), count=None)
    st.receive(p.ack(), 0.02)
    assert TcpWritable(fid) in st.events()
    assert st.send_capacity(fid) > 0


def test_api_misuse_raises_flow_state_error() -> None:
    st = make_stack()
    with pytest.raises(FlowStateError):
        st.tcp_accept(99)
    with pytest.raises(FlowStateError):
        st.recv(99)
    p = peer()
    fid = establish(st, p)
    with pytest.raises(FlowStateError):
        st.tcp_accept(fid)
    with pytest.raises(FlowStateError):
        st.tcp_reject(fid)
    st.shutdown(fid)
    with pytest.raises(FlowStateError):
        st.send(fid, b"late")
    with pytest.raises(ValueError, match="reason"):
        st.tcp_reject(fid, "bogus")  # type: ignore[arg-type]  # refused on purpose


def test_isn_is_keyed_by_secret_and_tuple() -> None:
    def isn(secret: bytes, sport: int) -> int:
        from tun2proxy.stack import NetStack, StackConfig

        st = NetStack(StackConfig(isn_secret=secret))
        p = peer(sport=sport)
        st.receive(p.syn(), 10.0)
        (ev,) = st.events()
        st.tcp_accept(ev.flow_id)
        _s, _d, seg = parse_tcp_packet(st.poll(10.0)[0])
        return seg.seq

    a = isn(b"secret-one-16byt", 5000)
    assert a == isn(b"secret-one-16byt", 5000)  # deterministic: same inputs, same ISN
    assert a != isn(b"secret-two-16byt", 5000)
    assert a != isn(b"secret-one-16byt", 5001)


def test_secret_is_required() -> None:
    from tun2proxy.errors import ConfigError
    from tun2proxy.stack import NetStack, StackConfig

    with pytest.raises(ConfigError, match="isn_secret"):
        NetStack(StackConfig())


def test_fragments_and_unknown_protocols_are_counted() -> None:
    from tun2proxy.wire import Ipv4Header

    st = make_stack()
    frag = Ipv4Header(
        src=bytes([10, 0, 0, 1]), dst=bytes([10, 0, 0, 2]), protocol=6, total_length=28, flags=1
    ).to_bytes() + bytes(8)
    gre = Ipv4Header(
        src=bytes([10, 0, 0, 1]), dst=bytes([10, 0, 0, 2]), protocol=47, total_length=24
    ).to_bytes() + bytes(4)
    st.receive_many([frag, gre, b"\x00" * 10], 0.0)
    drops = st.stats()["drops"]
    assert drops == {"ip-fragment": 1, "ip-protocol-unsupported": 1, "ip-truncated": 1}


def test_poll_at_tracks_the_earliest_timer_and_is_none_when_idle() -> None:
    st = make_stack(tcp=TcpConfig(idle_timeout=100.0))
    assert st.poll_at() is None
    p = peer()
    fid = establish(st, p)
    # Timers may wake the host early (lazy deletion), never late: after at most one
    # spurious wake-up the next deadline is the idle timeout.
    due = st.poll_at()
    assert due is not None and due <= 100.0
    assert st.poll(due) == []
    assert st.poll_at() == pytest.approx(100.0)
    st.send(fid, b"abc")
    assert st.poll_at() == due  # output is waiting: due now (the last time seen)
    p.expect(st.poll(due), payload=b"abc")
    rto = st.poll_at()
    assert rto is not None and due + 0.2 <= rto <= due + 1.0  # the retransmission timer
    st.receive(p.ack(), due + 0.001)
    st.poll(due + 0.001)
    assert st.poll_at() is not None
    # Idle flows cost nothing per poll: no output, nothing due before the idle timeout.
    assert st.poll(50.0) == []
    st.poll(99.0)
    assert st.events() == []  # idle counts from the last activity (t ~ 1.0), not from 0
    out = st.poll(101.5)
    assert st.events() == [TcpClosed(fid, "idle")]
    p.expect(out, flags=RST | ACK)


def test_stats_snapshot_has_counters_and_tables() -> None:
    st = make_stack()
    p = peer()
    establish(st, p)
    s = st.stats()
    for key in (
        "packets_in", "packets_out", "bytes_in", "tcp_flows", "tcp_pending", "tcp_states",
        "tcp_buffered_bytes", "udp_sessions", "drops", "tcp_syn_received", "tcp_accepted",
    ):
        assert key in s
    assert s["tcp_states"] == {"ESTABLISHED": 1}
    assert s["tcp_syn_received"] == 1 and s["tcp_accepted"] == 1
