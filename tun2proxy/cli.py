"""``python -m tun2proxy`` and the ``tun2proxy`` script.

Flags follow the Rust tun2proxy where the meaning is the same (``--tun``, ``--tun-fd``,
``--proxy``, ``--mtu``, ``--unshare``, ``--tcp-timeout``, ``--max-sessions``,
``-v/--verbosity``); every setting can also come from a TOML file (``--config``). The settings
are declared once, in :mod:`tun2proxy.options`; the run is put together by
:mod:`tun2proxy.app.run`. A mistake in what the user gave is one line on stderr and exit code
2; a SIGINT/SIGTERM at any moment, start-up included, is a clean exit 0.

This module stays small on purpose: :func:`main` takes SIGINT/SIGTERM over first and only
then imports the rest (about a second of imports on a slow machine, during which a SIGTERM
is a clean stop too).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from .app.startup import StartupSignals, StopEarly

if TYPE_CHECKING:
    from .app.plan import Plan
    from .options import Options

__all__ = ["build_parser", "configure", "main", "parse_args"]

log = logging.getLogger("tun2proxy")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tun2proxy`` and the ``tun2proxy`` script (and of its
    subcommands ``top``, ``flows`` and ``close``: :mod:`tun2proxy.control.cli`)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] in ("top", "flows", "close"):
        from .control.cli import main as control_main

        return control_main(args)
    startup = StartupSignals()
    startup.install()
    try:
        with _asyncio_without_tls():
            from .app.run import run  # after the handlers: a signal while importing is clean

        return run(args, startup)
    except StopEarly as e:
        # Still starting: what was started has been undone on the way out.
        with contextlib.suppress(Exception):
            log.info("received %s while starting, stopped", signal.Signals(e.signum).name)
        return 0
    finally:
        startup.restore()


@contextlib.contextmanager
def _asyncio_without_tls() -> Iterator[None]:
    """Import the run's modules (asyncio among them) with ``ssl`` unavailable.

    ``asyncio`` imports ``ssl`` only to offer TLS transports, and tolerates its absence; the
    command line never speaks TLS, and ``ssl`` maps OpenSSL (``libssl``, ``libcrypto``: about
    4 MiB of the idle process). The block is lifted afterwards, so whatever really needs
    ``ssl`` later (``uvloop``, ``pyroute2``) imports it as usual; only asyncio's own TLS
    (``loop.create_connection(ssl=...)``) stays unavailable in this process. A no-op when
    asyncio or ssl is already loaded (an embedding host, the tests).
    """
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        yield
        return
    sys.modules["ssl"] = None  # type: ignore[assignment]  # "import ssl" raises ImportError
    try:
        yield
    finally:
        if "ssl" in sys.modules and sys.modules["ssl"] is None:
            del sys.modules["ssl"]


def configure(argv: Sequence[str]) -> Plan:
    """Parse and check ``argv`` and build the run's parts without starting anything (see
    :func:`tun2proxy.app.run.configure`)."""
    from .app.run import configure as configure_run

    return configure_run(argv)


def parse_args(argv: Sequence[str]) -> Options:
    """The settings of ``argv`` (see :func:`tun2proxy.options.parse_args`)."""
    from .options import parse_args as parse

    return parse(argv)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, generated from the options model (for docs and tests)."""
    from .options import build_parser as build

    return build()
