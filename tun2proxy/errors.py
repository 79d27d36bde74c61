"""Exception types shared by every layer of tun2proxy.

Pure: no I/O. ``MalformedPacket`` never escapes :meth:`NetStack.receive`; the stack turns it
into a counted drop. The others signal API misuse or upstream failure to the caller.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "FlowStateError",
    "MalformedPacket",
    "Tun2ProxyError",
    "UpstreamError",
    "describe_error",
]


class Tun2ProxyError(Exception):
    """Base class of every error tun2proxy raises on purpose."""


class MalformedPacket(Tun2ProxyError):
    """A packet cannot be parsed; ``reason`` names the check that failed (a stats key)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FlowStateError(Tun2ProxyError):
    """The caller asked a flow to do something its state does not allow (API misuse)."""


class ConfigError(Tun2ProxyError, ValueError):
    """A configuration value is invalid; the message names the setting."""


class UpstreamError(Tun2ProxyError):
    """An upstream (proxy or direct connection) failed; ``reason`` is a short machine word.

    ``reason`` is one of ``refused``, ``unreachable``, ``timeout``, ``auth``, ``protocol``,
    ``denied``, ``unsupported`` or ``error``; it decides how the failure is reported to the
    application (RST, or ICMP unreachable).
    """

    def __init__(self, message: str, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason


def describe_error(exc: BaseException) -> str:
    """``str(exc)``, or the exception's type when that is empty (``TimeoutError()``,
    ``ConnectionResetError()``): a log line never ends in an empty reason."""
    text = str(exc)
    return text if text else type(exc).__name__
