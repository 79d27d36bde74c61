"""The command's run, put together from checked settings (:mod:`tun2proxy.options`).

:mod:`.plan` builds the parts (upstream objects, rules, impairment) and checks this host;
:mod:`.upstreams` resolves the proxies' names (bounded, interruptible) and wraps routing;
:mod:`.links` opens the TUN device or fd; :mod:`.startup` handles signals before the event
loop and other start-up chores; :mod:`.serve` runs one Driver with its signal handlers and
watches the workers. :mod:`tun2proxy.cli` calls them in that order.
"""

from __future__ import annotations

from .plan import Plan, check_host, prepare
from .startup import StartupSignals, StopEarly, call_bounded

__all__ = ["Plan", "StartupSignals", "StopEarly", "call_bounded", "check_host", "prepare"]
