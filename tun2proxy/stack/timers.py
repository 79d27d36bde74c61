"""TimerHeap: one heap of deadlines for every TCP flow and UDP session, with lazy deletion.

Each flow remembers the deadline of its live entry in ``sched``; an entry whose deadline is
not the flow's ``sched`` any more is stale and skipped when it reaches the top. A flow whose
deadline moves later keeps its earlier entry: when that fires and nothing is due, the flow
reports its next deadline and gets a new entry (``DESIGN.md`` §2 rule 7). Idle flows cost
nothing.

Lazy deletion leaves an entry behind for every earlier deadline and for every flow that ends
before its timer: under churn that is one per closed flow, each holding its connection until
the deadline passes (tens of seconds). The stack calls :meth:`compact` when stale entries
outnumber live ones 2:1 (and when no flow is left), so the heap stays proportional to the
flows.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from ..udp.session import UdpSession
from .flow import StackConnection

__all__ = ["TimerHeap"]

Timed = StackConnection | UdpSession


class TimerHeap:
    """Deadlines of the stack's flows and sessions, earliest first."""

    __slots__ = ("_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timed]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, obj: Timed, deadline: float) -> None:
        """Add an entry for ``obj`` at ``deadline`` (its live one from now on)."""
        obj.sched = deadline
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, obj))

    def schedule(self, conn: StackConnection) -> None:
        """Make sure ``conn`` has an entry no later than its next deadline."""
        d = conn.poll_at()
        if d is None:
            return
        s = conn.sched
        # Lazy deletion: only an earlier deadline needs a new heap entry; a later one is
        # found when the earlier entry fires and the connection reports nothing due.
        if s is None or d < s:
            self.push(conn, d)

    def pop_due(self, now: float) -> Timed | None:
        """The next flow whose live deadline is ``now`` or earlier (its entry removed), or
        None. Entries pushed while the due ones are handled are seen by the same loop."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, obj = heapq.heappop(heap)
            if obj.sched != deadline:
                continue  # stale entry
            obj.sched = None
            return obj
        return None

    def next_deadline(self) -> float | None:
        """The earliest live deadline (stale entries on top are dropped), or None."""
        heap = self._heap
        while heap:
            deadline, _, obj = heap[0]
            if obj.sched == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    def compact(self, live: Callable[[Timed], bool]) -> None:
        """Drop every entry that is stale or whose flow ``live`` says has ended (in place:
        a caller may be looping over :meth:`pop_due`)."""
        heap = self._heap
        heap[:] = [e for e in heap if e[2].sched == e[0] and live(e[2])]
        heapq.heapify(heap)
