"""Run a command in a fresh private network namespace whose routes lead into our TUN.

``spawn_private`` forks a child that moves into new network and mount namespaces and waits;
the parent (which stays in the original namespace, where upstream connections leave from)
creates and configures the TUN inside the child's namespace through ``/proc/PID/ns/net``,
then lets the child ``exec`` the command. When the command exits its namespace disappears,
and with it the device: nothing is left behind.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from .netns import CLONE_NEWNET, CLONE_NEWNS, libc_error, unshare
from .netns import libc as _libc

__all__ = ["PrivateNamespace", "spawn_private"]

_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18


@dataclass
class PrivateNamespace:
    """A child waiting in its own namespace; call :meth:`release` to let it exec."""

    pid: int
    netns: str
    _go: int

    def release(self) -> None:
        """Let the child run its command."""
        try:
            os.write(self._go, b"g")
        finally:
            os.close(self._go)

    def abandon(self) -> None:
        """Make the child exit without running the command."""
        os.close(self._go)


def _make_mounts_private() -> None:
    if _libc().mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        raise libc_error("making mounts private")


def _private_resolv_conf(content: str) -> None:
    """Bind-mount a file with ``content`` over /etc/resolv.conf, in this mount namespace only.

    The file is unlinked at once: the mount keeps it alive while the namespace lives.
    """
    import tempfile

    libc = _libc()
    fd, path = tempfile.mkstemp(prefix="tun2proxy-resolv-")
    try:
        os.write(fd, content.encode())
        os.close(fd)
        target = os.path.realpath("/etc/resolv.conf")
        if not os.path.exists(target):
            target = "/etc/resolv.conf"
            with open(target, "a"):
                pass
        if libc.mount(path.encode(), target.encode(), None, _MS_BIND, None) != 0:
            raise libc_error("bind-mounting resolv.conf")
    finally:
        os.unlink(path)


def spawn_private(argv: list[str], resolv_conf: str | None = None) -> PrivateNamespace:
    """Fork a child into new network and mount namespaces; it execs ``argv`` on release.

    ``resolv_conf``, when given, becomes the child's /etc/resolv.conf (a private bind mount),
    so the command resolves names through the tunnel and nowhere else.

    Raises:
        OSError: the namespaces could not be created (usually: not root).
    """
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(ready_r)
            os.close(go_w)
            try:
                unshare(CLONE_NEWNET | CLONE_NEWNS)
                _make_mounts_private()
                if resolv_conf is not None:
                    _private_resolv_conf(resolv_conf)
            except OSError as e:
                os.write(ready_w, f"E{e.errno}:{e.strerror or e}".encode())
                os._exit(126)
            os.write(ready_w, b"R")
            os.close(ready_w)
            if os.read(go_r, 1) != b"g":
                os._exit(125)
            os.close(go_r)
            try:
                os.execvp(argv[0], argv)
            except OSError as e:
                sys.stderr.write(f"tun2proxy: cannot run {argv[0]!r}: {e.strerror}\n")
                os._exit(127)
        finally:
            os._exit(126)
    os.close(ready_w)
    os.close(go_r)
    msg = os.read(ready_r, 256)
    os.close(ready_r)
    if msg != b"R":
        os.close(go_w)
        os.waitpid(pid, 0)
        if msg.startswith(b"E"):
            code, _, text = msg[1:].decode(errors="replace").partition(":")
            raise OSError(int(code) if code.isdigit() else 1, text)
        raise OSError(1, "the namespace child failed to start")
    return PrivateNamespace(pid=pid, netns=f"/proc/{pid}/ns/net", _go=go_w)
