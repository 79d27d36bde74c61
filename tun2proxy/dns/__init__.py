"""Virtual DNS (fake IPs) and DNS-over-TCP framing. Pure: no I/O.

:class:`FakeIpPool` maps host names to addresses from reserved ranges; :class:`VirtualDns`
answers the applications' queries from it (``--dns virtual``) so that flows to a fake
address reach the upstream proxy by name. :func:`frame` and :class:`TcpDnsReader` carry DNS
messages over a TCP stream (``--dns over-tcp``). The DNS messages themselves are read and
written with dnslib, an optional dependency imported only when a :class:`VirtualDns` is made.
"""

from __future__ import annotations

from .pool import DEFAULT_V4_POOL, DEFAULT_V6_POOL, Address, FakeIpPool, normalize_name
from .tcp_framing import MAX_MESSAGE, TcpDnsReader, frame
from .virtual import MAX_QUERY_SIZE, DnsDecision, VirtualDns

__all__ = [
    "DEFAULT_V4_POOL",
    "DEFAULT_V6_POOL",
    "MAX_MESSAGE",
    "MAX_QUERY_SIZE",
    "Address",
    "DnsDecision",
    "FakeIpPool",
    "TcpDnsReader",
    "VirtualDns",
    "frame",
    "normalize_name",
]
