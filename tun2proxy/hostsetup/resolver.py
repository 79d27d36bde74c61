"""Point the host resolver into the tunnel for a while: replace ``/etc/resolv.conf``, then put
the original back (I/O).

The file is *replaced* (a new file renamed over the path), not bind-mounted over as Rust
tun2proxy does: a rename is seen in every mount namespace (a bind mount made by a hardened
systemd service with its own mount namespace would be seen by nobody else), it does not make
resolvconf's or NetworkManager's own rename-over fail with EBUSY, and the original — its bytes,
or the symlink and its target — is saved in the state file *before* the rename, so restoring
after a crash is the same code as restoring on exit. The original is only put back if the file
is still ours: if something else rewrote it meanwhile, its version is left alone. Where the
file is a mount point (containers bind-mount their resolv.conf) it is rewritten in place.

A host whose resolver is systemd-resolved (``/etc/resolv.conf`` a link to its stub file, or a
``nameserver 127.0.0.53``) is refused: the stub would forward queries out of the uplink, and
per-link DNS on the TUN is configured through ``resolvectl`` (see docs/setup.md).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import os
import re
from pathlib import Path
from typing import Any

from .plan import SetupError

__all__ = [
    "RESOLVED_STUBS",
    "content_hash",
    "inspect_resolv_conf",
    "nameservers",
    "resolv_conf_content",
    "restore_resolv_conf",
    "write_resolv_conf",
]

#: Files systemd-resolved manages; /etc/resolv.conf linking to one of them means resolved.
RESOLVED_STUBS = (
    "/run/systemd/resolve/stub-resolv.conf",
    "/run/systemd/resolve/resolv.conf",
    "/usr/lib/systemd/resolv.conf",
    "/lib/systemd/resolv.conf",
)
_RESOLVED_ADDRS = ("127.0.0.53", "127.0.0.54")
_KEEP = re.compile(rb"^\s*(search|domain|options)\b")


def resolv_conf_content(nameserver: str, original: bytes | None, pid: int) -> bytes:
    """Our resolver file: one nameserver, the original's search/domain/options lines."""
    lines = [
        f"# written by tun2proxy --setup (PID {pid}): every lookup goes through the tunnel;\n"
        "# the original comes back when it exits (or with python -m tun2proxy --cleanup)\n",
        f"nameserver {nameserver}\n",
    ]
    text = "".join(lines).encode()
    for ln in (original or b"").splitlines():
        if _KEEP.match(ln):
            text += ln.rstrip(b"\r") + b"\n"
    return text


def nameservers(content: bytes) -> list[str]:
    """The ``nameserver`` addresses of a resolver file, in order."""
    out = []
    for ln in content.splitlines():
        parts = ln.split()
        if len(parts) >= 2 and parts[0] == b"nameserver":
            out.append(parts[1].decode(errors="replace"))
    return out


def _resolved(path: Path, content: bytes | None, link: str | None) -> bool:
    if link is not None:
        target = os.path.realpath(path)
        if target in RESOLVED_STUBS or os.path.basename(target) == "stub-resolv.conf":
            return True
    for ln in (content or b"").splitlines():
        parts = ln.split()
        if len(parts) >= 2 and parts[0] == b"nameserver" and parts[1].decode(
            errors="replace"
        ) in _RESOLVED_ADDRS:
            return True
    return False


def inspect_resolv_conf(path: str) -> dict[str, Any]:
    """What is at ``path`` now, as the state file keeps it (bytes base64, link target, mode).

    Raises:
        SetupError: systemd-resolved manages it, or it cannot be read.
    """
    p = Path(path)
    link = os.readlink(p) if p.is_symlink() else None
    content: bytes | None
    try:
        content = p.read_bytes()
    except FileNotFoundError:
        content = None
    except OSError as e:
        raise SetupError(f"cannot read {path}: {e.strerror}") from None
    if _resolved(p, content, link):
        raise SetupError(
            f"{path} is managed by systemd-resolved, which --setup does not configure: run "
            "with --setup-dns off and point resolved at the tunnel yourself (resolvectl dns "
            "TUN ADDR; resolvectl domain TUN '~.'; see docs/setup.md)"
        )
    st = None if link is not None else _stat(p)
    return {
        "path": str(p),
        "symlink": link,
        "content": None if content is None or link is not None
        else base64.b64encode(content).decode(),
        "mode": st.st_mode & 0o7777 if st else None,
        "uid": st.st_uid if st else None,
        "gid": st.st_gid if st else None,
        "original_for_search": base64.b64encode(content or b"").decode(),
    }


def _stat(p: Path) -> os.stat_result | None:
    try:
        return p.stat()
    except FileNotFoundError:
        return None


def _atomic_write(path: Path, data: bytes, mode: int, uid: int | None, gid: int | None) -> None:
    tmp = path.with_name(f".{path.name}.tun2proxy.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)  # not the umask's
        if uid is not None and gid is not None:
            st = os.fstat(fd)
            if (st.st_uid, st.st_gid) != (uid, gid):
                os.fchown(fd, uid, gid)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if e.errno not in (errno.EBUSY, errno.EXDEV) or path.is_symlink():
            raise
        # the path is a mount point (a container's /etc/resolv.conf is bind-mounted in):
        # it cannot be renamed over, only rewritten where it is
        _write_in_place(path, data)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _write_in_place(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_resolv_conf(path: str, data: bytes) -> None:
    """Put ``data`` at ``path`` (a new file renamed over it; a symlink is replaced, not
    followed).

    Raises:
        SetupError: the file cannot be replaced (permissions, read-only /etc).
    """
    try:
        _atomic_write(Path(path), data, 0o644, None, None)
    except OSError as e:
        raise SetupError(f"cannot replace {path}: {e.strerror or e}") from None


def content_hash(data: bytes) -> str:
    """How the state file names the content we wrote (SHA-256, hex)."""
    return hashlib.sha256(data).hexdigest()


def restore_resolv_conf(saved: dict[str, Any]) -> str:
    """Put the original back if the file is still ours; returns what happened (for the log).

    Raises:
        OSError: the original cannot be written back.
    """
    path = Path(saved["path"])
    ours = saved.get("written")
    try:
        now = None if path.is_symlink() else path.read_bytes()
    except FileNotFoundError:
        now = None
    if now is None or ours is None or content_hash(now) != ours:
        if _same_as_original(path, saved):
            return f"{path} is as it was"
        return f"{path} was changed by someone else meanwhile: left as it is"
    link = saved.get("symlink")
    if link is not None:
        tmp = path.with_name(f".{path.name}.tun2proxy.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(link, tmp)
        os.replace(tmp, path)
    elif saved.get("content") is None:
        path.unlink()
    else:
        _atomic_write(path, base64.b64decode(saved["content"]), int(saved["mode"]),
                      saved.get("uid"), saved.get("gid"))
    return f"{path} restored"


def _same_as_original(path: Path, saved: dict[str, Any]) -> bool:
    link = saved.get("symlink")
    if link is not None:
        return path.is_symlink() and os.readlink(path) == link
    if saved.get("content") is None:
        return not path.exists() and not path.is_symlink()
    try:
        return not path.is_symlink() and path.read_bytes() == base64.b64decode(saved["content"])
    except OSError:
        return False
