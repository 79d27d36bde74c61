"""The command line: arguments, one-line errors with exit code 2, version, help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tun2proxy import __version__
from tun2proxy.app.plan import prepare
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
        (["--upstream", "work"], "expected NAME=URL"),
        (["--upstream", "proxy=direct://"], "reserved"),
        (["--upstream", "a b=direct://"], "letters, digits"),
        (["--upstream", "w=direct://", "--upstream", "w=reject://"], "given twice"),
        (["--upstream", "w=socks5://u:secret@h:0x"], "bad port"),
        (["--rule", "prt:443 -> direct"], "unknown matcher"),
        (["--rule", "port:443 -> work"], "unknown target"),
        (["--rules", "/nonexistent/rules"], "No such file"),
        (["--bypass", "10.0.0.0/33"], "not an IP address or network"),
        (["--fwmark", "-3"], "must be positive"),
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
    assert opts.command == ("curl", "-v", "--", "x")
    assert opts.unshare


def test_defaults() -> None:
    a = parse_args([])
    assert a.proxy == "direct://"
    assert a.connect_timeout == 10.0 and a.tcp_timeout == 600.0
    assert a.max_sessions == 4096


def test_routing_flags_parse(tmp_path: object) -> None:
    from pathlib import Path

    rules = Path(str(tmp_path)) / "rules"
    rules.write_text("# lan\ncidr:192.168.0.0/16 -> direct\nsuffix:corp.example -> work\n")
    opts = parse_args([
        "--proxy", "socks5://127.0.0.1:1080", "--upstream", "work=http://10.1.0.1:3128",
        "--rules", str(rules), "--rule", "port:25 -> reject", "--bypass", "10.0.0.0/8",
        "--sniff", "--outbound-interface", "eth0", "--fwmark", "7",
    ])
    plan = prepare(opts)
    a = plan.options
    assert set(plan.extra) == {"work"}
    assert plan.rules is not None
    assert [r.target for r in plan.rules] == ["direct", "work", "reject"]
    assert a.bypass == ("10.0.0.0/8",) and a.sniff and a.fwmark == 7


def test_password_never_in_the_error() -> None:
    r = _run("--upstream", "w=socks5://u:secret@h:0x")
    assert r.returncode == 2 and "secret" not in r.stderr
