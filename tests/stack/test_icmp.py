"""NetStack ICMP: local echo replies (opt-in), quiet ND/MLD, counted errors."""

from __future__ import annotations

import socket

import pytest

from tun2proxy.testing import icmp_echo_request
from tun2proxy.wire import build_icmp_packet, parse_icmp, parse_ip, verify
from tun2proxy.wire.checksum import pseudo_header_sum

from .helpers import make_stack

PAIRS = {4: ("10.0.0.1", "192.0.2.1"), 6: ("fd00::1", "2001:db8::1")}


@pytest.mark.parametrize("version", [4, 6])
def test_echo_off_by_default(version: int) -> None:
    st = make_stack()
    st.receive(icmp_echo_request(*PAIRS[version]), 0.0)
    assert st.poll(0.0) == []
    assert st.stats()["drops"]["icmp-echo-ignored"] == 1  # type: ignore[index]


@pytest.mark.parametrize("version", [4, 6])
def test_echo_reply_mode_answers_locally(version: int) -> None:
    st = make_stack(icmp_echo="reply")
    req = icmp_echo_request(*PAIRS[version], ident=0x1234, sequence=7, data=b"abcdefgh" * 7)
    st.receive(req, 0.0)
    (rep,) = st.poll(0.0)
    ip = parse_ip(rep)
    rq = parse_ip(req)
    assert (ip.src, ip.dst) == (rq.dst, rq.src)
    msg = parse_icmp(rep, ip.offset, ip.end)
    assert msg.type == (0 if version == 4 else 129)
    assert (msg.ident, msg.sequence) == (0x1234, 7)
    assert bytes(msg.body) == b"abcdefgh" * 7
    initial = 0 if version == 4 else pseudo_header_sum(ip.src, ip.dst, 58, ip.end - ip.offset)
    assert verify(memoryview(rep)[ip.offset : ip.end], initial)
    assert st.stats()["icmp_echo_replies"] == 1


def test_echo_to_multicast_or_from_loopback_is_not_answered() -> None:
    st = make_stack(icmp_echo="reply")
    st.receive(icmp_echo_request("10.0.0.1", "224.0.0.1"), 0.0)
    st.receive(icmp_echo_request("127.0.0.1", "192.0.2.1"), 0.0)
    assert st.poll(0.0) == []


@pytest.mark.parametrize("icmp_type", [130, 131, 133, 134, 135, 136, 143])
def test_ipv6_neighbour_discovery_and_mld_are_ignored_quietly(icmp_type: int) -> None:
    st = make_stack(icmp_echo="reply")
    src = bytes.fromhex("fe800000000000000000000000000001")
    dst = bytes.fromhex("ff020000000000000000000000000001")
    st.receive(bytes(build_icmp_packet(src, dst, icmp_type, 0, 0, b"\x00" * 16)), 0.0)
    assert st.poll(0.0) == []
    assert st.events() == []
    assert st.stats()["drops"]["icmp6-nd-mld"] == 1  # type: ignore[index]


def test_bad_icmp_checksum_dropped() -> None:
    st = make_stack(icmp_echo="reply")
    req = bytearray(icmp_echo_request("10.0.0.1", "192.0.2.1"))
    req[-1] ^= 1
    st.receive(bytes(req), 0.0)
    assert st.poll(0.0) == []
    assert st.stats()["drops"]["icmp-checksum"] == 1  # type: ignore[index]


# ---------------------------------------------------------------- I1: ICMP errors about TCP


def _ptb(version: int, offending: bytes, mtu: int, code_or_type: str = "ptb") -> bytes:
    """An ICMP error from the app's host quoting ``offending`` (one of our packets), by scapy."""
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6PacketTooBig, IPv6

    ip = parse_ip(offending)
    fam = socket.AF_INET if version == 4 else socket.AF_INET6
    # From the app's side back to the address we spoke from.
    src, dst = socket.inet_ntop(fam, ip.dst), socket.inet_ntop(fam, ip.src)
    if version == 4:
        outer = IP(src=src, dst=dst)
        if code_or_type == "ptb":
            icmp = ICMP(type=3, code=4, nexthopmtu=mtu)
        else:
            icmp = ICMP(type=3, code=1)  # host unreachable: soft
        return bytes(outer / icmp / bytes(offending[:28]))
    outer6 = IPv6(src=src, dst=dst)
    icmp6 = ICMPv6PacketTooBig(mtu=mtu) if code_or_type == "ptb" else ICMPv6DestUnreach(code=3)
    return bytes(outer6 / icmp6 / bytes(offending[: 1280 - 48]))


def _flow_with_data_in_flight(version: int, size: int = 20_000):  # type: ignore[no-untyped-def]
    from tun2proxy.testing import parse_tcp_packet

    from .helpers import establish, peer

    st = make_stack(mtu=65535)
    p = peer(version)
    fid = establish(st, p, mss=60_000)
    st.send(fid, bytes(range(256)) * (size // 256))
    out = st.poll(0.01)
    data = [pkt for pkt in out if len(parse_tcp_packet(pkt)[2].payload)]
    assert data
    return st, p, fid, data


@pytest.mark.parametrize("version", [4, 6])
def test_packet_too_big_lowers_mss_and_resends_smaller(version: int) -> None:
    from tun2proxy.testing import parse_tcp_packet

    st, _p, _fid, data = _flow_with_data_in_flight(version)
    big = max(len(pkt) for pkt in data)
    assert big > 1500
    st.receive(_ptb(version, data[0], 1400), 0.02)
    again = st.poll(0.02)
    assert again, "the in-flight data is resent at once"
    assert all(len(pkt) <= 1400 for pkt in again)
    first = parse_tcp_packet(again[0])[2]
    assert first.seq == parse_tcp_packet(data[0])[2].seq  # from SND.UNA
    assert st.stats()["tcp_mtu_reductions"] == 1


@pytest.mark.parametrize("version", [4, 6])
def test_packet_too_big_below_the_minimum_mtu_is_clamped(version: int) -> None:
    st, _p, _fid, data = _flow_with_data_in_flight(version)
    st.receive(_ptb(version, data[0], 68), 0.02)
    again = st.poll(0.02)
    floor = 576 if version == 4 else 1280
    assert again and max(len(pkt) for pkt in again) == floor


@pytest.mark.parametrize("version", [4, 6])
def test_packet_too_big_with_a_sequence_number_not_in_flight_is_ignored(version: int) -> None:
    import struct

    st, _p, _fid, data = _flow_with_data_in_flight(version)
    forged = bytearray(data[0])
    off = 20 if version == 4 else 40
    seq = struct.unpack_from("!I", forged, off + 4)[0]
    struct.pack_into("!I", forged, off + 4, (seq + 10_000_000) & 0xFFFFFFFF)  # blind attacker
    st.receive(_ptb(version, bytes(forged), 1280), 0.02)
    assert st.poll(0.02) == []
    assert st.stats()["tcp_mtu_reductions"] == 0
    assert st.stats()["drops"]["icmp-error-bad-seq"] == 1


@pytest.mark.parametrize("version", [4, 6])
def test_soft_icmp_errors_never_abort_an_established_flow(version: int) -> None:
    from tun2proxy.stack import TcpClosed

    st, _p, fid, data = _flow_with_data_in_flight(version)
    for _ in range(5):
        st.receive(_ptb(version, data[0], 0, "unreachable"), 0.02)
    assert st.poll(0.02) == []
    assert not any(isinstance(e, TcpClosed) for e in st.events())
    assert st.stats()["drops"]["icmp-error-ignored"] == 5
    assert st.send(fid, b"still here") == 10
