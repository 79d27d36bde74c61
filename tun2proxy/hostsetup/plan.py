"""What ``--setup`` will add to the host: the plan, its pieces, and the checks before it starts.

Pure computation (``ipaddress`` only): :func:`build_pieces` turns a :class:`SetupPlan` into the
ordered list of :class:`Piece` s that :class:`~tun2proxy.hostsetup.host.HostSetup` records in
its state file and then adds. Order matters: everything that keeps traffic *out* of the tunnel
is in place before the one rule that sends the rest *into* it, so at no moment is the SSH
session of the administrator running ``--setup`` captured.

Rules, for each IP version in use (``P`` = ``priority``, ``T`` = ``table``, ``M`` = ``fwmark``)::

    P+0  fwmark M lookup main              tun2proxy's own sockets (SO_MARK): never looped
    P+1  ipproto udp/tcp dport 53 lookup T  only with dns_strict: no DNS leaves outside
    P+2  to EXCLUDED lookup main           proxies, SSH peer, --bypass, loopback, link-local,
                                           multicast, limited broadcast
    P+3  lookup main suppress_prefixlength 0   the main table without its default route:
                                           LAN and other more-specific routes keep working
    P+4  lookup T                          everything else: T holds "default dev TUN"
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import Tun2ProxyError

__all__ = [
    "ALWAYS_EXCLUDED",
    "DEFAULT_FWMARK",
    "DEFAULT_PRIORITY",
    "DEFAULT_STATE_DIR",
    "DEFAULT_TABLE",
    "MAIN_TABLE",
    "PRIORITY_SPAN",
    "Piece",
    "SetupError",
    "SetupPlan",
    "SshPeer",
    "build_pieces",
    "exclusions",
    "parse_ssh_connection",
    "ssh_from_environment",
    "validate_setup_options",
]

#: Our routing table. Not 254/255/253 (main/local/default), not sing-box's and mihomo's 2022,
#: Tailscale's 52, wg-quick's 51820, Cilium's 2004/2005, nor the small numbers that hand-made
#: setups and AWS VPC CNI (2..N per interface) use.
DEFAULT_TABLE = 7368
#: First rule priority; the rules use DEFAULT_PRIORITY .. +PRIORITY_SPAN-1. After Tailscale
#: (5210-5270) and sing-box (9000 and the few after it), well before main (32766).
DEFAULT_PRIORITY = 9100
#: Priorities used from the first one (P+0 .. P+4).
PRIORITY_SPAN = 5
#: SO_MARK of tun2proxy's own sockets: 0x3074 touches none of the bits kube-proxy (0x4000,
#: 0x8000), Calico (0xffff0000), Cilium (0x0f00), Tailscale (0xff0000) or Istio (0x539)
#: give meaning to, and is not wg-quick's 0xca6c or one of the hand-written 1, 2, 100.
DEFAULT_FWMARK = 0x3074
DEFAULT_STATE_DIR = "/run/tun2proxy"
MAIN_TABLE = 254
_FULL_MASK = 0xFFFFFFFF

#: Kept out of the tunnel whatever the options: (CIDR, why).
ALWAYS_EXCLUDED: tuple[tuple[str, str], ...] = (
    ("127.0.0.0/8", "loopback"),
    ("::1/128", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("fe80::/10", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("ff00::/8", "multicast"),
    ("255.255.255.255/32", "broadcast"),
)


class SetupError(Tun2ProxyError):
    """``--setup``/``--cleanup`` cannot (or must not) go ahead; the message is one line for
    the user (the CLI prints it and exits with status 2)."""


@dataclass(frozen=True)
class SshPeer:
    """The far end of the SSH session ``--setup`` was started from (``SSH_CONNECTION``)."""

    address: str
    port: int


def ssh_from_environment(env: Mapping[str, str]) -> SshPeer | None:
    """The SSH peer of the session in ``env`` (pass ``os.environ``), or None."""
    return parse_ssh_connection(env.get("SSH_CONNECTION"))


def parse_ssh_connection(value: str | None) -> SshPeer | None:
    """The client of ``SSH_CONNECTION`` (``"client_ip client_port server_ip server_port"``).

    An IPv4-mapped IPv6 client (sshd listening on ``::``) becomes the IPv4 address; a zone
    (``%eth0``) is dropped. None when unset or unparsable.
    """
    if not value:
        return None
    parts = value.split()
    if len(parts) != 4:
        return None
    try:
        ip = ipaddress.ip_address(parts[0].split("%", 1)[0])
        port = int(parts[1])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return SshPeer(str(ip), port)


@dataclass(frozen=True)
class SetupPlan:
    """What ``--setup`` should do.

    Attributes:
        tun: the TUN device (it must exist and be up when the setup is applied).
        table: our routing table (holds the default routes into ``tun``).
        priority: the first of the rule priorities used (see the module docstring).
        fwmark: the SO_MARK tun2proxy's own sockets carry (``Outbound(fwmark=...)``).
        ipv6: ``auto`` (when the host has an IPv6 default route), ``on`` or ``off``.
        exclude: CIDRs kept out of the tunnel (``--bypass``).
        proxies: the addresses the proxy servers resolve to (kept out too).
        ssh: the SSH session's peer (kept out).
        dns: the nameserver the host resolver is pointed at (the address the ``--dns`` mode
            answers on, routed into the tunnel); None leaves the resolver alone.
        dns_strict: also route every DNS packet (UDP and TCP port 53) of the host into the
            tunnel, whatever its destination (LAN or bypassed resolvers included).
        resolv_conf: the resolver file (injectable for tests).
        tun_created: tun2proxy created the device: a cleanup after a crash deletes it if it
            is still there.
    """

    tun: str = "tun0"
    table: int = DEFAULT_TABLE
    priority: int = DEFAULT_PRIORITY
    fwmark: int = DEFAULT_FWMARK
    ipv6: Literal["auto", "on", "off"] = "auto"
    exclude: Sequence[str] = ()
    proxies: Sequence[str] = ()
    ssh: SshPeer | None = None
    dns: str | None = None
    dns_strict: bool = False
    resolv_conf: str = "/etc/resolv.conf"
    tun_created: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.table < 2**32 or self.table in (253, 254, 255):
            raise SetupError(f"setup table {self.table} is reserved or out of range (1-2^32)")
        if self.priority <= 0 or self.priority + PRIORITY_SPAN > 32766:
            raise SetupError(
                f"setup priority {self.priority} must be 1..{32766 - PRIORITY_SPAN} "
                "(before the main table's rule at 32766)"
            )
        if not 0 < self.fwmark < 2**32:
            raise SetupError(f"setup fwmark {self.fwmark} must be 1..2^32-1")
        if self.ipv6 not in ("auto", "on", "off"):
            raise SetupError(f"ipv6 must be auto, on or off, not {self.ipv6!r}")
        for c in self.exclude:
            try:
                ipaddress.ip_network(c, strict=False)
            except ValueError:
                raise SetupError(f"bypass {c!r} is not an address or CIDR") from None
        for a in self.proxies:
            try:
                ipaddress.ip_address(a.split("%", 1)[0])
            except ValueError:
                raise SetupError(f"proxy address {a!r} is not an IP address") from None
        if self.dns is not None:
            try:
                ipaddress.ip_address(self.dns)
            except ValueError:
                raise SetupError(f"DNS address {self.dns!r} is not an IP address") from None


@dataclass(frozen=True)
class Piece:
    """One thing added to the host: a rule, a route, or the resolver file.

    ``spec`` holds the pyroute2 keyword arguments (rule/route) or the saved resolver state,
    all JSON-serialisable so the state file can hold it; ``why`` says what it is for.
    """

    kind: Literal["rule", "route", "resolv", "device"]
    spec: Mapping[str, Any]
    why: str = ""

    def to_json(self) -> dict[str, Any]:
        """The piece as a JSON object for the state file."""
        return {"kind": self.kind, "spec": dict(self.spec), "why": self.why}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Piece:
        """The piece a :meth:`to_json` object describes."""
        kind = obj["kind"]
        if kind not in ("rule", "route", "resolv", "device"):
            raise ValueError(f"unknown piece kind {kind!r}")
        return cls(kind, dict(obj["spec"]), str(obj.get("why", "")))

    def describe(self) -> str:
        """The piece as ``ip rule``/``ip route`` would show it."""
        s = self.spec
        if self.kind == "rule":
            fam = "-6 " if s.get("family") == 10 else ""
            sel = []
            if "fwmark" in s:
                sel.append(f"fwmark {s['fwmark']:#x}")
            if "ip_proto" in s:
                sel.append(f"ipproto {'udp' if s['ip_proto'] == 17 else 'tcp'}")
            if "dport_range" in s:
                sel.append(f"dport {str(s['dport_range']).split(':')[0]}")
            if "dst" in s:
                sel.append(f"to {s['dst']}/{s['dst_len']}")
            table = "main" if s["table"] == MAIN_TABLE else str(s["table"])
            tail = " suppress_prefixlength 0" if "FRA_SUPPRESS_PREFIXLEN" in s else ""
            return f"ip {fam}rule {s['priority']}: {' '.join(sel) or 'all'} lookup {table}{tail}"
        if self.kind == "route":
            fam = "-6 " if s.get("family") == 10 else ""
            return f"ip {fam}route default dev {s.get('ifname', '?')} table {s['table']}"
        if self.kind == "device":
            return f"device {s.get('ifname')}"
        return f"resolver {s.get('path')} -> nameserver {s.get('nameserver')}"


def _net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    net = ipaddress.ip_network(text.split("%", 1)[0], strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen == 128:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network(f"{mapped}/32")
    return net


def exclusions(plan: SetupPlan) -> list[tuple[str, str]]:
    """Every CIDR kept out of the tunnel, with why, without duplicates, in a stable order."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(items: Iterable[tuple[str, str]]) -> None:
        for cidr, why in items:
            n = str(_net(cidr))
            if n not in seen:
                seen.add(n)
                out.append((n, why))

    add((a, "proxy server") for a in plan.proxies)
    if plan.ssh is not None:
        add([(plan.ssh.address, "SSH session")])
    add((c, "bypass") for c in plan.exclude)
    add(ALWAYS_EXCLUDED)
    return out


