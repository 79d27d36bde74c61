"""What the serve loop starts beside a Driver for observers: the flow log hook, the
``--stats-interval`` reporter and the ``--control`` server (per worker), and their stop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat

from ..driver.loop import Driver
from ..options import Options
from ..options.values import split_control_address
from .address import worker_address
from .reporting import FlowLog, StatsReporter

__all__ = ["Observers", "start_observers"]

log = logging.getLogger("tun2proxy")


class Observers:
    """The observers of one worker's driver (see :func:`start_observers`)."""

    def __init__(self) -> None:
        self.control: object | None = None
        self.reporter: StatsReporter | None = None

    async def close(self) -> None:
        """Stop the control server and the reporter."""
        from .server import ControlServer

        if isinstance(self.control, ControlServer):
            await self.control.close()
            self.control = None
        if self.reporter is not None:
            await self.reporter.close()
            self.reporter = None


async def start_observers(
    opts: Options, driver: Driver, token: str | None, worker: tuple[int, int]
) -> Observers:
    """Install the flow log, start ``--stats-interval`` and ``--control`` for ``driver``.

    Raises:
        ControlError: the control API cannot listen (one line).
    """
    obs = Observers()
    driver.add_flow_end_hook(FlowLog())
    path = opts.control_token_file
    if path and worker[0] == 0:
        with contextlib.suppress(OSError):
            mode = os.stat(path).st_mode
            if mode & 0o044:
                log.warning(
                    "--control-token-file %s is readable by other users (mode %04o): "
                    "chmod 600 %s", path, stat.S_IMODE(mode), path,
                )
    if opts.stats_interval:
        obs.reporter = StatsReporter(driver, opts.stats_interval)
        obs.reporter.start()
    if opts.control:
        from .server import ControlServer  # only with --control

        address = worker_address(split_control_address(opts.control), worker[0])
        server = ControlServer(driver, address, token, worker=worker)
        await server.start()
        obs.control = server
        a = server.address
        shown = a if isinstance(a, str) else f"{a[0]}:{a[1]}"
        log.info("control API on %s%s", shown, " (bearer token required)" if token else "")
    return obs
