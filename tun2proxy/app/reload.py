"""Reloading ``--config`` into a running Driver without dropping flows (SIGHUP, or any
caller such as a control endpoint).

A reload parses the command line again, so the config file is re-read and the flags given
on the command line still win, exactly as at start. The settings in :data:`LIVE` (routing:
rules, the rules file, bypass, named upstreams, the proxy, the UDP policy and the udpgw
client; the log level; limits and timeouts for new flows, the dial queue's included) take
effect for new flows; open flows keep the upstream connection and the settings they started
with. Any other setting changed in the file (the device, MTU, workers, offload, the event
loop, DNS mode and pools, ...) keeps its running value and is named in one log line as
needing a restart. A file that fails any check (not TOML, an unknown key, a bad value, a rule
naming no upstream, a new proxy host that does not resolve within ``--connect-timeout``)
changes nothing: one error line, and the previous configuration stays entirely.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ..driver.loop import Driver
from ..errors import ConfigError
from ..options import Options, UsageError, options, parse_args
from ..options.values import one_line
from ..routing.rules import Rules
from ..upstream.base import Upstream
from ..upstream.router import resolve_proxy_addresses
from .plan import Plan, prepare
from .settings import driver_config, stack_config
from .startup import raise_fd_limit, set_log_level
from .upstreams import build_upstream, proxy_hosts

__all__ = ["LIVE", "Changes", "ReloadResult", "Reloader", "diff", "load_new_plan", "merge"]

log = logging.getLogger("tun2proxy")

_UDPGW = (
    "udpgw_server", "udpgw_mode", "udpgw_connections", "udpgw_conids_per_connection",
    "udpgw_keepalive", "udpgw_queue", "udpgw_transparent_dns",
)
#: The settings (field names) a reload applies to a running driver.
LIVE: frozenset[str] = frozenset({
    "proxy", "upstream", "bypass", "rule", "rules", "udp", "verbosity", "tcp_timeout",
    "connect_timeout", "max_sessions", "max_pending", "memory_limit", "udp_timeout",
    "max_udp_sessions", "icmp", "half_open_timeout", "max_connecting",
    "max_connecting_per_destination", "queue_timeout", *_UDPGW,
})
#: The live settings (config-file keys) that decide the upstream: a change rebuilds it.
_ROUTING = ("proxy", "upstream", "bypass", "rules", "udp", *(k.replace("_", "-") for k in _UDPGW))
#: The live settings (config-file keys) of the driver and the stack.
_LIMITS = frozenset({
    "tcp-timeout", "connect-timeout", "max-sessions", "max-pending", "memory-limit",
    "udp-timeout", "max-udp-sessions", "icmp", "udp", "half-open-timeout", "max-connecting",
    "max-connecting-per-destination", "queue-timeout",
})


@dataclass(frozen=True)
class Changes:
    """What a re-read config file changes, as config-file keys.

    Attributes:
        changed: live settings that differ (``rules`` covers ``rule`` and the rules file's
            contents).
        restart: settings that differ but only take effect after a restart.
    """

    changed: tuple[str, ...]
    restart: tuple[str, ...]


def _rule_lines(rules: Rules | None) -> tuple[tuple[str, str], ...]:
    return () if rules is None else tuple((str(r), r.target) for r in rules.rules)


def diff(current: Plan, new_options: Options, new_rules: Rules | None) -> Changes:
    """The settings ``new_options`` (and the rule list built from it) change in
    ``current``."""
    changed: list[str] = []
    restart: list[str] = []
    for opt in options():
        if opt.name in ("rule", "rules"):
            continue
        if getattr(current.options, opt.name) != getattr(new_options, opt.name):
            (changed if opt.name in LIVE else restart).append(opt.key)
    if _rule_lines(current.rules) != _rule_lines(new_rules):
        changed.append("rules")
    order = {k: i for i, k in enumerate(_ROUTING)}
    changed.sort(key=lambda k: order.get(k, len(order)))  # routing first, as in the docs
    return Changes(tuple(changed), tuple(restart))


def merge(current: Options, new: Options) -> Options:
    """The options a reload runs with: ``new``'s :data:`LIVE` settings and its warnings,
    ``current``'s other settings (they need a restart) and invocation."""
    live = {name: getattr(new, name) for name in LIVE}
    return dataclasses.replace(current, **live, notes=new.notes)


def load_new_plan(current: Plan) -> tuple[Plan, Changes]:
    """Parse ``current.argv`` again (re-reading the config file) and build the plan a
    reload would switch to, with what it changes; nothing is applied (no I/O but reading
    the files).

    Raises:
        UsageError: the file or a value in it is wrong (one line).
    """
    try:
        fresh = parse_args(current.argv)
    except SystemExit as e:  # argparse's own exit: cannot happen for an argv that started
        raise UsageError(f"the command line no longer parses (exit {e.code})") from None
    merged = merge(current.options, fresh)
    try:
        plan = prepare(merged)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    plan = dataclasses.replace(plan, impairment=current.impairment, argv=current.argv)
    return plan, diff(current, fresh, plan.rules)


