"""Linux network namespaces: enter one for a while, or leave the current one (ctypes).

Python 3.11 has no ``os.setns``/``os.unshare``; these call libc directly. ``setns`` changes
the namespace of the calling *thread*, so :func:`entered` must be used while no other thread
relies on the namespace (tun2proxy uses it during start-up only).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ctypes

__all__ = [
    "CLONE_NEWNET", "CLONE_NEWNS", "CLONE_NEWUSER", "entered", "libc", "libc_error", "netns_path",
    "unshare",
]

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

@functools.cache
def libc() -> ctypes.CDLL:
    """The C library, through the process's own symbols (``dlopen(NULL)``).

    ``ctypes`` is imported here, on first use, not when this module is: a run that enters no
    namespace does not load it. ``ctypes.util.find_library`` is avoided (it runs
    ``ldconfig`` and imports ``shutil``/``tempfile``).
    """
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def libc_error(what: str) -> OSError:
    """An OSError for the errno the last :func:`libc` call left, naming ``what``."""
    import ctypes

    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def _c() -> ctypes.CDLL:
    return libc()


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise libc_error(what)


def netns_path(name_or_path: str) -> str:
    """``/var/run/netns/NAME`` for a name made by ``ip netns add``; paths pass through."""
    if "/" in name_or_path:
        return name_or_path
    return f"/var/run/netns/{name_or_path}"


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (``unshare(2)``)."""
    _check(_c().unshare(flags), "unshare")


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """Move the calling thread into the namespace referred to by ``fd`` (``setns(2)``)."""
    _check(_c().setns(fd, nstype), "setns")


@contextlib.contextmanager
def entered(path: str | None) -> Iterator[None]:
    """Run the block inside the network namespace at ``path`` (no-op for None)."""
    if path is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            setns(own)
    finally:
        os.close(own)
