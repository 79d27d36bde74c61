"""SYN admission under pressure (issue 15, items 3 and 4): handshakes that hold an upstream
connection are counted and expire early in flood mode, handshake-first answers no more SYNs
than the host can queue (globally and per destination), pending requests can be handed back
to the stack, and unanswered handshakes yield their flow slots."""

from __future__ import annotations

from tun2proxy.stack import NetStack, TcpClosed, TcpConnectRequest
from tun2proxy.testing import tcp_packet
from tun2proxy.wire import ACK, RST, SYN, parse_ip, parse_tcp

from .helpers import make_stack, peer


def _spoofed(st: NetStack, n: int, now: float, dst: str = "192.0.2.10", base: int = 0) -> None:
    for i in range(base, base + n):
        st.receive(tcp_packet(f"100.64.{i // 250}.{i % 250 + 1}", dst, 1000 + i, 80,
                              flags=SYN, seq=i * 7919), now)


def _flags(out: list[bytearray]) -> list[int]:
    res = []
    for pkt in out:
        ip = parse_ip(pkt)
        res.append(parse_tcp(pkt, ip.offset, ip.end).flags)
    return res


def _accept_all(st: NetStack) -> list[int]:
    fids = []
    for ev in st.events():
        assert isinstance(ev, TcpConnectRequest) and not ev.established
        st.tcp_accept(ev.flow_id)
        fids.append(ev.flow_id)
    return fids


def test_handshakes_held_with_an_upstream_connection_switch_the_flood_mode_on() -> None:
    # A fast upstream: every request is dialled and accepted at once, so nothing stays
    # pending; the SYN-ACKs to spoofed sources are never answered.
    st = make_stack(syn_flood_threshold=10)
    for i in range(10):
        _spoofed(st, 1, 0.0, base=i)
        assert len(_accept_all(st)) == 1
        st.poll(0.0)
    s = st.stats()
    assert s["tcp_pending"] == 0 and s["tcp_handshakes_held"] == 10
    _spoofed(st, 1, 0.1, base=10)
    assert st.events() == []  # the eleventh must complete its handshake before any dial
    assert st.syn_flood_mode and st.stats()["syn_flood_episodes"] == 1
    assert _flags(st.poll(0.1)) == [SYN | ACK]  # answered by the stack itself


def test_held_handshakes_expire_early_under_pressure_and_silently() -> None:
    st = make_stack(syn_flood_threshold=10, half_open_timeout=3.0)
    p = peer(sport=50000)  # a real client accepted just before the flood: it answers
    st.receive(p.syn(), 0.0)
    (real,) = _accept_all(st)
    p.expect(st.poll(0.0), flags=SYN | ACK)
    st.receive(p.ack(), 0.0)
    for i in range(10):
        _spoofed(st, 1, 0.0, base=i)
        _accept_all(st)
    _spoofed(st, 5, 0.5, base=10)  # flood mode: handshake first
    st.poll(0.5)
    st.events()
    assert st.stats()["tcp_states"]["SYN-RECEIVED"] == 15  # type: ignore[index]
    out = st.poll(2.9)
    assert RST not in _flags(out) and st.events() == []  # not yet
    out = st.poll(3.0)
    evs = st.events()
    # The ten the host accepted end with TcpClosed (so their upstream connections close);
    # the five it never heard of end with nothing; no packet goes to any spoofed source.
    assert all(isinstance(e, TcpClosed) for e in evs)
    assert len(evs) == 10 and {e.reason for e in evs} == {"timeout"}  # type: ignore[union-attr]
    assert real not in {e.flow_id for e in evs}
    st.poll(3.5)
    assert not [f for f in _flags(out) + _flags(st.poll(3.6)) if f & RST]
    s = st.stats()
    assert s["tcp_states"] == {"ESTABLISHED": 1}
    drops = s["drops"]
    assert drops["tcp-handshake-expired"] == 10  # type: ignore[index]
    assert drops["tcp-half-open-expired"] == 5  # type: ignore[index]


def test_without_pressure_held_handshakes_get_every_syn_ack_retransmission() -> None:
    st = make_stack(syn_flood_threshold=100, half_open_timeout=3.0)
    for i in range(10):
        _spoofed(st, 1, 0.0, base=i)
        _accept_all(st)
    st.poll(0.0)
    st.poll(5.0)
    assert st.events() == [] and st.stats()["tcp_handshakes_held"] == 10


def test_held_handshakes_count_against_max_pending() -> None:
    st = make_stack(max_pending=5, syn_flood_threshold=100)
    _spoofed(st, 5, 0.0)
    _accept_all(st)
    _spoofed(st, 1, 0.0, base=5)
    assert st.events() == []
    assert st.stats()["drops"]["tcp-pending-limit"] == 1  # type: ignore[index]


