"""Packet views and builders: IPv4, IPv6, TCP, UDP, ICMP, checksums and sequence math.

Pure: no I/O, no clock. Parsers validate lengths first and raise only
:class:`~tun2proxy.errors.MalformedPacket`; emitters build a whole packet in one buffer.
"""

from __future__ import annotations

from ..errors import MalformedPacket
from .checksum import checksum, finish, ones_sum, pseudo_header_sum, update16, verify
from .gso import GsoPacket
from .icmp import (
    IcmpMessage,
    QuotedPacket,
    build_icmp_packet,
    echo_reply,
    is_icmp_error,
    parse_icmp,
    parse_quoted,
    unreachable,
)
from .ip import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IpPacket,
    Ipv4Header,
    Ipv6Header,
    emit_ipv4_header,
    emit_ipv6_header,
    parse_ip,
)
from .pretty import describe, format_address
from .seq import in_window, seq_add, seq_diff, seq_le, seq_lt, unwrap
from .tcp import (
    ACK,
    CWR,
    ECE,
    FIN,
    PSH,
    RST,
    SYN,
    URG,
    TcpSegment,
    build_options,
    emit_tcp_packet,
    flags_str,
    parse_tcp,
)
from .udp import UdpHeader, emit_udp_packet, parse_udp

__all__ = [
    "ACK",
    "CWR",
    "ECE",
    "FIN",
    "IPPROTO_ICMP",
    "IPPROTO_ICMPV6",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "PSH",
    "RST",
    "SYN",
    "URG",
    "GsoPacket",
    "IcmpMessage",
    "IpPacket",
    "Ipv4Header",
    "Ipv6Header",
    "MalformedPacket",
    "QuotedPacket",
    "TcpSegment",
    "UdpHeader",
    "build_icmp_packet",
    "build_options",
    "checksum",
    "describe",
    "echo_reply",
    "emit_ipv4_header",
    "emit_ipv6_header",
    "emit_tcp_packet",
    "emit_udp_packet",
    "finish",
    "flags_str",
    "format_address",
    "in_window",
    "is_icmp_error",
    "ones_sum",
    "parse_icmp",
    "parse_ip",
    "parse_quoted",
    "parse_tcp",
    "parse_udp",
    "pseudo_header_sum",
    "seq_add",
    "seq_diff",
    "seq_le",
    "seq_lt",
    "unreachable",
    "unwrap",
    "update16",
    "verify",
]
