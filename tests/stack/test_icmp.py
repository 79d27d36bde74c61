"""NetStack ICMP: local echo replies (opt-in), quiet ND/MLD, counted errors."""

from __future__ import annotations

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
