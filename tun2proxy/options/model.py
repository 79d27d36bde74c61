"""The options model: every setting of the command line, typed, with its default, help and
validation, in one frozen dataclass (no I/O).

:class:`Options` is the single source of truth: the argument parser
(:mod:`tun2proxy.options.argv`), the config file (:mod:`tun2proxy.options.configfile`),
``--print-config`` and the documentation test are all generated from its fields. Each
setting is a field whose metadata holds a :class:`Spec`; the flag is the field name with
``_`` turned into ``-`` (``tcp_buffer`` -> ``--tcp-buffer``) and the config-file key is the
flag without its dashes (``tcp-buffer``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError
from ..hostsetup.plan import (
    DEFAULT_FWMARK,
    DEFAULT_PRIORITY,
    DEFAULT_STATE_DIR,
    DEFAULT_TABLE,
    PRIORITY_SPAN,
    SetupError,
    validate_setup_options,
)
from . import values as v

__all__ = [
    "DEFAULT_MTU",
    "DEFAULT_TUN_ADDRESS",
    "DEFAULT_TUN_ADDRESS6",
    "DEFAULT_V6_POOL",
    "Option",
    "Options",
    "Spec",
    "UsageError",
    "option",
    "options",
]

#: The MTU of a TUN device we create: the largest a Linux TUN allows, so each Python
#: iteration moves up to 64 KiB (see docs/performance.md for the measurements).
DEFAULT_MTU = 65535
DEFAULT_TUN_ADDRESS = "10.0.0.33/24"
DEFAULT_TUN_ADDRESS6 = "fdfe:dcba:9876::1/125"
DEFAULT_V6_POOL = "fd27:4a46:c40a::/64"  # the same as tun2proxy.dns.pool.DEFAULT_V6_POOL


class UsageError(ConfigError):
    """A setting the user gave is wrong: one line for stderr, exit code 2."""


Kind = Literal["value", "switch", "list"]


@dataclass(frozen=True)
class Spec:
    """How one setting is given, checked, shown and documented.

    Attributes:
        help: one or two sentences for ``--help`` and the docs (the default is appended).
        parse: the text of one value -> the typed value (:mod:`.values`); None for switches.
        kind: ``value`` (one value), ``switch`` (on/off: ``--x`` and ``--no-x``), or ``list``
            (repeatable on the command line; an array in the config file).
        metavar: the value's placeholder in ``--help``.
        toml: the TOML types a config-file value may have (for a list: of each item).
        section: the ``--help`` section.
        short: a one-letter alias (``-v``).
        default_text: how to describe the default when the field's default is None.
        exclusive: command-line flags sharing this name exclude each other.
        secret: holds proxy URLs: credentials are masked wherever it is shown.
        show: the typed value -> the text or number written to a config file (default: as is).
    """

    help: str
    parse: v.Parser | None = None
    kind: Kind = "value"
    metavar: str | None = None
    toml: tuple[type, ...] = (str,)
    section: str = "general"
    short: str | None = None
    default_text: str | None = None
    exclusive: str | None = None
    secret: bool = False
    show: Callable[[Any], object] | None = None


def option(default: Any, spec: Spec) -> Any:
    """A dataclass field of :class:`Options` described by ``spec``."""
    return field(default=default, metadata={"spec": spec})


_SECONDS = (int, float)
_INT = (int,)
_SIZE = (int, str)


@dataclass(frozen=True)
class Options:
    """Every setting of a tun2proxy run, parsed and checked (build one with
    :func:`tun2proxy.options.parse_args`, or directly: the checks across settings run here).

    Fields with a :class:`Spec` are the settings (see docs/config.md); ``command``,
    ``config``, ``print_config`` and ``notes`` describe the invocation.
    """

    # --- the device
    tun: str | None = option(None, Spec(
        "TUN device: created and configured if missing (and removed on exit), used as it is "
        "if it exists", v.interface_name, metavar="NAME", section="device",
        default_text="tun0", exclusive="source"))
    tun_fd: int | None = option(None, Spec(
        "use an already-open TUN file descriptor (a TUN device, or a socket carrying one "
        "packet per message)", v.fd_number, metavar="FD", toml=_INT, section="device",
        exclusive="source"))
    tun_netns: str | None = option(None, Spec(
        "open the TUN device inside this network namespace (a name from 'ip netns', or a "
        "path); upstream connections still leave from the current namespace", v.netns_name,
        metavar="NETNS", section="device"))
    framing: Literal["none", "pi", "af", "vnet"] = option("none", Spec(
        "packet framing on --tun-fd: none (raw IP), pi (Linux packet information), af "
        "(4-byte address family, macOS utun), vnet (Linux IFF_VNET_HDR: offloads)",
        v.choice(("none", "pi", "af", "vnet")), metavar="{none,pi,af,vnet}",
        section="device"))
    proxy: str = option("direct://", Spec(
        "upstream proxy URL (direct:// connects from this host's own network)", v.proxy_url,
        metavar="URL", section="device", secret=True, exclusive="proxy",
        default_text="direct://, or $TUN2PROXY_PROXY when set"))
    proxy_file: str | None = option(None, Spec(
        "read the proxy URL from the first line of this file (a regular file of at most 64 "
        "KiB, mode 0600, owned by root or by us), so its credentials are not on the command "
        "line where every user sees them; re-read on SIGHUP", v.path, metavar="FILE",
        section="device", exclusive="proxy"))
    mtu: int | None = option(None, Spec(
        "MTU of a TUN device we create, or of --tun-fd (576 to 65535)", v.integer(576, 65535),
        metavar="N", toml=_INT, section="device",
        default_text=f"{DEFAULT_MTU}; an existing device keeps its own"))
    tun_address: str = option(DEFAULT_TUN_ADDRESS, Spec(
        "IPv4 address of a device we create", v.interface(4), metavar="CIDR",
        section="device"))
    tun_address6: str = option(DEFAULT_TUN_ADDRESS6, Spec(
        "IPv6 address of a device we create", v.interface(6), metavar="CIDR",
        section="device"))
    link_down_timeout: float | None = option(None, Spec(
        "when the TUN device goes down (ip link set DEV down), wait at most this long for it "
        "to come back up, keeping the flows, before exiting with an error (at most 604800)",
        v.seconds(604800), metavar="SECONDS", toml=_SECONDS, section="device",
        default_text="none: wait as long as the device exists"))
    unshare: bool = option(False, Spec(
        "run the command given after '--' in a new private network namespace whose only "
        "routes lead into the tunnel; exit with its exit code", kind="switch", toml=(bool,),
        section="device"))
    # --- speed
    offload: Literal["auto", "on", "off"] = option("auto", Spec(
        "checksum and segmentation offload on a TUN device we open (IFF_VNET_HDR, "
        "TUNSETOFFLOAD): auto uses it unless --impair is given",
        v.choice(("auto", "on", "off")), metavar="{auto,on,off}", section="speed"))
    loop: Literal["auto", "asyncio", "uvloop"] = option("auto", Spec(
        "event loop: uvloop when installed (pip install 'tun2proxy[fast]'), else asyncio's own",
        v.choice(("auto", "asyncio", "uvloop")), metavar="{auto,asyncio,uvloop}",
        section="speed"))
    workers: int = option(1, Spec(
        "processes, one per queue of a multi-queue TUN device (Linux; 1 to 64). Limits are "
        "divided among them; see docs/performance.md", v.integer(1, 64), metavar="N",
        toml=_INT, section="speed"))
    malloc_trim: float = option(30.0, Spec(
        "give memory that ended flows freed back to the system (glibc malloc_trim) at most "
        "this often, only after churn; 0: never (at most 86400)", v.seconds_or_off(86400),
        metavar="SECONDS", toml=_SECONDS, section="speed"))
    # --- limits
    tcp_timeout: float = option(600.0, Spec(
        "reset TCP flows idle for this long (at most 604800, a week)", v.seconds(604800),
        metavar="SECONDS", toml=_SECONDS, section="limits"))
    connect_timeout: float = option(10.0, Spec(
        "refuse a flow whose upstream connection takes longer; also bounds resolving the "
        "proxies' names at start (at most 3600)", v.seconds(3600), metavar="SECONDS",
        toml=_SECONDS, section="limits"))
    max_sessions: int = option(4096, Spec(
        "TCP flows at most (1 to 1048576); further connections are refused",
        v.integer(1, 1 << 20), metavar="N", toml=_INT, section="limits"))
    max_pending: int = option(256, Spec(
        "SYNs waiting for their upstream connection (dialling or in the dial queue) plus "
        "accepted handshakes the app has not answered yet, at most (1 to 65536); further SYNs "
        "are dropped (the app retransmits). Beyond half of it (a SYN flood) sources must "
        "complete the handshake before they cost an upstream dial", v.integer(1, 65536),
        metavar="N", toml=_INT, section="limits"))
    max_connecting: int = option(256, Spec(
        "upstream dials in flight at most (1 to 65536); further connects wait in the dial "
        "queue (no upstream socket; destinations take turns) for up to --queue-timeout "
        "(--max-pending bounds how many wait)",
        v.integer(1, 65536), metavar="N", toml=_INT, section="limits"))
    max_connecting_per_destination: int = option(32, Spec(
        "upstream dials in flight to one destination address at most (1 to 65536; at most "
        "--max-connecting), so one black-holed host cannot hold every dial slot",
        v.integer(1, 65536), metavar="N", toml=_INT, section="limits"))
    queue_timeout: float = option(10.0, Spec(
        "how long a connect may wait in the dial queue for a slot (at most 3600); then the "
        "app gets ICMP host unreachable (RST if its connection was already open)",
        v.seconds(3600), metavar="SECONDS", toml=_SECONDS, section="limits"))
    half_open_timeout: float = option(3.0, Spec(
        "under a SYN flood, drop a handshake whose SYN-ACK the source has not answered "
        "within this (at most 120; otherwise after the SYN-ACK retransmissions, about a "
        "minute)", v.seconds(120), metavar="SECONDS", toml=_SECONDS, section="limits"))
    tcp_buffer: int = option(1 << 20, Spec(
        "bytes buffered per TCP flow in each direction (4K to 1G, allocated only while data "
        "flows); the window advertised to apps is what is free of it; a download's send "
        "buffer grows up to 4 times this while it limits the flow (not under "
        "--memory-limit pressure)", v.size(4096, 1 << 30),
        metavar="SIZE", toml=_SIZE, section="limits", show=v.format_size))
    memory_limit: int | None = option(None, Spec(
        "budget for buffered data (1M to 1T, e.g. 64M): above half of it buffers shrink, at "
        "the limit new flows are refused", v.size(1 << 20, 1 << 40), metavar="SIZE",
        toml=_SIZE, section="limits", default_text="none", show=v.format_size))
    # --- UDP and DNS
    udp: Literal["proxy", "direct", "reject"] = option("proxy", Spec(
        "UDP policy: through the proxy when it can (else ICMP port unreachable), always "
        "direct, or reject at once so QUIC falls back to TCP",
        v.choice(("proxy", "direct", "reject")), metavar="{proxy,direct,reject}",
        section="udp and dns"))
    udp_timeout: float = option(30.0, Spec(
        "end UDP sessions idle for this long (at most 86400; DNS sessions at most 10)",
        v.seconds(86400), metavar="SECONDS", toml=_SECONDS, section="udp and dns"))
    max_udp_sessions: int = option(4096, Spec(
        "UDP sessions at most (1 to 1048576); the least recently used is evicted",
        v.integer(1, 1 << 20), metavar="N", toml=_INT, section="udp and dns"))
    dns: Literal["virtual", "over-tcp", "direct"] = option("direct", Spec(
        "DNS handling: virtual (answer with fake addresses; the proxy resolves names), "
        "over-tcp (forward queries as DNS over TCP through the proxy), direct (plain UDP)",
        v.choice(("virtual", "over-tcp", "direct")), metavar="{virtual,over-tcp,direct}",
        section="udp and dns"))
    dns_addr: tuple[str, int] = option(("8.8.8.8", 53), Spec(
        "DNS server for over-tcp and forwarded queries, and the resolver an --unshare "
        "command sees", v.dns_address, metavar="ADDR[:PORT]", section="udp and dns",
        show=v.format_dns_address))
    virtual_dns_pool: str = option("198.18.0.0/15", Spec(
        "IPv4 range of fake addresses for --dns virtual (/8 to /28, clear of special ranges)",
        v.pool(4), metavar="CIDR", section="udp and dns"))
    virtual_dns_pool6: str = option(DEFAULT_V6_POOL, Spec(
        "IPv6 range of fake addresses (/32 to /124, clear of special ranges)", v.pool(6),
        metavar="CIDR", section="udp and dns"))
    icmp: Literal["off", "reply"] = option("off", Spec(
        "ICMP echo: off (dropped) or reply (answered by tun2proxy itself, not the far host)",
        v.choice(("off", "reply")), metavar="{off,reply}", section="udp and dns"))
    # --- UDP via udpgw
    udpgw_server: str | None = option(None, Spec(
        "carry UDP inside TCP connections to this udpgw server (badvpn's protocol; "
        "'python -m tun2proxy.udpgw' is one), opened through --proxy: UDP for proxies that "
        "have none (microsocks, ssh -D, HTTP)", v.server_address, metavar="HOST:PORT",
        section="udpgw", default_text="none: UDP goes by the proxy's own means"))
    udpgw_mode: Literal["auto", "always"] = option("auto", Spec(
        "auto: udpgw only for sessions the proxy cannot carry itself (no UDP ASSOCIATE); "
        "always: every proxied UDP session through udpgw", v.choice(("auto", "always")),
        metavar="{auto,always}", section="udpgw"))
    udpgw_connections: int = option(5, Spec(
        "TCP connections to the udpgw server at most (1 to 256; divided among --workers); "
        "sessions are spread over them", v.integer(1, 256), metavar="N", toml=_INT,
        section="udpgw"))
    udpgw_conids_per_connection: int = option(256, Spec(
        "UDP destinations (conids) one connection carries at once (1 to 65536; badvpn's "
        "server allows 256 per client); beyond it the least recently used is evicted",
        v.integer(1, 65536), metavar="N", toml=_INT, section="udpgw"))
    udpgw_keepalive: float = option(10.0, Spec(
        "send a keepalive on a udpgw connection silent for this long (at most 3600; badvpn's "
        "server drops a client silent for 20 s)", v.seconds(3600), metavar="SECONDS",
        toml=_SECONDS, section="udpgw"))
    udpgw_queue: int = option(1 << 20, Spec(
        "bytes waiting to be sent on one udpgw connection at most (4K to 64M); datagrams "
        "beyond it are dropped and counted", v.size(4096, 64 << 20), metavar="SIZE",
        toml=_SIZE, section="udpgw", show=v.format_size))
    udpgw_transparent_dns: bool = option(False, Spec(
        "mark datagrams to port 53 as DNS: the udpgw server sends them to its own resolver, "
        "whatever address the app asked", kind="switch", toml=(bool,), section="udpgw"))
    # --- routing
    upstream: tuple[str, ...] = option((), Spec(
        "an extra upstream that rules can name (repeatable), e.g. work=socks5://10.1.0.1",
        v.named_upstream, kind="list", metavar="NAME=URL", section="routing", secret=True))
    bypass: tuple[str, ...] = option((), Spec(
        "send these destinations direct (repeatable); the proxy's own addresses always are",
        v.network, kind="list", metavar="CIDR", section="routing"))
    rule: tuple[str, ...] = option((), Spec(
        "a routing rule (repeatable), e.g. 'suffix:example.com,port:443 -> work'",
        v.rule, kind="list", metavar="RULE", section="routing"))
    rules: str | None = option(None, Spec(
        "routing rules, one per line (# comments; a regular file of at most 1 MiB)", v.path,
        metavar="FILE", section="routing"))
    sniff: bool = option(False, Spec(
        "read host names from TLS SNI / HTTP Host for flows without one (the handshake "
        "completes before the upstream is dialled; waits at most 300 ms for the bytes)",
        kind="switch", toml=(bool,), section="routing"))
    outbound_interface: str | None = option(None, Spec(
        "send tun2proxy's own connections out of this device (SO_BINDTODEVICE; it must "
        "exist), so a TUN holding the default route cannot capture them", v.interface_name,
        metavar="IFACE", section="routing"))
    fwmark: int | None = option(None, Spec(
        "set SO_MARK on tun2proxy's own sockets (1 to 4294967295), for policy routing around "
        "the TUN", v.integer(1, v.MAX_FWMARK), metavar="N", toml=_INT, section="routing",
        default_text=f"none; {DEFAULT_FWMARK} (0x{DEFAULT_FWMARK:x}) with --setup"))
    # --- host setup and service
    setup: bool = option(False, Spec(
        "route this whole host through the tunnel (Linux, root): a routing table and ip "
        "rules of its own send everything but the excluded (loopback, LAN, the proxies, the "
        "SSH session, --bypass) into the TUN, its own sockets are marked (--fwmark), the "
        "resolver points into the tunnel; all undone on exit. See docs/setup.md",
        kind="switch", toml=(bool,), section="setup"))
    setup_table: int = option(DEFAULT_TABLE, Spec(
        "the routing table --setup fills with the default routes into the TUN (1 to "
        "4294967295, not 253-255); it must be empty", v.routing_table, metavar="N",
        toml=_INT, section="setup"))
    setup_priority: int = option(DEFAULT_PRIORITY, Spec(
        f"the first ip rule priority of --setup; it uses N to N+{PRIORITY_SPAN - 1}, which "
        f"must be free (1 to {32766 - PRIORITY_SPAN})",
        v.integer(1, 32766 - PRIORITY_SPAN), metavar="N", toml=_INT, section="setup"))
    setup_ipv6: Literal["auto", "on", "off"] = option("auto", Spec(
        "carry IPv6 too: auto when the host has an IPv6 default route or --tun-address6 is "
        "given", v.choice(("auto", "on", "off")), metavar="{auto,on,off}", section="setup"))
    setup_dns: Literal["on", "off"] = option("on", Spec(
        "point the host resolver (--setup-resolv-conf) at the --dns-addr address, routed "
        "into the tunnel; the original comes back on exit", v.choice(("on", "off")),
        metavar="{on,off}", section="setup"))
    setup_dns_strict: bool = option(False, Spec(
        "no DNS leaves outside the tunnel: every packet of the host to port 53 (UDP and "
        "TCP, any address, LAN resolvers included) goes into it", kind="switch",
        toml=(bool,), section="setup"))
    setup_state_dir: str = option(DEFAULT_STATE_DIR, Spec(
        "where --setup records what it adds (before adding it), for --cleanup after a crash",
        v.path, metavar="DIR", section="setup"))
    setup_resolv_conf: str = option("/etc/resolv.conf", Spec(
        "the resolver file --setup replaces (a file or a symlink; systemd-resolved's is "
        "refused: see docs/setup.md)", v.path, metavar="FILE", section="setup"))
    pid_file: str | None = option(None, Spec(
        "write the process ID to this file once running (removed on exit)", v.path,
        metavar="FILE", section="setup"))
    # --- observability: metrics and packet capture
    metrics: tuple[str, int] | None = option(None, Spec(
        "serve Prometheus metrics at http://HOST:PORT/metrics (pip install "
        "'tun2proxy[metrics]'); with --workers N, worker i serves PORT+i",
        v.listen_address, metavar="HOST:PORT", section="observability",
        default_text="off", show=v.format_dns_address))
    pcap: str | None = option(None, Spec(
        "write every packet read from and written to the TUN to this pcapng file, '-' for "
        "standard output (| tshark -i -); with --workers N, worker i > 0 writes FILE.i",
        v.path, metavar="FILE", section="observability", default_text="off"))
    pcap_filter: str | None = option(None, Spec(
        "capture only packets matching this filter: [src|dst] host/net/port/portrange terms, "
        "tcp, udp, icmp, icmp6, ip, ip6, and/or/not and parentheses, e.g. 'host 10.0.0.1 and "
        "port 443'", v.pcap_filter, metavar="FILTER", section="observability",
        default_text="every packet"))
    pcap_max: int | None = option(None, Spec(
        "stop the capture once it has written this much (4K to 1T); the tunnel carries on",
        v.size(4096, 1 << 40), metavar="SIZE", toml=_SIZE, section="observability",
        default_text="no limit", show=v.format_size))
    pcap_snaplen: int | None = option(None, Spec(
        "keep at most this many bytes of each captured packet (64 to 262144): headers only "
        "cost far less than whole packets at high rates; lengths stay whole",
        v.integer(64, 262144), metavar="N", toml=_INT, section="observability",
        default_text="whole packets"))
    # --- testing and debugging
    impair: str | None = option(None, Spec(
        "testing and debugging: impair packets between the apps and tun2proxy, both ways, "
        "e.g. loss=5%,reorder=10%,dup=2%,delay=5ms,jitter=1ms,corrupt=0.1%,seed=1 (times at "
        "most 10s)", v.impairment, metavar="SPEC", section="debugging"))
    verbosity: Literal["off", "error", "warn", "info", "debug", "trace"] = option("info", Spec(
        "log level", v.choice(("off", "error", "warn", "info", "debug", "trace")),
        metavar="{off,error,warn,info,debug,trace}", section="debugging", short="-v"))
    # --- observability: the control API, flow logs, periodic stats (docs/observability.md)
    control: str | None = option(None, Spec(
        "serve the control API (flows, closing them, counters; used by 'tun2proxy top', "
        "'flows' and 'close') on a unix socket PATH (mode 0600) or on HOST:PORT (needs "
        "--control-token-file)", v.control_address, metavar="PATH|HOST:PORT",
        section="observability"))
    control_token_file: str | None = option(None, Spec(
        "file holding the bearer token that clients of --control must send (required with "
        "HOST:PORT; a regular file of at most 4 KiB, keep it mode 0600)", v.path,
        metavar="FILE", section="observability"))
    log_format: Literal["text", "json"] = option("text", Spec(
        "log lines as text, or as JSON lines with stable keys (ts, level, logger, msg, and "
        "each ended flow's fields) for log shippers", v.choice(("text", "json")),
        metavar="{text,json}", section="observability"))
    stats_interval: float | None = option(None, Spec(
        "log a one-line summary (flows, throughput each way, drops) every SECONDS at info "
        "(at most 86400)", v.seconds(86400), metavar="SECONDS", toml=_SECONDS,
        section="observability", default_text="off"))

    # --- the invocation (not settings: no flag of their own, no config-file key)
    #: the command after ``--`` (run with ``--unshare``).
    command: tuple[str, ...] = ()
    #: the ``--config`` file the settings were read from, if any.
    config: str | None = None
    #: ``--print-config``: show the settings and exit.
    print_config: bool = False
    #: ``--cleanup``: undo the ``--setup`` of a process that died without doing it, and exit.
    cleanup: bool = False
    #: warnings about how the settings were given (a config file others can read).
    notes: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        """The checks across settings (each value was checked on its own when parsed)."""
        try:
            validate_setup_options(
                setup=self.setup, cleanup=self.cleanup, unshare=self.unshare,
                tun_fd=self.tun_fd, tun_netns=self.tun_netns, workers=self.workers,
            )
        except SetupError as e:
            raise UsageError(str(e)) from None
        if self.cleanup and (self.unshare or self.tun_fd is not None or self.tun_netns):
            raise UsageError("--cleanup only undoes a --setup: drop --unshare/--tun-fd/--tun-netns")
        if self.unshare:
            if not self.command:
                raise UsageError("--unshare needs a command after '--' (e.g. -- curl http://...)")
            if self.tun_fd is not None or self.tun_netns:
                raise UsageError("--unshare creates its own device: drop --tun-fd/--tun-netns")
        elif self.command:
            raise UsageError("a command after '--' is only run with --unshare")
        if self.tun is not None and self.tun_fd is not None:
            raise UsageError("--tun and --tun-fd exclude each other: give one")
        if self.workers > 1 and self.tun_fd is not None:
            raise UsageError(
                "--workers needs a TUN device it opens itself (--tun or --unshare), not --tun-fd"
            )
        if self.framing != "none" and self.tun_fd is None:
            raise UsageError("--framing applies to --tun-fd only")
        if self.impair and self.offload == "on":
            raise UsageError("--impair works on plain packets: drop --offload on")
        if self.udpgw_server is None:
            given = [
                o.flag for o in options()
                if o.name.startswith("udpgw_") and o.name != "udpgw_server"
                and getattr(self, o.name) != o.default
            ]
            if given:
                raise UsageError(f"{given[0]} needs --udpgw-server HOST:PORT")
        elif self.udp != "proxy":
            raise UsageError(
                f"--udpgw-server carries proxied UDP, but --udp {self.udp} sends none through "
                "the proxy: drop one of them"
            )
        self._check_observability()
        if self.control and not self.control_token_file and isinstance(
            v.split_control_address(self.control), tuple
        ):
            raise UsageError(
                "--control HOST:PORT needs --control-token-file (a TCP port is open to every "
                "local user, a token keeps them out); or give a unix socket path"
            )
        names: set[str] = set()
        for spec in self.upstream:
            name = spec.partition("=")[0].strip()
            if name in names:
                raise UsageError(f"--upstream {name!r} given twice")
            names.add(name)

    def _check_observability(self) -> None:
        """--metrics and --pcap with --workers, and the capture flags without --pcap."""
        if self.pcap is None:
            for flag, value in (("--pcap-filter", self.pcap_filter), ("--pcap-max", self.pcap_max),
                                ("--pcap-snaplen", self.pcap_snaplen)):
                if value is not None:
                    raise UsageError(f"{flag} applies to --pcap only: give --pcap FILE too")
        elif self.pcap == "-" and self.workers > 1:
            raise UsageError("--pcap - (standard output) takes one worker: give --pcap FILE "
                             "(worker i > 0 writes FILE.i) or drop --workers")
        elif self.pcap == "-" and self.unshare:
            raise UsageError("--pcap - with --unshare: the command writes to the same standard "
                             "output; give --pcap FILE")
        if self.metrics is not None and self.metrics[1] + self.workers - 1 > 65535:
            raise UsageError(f"--metrics port {self.metrics[1]} + --workers {self.workers}: "
                             "worker i serves PORT+i, past 65535")

    @property
    def tun_name(self) -> str:
        """The TUN device to create or attach to (``--tun``, else ``tun0``)."""
        return self.tun or "tun0"

    @property
    def outbound_fwmark(self) -> int | None:
        """The ``SO_MARK`` of tun2proxy's own sockets: ``--fwmark``, else with ``--setup``
        the mark its rule keeps out of the tunnel (0x3074)."""
        if self.fwmark is None and self.setup:
            return DEFAULT_FWMARK
        return self.fwmark

    @property
    def extra_upstreams(self) -> dict[str, str]:
        """``--upstream`` as name -> URL."""
        out: dict[str, str] = {}
        for spec in self.upstream:
            name, _, url = spec.partition("=")
            out[name.strip()] = url.strip()
        return out


@dataclass(frozen=True)
class Option:
    """One setting of :class:`Options`: its field name, flag, config-file key and spec."""

    name: str
    spec: Spec
    default: Any

    @property
    def flag(self) -> str:
        """``--tcp-buffer``."""
        return "--" + self.name.replace("_", "-")

    @property
    def key(self) -> str:
        """``tcp-buffer``: the config-file key (the flag without its dashes)."""
        return self.name.replace("_", "-")

    def default_help(self) -> str:
        """`` (default 1M)``, or nothing when there is no default worth saying."""
        s = self.spec
        if s.default_text is not None:
            return f" (default {s.default_text})"
        if s.kind != "value" or self.default is None:
            return ""
        shown = s.show(self.default) if s.show is not None else self.default
        if isinstance(shown, float):
            shown = f"{shown:g}"
        return f" (default {shown})"


def options() -> Iterator[Option]:
    """Every setting of :class:`Options`, in declaration order."""
    for f in dataclasses.fields(Options):
        spec = f.metadata.get("spec")
        if isinstance(spec, Spec):
            yield Option(f.name, spec, f.default)
