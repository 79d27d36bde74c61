"""Run ``python -m tun2proxy`` with the udpgw client wrapped around its upstream.

Interim, for the end-to-end tests and the benchmark until the CLI's options model carries the
udpgw flags: this script takes them itself (the names proposed for the CLI) and passes every
other argument to :func:`tun2proxy.cli.main`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's tun2proxy

from tun2proxy import cli
from tun2proxy.upstream.base import Upstream
from tun2proxy.upstream.udpgw import UdpgwSettings, UdpgwUpstream, parse_server


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--udpgw-server", required=True)
    p.add_argument("--udpgw-connections", type=int, default=5)
    p.add_argument("--udpgw-keepalive", type=float, default=10.0)
    p.add_argument("--udpgw-mode", choices=("auto", "always"), default="auto")
    p.add_argument("--udpgw-conids-per-connection", type=int, default=256)
    p.add_argument("--udpgw-transparent-dns", action="store_true")
    ours, rest = p.parse_known_args(argv)
    settings = UdpgwSettings(
        parse_server(ours.udpgw_server), connections=ours.udpgw_connections,
        keepalive=ours.udpgw_keepalive, mode=ours.udpgw_mode,
        max_conids=ours.udpgw_conids_per_connection,
        transparent_dns=ours.udpgw_transparent_dns,
    )
    build = cli._build_upstream

    async def with_udpgw(args: argparse.Namespace) -> Upstream:
        return UdpgwUpstream(await build(args), settings)

    cli._build_upstream = with_udpgw
    return cli.main(rest)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
