"""Upstreams: where flows go — direct, reject, SOCKS5 (I/O layer)."""

from __future__ import annotations

from .base import FlowInfo, Upstream, upstream_error_from_os
from .direct import DirectUpstream
from .registry import upstream_from_url
from .reject import RejectUpstream

__all__ = [
    "DirectUpstream",
    "FlowInfo",
    "RejectUpstream",
    "Upstream",
    "upstream_error_from_os",
    "upstream_from_url",
]
