"""``python -m tun2proxy``: command-line options -> link, stack, upstream -> Driver.

Flags follow the Rust tun2proxy where the meaning is the same (``--tun``, ``--tun-fd``,
``--proxy``, ``--mtu``, ``--unshare``, ``--tcp-timeout``, ``--max-sessions``,
``-v/--verbosity``). Bad arguments get a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ._version import __version__
from .errors import ConfigError
from .link.base import Link
from .link.fd import FdLink
from .link.unshare import PrivateNamespace, spawn_private
from .stack.config import StackConfig
from .tcp.config import TcpConfig

if TYPE_CHECKING:
    from .dns.pool import SlotDirectory
    from .routing.rules import Rule, Rules
    from .upstream.base import Upstream
    from .upstream.egress import Egress
    from .workers import WorkerSet

__all__ = ["DEFAULT_MTU", "Options", "build_parser", "main", "parse_args"]

log = logging.getLogger("tun2proxy")

#: The MTU of a TUN device we create: the largest a Linux TUN allows, so each Python
#: iteration moves up to 64 KiB (see docs/performance.md for the measurements).
DEFAULT_MTU = 65535
DEFAULT_TUN_ADDRESS = "10.0.0.33/24"
DEFAULT_TUN_ADDRESS6 = "fdfe:dcba:9876::1/125"
TRACE = 5

EPILOG = """\
signals: SIGINT/SIGTERM shut down cleanly; SIGUSR1 logs the counters (flows, drops by
reason, DNS, link) as one JSON line.

examples:
  # run one command with all its traffic going through a SOCKS5 proxy
  sudo python -m tun2proxy --unshare --proxy socks5://127.0.0.1:1080 -- curl https://example.com/

  # the same, leaving from this host's own network (the default upstream is direct://)
  sudo python -m tun2proxy --unshare -- ping -c1 10.0.0.1

  # serve a persistent TUN device whose routes you set up yourself
  sudo ip tuntap add dev tun0 mode tun && sudo ip link set tun0 up mtu 9000
  sudo python -m tun2proxy --tun tun0 --proxy socks5://user:pass@proxy.example:1080

  # use a TUN fd inherited from a parent process (Android VpnService style)
  python -m tun2proxy --tun-fd 3 --mtu 1500 --proxy socks5://10.0.2.2:1080

  # Shadowsocks, with LAN and one company domain direct (names from TLS SNI / HTTP Host)
  sudo python -m tun2proxy --unshare --proxy ss://aes-256-gcm:secret@203.0.113.7:8388 \
      --bypass 192.168.0.0/16 --sniff --rule "suffix:corp.example -> direct" -- firefox

proxy URLs: socks5://[user:pass@]host[:port] (port 1080), socks4://[userid@]host[:port],
socks4a://..., http://[user:pass@]host[:port] (CONNECT; port 8080),
ss://method:password@host:port or SIP002 ss://BASE64(method:password)@host:port
(aes-128-gcm, aes-256-gcm, chacha20-ietf-poly1305, 2022-blake3-*), direct://, reject://

rules: MATCHER[,MATCHER...] -> TARGET, first match wins; matchers cidr:NET, port:N[-M],
domain:NAME, suffix:NAME, keyword:TEXT, any; targets proxy, direct, reject or an --upstream
name. The proxy's own addresses and --bypass networks always go direct.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive(kind: type[float] | type[int]):  # type: ignore[no-untyped-def]
    def conv(text: str) -> float | int:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be positive")
        return v

    return conv


