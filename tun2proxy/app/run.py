"""The command's run, in order: settings -> (``--cleanup`` and exit) -> ``--setup``'s checks ->
parts -> proxies' addresses -> the ``--unshare`` child -> links -> ``--setup``'s host routing
-> workers -> PID file -> serve -> the host given back. Each step undoes what it did when a
later one fails or a start-up signal arrives (:class:`~tun2proxy.app.startup.StopEarly`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..dns.pool import FakeIpPool, SlotDirectory
from ..driver.shared import SharedSlotDirectory
from ..errors import ConfigError
from ..hostsetup import SetupError
from ..link.fd import FdLink
from ..link.unshare import PrivateNamespace, spawn_private
from ..options import Options, UsageError, parse_args, render_config
from ..options.values import one_line
from ..service import notify_ready, remove_pid_file, write_pid_file
from ..workers import WorkerSet
from .links import close_links, open_links
from .plan import Plan, check_host, prepare
from .serve import run_on_loop, serve
from .startup import StartupSignals, raise_fd_limit, setup_logging
from .upstreams import proxy_hosts, resolve_hosts

__all__ = ["configure", "run"]

if TYPE_CHECKING:
    from .hostrun import HostRun, Preflight

log = logging.getLogger("tun2proxy")


def _usage_error(e: UsageError) -> int:
    sys.stderr.write(f"tun2proxy: error: {one_line(str(e))}\n")
    return 2


def configure(argv: Sequence[str]) -> Plan:
    """Parse and check ``argv`` and the config file, and build the run's parts, without
    starting anything (``--print-config`` skips the checks of this host).

    Raises:
        SystemExit: 0 after ``--help`` or ``--version``; 2 after one line on stderr when a
            setting is wrong.
    """
    try:
        opts = parse_args(argv)
        plan = dataclasses.replace(prepare(opts), argv=tuple(argv))
        if not opts.print_config:
            check_host(opts)
    except UsageError as e:
        raise SystemExit(_usage_error(e)) from None
    return plan


def _spawn(opts: Options) -> PrivateNamespace | None:
    if not opts.unshare:
        return None
    resolv = (
        "# written by tun2proxy --unshare: every lookup goes through the tunnel\n"
        f"nameserver {opts.dns_addr[0]}\n"
    )
    return spawn_private(list(opts.command), resolv_conf=resolv)


def _drop_child(child: PrivateNamespace | None) -> None:
    if child is not None:
        with contextlib.suppress(OSError):
            child.abandon()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child.pid, 0)


def run(argv: Sequence[str], startup: StartupSignals) -> int:
    """Run the command ``argv`` asks for; its exit code."""
    plan = configure(argv)
    opts = plan.options
    if opts.print_config:
        for note in opts.notes:
            sys.stderr.write(f"tun2proxy: warning: {note}\n")
        sys.stdout.write(render_config(opts))
        return 0
    setup_logging(opts.verbosity, fmt=opts.log_format)
    startup.install_reload()  # a SIGHUP while starting must not end the run (or a worker)
    for note in opts.notes:
        log.warning("%s", note)
    if opts.cleanup:
        from .hostrun import cleanup_command

        return cleanup_command(opts)
    pre: Preflight | None = None
    if opts.setup:
        from .hostrun import HostRun, preflight, setup_error  # only --setup changes the host

        try:
            pre = preflight(opts)  # before anything is changed, the TUN included
        except SetupError as e:
            return setup_error(e)
    raise_fd_limit(opts.max_sessions)
    try:
        addresses = resolve_hosts(proxy_hosts(plan), opts.connect_timeout)
    except ConfigError as e:
        log.error("%s", e)
        return 1
    host: HostRun | None = None
    if pre is not None:
        try:
            host = HostRun(opts, addresses, pre)
        except SetupError as e:
            return setup_error(e)
    restored = True
    try:
        code = _run(plan, addresses, startup, host)
    finally:
        if host is not None:
            restored = host.teardown()  # also after a signal or an error: what was added goes
        if opts.pid_file:
            remove_pid_file(opts.pid_file)
    return code if restored or code != 0 else 1


def _run(
    plan: Plan, addresses: list[str], startup: StartupSignals, host: HostRun | None
) -> int:
    """Open the links, set the host up (--setup), fork the workers and serve."""
    opts = plan.options
    child: PrivateNamespace | None = None
    links: list[FdLink] = []
    workers: WorkerSet | None = None
    try:
        try:
            child = _spawn(opts)
        except OSError as e:
            log.error("--unshare: cannot create a network namespace: %s (run as root)", e)
            return 1
        try:
            links = open_links(opts, child)
        except UsageError as e:
            _drop_child(child)
            return _usage_error(e)
        except (OSError, ValueError, RuntimeError) as e:
            _drop_child(child)
            log.error("cannot open the TUN device: %s", e)
            return 1
        n = len(links)
        if host is not None:
            try:
                host.apply(startup)
            except SetupError as e:
                from .hostrun import setup_error

                close_links(links)
                return setup_error(e)
        own_dns = host.own_nameservers if host is not None else None
        workers, directory = _fork_workers(plan, addresses, links, startup, own_dns)
        if workers is not None:
            for link in links[1:]:
                os.close(link.fd)  # the workers' queues are theirs alone
            links = links[:1]
    except BaseException:  # a signal while starting: undo what was done
        close_links(links)
        _drop_child(child)
        if workers is not None:
            workers.stop()
        raise
    if opts.pid_file:
        try:
            write_pid_file(opts.pid_file)
        except OSError as e:
            if workers is not None:
                workers.stop()
            close_links(links)
            log.error("--pid-file %s: cannot write it: %s", opts.pid_file, e.strerror or e)
            return 1

    def ready() -> None:
        notify_ready(host.setup.summary if host is not None and host.setup is not None
                     else f"serving {links[0].name}")

    try:
        return run_on_loop(
            opts.loop, startup,
            serve(plan, addresses, links[0], child, startup, (0, n), directory, workers,
                  own_nameservers=own_dns, on_ready=ready),
        )
    except KeyboardInterrupt:  # SIGINT was not ours to handle (an embedding program's)
        if workers is not None:
            workers.stop()
        return 130


def _fork_workers(
    plan: Plan, addresses: list[str], links: list[FdLink], startup: StartupSignals,
    own_dns: list[str] | None = None,
) -> tuple[WorkerSet | None, SlotDirectory | None]:
    """With --workers, fork one process per extra queue; each serves its own link."""
    opts = plan.options
    n = len(links)
    if n == 1:
        return None, None
    directory: SlotDirectory | None = None
    if opts.dns == "virtual":
        pool = FakeIpPool(opts.virtual_dns_pool, opts.virtual_dns_pool6, capacity=1)
        directory = SharedSlotDirectory(pool.slots)
    workers = WorkerSet()
    fds = [link.fd for link in links]
    for i in range(1, n):

        def run(i: int = i) -> int:
            setup_logging(opts.verbosity, f"[{i}]", opts.log_format)
            return run_on_loop(
                opts.loop, startup, serve(plan, addresses, links[i], None, startup, (i, n),
                                          directory, own_nameservers=own_dns)
            )

        workers.fork(i, run, [fd for j, fd in enumerate(fds) if j != i])
    setup_logging(opts.verbosity, "[0]", opts.log_format)
    return workers, directory
