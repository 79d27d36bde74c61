"""NetStack UDP sessions: endpoint-independent mapping, replies, expiry, caps, rejection."""

from __future__ import annotations

import pytest

from tun2proxy.errors import FlowStateError
from tun2proxy.stack import UdpDatagram, UdpSessionClosed
from tun2proxy.testing import udp_packet
from tun2proxy.wire import parse_icmp, parse_ip, parse_udp, verify
from tun2proxy.wire.checksum import pseudo_header_sum

from .helpers import make_stack

APP = {4: "10.0.0.1", 6: "fd00::1"}
SRV = {
    4: ("192.0.2.1", "192.0.2.2", "198.51.100.7"),
    6: ("2001:db8::1", "2001:db8::2", "2001:db8::3"),
}


def _parse_reply(pkt: bytes | bytearray) -> tuple[bytes, bytes, int, int, bytes]:
    ip = parse_ip(pkt)
    assert ip.protocol == 17
    u = parse_udp(pkt, ip.offset, ip.end)
    pseudo = pseudo_header_sum(ip.src, ip.dst, 17, u.length)
    assert verify(memoryview(pkt)[ip.offset : ip.end], pseudo)
    return ip.src, ip.dst, u.src_port, u.dst_port, bytes(u.payload)


@pytest.mark.parametrize("version", [4, 6])
def test_one_session_per_app_endpoint_for_every_destination(version: int) -> None:
    st = make_stack()
    for i, dst in enumerate(SRV[version]):
        st.receive(udp_packet(APP[version], dst, 5000, 3478, bytes([i]) * 10), float(i))
    evs = st.events()
    assert [type(e) for e in evs] == [UdpDatagram] * 3
    assert len({e.flow_id for e in evs}) == 1  # endpoint-independent mapping
    assert [e.dst for e in evs] == [(d, 3478) for d in SRV[version]]  # type: ignore[union-attr]
    assert all(e.src == (APP[version], 5000) for e in evs)  # type: ignore[union-attr]
    assert evs[1].payload == b"\x01" * 10  # type: ignore[union-attr]
    # A different source port is another session.
    st.receive(udp_packet(APP[version], SRV[version][0], 5001, 53, b"q"), 3.0)
    (ev,) = st.events()
    assert ev.flow_id != evs[0].flow_id
    assert st.stats()["udp_sessions"] == 2


@pytest.mark.parametrize("version", [4, 6])
def test_replies_come_from_the_given_endpoint(version: int) -> None:
    st = make_stack()
    st.receive(udp_packet(APP[version], SRV[version][0], 5000, 9999, b"ping"), 0.0)
    (ev,) = st.events()
    for dst in SRV[version]:
        assert st.udp_send(ev.flow_id, b"pong-" + dst.encode(), (dst, 9999))
    out = st.poll(0.0)
    assert len(out) == 3
    for pkt, dst in zip(out, SRV[version], strict=True):
        s, _d, sp, dp, payload = _parse_reply(pkt)
        assert s == parse_ip(udp_packet(dst, APP[version], 1, 1)).src
        assert (sp, dp) == (9999, 5000)
        assert payload == b"pong-" + dst.encode()


@pytest.mark.parametrize("version", [4, 6])
def test_largest_datagram_the_mtu_allows(version: int) -> None:
    st = make_stack(mtu=1500)
    limit = 1500 - (28 if version == 4 else 48)
    st.receive(udp_packet(APP[version], SRV[version][0], 5000, 7, b"x" * limit), 0.0)
    (ev,) = st.events()
    assert len(ev.payload) == limit  # type: ignore[union-attr]
    assert st.udp_send(ev.flow_id, b"y" * limit, (SRV[version][0], 7))
    assert len(st.poll(0.0)[0]) == 1500
    assert not st.udp_send(ev.flow_id, b"y" * (limit + 1), (SRV[version][0], 7))
    assert st.stats()["drops"]["udp-too-big"] == 1  # type: ignore[index]
    with pytest.raises(ValueError, match="IP version"):
        st.udp_send(ev.flow_id, b"z", (SRV[10 - version][0], 7))


def test_idle_expiry_and_refresh() -> None:
    st = make_stack(udp_timeout=30.0)
    st.receive(udp_packet("10.0.0.1", "192.0.2.1", 5000, 9, b"a"), 0.0)
    (ev,) = st.events()
    st.receive(udp_packet("10.0.0.1", "192.0.2.1", 5000, 9, b"b"), 20.0)  # refresh
    st.events()
    st.poll(30.0)
    assert st.events() == []
    st.udp_send(ev.flow_id, b"r", ("192.0.2.1", 9))  # a reply refreshes too
    st.poll(45.0)
    assert st.events() == []
    st.poll(75.1)
    assert st.events() == [UdpSessionClosed(ev.flow_id, "idle")]
    assert st.stats()["udp_sessions"] == 0
    with pytest.raises(FlowStateError):
        st.udp_send(ev.flow_id, b"late", ("192.0.2.1", 9))


