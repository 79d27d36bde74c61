"""Logging helpers: :class:`RateLimitedLog`, one line per kind of event per interval, and
:class:`JsonFormatter`, JSON lines for log shippers (``--log-format json``).

The rate limit is used where a remote peer or an application could otherwise make us log on
every packet or flow (upstream failures, routing loops, authentication failures).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

__all__ = ["JSON_KEYS", "JsonFormatter", "RateLimitedLog"]

#: The keys every JSON log line has (more follow for some lines: ``event`` and its fields).
JSON_KEYS = ("ts", "level", "logger", "msg")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601 with milliseconds), ``level``
    (``info``, ``warning``...), ``logger``, ``msg`` (the text line), ``worker`` with
    ``--workers``, ``exc`` with a traceback, and the record's ``fields`` (a dict given as
    ``extra={"fields": {...}}``, e.g. ``event: "flow"`` and the flow's counters) merged in.
    """

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        t = time.gmtime(record.created)
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.worker is not None:
            out["worker"] = self.worker
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for k, v in fields.items():
                out.setdefault(str(k), v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


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
