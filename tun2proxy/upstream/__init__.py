"""Upstreams: where flows go — direct, reject, SOCKS5, SOCKS4, HTTP, Shadowsocks, and the
RoutingUpstream that picks one of them per flow (I/O layer)."""

from __future__ import annotations

from .base import FlowInfo, Upstream, upstream_error_from_os
from .direct import DirectUpstream
from .registry import upstream_from_url
from .reject import RejectUpstream
from .router import Decision, RoutingUpstream, resolve_proxy_addresses

__all__ = [
    "Decision",
    "DirectUpstream",
    "FlowInfo",
    "RejectUpstream",
    "RoutingUpstream",
    "Upstream",
    "resolve_proxy_addresses",
    "upstream_error_from_os",
    "upstream_from_url",
]
