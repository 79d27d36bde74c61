"""Counters kept by a NetStack: traffic, flows, and drops by reason.

Pure: no I/O. Plain integer attributes (cheap to bump on the hot path); :meth:`Stats.as_dict`
makes the snapshot that :meth:`NetStack.stats` returns.
"""

from __future__ import annotations

__all__ = ["Stats"]


class Stats:
    """Monotonic counters of one NetStack."""

    __slots__ = (
        "addresses_refused",
        "bytes_in",
        "drops",
        "icmp_echo_replies",
        "icmp_errors_sent",
        "packets_in",
        "packets_out",
        "syn_flood_episodes",
        "tcp_accepted",
        "tcp_closed",
        "tcp_mtu_reductions",
        "tcp_rst_sent",
        "tcp_syn_received",
        "timer_compactions",
        "udp_closed",
        "udp_datagrams_in",
        "udp_datagrams_out",
        "udp_evicted",
        "udp_sessions_opened",
    )

    def __init__(self) -> None:
        self.packets_in = 0
        self.packets_out = 0
        self.bytes_in = 0
        self.tcp_syn_received = 0
        self.syn_flood_episodes = 0
        self.tcp_accepted = 0
        self.tcp_rst_sent = 0
        self.tcp_closed: dict[str, int] = {}
        #: ICMP "packet too big" messages that lowered a flow's MSS.
        self.tcp_mtu_reductions = 0
        self.udp_datagrams_in = 0
        self.udp_datagrams_out = 0
        self.udp_sessions_opened = 0
        self.udp_evicted = 0
        #: UDP sessions ended, by reason (``idle``, ``evicted``, ``rejected``, ``closed``, ...).
        self.udp_closed: dict[str, int] = {}
        self.icmp_echo_replies = 0
        self.icmp_errors_sent = 0
        #: Times the timer heap was rebuilt without its stale entries (churn).
        self.timer_compactions = 0
        #: Packets dropped, by reason (``tcp-checksum``, ``ip-fragment``, ...).
        self.drops: dict[str, int] = {}
        #: Of those drops, the ones for a special address, by protocol, side and class of
        #: the address (``tcp-dst-mapped-loopback``, ``udp-src-multicast``, ``tcp-land``):
        #: see :mod:`tun2proxy.wire.addrclass`.
        self.addresses_refused: dict[str, int] = {}

    def drop(self, reason: str) -> None:
        """Count one dropped packet."""
        d = self.drops
        d[reason] = d.get(reason, 0) + 1

    def refuse_address(self, reason: str) -> None:
        """Count one packet refused for its address (beside its drop reason)."""
        d = self.addresses_refused
        d[reason] = d.get(reason, 0) + 1

    def as_dict(self) -> dict[str, object]:
        """Every counter, with dict values copied."""
        out: dict[str, object] = {}
        for name in self.__slots__:
            v = getattr(self, name)
            out[name] = dict(v) if isinstance(v, dict) else v
        return out
