"""The error every Shadowsocks codec raises on bad input from the server.

Pure: no I/O.
"""

from __future__ import annotations

from ...errors import UpstreamError

__all__ = ["ShadowsocksError"]


class ShadowsocksError(UpstreamError):
    """A Shadowsocks stream or packet failed authentication or validation.

    ``reason`` is ``protocol`` (an :class:`~tun2proxy.errors.UpstreamError` reason): the
    upstream connection must be closed; for UDP, the datagram is dropped.
    """

    def __init__(self, message: str, reason: str = "protocol") -> None:
        super().__init__(message, reason)
