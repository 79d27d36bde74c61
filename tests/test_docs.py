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
