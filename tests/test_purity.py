"""The pure core imports no I/O, clock, randomness or threading (DESIGN.md §2 rule 1)."""

from __future__ import annotations

import ast
import pathlib

import pytest

PURE_PACKAGES = ["wire", "tcp", "udp", "stack", "proxy", "dns", "routing"]
FORBIDDEN = {"asyncio", "socket", "os", "time", "random", "threading", "selectors", "subprocess"}
ROOT = pathlib.Path(__file__).resolve().parent.parent / "tun2proxy"


def _modules() -> list[pathlib.Path]:
    files: list[pathlib.Path] = []
    for pkg in PURE_PACKAGES:
        files.extend(sorted((ROOT / pkg).rglob("*.py")))
    return files


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_imports_nothing_impure(path: pathlib.Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        bad += [n for n in names if n.split(".")[0] in FORBIDDEN]
    assert not bad, f"{path.name} imports {bad}"


def test_pure_packages_exist() -> None:
    assert len(_modules()) >= 15


def test_importing_the_core_does_not_import_impure_modules() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import tun2proxy.stack, tun2proxy.wire, tun2proxy.tcp, tun2proxy.udp\n"
        "import tun2proxy.proxy, tun2proxy.proxy.shadowsocks, tun2proxy.dns, tun2proxy.routing\n"
        "new = set(sys.modules) - before\n"
        "bad = sorted(m for m in new if m.split('.')[0] in "
        f"{sorted(FORBIDDEN - {'os', 'time', 'random'})!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
