"""tcpdump-style one-line descriptions of packets, for logs, test failures and fuzzing.

Pure: no I/O. :func:`describe` never raises: a packet it cannot parse is described by the
reason it is malformed.
"""

from __future__ import annotations

import ipaddress

from ..errors import MalformedPacket
from .icmp import parse_icmp
from .ip import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, parse_ip
from .tcp import flags_str, parse_tcp
from .udp import parse_udp

__all__ = ["describe", "format_address"]


def format_address(packed: bytes) -> str:
    """The text form of a packed IPv4 or IPv6 address."""
    return str(ipaddress.ip_address(bytes(packed)))


def describe(packet: bytes | bytearray | memoryview) -> str:
    """Describe one IP packet in a line, e.g. ``IP 10.0.0.1.5000 > 10.0.0.2.80: Flags [S] ...``."""
    try:
        return _describe(packet)
    except MalformedPacket as e:
        return f"malformed ({e.reason}), {len(packet)} bytes"
    except Exception as e:  # pragma: no cover - a bug here must not break logging
        return f"undescribable ({type(e).__name__}), {len(packet)} bytes"


def _describe(packet: bytes | bytearray | memoryview) -> str:
    ip = parse_ip(packet, verify_checksum=False)
    tag = "IP" if ip.version == 4 else "IP6"
    s, d = format_address(ip.src), format_address(ip.dst)
    if ip.fragment:
        return f"{tag} {s} > {d}: fragment proto {ip.protocol}, length {ip.end - ip.offset}"
    if ip.protocol == IPPROTO_TCP:
        seg = parse_tcp(packet, ip.offset, ip.end)
        parts = [f"{tag} {s}.{seg.src_port} > {d}.{seg.dst_port}: Flags [{flags_str(seg.flags)}]"]
        n = len(seg.payload)
        if n or seg.flags & 0x03:
            parts.append(f"seq {seg.seq}:{(seg.seq + n) & 0xFFFFFFFF}" if n else f"seq {seg.seq}")
        if seg.flags & 0x10:
            parts.append(f"ack {seg.ack}")
        parts.append(f"win {seg.window}")
        opts = []
        if seg.mss is not None:
            opts.append(f"mss {seg.mss}")
        if seg.sack_permitted:
            opts.append("sackOK")
        if seg.ts_val is not None:
            opts.append(f"TS val {seg.ts_val} ecr {seg.ts_ecr}")
        if seg.wscale is not None:
            opts.append(f"wscale {seg.wscale}")
        if seg.sack:
            opts.append("sack " + " ".join(f"{a}:{b}" for a, b in seg.sack))
        if opts:
            parts.append("options [" + ",".join(opts) + "]")
        parts.append(f"length {n}")
        return ", ".join(parts)
    if ip.protocol == IPPROTO_UDP:
        u = parse_udp(packet, ip.offset, ip.end)
        return f"{tag} {s}.{u.src_port} > {d}.{u.dst_port}: UDP, length {len(u.payload)}"
    if ip.protocol in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        m = parse_icmp(packet, ip.offset, ip.end)
        kind = "ICMP" if ip.version == 4 else "ICMP6"
        return f"{tag} {s} > {d}: {kind} type {m.type} code {m.code}, length {len(m.body)}"
    return f"{tag} {s} > {d}: proto {ip.protocol}, length {ip.end - ip.offset}"
