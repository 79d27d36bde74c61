"""Value parsers of the options model: text in, a typed value or :class:`BadValue` out (no I/O).

Every parser takes the text of one value (a command-line argument, or a config-file value
turned into text) and returns the typed value, or raises :class:`BadValue` whose message says
what is wrong and what is allowed, written to follow the option's name::

    --mtu must be between 576 and 65535 (got 100)
    --tcp-timeout must be a finite number of seconds, above 0 and at most 604800 (got 'nan')

Numbers are parsed without floats where a float could overflow or lose the value (sizes are
exact decimals, integers are digits only), so ``1e400``, ``infM`` or ten thousand digits are
refused with a message, never an ``OverflowError``.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..link.impair import Impairment
from ..routing.rules import BUILTIN_TARGETS, parse_network
from ..upstream.registry import upstream_from_url
from ..wire.pcapfilter import parse_filter

if TYPE_CHECKING:
    from decimal import Decimal

__all__ = [
    "MAX_FWMARK",
    "BadValue",
    "Parser",
    "choice",
    "dns_address",
    "fd_number",
    "format_dns_address",
    "format_size",
    "impairment",
    "integer",
    "interface",
    "interface_name",
    "listen_address",
    "mask_url",
    "named_upstream",
    "netns_name",
    "network",
    "one_line",
    "path",
    "pcap_filter",
    "pool",
    "proxy_url",
    "routing_table",
    "rule",
    "seconds",
    "server_address",
    "size",
]

#: The largest ``SO_MARK`` (an unsigned 32-bit integer).
MAX_FWMARK = (1 << 32) - 1
_MAX_TEXT = 4096
_INT = re.compile(r"[+-]?[0-9]{1,30}")
_LONG_INT = re.compile(r"[+-]?[0-9]+")
_SIZE = re.compile(r"([0-9]{1,30}(?:\.[0-9]{0,30})?(?:E[+-]?[0-9]{1,4})?)([KMGT]?)(?:I?B)?")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_IFNAMSIZ = 16


def one_line(text: str) -> str:
    """``text`` with every character that is not printable escaped (``\\n``, ``\\x1b``,
    ``\\u2028``, lone surrogates), so a message stays one line whatever a value held."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class BadValue(ValueError):
    """A value that is not allowed; the message follows the option's name (no name in it)."""


#: A value parser: the text of one value to its typed value.
Parser = Callable[[str], object]


def _shown(text: str) -> str:
    """``text`` quoted for a message, cut short when long."""
    return repr(text if len(text) <= 60 else text[:57] + "...")


def integer(lo: int, hi: int, what: str = "a number") -> Callable[[str], int]:
    """A whole number in ``[lo, hi]`` (digits only: no floats, no exponent)."""

    def parse(text: str) -> int:
        t = text.strip()
        if not _INT.fullmatch(t):
            if _LONG_INT.fullmatch(t):
                raise BadValue(f"must be between {lo} and {hi} (got a {len(t)}-digit number)")
            raise BadValue(f"{_shown(text)} is not {what} (allowed: {lo} to {hi})")
        v = int(t)
        if v < lo or v > hi:
            if lo == 1 and v < 1:
                raise BadValue(f"must be positive (got {t}; allowed: 1 to {hi})")
            raise BadValue(f"must be between {lo} and {hi} (got {t})")
        return v

    return parse


def routing_table(text: str) -> int:
    """A policy-routing table number: 1 to 4294967295, not 253-255 (default, main, local)."""
    n = integer(1, MAX_FWMARK, "a table number")(text)
    if n in (253, 254, 255):
        raise BadValue(
            f"{n} is the kernel's {({253: 'default', 254: 'main', 255: 'local'})[n]} table: "
            "choose a table of its own"
        )
    return n


def seconds(hi: float) -> Callable[[str], float]:
    """A duration in seconds: finite, above 0 and at most ``hi``."""
    allowed = f"above 0 and at most {hi:g}"

    def parse(text: str) -> float:
        t = text.strip()
        try:
            v = float(t) if len(t) <= 64 else math.nan
        except ValueError:
            raise BadValue(f"{_shown(text)} is not a number of seconds ({allowed})") from None
        if not math.isfinite(v):
            raise BadValue(f"must be a finite number of seconds, {allowed} (got {_shown(t)})")
        if v <= 0:
            raise BadValue(f"must be positive (got {t}; allowed: {allowed} seconds)")
        if v > hi:
            raise BadValue(f"must be at most {hi:g} seconds (got {t})")
        return v

    return parse


