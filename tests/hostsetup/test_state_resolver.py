"""The state file (owner liveness, atomic writes) and the resolv.conf replacement, on temp files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tun2proxy.hostsetup import Piece, SetupError
from tun2proxy.hostsetup.resolver import (
    content_hash,
    inspect_resolv_conf,
    resolv_conf_content,
    restore_resolv_conf,
    write_resolv_conf,
)
from tun2proxy.hostsetup.state import Owner, SetupState, list_states, process_start_time, state_path


def test_owner_alive_needs_same_pid_start_time_and_boot() -> None:
    me = Owner.current()
    assert me.alive()
    assert me.start_time == process_start_time(os.getpid())
    # the PID reused by another process: the start time differs
    assert not Owner(me.pid, (me.start_time or 0) + 1, me.boot).alive()
    # a file from an earlier boot
    assert not Owner(me.pid, me.start_time, "another-boot").alive()
    # a process that has exited
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not Owner(child.pid, 1, me.boot).alive()


def test_process_start_time_survives_odd_command_names(tmp_path: Path) -> None:
    odd = tmp_path / "a b) c"
    odd.symlink_to(sys.executable)
    child = subprocess.Popen([str(odd), "-c", "import time; time.sleep(30)"])
    try:
        assert process_start_time(child.pid) is not None
    finally:
        child.kill()
        child.wait()
    assert process_start_time(child.pid) is None


def test_state_round_trips_and_is_written_atomically(tmp_path: Path) -> None:
    path = state_path(tmp_path / "run", "tun0")
    st = SetupState(path, Owner.current(), "tun0",
                    [Piece("rule", {"family": 2, "priority": 9104, "table": 7368}, "x")])
    st.save()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
    back = SetupState.load(path)
    assert (back.owner, back.tun, back.pieces) == (st.owner, "tun0", st.pieces)
    assert list(list_states(tmp_path / "run")) == [path]
    assert list(list_states(tmp_path / "run", "tun1")) == []
    st.remove()
    assert not path.exists()
    assert list(list_states(tmp_path / "nowhere")) == []


@pytest.mark.parametrize("content", ["not json", json.dumps({"version": 99}), json.dumps({
    "version": 1, "pid": 1, "tun": "t", "pieces": [{"kind": "firewall", "spec": {}}]})])
def test_a_broken_state_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    p = tmp_path / "setup-tun0.json"
    p.write_text(content)
    with pytest.raises(SetupError, match="cannot read the state file"):
        SetupState.load(p)


def test_our_resolver_file_keeps_search_and_options() -> None:
    orig = b"# dhcp\nnameserver 192.0.2.1\nsearch lan.example\noptions edns0\r\n"
    text = resolv_conf_content("8.8.8.8", orig, 42).decode()
    assert "nameserver 8.8.8.8\n" in text
    assert "192.0.2.1" not in text
    assert "search lan.example\n" in text
    assert "options edns0\n" in text
    assert "PID 42" in text


def _replace(path: Path, ns: str = "8.8.8.8") -> dict[str, object]:
    """What HostSetup does: inspect, record, write."""
    saved = inspect_resolv_conf(str(path))
    import base64

    data = resolv_conf_content(ns, base64.b64decode(str(saved.pop("original_for_search"))), 1)
    saved["written"] = content_hash(data)
    write_resolv_conf(str(path), data)
    return saved


def test_a_regular_file_is_replaced_and_restored_byte_for_byte(tmp_path: Path) -> None:
    p = tmp_path / "resolv.conf"
    orig = b"nameserver 192.0.2.1\nsearch lan.example\n"
    p.write_bytes(orig)
    p.chmod(0o640)
    saved = _replace(p)
    assert b"nameserver 8.8.8.8" in p.read_bytes()
    assert oct(p.stat().st_mode & 0o777) == "0o644"
    assert restore_resolv_conf(saved).endswith("restored")
    assert p.read_bytes() == orig
    assert oct(p.stat().st_mode & 0o777) == "0o640"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["resolv.conf"]
    # restoring twice (a cleanup after the process did it itself) changes nothing
    assert "as it was" in restore_resolv_conf(saved)
    assert p.read_bytes() == orig


def test_a_symlink_is_replaced_by_a_file_and_comes_back(tmp_path: Path) -> None:
    target = tmp_path / "nm-resolv.conf"
    target.write_bytes(b"nameserver 192.0.2.53\n")
    p = tmp_path / "resolv.conf"
    p.symlink_to("nm-resolv.conf")
    saved = _replace(p)
    assert not p.is_symlink()
    assert target.read_bytes() == b"nameserver 192.0.2.53\n"  # the target is not touched
    restore_resolv_conf(saved)
    assert p.is_symlink()
    assert os.readlink(p) == "nm-resolv.conf"


def test_a_missing_file_is_created_and_removed_again(tmp_path: Path) -> None:
    p = tmp_path / "resolv.conf"
    saved = _replace(p)
    assert p.exists()
    restore_resolv_conf(saved)
    assert not p.exists()
    assert not p.is_symlink()


def test_a_file_rewritten_by_someone_else_meanwhile_is_left_alone(tmp_path: Path) -> None:
    p = tmp_path / "resolv.conf"
    p.write_bytes(b"nameserver 192.0.2.1\n")
    saved = _replace(p)
    p.write_bytes(b"nameserver 192.0.2.99\n")  # the DHCP client renewed its lease
    assert "someone else" in restore_resolv_conf(saved)
    assert p.read_bytes() == b"nameserver 192.0.2.99\n"


@pytest.mark.parametrize("how", ["link", "content"])
def test_systemd_resolved_is_refused_with_what_to_do(tmp_path: Path, how: str) -> None:
    p = tmp_path / "resolv.conf"
    if how == "link":
        stub = tmp_path / "systemd" / "resolve" / "stub-resolv.conf"
        stub.parent.mkdir(parents=True)
        stub.write_text("nameserver 10.0.0.1\n")  # whatever it says, the link tells
        p.symlink_to(stub)
    else:
        p.write_text("# generated\nnameserver 127.0.0.53\noptions edns0 trust-ad\n")
    with pytest.raises(SetupError, match="systemd-resolved") as info:
        inspect_resolv_conf(str(p))
    assert "resolvectl" in str(info.value)
    assert "--setup-dns off" in str(info.value)


def test_an_unwritable_location_is_a_setup_error(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match="cannot replace"):
        write_resolv_conf(str(tmp_path / "no" / "such" / "dir" / "resolv.conf"), b"x")


def test_a_mount_point_is_rewritten_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container's /etc/resolv.conf is a bind mount: rename over it fails with EBUSY."""
    import errno

    p = tmp_path / "resolv.conf"
    orig = b"nameserver 192.0.2.1\n"
    p.write_bytes(orig)
    inode = p.stat().st_ino
    real_replace = os.replace

    def busy(src: object, dst: object) -> None:
        if Path(str(dst)) == p:
            raise OSError(errno.EBUSY, "Device or resource busy")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", busy)
    saved = _replace(p)
    assert b"nameserver 8.8.8.8" in p.read_bytes()
    assert p.stat().st_ino == inode
    restore_resolv_conf(saved)
    assert p.read_bytes() == orig
    assert sorted(x.name for x in tmp_path.iterdir()) == ["resolv.conf"]
