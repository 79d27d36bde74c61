"""The config file: one key per flag, flags win over the file, one-line errors naming the file
and the key, ``--print-config`` with passwords masked, a warning for a file others can read."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tun2proxy.options import MAX_FILE_SIZE, Options, UsageError, options, parse_args
from tun2proxy.options.configfile import render_config, toml_string


def _conf(tmp_path: Path, text: str, mode: int = 0o600) -> str:
    p = tmp_path / "tun2proxy.toml"
    p.write_text(text)
    p.chmod(mode)
    return str(p)


def _isolated() -> list[str]:
    """As root, run in a network namespace of its own: a run that got past the checks by
    mistake (the unfixed program did) creates its device there, never on this host."""
    if os.geteuid() == 0 and shutil.which("unshare"):
        return ["unshare", "--net", "--"]
    return []


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_isolated(), sys.executable, "-m", "tun2proxy", *args], capture_output=True,
        text=True, timeout=60,
        check=False,
    )


def test_the_file_sets_and_the_command_line_wins(tmp_path: Path) -> None:
    conf = _conf(tmp_path, """
proxy = "socks5://user:pw@127.0.0.1:1080"
tcp-buffer = "256K"
tcp-timeout = 30
sniff = true
bypass = ["10.0.0.0/8", "192.168.0.0/16"]
max-sessions = 100
""")
    o = parse_args(["--config", conf])
    assert o.proxy == "socks5://user:pw@127.0.0.1:1080" and o.tcp_buffer == 256 * 1024
    assert o.tcp_timeout == 30.0 and o.sniff and o.max_sessions == 100
    assert o.bypass == ("10.0.0.0/8", "192.168.0.0/16") and o.config == conf
    o = parse_args(["--tcp-buffer", "64K", "--config", conf, "--no-sniff", "--bypass",
                    "172.16.0.0/12"])
    assert o.tcp_buffer == 65536 and not o.sniff
    assert o.bypass == ("172.16.0.0/12",)  # a list on the command line replaces the file's
    assert o.max_sessions == 100 and o.proxy.startswith("socks5://user:pw@")  # the rest stays


def test_every_option_has_a_key_and_a_full_file_loads(tmp_path: Path) -> None:
    # The output of --print-config is a config file: written back, it gives the same settings.
    o = parse_args([
        "--tun", "tun7", "--proxy", "socks5://127.0.0.1:1080", "--mtu", "9000",
        "--tcp-buffer", "64K", "--memory-limit", "64M", "--dns-addr", "[2001:db8::53]:5353",
        "--upstream", "w=http://10.1.0.1:3128", "--bypass", "10.0.0.0/8", "--rule",
        "port:25 -> reject", "--sniff", "--fwmark", "3000000000", "--impair", "loss=1%",
        "--offload", "off", "-v", "debug", "--tcp-timeout", "12.5",
    ])
    text = render_config(o)
    keys = set(tomllib.loads(text))
    every = {opt.key for opt in options()}
    unset = {opt.key for opt in options() if getattr(o, opt.name) is None}
    assert keys == every - unset
    for key in unset:
        assert f"# {key} =" in text
    again = parse_args(["--config", _conf(tmp_path, text)])
    assert again == Options(**{**o.__dict__, "config": again.config})


def test_print_config_masks_passwords(tmp_path: Path) -> None:
    conf = _conf(tmp_path, """
