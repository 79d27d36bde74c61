"""Routing, the pure part: the rule language, bypass networks and domain sniffing.

Pure: no I/O. :mod:`~tun2proxy.routing.sniff` finds the host name in a flow's first bytes
(TLS SNI, HTTP ``Host``); :mod:`~tun2proxy.routing.rules` parses and evaluates the rule
language. The Upstream that applies them to flows (``RoutingUpstream``) does I/O, so it lives
in :mod:`tun2proxy.upstream.router`; the core and the driver know nothing of routing.
"""

from __future__ import annotations

from .rules import BUILTIN_TARGETS, NetworkSet, Rule, Rules, parse_network
from .sniff import MAX_CLIENT_HELLO, MAX_HTTP_HEADER, SniffResult, sniff_host

__all__ = [
    "BUILTIN_TARGETS",
    "MAX_CLIENT_HELLO",
    "MAX_HTTP_HEADER",
    "NetworkSet",
    "Rule",
    "Rules",
    "SniffResult",
    "parse_network",
    "sniff_host",
]
