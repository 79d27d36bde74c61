"""The command line of the udpgw server: flags to :class:`ServerConfig`, then serve."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from .server import ServerConfig, UdpgwServer, parse_endpoint

__all__ = ["main"]


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return n


def _seconds(text: str) -> float:
    try:
        n = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not n > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return n


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tun2proxy.udpgw",
        description="A minimal udpgw server (badvpn protocol): clients reach it over TCP "
        "(usually through an SSH or SOCKS server) and it sends their UDP from this host.",
    )
    p.add_argument(
        "--listen", action="append", required=True, metavar="HOST:PORT",
        help="address to listen on (IPv6 as [addr]:port); may be repeated",
    )
    p.add_argument(
        "--max-clients", type=_positive, default=64, metavar="N",
        help="TCP connections served at once; more are closed at once (default 64)",
    )
    p.add_argument(
        "--max-connections-per-client", type=_positive, default=256, metavar="N",
        help="UDP sockets (conids) per TCP connection; beyond it the least recently used is "
        "closed, as badvpn-udpgw does (default 256)",
    )
    p.add_argument(
        "--client-timeout", type=_seconds, default=60.0, metavar="SECONDS",
        help="close a TCP connection that sent nothing for this long (default 60)",
    )
    p.add_argument(
        "--udp-idle-timeout", type=_seconds, default=120.0, metavar="SECONDS",
        help="close a conid's UDP socket idle this long (default 120)",
    )
    p.add_argument(
        "--dns", metavar="HOST:PORT",
        help="where datagrams with the DNS flag go (default: the first nameserver in "
        "/etc/resolv.conf)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log every conid")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags and serve until SIGINT/SIGTERM; bad flags: one line, exit 2."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s udpgw: %(message)s", stream=sys.stderr,
    )
    try:
        listen = [parse_endpoint(x) for x in args.listen]
        dns = parse_endpoint(args.dns) if args.dns else None
    except ValueError as e:
        print(f"python -m tun2proxy.udpgw: error: {e}", file=sys.stderr)
        return 2
    config = ServerConfig(
        max_clients=args.max_clients,
        max_connections_per_client=args.max_connections_per_client,
        client_timeout=args.client_timeout, udp_idle_timeout=args.udp_idle_timeout, dns=dns,
    )
    return asyncio.run(_serve(listen, config))


async def _serve(listen: list[tuple[str, int]], config: ServerConfig) -> int:
    server = UdpgwServer(config)
    try:
        await server.start(listen)
    except OSError as e:
        logging.getLogger("tun2proxy.udpgw").error("cannot listen: %s", e)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(s, stop.set)
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGUSR1, server.log_stats)
    await stop.wait()
    await server.close()
    return 0
