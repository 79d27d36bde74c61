"""Packet builders for tests and tools: whole IP packets from readable arguments.

Addresses are text (``"10.0.0.1"``, ``"fd00::1"``); the IP version follows them.
"""

from __future__ import annotations

import ipaddress

from ..wire.icmp import ICMP6_ECHO_REQUEST, ICMP_ECHO_REQUEST, build_icmp_packet
from ..wire.tcp import TcpSegment, emit_tcp_packet
from ..wire.udp import emit_udp_packet

__all__ = ["icmp_echo_request", "pack", "tcp_packet", "tls_client_hello", "udp_packet"]


def pack(host: str | bytes) -> bytes:
    """Packed form of an address given as text (bytes pass through)."""
    if isinstance(host, bytes):
        return host
    return ipaddress.ip_address(host).packed


def tcp_packet(
    src: str | bytes,
    dst: str | bytes,
    sport: int,
    dport: int,
    *,
    seq: int = 0,
    ack: int = 0,
    flags: int = 0,
    window: int = 65535,
    payload: bytes = b"",
    mss: int | None = None,
    wscale: int | None = None,
    sack_permitted: bool = False,
    sack: tuple[tuple[int, int], ...] | None = None,
    ts: tuple[int, int] | None = None,
    urgent: int = 0,
    options: bytes | None = None,
) -> bytes:
    """A whole IPv4/IPv6 TCP packet with correct checksums."""
    seg = TcpSegment(
        sport,
        dport,
        seq & 0xFFFFFFFF,
        ack & 0xFFFFFFFF,
        flags,
        window,
        urgent,
        payload,
        mss=mss,
        wscale=wscale,
        sack_permitted=sack_permitted,
        sack=sack,
        ts_val=ts[0] if ts else None,
        ts_ecr=ts[1] if ts else None,
    )
    return bytes(emit_tcp_packet(pack(src), pack(dst), seg, options=options))


def udp_packet(
    src: str | bytes, dst: str | bytes, sport: int, dport: int, payload: bytes = b""
) -> bytes:
    """A whole IPv4/IPv6 UDP packet with correct checksums."""
    return bytes(emit_udp_packet(pack(src), pack(dst), sport, dport, payload))


def icmp_echo_request(
    src: str | bytes, dst: str | bytes, ident: int = 1, sequence: int = 1, data: bytes = b"ping"
) -> bytes:
    """An ICMP (or ICMPv6) echo request."""
    s, d = pack(src), pack(dst)
    t = ICMP_ECHO_REQUEST if len(s) == 4 else ICMP6_ECHO_REQUEST
    return bytes(build_icmp_packet(s, d, t, 0, (ident << 16) | sequence, data))


def tls_client_hello(server_name: str) -> bytes:
    """A minimal TLS ClientHello record carrying ``server_name`` as SNI (RFC 8446 §4.1.2,
    RFC 6066 §3): enough for sniffers, not for a real handshake."""
    host = server_name.encode()
    sni = (len(host) + 3).to_bytes(2, "big") + b"\x00" + len(host).to_bytes(2, "big") + host
    ext = b"\x00\x00" + len(sni).to_bytes(2, "big") + sni
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    body += len(ext).to_bytes(2, "big") + ext
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs
