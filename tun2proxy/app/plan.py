"""From checked settings to what a run is made of, before anything starts: the upstream
objects, the rule list (its file read, bounded), the impairment; and the checks of this
host that settings name (a device, an fd, a namespace).

Everything here fails with :class:`~tun2proxy.options.UsageError` (one line, exit code 2):
these are mistakes in what the user gave, found before a device is created or a socket
opened.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import select
import socket
import stat
from dataclasses import dataclass

from ..errors import ConfigError
from ..link.impair import Impairment
from ..link.netns import netns_path
from ..options import Options, UsageError, read_text_file
from ..options.files import read_token_file
from ..routing.rules import Rule, Rules
from ..upstream.base import Upstream
from ..upstream.registry import upstream_from_url
from ..upstream.udpgw import UdpgwSettings, parse_server

__all__ = ["Plan", "check_host", "prepare", "udpgw_settings"]


@dataclass(frozen=True)
class Plan:
    """A run's parts built from :class:`Options` (no I/O done by building them).

    Attributes:
        options: the settings.
        main: the ``--proxy`` upstream.
        extra: the ``--upstream`` upstreams by name.
        rules: ``--rule`` and ``--rules`` together (None when there are none).
        impairment: ``--impair`` and its seed.
        udpgw: the ``--udpgw-*`` settings (None without ``--udpgw-server``); the main
            upstream is wrapped in a UdpgwUpstream when the upstream is built.
        argv: the command line the settings came from (a reload parses it again, so its
            flags still win over the re-read config file).
        control_token: the bearer token of ``--control-token-file``, if given.
    """

    options: Options
    main: Upstream
    extra: dict[str, Upstream]
    rules: Rules | None
    impairment: tuple[Impairment, int] | None
    argv: tuple[str, ...] = ()
    udpgw: UdpgwSettings | None = None
    control_token: str | None = None


def _rules(opts: Options, known: set[str]) -> Rules | None:
    if not opts.rule and not opts.rules:
        return None
    lines: list[Rule] = []
    if opts.rules:
        text, _ = read_text_file(opts.rules, "--rules")
        lines += list(Rules.parse_text(text, known, source=f"rules file {opts.rules}"))
    if opts.rule:
        lines += list(Rules.parse(opts.rule, known, source="--rule"))
    return Rules(lines)


def prepare(opts: Options) -> Plan:
    """Build the run's parts from ``opts``.

    Raises:
        UsageError: a rule is wrong, the rules file cannot be read, or an optional
            dependency a setting needs is not installed.
    """
    if opts.loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise UsageError("--loop uvloop needs uvloop: pip install 'tun2proxy[fast]'")
    if opts.dns != "direct" and importlib.util.find_spec("dnslib") is None:
        raise UsageError(f"--dns {opts.dns} needs dnslib: pip install 'tun2proxy[dns]'")
    if opts.metrics is not None and importlib.util.find_spec("prometheus_client") is None:
        raise UsageError("--metrics needs prometheus-client: pip install 'tun2proxy[metrics]'")
    try:
        main = upstream_from_url(opts.proxy)
        extra = {name: upstream_from_url(url) for name, url in opts.extra_upstreams.items()}
        rules = _rules(opts, set(extra))
        impairment = Impairment.parse(opts.impair) if opts.impair else None
    except UsageError:
        raise
    except ConfigError as e:
        raise UsageError(str(e)) from None
    token = read_token_file(opts.control_token_file) if opts.control_token_file else None
    return Plan(
        opts, main, extra, rules, impairment, udpgw=udpgw_settings(opts),
        control_token=token,
    )


def udpgw_settings(opts: Options) -> UdpgwSettings | None:
    """The udpgw client's settings from the ``--udpgw-*`` options (each checked when parsed)."""
    if opts.udpgw_server is None:
        return None
    return UdpgwSettings(
        parse_server(opts.udpgw_server), connections=opts.udpgw_connections,
        keepalive=opts.udpgw_keepalive, mode=opts.udpgw_mode,
        max_conids=opts.udpgw_conids_per_connection, max_queued_bytes=opts.udpgw_queue,
        transparent_dns=opts.udpgw_transparent_dns,
    )


def _check_fd(fd: int) -> None:
    """An inherited fd must be open and pollable: a TUN (character) device or a socket."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError as e:
        if e.errno == errno.EBADF:
            raise UsageError(f"--tun-fd {fd} is not an open file descriptor") from None
        raise UsageError(f"--tun-fd {fd}: {e.strerror or e}") from None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISBLK(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else (
            "a regular file" if stat.S_ISREG(mode) else "a block device")
        raise UsageError(
            f"--tun-fd {fd} is {kind}, not a TUN device or packet socket (it cannot be polled)"
        )
    ep = select.epoll()
    try:
        ep.register(fd, select.EPOLLIN)
    except OSError as e:
        raise UsageError(f"--tun-fd {fd} cannot be polled ({e.strerror or e})") from None
    finally:
        ep.close()


def _check_capture_path(path: str) -> None:
    """--pcap FILE: its folder exists and is writable, and FILE is no folder."""
    folder = os.path.dirname(path) or "."
    if os.path.isdir(path):
        raise UsageError(f"--pcap {path}: is a folder; give a file name")
    if not os.path.isdir(folder):
        raise UsageError(f"--pcap {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--pcap {path}: cannot write in {folder}")


def check_host(opts: Options) -> None:
    """The checks of this host that the settings need: the outbound interface exists, an
    inherited fd is a pollable packet fd, a named namespace exists.

    Raises:
        UsageError: naming the setting and what is missing.
    """
    if opts.outbound_interface:
        try:
            socket.if_nametoindex(opts.outbound_interface)
        except OSError:
            raise UsageError(
                f"--outbound-interface {opts.outbound_interface}: no such network interface "
                "here (see 'ip link')"
            ) from None
    if opts.tun_fd is not None:
        _check_fd(opts.tun_fd)
    if opts.pcap is not None and opts.pcap != "-":
        _check_capture_path(opts.pcap)
    if opts.tun_netns and not os.path.exists(netns_path(opts.tun_netns)):
        raise UsageError(
            f"--tun-netns {opts.tun_netns}: no such network namespace "
            f"({netns_path(opts.tun_netns)} does not exist)"
        )
