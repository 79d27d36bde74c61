"""The command line: an argparse parser built from :class:`~tun2proxy.options.model.Options`,
and :func:`parse_args`, which merges defaults, the config file and the flags into Options.

argparse only collects the text of each flag given; every value is then parsed and checked by
its :class:`~tun2proxy.options.model.Spec`, the same code the config file goes through. Errors
are one line, ``tun2proxy: error: ...``, and exit code 2 (:class:`UsageError`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn

from .._version import __version__
from .configfile import load_config
from .model import Option, Options, UsageError, options
from .values import BadValue, one_line

__all__ = ["EPILOG", "build_parser", "parse_args"]

EPILOG = """\
config file: --config FILE reads settings from a TOML file, one key per flag without the
dashes (tcp-buffer = "256K", sniff = true, bypass = ["10.0.0.0/8"]); flags given on the
command line win. Keep credentials there, mode 0600, not on the command line (every local
user can read /proc/PID/cmdline). --print-config shows the result. See docs/config.md.

signals: SIGINT/SIGTERM shut down cleanly (also while starting); SIGUSR1 logs the counters
(flows, drops by reason, DNS, link) as one JSON line; SIGHUP re-reads --config and applies
rules, bypass, upstreams, log level and limits to new flows (open flows keep theirs).

examples:
  # run one command with all its traffic going through a SOCKS5 proxy
  sudo tun2proxy --unshare --proxy socks5://127.0.0.1:1080 -- curl https://example.com/

  # the same, leaving from this host's own network (the default upstream is direct://)
  sudo tun2proxy --unshare -- ping -c1 10.0.0.1

  # a proxy with credentials: keep them in a 0600 config file
  #   /etc/tun2proxy.toml:  proxy = "socks5://user:pass@proxy.example:1080"
  sudo tun2proxy --config /etc/tun2proxy.toml --tun tun0

  # use a TUN fd inherited from a parent process (Android VpnService style)
  tun2proxy --tun-fd 3 --mtu 1500 --proxy socks5://10.0.2.2:1080

  # Shadowsocks, with LAN and one company domain direct (names from TLS SNI / HTTP Host)
  sudo tun2proxy --config ss.toml --unshare --bypass 192.168.0.0/16 --sniff \\
      --rule "suffix:corp.example -> direct" -- firefox

proxy URLs: socks5://[user:pass@]host[:port] (port 1080), socks4://[userid@]host[:port],
socks4a://..., http://[user:pass@]host[:port] (CONNECT; port 8080),
ss://method:password@host:port or SIP002 ss://BASE64(method:password)@host:port
(aes-128-gcm, aes-256-gcm, chacha20-ietf-poly1305, 2022-blake3-*), direct://, reject://

rules: MATCHER[,MATCHER...] -> TARGET, first match wins; matchers cidr:NET, port:N[-M],
domain:NAME, suffix:NAME, keyword:TEXT, any; targets proxy, direct, reject or an --upstream
name. The proxy's own addresses and --bypass networks always go direct.
"""

_SECTIONS = {
    "device": None,  # the main section
    "speed": "speed",
    "limits": "limits",
    "udp and dns": "UDP and DNS",
    "routing": "routing",
    "debugging": "testing and debugging",
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``tun2proxy: error: ...``, exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def _escape(text: str) -> str:
    return text.replace("%", "%%")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter with the terminal width found without ``shutil`` (argparse
    imports it for every formatter it builds, one per ``add_argument``, and ``shutil`` brings
    ``bz2``/``lzma``: half a MiB of RSS for a width)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_columns() - 2)


def _columns() -> int:
    """``shutil.get_terminal_size().columns``: ``$COLUMNS``, the terminal's, or 80."""
    import os
    import sys

    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, generated from :class:`Options` (exposed for docs and tests).

    Every setting's default is ``SUPPRESS``: the namespace holds only the flags given, so
    they can override the config file.
    """
    p = _Parser(
        prog="tun2proxy",
        description="Route the traffic of a TUN device (or of one command) through a proxy.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    p.add_argument("--version", action="version", version=f"tun2proxy {__version__}")
    p.add_argument(
        "--config", metavar="FILE", default=argparse.SUPPRESS,
        help="read settings from this TOML file (keys as the flags without '--'; flags "
        "given here win); keep it mode 0600 when it holds credentials",
    )
    p.add_argument(
        "--print-config", action="store_true", default=argparse.SUPPRESS,
        help="print the effective settings as TOML (passwords masked) and exit",
    )
    groups: dict[str | None, Any] = {}
    exclusive: dict[str, Any] = {}
    for opt in options():
        s = opt.spec
        title = _SECTIONS.get(s.section, s.section)
        if title not in groups:
            groups[title] = p if title is None else p.add_argument_group(title)
        target = groups[title]
        if s.exclusive is not None:
            if s.exclusive not in exclusive:
                exclusive[s.exclusive] = target.add_mutually_exclusive_group()
            target = exclusive[s.exclusive]
        names = [opt.flag] if s.short is None else [s.short, opt.flag]
        help_text = _escape(s.help + opt.default_help())
        if s.kind == "switch":
            target.add_argument(
                *names, dest=opt.name, action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS, help=help_text,
            )
        elif s.kind == "list":
            target.add_argument(
                *names, dest=opt.name, action="append", metavar=s.metavar,
                default=argparse.SUPPRESS, help=help_text,
            )
        else:
            target.add_argument(
                *names, dest=opt.name, metavar=s.metavar, default=argparse.SUPPRESS,
                help=help_text,
            )
    return p


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        raise UsageError(f"{where}: the value contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{where}: the value is not valid UTF-8 text") from None


def _parse_value(opt: Option, raw: object, where: str) -> object:
    """A raw value (text, a bool, a list of text) -> the typed value of ``opt``."""
    s = opt.spec
    if s.kind == "switch":
        return bool(raw)
    assert s.parse is not None
    items = raw if isinstance(raw, list) else [raw]
    out = []
    for item in items:
        text = str(item)
        _check_text(text, where)
        try:
            out.append(s.parse(text))
        except BadValue as e:
            raise UsageError(f"{where} {e}") from None
    return tuple(out) if s.kind == "list" else out[0]


def parse_args(argv: Sequence[str]) -> Options:
    """Parse ``argv`` (and the ``--config`` file it names) into :class:`Options`; everything
    after ``--`` is the command for ``--unshare``.

    Raises:
        UsageError: a setting is wrong (one line, naming the flag or the file and key).
        SystemExit: argparse's own exits: ``--help``, ``--version`` (0), a malformed command
            line (2, after one line on stderr).
    """
    args = list(argv)
    command: list[str] = []
    if "--" in args:
        i = args.index("--")
        command = args[i + 1 :]
        args = args[:i]
    for a in args:
        _check_text(a, "the command line")
    ns = vars(build_parser().parse_args(args))
    config = ns.pop("config", None)
    print_config = bool(ns.pop("print_config", False))
    from_file: dict[str, object] = {}
    notes: tuple[str, ...] = ()
    if config is not None:
        from_file, notes = load_config(config)
    values: dict[str, Any] = {}
    for opt in options():
        if opt.name in ns:
            values[opt.name] = _parse_value(opt, ns[opt.name], opt.flag)
        elif opt.name in from_file:
            values[opt.name] = _parse_value(opt, from_file[opt.name], f"config {config}: {opt.key}")
    return Options(
        **values, command=tuple(command), config=config, print_config=print_config, notes=notes
    )
