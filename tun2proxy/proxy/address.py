"""Destination addresses as upstream protocols carry them: an IP address or a host name.

Pure: no I/O.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

__all__ = ["Address"]


@dataclass(frozen=True, slots=True)
class Address:
    """Where a flow goes: ``host`` is an IPv4/IPv6 literal or a domain name, plus a port.

    Build with :meth:`from_host` (which normalises IP literals) or directly.
    """

    host: str
    port: int

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port {self.port} out of range")
        if not self.host:
            raise ValueError("empty host")

    @classmethod
    def from_host(cls, host: str, port: int) -> Address:
        """An address from text; IP literals are normalised (``[::1]`` brackets removed)."""
        h = host.strip()
        if h.startswith("[") and h.endswith("]"):
            h = h[1:-1]
        try:
            h = str(ipaddress.ip_address(h))
        except ValueError:
            h = h.rstrip(".").lower() if h.rstrip(".") else h
        return cls(h, port)

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The address as an IP object, or None for a domain name."""
        return _ip_of(self.host)

    @property
    def is_domain(self) -> bool:
        """True when ``host`` is a name rather than an IP literal."""
        return self.ip is None

    def __str__(self) -> str:
        ip = self.ip
        if ip is not None and ip.version == 6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@functools.lru_cache(maxsize=4096)
def _ip_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` parsed as an IP address (None for a name); cached: the same few addresses
    are parsed for every datagram of a UDP session."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
