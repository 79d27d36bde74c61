"""The serve loop: one Driver on one link until a signal, a link failure or the ``--unshare``
command's exit; signal handling (SIGINT/SIGTERM stop, SIGUSR1 logs the counters, SIGHUP
reloads ``--config``: :mod:`.reload`; the main process passes SIGUSR1 and a successful
SIGHUP on to the workers); watching the worker processes; the event loop choice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Callable, Coroutine, Sequence

from ..control.address import ControlError
from ..control.setup import Observers, start_observers
from ..dns.pool import SlotDirectory
from ..driver.loop import Driver
from ..errors import ConfigError
from ..link.base import Link
from ..link.impair import ImpairedLink
from ..link.unshare import PrivateNamespace
from ..workers import WorkerSet
from .memory import MallocTrimmer
from .plan import Plan
from .reload import Reloader, ReloadResult
from .settings import driver_config, stack_config
from .startup import StartupSignals
from .taps import open_capture, start_metrics
from .upstreams import build_upstream, make_egress

__all__ = ["driver_config", "loop_factory", "run_on_loop", "serve", "stack_config"]

log = logging.getLogger("tun2proxy")


class _Watch:
    """The fds the serve loop watches (pidfds of the child and the workers), closed at the
    end."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fds: list[int] = []

    def add(self, pid: int, callback: Callable[[int], None]) -> int:
        fd = os.pidfd_open(pid)
        self.fds.append(fd)
        self.loop.add_reader(fd, callback, fd)
        return fd

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError, ValueError):
                self.loop.remove_reader(fd)
            os.close(fd)
        self.fds.clear()


