"""NetStack.receive never raises on packet content: random bytes and mutated valid packets."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tun2proxy.stack import NetStack, StackConfig
from tun2proxy.testing import icmp_echo_request, tcp_packet, udp_packet
from tun2proxy.wire import ACK, FIN, PSH, SYN

CFG = StackConfig(isn_secret=b"never-raises-key", icmp_echo="reply")

SEEDS = [
    tcp_packet("10.0.0.1", "192.0.2.1", 40000, 80, flags=SYN, seq=1, mss=1460, wscale=7,
               sack_permitted=True, ts=(1, 0)),
    tcp_packet("10.0.0.1", "192.0.2.1", 40000, 80, flags=ACK | PSH, seq=2, ack=99,
               payload=b"hello world", ts=(2, 5), sack=((10, 20), (30, 40))),
    tcp_packet("fd00::1", "2001:db8::1", 40000, 443, flags=FIN | ACK, seq=2, ack=9),
    udp_packet("10.0.0.1", "192.0.2.1", 5000, 53, b"\x12\x34" + bytes(30)),
    udp_packet("fd00::1", "2001:db8::1", 5000, 443, bytes(1200)),
    icmp_echo_request("10.0.0.1", "192.0.2.1"),
    icmp_echo_request("fd00::1", "2001:db8::1"),
]


def _drive(packets: list[bytes], checksum_ok: bool) -> NetStack:
    stack = NetStack(CFG)
    now = 0.0
    for p in packets:
        stack.receive(p, now, checksum_ok=checksum_ok)
        for ev in stack.events():
            fid = getattr(ev, "flow_id", None)
            if type(ev).__name__ == "TcpConnectRequest" and fid is not None:
                stack.tcp_accept(fid)
        stack.poll(now)
        now += 0.5
    stack.poll(now + 1000)
    return stack


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=200), max_size=20), st.booleans())
def test_arbitrary_bytes(packets: list[bytes], checksum_ok: bool) -> None:
    stack = _drive(packets, checksum_ok)
    s = stack.stats()
    assert s["packets_in"] == len(packets)


@settings(max_examples=400)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(range(len(SEEDS))),
            st.lists(st.tuples(st.integers(0, 1500), st.integers(0, 255)), max_size=6),
            st.integers(0, 1600),
        ),
        min_size=1,
        max_size=12,
    ),
    st.booleans(),
)
def test_mutated_valid_packets(
    plan: list[tuple[int, list[tuple[int, int]], int]], checksum_ok: bool
) -> None:
    packets = []
    for idx, flips, cut in plan:
        b = bytearray(SEEDS[idx])
        for pos, val in flips:
            if b:
                b[pos % len(b)] = val
        packets.append(bytes(b[:cut]) if cut < len(b) else bytes(b))
    stack = _drive(packets, checksum_ok)
    s = stack.stats()
    drops = s["drops"]
    assert isinstance(drops, dict)
    assert s["packets_in"] == len(packets)