def seconds_or_off(hi: float) -> Callable[[str], float]:
    """A duration in seconds like :func:`seconds`, or ``0`` (off)."""
    positive = seconds(hi)

    def parse(text: str) -> float:
        t = text.strip()
        if t in ("0", "0.0", "off"):
            return 0.0
        try:
            return positive(t)
        except BadValue as e:
            raise BadValue(f"{e} (or 0: off)") from None

    return parse


def format_size(n: int) -> str:
    """``1048576`` as ``1M``; sizes that are no whole unit stay in bytes."""
    for unit in ("T", "G", "M", "K"):
        if n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)


def size(lo: int, hi: int) -> Callable[[str], int]:
    """A byte count: ``65536``, ``64K``, ``1.5M``, ``1G`` (binary units; ``KiB``/``KB`` too),
    in ``[lo, hi]``; computed exactly (no float)."""
    allowed = f"{format_size(lo)} to {format_size(hi)}"

    def parse(text: str) -> int:
        m = _SIZE.fullmatch(text.strip().upper())
        if m is None:
            raise BadValue(f"{_shown(text)} is not a size (e.g. 256K, 64M; allowed: {allowed})")
        number = m.group(1)
        if number.isdigit():
            exact: int | Decimal = int(number) * _UNITS[m.group(2)]
        else:  # a fraction: decimal only here, not at every start-up
            from decimal import Decimal, InvalidOperation

            try:
                exact = Decimal(number) * _UNITS[m.group(2)]
            except InvalidOperation:
                raise BadValue(f"{_shown(text)} is not a size (allowed: {allowed})") from None
        if exact < lo or exact > hi:
            raise BadValue(
                f"must be between {format_size(lo)} and {format_size(hi)} (got {text.strip()})"
            )
        return int(exact)

    return parse


def choice(options: Sequence[str]) -> Callable[[str], str]:
    """One of ``options``, exactly."""

    def parse(text: str) -> str:
        if text not in options:
            raise BadValue(f"invalid choice {_shown(text)} (choose from {', '.join(options)})")
        return text

    return parse


def interface(version: int) -> Callable[[str], str]:
    """An IPv4 or IPv6 address with a prefix length (``10.0.0.33/24``), normalised."""

    def parse(text: str) -> str:
        try:
            iface = ipaddress.ip_interface(text.strip())
        except ValueError:
            raise BadValue(f"{_shown(text)} is not an address/prefix") from None
        if iface.version != version:
            raise BadValue(f"{_shown(text)} is not an IPv{version} address/prefix")
        return str(iface)

    return parse


# Ranges a fake-address pool must not touch: addresses a dial would turn into something
# local or that never reach a TUN as a destination.
_SPECIAL4 = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
))
_SPECIAL6 = tuple(ipaddress.IPv6Network(n) for n in (
    "::/96", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "fe80::/10", "ff00::/8",
))
#: Pool prefix lengths allowed: at least 16 addresses, and not wider than this.
POOL_PREFIX = {4: (8, 28), 6: (32, 124)}


