"""The dial queue's and the link's limits from the command line: --max-connecting,
--max-connecting-per-destination, --queue-timeout, --half-open-timeout and
--link-down-timeout reach DriverConfig, StackConfig and the link (divided among workers)."""

from __future__ import annotations

import pathlib
import socket

from tun2proxy.app.links import open_links
from tun2proxy.app.settings import driver_config, stack_config
from tun2proxy.driver import DriverConfig
from tun2proxy.options import parse_args
from tun2proxy.stack import StackConfig


def test_defaults_are_the_library_defaults() -> None:
    o = parse_args([])
    d, lib = driver_config(o, (0, 1), None), DriverConfig()
    assert (d.max_connecting, d.max_connecting_per_destination, d.queue_timeout) == (
        lib.max_connecting, lib.max_connecting_per_destination, lib.queue_timeout)
    assert stack_config(o, 1500).half_open_timeout == StackConfig().half_open_timeout
    assert o.link_down_timeout is None


def test_flags_reach_the_driver_and_the_stack() -> None:
    o = parse_args([
        "--max-connecting", "100", "--max-connecting-per-destination", "7",
        "--queue-timeout", "2.5", "--half-open-timeout", "1.5",
    ])
    d = driver_config(o, (0, 1), None)
    assert (d.max_connecting, d.max_connecting_per_destination, d.queue_timeout) == (100, 7, 2.5)
    assert stack_config(o, 1500).half_open_timeout == 1.5


def test_limits_are_divided_among_workers() -> None:
    o = parse_args(["--max-connecting", "101", "--max-connecting-per-destination", "9"])
    d = driver_config(o, (1, 4), None)
    assert (d.max_connecting, d.max_connecting_per_destination) == (26, 3)
    one = driver_config(parse_args(["--max-connecting-per-destination", "1"]), (0, 8), None)
    assert one.max_connecting_per_destination == 1  # never below one


def test_per_destination_is_at_most_the_total() -> None:
    d = driver_config(parse_args(["--max-connecting", "8"]), (0, 1), None)
    assert (d.max_connecting, d.max_connecting_per_destination) == (8, 8)


def test_link_down_timeout_reaches_the_link() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        for argv, want in (([], None), (["--link-down-timeout", "7"], 7.0)):
            opts = parse_args(["--tun-fd", str(a.fileno()), "--mtu", "1500", *argv])
            (link,) = open_links(opts, None)
            assert link.down_timeout == want
    finally:
        a.close()
        b.close()


def test_config_file_keys(tmp_path: pathlib.Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text(
        "max-connecting = 64\nmax-connecting-per-destination = 4\nqueue-timeout = 1\n"
        "half-open-timeout = 0.5\nlink-down-timeout = 30\n"
    )
    cfg.chmod(0o600)
    o = parse_args(["--config", str(cfg)])
    assert (o.max_connecting, o.max_connecting_per_destination, o.queue_timeout) == (64, 4, 1.0)
    assert (o.half_open_timeout, o.link_down_timeout) == (0.5, 30.0)
