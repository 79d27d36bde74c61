"""The hostile values of issue 15 (items 8-10), each through the real program: one line on
stderr, exit code 2, no traceback, and nothing read without bound."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import pytest


def _limits() -> None:
    # The unfixed program read /dev/zero until memory ran out: keep that bounded here.
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def _isolated() -> list[str]:
    """As root, run in a network namespace of its own: a run that got past the checks by
    mistake (the unfixed program did) creates its device there, never on this host."""
    if os.geteuid() == 0 and shutil.which("unshare"):
        return ["unshare", "--net", "--"]
    return []


def _run(
    *args: str, stdin: int | IO[Any] | None = subprocess.DEVNULL
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_isolated(), sys.executable, "-m", "tun2proxy", *args], capture_output=True,
        text=True, timeout=60,
        check=False, stdin=stdin, preexec_fn=_limits,
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--rules", "/dev/zero"], "--rules /dev/zero: not a regular file (a character device)"),
        (["--config", "/dev/zero"], "--config /dev/zero: not a regular file"),
        (["--rules", "/"], "--rules /: not a regular file (a directory)"),
        (["--tcp-buffer", "1e400"], "--tcp-buffer must be between 4K and 1G (got 1e400)"),
        (["--memory-limit", "infM"], "--memory-limit 'infM' is not a size"),
        (["--fwmark", "4294967296"], "--fwmark must be between 1 and 4294967295"),
        (["--proxy", "socks5://h:0"], "port 0 is not a server port"),
        (["--proxy", "socks5://u:pa%ZZss@h:1080"], "invalid percent escape in the password"),
        (["--tcp-timeout", "nan"], "--tcp-timeout must be a finite number of seconds"),
        (["--tcp-timeout", "inf"], "--tcp-timeout must be a finite number of seconds"),
        (["--tcp-timeout=-5"], "--tcp-timeout must be positive"),
        (["--virtual-dns-pool6", "::/0"], "--virtual-dns-pool6 '::/0': a pool must be /32"),
        (["--outbound-interface", "nosuchif"], "--outbound-interface nosuchif: no such network"),
        (["--impair", "delay=1e9ms"], "impairment delay must be between 0 and 10000ms"),
        (["--tun-fd", "99"], "--tun-fd 99 is not an open file descriptor"),
    ],
)
def test_hostile_values_are_one_line_and_exit_2(args: list[str], fragment: str) -> None:
    r = _run(*args)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("tun2proxy: error: "), r.stderr
    assert fragment in r.stderr
    assert "ZZss" not in r.stderr


def test_a_tun_fd_that_is_a_regular_file_is_refused(tmp_path: Path) -> None:
    # fd 0 on a regular file: add_reader raised PermissionError (a traceback) before.
    f = tmp_path / "not-a-tun"
    f.write_bytes(b"")
    with f.open("rb") as stdin:
        r = _run("--tun-fd", "0", stdin=stdin)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (
        "tun2proxy: error: --tun-fd 0 is a regular file, not a TUN device or packet socket "
        "(it cannot be polled)"
    )