def _cidr(version: int):  # type: ignore[no-untyped-def]
    def conv(text: str) -> str:
        try:
            iface = ipaddress.ip_interface(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an address/prefix") from None
        if iface.version != version:
            raise argparse.ArgumentTypeError(f"{text!r} is not an IPv{version} address")
        return str(iface)

    return conv


def _network(version: int):  # type: ignore[no-untyped-def]
    def conv(text: str) -> str:
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a network") from None
        if net.version != version:
            raise argparse.ArgumentTypeError(f"{text!r} is not an IPv{version} network")
        if net.num_addresses < 16:
            raise argparse.ArgumentTypeError(f"{text!r} is too small for a pool")
        return str(net)

    return conv


def _size(text: str) -> int:
    """``65536``, ``64K``, ``64M``, ``1G`` (binary units)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = 1
    if t and t[-1] in "KMG":
        scale = 1 << {"K": 10, "M": 20, "G": 30}[t[-1]]
        t = t[:-1]
    try:
        v = int(float(t) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 256K, 64M)") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return v


def _dns_addr(text: str) -> tuple[str, int]:
    """``8.8.8.8``, ``8.8.8.8:53``, ``[2001:4860::8888]:53`` or ``2001:4860::8888``."""
    t = text.strip()
    host, port = t, 53
    if t.startswith("["):
        host, _, rest = t[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(text)
            port = int(rest[1:])
    elif t.count(":") == 1:
        host, _, p = t.partition(":")
        if not p.isdigit():
            raise ValueError(text)
        port = int(p)
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(text)
    return host, port


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    p = _Parser(
        prog="tun2proxy",
        description="Route the traffic of a TUN device (or of one command) through a proxy.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"tun2proxy {__version__}")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--tun", metavar="NAME",
        help="TUN device: created and configured if missing, used as it is if it exists "
        "(default tun0)",
    )
    src.add_argument(
        "--tun-fd", metavar="FD", type=int, help="use an already-open TUN file descriptor"
    )
    p.add_argument(
        "--tun-netns", metavar="NETNS",
        help="open the TUN device inside this network namespace (a name from 'ip netns', or a "
        "path); upstream connections still leave from the current namespace",
    )
    p.add_argument(
        "--framing", choices=("none", "pi", "af", "vnet"), default="none",
        help="packet framing on --tun-fd: none (raw IP), pi (Linux packet information), af "
        "(4-byte address family, macOS utun), vnet (Linux IFF_VNET_HDR: offloads)",
    )
    p.add_argument(
        "--offload", choices=("auto", "on", "off"), default="auto",
        help="checksum and segmentation offload on a TUN device we open (IFF_VNET_HDR, "
        "TUNSETOFFLOAD): auto uses it unless --impair is given (default auto)",
    )
    p.add_argument(
        "--proxy", metavar="URL", default="direct://",
        help="upstream proxy URL (default direct://: connect from this host's own network)",
    )
    p.add_argument(
        "--mtu", type=_positive(int),
        help=f"MTU of a TUN device we create, or of --tun-fd (default {DEFAULT_MTU}; an "
        "existing device keeps its own)",
    )
    p.add_argument(
        "--tun-address", type=_cidr(4), default=DEFAULT_TUN_ADDRESS, metavar="CIDR",
        help=f"IPv4 address of a device we create (default {DEFAULT_TUN_ADDRESS})",
    )
    p.add_argument(
        "--tun-address6", type=_cidr(6), default=DEFAULT_TUN_ADDRESS6, metavar="CIDR",
        help=f"IPv6 address of a device we create (default {DEFAULT_TUN_ADDRESS6})",
    )
    p.add_argument(
        "--unshare", action="store_true",
        help="run the command given after '--' in a new private network namespace whose only "
        "routes lead into the tunnel; exit with its exit code",
    )
    p.add_argument(
        "--tcp-timeout", type=_positive(float), default=600.0, metavar="SECONDS",
        help="reset TCP flows idle for this long (default 600)",
    )
    p.add_argument(
        "--connect-timeout", type=_positive(float), default=10.0, metavar="SECONDS",
        help="refuse a flow whose upstream connection takes longer (default 10)",
    )
    p.add_argument(
        "--max-sessions", type=_positive(int), default=4096, metavar="N",
        help="TCP flows at most; further connections are refused (default 4096)",
    )
    p.add_argument(
        "--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
        help="event loop: uvloop when installed (pip install 'tun2proxy[fast]'), else "
        "asyncio's own (default auto)",
    )
    p.add_argument(
        "--workers", type=_positive(int), default=1, metavar="N",
        help="processes, one per queue of a multi-queue TUN device (Linux; default 1). "
        "Limits are divided among them; see docs/performance.md",
    )
    p.add_argument(
        "--max-pending", type=_positive(int), default=256, metavar="N",
        help="TCP handshakes waiting for an upstream connection at most (default 256); SYN "
        "floods beyond half of it make sources complete the handshake first",
    )
    p.add_argument(
        "--tcp-buffer", type=_size, default=1024 * 1024, metavar="SIZE",
        help="bytes buffered per TCP flow in each direction (default 1M, allocated only while "
        "data flows); the window advertised to apps is what is free of it",
    )
    p.add_argument(
        "--memory-limit", type=_size, default=None, metavar="SIZE",
        help="budget for buffered data (e.g. 64M): above half of it buffers shrink, at the "
        "limit new flows are refused (default: none)",
    )
    p.add_argument(
        "--udp", choices=("proxy", "direct", "reject"), default="proxy",
        help="UDP policy: through the proxy when it can (else ICMP port unreachable), always "
        "direct, or reject at once so QUIC falls back to TCP (default proxy)",
    )
    p.add_argument(
        "--udp-timeout", type=_positive(float), default=30.0, metavar="SECONDS",
        help="end UDP sessions idle for this long (default 30; DNS sessions 10)",
    )
    p.add_argument(
        "--max-udp-sessions", type=_positive(int), default=4096, metavar="N",
        help="UDP sessions at most; the least recently used is evicted (default 4096)",
    )
    p.add_argument(
        "--dns", choices=("virtual", "over-tcp", "direct"), default="direct",
        help="DNS handling: virtual (answer with fake addresses; the proxy resolves names), "
        "over-tcp (forward queries as DNS over TCP through the proxy), direct (plain UDP; "
        "default)",
    )
    p.add_argument(
        "--dns-addr", default="8.8.8.8:53", metavar="ADDR[:PORT]",
        help="DNS server for over-tcp and forwarded queries, and the resolver an --unshare "
        "command sees (default 8.8.8.8:53)",
    )
    p.add_argument(
        "--virtual-dns-pool", type=_network(4), default="198.18.0.0/15", metavar="CIDR",
        help="IPv4 range of fake addresses for --dns virtual (default 198.18.0.0/15)",
    )
    p.add_argument(
        "--virtual-dns-pool6", type=_network(6), default=None, metavar="CIDR",
        help="IPv6 range of fake addresses (default fd27:4a46:c40a::/64)",
    )
    r = p.add_argument_group("routing")
    r.add_argument(
        "--upstream", metavar="NAME=URL", action="append", default=[],
        help="an extra upstream that rules can name (repeatable), e.g. work=socks5://10.1.0.1",
    )
    r.add_argument(
        "--bypass", metavar="CIDR", action="append", default=[],
        help="send these destinations direct (repeatable); the proxy's own addresses always are",
    )
    r.add_argument(
        "--rule", metavar="RULE", action="append", default=[],
        help="a routing rule (repeatable), e.g. 'suffix:example.com,port:443 -> work'",
    )
    r.add_argument("--rules", metavar="FILE", help="routing rules, one per line (# comments)")
    r.add_argument(
        "--sniff", action="store_true",
        help="read host names from TLS SNI / HTTP Host for flows without one (the handshake "
        "completes before the upstream is dialled; waits at most 300 ms for the bytes)",
    )
    r.add_argument(
        "--outbound-interface", metavar="IFACE",
        help="send tun2proxy's own connections out of this device (SO_BINDTODEVICE), so a "
        "TUN holding the default route cannot capture them",
    )
    r.add_argument(
        "--fwmark", metavar="N", type=_positive(int),
        help="set SO_MARK on tun2proxy's own sockets, for policy routing around the TUN",
    )
    p.add_argument(
        "--icmp", choices=("off", "reply"), default="off",
        help="ICMP echo: off (dropped) or reply (answered by tun2proxy itself, not the far "
        "host; default off)",
    )
    p.add_argument(
        "--impair", metavar="SPEC",
        help="testing and debugging: impair packets between the apps and tun2proxy, both ways, "
        "e.g. loss=5%%,reorder=10%%,dup=2%%,delay=5ms,jitter=1ms,corrupt=0.1%%,seed=1",
    )
    p.add_argument(
        "-v", "--verbosity", default="info",
        choices=("off", "error", "warn", "info", "debug", "trace"),
        help="log level (default info)",
    )
    return p


@dataclass
class Options:
    """Parsed command line."""

    args: argparse.Namespace
    command: list[str]


def parse_args(argv: Sequence[str]) -> Options:
    """Parse ``argv``; everything after ``--`` is the command for ``--unshare``."""
    argv = list(argv)
    command: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        command = argv[i + 1 :]
        argv = argv[:i]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.unshare:
        if not command:
            parser.error("--unshare needs a command after '--' (e.g. -- curl http://...)")
        if args.tun_fd is not None or args.tun_netns:
            parser.error("--unshare creates its own device: drop --tun-fd/--tun-netns")
    elif command:
        parser.error("a command after '--' is only run with --unshare")
    if args.tun_fd is not None and args.tun_fd < 0:
        parser.error("--tun-fd must be a file descriptor number")
    if args.workers > 1 and args.tun_fd is not None:
        parser.error("--workers needs a TUN device it opens itself (--tun or --unshare), "
                     "not --tun-fd")
    if args.workers > 64:
        parser.error("--workers must be at most 64")
    if args.framing != "none" and args.tun_fd is None:
        parser.error("--framing applies to --tun-fd only")
    if args.mtu is not None and not 576 <= args.mtu <= 65535:
        parser.error("--mtu must be between 576 and 65535")
    if not 4096 <= args.tcp_buffer <= 1 << 30:
        parser.error("--tcp-buffer must be between 4K and 1G")
    if args.memory_limit is not None and args.memory_limit < 1 << 20:
        parser.error("--memory-limit must be at least 1M")
    try:
        from .upstream.registry import upstream_from_url

        args.main_upstream = upstream_from_url(args.proxy)
        args.extra_upstreams = _extra_upstreams(args.upstream)
        args.rule_set = _rules(args)
        if args.bypass:
            from .routing.rules import parse_network

            for net in args.bypass:
                try:
                    parse_network(net)
                except ValueError:
                    raise ConfigError(f"--bypass {net!r}: not an IP address or network") from None
    except ConfigError as e:
        parser.error(str(e))
    try:
        args.dns_addr = _dns_addr(args.dns_addr)
    except ValueError:
        parser.error(f"--dns-addr {args.dns_addr!r} is not an IP address with an optional port")
    args.impairment = None
    if args.impair and args.offload == "on":
        parser.error("--impair works on plain packets: drop --offload on")
    if args.impair:
        from .link.impair import Impairment

        try:
            args.impairment = Impairment.parse(args.impair)
        except ConfigError as e:
            parser.error(f"--impair: {e}")
    if args.loop == "uvloop":
        import importlib.util

        if importlib.util.find_spec("uvloop") is None:
            parser.error("--loop uvloop needs uvloop: pip install 'tun2proxy[fast]'")
    if args.dns != "direct":
        import importlib.util

        if importlib.util.find_spec("dnslib") is None:
            parser.error(f"--dns {args.dns} needs dnslib: pip install 'tun2proxy[dns]'")
    return Options(args, command)


def _extra_upstreams(specs: Sequence[str]) -> dict[str, Upstream]:
    """``NAME=URL`` pairs of --upstream as upstreams by name."""
    from .routing.rules import BUILTIN_TARGETS
    from .upstream.registry import upstream_from_url

    out: dict[str, Upstream] = {}
    for spec in specs:
        name, sep, url = spec.partition("=")
        name = name.strip()
        if not sep or not name or not url.strip():
            raise ConfigError(f"--upstream {spec!r}: expected NAME=URL")
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"--upstream {name!r}: a name is letters, digits, '-' and '_'")
        if name in BUILTIN_TARGETS:
            raise ConfigError(f"--upstream {name!r}: the name is reserved (proxy, direct, reject)")
        if name in out:
            raise ConfigError(f"--upstream {name!r} given twice")
        out[name] = upstream_from_url(url)
    return out


def _rules(args: argparse.Namespace) -> Rules | None:
    """The rule list of --rule and --rules (None when there are none)."""
    from .routing.rules import Rules

    if not args.rule and not args.rules:
        return None
    known = set(args.extra_upstreams)
    lines: list[Rule] = []
    if args.rules:
        try:
            text = Path(args.rules).read_text()
        except OSError as e:
            raise ConfigError(f"--rules {args.rules}: {e.strerror or e}") from None
        lines += list(Rules.parse_text(text, known, source=f"rules file {args.rules}"))
    if args.rule:
        lines += list(Rules.parse(args.rule, known, source="--rule"))
    return Rules(lines)


def _setup_logging(level: str, tag: str = "") -> None:
    logging.addLevelName(TRACE, "TRACE")
    levels = {
        "off": logging.CRITICAL + 10,
        "error": logging.ERROR,
        "warn": logging.WARNING,
        "info": logging.INFO,
        "debug": logging.DEBUG,
        "trace": TRACE,
    }
    logging.basicConfig(
        level=levels[level], stream=sys.stderr,
        format=f"tun2proxy{tag}: %(levelname)s %(message)s", force=True,
    )


def _share(total: int, workers: int) -> int:
    """One worker's share of a limit (the shares add up to at least the limit)."""
    return max(1, -(-total // workers))


def _stack_config(
    args: argparse.Namespace, mtu: int, offload: bool = False, gso: int = 0, workers: int = 1
) -> StackConfig:
    pending = _share(args.max_pending, workers)
    memory = args.memory_limit
    return StackConfig(
        isn_secret=os.urandom(16),
        mtu=mtu,
        checksum_offload=offload,
        max_flows=_share(args.max_sessions, workers),
        max_pending=pending,
        syn_flood_threshold=max(1, pending // 2),
        memory_limit=None if memory is None else max(1 << 20, memory // workers),
        max_udp_sessions=_share(args.max_udp_sessions, workers),
        udp_timeout=args.udp_timeout,
        dns_timeout=min(10.0, args.udp_timeout),
        icmp_echo=args.icmp,
        tcp=TcpConfig(
            idle_timeout=args.tcp_timeout, recv_buffer=args.tcp_buffer,
            send_buffer=args.tcp_buffer, gso_max_size=gso if offload else 0,
        ),
    )


def _open_links(opts: Options, child: PrivateNamespace | None) -> list[FdLink]:
    """Open the TUN device or fd (synchronously: netlink setup runs before the loop); one
    link per queue with --workers."""
    from .link.netconf import InterfaceConfig
    from .link.tun_linux import (
        IFF_MULTI_QUEUE,
        IFF_NO_PI,
        IFF_TUN,
        IFF_VNET_HDR,
        open_tun,
        tun_link,
    )

    args = opts.args
    mtu = args.mtu or DEFAULT_MTU
    if args.tun_fd is not None:
        if args.framing == "vnet":
            from .link.vnet import VnetLink

            return [VnetLink(args.tun_fd, mtu, name=f"fd {args.tun_fd}")]
        return [FdLink(args.tun_fd, mtu, framing=args.framing, name=f"fd {args.tun_fd}")]
    offload = args.offload == "on" or (args.offload == "auto" and not args.impair)
    netns = child.netns if child is not None else args.tun_netns
    cfg = InterfaceConfig(
        addresses=(args.tun_address, args.tun_address6),
        mtu=mtu,
        default_routes=child is not None,
        loopback_up=child is not None,
    )
    flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
    if args.workers > 1:
        flags |= IFF_MULTI_QUEUE
    try:
        try:
            dev = open_tun(args.tun or "tun0", netns=netns, config=cfg, flags=flags)
        except OSError as e:
            if e.errno != errno.EINVAL or flags & IFF_MULTI_QUEUE:
                raise
            # An existing multi-queue device: one worker attaches as its single queue.
            dev = open_tun(args.tun or "tun0", netns=netns, config=cfg,
                           flags=flags | IFF_MULTI_QUEUE)
    except OSError as e:
        if args.workers > 1 and e.errno == errno.EINVAL:
            raise OSError(
                f"{args.tun or 'tun0'}: cannot open a queue ({e.strerror}); with --workers the "
                "device must be multi-queue (ip tuntap add ... multi_queue) or not exist yet"
            ) from None
        raise
    if not dev.created and args.mtu and args.mtu != dev.mtu:
        log.warning("%s exists with MTU %d; --mtu %d ignored", dev.name, dev.mtu, args.mtu)
    links = [tun_link(dev)]
    try:
        for _ in range(args.workers - 1):
            links.append(tun_link(open_tun(dev.name, netns=netns, flags=flags)))
    except OSError:
        for link in links:
            os.close(link.fd)
        raise
    link = links[0]
    offloads = "csum+tso" if getattr(link, "tso", False) else "csum" if offload else "none"
    queues = f", {args.workers} queues" if args.workers > 1 else ""
    log.info(
        "%s %s (mtu %d, offload %s%s%s)", "created" if dev.created else "attached to",
        dev.name, dev.mtu, offloads, queues,
        f", netns {args.tun_netns}" if args.tun_netns else "",
    )
    return links


async def _serve(
    opts: Options,
    link: Link,
    child: PrivateNamespace | None,
    worker: tuple[int, int] = (0, 1),
    directory: SlotDirectory | None = None,
    workers: WorkerSet | None = None,
) -> int:
    """Run the driver until a signal, a link failure or the child's exit (one worker's
    driver with --workers; ``workers`` is given to the main process, which watches them)."""
    from .driver.loop import Driver, DriverConfig

    args = opts.args
    loop = asyncio.get_running_loop()
    if args.impairment is not None:
        from .link.impair import ImpairedLink

        imp, seed = args.impairment
        link = ImpairedLink(link, imp, seed)
        log.warning("impairing the link on purpose: %s (seed %d)", args.impair, seed)
    try:
        upstream = await _build_upstream(args)
    except ConfigError as e:
        log.error("%s", e)
        return 1
    stack = Driver.make_stack(
        _stack_config(args, link.mtu, link.checksum_offload, link.gso_max_size, worker[1])
    )
    driver = Driver(
        stack, link, upstream,
        DriverConfig(
            connect_timeout=args.connect_timeout, udp=args.udp, dns=args.dns,
            dns_addr=args.dns_addr, virtual_dns_pool=args.virtual_dns_pool,
            virtual_dns_pool6=args.virtual_dns_pool6, sniff=args.sniff,
            worker=worker, dns_directory=directory,
        ),
        egress=_egress(args),
    )
    if worker[0] == 0:
        log.info("upstream %s", upstream.describe())
    exit_code = 0
    signals = (signal.SIGINT, signal.SIGTERM)

    def on_signal(signum: int) -> None:
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)
        else:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            driver.stop()

    for s in signals:
        loop.add_signal_handler(s, on_signal, s)

    def on_usr1() -> None:
        import json

        log.info("stats %s", json.dumps(driver.stats(), sort_keys=True, default=str))
        if workers is not None:
            workers.signal_all(signal.SIGUSR1)

    loop.add_signal_handler(signal.SIGUSR1, on_usr1)
    watched: list[int] = []
    if workers is not None:
        for index, wpid in workers.pids.items():
            wfd = os.pidfd_open(wpid)
            watched.append(wfd)

            def on_worker_exit(wfd: int = wfd, index: int = index, wpid: int = wpid) -> None:
                loop.remove_reader(wfd)
                code = workers.reap(wpid)
                if not driver.stopping:  # a crash, not our own shutdown
                    log.error(
                        "worker %d exited (status %s): its flows are gone; the kernel spreads "
                        "new ones over the remaining queues", index, code,
                    )

            loop.add_reader(wfd, on_worker_exit)
    pidfd = -1
    if child is not None:
        pidfd = os.pidfd_open(child.pid)
        pid = child.pid

        def on_child_exit() -> None:
            nonlocal exit_code
            loop.remove_reader(pidfd)
            _, status = os.waitpid(pid, 0)
            exit_code = os.waitstatus_to_exitcode(status)
            if exit_code < 0:
                exit_code = 128 - exit_code
            driver.stop()

        loop.add_reader(pidfd, on_child_exit)
        child.release()
    try:
        await driver.run()
    finally:
        for s in (*signals, signal.SIGUSR1):
            loop.remove_signal_handler(s)
        if pidfd >= 0:
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(pidfd)
            os.close(pidfd)
        for wfd in watched:
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(wfd)
            os.close(wfd)
        if worker[1] > 1:
            st = driver.stats()
            log.info(
                "worker %d of %d done: %s TCP flows, %s upstream failures", worker[0],
                worker[1], st.get("flows_opened"), st.get("flows_failed"),
            )
        if workers is not None and workers.pids:
            if workers.stop() and exit_code == 0 and child is None:
                exit_code = 1
    if child is None and driver.link_error is not None:
        return 1
    return exit_code


def _egress(args: argparse.Namespace) -> Egress:
    """The tunnel's Egress: --outbound-interface and --fwmark on every socket it opens."""
    from .upstream.egress import Egress, Outbound

    return Egress(Outbound(interface=args.outbound_interface, fwmark=args.fwmark))


async def _build_upstream(args: argparse.Namespace) -> Upstream:
    """The --proxy upstream, wrapped in a RoutingUpstream when routing applies.

    Routing applies with rules, --bypass or extra upstreams, and whenever the proxy is a
    server (its own addresses then always go direct, so no flow is proxied through itself).
    """
    main = args.main_upstream
    extra: dict[str, Upstream] = args.extra_upstreams
    servers = [u for u in (main, *extra.values()) if isinstance(getattr(u, "host", None), str)]
    if not (args.rule_set or args.bypass or extra or servers):
        return main  # type: ignore[no-any-return]
    from .routing.rules import Rules
    from .upstream.router import RoutingUpstream, resolve_proxy_addresses

    addresses: list[str] = []
    for u in servers:
        for a in await resolve_proxy_addresses(u.host):
            if a not in addresses:
                addresses.append(a)
    rules = args.rule_set if args.rule_set is not None else Rules()
    if rules.uses_domains and not args.sniff and args.dns != "virtual":
        log.warning(
            "rules match domains, but names are only known with --dns virtual or --sniff"
        )
    virtual = []
    if args.dns == "virtual":
        from .dns.pool import DEFAULT_V6_POOL

        virtual = [args.virtual_dns_pool, args.virtual_dns_pool6 or DEFAULT_V6_POOL]
    return RoutingUpstream(
        {"proxy": main, **extra}, rules, bypass=args.bypass, proxy_addresses=addresses,
        virtual_networks=virtual,
    )


def _raise_fd_limit(flows: int) -> None:
    """Every flow holds an upstream socket: lift the soft fd limit towards the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = flows + 256
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < flows + 64:
        log.warning(
            "the file descriptor limit (%d) is below --max-sessions %d; raise it with ulimit -n",
            soft, flows,
        )


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop --loop asks for: None for asyncio's own; uvloop's when chosen (or, with
    ``auto``, when it is installed)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        if choice == "uvloop":
            raise
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _run(opts: Options, coro: Coroutine[object, object, int]) -> int:
    """Run ``coro`` on the chosen event loop."""
    factory = _loop_factory(opts.args.loop)
    log.debug("event loop: %s", "asyncio" if factory is None else "uvloop")
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


class _StopEarly(Exception):
    """SIGTERM arrived before the event loop took over the signals."""


def _stop_early(signum: int, frame: object) -> None:
    raise _StopEarly


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tun2proxy`` and the ``tun2proxy`` script."""
    try:
        return _main(argv)
    except _StopEarly:
        # Still starting up (the loop installs its own handlers): nothing to close but what
        # the interpreter closes on exit, which removes a device we created with its fd.
        return 0


def _main(argv: Sequence[str] | None) -> int:
    # A SIGTERM during start-up is a clean stop, not death by signal (exit 0, as later).
    previous = signal.signal(signal.SIGTERM, _stop_early)
    if previous not in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, previous)  # an embedding program's handler stays
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    _setup_logging(opts.args.verbosity)
    _raise_fd_limit(opts.args.max_sessions)
    child: PrivateNamespace | None = None
    if opts.args.unshare:
        resolv = (
            "# written by tun2proxy --unshare: every lookup goes through the tunnel\n"
            f"nameserver {opts.args.dns_addr[0]}\n"
        )
        try:
            child = spawn_private(opts.command, resolv_conf=resolv)
        except OSError as e:
            log.error("--unshare: cannot create a network namespace: %s (run as root)", e)
            return 1
    try:
        links = _open_links(opts, child)
    except (OSError, ValueError, RuntimeError) as e:
        if child is not None:
            child.abandon()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child.pid, 0)
        log.error("cannot open the TUN device: %s", e)
        return 1
    n = len(links)
    workers: WorkerSet | None = None
    directory: SlotDirectory | None = None
    if n > 1:
        from .workers import WorkerSet

        if opts.args.dns == "virtual":
            from .dns.pool import FakeIpPool
            from .driver.shared import SharedSlotDirectory

            pool = FakeIpPool(opts.args.virtual_dns_pool, opts.args.virtual_dns_pool6
                              or "fd27:4a46:c40a::/64", capacity=1)
            directory = SharedSlotDirectory(pool.slots)
        workers = WorkerSet()
        fds = [link.fd for link in links]
        for i in range(1, n):
            def run(i: int = i) -> int:
                _setup_logging(opts.args.verbosity, f"[{i}]")
                return _run(opts, _serve(opts, links[i], None, (i, n), directory))

            workers.fork(i, run, [fd for j, fd in enumerate(fds) if j != i])
        for fd in fds[1:]:
            os.close(fd)  # the workers' queues are theirs alone
        _setup_logging(opts.args.verbosity, "[0]")
    try:
        return _run(opts, _serve(opts, links[0], child, (0, n), directory, workers))
    except KeyboardInterrupt:
        if workers is not None:
            workers.stop()
        return 130