def test_dns_sessions_expire_sooner() -> None:
    st = make_stack(udp_timeout=30.0, dns_timeout=5.0)
    st.receive(udp_packet("10.0.0.1", "192.0.2.1", 5000, 53, b"q"), 0.0)
    (ev,) = st.events()
    st.poll(5.1)
    assert st.events() == [UdpSessionClosed(ev.flow_id, "idle")]


def test_session_cap_evicts_least_recently_used() -> None:
    st = make_stack(max_udp_sessions=1000)
    for port in range(10000, 15000):  # 5,000 distinct source ports
        st.receive(udp_packet("10.0.0.1", "192.0.2.1", port, 9, b"x"), port / 1000.0)
    evs = st.events()
    opened = [e for e in evs if isinstance(e, UdpDatagram)]
    evicted = [e for e in evs if isinstance(e, UdpSessionClosed)]
    assert len(opened) == 5000 and len(evicted) == 4000
    assert all(e.reason == "evicted" for e in evicted)
    assert st.stats()["udp_sessions"] == 1000
    # The survivors are the most recent 1,000 ports.
    assert {e.flow_id for e in opened[-1000:]}.isdisjoint({e.flow_id for e in evicted})
    # Everything expires on time: idle timeout after the last datagram (t = 14.999).
    st.poll(14.999 + 30.0 + 0.01)
    assert len(st.events()) == 1000
    assert st.stats()["udp_sessions"] == 0
    assert st.poll_at() is None


@pytest.mark.parametrize("version", [4, 6])
def test_reject_sends_port_unreachable_quoting_the_datagram(version: int) -> None:
    st = make_stack()
    pkt = udp_packet(APP[version], SRV[version][0], 5000, 443, b"quic-initial")
    st.receive(pkt, 0.0)
    (ev,) = st.events()
    st.udp_reject(ev.flow_id)
    assert st.events() == [UdpSessionClosed(ev.flow_id, "rejected")]
    (icmp,) = st.poll(0.0)
    ip = parse_ip(icmp)
    msg = parse_icmp(icmp, ip.offset, ip.end)
    if version == 4:
        assert (msg.type, msg.code) == (3, 3)
    else:
        assert (msg.type, msg.code) == (1, 4)
    assert bytes(msg.body) == pkt[: len(msg.body)]
    assert len(msg.body) >= (28 if version == 4 else 48)


def test_checksums() -> None:
    st = make_stack()
    good = bytearray(udp_packet("10.0.0.1", "192.0.2.1", 5000, 9, b"data"))
    bad = bytearray(good)
    bad[-1] ^= 0xFF
    st.receive(bytes(bad), 0.0)
    assert st.events() == []
    assert st.stats()["drops"]["udp-checksum"] == 1  # type: ignore[index]
    nocsum = bytearray(good)
    nocsum[26:28] = b"\x00\x00"  # IPv4 allows "no checksum"
    st.receive(bytes(nocsum), 0.0)
    assert len(st.events()) == 1
    v6 = bytearray(udp_packet("fd00::1", "2001:db8::1", 5000, 9, b"data"))
    v6[46:48] = b"\x00\x00"  # IPv6 forbids it (RFC 8200 §8.1)
    st.receive(bytes(v6), 0.0)
    assert st.events() == []
    assert st.stats()["drops"]["udp-zero-checksum-v6"] == 1  # type: ignore[index]


@pytest.mark.parametrize(
    "dst", ["224.0.0.251", "239.255.255.250", "255.255.255.255", "ff02::fb", "ff02::c", "fe80::1"]
)
def test_multicast_and_link_local_are_never_proxied(dst: str) -> None:
    st = make_stack()
    src = "fd00::1" if ":" in dst else "10.0.0.1"
    st.receive(udp_packet(src, dst, 5353, 5353, b"mdns"), 0.0)
    assert st.events() == []
    assert st.stats()["drops"]["udp-multicast-or-local"] == 1  # type: ignore[index]
    assert st.stats()["udp_sessions"] == 0


def test_icmp_port_unreachable_from_app_ends_the_session() -> None:
    from tun2proxy.wire import unreachable

    st = make_stack()
    st.receive(udp_packet("10.0.0.1", "192.0.2.1", 5000, 9, b"a"), 0.0)
    (ev,) = st.events()
    st.udp_send(ev.flow_id, b"reply", ("192.0.2.1", 9))
    (reply,) = st.poll(0.0)
    # The app's socket is gone: its kernel answers our reply with port unreachable.
    st.receive(bytes(unreachable(reply, "port")), 0.1)
    assert st.events() == [UdpSessionClosed(ev.flow_id, "unreachable")]


def test_close_and_unknown_ids() -> None:
    st = make_stack()
    st.receive(udp_packet("10.0.0.1", "192.0.2.1", 5000, 9, b"a"), 0.0)
    (ev,) = st.events()
    st.udp_close(ev.flow_id)
    assert st.events() == [UdpSessionClosed(ev.flow_id, "closed")]
    for call in (st.udp_close, st.udp_reject):
        with pytest.raises(FlowStateError):
            call(ev.flow_id)
