"""Name resolution for tun2proxy's own sockets (I/O): one place, bounded, loop-independent.

Every upstream that resolves a name — the direct upstream's TCP and UDP destinations, a
proxy's own server name, a UDP relay named by a SOCKS5 reply — resolves it through its
:class:`~.egress.Egress`, which comes here unless a resolver of its own is installed
(``--setup``'s :class:`~.own_dns.OwnResolver`):

* IP literals are answered at once, in the shape ``getaddrinfo`` gives, without a thread hop;
* names go to ``socket.getaddrinfo`` on a small pool of daemon threads owned by the
  :class:`SystemResolver` — not the event loop's ``getaddrinfo`` (uvloop hands it to libuv's
  four-thread pool, shared with file I/O; asyncio to the loop's default executor, whose
  threads are joined at exit, so a lookup stuck on a dead DNS server delays the exit);
* at most ``max_workers`` lookups run at once, and at most ``max_queued`` wait; beyond that a
  lookup fails at once (``EAI_AGAIN``) rather than queueing without bound.

A cancelled lookup's thread finishes its ``getaddrinfo`` and its answer is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections import deque
from typing import Any

__all__ = ["SystemResolver", "literal_answer"]



def literal_answer(host: str, port: int | None, family: int = 0,
                   type: int = socket.SOCK_STREAM) -> list[Any] | None:
    """``getaddrinfo``'s answer for IP literal ``host`` (empty when ``family`` excludes it);
    None for a name."""
    for fam in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(fam, host)
        except (OSError, ValueError):
            continue
        if family not in (0, fam):
            return []
        addr = (host, port or 0) if fam == socket.AF_INET else (host, port or 0, 0, 0)
        proto = (socket.IPPROTO_TCP if type == socket.SOCK_STREAM
                 else socket.IPPROTO_UDP if type == socket.SOCK_DGRAM else 0)
        return [(fam, type or socket.SOCK_STREAM, proto, "", addr)]
    return None


class _Job:
    __slots__ = ("args", "future", "loop")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[list[Any]],
        args: tuple[str, int | None, int, int],
    ) -> None:
        self.loop = loop
        self.future = future
        self.args = args


def _deliver(fut: asyncio.Future[list[Any]], result: list[Any] | None,
             exc: BaseException | None) -> None:
    if fut.done():
        return  # cancelled by the caller meanwhile
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result or [])


class SystemResolver:
    """``socket.getaddrinfo`` on up to ``max_workers`` daemon threads, ``max_queued``
    lookups waiting at most. Usable from any event loop (and several)."""

    def __init__(self, max_workers: int = 8, max_queued: int = 256) -> None:
        if max_workers < 1 or max_queued < 0:
            raise ValueError("max_workers must be >= 1 and max_queued >= 0")
        self.max_workers = max_workers
        self.max_queued = max_queued
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._queue: deque[_Job] = deque()
        self._threads = 0
        self._idle = 0
        #: Lookups answered, failed, and refused because the queue was full.
        self.counts = {"resolved": 0, "failed": 0, "refused": 0}

    @property
    def queued(self) -> int:
        """Lookups waiting for a thread now."""
        return len(self._queue)

    async def getaddrinfo(
        self, host: str, port: int | None, family: int = 0, type: int = socket.SOCK_STREAM
    ) -> list[Any]:
        """Like ``loop.getaddrinfo(host, port, family=family, type=type)``.

        Raises:
            socket.gaierror: the name does not resolve, or too many lookups are waiting.
        """
        lit = literal_answer(host, port, family, type)
        if lit is not None:
            return lit
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        with self._lock:
            if len(self._queue) >= self.max_queued and self._idle == 0:
                self.counts["refused"] += 1
                raise socket.gaierror(
                    socket.EAI_AGAIN, f"cannot resolve {host}: too many name lookups waiting"
                )
            self._queue.append(_Job(loop, fut, (host, port, family, type)))
            self._work.notify()
            if len(self._queue) > self._idle and self._threads < self.max_workers:
                self._threads += 1
                threading.Thread(target=self._run, name="t2p-resolver", daemon=True).start()
        return await fut

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue:
                    self._idle += 1
                    woke = self._work.wait(timeout=30.0)
                    self._idle -= 1
                    if not woke and not self._queue:
                        self._threads -= 1
                        return  # idle for 30 s: the thread ends (a new one starts on demand)
                job = self._queue.popleft()
            result: list[Any] | None = None
            exc: BaseException | None = None
            if job.future.done():
                continue  # the caller gave up while it waited
            host, port, family, type = job.args
            try:
                result = socket.getaddrinfo(host, port, family, type)
            except Exception as e:  # gaierror, UnicodeError: the caller's to see
                exc = e
            self.counts["failed" if exc is not None else "resolved"] += 1
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                job.loop.call_soon_threadsafe(_deliver, job.future, result, exc)
