"""The udpgw client's options: parsed and checked at parse time, from flags and the config
file, and turned into the UdpgwSettings the main upstream is wrapped with."""

from __future__ import annotations

import pathlib

import pytest

from tun2proxy.app.plan import prepare
from tun2proxy.app.upstreams import build_upstream
from tun2proxy.options import UsageError, parse_args
from tun2proxy.proxy.address import Address
from tun2proxy.upstream.direct import DirectUpstream
from tun2proxy.upstream.router import RoutingUpstream
from tun2proxy.upstream.socks5 import Socks5Upstream
from tun2proxy.upstream.udpgw import UdpgwSettings, UdpgwUpstream


def test_defaults_without_udpgw() -> None:
    o = parse_args([])
    assert o.udpgw_server is None
    assert (o.udpgw_mode, o.udpgw_connections, o.udpgw_conids_per_connection) == (
        "auto", 5, 256)
    assert (o.udpgw_keepalive, o.udpgw_queue, o.udpgw_transparent_dns) == (10.0, 1 << 20,
                                                                          False)
    plan = prepare(o)
    assert plan.udpgw is None
    assert not isinstance(build_upstream(plan, []), UdpgwUpstream)


def test_flags_become_settings() -> None:
    o = parse_args([
        "--udpgw-server", "GW.Example.:7300", "--udpgw-connections", "2",
        "--udpgw-keepalive", "2.5", "--udpgw-mode", "always",
        "--udpgw-conids-per-connection", "16", "--udpgw-queue", "64K",
        "--udpgw-transparent-dns",
    ])
    assert o.udpgw_server == "gw.example:7300"
    assert prepare(o).udpgw == UdpgwSettings(
        Address("gw.example", 7300), connections=2, keepalive=2.5, mode="always",
        max_conids=16, max_queued_bytes=64 << 10, transparent_dns=True,
    )


@pytest.mark.parametrize(("text", "host", "port"), [
    ("10.0.0.1:7300", "10.0.0.1", 7300),
    ("[2001:db8::1]:7300", "2001:db8::1", 7300),
    ("[::ffff:10.0.0.1]:1", "::ffff:a00:1", 1),
])
def test_server_forms(text: str, host: str, port: int) -> None:
    settings = prepare(parse_args(["--udpgw-server", text])).udpgw
    assert settings is not None and settings.server == Address(host, port)


def test_main_upstream_is_wrapped_not_the_router() -> None:
    """udpgw carries the proxy's UDP; bypassed and direct destinations keep their own."""
    plan = prepare(parse_args([
        "--proxy", "socks5://127.0.0.1:1080", "--udpgw-server", "10.0.0.1:7300",
        "--bypass", "192.168.0.0/16",
    ]))
    up = build_upstream(plan, ["127.0.0.1"])
    assert isinstance(up, RoutingUpstream)
    main = up.upstreams["proxy"]
    assert isinstance(main, UdpgwUpstream) and isinstance(main.inner, Socks5Upstream)
    assert main.settings.server == Address("10.0.0.1", 7300)
    assert "UDP via udpgw 10.0.0.1:7300" in up.describe()


def test_no_routing_wraps_the_proxy_itself() -> None:
    plan = prepare(parse_args(["--udpgw-server", "10.0.0.1:7300"]))
    up = build_upstream(plan, [])
    assert isinstance(up, UdpgwUpstream) and isinstance(up.inner, DirectUpstream)


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--udpgw-connections", "2"], "--udpgw-connections needs --udpgw-server"),
    (["--udpgw-mode", "always"], "--udpgw-mode needs --udpgw-server"),
    (["--udpgw-transparent-dns"], "--udpgw-transparent-dns needs --udpgw-server"),
    (["--udpgw-server", "10.0.0.1:7300", "--udp", "direct"], "--udp direct sends none"),
    (["--udpgw-server", "10.0.0.1:7300", "--udp", "reject"], "--udp reject sends none"),
])
def test_settings_that_do_not_go_together(argv: list[str], fragment: str) -> None:
    with pytest.raises(UsageError) as ei:
        parse_args(argv)
    assert fragment in str(ei.value) and "\n" not in str(ei.value)


def test_config_file_keys(tmp_path: pathlib.Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text(
        'udpgw-server = "10.0.0.1:7300"\nudpgw-connections = 3\nudpgw-keepalive = 4\n'
        'udpgw-queue = "256K"\nudpgw-transparent-dns = true\n'
    )
    cfg.chmod(0o600)
    o = parse_args(["--config", str(cfg), "--udpgw-connections", "4"])  # the flag wins
    assert (o.udpgw_server, o.udpgw_connections, o.udpgw_keepalive) == ("10.0.0.1:7300", 4, 4.0)
    assert o.udpgw_queue == 256 << 10 and o.udpgw_transparent_dns is True


def test_config_file_bad_value(tmp_path: pathlib.Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text('udpgw-server = "10.0.0.1:7300"\nudpgw-connections = 0\n')
    cfg.chmod(0o600)
    with pytest.raises(UsageError) as ei:
        parse_args(["--config", str(cfg)])
    assert "udpgw-connections must be positive" in str(ei.value)


def test_connections_are_divided_among_workers() -> None:
    plan = prepare(parse_args(["--udpgw-server", "10.0.0.1:7300", "--workers", "2",
                               "--udpgw-connections", "5", "--tun", "t0"]))
    up = build_upstream(plan, [])
    assert isinstance(up, UdpgwUpstream) and up.settings.connections == 3
