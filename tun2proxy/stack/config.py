"""NetStack settings: MTU, limits, timeouts and policies, validated once.

Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from ..tcp.config import TcpConfig

__all__ = ["ACCEPT_POLICIES", "ICMP_ECHO_MODES", "StackConfig"]

ICMP_ECHO_MODES = ("off", "reply")
ACCEPT_POLICIES = ("decide", "immediate")


@dataclass(frozen=True, slots=True, kw_only=True)
class StackConfig:
    """How a :class:`~tun2proxy.stack.NetStack` behaves. All times are in seconds.

    Attributes:
        isn_secret: key of the RFC 6528 ISN hash (at least 8 random bytes; the driver passes
            ``os.urandom(16)``; tests may pass a constant).
        mtu: the link MTU; the MSS we announce is ``mtu - 40`` (IPv4) or ``mtu - 60`` (IPv6).
        tcp: per-connection TCP settings.
        max_flows: TCP connections of every state, pending ones included (``--max-sessions``).
            A SYN beyond it takes the place of the oldest unanswered handshake-first
            handshake if there is one, and is refused with RST otherwise.
        max_pending: SYNs waiting for the host's accept/reject (decide at the SYN) plus
            accepted handshakes whose SYN-ACK is unanswered (each of those holds an upstream
            connection); more SYNs are dropped (the app retransmits), so upstream work for
            unvalidated sources is bounded too.
        max_pending_per_source: SYNs waiting for the host's decision, per source address
            (RFC 4987).
        pending_timeout: a pending SYN the host never decides on is forgotten after this.
        max_queued: connections whose handshake the stack completed first (under a SYN
            flood, or with ``accept_policy="immediate"``) waiting for the host to accept
            them — the host's queue for an upstream connection. When it is full, new SYNs
            are dropped (the app retransmits) rather than answered: an app never sees an
            open connection that is then reset for want of room.
        max_queued_per_destination: the same, per destination address, so that connects to
            one destination (say, a black-holed one) cannot take the whole queue.
        max_udp_sessions: UDP sessions; the least recently used is evicted beyond it.
        udp_timeout: idle timeout of a UDP session (``--udp-timeout``).
        dns_timeout: idle timeout of a UDP session whose first datagram went to port 53.
        icmp_echo: ``off`` (drop echo requests) or ``reply`` (answer them locally: the
            tunnel answers, not the far host).
        verify_checksums: verify IPv4, TCP, UDP and ICMP checksums of inbound packets.
        checksum_offload: leave outbound TCP/UDP checksums for the device to complete (only
            for links that declare it, e.g. Linux TUN with ``IFF_VNET_HDR``).
        allow_link_local: accept flows to scoped destinations: link-local (169.254.0.0/16,
            fe80::/10, also IPv4-mapped) and deprecated site-local (fec0::/10); see
            :mod:`tun2proxy.wire.addrclass`.
        accept_policy: ``decide`` (the default: a SYN is a request the host answers after
            dialling — the app never sees a connection that failed upstream) or
            ``immediate`` (the handshake completes first and ``TcpConnectRequest`` follows
            it, with ``established=True``; needed to look at the first bytes, e.g. for SNI
            sniffing).
        syn_flood_threshold: when this many SYNs await the host's decision or hold an
            upstream connection with their SYN-ACK unanswered (pending plus held; a pending
            request the host hands back with ``tcp_handshake_first`` counts until its
            handshake completes), new SYNs are handled as ``immediate`` (a source must
            complete the handshake before it costs an upstream dial: RFC 4987's defence,
            kept stateful but bounded), and handshakes nobody answers expire after
            ``half_open_timeout``. The mode ends when that count is below half of it and
            no handshake has gone unanswered for ``half_open_timeout``
            (:mod:`tun2proxy.stack.admission`).
        max_half_open: handshakes under way in ``immediate`` handling; beyond it the oldest
            is forgotten (RFC 4987 "random drop", oldest first).
        half_open_timeout: under SYN-flood pressure, a handshake whose SYN-ACK is not
            answered within this is dropped silently (instead of after ``tcp.syn_retries``
            retransmissions, about a minute); its upstream connection, if any, is closed.
            The default lets one SYN-ACK retransmission (at the 1 s initial RTO) through.
        icmp_error_rate: ICMP errors generated per second (RFC 1122 §3.2.2, RFC 4443 §2.4).
        memory_limit: a budget in bytes for what the stack holds (buffered bytes plus a
            fixed estimate per flow), enforced by admission control: above half of it every
            flow's buffers shrink towards 4 KiB (the windows advertised to apps shrink, and
            upstreams are paused sooner); at the limit new flows are refused with RST.
            None: no budget.
    """

    isn_secret: bytes = b""
    mtu: int = 1500
    tcp: TcpConfig = field(default_factory=TcpConfig)
    max_flows: int = 4096
    max_pending: int = 256
    max_pending_per_source: int = 128
    pending_timeout: float = 30.0
    max_queued: int = 2048
    max_queued_per_destination: int = 1024
    max_udp_sessions: int = 4096
    udp_timeout: float = 30.0
    dns_timeout: float = 10.0
    icmp_echo: str = "off"
    verify_checksums: bool = True
    checksum_offload: bool = False
    allow_link_local: bool = False
    accept_policy: str = "decide"
    syn_flood_threshold: int = 128
    max_half_open: int = 2048
    half_open_timeout: float = 3.0
    icmp_error_rate: int = 200
    memory_limit: int | None = None

    def __post_init__(self) -> None:
        if not 576 <= self.mtu <= 65535:
            raise ConfigError("mtu must be between 576 and 65535")
        if self.max_flows < 1 or self.max_pending < 1 or self.max_pending_per_source < 1:
            raise ConfigError("max_flows, max_pending and max_pending_per_source must be >= 1")
        if self.max_udp_sessions < 1:
            raise ConfigError("max_udp_sessions must be >= 1")
        if self.max_queued < 1 or self.max_queued_per_destination < 1:
            raise ConfigError("max_queued and max_queued_per_destination must be >= 1")
        for name in ("pending_timeout", "udp_timeout", "dns_timeout", "half_open_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.icmp_echo not in ICMP_ECHO_MODES:
            raise ConfigError(f"icmp_echo must be one of {', '.join(ICMP_ECHO_MODES)}")
        if not isinstance(self.isn_secret, bytes | bytearray):
            raise ConfigError("isn_secret must be bytes")
        if self.accept_policy not in ACCEPT_POLICIES:
            raise ConfigError(f"accept_policy must be one of {', '.join(ACCEPT_POLICIES)}")
        if self.memory_limit is not None and self.memory_limit < 1 << 20:
            raise ConfigError("memory_limit must be at least 1 MiB")
        if self.syn_flood_threshold < 1 or self.max_half_open < 1 or self.icmp_error_rate < 1:
            raise ConfigError("syn_flood_threshold, max_half_open, icmp_error_rate must be >= 1")

    def mss_for(self, version: int) -> int:
        """The MSS we announce to an application speaking IP ``version`` (RFC 9293 MUST-14)."""
        return self.mtu - (40 if version == 4 else 60)
