"""The dial queue: flows waiting for an upstream connection slot, fair across destinations.

No asyncio and no clock here (times come in as ``now``): the driver owns the tasks and the
timer. Rules:

* at most ``max_active`` dials in flight, and at most ``max_active_per_key`` to one
  destination, so that one black-holed host (every dial hanging until the connect timeout)
  holds a few slots, not all of them;
* a flow beyond those limits waits in the queue (it costs no upstream socket) until a slot
  frees or its deadline passes;
* flows whose app completed the handshake (``verified``) go before those that did not;
  destinations take turns (round robin), flows of one destination go in arrival order.

The queue's size is bounded by the stack's admission limits (``max_pending``,
``max_queued``): every entry is a flow the stack admitted and has not seen answered.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Generic, TypeVar

__all__ = ["DialQueue"]

T = TypeVar("T")


class _Entry(Generic[T]):
    """One queued flow."""

    __slots__ = ("deadline", "item", "key", "verified")

    def __init__(self, key: str, item: T, verified: bool, deadline: float) -> None:
        self.key = key
        self.item = item
        self.verified = verified
        self.deadline = deadline


class _Dest:
    """One destination's dials in flight and queued flow ids (lazily deleted)."""

    __slots__ = ("active", "live", "queues")

    def __init__(self) -> None:
        self.active = 0
        #: Flow ids waiting, verified ones in [1], others in [0]; may hold stale ids.
        self.queues: tuple[deque[int], deque[int]] = (deque(), deque())
        #: How many of the ids in each deque are still queued.
        self.live = [0, 0]


