"""Reading the files settings name (config, rules, secrets): bounded, regular files only.

A file named on the command line or in a config file is read whole, so it is read with a
bound (:data:`MAX_FILE_SIZE`) and only if it is a regular file: ``--rules /dev/zero`` or a
FIFO is refused before it is opened for reading, never read until memory runs out.
"""

from __future__ import annotations

import os
import stat

from .model import UsageError

__all__ = [
    "MAX_FILE_SIZE", "MAX_TOKEN_SIZE", "loose_permissions", "read_text_file", "read_token_file",
]

#: The largest file a setting may name (a config file, a rules file, a secret).
MAX_FILE_SIZE = 1 << 20
#: The largest token file (``--control-token-file``).
MAX_TOKEN_SIZE = 4096

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a plain file"


def _refuse(mode: int, what: str, path: str) -> None:
    if not stat.S_ISREG(mode):
        raise UsageError(f"{what} {path}: not a regular file ({_kind(mode)}); give a text file")


def read_text_file(path: str, what: str, limit: int = MAX_FILE_SIZE) -> tuple[str, int]:
    """The text of the regular file ``path`` and its mode bits; ``what`` names the setting
    in messages (``--rules``).

    Raises:
        UsageError: the file is missing or unreadable, not a regular file, larger than
            ``limit`` bytes, or not UTF-8 text.
    """
    try:
        mode = os.stat(path).st_mode
        fd = -1 if not stat.S_ISREG(mode) else os.open(
            path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
        )
    except OSError as e:
        raise UsageError(f"{what} {path}: {e.strerror or e}") from None
    except ValueError as e:  # an embedded NUL
        raise UsageError(f"{what} {path!r}: {e}") from None
    _refuse(mode, what, path)  # before opening: a device or a FIFO is not opened
    try:
        st = os.fstat(fd)
        _refuse(st.st_mode, what, path)  # it may have been replaced meanwhile
        too_big = UsageError(
            f"{what} {path}: larger than {limit // 1024} KiB; a settings file is small"
        )
        if st.st_size > limit:
            raise too_big
        chunks: list[bytes] = []
        got = 0
        while got <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got > limit:
            raise too_big
    except OSError as e:
        raise UsageError(f"{what} {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8"), stat.S_IMODE(st.st_mode)
    except UnicodeDecodeError as e:
        raise UsageError(f"{what} {path}: not UTF-8 text (byte {e.start})") from None


def loose_permissions(path: str, mode: int) -> str | None:
    """A one-line warning when a file that may hold credentials is readable by other users."""
    if mode & 0o044:
        return (
            f"{path} is readable by other users (mode {mode:04o}) and may hold proxy "
            f"credentials: chmod 600 {path}"
        )
    return None


def read_token_file(path: str, what: str = "--control-token-file") -> str:
    """The token in the regular file ``path``: its text without surrounding whitespace,
    at most :data:`MAX_TOKEN_SIZE` bytes, one line of printable ASCII.

    Raises:
        UsageError: as :func:`read_text_file`, or the token is empty or not printable.
    """
    text, _mode = read_text_file(path, what, MAX_TOKEN_SIZE)
    token = text.strip()
    if not token:
        raise UsageError(f"{what} {path}: the file is empty; put a token in it")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise UsageError(f"{what} {path}: the token must be one word of printable ASCII")
    return token
