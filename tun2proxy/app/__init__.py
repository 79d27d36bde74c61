"""The command's run, put together from checked settings (:mod:`tun2proxy.options`).

:mod:`.run` calls the steps in order: :mod:`.plan` builds the parts (upstream objects, rules,
impairment) and checks this host; :mod:`.upstreams` resolves the proxies' names (bounded,
interruptible) and wraps routing; :mod:`.links` opens the TUN device or fd; :mod:`.hostrun`
checks, applies and undoes ``--setup`` (and runs ``--cleanup``); :mod:`.startup` handles
signals before the event loop and other start-up chores; :mod:`.serve` runs one Driver with its
signal handlers and watches the workers.

Nothing is imported here: :mod:`tun2proxy.cli` imports :mod:`.startup` alone first, so its
signal handlers are in place before the rest is loaded.
"""

from __future__ import annotations

__all__: list[str] = []
