"""``--workers N``: one process per queue of a multi-queue TUN device (Linux).

The device is opened with ``IFF_MULTI_QUEUE`` once per worker; the kernel spreads the
packets it sends into the device over the queues by a hash of each flow's addresses and
ports, so every packet of a TCP connection reaches the same queue, and a process reading
that queue owns the connection whole: its own :class:`~tun2proxy.stack.NetStack`, its own
event loop, its own upstream sockets. Replies may be written to any queue; each worker
writes to its own.

What the workers share, and how:

* virtual DNS: a flow may reach another worker than the query that made its fake address;
  the mappings live in a :class:`~tun2proxy.driver.shared.SharedSlotDirectory` mapped
  before the fork (each worker hands out only its own share of the addresses);
* limits (``--max-sessions``, ``--max-pending``, ``--memory-limit``,
  ``--max-udp-sessions``): divided evenly, so their sum is the configured figure;
* stats: ``SIGUSR1`` to the main process is passed on; every worker logs its own line.

What is not shared: UDP's endpoint-independent mapping holds within a worker. An app
socket that talks to several destinations may land on several workers (the kernel's hash
includes the destination), each with its own association, so a STUN server sees the same
source from more than one mapped port. With one worker (the default) the mapping is
endpoint-independent for every destination.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable

__all__ = ["WorkerSet", "set_parent_death_signal"]

log = logging.getLogger("tun2proxy")

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        from .link.netns import libc  # ctypes only where workers are forked

        libc().prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


class WorkerSet:
    """The worker processes the main process forked, by index (1..N-1; the main process is
    worker 0)."""

    def __init__(self) -> None:
        self.pids: dict[int, int] = {}

    def fork(self, index: int, run: Callable[[], int], close_fds: list[int]) -> None:
        """Fork worker ``index``: the child closes ``close_fds``, runs ``run`` and exits with
        its result (never returning here); the parent records the PID."""
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                # Until the worker's loop takes the signals over, SIGTERM is a clean exit.
                signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
                set_parent_death_signal()
                for fd in close_fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                code = run()
            except KeyboardInterrupt:
                code = 130
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        self.pids[index] = pid

    def signal_all(self, sig: int) -> None:
        """Send ``sig`` to every worker still running."""
        for pid in self.pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def reap(self, pid: int) -> int | None:
        """Collect a worker that exited; its exit code, or None if it is still running."""
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            return None
        for i, p in list(self.pids.items()):
            if p == pid:
                del self.pids[i]
        return os.waitstatus_to_exitcode(status)

    def stop(self, timeout: float = 5.0) -> int:
        """Stop every worker (SIGTERM, then SIGKILL after ``timeout``); the worst exit code."""
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        worst = 0
        for index, pid in list(self.pids.items()):
            code: int | None = None
            while code is None:
                code = self.reap(pid)
                if code is None:
                    if time.monotonic() > deadline:
                        log.error("worker %d did not stop; killing it", index)
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                        _, status = os.waitpid(pid, 0)
                        self.pids.pop(index, None)
                        code = os.waitstatus_to_exitcode(status)
                    else:
                        time.sleep(0.02)
            if code != 0:
                log.warning("worker %d exited with status %d", index, code)
                worst = max(worst, 1)
        return worst
