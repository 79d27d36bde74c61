"""``--setup`` and ``--cleanup`` in the command's run: the checks before anything changes, the
host setup around the serve loop, and its teardown whatever ends the run.

The run calls, in order: :func:`preflight` (root, pyroute2, another live ``--setup``, a
default route, free rule priorities, an empty table, a resolver it can handle — all before
the TUN is created; a dead ``--setup``'s leftovers are cleaned up here), then, once the
proxies' addresses are known and the TUN is open, :meth:`HostRun.apply` (not interruptible
half-way: a SIGINT/SIGTERM during it is acted on once it is done, by undoing it), and
:meth:`HostRun.teardown` on the way out (signals held off until it is done). The library
that does the work is :mod:`tun2proxy.hostsetup`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from ..hostsetup import HostSetup, SetupError, SetupPlan, check_privileges, cleanup
from ..hostsetup.plan import PRIORITY_SPAN
from ..hostsetup.resolver import inspect_resolv_conf, nameservers
from ..hostsetup.state import SetupState, list_states
from ..options import DEFAULT_TUN_ADDRESS6, Options, read_text_file
from ..options.values import one_line
from ..service import notify_stopping
from .startup import StartupSignals, quiet_libraries

__all__ = ["HostRun", "Preflight", "cleanup_command", "preflight", "setup_error"]

log = logging.getLogger("tun2proxy")

#: The signals held off while the host's routing is being put back.
_HELD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def setup_error(e: SetupError) -> int:
    """Report a refusal or failure of ``--setup``/``--cleanup``: one line, exit code 2."""
    sys.stderr.write(f"tun2proxy: error: {one_line(' '.join(str(e).split()))}\n")
    return 2


def _pyroute2(opts: Options) -> None:
    """Import pyroute2 (it sets its loggers' level on import: quieted again here).

    Raises:
        SetupError: it is not installed.
    """
    try:
        import pyroute2  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        raise SetupError("--setup and --cleanup need pyroute2: pip install pyroute2") from None
    quiet_libraries(opts.verbosity)


def cleanup_command(opts: Options) -> int:
    """``--cleanup``: undo the setups of dead processes (only ``--tun``'s when given); the
    exit code (0: done or nothing to do; 2: refused or incomplete, one line on stderr)."""
    try:
        check_privileges()
        _pyroute2(opts)
        done = cleanup(opts.setup_state_dir, opts.tun)
    except SetupError as e:
        return setup_error(e)
    if not done:
        log.info("cleanup: nothing to undo (no state file in %s)", opts.setup_state_dir)
    return 0


@dataclass(frozen=True)
class Preflight:
    """What :func:`preflight` found: whether the TUN exists already (then it is not ours to
    delete after a crash)."""

    tun_existed: bool


def _netlink_checks(opts: Options) -> bool:
    """The checks :class:`HostSetup` repeats with the device, made before it exists;
    returns whether the device exists already."""
    from ..hostsetup.netlink import Netlink

    try:
        nl = Netlink()
    except Exception as e:
        raise SetupError(f"--setup: cannot talk to the kernel over netlink: {e}") from None
    with nl:
        if not (nl.has_default_route(2) or nl.has_default_route(10)):
            raise SetupError(
                "--setup: this host has no default route (ip route show default is empty): "
                "there is no uplink for the proxy connections"
            )
        p = opts.setup_priority
        used = nl.rules_between(p, p + PRIORITY_SPAN)
        if used:
            raise SetupError(
                f"--setup: rule priorities {p}-{p + PRIORITY_SPAN - 1} are in use "
                f"({', '.join(used[:3])}): choose another --setup-priority"
            )
        if nl.table_routes(opts.setup_table):
            raise SetupError(
                f"--setup: routing table {opts.setup_table} is not empty (ip route show "
                f"table {opts.setup_table}): choose another --setup-table"
            )
        return nl.link_index(opts.tun_name) is not None


def _other_setups(opts: Options) -> None:
    """Refuse when another ``--setup`` is alive; undo the leftovers of dead ones."""
    stale = False
    for path in list_states(opts.setup_state_dir):
        state = SetupState.load(path)
        if state.owner.alive():
            raise SetupError(
                f"another tun2proxy --setup (PID {state.owner.pid}, device {state.tun}) is "
                f"running (state file {path}): stop it first"
            )
        stale = True
    if stale:
        for line in cleanup(opts.setup_state_dir):
            log.warning("setup: a previous --setup did not exit cleanly: %s", line)


def preflight(opts: Options) -> Preflight:
    """Every check ``--setup`` can make before it changes anything (before the TUN too).

    Raises:
        SetupError: one line (not Linux, not root, no pyroute2, another ``--setup``
            running, no default route, priorities taken, table not empty, a resolver it
            does not handle).
    """
    if not sys.platform.startswith("linux"):
        raise SetupError("--setup is for Linux (policy routing); elsewhere route by hand")
    check_privileges()
    _pyroute2(opts)
    _other_setups(opts)
    existed = _netlink_checks(opts)
    if opts.setup_dns == "on":
        inspect_resolv_conf(opts.setup_resolv_conf)  # systemd-resolved: refused here
    return Preflight(tun_existed=existed)


def _current_nameservers(path: str) -> list[str]:
    with contextlib.suppress(Exception):
        text, _ = read_text_file(path, "--setup-resolv-conf")
        return nameservers(text.encode())
    return []


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP do nothing inside the block (the event loop's handlers
    are gone by then and would otherwise end the process half-way)."""
    previous = {}
    for s in _HELD:
        with contextlib.suppress(ValueError, OSError):
            previous[s] = signal.signal(s, lambda *_: None)
    try:
        yield
    finally:
        for s, h in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(s, h)


class HostRun:
    """The host setup of one run: built from the options and the proxies' addresses,
    applied once the TUN is open, torn down at the end (idempotent)."""

    def __init__(self, opts: Options, addresses: list[str], pre: Preflight) -> None:
        ipv6 = opts.setup_ipv6
        if ipv6 == "auto" and opts.tun_address6 != DEFAULT_TUN_ADDRESS6:
            ipv6 = "on"  # asked for an IPv6 address of its own: carry IPv6
        fwmark = opts.outbound_fwmark
        assert fwmark is not None  # --setup always marks
        from ..hostsetup import ssh_from_environment

        self.options = opts
        #: Raises SetupError (an address that is not one): before the TUN is opened.
        self.plan = SetupPlan(
            tun=opts.tun_name, table=opts.setup_table, priority=opts.setup_priority,
            fwmark=fwmark, ipv6=ipv6, exclude=tuple(opts.bypass), proxies=tuple(addresses),
            ssh=ssh_from_environment(os.environ),
            dns=opts.dns_addr[0] if opts.setup_dns == "on" else None,
            dns_strict=opts.setup_dns_strict, resolv_conf=opts.setup_resolv_conf,
            tun_created=not pre.tun_existed,
        )
        if self.plan.dns is not None and opts.dns == "direct":
            log.warning(
                "setup: --dns direct: the host's lookups go to %s as UDP through the proxy "
                "(they fail if it carries no UDP); --dns virtual or over-tcp keep them on TCP",
                opts.dns_addr[0],
            )
        self.setup: HostSetup | None = None
        #: Where tun2proxy's own lookups go (the host resolver points into the tunnel).
        self.own_nameservers: list[str] | None = None

    def apply(self, startup: StartupSignals) -> str:
        """Add the host's routing (the TUN must be open and up); the summary line.

        A SIGINT/SIGTERM during it is acted on only once it is complete (raising
        :class:`~tun2proxy.app.startup.StopEarly`; the caller then tears down).

        Raises:
            SetupError: it could not be done; whatever was added is removed again.
        """
        opts = self.options
        setup = HostSetup(self.plan, state_dir=opts.setup_state_dir)
        with startup.held():
            try:
                summary = setup.apply()
            except SetupError:
                raise
            except Exception as e:  # netlink's own errors: apply has undone what it added
                raise SetupError(f"--setup failed, everything was undone: "
                                 f"{type(e).__name__}: {e}") from e
            self.setup = setup
        if self.plan.dns is not None:
            found = setup.original_nameservers
        else:
            found = _current_nameservers(opts.setup_resolv_conf)
        self.own_nameservers = found or None
        if found:
            log.debug("setup: tun2proxy's own lookups ask %s from marked sockets",
                      " ".join(found))
        else:
            log.warning("setup: no nameserver in %s: tun2proxy resolves names the system "
                        "way (a lookup that enters the tunnel fails)", opts.setup_resolv_conf)
        return summary

    def teardown(self) -> bool:
        """Remove what :meth:`apply` added (nothing if it did not run); signals are held
        off until it is done. What cannot be removed stays in the state file, for
        ``--cleanup``; returns False then (logged)."""
        setup, self.setup = self.setup, None
        if setup is None:
            return True
        notify_stopping()
        with _signals_held():
            try:
                return not setup.teardown()
            except Exception as e:
                log.error("setup: could not undo (%s: %s); the state file stays: run "
                          "python -m tun2proxy --cleanup", type(e).__name__, e)
                return False
