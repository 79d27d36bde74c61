"""``--setup`` / ``--cleanup``: route the whole host through the tunnel and give it back (I/O).

The command line builds a :class:`SetupPlan` and runs the proxy inside
``with HostSetup(plan): ...``; ``cleanup()`` undoes the setup of a process that died without
doing so itself. See docs/setup.md for what is changed, in which order, and why.

Every run's option checks read the plan's defaults (:mod:`.plan`, standard library only); the
code that changes the host (:mod:`.host`, with :mod:`.resolver`, :mod:`.state` and pyroute2
behind it) is imported on first use of its names, so a run without ``--setup`` never loads it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .plan import (
    DEFAULT_FWMARK,
    DEFAULT_PRIORITY,
    DEFAULT_STATE_DIR,
    DEFAULT_TABLE,
    Piece,
    SetupError,
    SetupPlan,
    SshPeer,
    build_pieces,
    exclusions,
    parse_ssh_connection,
    ssh_from_environment,
    validate_setup_options,
)

if TYPE_CHECKING:
    from .host import HostSetup, InjectedFailure, check_privileges, cleanup

#: The names of :mod:`.host`, imported when first asked for.
_HOST_NAMES = frozenset({"HostSetup", "InjectedFailure", "check_privileges", "cleanup"})

__all__ = [
    "DEFAULT_FWMARK",
    "DEFAULT_PRIORITY",
    "DEFAULT_STATE_DIR",
    "DEFAULT_TABLE",
    "HostSetup",
    "InjectedFailure",
    "Piece",
    "SetupError",
    "SetupPlan",
    "SshPeer",
    "build_pieces",
    "check_privileges",
    "cleanup",
    "exclusions",
    "parse_ssh_connection",
    "ssh_from_environment",
    "validate_setup_options",
]


def __getattr__(name: str) -> Any:
    """The host-changing names, from :mod:`.host` on first use (PEP 562)."""
    if name in _HOST_NAMES:
        value = getattr(importlib.import_module(".host", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