async def serve(
    plan: Plan,
    addresses: list[str],
    link: Link,
    child: PrivateNamespace | None,
    startup: StartupSignals,
    worker: tuple[int, int] = (0, 1),
    directory: SlotDirectory | None = None,
    workers: WorkerSet | None = None,
    *,
    own_nameservers: Sequence[str] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Run the driver until a signal, a link failure or the child's exit (one worker's
    driver with --workers; ``workers`` is given to the main process, which watches them).

    The signal handlers are installed before anything else: a SIGINT/SIGTERM that arrived
    while starting (recorded by ``startup``) or arrives before the driver runs ends the run
    at once with exit code 0, the ``--unshare`` command never started.

    ``own_nameservers`` goes to :func:`~tun2proxy.app.upstreams.make_egress` (``--setup``);
    ``on_ready`` is called once the driver is built, just before it runs (readiness for
    systemd, the PID file).
    """
    opts = plan.options
    loop = asyncio.get_running_loop()
    exit_code = 0
    driver: Driver | None = None
    observers: Observers | None = None
    released = False
    stop_requested = False
    signals = (signal.SIGINT, signal.SIGTERM)

    def on_signal(signum: int) -> None:
        nonlocal stop_requested
        if child is not None and released:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)
            return
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop_requested = True
        if driver is not None:
            driver.stop()

    for s in signals:
        loop.add_signal_handler(s, on_signal, s)
    watch = _Watch(loop)
    try:
        if startup.received is not None:
            on_signal(startup.received)
        try:
            link = open_capture(opts, link, worker[0])  # innermost: what the device carries
        except ConfigError as e:
            log.error("%s", e)
            link.close()
            return 1
        if plan.impairment is not None:
            imp, seed = plan.impairment
            link = ImpairedLink(link, imp, seed)
            log.warning("impairing the link on purpose: %s (seed %d)", opts.impair, seed)
        upstream = build_upstream(plan, addresses)
        stack = Driver.make_stack(
            stack_config(opts, link.mtu, link.checksum_offload, link.gso_max_size, worker[1])
        )
        driver = Driver(
            stack, link, upstream, driver_config(opts, worker, directory),
            egress=make_egress(plan, own_nameservers),
        )
        if worker[0] == 0:
            log.info("upstream %s", upstream.describe())
        try:  # flow logs, --stats-interval, --control
            observers = await start_observers(opts, driver, plan.control_token, worker)
        except ControlError as e:
            log.error("%s", e)
            stop_requested, exit_code = True, 1

        def on_usr1() -> None:
            assert driver is not None
            log.info("stats %s", json.dumps(driver.stats(), sort_keys=True, default=str))
            if workers is not None:
                workers.signal_all(signal.SIGUSR1)

        loop.add_signal_handler(signal.SIGUSR1, on_usr1)

        def forward(result: ReloadResult) -> None:
            if workers is not None and result.path is not None:
                workers.signal_all(signal.SIGHUP)  # each worker re-reads the file itself

        reloader = Reloader(plan, driver, worker, forward)
        reloads: set[asyncio.Task[ReloadResult]] = set()

        def on_hup() -> None:
            task = loop.create_task(reloader.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        if startup.reload_requested:  # a SIGHUP came while starting: reload now
            startup.reload_requested = False
            on_hup()
        if workers is not None:
            for index, wpid in workers.pids.items():

                def on_worker_exit(wfd: int, index: int = index, wpid: int = wpid) -> None:
                    loop.remove_reader(wfd)
                    code = workers.reap(wpid)
                    if driver is not None and not driver.stopping:  # a crash, not our stop
                        log.error(
                            "worker %d exited (status %s): its flows are gone; the kernel "
                            "spreads new ones over the remaining queues", index, code,
                        )

                watch.add(wpid, on_worker_exit)
        if child is not None:
            pid = child.pid

            def on_child_exit(fd: int) -> None:
                nonlocal exit_code
                loop.remove_reader(fd)
                _, status = os.waitpid(pid, 0)
                exit_code = os.waitstatus_to_exitcode(status)
                if exit_code < 0:
                    exit_code = 128 - exit_code
                assert driver is not None
                driver.stop()

            if stop_requested:
                child.abandon()  # it exits without running the command
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            else:
                watch.add(pid, on_child_exit)
                child.release()
                released = True
        trimmer: MallocTrimmer | None = None
        if opts.malloc_trim > 0:
            d = driver

            def churn() -> int:
                st = d.stack.stats_counters
                return st.tcp_accepted + st.udp_sessions_opened + d.flows_failed

            trimmer = MallocTrimmer(loop, opts.malloc_trim, churn)
            trimmer.start()
        if stop_requested:
            link.close()
        else:
            try:
                metrics = start_metrics(opts, driver, worker[0])
            except ConfigError as e:
                log.error("%s", e)
                link.close()
                return 1
            if on_ready is not None:
                on_ready()
            _freeze_startup_objects()
            try:
                await driver.run()
            finally:
                if metrics is not None:
                    metrics.close()
                if trimmer is not None:
                    trimmer.stop()
    finally:
        if observers is not None:
            await observers.close()
        for s in (*signals, signal.SIGUSR1, signal.SIGHUP):
            loop.remove_signal_handler(s)
        startup.reinstall()  # not the default handlers while shutting down (and tearing down)
        watch.close()
        if driver is not None and worker[1] > 1:
            st = driver.stats()
            log.info(
                "worker %d of %d done: %s TCP flows, %s upstream failures", worker[0],
                worker[1], st.get("flows_opened"), st.get("flows_failed"),
            )
        if workers is not None and workers.pids:
            if workers.stop() and exit_code == 0 and child is None:
                exit_code = 1
    if child is None and driver is not None and driver.link_error is not None:
        return 1
    return exit_code


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop --loop asks for: None for asyncio's own; uvloop's when chosen (or, with
    ``auto``, when it is installed)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        if choice == "uvloop":
            raise
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _freeze_startup_objects() -> None:
    """Move everything start-up made (modules, the options, the stack's tables) out of the
    cyclic collector's reach: it is never garbage, and every full collection would walk it
    again; forked workers keep those pages shared too. ``gc.freeze`` after one collection,
    as the ``gc`` docs advise for a pre-fork server."""
    import gc

    gc.collect()
    gc.freeze()


def run_on_loop(
    choice: str, startup: StartupSignals, coro: Coroutine[object, object, int]
) -> int:
    """Run ``coro`` on the event loop ``choice`` names; from here on a start-up signal is
    only recorded (the coroutine's own handlers take over)."""
    factory = loop_factory(choice)
    log.debug("event loop: %s", "asyncio" if factory is None else "uvloop")
    startup.defer()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)
