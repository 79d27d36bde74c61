"""StackBase: the NetStack's tables and the helpers its TCP, UDP and ICMP input share.

The input of each protocol lives in its own module (:mod:`.tcp_input`, :mod:`.udp_input`,
:mod:`.icmp_input`) as a mixin over this base; :class:`~tun2proxy.stack.netstack.NetStack`
puts them together and keeps the host API. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from ..errors import ConfigError, FlowStateError
from ..tcp.state import CLOSED
from ..udp.session import UdpSession
from ..wire.addrclass import bad_destination, bad_source
from ..wire.tcp import build_rst
from .admission import Admission
from .config import StackConfig
from .events import Event
from .flow import StackConnection
from .stats import Stats
from .timers import TimerHeap

__all__ = ["FLOW_OVERHEAD", "StackBase", "address_refused"]

_RST_BUDGET = 200  # RSTs to unknown flows per second (RFC 9293 §3.10.7.1; no amplification)
#: Estimated bytes of Python objects per TCP flow in the stack (connection, key, timers),
#: beside its buffers: an idle established flow measured about 2.2 KB with tracemalloc
#: (tests/stack/test_memory.py keeps this figure honest).
FLOW_OVERHEAD = 2200
#: The timer heap is rebuilt without its stale entries once it holds more than this many
#: entries per flow and session (plus the slack): stale ones then outnumber live ones 2:1.
_COMPACT_FACTOR = 3
_COMPACT_SLACK = 64


def address_refused(src: bytes, dst: bytes, allow_scoped: bool) -> str:
    """Why a packet from ``src`` to ``dst`` is refused for its addresses, or "" (one place for
    TCP, UDP and ICMP; the classes are :mod:`tun2proxy.wire.addrclass`'s)."""
    if src == dst:
        return "land"  # source = destination (the LAND attack)
    why = bad_source(src)
    if why:
        return "src-" + why
    why = bad_destination(dst, allow_scoped)
    return "dst-" + why if why else ""


class StackBase:
    """The state of one NetStack: flow tables, admission, timers, output and counters."""

    def __init__(self, config: StackConfig) -> None:
        if len(config.isn_secret) < 8:
            raise ConfigError(
                "StackConfig.isn_secret must hold at least 8 random bytes (e.g. os.urandom(16))"
            )
        self.config = config
        self._tcp_cfg = config.tcp
        self._verify = config.verify_checksums
        self._offload = config.checksum_offload
        self._tcp: dict[bytes, StackConnection] = {}
        self._flows: dict[int, StackConnection] = {}
        self._udp: OrderedDict[bytes, UdpSession] = OrderedDict()
        self._udp_by_id: dict[int, UdpSession] = {}
        self._next_id = 1
        #: Pending requests, held and half-open handshakes, the host's queue, flood mode.
        self._adm = Admission(config)
        self._syn_quote: dict[int, bytes] = {}
        self._dirty: list[StackConnection] = []
        self._closing: list[StackConnection] = []
        #: Flows that closed in order with bytes the host has not read yet: flow id ->
        #: deadline. TcpClosed waits until the bytes are read (we ACKed them: they must be
        #: delivered) or the half-close timeout passes.
        self._lingering: dict[int, float] = {}
        self._timers = TimerHeap()
        self._events: list[Event] = []
        self._out: list[bytearray] = []
        self._rst_tokens = float(_RST_BUDGET)
        self._rst_time = 0.0
        self._icmp_tokens = float(config.icmp_error_rate)
        self._icmp_time = 0.0
        self._buffered = 0
        self._now = 0.0
        self.stats_counters = Stats()

    if TYPE_CHECKING:
        # Provided by the protocol mixins (tcp_input, udp_input).
        def _collect(self, conn: StackConnection) -> None: ...
        def _close_udp(self, sess: UdpSession, reason: str) -> None: ...

    def _conn(self, flow_id: int) -> StackConnection:
        conn = self._flows.get(flow_id)
        if conn is None:
            raise FlowStateError(f"no TCP flow with id {flow_id}")
        return conn

    def _account(self, conn: StackConnection) -> None:
        """Keep the stack's running total of buffered bytes, and apply memory pressure."""
        b = conn.buffered
        self._buffered += b - conn.accounted
        conn.accounted = b
        limit = self.config.memory_limit
        if limit is not None:
            used = self._buffered + FLOW_OVERHEAD * len(self._tcp)
            half = limit >> 1
            if used > half:
                conn.limit_buffers(max(0.0, 1.0 - (used - half) / half))
            elif conn.rcv_cap < self._tcp_cfg.recv_buffer and conn.wscale_ok:
                conn.limit_buffers(1.0)

    def memory_estimate(self) -> int:
        """Bytes the stack holds: buffered data plus a fixed estimate per TCP flow."""
        return self._buffered + FLOW_OVERHEAD * len(self._tcp)

    def _touch(self, conn: StackConnection) -> None:
        self._account(conn)
        if conn.notify:
            self._collect(conn)
        if conn.state is CLOSED and conn.flow_id not in self._flows:
            # A TIME-WAIT connection (the host was already told) ended: forget its key.
            if self._tcp.get(conn.key) is conn:
                del self._tcp[conn.key]
            return
        if not conn.dirty:
            conn.dirty = True
            self._dirty.append(conn)

    def _send_rst(
        self,
        app: bytes,
        local: bytes,
        local_port: int,
        app_port: int,
        seq: int,
        ack: int,
        flags: int,
        now: float,
    ) -> None:
        tokens = min(_RST_BUDGET, self._rst_tokens + (now - self._rst_time) * _RST_BUDGET)
        self._rst_time = now
        if tokens < 1:
            self._rst_tokens = tokens
            self.stats_counters.drop("tcp-rst-rate-limited")
            return
        self._rst_tokens = tokens - 1
        self._out.append(
            build_rst(local, app, local_port, app_port, seq, ack, flags, self._offload)
        )
        self.stats_counters.tcp_rst_sent += 1

    def _icmp_allowed(self, now: float) -> bool:
        """Token bucket for the ICMP errors we generate (RFC 1122 §3.2.2, RFC 4443 §2.4)."""
        rate = self.config.icmp_error_rate
        tokens = min(rate, self._icmp_tokens + (now - self._icmp_time) * rate)
        self._icmp_time = now
        if tokens < 1:
            self._icmp_tokens = tokens
            self.stats_counters.drop("icmp-error-rate-limited")
            return False
        self._icmp_tokens = tokens - 1
        return True

    def _remove(self, conn: StackConnection) -> None:
        self._buffered -= conn.accounted
        conn.accounted = 0
        if self._tcp.get(conn.key) is conn:
            del self._tcp[conn.key]
        self._flows.pop(conn.flow_id, None)
        conn.sched = None

    def _maybe_compact(self) -> None:
        """After a poll: rebuild the timer heap when stale entries outnumber live ones 2:1
        (amortised O(1) per entry); with no flow or session left every entry is stale, so an
        idle stack keeps no timers (and no closed flows alive)."""
        n = len(self._timers)
        if n:
            live = len(self._tcp) + len(self._udp)
            if live == 0 or n > _COMPACT_FACTOR * live + _COMPACT_SLACK:
                udp = self._udp_by_id

                def alive(obj: StackConnection | UdpSession) -> bool:
                    if isinstance(obj, StackConnection):
                        return obj.state is not CLOSED
                    return udp.get(obj.flow_id) is obj

                self._timers.compact(alive)
                self.stats_counters.timer_compactions += 1
