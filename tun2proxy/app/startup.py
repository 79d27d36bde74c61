"""Start-up chores of the command: signals before the event loop runs, bounded blocking
calls, logging, the file descriptor limit.

A SIGINT or SIGTERM may arrive at any moment of start-up. Until the event loop runs, the
signal raises :class:`StopEarly` in the main thread (every blocking start-up step waits in a
way a signal interrupts: see :func:`call_bounded`), the steps already done are undone and
the process exits 0. Just before the loop runs, :meth:`StartupSignals.defer` turns the handler
into a recorder: an exception raised from a signal handler inside a running loop is lost
(uvloop logs it from ``Loop._read_from_self`` and carries on), so the loop's own handlers take
over and look at what was recorded.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from ..errors import ConfigError
from ..logutil import JsonFormatter

__all__ = [
    "TRACE",
    "StartupSignals",
    "StopEarly",
    "TimedOut",
    "call_bounded",
    "quiet_libraries",
    "raise_fd_limit",
    "set_log_level",
    "setup_logging",
]

log = logging.getLogger("tun2proxy")

TRACE = 5
_T = TypeVar("_T")


class StopEarly(BaseException):
    """SIGINT or SIGTERM arrived while starting (a BaseException: no ``except Exception``
    on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class StartupSignals:
    """SIGINT and SIGTERM during start-up: a clean stop at any point; a SIGHUP is kept for
    the serve loop (:meth:`install_reload`).

    :meth:`install` takes the signals whose handler is the default (an embedding program's
    own handler, or an ignored signal, is left alone); :meth:`defer` is called just before an
    event loop runs; :meth:`restore` puts the previous handlers back.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        #: A SIGHUP (reload) arrived while starting: the serve loop reloads once it runs.
        self.reload_requested = False
        self._raise = True
        self._hup = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Handle SIGINT/SIGTERM from now on (those still at their default)."""
        for s in self.SIGNALS:
            current = signal.getsignal(s)
            if current in (signal.SIG_DFL, signal.default_int_handler, None):
                self._previous[s] = current
                signal.signal(s, self._handler)

    def install_reload(self) -> None:
        """Record a SIGHUP from now on until the serve loop takes it over (if its handler is
        the default: one that would end the run). A Python handler, not SIG_IGN, so commands
        exec'd later do not inherit an ignored SIGHUP."""
        if signal.getsignal(signal.SIGHUP) == signal.SIG_DFL:
            signal.signal(signal.SIGHUP, self._on_hup)
            self._hup = True

    def reinstall(self) -> None:
        """Take SIGINT/SIGTERM (those :meth:`install` took) and SIGHUP back after an event
        loop gave them up (asyncio and uvloop put the default back, which would end the
        process while it shuts down and, with ``--setup``, before the host is restored)."""
        for s in self._previous:
            with contextlib.suppress(ValueError, OSError):  # not the main thread
                signal.signal(s, self._handler)
        if self._hup:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(signal.SIGHUP, self._on_hup)

    def _on_hup(self, signum: int, frame: object) -> None:
        self.reload_requested = True

    def _handler(self, signum: int, frame: object) -> None:
        self.received = signum
        if self._raise:
            raise StopEarly(signum)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Inside the block a SIGINT/SIGTERM is only recorded (a step that must not be cut
        half-way, such as adding the host's routes); after it, one that came raises
        :class:`StopEarly` as it would have."""
        raising = self._raise
        self._raise = False
        try:
            yield
        finally:
            self._raise = raising
        if raising and self.received is not None:
            raise StopEarly(self.received)

    def defer(self) -> None:
        """From now on only record a signal (an event loop is about to run)."""
        self._raise = False

    def restore(self) -> None:
        """Put back the handlers :meth:`install` replaced."""
        for s, previous in self._previous.items():
            with contextlib.suppress(ValueError, OSError):  # not the main thread
                if signal.getsignal(s) == self._handler:
                    signal.signal(s, previous)
        self._previous.clear()


class TimedOut(ConfigError):
    """A bounded start-up call did not finish in time."""


class _Result(Generic[_T]):
    """What a bounded call returned or raised, and when it finished."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: list[_T] = []
        self.error: BaseException | None = None


def call_bounded(fn: Callable[[], _T], timeout: float, what: str) -> _T:
    """``fn()`` on a daemon thread, waited for at most ``timeout`` seconds.

    The wait is interruptible: a signal handler that raises (:class:`StopEarly`) ends it at
    once. The thread is a daemon of its own, not an executor's, so a call that never
    returns (a resolver that gets no answer) neither keeps the process alive at exit nor
    delays it.

    Raises:
        TimedOut: ``fn`` took longer than ``timeout`` ("``what`` timed out after N s").
        BaseException: whatever ``fn`` raised.
    """
    result: _Result[_T] = _Result()

    def run() -> None:
        try:
            result.value.append(fn())
        except BaseException as e:
            result.error = e
        finally:
            result.done.set()

    threading.Thread(target=run, name=f"tun2proxy {what}", daemon=True).start()
    if not result.done.wait(timeout):
        raise TimedOut(f"{what} timed out after {timeout:g} s")
    if result.error is not None:
        raise result.error
    return result.value[0]


#: ``--verbosity`` -> the logging level.
LOG_LEVELS = {
    "off": logging.CRITICAL + 10,
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}


def setup_logging(level: str, tag: str = "", fmt: str = "text") -> None:
    """Log to stderr at ``level`` (``off`` ... ``trace``), lines tagged with ``tag``
    (``[N]``: worker N); ``fmt`` ``json`` writes JSON lines (:class:`JsonFormatter`)."""
    logging.addLevelName(TRACE, "TRACE")
    logging.basicConfig(
        level=LOG_LEVELS[level], stream=sys.stderr,
        format=f"tun2proxy{tag}: %(levelname)s %(message)s", force=True,
    )
    if fmt == "json":
        worker = int(tag.strip("[]")) if tag.strip("[]").isdigit() else None
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter(worker))
    quiet_libraries(level)


def quiet_libraries(level: str) -> None:
    """Keep chatty libraries' debug lines out of ``-v debug`` (call again after importing
    one that resets its level on import)."""
    # pyroute2 (--setup) logs every netlink message at debug: only at trace
    logging.getLogger("pyroute2").setLevel(
        logging.NOTSET if level == "trace" else max(LOG_LEVELS[level], logging.INFO)
    )


def set_log_level(level: str) -> None:
    """Log at ``level`` from now on (a reload), keeping the handler and its tag."""
    logging.getLogger().setLevel(LOG_LEVELS[level])
    quiet_libraries(level)


def raise_fd_limit(flows: int) -> None:
    """Every flow holds an upstream socket: lift the soft fd limit towards the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = flows + 256
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < flows + 64:
        log.warning(
            "the file descriptor limit (%d) is below --max-sessions %d; raise it with ulimit -n",
            soft, flows,
        )
