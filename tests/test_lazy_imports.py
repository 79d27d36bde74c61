"""The command line imports nothing its configuration does not use (issue 14).

Each case runs ``tun2proxy.cli.main`` in a fresh interpreter (``-S``: no site hooks of this
machine, the repository first on the path) far enough to import the whole run
(``--print-config`` goes through :mod:`tun2proxy.app.run` and returns before any device is
opened), then prints ``sys.modules``. What the real running process imports on top is checked
end to end in ``tests/e2e/test_footprint.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import contextlib, io, json, sys
from tun2proxy.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    rc = main(sys.argv[1:])
loaded = sorted(sys.modules)
ssl_after = True
try:
    import ssl  # the block on ssl is lifted once asyncio is in
except ImportError:
    ssl_after = False
print(json.dumps({"rc": rc, "modules": loaded, "ssl_after": ssl_after}))
"""

#: Never imported by a plain ``socks5://`` run on asyncio's loop.
NOT_FOR_SOCKS5 = (
    "pyroute2", "cryptography", "blake3", "dnslib", "uvloop",
    "ssl", "_ssl", "hashlib", "_hashlib", "hmac",
    "tun2proxy.proxy.shadowsocks", "tun2proxy.upstream.shadowsocks",
    "tun2proxy.hostsetup.host", "tun2proxy.hostsetup.resolver", "tun2proxy.hostsetup.state",
    "tun2proxy.hostsetup.netlink", "tomllib", "difflib", "decimal", "ctypes", "shutil", "tempfile",
    "zipfile", "bz2", "lzma",
)


def _imported(*argv: str, site: bool = False) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(ROOT)
    res = subprocess.run(
        [sys.executable, *([] if site else ["-S"]), "-c", PROBE, *argv],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _heavy(modules: object, names: tuple[str, ...]) -> list[str]:
    assert isinstance(modules, list)
    return [m for m in modules if m in names or m.split(".")[0] in names
            or any(m.startswith(n + ".") for n in names)]


def test_socks5_run_imports_only_what_it_uses() -> None:
    got = _imported("--tun", "t2p0", "--proxy", "socks5://127.0.0.1:1080", "--loop", "asyncio",
                    "--print-config")
    assert got["rc"] == 0
    mods = got["modules"]
    assert isinstance(mods, list)
    assert "asyncio" in mods and "tun2proxy.app.run" in mods  # the whole run was imported
    assert _heavy(mods, NOT_FOR_SOCKS5) == []
    assert got["ssl_after"], "ssl must stay importable after start-up (uvloop, pyroute2)"


def test_shadowsocks_run_imports_its_codecs() -> None:
    """The other side of the lazy registry: a Shadowsocks URL loads its modules."""
    got = _imported("--tun", "t2p0", "--proxy",
                    "ss://chacha20-ietf-poly1305:pw@127.0.0.1:8388", "--print-config",
                    site=True)  # cryptography lives in site-packages
    assert got["rc"] == 0
    assert "tun2proxy.upstream.shadowsocks" in got["modules"]  # type: ignore[operator]


@pytest.mark.parametrize("scheme", ["direct://", "socks4://127.0.0.1:1080",
                                    "http://127.0.0.1:8080"])
def test_other_schemes_do_not_load_shadowsocks(scheme: str) -> None:
    got = _imported("--tun", "t2p0", "--proxy", scheme, "--print-config")
    assert got["rc"] == 0
    assert _heavy(got["modules"], ("tun2proxy.proxy.shadowsocks", "hashlib", "ssl")) == []


def test_config_file_loads_tomllib(tmp_path: Path) -> None:
    conf = tmp_path / "t.toml"
    conf.write_text('proxy = "socks5://127.0.0.1:1080"\ntun = "t2p0"\n')
    conf.chmod(0o600)
    got = _imported("--config", str(conf), "--print-config")
    assert got["rc"] == 0
    assert "tomllib" in got["modules"]  # type: ignore[operator]
