"""RelayHost: what the relays and the DNS handler need of the driver that owns them.

The relays (:mod:`.relay`, :mod:`.udp_relay`) and :mod:`.dns` depend on this protocol, not on
:class:`~tun2proxy.driver.loop.Driver`, which imports them: the driver satisfies it, and a
test can hand them anything else that does.
"""

from __future__ import annotations

from typing import Protocol

from ..logutil import RateLimitedLog
from ..stack.netstack import NetStack
from ..upstream.base import Upstream

__all__ = ["RelayHost"]


class RelayHost(Protocol):
    """The driver as its relays see it."""

    @property
    def stack(self) -> NetStack:
        """The NetStack the flows live in."""
        ...

    @property
    def upstream(self) -> Upstream:
        """The upstream TCP flows are dialled through."""
        ...

    @property
    def limited_log(self) -> RateLimitedLog:
        """The driver's rate-limited logger (one line per kind of failure per interval)."""
        ...

    def schedule_pump(self) -> None:
        """Run the driver's pump once soon (after the relay gave the stack something)."""
        ...
