"""The examples run (those that need no root)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("name", ["manual_poll_loop.py", "embed_packet_flow.py"])
def test_example_runs(name: str) -> None:
    res = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "echoed" in res.stdout
