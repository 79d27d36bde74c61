"""Service helpers: sd_notify against a socket the test binds, the PID file, secret files."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tun2proxy.service import (
    SecretFileError,
    notify_ready,
    notify_status,
    notify_stopping,
    read_secret_file,
    remove_pid_file,
    sd_notify,
    write_pid_file,
)


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[
    tuple[str, socket.socket]
]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        addr = str(tmp_path / "notify")
        s.bind(addr)
        env = addr
    else:
        name = f"t2p-notify-test-{os.getpid()}"
        s.bind("\0" + name)
        env = "@" + name
    s.settimeout(5)
    yield env, s
    s.close()


def test_ready_status_stopping_reach_the_notify_socket(
    notify_socket: tuple[str, socket.socket]
) -> None:
    addr, s = notify_socket
    env = {"NOTIFY_SOCKET": addr}
    assert notify_ready("routing tun0: 2 exclusions\n(v4+v6)", env)
    assert s.recv(4096).decode().split("\n") == [
        "READY=1", f"MAINPID={os.getpid()}", "STATUS=routing tun0: 2 exclusions (v4+v6)"]
    assert notify_status("up", env)
    assert s.recv(4096) == b"STATUS=up"
    assert notify_stopping(env)
    assert s.recv(4096) == b"STOPPING=1"


@pytest.mark.parametrize("value", [None, "", "relative/path", "/nonexistent/socket"])
def test_without_a_usable_notify_socket_nothing_happens(value: str | None) -> None:
    env = {} if value is None else {"NOTIFY_SOCKET": value}
    assert sd_notify("READY=1", env) is False


def test_pid_file_is_written_and_only_our_own_removed(tmp_path: Path) -> None:
    p = tmp_path / "tun2proxy.pid"
    write_pid_file(p)
    assert p.read_text() == f"{os.getpid()}\n"
    assert remove_pid_file(p)
    assert not p.exists()
    p.write_text("1\n")  # another instance's
    assert not remove_pid_file(p)
    assert p.exists()
    assert not remove_pid_file(tmp_path / "missing.pid")


def test_secret_file_gives_its_first_value(tmp_path: Path) -> None:
    p = tmp_path / "proxy"
    p.write_text("# the proxy\n\n  socks5://user:s3cret@192.0.2.1:1080  \nignored\n")
    p.chmod(0o600)
    assert read_secret_file(p) == "socks5://user:s3cret@192.0.2.1:1080"


@pytest.mark.parametrize(("mode", "text", "word"), [
    (0o644, "socks5://x", "chmod 600"),
    (0o620, "socks5://x", "chmod 600"),
    (0o600, "# nothing\n\n", "holds no value"),
])
def test_secret_file_refuses_open_modes_and_empty_files(
    tmp_path: Path, mode: int, text: str, word: str
) -> None:
    p = tmp_path / "proxy"
    p.write_text(text)
    p.chmod(mode)
    with pytest.raises(SecretFileError, match=word):
        read_secret_file(p)


def test_secret_file_must_exist_and_be_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(SecretFileError, match="cannot open"):
        read_secret_file(tmp_path / "missing")
    (tmp_path / "real").write_text("x")
    (tmp_path / "real").chmod(0o600)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(SecretFileError, match="cannot open"):
        read_secret_file(tmp_path / "link")  # O_NOFOLLOW: no link to someone else's file
    with pytest.raises(SecretFileError, match="not a regular file"):
        read_secret_file(tmp_path)


def test_the_example_unit_is_what_docs_setup_md_promises() -> None:
    unit = Path(__file__).resolve().parents[2] / "examples" / "tun2proxy.service"
    lines = [ln.strip() for ln in unit.read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    keys: dict[str, list[str]] = {}
    for ln in lines:
        if "=" in ln and not ln.startswith("["):
            k, _, v = ln.partition("=")
            keys.setdefault(k, []).append(v)
    assert keys["Type"] == ["notify"]
    assert "--setup" in keys["ExecStart"][0].split()
    assert "--proxy" not in keys["ExecStart"][0].split()  # no secret on the command line
    assert "--proxy-file" in keys["ExecStart"][0].split()
    assert keys["ExecStopPost"][0].endswith("-m tun2proxy --cleanup")
    assert keys["Restart"] == ["on-failure"]
    assert keys["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
    assert keys["RuntimeDirectory"] == ["tun2proxy"]
    assert keys["RuntimeDirectoryPreserve"] == ["yes"]
    assert keys.get("ProtectSystem", ["true"])[0] not in ("full", "strict")  # /etc writable
    assert "/dev/net/tun rw" in keys["DeviceAllow"]
    if shutil.which("systemd-analyze"):
        res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                             text=True, timeout=60, check=False)
        assert res.returncode == 0, res.stderr


def test_proxy_url_precedence_and_conflicts(tmp_path: Path) -> None:
    from tun2proxy.service import PROXY_ENV, proxy_url

    f = tmp_path / "proxy"
    f.write_text("socks5://u:p@192.0.2.1:1080\n")
    f.chmod(0o600)
    env = {PROXY_ENV: " http://192.0.2.2:3128 "}
    assert proxy_url("direct://", None, env) == "direct://"
    assert proxy_url(None, str(f), env) == "socks5://u:p@192.0.2.1:1080"
    assert proxy_url(None, None, env) == "http://192.0.2.2:3128"
    assert proxy_url(None, None, {}) is None
    with pytest.raises(SecretFileError, match="cannot both"):
        proxy_url("direct://", str(f), env)
