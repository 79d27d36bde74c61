"""``--setup`` / ``--cleanup``: route the whole host through the tunnel and give it back (I/O).

The command line builds a :class:`SetupPlan` and runs the proxy inside
``with HostSetup(plan): ...``; ``cleanup()`` undoes the setup of a process that died without
doing so itself. See docs/setup.md for what is changed, in which order, and why.
"""

from __future__ import annotations

from .host import HostSetup, InjectedFailure, check_privileges, cleanup
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
