"""The state file of a ``--setup``: what was (or is about to be) added, and by which process.

Written atomically (a temporary file in the same directory, fsync, rename, fsync of the
directory) *before* each piece is added, so whatever a crash interrupts, the file names at
least everything that exists. It carries the owner's PID, the PID's start time (field 22 of
``/proc/PID/stat``) and the boot id, so a file left by a dead process — or by a process of a
previous boot whose PID was reused since — is told from the file of a live one.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .plan import Piece, SetupError

__all__ = ["Owner", "SetupState", "boot_id", "list_states", "process_start_time", "state_path"]

STATE_VERSION = 1
_PREFIX = "setup-"


def boot_id() -> str:
    """This boot's id (``/proc/sys/kernel/random/boot_id``; empty when unreadable)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may contain spaces or ')'
    rest = stat[stat.rfind(")") + 2:].split()
    try:
        return int(rest[19])  # field 22 overall; rest starts at field 3
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Owner:
    """The process a state file belongs to."""

    pid: int
    start_time: int | None
    boot: str

    @classmethod
    def current(cls) -> Owner:
        """This process."""
        pid = os.getpid()
        return cls(pid, process_start_time(pid), boot_id())

    def alive(self) -> bool:
        """Whether the owner still runs (same boot, same PID, same start time)."""
        if self.boot and self.boot != boot_id():
            return False
        now = process_start_time(self.pid)
        return now is not None and now == self.start_time


def state_path(state_dir: str | os.PathLike[str], tun: str) -> Path:
    """The state file of a setup on device ``tun``."""
    return Path(state_dir) / f"{_PREFIX}{tun}.json"


@dataclass
class SetupState:
    """The content of a state file: owner, device, and the pieces in the order added."""

    path: Path
    owner: Owner
    tun: str
    pieces: list[Piece] = field(default_factory=list)
    summary: str = ""

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to the file."""
        return {
            "version": STATE_VERSION,
            "pid": self.owner.pid,
            "start_time": self.owner.start_time,
            "boot_id": self.owner.boot,
            "tun": self.tun,
            "summary": self.summary,
            "pieces": [p.to_json() for p in self.pieces],
        }

    def save(self) -> None:
        """Write the file atomically (and durably: a power loss leaves the old or the new)."""
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        data = json.dumps(self.to_json(), indent=1, sort_keys=True).encode() + b"\n"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)

    def remove(self) -> None:
        """Delete the file (everything it named is gone)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        _fsync_dir(self.path.parent)

    @classmethod
    def load(cls, path: Path) -> SetupState:
        """Read a state file.

        Raises:
            SetupError: the file is unreadable or not a tun2proxy state file.
        """
        try:
            obj = json.loads(path.read_text())
            if obj.get("version") != STATE_VERSION:
                raise ValueError(f"version {obj.get('version')!r}")
            owner = Owner(int(obj["pid"]), obj.get("start_time"), str(obj.get("boot_id", "")))
            pieces = [Piece.from_json(p) for p in obj.get("pieces", [])]
            return cls(path, owner, str(obj["tun"]), pieces, str(obj.get("summary", "")))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SetupError(f"cannot read the state file {path}: {e}") from None


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def list_states(state_dir: str | os.PathLike[str], tun: str | None = None) -> Iterator[Path]:
    """The state files in ``state_dir`` (only ``tun``'s when given), sorted by name."""
    d = Path(state_dir)
    if tun is not None:
        p = state_path(d, tun)
        if p.exists():
            yield p
        return
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        yield from sorted(d.glob(f"{_PREFIX}*.json"))
