"""TUN device handling for real: a device we create is configured and removed; a device that
vanishes under us ends the process with one clear error instead of a spin."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tun2proxy.testing.netlab import Lab, run, wait_for

from .unprivileged import readable_package

pytestmark = pytest.mark.timeout(60)


def _start(lab: Lab, name: str, *args: str):  # type: ignore[no-untyped-def]
    p = lab.start(name, lab.R, [sys.executable, "-m", "tun2proxy", "--tun-netns", lab.C, *args])
    assert wait_for(lambda: "upstream" in p.output() or not p.alive()), p.output()
    return p


def test_created_device_is_configured_then_removed(lab: Lab) -> None:
    p = _start(lab, "create", "--tun", "t2pnew", "--mtu", "9000", "--tun-address",
               "10.9.9.1/24", "--tun-address6", "fd99::1/64")
    assert p.alive(), p.output()
    assert "created t2pnew (mtu 9000" in p.output()
    info = run("ip", "-n", lab.C, "addr", "show", "t2pnew").stdout
    assert "mtu 9000" in info and "10.9.9.1/24" in info and "fd99::1/64" in info
    assert "UP" in info.split(">")[0]
    p.popen.send_signal(signal.SIGTERM)
    assert p.popen.wait(5) == 0
    gone = run("ip", "-n", lab.C, "link", "show", "t2pnew", check=False)
    assert gone.returncode != 0  # the device went away with us


def test_existing_device_is_left_as_it_is(lab: Lab) -> None:
    run("ip", "-n", lab.C, "tuntap", "add", "dev", "t2pkeep", "mode", "tun")
    run("ip", "-n", lab.C, "link", "set", "t2pkeep", "mtu", "1400", "up")
    try:
        p = _start(lab, "attach", "--tun", "t2pkeep", "--mtu", "9000")
        assert "attached to t2pkeep (mtu 1400" in p.output()
        assert "--mtu 9000 ignored" in p.output()
        p.popen.send_signal(signal.SIGTERM)
        assert p.popen.wait(5) == 0
        info = run("ip", "-n", lab.C, "link", "show", "t2pkeep").stdout
        assert "mtu 1400" in info  # persistent device survives, untouched
    finally:
        run("ip", "-n", lab.C, "link", "del", "t2pkeep", check=False)


def test_vanished_device_ends_the_process_with_one_error(lab: Lab) -> None:
    run("ip", "-n", lab.C, "tuntap", "add", "dev", "t2pgone", "mode", "tun")
    run("ip", "-n", lab.C, "link", "set", "t2pgone", "up")
    p = _start(lab, "vanish", "--tun", "t2pgone")
    assert p.alive()
    t0 = time.monotonic()
    run("ip", "-n", lab.C, "link", "del", "t2pgone")
    rc = p.popen.wait(5)
    assert rc == 1
    assert time.monotonic() - t0 < 3
    errors = [ln for ln in p.output().splitlines() if "ERROR" in ln]
    assert len(errors) == 1 and "t2pgone" in errors[0], p.output()


def test_not_root_unshare_is_a_clear_error(lab: Lab, tmp_path: Path) -> None:
    # The checkout may sit in a directory only root can read (a CI clone under mktemp -d):
    # give the unprivileged user its own readable copy of the package.
    readable_package(tmp_path)
    res = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         sys.executable, "-m", "tun2proxy", "--unshare", "--", "true"],
        capture_output=True, text=True, timeout=30, check=False, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert res.returncode == 1, res.stderr
    assert "cannot create a network namespace" in res.stderr
