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
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

__all__ = ["MallocTrimmer", "malloc_trim_function"]

log = logging.getLogger("tun2proxy")


def malloc_trim_function() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
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
        self._trim = trim if trim is not None else malloc_trim_function()
        self._seen = churn()
        self._handle: asyncio.TimerHandle | None = None
        #: Trims done so far.
        self.trims = 0

    @property
    def available(self) -> bool:
        """Whether this C library can trim."""
        return self._trim is not None

    def start(self) -> None:
        """Start checking (nothing where the C library cannot trim)."""
        if self._trim is not None and self._handle is None:
            self._handle = self.loop.call_later(self.interval, self._tick)

    def stop(self) -> None:
        """Stop checking."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        self._handle = self.loop.call_later(self.interval, self._tick)
        n = self.churn()
        if n == self._seen or self._trim is None:
            return
        self._seen = n
        try:
            self._trim(0)
        except Exception as e:  # never let a trim take the tunnel down
            log.debug("malloc_trim failed: %r", e)
            return
        self.trims += 1
