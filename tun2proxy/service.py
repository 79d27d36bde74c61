"""Running as a service: systemd readiness (sd_notify), a PID file, secrets read from a file.

Standard library only. ``sd_notify`` speaks the datagram protocol of ``NOTIFY_SOCKET``
(``READY=1``, ``STATUS=...``, ``STOPPING=1``; a socket path starting with ``@`` is in the
abstract namespace); without ``NOTIFY_SOCKET`` it does nothing, so it is safe to call always.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Mapping
from pathlib import Path

from .errors import Tun2ProxyError

__all__ = [
    "MAX_SECRET_FILE",
    "PROXY_ENV",
    "SecretFileError",
    "notify_ready",
    "notify_status",
    "notify_stopping",
    "proxy_url",
    "read_secret_file",
    "remove_pid_file",
    "sd_notify",
    "write_pid_file",
]

#: The environment variable the proxy URL may come from instead of the command line.
PROXY_ENV = "TUN2PROXY_PROXY"
#: The largest secret file read (it holds one line).
MAX_SECRET_FILE = 64 << 10


def sd_notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1\\nSTATUS=routing"``) to the service manager.

    Returns False when there is no ``NOTIFY_SOCKET`` (not started by systemd with
    ``Type=notify``) or the datagram could not be sent; never raises.
    """
    addr = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not addr or addr[0] not in "/@":
        return False
    target = "\0" + addr[1:] if addr[0] == "@" else addr
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(target)
            s.sendall(state.encode())
    except OSError:
        return False
    return True


def notify_ready(status: str | None = None, env: Mapping[str, str] | None = None) -> bool:
    """``READY=1`` (with a ``STATUS=`` line and our ``MAINPID=``): start-up is complete."""
    msg = f"READY=1\nMAINPID={os.getpid()}"
    if status:
        msg += f"\nSTATUS={_one_line(status)}"
    return sd_notify(msg, env)


def notify_status(status: str, env: Mapping[str, str] | None = None) -> bool:
    """``STATUS=...``: the line ``systemctl status`` shows."""
    return sd_notify(f"STATUS={_one_line(status)}", env)


def notify_stopping(env: Mapping[str, str] | None = None) -> bool:
    """``STOPPING=1``: shutting down (teardown in progress)."""
    return sd_notify("STOPPING=1", env)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def write_pid_file(path: str | os.PathLike[str]) -> None:
    """Write our PID to ``path`` atomically (a temporary file renamed into place).

    Raises:
        OSError: the file cannot be written.
    """
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)
    try:
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def remove_pid_file(path: str | os.PathLike[str]) -> bool:
    """Remove ``path`` if it still holds our PID (another instance's file stays)."""
    p = Path(path)
    try:
        if p.read_text().strip() != str(os.getpid()):
            return False
        p.unlink()
    except OSError:
        return False
    return True


class SecretFileError(Tun2ProxyError):
    """A secret file cannot be used; the message is one line for the user (exit status 2)."""


def read_secret_file(path: str | os.PathLike[str]) -> str:
    """The first non-empty, non-comment line of ``path`` (e.g. a proxy URL with a password).

    The file must be a regular file owned by root or by us, and neither readable nor writable
    by group or others (``chmod 600``): a secret everyone can read is no secret.

    Raises:
        SecretFileError: the file is missing, too open, or empty.
    """
    p = Path(path)
    try:
        # O_NONBLOCK: a FIFO is opened without waiting for a writer (and then refused)
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SecretFileError(
                f"cannot open {p}: it is a symbolic link (name the file itself)"
            ) from None
        raise SecretFileError(f"cannot open {p}: {e.strerror}") from None
    except ValueError as e:  # an embedded NUL
        raise SecretFileError(f"cannot open {str(p)!r}: {e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretFileError(f"{p} is not a regular file")
        if st.st_size > MAX_SECRET_FILE:
            raise SecretFileError(
                f"{p} is larger than {MAX_SECRET_FILE // 1024} KiB: it should hold one line"
            )
        if st.st_uid not in (0, os.geteuid()):
            raise SecretFileError(f"{p} belongs to uid {st.st_uid}, not to root or to us")
        if st.st_mode & 0o077:
            raise SecretFileError(
                f"{p} is accessible by others (mode {stat.S_IMODE(st.st_mode):04o}): "
                f"chmod 600 {p}"
            )
        data = os.read(fd, MAX_SECRET_FILE + 1)
        if len(data) > MAX_SECRET_FILE:  # it grew since fstat
            raise SecretFileError(f"{p} is larger than {MAX_SECRET_FILE // 1024} KiB")
    except OSError as e:
        raise SecretFileError(f"cannot read {p}: {e.strerror}") from None
    finally:
        os.close(fd)
    for line in data.decode(errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    raise SecretFileError(f"{p} holds no value (only blank or # lines)")


def proxy_url(
    cli: str | None, proxy_file: str | None, env: Mapping[str, str] | None = None
) -> str | None:
    """The proxy URL from ``--proxy``, else ``--proxy-file``, else ``$TUN2PROXY_PROXY``.

    Raises:
        SecretFileError: both ``--proxy`` and ``--proxy-file`` are given, or the file is
            unusable (see :func:`read_secret_file`).
    """
    if cli is not None and proxy_file is not None:
        raise SecretFileError("--proxy and --proxy-file cannot both be given")
    if cli is not None:
        return cli
    if proxy_file is not None:
        return read_secret_file(proxy_file)
    value = (os.environ if env is None else env).get(PROXY_ENV, "").strip()
    return value or None
