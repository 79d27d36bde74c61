"""Routing: per-flow choice of upstream (rules, bypass lists) and domain sniffing.

:mod:`~tun2proxy.routing.sniff` (pure) finds the host name in a flow's first bytes (TLS SNI,
HTTP ``Host``); :mod:`~tun2proxy.routing.rules` (pure) parses and evaluates the rule
language; :class:`RoutingUpstream` (I/O, :mod:`~tun2proxy.routing.router`) is an Upstream
that delegates each flow to the upstream the bypass lists and rules pick, so the core knows
nothing of routing. The I/O names are imported on first use, so importing the pure modules
does not import asyncio or socket.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .rules import BUILTIN_TARGETS, NetworkSet, Rule, Rules, parse_network
from .sniff import MAX_CLIENT_HELLO, MAX_HTTP_HEADER, SniffResult, sniff_host

if TYPE_CHECKING:
    from .router import Decision, RoutingUpstream, resolve_proxy_addresses

__all__ = [
    "BUILTIN_TARGETS",
    "MAX_CLIENT_HELLO",
    "MAX_HTTP_HEADER",
    "Decision",
    "NetworkSet",
    "RoutingUpstream",
    "Rule",
    "Rules",
    "SniffResult",
    "parse_network",
    "resolve_proxy_addresses",
    "sniff_host",
]

_LAZY = frozenset({"Decision", "RoutingUpstream", "resolve_proxy_addresses"})


def __getattr__(name: str) -> Any:
    """Import the I/O layer's names (:mod:`.router`) on first use."""
    if name in _LAZY:
        from . import router

        return getattr(router, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
