"""The command line: arguments, one-line errors with exit code 2, version, help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tun2proxy import __version__
from tun2proxy.cli import parse_args


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tun2proxy", *args], capture_output=True, text=True, timeout=60,
        check=False,
    )


def test_version_and_help() -> None:
    r = _run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"tun2proxy {__version__}"
    r = _run("--help")
    assert r.returncode == 0
    for flag in ("--tun", "--tun-fd", "--proxy", "--mtu", "--unshare", "--tcp-timeout",
                 "--connect-timeout", "--max-sessions", "--verbosity", "examples:"):
        assert flag in r.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--proxy", "bogus://x"], "unknown scheme"),
        (["--proxy", "socks5://h:0x"], "bad port"),
        (["--mtu", "100"], "--mtu must be between"),
        (["--mtu", "abc"], "is not a number"),
        (["--tcp-timeout", "-1"], "must be positive"),
        (["--unshare"], "needs a command"),
        (["--", "ls"], "only run with --unshare"),
        (["--tun", "a", "--tun-fd", "3"], "not allowed with"),
        (["--framing", "pi"], "applies to --tun-fd only"),
        (["--tun-address", "fd00::1/64"], "is not an IPv4 address"),
        (["--tun-address", "10.0.0.1/99"], "is not an address/prefix"),
        (["--verbosity", "loud"], "invalid choice"),
        (["--unshare", "--tun-fd", "3", "--", "true"], "drop --tun-fd"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args: list[str], fragment: str) -> None:
    r = _run(*args)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("tun2proxy: error:")]
    assert len(lines) == 1, r.stderr
    assert fragment in lines[0]


def test_command_after_double_dash_is_kept_whole() -> None:
    opts = parse_args(["--unshare", "--proxy", "direct://", "--", "curl", "-v", "--", "x"])
    assert opts.command == ["curl", "-v", "--", "x"]
    assert opts.args.unshare


def test_defaults() -> None:
    opts = parse_args([])
    a = opts.args
    assert a.proxy == "direct://"
    assert a.connect_timeout == 10.0 and a.tcp_timeout == 600.0
    assert a.max_sessions == 4096
