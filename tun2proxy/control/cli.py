"""The terminal clients of the control API: ``tun2proxy top``, ``tun2proxy flows`` and
``tun2proxy close`` (``python -m tun2proxy SUBCOMMAND ...``).

Each finds the control API from ``--control PATH|HOST:PORT`` (with
``--control-token-file FILE`` for a TCP address) or from the ``control`` and
``control-token-file`` keys of ``--config FILE``. Mistakes are one line on stderr and exit
code 2; an unreachable or refusing server is one line and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections.abc import Sequence
from typing import NoReturn

from ..options.files import read_text_file, read_token_file
from ..options.model import UsageError
from .client import Cluster, ControlClientError
from .render import SORT_KEYS, flow_rows, sort_flows, table, totals_line

__all__ = ["SUBCOMMANDS", "main"]

SUBCOMMANDS = ("top", "flows", "close")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the control API is")
    g.add_argument("--control", metavar="PATH|HOST:PORT",
                   help="the --control address of the running tun2proxy")
    g.add_argument("--control-token-file", metavar="FILE",
                   help="the bearer token (needed for a HOST:PORT address)")
    g.add_argument("--config", metavar="FILE",
                   help="take control and control-token-file from this tun2proxy config file")


def build_parser() -> argparse.ArgumentParser:
    """The parser of the three subcommands."""
    p = _Parser(prog="tun2proxy", description="Look at and steer a running tun2proxy.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    top = sub.add_parser("top", help="a live table of flows (keys: s sort, r reverse, q quit)")
    _common(top)
    top.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                     help="refresh interval (default 1)")
    top.add_argument("--sort", choices=sorted(SORT_KEYS), default="rate",
                     help="initial sort column (default rate)")
    top.add_argument("--once", action="store_true",
                     help="print one frame as plain text and exit (no terminal needed)")
    flows = sub.add_parser("flows", help="print the flows once, as a table or JSON")
    _common(flows)
    flows.add_argument("--json", action="store_true", help="print the JSON of GET /flows")
    flows.add_argument("--sort", choices=sorted(SORT_KEYS), default="id",
                       help="sort column (default id)")
    close = sub.add_parser("close", help="close flows by id or by filter")
    _common(close)
    close.add_argument("ids", nargs="*", metavar="ID", help="flow ids (W:ID with --workers)")
    for flows_p in (flows, close):
        flows_p.add_argument("--dst", help="destination ADDR or ADDR:PORT")
        flows_p.add_argument("--host", help="host name (and names under it)")
        flows_p.add_argument("--upstream", help="upstream name")
        flows_p.add_argument("--protocol", choices=("tcp", "udp"))
    return p


def _where(args: argparse.Namespace) -> tuple[str, str | None]:
    control, token_file = args.control, args.control_token_file
    if args.config:
        text, _ = read_text_file(args.config, "--config")
        try:
            conf = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"--config {args.config}: {e}") from None
        control = control or conf.get("control")
        token_file = token_file or conf.get("control-token-file")
    if not isinstance(control, str) or not control:
        raise UsageError("give --control PATH|HOST:PORT (or --config with a control key)")
    token = read_token_file(token_file) if isinstance(token_file, str) and token_file else None
    return control, token


def _terms(args: argparse.Namespace) -> dict[str, str]:
    return {k: getattr(args, k) for k in ("dst", "host", "upstream", "protocol")
            if getattr(args, k, None)}


def main(argv: Sequence[str]) -> int:
    """Run ``top``, ``flows`` or ``close`` with ``argv`` (starting with the subcommand)."""
    args = build_parser().parse_args(list(argv))
    try:
        control, token = _where(args)
        if args.cmd == "close" and bool(args.ids) == bool(_terms(args)):
            raise UsageError("close: give flow ids, or --dst/--host/--upstream/--protocol")
        if args.cmd == "top" and not args.interval > 0:
            raise UsageError("top: --interval must be positive")
    except UsageError as e:
        sys.stderr.write(f"tun2proxy {args.cmd}: error: {e}\n")
        return 2
    try:
        cluster = Cluster(control, token)
        if args.cmd == "flows":
            return _flows(cluster, args)
        if args.cmd == "close":
            return _close(cluster, args)
        from .top import frame, run_top

        if args.once:
            sys.stdout.write("\n".join(frame(cluster, args.sort, True, 120, control)) + "\n")
            return 0
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise ControlClientError("needs a terminal (use 'top --once' or 'flows' otherwise)")
        import curses

        try:
            return run_top(cluster, control, args.sort, args.interval)
        except curses.error as e:
            raise ControlClientError(f"cannot drive this terminal: {e}") from None
    except ControlClientError as e:
        sys.stderr.write(f"tun2proxy {args.cmd}: {e}\n")
        return 1
    except KeyboardInterrupt:
        return 130


def _flows(cluster: Cluster, args: argparse.Namespace) -> int:
    flows = cluster.flows(**_terms(args))
    if args.json:
        sys.stdout.write(json.dumps({"workers": cluster.workers, "flows": flows}, indent=1))
        sys.stdout.write("\n")
        return 0
    flows = sort_flows(flows, args.sort, reverse=args.sort not in ("id", "dst"))
    for line in table(flow_rows(flows, cluster.workers), 160, SORT_KEYS[args.sort][0]):
        sys.stdout.write(line + "\n")
    sys.stdout.write(totals_line(cluster.stats(), flows) + "\n")
    return 0


def _close(cluster: Cluster, args: argparse.Namespace) -> int:
    closed: list[str] = []
    missing: list[str] = []
    if args.ids:
        for ident in args.ids:
            try:
                closed += cluster.close_flow(ident)
            except ControlClientError as e:
                if "HTTP 404" not in str(e):
                    raise
                missing.append(ident)
    else:
        closed = cluster.close_matching(**_terms(args))
    ids = [c.split(":", 1)[1] if cluster.workers == 1 else c for c in closed]
    sys.stdout.write(f"closed {len(ids)} flow(s){': ' + ' '.join(ids) if ids else ''}\n")
    if missing:
        sys.stderr.write(f"tun2proxy close: no such flow: {' '.join(missing)}\n")
        return 1
    return 0
