"""Reloading --config (tun2proxy.app.reload): what a re-read file changes, what needs a
restart, a broken file leaving everything as it was, and the Driver switching new flows to a
new upstream while an open flow keeps its own."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
from pathlib import Path

import pytest

from tun2proxy.app.plan import Plan, prepare
from tun2proxy.app.reload import LIVE, Reloader, ReloadResult, diff, load_new_plan, merge
from tun2proxy.driver import Driver, DriverConfig
from tun2proxy.options import UsageError, options, parse_args
from tun2proxy.stack import StackConfig
from tun2proxy.testing.apps import AppHost
from tun2proxy.upstream.router import RoutingUpstream

from .test_driver_inprocess import LoopbackUpstream, _echo, running, server

pytestmark = pytest.mark.timeout(60)


def _plan(path: Path, *extra: str) -> Plan:
    argv = ("--config", str(path), "--tun-fd", "3", *extra)
    return dataclasses.replace(prepare(parse_args(argv)), argv=argv)


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


def _driver(plan: Plan) -> Driver:
    from tun2proxy.app.settings import driver_config, stack_config
    from tun2proxy.app.upstreams import build_upstream

    stack = Driver.make_stack(stack_config(plan.options, 1500))
    return Driver(stack, AppHost().link, build_upstream(plan, []),
                  driver_config(plan.options, (0, 1), None))


def _target(driver: Driver, port: int) -> str:
    up = driver.upstream
    assert isinstance(up, RoutingUpstream)
    return up.decide_for(ipaddress.ip_address("192.0.2.1"), port, None).target


def test_every_setting_is_live_or_needs_a_restart_and_live_names_exist() -> None:
    names = {o.name for o in options()}
    assert names >= LIVE
    for name in ("tun", "mtu", "workers", "offload", "loop", "unshare", "dns", "tun_address"):
        assert name not in LIVE


def test_diff_names_live_changes_and_restart_ones(tmp_path: Path) -> None:
    rules = tmp_path / "rules.txt"
    rules.write_text("port:80 -> proxy\n")
    conf = tmp_path / "t.toml"
    _write(conf, f'rules = "{rules}"\nbypass = ["10.0.0.0/8"]\nmtu = 1500\n')
    current = _plan(conf)
    # the same path, other contents: the rules changed although the setting did not
    rules.write_text("port:80 -> reject\n")
    _write(conf, f'rules = "{rules}"\nbypass = ["10.1.0.0/16"]\nmtu = 1400\nworkers = 1\n'
           'tcp-timeout = 60\n')
    plan, changes = load_new_plan(current)
    assert changes.changed == ("bypass", "rules", "tcp-timeout")
    assert changes.restart == ("mtu",)
    # the restart-only setting keeps its running value; the live ones are the file's
    assert plan.options.mtu == 1500 and plan.options.tcp_timeout == 60
    assert plan.options.bypass == ("10.1.0.0/16",)
    assert plan.argv == current.argv
    _same, nothing = load_new_plan(plan)
    assert nothing.changed == () and nothing.restart == ("mtu",)
    assert diff(plan, plan.options, plan.rules).changed == ()


def test_merge_keeps_the_invocation_and_restart_settings(tmp_path: Path) -> None:
    old = parse_args(["--tun", "tunA", "--udp-timeout", "5"])
    new = parse_args(["--tun", "tunB", "--udp-timeout", "9", "--rule", "any -> direct"])
    m = merge(old, new)
    assert (m.tun, m.udp_timeout, m.rule) == ("tunA", 9.0, ("any -> direct",))


def test_command_line_flags_still_win_over_the_reloaded_file(tmp_path: Path) -> None:
    conf = tmp_path / "t.toml"
    _write(conf, "tcp-timeout = 30\n")
    current = _plan(conf, "--tcp-timeout", "7")
    _write(conf, "tcp-timeout = 99\n")
    plan, changes = load_new_plan(current)
    assert plan.options.tcp_timeout == 7 and changes.changed == ()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('rule = ["port:80 -> proxy"\n', "not valid TOML"),
        ('rulez = ["port:80 -> proxy"]\n', "unknown key 'rulez'"),
        ('tcp-timeout = "soon"\n', "tcp-timeout"),
        ('rule = ["port:80 -> nowhere"]\n', "nowhere"),
        ('upstream = ["w=gopher://x"]\n', "gopher"),
    ],
)
def test_a_broken_file_is_one_error(tmp_path: Path, text: str, says: str) -> None:
    conf = tmp_path / "t.toml"
    _write(conf, 'rule = ["port:80 -> proxy"]\n')
    current = _plan(conf)
    _write(conf, text)
    with pytest.raises(UsageError) as e:
        load_new_plan(current)
    assert says in str(e.value) and "\n" not in str(e.value)


async def test_reload_applies_rules_and_limits_and_a_broken_file_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conf = tmp_path / "t.toml"
    _write(conf, 'upstream = ["w=direct://"]\nrule = ["port:80 -> proxy"]\n')
    plan = _plan(conf)
    driver = _driver(plan)
    reloader = Reloader(plan, driver)
    first = driver.upstream
    assert _target(driver, 80) == "proxy"
    _write(conf, 'upstream = ["w=direct://"]\nrule = ["port:80 -> w", "port:81 -> reject"]\n'
           'tcp-timeout = 5\nmax-sessions = 100\nmtu = 1400\ndns = "over-tcp"\n')
    r = await reloader.reload()
    assert r.ok and r.changed == ("rules", "tcp-timeout", "max-sessions")
    assert r.restart == ("mtu", "dns")
    assert r.message == f"reloaded {conf}: changed rules, tcp-timeout, max-sessions (0 flows " \
        "keep the previous configuration)"
    assert driver.upstream is not first
    assert (_target(driver, 80), _target(driver, 81)) == ("w", "reject")
    assert driver.stack.config.tcp.idle_timeout == 5 and driver.stack.config.max_flows == 100
    assert driver.stack.config.mtu == 1500 and driver.config.dns == "direct"
    assert "mtu, dns changed in the file but need a restart" in caplog.text
    applied = driver.upstream
    for broken in ('rule = ["port:80 -> w"\n', 'rule = ["port:80 -> nowhere"]\n'):
        caplog.clear()
        _write(conf, broken)
        bad = await reloader.reload()
        assert not bad.ok and bad.error
        assert bad.message.startswith(f"reload {conf} rejected, the previous configuration")
        errors = [rec for rec in caplog.records if rec.levelname == "ERROR"]
        assert len(errors) == 1 and errors[0].getMessage() == bad.message
        assert driver.upstream is applied and _target(driver, 80) == "w"
        assert driver.stack.config.tcp.idle_timeout == 5
    await driver.upstream.close()


async def test_reload_rebuilds_the_udpgw_client_with_its_new_settings(tmp_path: Path) -> None:
    from tun2proxy.upstream.udpgw import UdpgwUpstream

    conf = tmp_path / "t.toml"
    _write(conf, 'udpgw-server = "10.9.0.1:7300"\n')
    plan = _plan(conf)
    driver = _driver(plan)
    first = driver.upstream
    assert isinstance(first, UdpgwUpstream) and first.settings.connections == 5
    _write(conf, 'udpgw-server = "10.9.0.2:7300"\nudpgw-connections = 2\n')
    r = await Reloader(plan, driver).reload()
    assert r.ok and r.changed == ("udpgw-server", "udpgw-connections") and not r.restart
    up = driver.upstream
    assert isinstance(up, UdpgwUpstream) and up is not first
    assert (str(up.settings.server), up.settings.connections) == ("10.9.0.2:7300", 2)
    await up.close()
    await first.close()


async def test_half_open_timeout_and_the_dial_queue_are_live(tmp_path: Path) -> None:
    conf = tmp_path / "t.toml"
    _write(conf, "half-open-timeout = 2\nmax-connecting = 50\n")
    plan = _plan(conf)
    driver = _driver(plan)
    assert driver.stack.config.half_open_timeout == 2 and driver.config.max_connecting == 50
    _write(conf, "half-open-timeout = 1\nmax-connecting = 60\nqueue-timeout = 3\n"
           "max-connecting-per-destination = 7\nmtu = 1400\n")
    r = await Reloader(plan, driver).reload()
    assert r.ok and r.changed == (
        "max-connecting", "max-connecting-per-destination", "queue-timeout", "half-open-timeout"
    )  # in the options model's order
    assert r.restart == ("mtu",)
    assert driver.stack.config.half_open_timeout == 1
    c = driver.config
    assert (c.max_connecting, c.max_connecting_per_destination, c.queue_timeout) == (60, 7, 3.0)
    q = driver._dialer.queue
    assert (q.max_active, q.max_active_per_key, driver._dialer.queue_timeout) == (60, 7, 3.0)
    await driver.upstream.close()


async def test_without_a_config_file_there_is_nothing_to_reload() -> None:
    argv = ("--tun-fd", "3")
    plan = dataclasses.replace(prepare(parse_args(argv)), argv=argv)
    driver = _driver(plan)
    called: list[ReloadResult] = []
    r = await Reloader(plan, driver, after=called.append).reload()
    assert r.ok and r.path is None and "nothing to reload" in r.message
    assert called == [r]


async def test_log_level_changes_live(tmp_path: Path) -> None:
    import logging

    conf = tmp_path / "t.toml"
    _write(conf, 'verbosity = "info"\n')
    plan = _plan(conf)
    root = logging.getLogger()
    before = root.level
    try:
        _write(conf, 'verbosity = "error"\n')
        r = await Reloader(plan, _driver(plan)).reload()
        assert r.changed == ("verbosity",) and root.level == logging.ERROR
    finally:
        root.setLevel(before)


async def test_an_open_flow_keeps_its_upstream_while_new_flows_take_the_new_one() -> None:
    class Closing(LoopbackUpstream):
        closed = 0

        async def close(self) -> None:
            self.closed += 1

    async with server(_echo) as port:
        old, new = Closing({80: port}), Closing({80: port})
        async with running(old, DriverConfig(connect_timeout=1.0)) as (host, driver):
            a = host.connect("192.0.2.1", 80)
            await host.send_all(a, b"before")
            await host.wait(a, lambda x: bytes(x.received) == b"before")
            kept = driver.reconfigure(new, stack=dataclasses.replace(
                driver.stack.config, max_flows=10))
            assert kept == 1 and driver.upstream is new and driver.udp_upstream is new
            # the new upstream opens its sockets through this tunnel's Egress (loop detection)
            assert new.egress is driver.egress
            b = host.connect("192.0.2.1", 80)
            await host.send_all(b, b"new flow")
            await host.wait(b, lambda x: bytes(x.received) == b"new flow")
            data = os.urandom(200_000)  # the old flow goes on through its own connection
            await host.send_all(a, data)
            await host.wait(a, lambda x: len(x.received) >= 6 + len(data))
            assert bytes(a.received) == b"before" + data
            assert (len(old.opened), len(new.opened)) == (1, 1)
            assert driver.stack.config.max_flows == 10
            assert old.closed == 0  # its flow is open: not closed under it
            host.shutdown(a)
            await host.wait(a, lambda x: x.closed)
            await asyncio.sleep(0.05)
            driver.reconfigure()  # the old flow is gone: the replaced upstream is closed
            for _ in range(20):
                if old.closed:
                    break
                await asyncio.sleep(0.01)
            assert old.closed == 1 and new.closed == 0
        assert new.closed == 1 and old.closed == 1


async def test_stack_refuses_a_reconfigure_of_what_needs_a_new_stack() -> None:
    from tun2proxy.errors import ConfigError

    stack = Driver.make_stack(StackConfig(mtu=1500))
    with pytest.raises(ConfigError):
        stack.reconfigure(dataclasses.replace(stack.config, mtu=1400))
    stack.reconfigure(dataclasses.replace(stack.config, udp_timeout=3.0))
    assert stack.config.udp_timeout == 3.0


def test_the_docs_name_every_setting_as_live_or_needing_a_restart() -> None:
    docs = Path(__file__).parents[2] / "docs" / "config.md"
    section = docs.read_text().split("## Reload (SIGHUP)", 1)[1].split("\n## ", 1)[0]
    live = section.split("- **Live**:", 1)[1].split("- **Needs a restart**:", 1)[0]
    restart = section.split("- **Needs a restart**:", 1)[1].split("\n\n", 1)[0]
    for opt in options():
        where = live if opt.name in LIVE else restart
        assert f"`{opt.key}`" in where, opt.key


def test_a_sighup_while_starting_is_kept_for_the_serve_loop() -> None:
    import signal

    from tun2proxy.app.startup import StartupSignals

    previous = signal.getsignal(signal.SIGHUP)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        startup = StartupSignals()
        startup.install_reload()
        os.kill(os.getpid(), signal.SIGHUP)  # would end the process at its default action
        assert startup.reload_requested
    finally:
        signal.signal(signal.SIGHUP, previous)


async def test_a_proxy_file_is_re_read_without_a_config_file(tmp_path: Path) -> None:
    """--proxy-file alone (no --config) is reloadable: a rotated password or a new proxy in
    the file takes effect for new flows."""
    secret = tmp_path / "proxy.url"
    _write(secret, "socks5://192.0.2.7:1080\n")
    argv = ("--tun-fd", "3", "--proxy-file", str(secret))
    plan = dataclasses.replace(prepare(parse_args(argv)), argv=argv)
    driver = _driver(plan)
    reloader = Reloader(plan, driver)
    _write(secret, "socks5://u:rotated@192.0.2.8:1080\n")
    r = await reloader.reload()
    assert r.ok and r.path == str(secret) and r.changed == ("proxy",), r
    assert getattr(reloader.plan.main, "host", None) == "192.0.2.8"
    assert "rotated" not in r.message
    await driver.upstream.close()