@dataclass(frozen=True)
class ReloadResult:
    """The outcome of :meth:`Reloader.reload`.

    Attributes:
        ok: the file was read and its live settings apply (also when nothing changed).
        path: the config file (None: there is none, nothing was reloaded).
        changed: the live settings that changed (config-file keys).
        restart: settings changed in the file that need a restart (not applied).
        kept_flows: open flows that keep the previous configuration.
        error: why the file was rejected (``ok`` is False).
    """

    ok: bool
    path: str | None
    changed: tuple[str, ...] = ()
    restart: tuple[str, ...] = ()
    kept_flows: int = 0
    error: str | None = None

    @property
    def message(self) -> str:
        """The one line logged for this reload."""
        if self.path is None:
            return ("reload: nothing to reload (tun2proxy was started without --config or "
                    "--proxy-file)")
        if not self.ok:
            return f"reload {self.path} rejected, the previous configuration stays: {self.error}"
        if not self.changed:
            return f"reloaded {self.path}: nothing changed"
        return (
            f"reloaded {self.path}: changed {', '.join(self.changed)} "
            f"({self.kept_flows} flows keep the previous configuration)"
        )

    @property
    def restart_message(self) -> str | None:
        """The line naming the settings that need a restart, if any."""
        if not self.restart:
            return None
        return (
            f"reload {self.path}: {', '.join(self.restart)} changed in the file but need a "
            "restart (the running values stay)"
        )


class Reloader:
    """The live configuration of one running Driver, and :meth:`reload` to re-read it.

    Args:
        plan: the plan the driver was built from (``plan.argv`` is parsed again).
        driver: the running driver.
        worker: ``(index, count)`` of this driver among the ``--workers`` processes (its
            share of the limits).
        after: called with each successful result (``serve`` passes one that forwards
            SIGHUP to the worker processes).
    """

    def __init__(
        self, plan: Plan, driver: Driver, worker: tuple[int, int] = (0, 1),
        after: Callable[[ReloadResult], None] | None = None,
    ) -> None:
        self.plan = plan
        self.driver = driver
        self.worker = worker
        self.after = after
        self._lock = asyncio.Lock()

    async def reload(self) -> ReloadResult:
        """Re-read the config file and apply its live settings to new flows; log the
        outcome (one line, plus one naming settings that need a restart) and return it.

        Does not depend on signals: SIGHUP calls it (:mod:`tun2proxy.app.serve`), and so
        may any other caller on the driver's loop. Reloads run one at a time. A file that
        fails a check changes nothing (``ok`` False, ``error`` says why); resolving a new
        proxy host is bounded by ``--connect-timeout``.
        """
        async with self._lock:
            result = await self._reload()
        if not result.ok:
            log.error("%s", result.message)
        else:
            for note in self.plan.options.notes:
                log.warning("%s", note)
            log.info("%s", result.message)
            if result.restart_message:
                log.warning("%s", result.restart_message)
            if self.after is not None:
                self.after(result)
        return result

    async def _reload(self) -> ReloadResult:
        # --proxy-file without --config: the file is re-read (a rotated password)
        path = self.plan.options.config or self.plan.options.proxy_file
        if path is None:
            return ReloadResult(True, None)
        try:
            plan, changes = load_new_plan(self.plan)
            upstream = await self._upstream(plan, changes)
            d = self.driver
            stack = d.stack.config
            new_stack = dataclasses.replace(
                stack_config(plan.options, stack.mtu, stack.checksum_offload,
                             stack.tcp.gso_max_size, self.worker[1]),
                isn_secret=stack.isn_secret,
                tcp=dataclasses.replace(stack.tcp, idle_timeout=plan.options.tcp_timeout),
            )
            dial = driver_config(plan.options, self.worker, None)
            config = dataclasses.replace(
                d.config, connect_timeout=plan.options.connect_timeout, udp=plan.options.udp,
                max_connecting=dial.max_connecting,
                max_connecting_per_destination=dial.max_connecting_per_destination,
                queue_timeout=dial.queue_timeout,
            )
            limits = bool(_LIMITS & set(changes.changed))
            kept = d.reconfigure(
                upstream, config if limits else None, new_stack if limits else None
            )
        except ConfigError as e:
            return ReloadResult(False, path, error=one_line(str(e)))
        if "verbosity" in changes.changed:
            set_log_level(plan.options.verbosity)
        if "max-sessions" in changes.changed:
            raise_fd_limit(plan.options.max_sessions)  # every flow holds an upstream socket
        self.plan = plan
        return ReloadResult(True, path, changes.changed, changes.restart, kept)

    async def _upstream(self, plan: Plan, changes: Changes) -> Upstream | None:
        """The upstream for new flows (None: routing did not change); bounded resolving."""
        if not set(_ROUTING) & set(changes.changed):
            return None
        timeout = plan.options.connect_timeout
        addresses: list[str] = []
        for host in proxy_hosts(plan):
            try:
                async with asyncio.timeout(timeout):
                    # the tunnel's resolver: with --setup the host's points into the tunnel
                    found = await resolve_proxy_addresses(host, self.driver.egress)
            except TimeoutError:
                raise ConfigError(
                    f"proxy host {host!r}: no answer from the resolver within {timeout:g} s"
                ) from None
            addresses += [a for a in found if a not in addresses]
        return build_upstream(plan, addresses)
