"""The ``--setup`` / ``--cleanup`` settings and ``--proxy-file``: parsed, checked, and the
combinations refused in one line before anything runs."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tun2proxy.app.hostrun import HostRun, Preflight
from tun2proxy.app.plan import prepare
from tun2proxy.app.startup import StartupSignals, StopEarly
from tun2proxy.app.upstreams import make_egress
from tun2proxy.hostsetup import DEFAULT_FWMARK, DEFAULT_PRIORITY, DEFAULT_TABLE
from tun2proxy.options import Options, UsageError, parse_args, render_config

NO_ENV: dict[str, str] = {}


def _parse(argv: list[str], env: dict[str, str] | None = None) -> Options:
    return parse_args(argv, env=NO_ENV if env is None else env)


def test_setup_defaults_are_the_library_s() -> None:
    o = _parse(["--setup"])
    assert o.setup and not o.cleanup
    assert (o.setup_table, o.setup_priority) == (DEFAULT_TABLE, DEFAULT_PRIORITY) == (7368, 9100)
    assert (o.setup_ipv6, o.setup_dns, o.setup_dns_strict) == ("auto", "on", False)
    assert (o.setup_state_dir, o.setup_resolv_conf) == ("/run/tun2proxy", "/etc/resolv.conf")
    assert o.pid_file is None and o.proxy_file is None


def test_setup_marks_its_own_sockets_with_the_mark_its_rule_expects() -> None:
    """--setup's fwmark rule keeps marked sockets out of the tunnel: the Egress the Driver
    gets must carry that mark, whether --fwmark is given or not."""
    o = _parse(["--setup"])
    assert o.fwmark is None and o.outbound_fwmark == DEFAULT_FWMARK == 0x3074
    assert make_egress(prepare(o)).outbound.fwmark == 0x3074
    o = _parse(["--setup", "--fwmark", "77"])
    assert make_egress(prepare(o)).outbound.fwmark == 77
    assert make_egress(prepare(_parse([]))).outbound.fwmark is None  # no --setup: no mark


def test_the_own_resolver_is_the_egress_s_not_the_process_s() -> None:
    plan = prepare(_parse(["--setup"]))
    with_dns = make_egress(plan, ["192.0.2.1"])
    assert with_dns.resolver is not None
    assert make_egress(plan).resolver is None  # another tunnel in the process: untouched


def test_the_setup_plan_comes_from_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSH_CONNECTION", "203.0.113.50 50022 192.0.2.2 22")
    o = _parse(["--setup", "--tun", "tun7", "--setup-table", "100", "--setup-priority", "200",
                "--bypass", "192.168.0.0/16", "--dns-addr", "1.1.1.1", "--setup-dns-strict",
                "--setup-resolv-conf", "/tmp/r.conf"])
    plan = HostRun(o, ["198.51.100.9"], Preflight(tun_existed=False)).plan
    assert (plan.tun, plan.table, plan.priority, plan.fwmark) == ("tun7", 100, 200, 0x3074)
    assert list(plan.exclude) == ["192.168.0.0/16"] and list(plan.proxies) == ["198.51.100.9"]
    assert plan.ssh is not None and plan.ssh.address == "203.0.113.50"
    assert (plan.dns, plan.dns_strict, plan.resolv_conf) == ("1.1.1.1", True, "/tmp/r.conf")
    assert plan.tun_created and plan.ipv6 == "auto"
    off = HostRun(_parse(["--setup", "--setup-dns", "off"]), [], Preflight(True)).plan
    assert off.dns is None and not off.tun_created
    # an IPv6 address of its own asks for IPv6 to be carried
    six = HostRun(_parse(["--setup", "--tun-address6", "fd00:9::1/64"]), [], Preflight(True))
    assert six.plan.ipv6 == "on"
    no = HostRun(_parse(["--setup", "--tun-address6", "fd00:9::1/64", "--setup-ipv6", "off"]),
                 [], Preflight(True))
    assert no.plan.ipv6 == "off"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--setup", "--unshare", "--", "true"], "choose one"),
        (["--setup", "--tun-fd", "3"], "cannot be combined with --tun-fd"),
        (["--setup", "--tun-netns", "x"], "cannot be combined with --tun-netns"),
        (["--setup", "--cleanup"], "--setup and --cleanup cannot be combined"),
        (["--cleanup", "--tun-fd", "3"], "--cleanup only undoes a --setup"),
        (["--setup-table", "255"], "the kernel's local table"),
        (["--setup-table", "4294967296"], "must be between 1 and 4294967295"),
        (["--setup-priority", "0"], "must be positive"),
    ],
)
def test_combinations_and_values_setup_refuses(argv: list[str], fragment: str) -> None:
    with pytest.raises(UsageError) as ei:
        _parse(argv)
    assert fragment in str(ei.value)
    assert "\n" not in str(ei.value)


def test_cleanup_is_a_command_line_flag_not_a_config_key(tmp_path: Path) -> None:
    assert _parse(["--cleanup", "--tun", "tun3"]).cleanup
    cfg = tmp_path / "c.toml"
    cfg.write_text("cleanup = true\n")
    with pytest.raises(UsageError, match="command line only"):
        _parse(["--config", str(cfg)])
    cfg.write_text('setup = true\nsetup-table = 4000\nsetup-dns = "off"\n')
    o = _parse(["--config", str(cfg)])
    assert (o.setup, o.setup_table, o.setup_dns) == (True, 4000, "off")


# --- --proxy-file and $TUN2PROXY_PROXY -------------------------------------------------


def _secret(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    p = tmp_path / "proxy.url"
    p.write_text(text)
    p.chmod(mode)
    return p


def test_proxy_file_gives_the_proxy_url(tmp_path: Path) -> None:
    p = _secret(tmp_path, "# comment\n\nsocks5://user:s3cret@192.0.2.1:1080\n")
    o = _parse(["--proxy-file", str(p)])
    assert o.proxy == "socks5://user:s3cret@192.0.2.1:1080" and o.proxy_file == str(p)
    shown = render_config(o)
    assert "s3cret" not in shown and f'proxy-file = "{p}"' in shown
    assert "# proxy =  (read from proxy-file)" in shown


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: _secret(d, "socks5://u:p@h:1", 0o644), "chmod 600"),
        (lambda d: _secret(d, "# only a comment\n"), "holds no value"),
        (lambda d: _secret(d, "socks5://u:pa%ZZss@h:1080"), "invalid percent escape"),
        (lambda d: _secret(d, "x" * (70 << 10)), "larger than 64 KiB"),
        (lambda d: d / "missing", "cannot open"),
        (lambda d: d, "not a regular file"),
    ],
    ids=["readable-by-others", "empty", "bad-url", "too-big", "missing", "directory"],
)
def test_proxy_file_refusals_are_one_line(tmp_path: Path, make: object, fragment: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(UsageError) as ei:
        _parse(["--proxy-file", str(path)])
    msg = str(ei.value)
    assert msg.startswith("--proxy-file") and fragment in msg, msg
    assert "\n" not in msg and "ZZss" not in msg and "pa%" not in msg


def test_proxy_file_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(UsageError, match="not a regular file"):
        _parse(["--proxy-file", str(fifo)])  # an open() without O_NONBLOCK would hang here


def test_proxy_file_refuses_a_symlink(tmp_path: Path) -> None:
    real = _secret(tmp_path, "socks5://h:1")
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(UsageError, match="symbolic link"):
        _parse(["--proxy-file", str(tmp_path / "link")])


def test_proxy_and_proxy_file_exclude_each_other(tmp_path: Path) -> None:
    p = _secret(tmp_path, "socks5://file:1")
    with pytest.raises(SystemExit):  # argparse: not allowed with argument --proxy
        _parse(["--proxy", "socks5://h:1", "--proxy-file", str(p)])
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'proxy = "socks5://cfg:1"\nproxy-file = "{p}"\n')
    with pytest.raises(UsageError, match="exclude each other"):
        _parse(["--config", str(cfg)])
    # a flag wins over the config file, either way round
    cfg.write_text('proxy = "socks5://cfg:1"\n')
    assert _parse(["--config", str(cfg), "--proxy-file", str(p)]).proxy == "socks5://file:1"
    cfg.write_text(f'proxy-file = "{p}"\n')
    assert _parse(["--config", str(cfg), "--proxy", "socks5://flag:1"]).proxy == \
        "socks5://flag:1"


def test_the_environment_variable_is_the_last_resort(tmp_path: Path) -> None:
    env = {"TUN2PROXY_PROXY": "socks5://env:1"}
    assert _parse([], env).proxy == "socks5://env:1"
    assert _parse(["--proxy", "socks5://flag:1"], env).proxy == "socks5://flag:1"
    p = _secret(tmp_path, "socks5://file:1")
    assert _parse(["--proxy-file", str(p)], env).proxy == "socks5://file:1"
    with pytest.raises(UsageError, match=r"\$TUN2PROXY_PROXY: the URL .*port 0"):
        _parse([], {"TUN2PROXY_PROXY": "socks5://h:0"})


# --- signals around the host setup -------------------------------------------------------


@pytest.fixture
def default_signals() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    for s in saved:
        signal.signal(s, signal.SIG_DFL)
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def test_a_signal_while_the_host_is_set_up_is_acted_on_once_it_is_complete(
    default_signals: None,
) -> None:
    startup = StartupSignals()
    startup.install()
    steps: list[str] = []
    try:

        def set_up() -> None:
            with startup.held():
                steps.append("first half")
                os.kill(os.getpid(), signal.SIGTERM)  # would raise here without held()
                steps.append("second half")

        with pytest.raises(StopEarly):
            set_up()
        assert steps == ["first half", "second half"]
        # outside the block a signal stops at once, as before
        with pytest.raises(StopEarly):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        startup.restore()


def test_after_the_event_loop_a_signal_cannot_end_the_process_half_way(
    default_signals: None,
) -> None:
    """asyncio puts SIG_DFL back when its handlers are removed: a SIGTERM while the host is
    being restored would kill the process there. reinstall() takes the signals back."""
    startup = StartupSignals()
    startup.install()
    startup.install_reload()
    try:

        async def serve_briefly() -> None:
            loop = asyncio.get_running_loop()
            for s in (signal.SIGTERM, signal.SIGHUP):
                loop.add_signal_handler(s, lambda: None)
                loop.remove_signal_handler(s)
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # what asyncio leaves
            startup.reinstall()

        startup.defer()
        asyncio.run(serve_briefly())
        for s in (signal.SIGTERM, signal.SIGHUP):
            assert signal.getsignal(s) not in (signal.SIG_DFL, signal.SIG_IGN), s
        os.kill(os.getpid(), signal.SIGTERM)  # recorded, the process lives on
        os.kill(os.getpid(), signal.SIGHUP)
        assert startup.received == signal.SIGTERM and startup.reload_requested
    finally:
        startup.restore()
