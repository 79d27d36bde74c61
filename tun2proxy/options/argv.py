"""The command line: an argparse parser built from :class:`~tun2proxy.options.model.Options`,
and :func:`parse_args`, which merges defaults, the config file and the flags into Options.

argparse only collects the text of each flag given; every value is then parsed and checked by
its :class:`~tun2proxy.options.model.Spec`, the same code the config file goes through. Errors
are one line, ``tun2proxy: error: ...``, and exit code 2 (:class:`UsageError`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from .._version import __version__
from ..service import PROXY_ENV, SecretFileError, read_secret_file
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
rules, bypass, upstreams, log level and limits to new flows (open flows keep theirs); it
re-reads --proxy-file too. With --setup the host is given back on every exit but SIGKILL
(then: --cleanup).

watching a running tun2proxy (needs --control; see docs/observability.md):
  tun2proxy top --control PATH               a live table of flows (s sort, r reverse, q quit)
  tun2proxy flows --control PATH [--json]    the flows once
  tun2proxy close --control PATH ID|--host NAME|--dst ADDR[:PORT]|--upstream NAME

examples:
  # run one command with all its traffic going through a SOCKS5 proxy
  sudo tun2proxy --unshare --proxy socks5://127.0.0.1:1080 -- curl https://example.com/

  # the same, leaving from this host's own network (the default upstream is direct://)
  sudo tun2proxy --unshare -- ping -c1 10.0.0.1

  # a proxy with credentials: keep them in a 0600 config file
  #   /etc/tun2proxy.toml:  proxy = "socks5://user:pass@proxy.example:1080"
  sudo tun2proxy --config /etc/tun2proxy.toml --tun tun0

  # route this whole host through a proxy (routes, rules, DNS); undone on exit
  #   /etc/tun2proxy/proxy.url (mode 0600):  socks5://user:pass@proxy.example:1080
  sudo tun2proxy --setup --proxy-file /etc/tun2proxy/proxy.url --dns virtual
  sudo tun2proxy --cleanup   # after a kill -9 or a power cut (see docs/setup.md)

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
    "udpgw": "UDP via udpgw",
    "routing": "routing",
    "setup": "host setup and service (--setup: see docs/setup.md)",
    "observability": "metrics and packet capture",
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
    p.add_argument(
        "--cleanup", action="store_true", default=argparse.SUPPRESS,
        help="undo what a --setup that died without doing so (SIGKILL, power loss) left "
        "behind, from its state file in --setup-state-dir (only --tun NAME's when given), "
        "and exit",
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


def _proxy_source(values: dict[str, Any], cli: set[str], env: Mapping[str, str]) -> None:
    """Fill in ``proxy`` from ``proxy_file`` (read now: bounded, a 0600 regular file) or,
    when neither is given, from ``$TUN2PROXY_PROXY``. A flag wins over the config file;
    both in the same place are an error."""
    by_name = {o.name: o for o in options()}
    if "proxy" in values and "proxy_file" in values:
        if ("proxy" in cli) == ("proxy_file" in cli):
            raise UsageError("--proxy and --proxy-file exclude each other: give one")
        del values["proxy_file" if "proxy" in cli else "proxy"]
    path = values.get("proxy_file")
    if path is not None:
        try:
            url = read_secret_file(str(path))
        except SecretFileError as e:
            raise UsageError(f"--proxy-file: {e}") from None
        values["proxy"] = _parse_value(by_name["proxy"], url, f"--proxy-file {path}: the URL")
        return
    url = env.get(PROXY_ENV, "").strip()
    if "proxy" not in values and url:
        values["proxy"] = _parse_value(by_name["proxy"], url, f"${PROXY_ENV}: the URL")


def parse_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Options:
    """Parse ``argv`` (and the ``--config`` file it names) into :class:`Options`; everything
    after ``--`` is the command for ``--unshare``. The proxy URL comes from ``--proxy``,
    else the ``--proxy-file`` (read here), else ``$TUN2PROXY_PROXY`` in ``env`` (default
    ``os.environ``).

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
    cleanup = bool(ns.pop("cleanup", False))
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
    _proxy_source(values, set(ns), os.environ if env is None else env)
    return Options(
        **values, command=tuple(command), config=config, print_config=print_config,
        cleanup=cleanup, notes=notes,
    )
