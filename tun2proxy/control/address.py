"""Where each worker's control API listens, and its start-up error (shared by the server and its
clients; no I/O, light enough for every run to import)."""

from __future__ import annotations

__all__ = ["ControlError", "worker_address"]


def worker_address(address: str | tuple[str, int], index: int) -> str | tuple[str, int]:
    """Where worker ``index`` of ``--workers`` serves: ``PATH`` for worker 0, ``PATH.1``,
    ``PATH.2``... for the others; ``PORT``, ``PORT+1``... on a TCP address."""
    if index == 0:
        return address
    if isinstance(address, tuple):
        return address[0], address[1] + index
    return f"{address}.{index}"


class ControlError(Exception):
    """The control server cannot start (address in use, bad path...): one line for users."""
