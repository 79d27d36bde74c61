"""A copy of the package the unprivileged user (nobody) can read, for the tests that run
tun2proxy without root: the checkout may sit in a directory only root can read (a CI clone
under ``mktemp -d``)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import tun2proxy


def readable_package(where: Path) -> Path:
    """Copy the package into ``where`` (made world-readable, with its parents up to the
    temporary directory traversable) and return ``where``: the PYTHONPATH and cwd to use."""
    src = Path(tun2proxy.__file__).resolve().parent
    where.mkdir(parents=True, exist_ok=True)
    where.chmod(0o755)
    target = where / "tun2proxy"
    if not target.exists():
        shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
    for d in (where, *where.rglob("*")):
        d.chmod(0o755 if d.is_dir() else 0o644)
    for parent in where.parents:  # pytest's base temp dir is 0700 too
        if parent == Path(tempfile.gettempdir()):
            break
        parent.chmod(parent.stat().st_mode | 0o011)
    return where
