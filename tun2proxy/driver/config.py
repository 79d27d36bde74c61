"""DriverConfig: the Driver's settings (dial limits, UDP and DNS policy, sniffing, workers)."""

from __future__ import annotations

from dataclasses import dataclass

from ..dns.pool import SlotDirectory
from ..errors import ConfigError
from .dns import DNS_MODES

__all__ = ["UDP_POLICIES", "DriverConfig"]

UDP_POLICIES = ("proxy", "direct", "reject")


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverConfig:
    """Driver settings. Times in seconds.

    Attributes:
        connect_timeout: how long an upstream dial may take before the SYN is rejected.
        max_connecting: upstream dials in flight; further flows wait in the dial queue
            (they cost no upstream socket; the stack's ``max_pending`` and ``max_queued``
            bound the queue).
        max_connecting_per_destination: upstream dials in flight to one destination
            address; with round robin across destinations in the queue, a destination
            whose dials all hang (black-holed) holds this many slots and no more.
        queue_timeout: how long a flow may wait in the dial queue; then it is refused as
            unreachable (ICMP host unreachable, or RST when the app's connection is open:
            handshake-first flows under a SYN flood).
        shutdown_grace: on stop, how long flows get to close before they are reset.
        udp: ``proxy`` (UDP through the upstream when it can carry it, else ICMP port
            unreachable), ``direct`` (UDP from this host's network whatever the upstream),
            or ``reject`` (ICMP port unreachable at once, so QUIC falls back to TCP).
        dns: ``virtual`` (fake addresses answered here; flows reach the proxy by name),
            ``over-tcp`` (UDP queries forwarded as DNS over TCP through the upstream) or
            ``direct`` (DNS is ordinary UDP); see :mod:`tun2proxy.driver.dns`.
        dns_addr: where forwarded queries go (through the upstream).
        virtual_dns_pool, virtual_dns_pool6: the fake address ranges.
        sniff: read the host name from a TCP flow's first bytes (TLS SNI, HTTP ``Host``)
            when no name is known: the handshake is completed first, the upstream is dialled
            once the name is found or ``sniff_timeout`` has passed (bounded by
            ``sniff_bytes``), and a failed dial then resets the app's connection.
        worker: ``(index, count)`` of this driver among the worker processes of
            ``--workers`` (its share of the virtual DNS addresses).
        dns_directory: the virtual DNS directory the workers share (needed with count > 1).
    """

    connect_timeout: float = 10.0
    max_connecting: int = 256
    max_connecting_per_destination: int = 32
    queue_timeout: float = 10.0
    shutdown_grace: float = 0.5
    udp: str = "proxy"
    dns: str = "direct"
    dns_addr: tuple[str, int] = ("8.8.8.8", 53)
    virtual_dns_pool: str = "198.18.0.0/15"
    virtual_dns_pool6: str | None = None
    sniff: bool = False
    sniff_timeout: float = 0.3
    sniff_bytes: int = 16384 + 512
    worker: tuple[int, int] = (0, 1)
    dns_directory: SlotDirectory | None = None

    def __post_init__(self) -> None:
        if self.udp not in UDP_POLICIES:
            raise ConfigError(f"udp must be one of {', '.join(UDP_POLICIES)}")
        if self.dns not in DNS_MODES:
            raise ConfigError(f"dns must be one of {', '.join(DNS_MODES)}")
        if self.max_connecting < 1 or self.max_connecting_per_destination < 1:
            raise ConfigError("max_connecting and max_connecting_per_destination must be >= 1")
        if not self.queue_timeout > 0:
            raise ConfigError("queue_timeout must be positive")
