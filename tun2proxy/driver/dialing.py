"""Which connect request the driver dials when: the dial queue, its deadline, and
handshake-first under a SYN flood.

A ``TcpConnectRequest`` is queued (:class:`~tun2proxy.driver.admission.DialQueue`) and dialled
as soon as a slot is free — at most ``max_connecting`` dials in flight and
``max_connecting_per_destination`` to one destination, destinations taking turns, flows
whose app completed the handshake first. A queued flow costs no upstream socket (the app
retransmits its SYN meanwhile, which the stack absorbs); after ``queue_timeout`` it is
refused as unreachable. Under a SYN flood (``NetStack.syn_flood_mode``) a request whose app
has not completed the handshake is not dialled: it is handed back to the stack
(``tcp_handshake_first``) and comes back established if the app is real.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import logging
from typing import Protocol

from ..errors import FlowStateError
from ..stack.events import TcpConnectRequest
from .admission import DialQueue
from .host import RelayHost

__all__ = ["DIAL_BUCKETS", "DialHost", "DialStats", "Dialer"]

#: Upper bounds (seconds) of the dial-latency histogram's buckets (the last one is +Inf).
DIAL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class DialStats:
    """Upstream dials: how long the successful ones took (a histogram) and the failures by
    protocol and reason. Bumped once per dial, read by :meth:`snapshot` (``--metrics``)."""

    __slots__ = ("buckets", "count", "failures", "sum")

    def __init__(self) -> None:
        #: Successful dials per bucket of :data:`DIAL_BUCKETS` (not cumulative; one more
        #: for +Inf).
        self.buckets = [0] * (len(DIAL_BUCKETS) + 1)
        self.count = 0
        self.sum = 0.0
        #: ``"tcp:refused"`` -> dials that failed so.
        self.failures: dict[str, int] = {}

    def observe(self, seconds: float, reason: str | None, protocol: str = "tcp") -> None:
        """One dial ended after ``seconds``: successfully (``reason`` None) or not."""
        if reason is None:
            self.buckets[bisect.bisect_left(DIAL_BUCKETS, seconds)] += 1
            self.count += 1
            self.sum += seconds
        else:
            key = f"{protocol}:{reason}"
            self.failures[key] = self.failures.get(key, 0) + 1

    def snapshot(self) -> dict[str, object]:
        """The counters as plain values (for ``Driver.stats()``)."""
        return {
            "latency_buckets": list(self.buckets),
            "latency_count": self.count,
            "latency_sum": self.sum,
            "failures": dict(self.failures),
        }


class DialHost(RelayHost, Protocol):
    """What the :class:`Dialer` needs of the driver that owns it."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running event loop."""
        ...

    @property
    def stopping(self) -> bool:
        """Whether the driver is shutting down (nothing new is dialled)."""
        ...

    def start_dial(self, ev: TcpConnectRequest) -> asyncio.Task[None]:
        """Start dialling the upstream for ``ev``'s flow; the task is the driver's to track."""
        ...

    def count_failed_flow(self) -> None:
        """One more flow refused (counted in the driver's stats)."""
        ...


class Dialer:
    """The driver's dial queue and its timer (see the module docstring)."""

    def __init__(
        self,
        driver: DialHost,
        *,
        max_connecting: int,
        max_connecting_per_destination: int,
        queue_timeout: float,
    ) -> None:
        self.driver = driver
        self.queue_timeout = queue_timeout
        #: Flows waiting for a dial slot (beyond max_connecting, or per destination).
        self.queue: DialQueue[TcpConnectRequest] = DialQueue(
            max_connecting, max_connecting_per_destination
        )
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        #: Flows refused because they waited in the queue past queue_timeout.
        self.expired = 0
        #: Dial latencies and failures (timed by the driver around each upstream dial).
        self.stats = DialStats()

    def reconfigure(
        self, *, max_connecting: int, max_connecting_per_destination: int, queue_timeout: float
    ) -> None:
        """New dial limits and queue timeout (a reload): flows queued from now on wait at most
        ``queue_timeout``; raised limits dial queued flows at once."""
        self.queue.set_limits(max_connecting, max_connecting_per_destination)
        self.queue_timeout = queue_timeout
        self.start()

    def request(self, ev: TcpConnectRequest) -> None:
        """A new flow to dial for (the routing-loop and stopping checks are done)."""
        d = self.driver
        if not ev.established and d.stack.syn_flood_mode:
            # SYN-flood pressure: no upstream connection for a source that has not shown it
            # exists. The stack completes the handshake; if the app answers, the same flow
            # comes back established and is queued then.
            d.stack.tcp_handshake_first(ev.flow_id)
            return
        loop = d.loop
        self.queue.push(
            ev.flow_id, ev.dst[0], ev, verified=ev.established,
            deadline=loop.time() + self.queue_timeout,
        )
        self.start()

    def start(self) -> None:
        """Dial queued flows while slots are free (globally and per destination)."""
        d = self.driver
        queue = self.queue
        stack = d.stack
        while not d.stopping and (nxt := queue.pop()) is not None:
            fid, key, ev = nxt
            if not ev.established and stack.syn_flood_mode:
                queue.done(key)
                stack.tcp_handshake_first(fid)
                continue
            task = d.start_dial(ev)
            # A done callback, not a finally: a task cancelled before it ever ran has no
            # finally to run, and its slot must come back all the same.
            task.add_done_callback(functools.partial(self._ended, key))
        if len(queue):
            d.limited_log.log(
                logging.INFO, "dial-queue",
                "%d flows wait for an upstream connection slot (%d dials in progress)",
                len(queue), queue.active,
            )
        self._arm()

    def _ended(self, key: str, _task: object = None) -> None:
        self.queue.done(key)
        if len(self.queue):
            self.start()

    def flow_closed(self, fid: int) -> None:
        """The app went away: drop its place in the queue, if it had one."""
        if self.queue.discard(fid) is not None:
            self._arm()

    def handshake_first_for_queued(self) -> None:
        """Under a SYN flood, queued flows whose app has not completed the handshake give
        up their place: the stack completes the handshake first (see :meth:`request`);
        real apps come back ahead of them, spoofed ones never."""
        for fid in self.queue.take_unverified():
            with contextlib.suppress(FlowStateError):
                self.driver.stack.tcp_handshake_first(fid)
        self._arm()

    def close(self) -> None:
        """On shutdown: refuse every queued flow, stop the timer."""
        for fid, _ev in self.queue.clear():
            with contextlib.suppress(FlowStateError):
                self.driver.stack.tcp_reject(fid)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        at = self.queue.next_deadline()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            self._timer = self.driver.loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        d = self.driver
        expired = self.queue.expired(d.loop.time())
        for fid, _ev in expired:
            d.count_failed_flow()
            self.expired += 1
            with contextlib.suppress(FlowStateError):
                d.stack.tcp_reject(fid, "host")
        if expired:
            dst = expired[-1][1].dst
            d.limited_log.log(
                logging.WARNING, "dial-queue-timeout",
                "flow to %s:%d refused: no upstream connection slot within %.0fs "
                "(%d dials in progress)", dst[0], dst[1], self.queue_timeout,
                self.queue.active,
            )
        self._arm()
        d.schedule_pump()