proxy = "socks5://alice:s3cr3t@127.0.0.1:1080"
upstream = ["work=http://bob:hunter2@10.1.0.1:3128", "ss1=ss://aes-256-gcm:sspass@10.2.0.1:8388"]
""")
    r = _run("--config", conf, "--print-config")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    for secret in ("s3cr3t", "hunter2", "sspass"):
        assert secret not in r.stdout
    shown = tomllib.loads(r.stdout)
    assert shown["proxy"] == "socks5://alice:***@127.0.0.1:1080"
    assert shown["upstream"] == [
        "work=http://bob:***@10.1.0.1:3128", "ss1=ss://aes-256-gcm:***@10.2.0.1:8388",
    ]
    # SIP002 base64 user info holds the password: all of it is masked.
    r = _run("--config", conf, "--upstream", "b64=ss://YWVzLTI1Ni1nY206c2VjcmV0@10.3.0.1:8388",
             "--print-config")
    assert r.returncode == 0 and "YWVzLTI1Ni1nY206c2VjcmV0" not in r.stdout
    assert tomllib.loads(r.stdout)["upstream"] == ["b64=ss://***@10.3.0.1:8388"]


def test_a_file_others_can_read_is_warned_about(tmp_path: Path) -> None:
    conf = _conf(tmp_path, 'proxy = "socks5://u:p@h:1"\n', mode=0o644)
    o = parse_args(["--config", conf])
    assert len(o.notes) == 1 and "chmod 600" in o.notes[0] and "0644" in o.notes[0]
    r = _run("--config", conf, "--print-config")
    assert r.returncode == 0
    assert r.stderr.count("\n") == 1 and "warning" in r.stderr and "chmod 600" in r.stderr
    os.chmod(conf, 0o600)
    assert parse_args(["--config", conf]).notes == ()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("tcp_buffer = 65536\n", "unknown key 'tcp_buffer' (keys are spelled with '-': "
                                 "'tcp-buffer')"),
        ("prxy = \"direct://\"\n", "unknown key 'prxy' (did you mean 'proxy'?)"),
        ("zzzz = 1\n", "unknown key 'zzzz' (docs/config.md lists the keys)"),
        ("config = \"other.toml\"\n", "unknown key 'config' (it is given on the command line"),
        ("mtu = \"1500\"\n", "mtu must be an integer, not a string"),
        ("mtu = 1500.0\n", "mtu must be an integer, not a number"),
        ("mtu = true\n", "mtu must be an integer, not true or false"),
        ("sniff = \"yes\"\n", "sniff must be true or false, not a string"),
        ("bypass = \"10.0.0.0/8\"\n", "bypass must be an array of strings"),
        ("bypass = [1, 2]\n", "bypass must be an array of strings"),
        ("proxy = 1080\n", "proxy must be a string, not an integer"),
        ("tcp-timeout = \"10\"\n", "tcp-timeout must be an integer or a number, not a string"),
        ("[routing]\nsniff = true\n", "unknown key 'routing'"),
        ("proxy = {url = \"x\"}\n", "proxy must be a string, not a table"),
        ("tun = 1979-05-27\n", "tun must be a string, not a date or time"),
        ("tcp-timeout = nan\n", "tcp-timeout must be a finite number of seconds"),
        ("tcp-timeout = inf\n", "tcp-timeout must be a finite number of seconds"),
        ("tcp-buffer = 1e400\n", "tcp-buffer must be an integer or a string, not a number"),
        ("memory-limit = \"infM\"\n", "memory-limit 'infM' is not a size"),
        ("fwmark = 4294967296\n", "fwmark must be between 1 and 4294967295"),
        ("proxy = \"socks5://u:pa%ZZss@h:1\"\n", "invalid percent escape in the password"),
        ("virtual-dns-pool6 = \"::/0\"\n", "a pool must be /32 to /124"),
        ("impair = \"delay=1e9ms\"\n", "impairment delay must be between 0 and 10000ms"),
        ("mtu = 1500\nmtu = 1400\n", "not valid TOML"),
        ("proxy = \"unterminated\n", "not valid TOML"),
        ("unshare = true\n", "--unshare needs a command"),
    ],
)
def test_bad_files_are_one_line_naming_the_file_and_key(
    tmp_path: Path, text: str, fragment: str
) -> None:
    conf = _conf(tmp_path, text)
    with pytest.raises(UsageError) as ei:
        parse_args(["--config", conf])
    msg = str(ei.value)
    assert fragment in msg, msg
    if "--unshare" not in fragment:
        assert msg.startswith((f"config {conf}: ", f"--config {conf}: ")), msg
    assert "ZZss" not in msg
    r = _run("--config", conf)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("tun2proxy: error: ")


def test_unreadable_files(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    big.write_text("# padding\n" * (MAX_FILE_SIZE // 10 + 1))
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"proxy = \"\xff\"\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, fragment in [
        ("/dev/zero", "not a regular file (a character device)"),
        (str(tmp_path), "not a regular file (a directory)"),
        (str(fifo), "not a regular file (a FIFO)"),
        (str(tmp_path / "missing.toml"), "No such file or directory"),
        (str(big), "larger than 1024 KiB"),
        (str(binary), "not UTF-8 text"),
    ]:
        with pytest.raises(UsageError) as ei:
            parse_args(["--config", path])
        assert str(ei.value) == f"--config {path}: " + str(ei.value).split(": ", 1)[1]
        assert fragment in str(ei.value), str(ei.value)


def test_toml_strings_round_trip() -> None:
    for text in ("plain", 'q"uote\\back', "tab\tnl\ncr\r", "\x00\x1f\x7f", "é🙂"):
        assert tomllib.loads(f"k = {toml_string(text)}")["k"] == text
