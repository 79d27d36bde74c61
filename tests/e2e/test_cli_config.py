"""The command line for real, in namespaces: credentials from a 0600 config file with
--unshare (never on the command line), an SO_MARK of 2^31 carries traffic, an existing device
with an MTU below 576 is one clear error."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys

import pytest

from tun2proxy.testing.netlab import Lab, run

from .conftest import HTTP_PORT, MICROSOCKS_AUTH_PORT, SOCKS_USER, Tun2Proxy, connect, server_addr
from .servers import payload

pytestmark = pytest.mark.timeout(120)


@pytest.mark.usefixtures("microsocks_auth")
def test_config_file_with_unshare_runs_a_command(lab: Lab) -> None:
    user, password = SOCKS_USER
    quoted = password.replace(" ", "%20").replace("@", "%40")
    conf = lab.tmp / "credentials.toml"
    conf.write_text(
        "# the proxy's credentials stay out of /proc/PID/cmdline\n"
        f'proxy = "socks5://{user}:{quoted}@127.0.0.1:{MICROSOCKS_AUTH_PORT}"\n'
        "unshare = true\n"
    )
    conf.chmod(0o600)
    out = lab.tmp / "config-unshare.bin"
    argv = [sys.executable, "-m", "tun2proxy", "--config", str(conf), "--",
            "curl", "-sS", "--fail", "-m", "60", "-o", str(out),
            f"http://{server_addr(4)}:{HTTP_PORT}/bytes/1000000/5"]
    assert not any(password in a or quoted in a for a in argv)
    t = lab.start("config-unshare", lab.R, argv)
    rc = t.popen.wait(90)
    assert rc == 0, t.output()
    # microsocks with -u/-P serves only clients that authenticate: the file's credentials.
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(
        payload(1_000_000, 5)).digest()
    assert f"proxy=socks5://user:***@127.0.0.1:{MICROSOCKS_AUTH_PORT}" in t.output()
    assert quoted not in t.output() and "warning" not in t.output().lower()


def test_a_mark_of_2_31_carries_traffic(lab: Lab, tun2proxy: Tun2Proxy) -> None:
    # A valid 32-bit SO_MARK: every flow failed with a TypeError before (issue 15 item 9).
    p = tun2proxy("--fwmark", "2147483648")
    for family in (4, 6):
        s = connect(lab, family, timeout=10)
        s.sendall(b"ECHO\nhello")
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(4096):
            got += chunk
        s.close()
        assert got == b"hello", p.output()[-3000:]
    assert "Traceback" not in p.output() and "TypeError" not in p.output()


def test_an_existing_device_with_a_small_mtu_is_one_error(lab: Lab) -> None:
    run("ip", "-n", lab.C, "tuntap", "add", "dev", "t2psmall", "mode", "tun")
    try:
        run("ip", "-n", lab.C, "link", "set", "t2psmall", "mtu", "500", "up")
        r = subprocess.run(
            ["ip", "netns", "exec", lab.R, sys.executable, "-m", "tun2proxy", "--tun",
             "t2psmall", "--tun-netns", lab.C],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        errors = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
        assert errors == [
            "tun2proxy: error: t2psmall has MTU 500; tun2proxy needs 576 to 65535 "
            "(e.g. ip link set t2psmall mtu 1500)"
        ], r.stderr
        info = run("ip", "-n", lab.C, "link", "show", "t2psmall").stdout
        assert "mtu 500" in info  # a device we did not create is left as it was
    finally:
        run("ip", "-n", lab.C, "link", "del", "t2psmall", check=False)
