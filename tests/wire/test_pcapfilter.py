"""--pcap-filter: the grammar, its errors, and packets matched (built by scapy)."""

from __future__ import annotations

import pytest
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop

from tun2proxy.errors import ConfigError
from tun2proxy.wire.pcapfilter import parse_filter

A2B = raw(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=443))
B2A = raw(IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=443, dport=40000))
DNS = raw(IP(src="10.0.0.1", dst="10.9.9.9") / UDP(sport=5353, dport=53) / b"q")
PING = raw(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP())
V6 = raw(IPv6(src="fd00::1", dst="fd00:1::2") / TCP(sport=1, dport=443))
V6_EXT = raw(IPv6(src="fd00::1", dst="fd00:1::2") / IPv6ExtHdrHopByHop() / TCP(dport=443))
FRAG = raw(IP(src="10.0.0.1", dst="10.0.0.2", frag=100) / (b"x" * 30))


def keeps(text: str, *packets: bytes) -> list[bool]:
    f = parse_filter(text)
    return [f(p) for p in packets]


def test_host_and_port_keep_both_directions_of_a_flow() -> None:
    assert keeps("host 10.0.0.1 and port 443", A2B, B2A, DNS, PING) == [True, True, False,
                                                                         False]


def test_src_dst_net_and_protocols() -> None:
    assert keeps("src host 10.0.0.1", A2B, B2A) == [True, False]
    assert keeps("dst port 443", A2B, B2A) == [True, False]
    assert keeps("net 10.9.0.0/16", A2B, DNS) == [False, True]
    assert keeps("udp and port 53", A2B, DNS) == [False, True]
    assert keeps("icmp", A2B, PING) == [False, True]
    assert keeps("ip6", A2B, V6) == [False, True]
    assert keeps("dst net fd00:1::/32 and tcp", V6, A2B) == [True, False]
    assert keeps("portrange 400-500", A2B, DNS) == [True, False]
    assert keeps("tcp port 53 or udp dst port 53", A2B, DNS) == [False, True]
    assert keeps("udp src port 40000", A2B) == [False]


def test_precedence_not_parentheses_and_symbols() -> None:
    # not > and > or
    assert keeps("udp or tcp and port 80", A2B, DNS) == [False, True]
    assert keeps("(udp or tcp) and not port 80", A2B, DNS) == [True, True]
    assert keeps("!(port 53) && (tcp || icmp)", A2B, DNS, PING) == [True, False, True]


def test_ports_are_not_read_past_extension_headers_or_in_fragments() -> None:
    assert keeps("port 443", V6, V6_EXT) == [True, False]
    assert keeps("host 10.0.0.2", FRAG) == [True]
    assert keeps("port 0", FRAG) == [False]


def test_garbage_packets_are_not_kept_and_do_not_raise() -> None:
    assert keeps("not tcp", b"", b"\x45" * 10, b"\x00" * 40) == [False, False, False]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("host example.com", "names are not resolved"),
        ("port 70000", "0 to 65535"),
        ("portrange 5", "LO-HI"),
        ("net 10.0.0.0/33", "not valid"),
        ("host 10.0.0.1 and", "unexpected end"),
        ("(tcp", "missing ')'"),
        ("tcp udp", "unexpected 'udp'"),
        ("ether host 1", "unknown term 'ether'"),
        ("src tcp", "unexpected 'tcp'"),
    ],
)
def test_errors_name_the_problem(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match="--pcap-filter") as e:
        parse_filter(text)
    assert says in str(e.value)
