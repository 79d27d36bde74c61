"""StackConnection: a TCP connection with the NetStack's bookkeeping for it.

The state machine (:mod:`tun2proxy.tcp`) knows nothing of flow ids, table keys or the timer
heap; the stack keeps them here, on a subclass, so that they cost no lookup on the hot path.
"""

from __future__ import annotations

from ..tcp.connection import TcpConnection

__all__ = ["StackConnection"]


class StackConnection(TcpConnection):
    """A :class:`TcpConnection` as one flow of a NetStack.

    Attributes:
        flow_id: the flow's stable id (what the host names it by).
        key: its table key (app address + our address + the two ports).
        sched: the deadline of its live entry in the timer heap, or None.
        dirty: queued for dispatch at the next poll.
        accounted: buffered bytes the stack last counted for it.
        packets_in, packets_out: segments from the app and IP packets to it (for observers:
            ``Driver.flows()``).
    """

    __slots__ = ("accounted", "dirty", "flow_id", "key", "packets_in", "packets_out", "sched")

    def init_flow(self, flow_id: int, key: bytes) -> None:
        """Give a new connection its id and key, and nothing scheduled or counted yet."""
        self.flow_id = flow_id
        self.key = key
        self.sched: float | None = None
        self.dirty = False
        self.accounted = 0
        self.packets_in = 1  # the SYN
        self.packets_out = 0