def build_pieces(plan: SetupPlan, *, ifindex: int, ipv6: bool) -> list[Piece]:
    """The rules and routes of ``plan`` in the order they are added (see the module docstring).

    ``ifindex`` is the TUN's index; ``ipv6`` says whether IPv6 is carried too (the caller
    resolved ``auto``). The resolver piece is not included: it is added last, separately.
    """
    fams = [2, 10] if ipv6 else [2]
    p, t = plan.priority, plan.table
    pieces: list[Piece] = []
    for f in fams:
        pieces.append(Piece("rule", {
            "family": f, "priority": p, "fwmark": plan.fwmark, "fwmask": _FULL_MASK,
            "table": MAIN_TABLE,
        }, "tun2proxy's own sockets"))
    for cidr, why in exclusions(plan):
        net = ipaddress.ip_network(cidr)
        f = 10 if net.version == 6 else 2
        if f not in fams:
            continue
        pieces.append(Piece("rule", {
            "family": f, "priority": p + 2, "dst": str(net.network_address),
            "dst_len": net.prefixlen, "table": MAIN_TABLE,
        }, why))
    for f in fams:
        pieces.append(Piece("rule", {
            "family": f, "priority": p + 3, "table": MAIN_TABLE, "FRA_SUPPRESS_PREFIXLEN": 0,
        }, "main table's more specific routes (LAN, on-link)"))
    for f in fams:
        pieces.append(Piece("route", {
            "family": f, "dst": "::/0" if f == 10 else "0.0.0.0/0", "oif": ifindex,
            "table": t, "ifname": plan.tun,
        }, "default route into the tunnel"))
    if plan.dns_strict:
        for f in fams:
            for proto in (17, 6):
                pieces.append(Piece("rule", {
                    "family": f, "priority": p + 1, "ip_proto": proto, "dport_range": "53:53",
                    "table": t,
                }, "every DNS query into the tunnel"))
    for f in fams:
        pieces.append(Piece("rule", {"family": f, "priority": p + 4, "table": t},
                            "everything else into the tunnel"))
    return pieces


def validate_setup_options(
    *,
    setup: bool,
    cleanup: bool = False,
    unshare: bool = False,
    tun_fd: int | None = None,
    tun_netns: str | None = None,
    workers: int = 1,
) -> None:
    """Refuse option combinations ``--setup``/``--cleanup`` cannot honour.

    Raises:
        SetupError: one line naming the conflicting options.
    """
    if setup and cleanup:
        raise SetupError("--setup and --cleanup cannot be combined (--cleanup only undoes)")
    if not setup:
        return
    if unshare:
        raise SetupError(
            "--setup routes the whole host; --unshare routes one command in its own namespace: "
            "choose one"
        )
    if tun_fd is not None:
        raise SetupError(
            "--setup needs a TUN device it can route to by name; it cannot be combined with "
            "--tun-fd"
        )
    if tun_netns is not None:
        raise SetupError(
            "--setup routes the namespace tun2proxy runs in; it cannot be combined with "
            "--tun-netns (run tun2proxy inside that namespace instead)"
        )
    del workers  # multi-queue workers are fine: they share one device