def test_flood_mode_ends_when_nothing_has_gone_unanswered_for_a_while() -> None:
    st = make_stack(syn_flood_threshold=10, half_open_timeout=3.0)
    for i in range(10):
        _spoofed(st, 1, 0.0, base=i)
        _accept_all(st)
    _spoofed(st, 20, 0.0, base=10)
    assert st.syn_flood_mode
    st.poll(3.0)  # every unanswered handshake expires now
    st.events()
    st.receive(peer(sport=50001).syn(), 4.0)
    assert st.events() == []  # still in flood mode: handshakes went unanswered at 3.0
    st.receive(peer(sport=50002).syn(), 6.0)
    (ev,) = st.events()
    assert isinstance(ev, TcpConnectRequest) and not ev.established  # decide at the SYN
    assert not st.syn_flood_mode


def test_handshake_first_answers_no_more_syns_than_the_host_can_queue() -> None:
    st = make_stack(accept_policy="immediate", max_queued=3)
    peers = [peer(sport=51000 + i) for i in range(4)]
    for p in peers[:3]:
        st.receive(p.syn(), 0.0)
        p.expect(st.poll(0.0), flags=SYN | ACK)
        st.receive(p.ack(), 0.0)
    queued = st.events()
    assert len(queued) == 3 and st.stats()["tcp_queued"] == 3
    st.receive(peers[3].syn(), 0.0)
    peers[3].expect_none(st.poll(0.0))  # no handshake it cannot be served: the app retries
    assert st.stats()["drops"]["tcp-queue-limit"] == 1  # type: ignore[index]
    st.tcp_accept(queued[0].flow_id)
    st.receive(peers[3].syn(), 1.0)  # the app's retransmission
    peers[3].expect(st.poll(1.0), flags=SYN | ACK)


def test_one_destination_cannot_take_the_whole_queue() -> None:
    st = make_stack(accept_policy="immediate", max_queued_per_destination=2)
    for i in range(3):
        p = peer(sport=52000 + i)
        st.receive(p.syn(), 0.0)
        out = st.poll(0.0)
        if i < 2:
            p.expect(out, flags=SYN | ACK)
            st.receive(p.ack(), 0.0)
        else:
            p.expect_none(out)
    assert st.stats()["drops"]["tcp-queue-per-destination-limit"] == 1  # type: ignore[index]
    other = peer(sport=52100, dport=443)
    other.dst = bytes((192, 0, 2, 99))  # another destination still gets in
    st.receive(other.syn(), 0.0)
    other.expect(st.poll(0.0), flags=SYN | ACK)


def test_a_pending_request_handed_back_completes_its_handshake_first() -> None:
    st = make_stack()
    p = peer()
    st.receive(p.syn(), 0.0)
    (ev,) = st.events()
    assert isinstance(ev, TcpConnectRequest) and not ev.established
    st.tcp_handshake_first(ev.flow_id)
    p.expect(st.poll(0.0), flags=SYN | ACK)
    assert st.events() == [] and st.stats()["tcp_pending"] == 0
    st.receive(p.ack(), 0.1)
    (again,) = st.events()
    assert isinstance(again, TcpConnectRequest) and again.established
    assert again.flow_id == ev.flow_id
    st.tcp_accept(again.flow_id)
    assert st.stats()["tcp_states"] == {"ESTABLISHED": 1}


def test_a_handed_back_request_nobody_answers_costs_no_event() -> None:
    st = make_stack(syn_flood_threshold=4, half_open_timeout=3.0)
    _spoofed(st, 5, 0.0)  # four requests; the fifth finds the flood mode on
    fids = [e.flow_id for e in st.events()]
    assert len(fids) == 4 and st.syn_flood_mode
    for fid in fids:
        st.tcp_handshake_first(fid)
    assert st.syn_flood_mode  # handed-back requests are load until they complete
    st.poll(0.0)
    st.poll(3.0)
    assert st.events() == [] and st.stats()["tcp_flows"] == 0


def test_a_retransmitted_syn_of_a_queued_request_is_a_duplicate() -> None:
    st = make_stack()
    p = peer()
    st.receive(p.syn(), 0.0)
    assert len(st.events()) == 1
    for t in (1.0, 3.0, 7.0):  # the app's SYN retransmissions while the host waits
        st.receive(p.syn(), t)
        assert st.events() == [] and st.poll(t) == []
    assert st.stats()["tcp_syn_received"] == 1 and st.stats()["tcp_pending"] == 1


def test_unanswered_handshakes_yield_their_flow_slots_to_new_syns() -> None:
    st = make_stack(accept_policy="immediate", max_flows=5)
    _spoofed(st, 5, 0.0)
    st.poll(0.0)
    p = peer(sport=53000)
    st.receive(p.syn(), 0.1)
    p.expect(st.poll(0.1), flags=SYN | ACK)  # not an RST: the oldest half-open made room
    st.receive(p.ack(), 0.1)
    (ev,) = st.events()
    assert isinstance(ev, TcpConnectRequest) and ev.established
    assert st.stats()["drops"]["tcp-half-open-evicted"] == 1  # type: ignore[index]