def _overlaps(
    a: ipaddress.IPv4Network | ipaddress.IPv6Network,
    b: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> bool:
    return (
        a.version == b.version
        and int(a.network_address) <= int(b.broadcast_address)
        and int(b.network_address) <= int(a.broadcast_address)
    )


def pool(version: int) -> Callable[[str], str]:
    """A range of fake addresses for virtual DNS: of the right family, /8../28 (IPv4) or
    /32../124 (IPv6), and clear of loopback, link-local, multicast, unspecified, reserved,
    IPv4-mapped/compatible and NAT64 ranges."""
    lo, hi = POOL_PREFIX[version]
    special = _SPECIAL4 if version == 4 else _SPECIAL6

    def parse(text: str) -> str:
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise BadValue(f"{_shown(text)} is not a network") from None
        if net.version != version:
            raise BadValue(f"{_shown(text)} is not an IPv{version} network")
        if not lo <= net.prefixlen <= hi:
            raise BadValue(
                f"{_shown(text)}: a pool must be /{lo} to /{hi} (at least 16 addresses, "
                f"not a whole address space)"
            )
        for s in special:
            if _overlaps(net, s):
                raise BadValue(
                    f"{_shown(text)} overlaps the special range {s}; use a private range "
                    f"({'e.g. 198.18.0.0/15' if version == 4 else 'e.g. fd27:4a46:c40a::/64'})"
                )
        return str(net)

    return parse


def network(text: str) -> str:
    """An IPv4 or IPv6 network or address (a ``--bypass`` entry), normalised."""
    try:
        return str(parse_network(text))
    except ValueError:
        raise BadValue(f"{_shown(text)}: not an IP address or network") from None


def dns_address(text: str) -> tuple[str, int]:
    """``8.8.8.8``, ``8.8.8.8:53``, ``[2001:4860::8888]:53`` or ``2001:4860::8888``."""
    bad = BadValue(f"{_shown(text)} is not an IP address with an optional port (1 to 65535)")
    t = text.strip()
    host, port = t, 53
    if t.startswith("["):
        host, _, rest = t[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:6].isdigit() or len(rest) > 6:
                raise bad
            port = int(rest[1:])
    elif t.count(":") == 1:
        host, _, p = t.partition(":")
        if not p.isdigit() or len(p) > 5:
            raise bad
        port = int(p)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise bad from None
    if not 0 < port < 65536:
        raise bad
    return host, port


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def server_address(text: str) -> str:
    """``HOST:PORT`` of a server (a name, an IPv4 address, or ``[IPv6]:PORT``), normalised;
    the port is required (1 to 65535)."""
    bad = BadValue(
        f"{_shown(text)} is not HOST:PORT (a host name, an IPv4 address or [IPv6], and a "
        "port 1 to 65535)"
    )
    t = text.strip()
    host, sep, port = t.rpartition(":")
    if not sep or not port.isdigit() or len(port) > 5 or not 0 < int(port) < 65536:
        raise bad
    if host.startswith("[") and host.endswith("]"):
        try:
            ip6 = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise bad from None
        return f"[{ip6}]:{int(port)}"
    if ":" in host:
        raise BadValue(f"{_shown(text)}: write an IPv6 address in brackets, [ADDR]:PORT")
    try:
        return f"{ipaddress.IPv4Address(host)}:{int(port)}"
    except ValueError:
        pass
    name = host.rstrip(".")
    labels = name.split(".")
    if (
        not name or len(name) > 253 or not all(_HOST_LABEL.fullmatch(x) for x in labels)
        or all(x.isdigit() for x in labels)  # 300.1.1.1: no IPv4 address, and no name
    ):
        raise bad
    return f"{name.lower()}:{int(port)}"


def format_dns_address(addr: tuple[str, int]) -> str:
    """The text :func:`dns_address` reads back."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def interface_name(text: str) -> str:
    """A network interface name: 1 to 15 bytes, no '/', ':' or white space, not '.' or '..'."""
    t = text.strip()
    if (
        not t or len(t.encode()) >= _IFNAMSIZ or t in (".", "..")
        or any(c in t for c in "/:") or any(c.isspace() for c in t)
    ):
        raise BadValue(
            f"{_shown(text)} is not an interface name (1 to 15 bytes; no '/', ':' or spaces)"
        )
    return t


def netns_name(text: str) -> str:
    """A network namespace: a name from ``ip netns``, or a path (any name with a '/')."""
    t = text.strip()
    if not t or t in (".", ".."):
        raise BadValue(f"{_shown(text)} is not a namespace (a name from 'ip netns', or a path)")
    return t


def path(text: str) -> str:
    """A file name (read later, bounded; see :mod:`tun2proxy.options.files`)."""
    if not text.strip():
        raise BadValue("is empty: give a file name")
    return text


def rule(text: str) -> str:
    """A routing rule's text (its syntax and targets are checked with all of them at start)."""
    if not text.strip():
        raise BadValue("is empty: give MATCHER[,MATCHER...] -> TARGET")
    return text.strip()


def fd_number(text: str) -> int:
    """A file descriptor number (whether it is open, and what it is, is checked at start)."""
    t = text.strip()
    if not _INT.fullmatch(t) or not 0 <= int(t) < 1 << 31:
        raise BadValue(f"must be a file descriptor number (got {_shown(text)})")
    return int(t)


def mask_url(url: str) -> str:
    """``url`` with its secrets replaced by ``***``: the password of ``user:pass@``, and the
    whole user info of ``ss://`` (SIP002 base64 holds the password), for messages and
    ``--print-config``."""
    head, sep, rest = url.partition("://")
    if not sep:
        return url
    cut = len(rest)
    for ch in "/?#":
        i = rest.find(ch)
        if i != -1:
            cut = min(cut, i)
    authority, tail = rest[:cut], rest[cut:]
    at = authority.rfind("@")
    if head.strip().lower() == "ss":
        if at == -1:  # the legacy form: everything in base64
            return f"{head}://***{tail}" if authority and tail[:1] != "/" else url
        user, colon, _ = authority[:at].partition(":")
        shown = f"{user}:***" if colon else "***"
        return f"{head}://{shown}{authority[at:]}{tail}"
    if at == -1:
        return url
    user, colon, _ = authority[:at].partition(":")
    return f"{head}://{user}{':***' if colon else ''}{authority[at:]}{tail}"


def _url_problem(e: ConfigError, raw: str) -> str:
    msg = str(e).removeprefix("proxy URL ")
    shown = mask_url(raw)
    return msg.replace(raw, shown) if shown != raw else msg


def proxy_url(text: str) -> str:
    """A proxy URL that :func:`~tun2proxy.upstream.upstream_from_url` accepts (built once
    here to check it, and again at start)."""
    t = text.strip()
    try:
        upstream_from_url(t)
    except ConfigError as e:
        raise BadValue(_url_problem(e, t)) from None
    return t


def named_upstream(text: str) -> str:
    """``NAME=URL``: a name rules can give as a target, and a proxy URL."""
    name, sep, url = text.partition("=")
    name = name.strip()
    if not sep or not name or not url.strip():
        raise BadValue(f"{_shown(mask_url(text))}: expected NAME=URL")
    if not name.replace("-", "").replace("_", "").isalnum() or not name.isascii():
        raise BadValue(f"{_shown(name)}: a name is letters, digits, '-' and '_'")
    if name in BUILTIN_TARGETS:
        raise BadValue(f"{_shown(name)}: the name is reserved (proxy, direct, reject)")
    return f"{name}={proxy_url(url)}"


def impairment(text: str) -> str:
    """An ``--impair`` spec that :meth:`~tun2proxy.link.impair.Impairment.parse` accepts."""
    try:
        Impairment.parse(text)
    except ConfigError as e:
        raise BadValue(f"{_shown(text)}: {e}") from None
    return text.strip()


# --- observability: --metrics, --pcap-filter


def listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` to listen on: an IP address (``[::1]:9100`` for IPv6) and a port."""
    t = text.strip()
    bad = BadValue(f"{_shown(text)} is not HOST:PORT (an IP address and a port, 1 to 65535; "
                   "[::1]:PORT for IPv6)")
    if t.startswith("["):
        host, _, rest = t[1:].partition("]")
        if not rest.startswith(":"):
            raise bad
        port = rest[1:]
    else:
        host, sep, port = t.rpartition(":")
        if not sep or ":" in host:
            raise bad
    if not port.isdigit() or len(port) > 5 or not 0 < int(port) < 65536:
        raise bad
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise bad from None
    return host, int(port)


def pcap_filter(text: str) -> str:
    """A ``--pcap-filter`` that :func:`~tun2proxy.wire.pcapfilter.parse_filter` accepts."""
    try:
        parse_filter(text)
    except ConfigError as e:
        raise BadValue(str(e).removeprefix("--pcap-filter ")) from None
    return text.strip()


# --- observability: --control


def split_control_address(text: str) -> str | tuple[str, int]:
    """A ``--control`` address: a unix socket path (has a ``/``, or no ``:``), or
    ``HOST:PORT`` / ``[V6]:PORT`` as ``(host, port)``."""
    t = text.strip()
    if "/" in t or ":" not in t:
        return t
    if t.startswith("["):
        host, _, rest = t[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = t.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or len(port) > 5:
        raise BadValue(f"{_shown(text)} is neither a socket path nor HOST:PORT (port 1 to 65535)")
    return host, int(port)


def control_address(text: str) -> str:
    """``--control``: a unix socket path or ``HOST:PORT`` (checked, kept as given)."""
    if not text.strip():
        raise BadValue("is empty: give a socket path or HOST:PORT")
    split_control_address(text)
    return text.strip()
