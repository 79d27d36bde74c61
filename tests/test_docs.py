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
