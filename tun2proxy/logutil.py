"""Logging helpers: :class:`RateLimitedLog`, one line per kind of event per interval.

Used where a remote peer or an application could otherwise make us log on every packet or
flow (upstream failures, routing loops, authentication failures).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """One log line per key per interval; repeats are counted and summarised in the next one.

    At most ``max_keys`` keys are remembered (then all are forgotten at once), so a flood of
    distinct keys costs bounded memory.
    """

    __slots__ = ("_clock", "_last", "_suppressed", "interval", "logger", "max_keys")

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        *,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> None:
        """Log ``msg % args`` at ``level`` unless ``key`` was logged within the interval."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        n = self._suppressed.pop(key, 0)
        if len(self._last) >= self.max_keys:
            self._last.clear()
            self._suppressed.clear()
        self._last[key] = now
        if n:
            msg += f" (and {n} more like it in the last {self.interval:.0f}s)"
        self.logger.log(level, msg, *args)

    def __len__(self) -> int:
        """How many keys are remembered now (at most ``max_keys``)."""
        return len(self._last)

    def warning(self, key: str, msg: str, *args: object) -> None:
        """:meth:`log` at WARNING."""
        self.log(logging.WARNING, key, msg, *args)
