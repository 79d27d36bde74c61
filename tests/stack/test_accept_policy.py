"""Immediate accept, SYN-flood handling, the half-open cap, peek, and ICMP error limits."""

from __future__ import annotations

from tun2proxy.stack import TcpClosed, TcpConnectRequest, TcpPeerClosed, TcpReadable
from tun2proxy.testing import tcp_packet, udp_packet
from tun2proxy.wire import ACK, PSH, RST, SYN, parse_ip

from .helpers import make_stack, peer


def test_immediate_policy_completes_the_handshake_before_the_request() -> None:
    st = make_stack(accept_policy="immediate")
    p = peer()
    st.receive(p.syn(mss=1460), 0.0)
    assert st.events() == []  # nothing for the host yet
    p.expect(st.poll(0.0), flags=SYN | ACK)
    st.receive(p.data(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n", flags=ACK | PSH), 0.1)
    evs = st.events()
    assert isinstance(evs[0], TcpConnectRequest) and evs[0].established
    fid = evs[0].flow_id
    assert evs[1:] == [TcpReadable(fid)]
    assert st.peek(fid, 16) == b"GET / HTTP/1.1\r\n"  # the host can look before it dials
    assert st.readable(fid) > 16  # ...without consuming anything
    st.tcp_accept(fid)
    assert st.recv(fid).startswith(b"GET /")


def test_immediate_policy_reject_resets_the_open_connection() -> None:
    st = make_stack(accept_policy="immediate")
    p = peer()
    st.receive(p.syn(), 0.0)
    p.expect(st.poll(0.0), flags=SYN | ACK)
    st.receive(p.ack(), 0.1)
    (ev,) = st.events()
    st.tcp_reject(ev.flow_id, "host")
    assert st.events() == [TcpClosed(ev.flow_id, "rejected")]
    p.expect(st.poll(0.1), flags=RST | ACK)


def test_handshakes_that_never_complete_cost_no_event_and_stay_bounded() -> None:
    st = make_stack(accept_policy="immediate", max_half_open=100)
    synacks = 0
    for i in range(1000):  # spoofed SYNs: nobody will ever ACK our SYN-ACKs
        st.receive(tcp_packet(f"10.1.{i // 250}.{i % 250 + 1}", "192.0.2.1", 1000 + i, 443,
                              flags=SYN, seq=i), 0.0)
        synacks += len(st.poll(0.0))
    assert st.events() == []
    assert synacks == 1000  # SYN-ACKs, but no upstream work and no events
    s = st.stats()
    assert s["tcp_half_open"] == 100
    assert s["drops"]["tcp-half-open-evicted"] == 900  # type: ignore[index]
    assert s["tcp_flows"] == 100
    # A real client in the middle of it completes its handshake normally.
    p = peer(sport=55555)
    st.receive(p.syn(), 1.0)
    p.expect(st.poll(1.0), flags=SYN | ACK)
    st.receive(p.ack(), 1.0)
    (ev,) = st.events()
    assert isinstance(ev, TcpConnectRequest) and ev.established
    # The half-open ones give up after their SYN-ACK retries, silently.
    for t in range(2, 130):
        st.poll(float(t))
    assert not [e for e in st.events() if isinstance(e, TcpClosed) and e.flow_id != ev.flow_id]
    assert st.stats()["tcp_half_open"] == 0


def test_syn_flood_switches_to_validate_first_and_back() -> None:
    st = make_stack(syn_flood_threshold=10, max_pending=256)
    for i in range(10):
        st.receive(peer(sport=41000 + i).syn(), 0.0)
    assert len(st.events()) == 10  # decide-at-SYN: ten requests, ten dials
    assert not st.stats()["syn_flood_mode"]
    st.receive(peer(sport=42000).syn(), 0.0)
    assert st.events() == []  # the eleventh must complete its handshake first
    s = st.stats()
    assert s["syn_flood_mode"] and s["syn_flood_episodes"] == 1
    # The host works through its backlog; below half the threshold, decide-at-SYN returns.
    pending = [st.flows()[i][0] for i in range(10)]
    for fid in pending[:6]:
        st.tcp_reject(fid)
    st.events()
    st.receive(peer(sport=43000).syn(), 1.0)
    (ev,) = st.events()
    assert isinstance(ev, TcpConnectRequest) and not ev.established


def test_peer_fin_before_the_host_accepts_is_kept() -> None:
    st = make_stack(accept_policy="immediate")
    p = peer()
    st.receive(p.syn(), 0.0)
    p.expect(st.poll(0.0), flags=SYN | ACK)
    st.receive(p.data(b"bye", flags=ACK | 0x01), 0.1)  # data + FIN on the third segment
    evs = st.events()
    fid = evs[0].flow_id
    assert evs[1:] == [TcpReadable(fid), TcpPeerClosed(fid)]
    assert st.connection(fid).peer_fin


def test_icmp_errors_are_rate_limited() -> None:
    st = make_stack(icmp_error_rate=5)
    for port in range(6000, 6020):
        st.receive(udp_packet("10.0.0.1", "192.0.2.1", port, 9, b"x"), 0.0)
    fids = [e.flow_id for e in st.events()]
    for fid in fids:
        st.udp_reject(fid)
    icmps = [p for p in st.poll(0.0) if parse_ip(p).protocol == 1]
    assert len(icmps) == 5
    assert st.stats()["drops"]["icmp-error-rate-limited"] == 15  # type: ignore[index]


def test_peek_asks_for_the_next_readable_event() -> None:
    st = make_stack(accept_policy="immediate")
    p = peer()
    st.receive(p.syn(mss=1460), 0.0)
    p.expect(st.poll(0.0), flags=SYN | ACK)
    st.receive(p.data(b"\x16\x03\x01", flags=ACK | PSH), 0.1)  # a ClientHello, cut short
    evs = st.events()
    fid = evs[0].flow_id
    assert evs[1:] == [TcpReadable(fid)]
    st.receive(p.data(b"more", flags=ACK | PSH), 0.2)
    assert st.events() == []  # edge-triggered: nobody looked yet
    assert st.peek(fid, 64) == b"\x16\x03\x01more"
    st.receive(p.data(b"rest", flags=ACK | PSH), 0.3)
    assert st.events() == [TcpReadable(fid)]  # peek re-armed the notification
    assert st.peek(fid, 64) == b"\x16\x03\x01morerest"