class DialQueue(Generic[T]):
    """Flows waiting for a dial slot (see the module docstring)."""

    def __init__(self, max_active: int, max_active_per_key: int) -> None:
        if max_active < 1 or max_active_per_key < 1:
            raise ValueError("max_active and max_active_per_key must be >= 1")
        self.max_active = max_active
        self.max_active_per_key = max_active_per_key
        self.active = 0
        self._entries: dict[int, _Entry[T]] = {}
        self._dests: dict[str, _Dest] = {}
        #: Destinations with room for a dial and (maybe) queued flows, one ring per class:
        #: [0] unverified, [1] verified. Order is the round robin.
        self._rings: tuple[OrderedDict[str, None], OrderedDict[str, None]] = (
            OrderedDict(), OrderedDict()
        )
        self._times: deque[tuple[float, int]] = deque()
        self._unverified = 0

    def __len__(self) -> int:
        return len(self._entries)

    def set_limits(self, max_active: int, max_active_per_key: int) -> None:
        """New limits, for the flows dialled from now on (a reload). Dials in flight keep
        their slots; a destination over a lowered limit gets its next slot once it is under
        it, one under a raised limit takes its turn again at once."""
        if max_active < 1 or max_active_per_key < 1:
            raise ValueError("max_active and max_active_per_key must be >= 1")
        self.max_active = max_active
        self.max_active_per_key = max_active_per_key
        for key, d in self._dests.items():
            for cls in (0, 1):
                ring = self._rings[cls]
                if d.queues[cls] and d.active < max_active_per_key:
                    ring[key] = None  # (keeps its place when it is in the ring already)
                else:
                    ring.pop(key, None)

    def __contains__(self, fid: object) -> bool:
        return fid in self._entries

    @property
    def unverified(self) -> int:
        """Queued flows whose app has not completed the handshake."""
        return self._unverified

    def push(self, fid: int, key: str, item: T, *, verified: bool, deadline: float) -> None:
        """Queue flow ``fid`` for destination ``key`` until ``deadline``."""
        if fid in self._entries:
            raise ValueError(f"flow {fid} is queued already")
        self._entries[fid] = _Entry(key, item, verified, deadline)
        cls = 1 if verified else 0
        if not verified:
            self._unverified += 1
        d = self._dests.get(key)
        if d is None:
            d = self._dests[key] = _Dest()
        d.queues[cls].append(fid)
        d.live[cls] += 1
        if d.active < self.max_active_per_key:
            self._rings[cls][key] = None  # (no-op when it is in the ring already)
        self._times.append((deadline, fid))

    def pop(self) -> tuple[int, str, T] | None:
        """The next flow to dial now, counted as in flight until :meth:`done` is called for
        its destination; None when no slot is free or nothing is waiting."""
        if self.active >= self.max_active:
            return None
        for cls in (1, 0):
            ring = self._rings[cls]
            while ring:
                key = next(iter(ring))
                del ring[key]
                d = self._dests[key]
                q = d.queues[cls]
                while q:
                    fid = q.popleft()
                    e = self._entries.get(fid)
                    if e is not None and e.key == key and e.verified == bool(cls):
                        break
                else:
                    self._gc(key, d)
                    continue
                del self._entries[fid]
                d.live[cls] -= 1
                if not cls:
                    self._unverified -= 1
                d.active += 1
                self.active += 1
                if d.active >= self.max_active_per_key:
                    self._rings[1 - cls].pop(key, None)  # full: out of both rings
                elif q:
                    ring[key] = None  # to the back: the next destination goes first
                return fid, key, e.item
        return None

    def done(self, key: str) -> None:
        """A dial to ``key`` ended (whatever its outcome): its slot is free."""
        d = self._dests[key]
        d.active -= 1
        self.active -= 1
        if d.active == self.max_active_per_key - 1:
            for cls in (0, 1):
                if d.queues[cls]:
                    self._rings[cls][key] = None
        self._gc(key, d)

    def discard(self, fid: int) -> T | None:
        """Take flow ``fid`` out of the queue (its app went away); its item, or None."""
        e = self._entries.pop(fid, None)
        if e is None:
            return None
        cls = 1 if e.verified else 0
        if not e.verified:
            self._unverified -= 1
        d = self._dests[e.key]
        d.live[cls] -= 1
        q = d.queues[cls]
        if len(q) > 2 * d.live[cls] + 16:
            # Mostly stale ids: compact, so a destination that never gets a slot (every dial
            # hanging) does not pile up the ids of flows long gone.
            keep = _live_ids(self._entries, q, e.key, cls)
            q.clear()
            q.extend(keep)
        self._gc(e.key, d)
        return e.item

    def take_unverified(self) -> list[int]:
        """Take out every queued flow whose app has not completed the handshake."""
        fids = [fid for fid, e in self._entries.items() if not e.verified]
        for fid in fids:
            self.discard(fid)
        return fids

    def expired(self, now: float) -> list[tuple[int, T]]:
        """Take out the flows whose deadline has passed (oldest first)."""
        out: list[tuple[int, T]] = []
        times = self._times
        while times and times[0][0] <= now:
            deadline, fid = times.popleft()
            e = self._entries.get(fid)
            if e is not None and e.deadline == deadline:
                self.discard(fid)
                out.append((fid, e.item))
        return out

    def next_deadline(self) -> float | None:
        """The earliest deadline of a queued flow, or None."""
        times = self._times
        while times:
            deadline, fid = times[0]
            e = self._entries.get(fid)
            if e is not None and e.deadline == deadline:
                return deadline
            times.popleft()
        return None

    def clear(self) -> list[tuple[int, T]]:
        """Take out every queued flow (on shutdown)."""
        out = [(fid, e.item) for fid, e in self._entries.items()]
        for fid, _ in out:
            self.discard(fid)
        self._times.clear()
        return out

    def stats(self) -> dict[str, int]:
        """Queued flows, dials in flight, and destinations known."""
        return {
            "queued": len(self._entries),
            "queued_unverified": self._unverified,
            "dialling": self.active,
            "destinations": len(self._dests),
        }

    def table_sizes(self) -> dict[str, int]:
        """Queued flows, destinations known, and queue deadlines (lazily deleted)."""
        return {
            "dial_queue": len(self._entries),
            "dial_destinations": len(self._dests),
            "dial_deadlines": len(self._times),
        }

    def _gc(self, key: str, d: _Dest) -> None:
        if d.active == 0 and not d.live[0] and not d.live[1]:
            del self._dests[key]
            self._rings[0].pop(key, None)
            self._rings[1].pop(key, None)


def _live_ids(entries: dict[int, _Entry[T]], q: deque[int], key: str, cls: int) -> list[int]:
    """The ids in ``q`` still queued for destination ``key`` in class ``cls``, in order."""
    seen: set[int] = set()
    out = []
    for f in q:
        e = entries.get(f)
        if e is not None and e.key == key and e.verified == bool(cls) and f not in seen:
            seen.add(f)
            out.append(f)
    return out
