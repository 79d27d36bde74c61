"""The documentation that is generated from code is up to date."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_tcp_state_diagram_is_current() -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_state_diagram.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_cli_flag_is_in_the_readme() -> None:
    from tun2proxy.cli import build_parser

    readme = (ROOT / "README.md").read_text()
    flags = [
        opt for action in build_parser()._actions for opt in action.option_strings
        if opt.startswith("--") and opt not in ("--help", "--version")
    ]
    missing = [f for f in flags if f"`{f}" not in readme and f"{f} " not in readme]
    assert not missing, f"flags not documented in README.md: {missing}"


def test_relative_links_in_the_docs_resolve() -> None:
    import re

    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def test_config_key_table_is_current() -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_config_keys.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_option_has_a_documented_key_and_flag() -> None:
    # The list comes from the options model, not from a copy of it.
    from tun2proxy.options import options

    config_md = (ROOT / "docs" / "config.md").read_text()
    readme = (ROOT / "README.md").read_text()
    keys = [o.key for o in options()]
    assert keys, "no options?"
    missing_keys = [k for k in keys if f"| `{k}` |" not in config_md]
    assert not missing_keys, f"keys not in docs/config.md: {missing_keys}"
    missing_flags = [
        o.flag for o in options() if f"`{o.flag}" not in readme and f"{o.flag} " not in readme
    ]
    assert not missing_flags, f"flags not in README.md: {missing_flags}"
    for flag in ("--config", "--print-config"):
        assert f"`{flag}" in readme


def test_readme_keeps_credentials_off_the_command_line() -> None:
    # Issue 15 item 2: a password on the command line is readable in /proc/PID/cmdline.
    import re

    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, flags=re.S)
    for block in blocks:
        for line in block.splitlines():
            if "tun2proxy" in line and "echo" not in line:
                assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", line), line
