"""Giving freed memory back to the system after churn (glibc ``malloc_trim``), I/O layer.

Under steady churn (thousands of short flows and UDP sessions a minute) glibc's malloc keeps
the memory the ended flows freed: a live allocation high in the heap stops it from shrinking
the heap on its own, so RSS creeps up though nothing is kept (``benchmarks/soak.py``: the
objects the garbage collector tracks stay flat while RSS grows, and a trim returns 3-6 MiB;
figures in docs/performance.md "Memory under churn"). :class:`MallocTrimmer` calls
``malloc_trim(0)`` at most every ``interval`` seconds, and only when flows ended since the
last time (an idle or steady tunnel costs nothing). Not glibc (musl, macOS): it does nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

__all__ = ["MallocTrimmer", "malloc_trim_function"]

log = logging.getLogger("tun2proxy")


def malloc_trim_function() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (ctypes is imported
    here, at the first trim: an idle tunnel never loads it; ``dlopen(NULL)`` finds the C
    library the interpreter runs on without ``find_library``'s subprocess and temp files)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        fn = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return,unused-ignore]


class MallocTrimmer:
    """Every ``interval`` seconds on ``loop``: ``malloc_trim(0)`` if ``churn()`` (a count of
    ended flows, e.g. flows opened + UDP sessions opened) moved since the last check.

    Args:
        loop: the event loop to run on.
        interval: seconds between checks (> 0).
        churn: a monotonic count; a trim happens only when it changed.
        trim: the trim function (default: glibc's; None there: the trimmer does nothing).
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, interval: float, churn: Callable[[], int],
        trim: Callable[[int], int] | None = None,
    ) -> None:
        self.loop = loop
        self.interval = interval
        self.churn = churn
        #: The trim function; looked up at the first trim unless given.
        self._trim = trim
        self._looked_up = trim is not None
        self._seen = churn()
        self._handle: asyncio.TimerHandle | None = None
        #: Trims done so far.
        self.trims = 0

    @property
    def available(self) -> bool:
        """Whether this C library can trim."""
        self._lookup()
        return self._trim is not None

    def _lookup(self) -> None:
        if not self._looked_up:
            self._looked_up = True
            self._trim = malloc_trim_function()

    def start(self) -> None:
        """Start checking (a check on a C library that cannot trim stops the checks)."""
        if self._handle is None:
            self._handle = self.loop.call_later(self.interval, self._tick)

    def stop(self) -> None:
        """Stop checking."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        self._handle = self.loop.call_later(self.interval, self._tick)
        n = self.churn()
        if n == self._seen:
            return
        self._seen = n
        self._lookup()
        if self._trim is None:
            self.stop()  # not glibc: nothing to do, ever
            return
        try:
            self._trim(0)
        except Exception as e:  # never let a trim take the tunnel down
            log.debug("malloc_trim failed: %r", e)
            return
        self.trims += 1
