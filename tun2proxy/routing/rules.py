"""Routing rules: which upstream a flow takes, by destination address, port and host name.

Pure: no I/O. One rule per ``--rule`` string or per line of a rules file::

    # comment (also after a rule)
    MATCHER[,MATCHER...] -> TARGET

    cidr:10.0.0.0/8            destination IP in the network (IPv4 or IPv6; a bare IP is /32, /128)
    port:443   port:8000-8999  destination port, or an inclusive range
    domain:example.com         the flow's host name, exactly
    suffix:example.com         the host name or any name below it (``a.b.example.com``)
    keyword:tracker            the host name contains the word
    any                        every flow

All matchers of a rule must match; the first rule that matches decides; when none does the
default target (``proxy``) is used. A target is ``proxy``, ``direct``, ``reject`` or the name
of an extra upstream. Host names come from virtual DNS or from sniffing; a flow without one
never matches ``domain``/``suffix``/``keyword``, a flow without a (real) IP never matches
``cidr``. IPv4-mapped IPv6 destinations (``::ffff:a.b.c.d``) are matched as IPv4.

Cost of :meth:`Rules.match` with *R* rules: each rule is indexed by its most selective
matcher — exact names in a dict, suffixes in a dict probed once per label of the name
(O(labels)), networks in one dict per prefix length (O(distinct prefix lengths), at most 33
for IPv4 and 129 for IPv6), single ports in a dict; rules whose best matcher is a keyword,
a port range or ``any`` are scanned in order, but only up to the best indexed candidate. So
a lookup costs O(labels + prefix lengths + k log k + s) for k indexed candidates and s
scanned rules, independent of the number of ``domain``/``suffix``/``cidr``/``port`` rules.
"""

from __future__ import annotations

import abc
import ipaddress
import re
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

from ..dns.pool import normalize_name
from ..errors import ConfigError

__all__ = [
    "BUILTIN_TARGETS",
    "AnyMatcher",
    "CidrMatcher",
    "DomainMatcher",
    "IPAddress",
    "KeywordMatcher",
    "Matcher",
    "NetworkSet",
    "PortMatcher",
    "Rule",
    "Rules",
    "SuffixMatcher",
    "parse_network",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Targets that always exist: through the main proxy, straight out, or refused.
BUILTIN_TARGETS: frozenset[str] = frozenset({"proxy", "direct", "reject"})

_TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_KEYWORD = re.compile(r"[a-z0-9_.-]{1,253}")
_PORT = re.compile(r"[0-9]{1,5}")


def _plain_ip(ip: IPAddress) -> IPAddress:
    """``ip``, with an IPv4-mapped IPv6 address turned into its IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return mapped
    return ip


def _plain_domain(domain: str | None) -> str | None:
    """A cheap normalisation of a name from the host (lower case, no trailing dot)."""
    if not domain:
        return None
    d = domain.lower()
    if d.endswith("."):
        d = d[:-1]
    return d or None


def parse_network(text: str) -> IPNetwork:
    """An IPv4/IPv6 network from ``a.b.c.d/n``, ``v6/n`` or a bare address (host bits ignored).

    Raises:
        ValueError: ``text`` is not a network.
    """
    t = text.strip()
    if t.startswith("[") and "]" in t:  # [v6]/n or [v6]
        close = t.index("]")
        t = t[1:close] + t[close + 1 :]
    net = ipaddress.ip_network(t, strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network(f"{mapped}/{net.prefixlen - 96}", strict=False)
    return net


# ------------------------------------------------------------------------------ networks

_V = TypeVar("_V")


class _PrefixIndex(Generic[_V]):
    """Values keyed by network, looked up by address: one dict per prefix length."""

    __slots__ = ("_lengths", "_max", "_tables")

    def __init__(self, bits: int) -> None:
        self._max = bits
        self._tables: dict[int, dict[int, list[_V]]] = {}
        self._lengths: list[tuple[int, int, dict[int, list[_V]]]] = []

    def add(self, net: IPNetwork, value: _V) -> None:
        """Store ``value`` under ``net``."""
        table = self._tables.get(net.prefixlen)
        if table is None:
            table = self._tables[net.prefixlen] = {}
            self._lengths = [
                (plen, ((1 << plen) - 1) << (self._max - plen), t)
                for plen, t in sorted(self._tables.items())
            ]
        table.setdefault(int(net.network_address), []).append(value)

    def lookup(self, addr: int) -> Iterator[_V]:
        """Every value whose network contains ``addr``."""
        for _plen, mask, table in self._lengths:
            values = table.get(addr & mask)
            if values:
                yield from values

    def __bool__(self) -> bool:
        return bool(self._tables)


class NetworkSet:
    """A set of IPv4/IPv6 networks with membership tests in O(distinct prefix lengths)."""

    __slots__ = ("_v4", "_v6", "networks")

    def __init__(self, networks: Iterable[str | IPNetwork] = ()) -> None:
        self._v4: _PrefixIndex[None] = _PrefixIndex(32)
        self._v6: _PrefixIndex[None] = _PrefixIndex(128)
        nets = [parse_network(n) if isinstance(n, str) else n for n in networks]
        v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
        v6 = [n for n in nets if isinstance(n, ipaddress.IPv6Network)]
        #: The networks, collapsed (IPv4 first), e.g. for route exclusions.
        self.networks: tuple[IPNetwork, ...] = (
            *ipaddress.collapse_addresses(v4),
            *ipaddress.collapse_addresses(v6),
        )
        for net in self.networks:
            (self._v4 if net.version == 4 else self._v6).add(net, None)

    def __contains__(self, ip: object) -> bool:
        if isinstance(ip, str):
            try:
                ip = ipaddress.ip_address(ip)
            except ValueError:
                return False
        if not isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            return False
        ip = _plain_ip(ip)
        index = self._v4 if ip.version == 4 else self._v6
        return any(True for _ in index.lookup(int(ip)))

    def __len__(self) -> int:
        return len(self.networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __repr__(self) -> str:
        return f"NetworkSet([{', '.join(repr(str(n)) for n in self.networks)}])"


# ------------------------------------------------------------------------------ matchers


class Matcher(abc.ABC):
    """One condition of a rule on a flow's destination IP, port and host name."""

    __slots__ = ()

    #: The matcher's keyword in the rule syntax.
    kind: ClassVar[str]

    @abc.abstractmethod
    def matches(self, ip: IPAddress | None, port: int, domain: str | None) -> bool:
        """Whether the flow satisfies this condition (``ip`` plain, ``domain`` normalised)."""


@dataclass(frozen=True, slots=True)
class CidrMatcher(Matcher):
    """``cidr:NET``: the destination IP lies in ``network``."""

    kind: ClassVar[str] = "cidr"
    network: IPNetwork

    def matches(self, ip: IPAddress | None, port: int, domain: str | None) -> bool:
        """True when ``ip`` is in the network."""
        return ip is not None and ip.version == self.network.version and ip in self.network

    def __str__(self) -> str:
        return f"cidr:{self.network}"


@dataclass(frozen=True, slots=True)
class PortMatcher(Matcher):
    """``port:N`` or ``port:LOW-HIGH``: the destination port, inclusive range."""

    kind: ClassVar[str] = "port"
    low: int
    high: int

    def matches(self, ip: IPAddress | None, port: int, domain: str | None) -> bool:
        """True when ``low <= port <= high``."""
        return self.low <= port <= self.high

    def __str__(self) -> str:
        return f"port:{self.low}" if self.low == self.high else f"port:{self.low}-{self.high}"


@dataclass(frozen=True, slots=True)
class DomainMatcher(Matcher):
    """``domain:NAME``: the host name is exactly ``name``."""

    kind: ClassVar[str] = "domain"
    name: str

    def matches(self, ip: IPAddress | None, port: int, domain: str | None) -> bool:
        """True when ``domain == name``."""
        return domain == self.name

    def __str__(self) -> str:
        return f"domain:{self.name}"


@dataclass(frozen=True, slots=True)
class SuffixMatcher(Matcher):
    """``suffix:NAME``: the host name is ``suffix`` or a name below it."""

    kind: ClassVar[str] = "suffix"
    suffix: str

    def matches(self, ip: IPAddress | None, port: int, domain: str | None) -> bool:
        """True for ``suffix`` itself and for ``*.suffix`` (label-aligned)."""
        if domain is None:
            return False
        return domain == self.suffix or domain.endswith("." + self.suffix)

    def __str__(self) -> str:
        return f"suffix:{self.suffix}"


@dataclass(frozen=True, slots=True)
class KeywordMatcher(Matcher):
    """``keyword:WORD``: the host name contains ``word``."""

    kind: ClassVar[str] = "keyword"
    word: str

    def matches(self, ip: IPAddress | None, port: int, domain: str | None) -> bool:
        """True when ``word`` is a substring of the host name."""
        return domain is not None and self.word in domain

    def __str__(self) -> str:
        return f"keyword:{self.word}"


@dataclass(frozen=True, slots=True)
class AnyMatcher(Matcher):
    """``any``: every flow."""

    kind: ClassVar[str] = "any"

    def matches(self, ip: IPAddress | None, port: int, domain: str | None) -> bool:
        """Always True."""
        return True

    def __str__(self) -> str:
        return "any"


_KINDS = ("any", "cidr", "domain", "keyword", "port", "suffix")


def _parse_matcher(text: str) -> Matcher:
    """One matcher from its text; ValueError names what is wrong."""
    if text.lower() == "any":
        return AnyMatcher()
    kind, colon, value = text.partition(":")
    kind = kind.strip().lower()
    value = value.strip()
    if not colon or kind not in _KINDS or kind == "any":
        raise ValueError(f"unknown matcher {text!r} (known: {', '.join(_KINDS)})")
    if not value:
        raise ValueError(f"empty value in {text!r}")
    if kind == "cidr":
        try:
            return CidrMatcher(parse_network(value))
        except ValueError:
            raise ValueError(f"bad network {value!r} in {text!r}") from None
    if kind == "port":
        low_s, dash, high_s = value.partition("-")
        low_s, high_s = low_s.strip(), high_s.strip()
        if not _PORT.fullmatch(low_s) or (dash and not _PORT.fullmatch(high_s)):
            raise ValueError(f"bad port {value!r} in {text!r}")
        low = int(low_s)
        high = int(high_s) if dash else low
        if not 0 < low <= high <= 0xFFFF:
            raise ValueError(f"bad port range {value!r} in {text!r} (1-65535, low <= high)")
        return PortMatcher(low, high)
    if kind == "keyword":
        word = value.lower()
        if not _KEYWORD.fullmatch(word):
            raise ValueError(f"bad keyword {value!r} in {text!r} (letters, digits, '-_.')")
        return KeywordMatcher(word)
    name = value[1:] if kind == "suffix" and value.startswith(".") else value
    if "*" in name:
        raise ValueError(
            f"bad name {value!r} in {text!r}: no wildcards (suffix:NAME matches NAME and"
            " every name below it)"
        )
    try:
        name = normalize_name(name)
    except ValueError as e:
        raise ValueError(f"bad name {value!r} in {text!r} ({e})") from None
    return DomainMatcher(name) if kind == "domain" else SuffixMatcher(name)


# ---------------------------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class Rule:
    """Matchers that must all hold, and the target a matching flow takes.

    Attributes:
        matchers: the conditions (all must match).
        target: ``proxy``, ``direct``, ``reject`` or an extra upstream's name.
        line: the 1-based line (or ``--rule`` position) it came from; 0 if built in code.
        text: the rule as written, without its comment.
    """

    matchers: tuple[Matcher, ...]
    target: str
    line: int = 0
    text: str = ""

    def matches(self, ip: IPAddress | None, port: int, domain: str | None) -> bool:
        """Whether every matcher holds (``ip`` plain, ``domain`` normalised)."""
        return all(m.matches(ip, port, domain) for m in self.matchers)

    def __str__(self) -> str:
        return f"{','.join(str(m) for m in self.matchers)} -> {self.target}"


def _index_key(rule: Rule) -> Matcher | None:
    """The matcher a rule is indexed by (the most selective one), None to scan it."""
    best: Matcher | None = None
    rank = 99
    for m in rule.matchers:
        if isinstance(m, DomainMatcher):
            r = 0
        elif isinstance(m, SuffixMatcher):
            r = 1
        elif isinstance(m, CidrMatcher):
            r = 2
        elif isinstance(m, PortMatcher) and m.low == m.high:
            r = 3
        else:
            continue
        if r < rank:
            best, rank = m, r
    return best


class Rules:
    """An ordered rule list and its indexes; :meth:`decide` picks the first matching target.

    Args:
        rules: the rules, in priority order.
        default: the target when no rule matches.
    """

    __slots__ = ("_cidr4", "_cidr6", "_exact", "_port", "_scan", "_suffix", "default", "rules")

    def __init__(self, rules: Iterable[Rule] = (), default: str = "proxy") -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.default = default
        self._exact: dict[str, list[int]] = {}
        self._suffix: dict[str, list[int]] = {}
        self._cidr4: _PrefixIndex[int] = _PrefixIndex(32)
        self._cidr6: _PrefixIndex[int] = _PrefixIndex(128)
        self._port: dict[int, list[int]] = {}
        self._scan: list[int] = []
        for i, rule in enumerate(self.rules):
            key = _index_key(rule)
            if isinstance(key, DomainMatcher):
                self._exact.setdefault(key.name, []).append(i)
            elif isinstance(key, SuffixMatcher):
                self._suffix.setdefault(key.suffix, []).append(i)
            elif isinstance(key, CidrMatcher):
                (self._cidr4 if key.network.version == 4 else self._cidr6).add(key.network, i)
            elif isinstance(key, PortMatcher):
                self._port.setdefault(key.low, []).append(i)
            else:
                self._scan.append(i)

    @classmethod
    def parse(
        cls,
        lines: Iterable[str],
        known_targets: Collection[str] = (),
        *,
        default: str = "proxy",
        source: str = "rule",
    ) -> Rules:
        """Rules from text lines (``MATCHER[,MATCHER...] -> TARGET``; ``#`` comments).

        Args:
            lines: one rule per item (a ``--rule`` value or a line of a rules file).
            known_targets: names of extra upstreams; ``proxy``, ``direct`` and ``reject``
                are always known.
            default: the target when no rule matches.
            source: how errors name the input (``rule``, ``rules file x.conf``).

        Raises:
            ConfigError: ``"{source} line N: ..."`` naming the wrong part.
        """
        targets = BUILTIN_TARGETS | set(known_targets)
        if default not in targets:
            raise ConfigError(f"{source}: unknown default target {default!r}")
        rules: list[Rule] = []
        for lineno, raw in enumerate(lines, 1):
            text = raw.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                rules.append(_parse_rule(text, lineno, targets))
            except ValueError as e:
                raise ConfigError(f"{source} line {lineno}: {e}") from None
        return cls(rules, default)

    @classmethod
    def parse_text(
        cls,
        text: str,
        known_targets: Collection[str] = (),
        *,
        default: str = "proxy",
        source: str = "rules file",
    ) -> Rules:
        """Rules from the contents of a rules file (see :meth:`parse`)."""
        return cls.parse(text.splitlines(), known_targets, default=default, source=source)

    def match(self, ip: IPAddress | None, port: int, domain: str | None) -> Rule | None:
        """The first rule matching the flow, or None."""
        if ip is not None:
            ip = _plain_ip(ip)
        domain = _plain_domain(domain)
        cands: list[int] = []
        if domain is not None:
            if self._exact:
                hit = self._exact.get(domain)
                if hit:
                    cands.extend(hit)
            if self._suffix:
                s = domain
                while True:
                    hit = self._suffix.get(s)
                    if hit:
                        cands.extend(hit)
                    dot = s.find(".")
                    if dot < 0:
                        break
                    s = s[dot + 1 :]
        if ip is not None:
            index = self._cidr4 if ip.version == 4 else self._cidr6
            if index:
                cands.extend(index.lookup(int(ip)))
        if self._port:
            hit = self._port.get(port)
            if hit:
                cands.extend(hit)
        rules = self.rules
        best = len(rules)
        if cands:
            cands.sort()
            for i in cands:
                if rules[i].matches(ip, port, domain):
                    best = i
                    break
        for i in self._scan:
            if i >= best:
                break
            if rules[i].matches(ip, port, domain):
                return rules[i]
        return rules[best] if best < len(rules) else None

    def decide(self, ip: IPAddress | None, port: int, domain: str | None) -> str:
        """The target of the first matching rule, else the default target."""
        rule = self.match(ip, port, domain)
        return rule.target if rule is not None else self.default

    def targets(self) -> frozenset[str]:
        """Every target a decision can return (the rules' and the default)."""
        return frozenset({self.default, *(r.target for r in self.rules)})

    @property
    def uses_domains(self) -> bool:
        """Whether any rule looks at host names (then sniffing can change decisions)."""
        return any(
            isinstance(m, (DomainMatcher, SuffixMatcher, KeywordMatcher))
            for r in self.rules
            for m in r.matchers
        )

    def describe(self) -> str:
        """A one-line summary: rule count, targets, default."""
        if not self.rules:
            return f"no rules (default {self.default})"
        counts: dict[str, int] = {}
        for r in self.rules:
            counts[r.target] = counts.get(r.target, 0) + 1
        per = ", ".join(f"{n} -> {t}" for t, n in sorted(counts.items()))
        return f"{len(self.rules)} rules ({per}; default {self.default})"

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __repr__(self) -> str:
        return f"Rules({len(self.rules)} rules, default={self.default!r})"


def _parse_rule(text: str, lineno: int, targets: Collection[str]) -> Rule:
    """One rule from its comment-free text; ValueError names the wrong part."""
    left, arrow, target = text.partition("->")
    if not arrow:
        raise ValueError(f"missing '->' in {text!r} (MATCHER[,MATCHER...] -> TARGET)")
    target = target.strip()
    if "->" in target:
        raise ValueError(f"more than one '->' in {text!r}")
    if not target:
        raise ValueError(f"missing target after '->' in {text!r}")
    if not _TARGET_NAME.fullmatch(target):
        raise ValueError(f"bad target name {target!r}")
    if target not in targets:
        raise ValueError(f"unknown target {target!r} (known: {', '.join(sorted(targets))})")
    parts = [p.strip() for p in left.split(",")]
    if not left.strip():
        raise ValueError(f"no matcher before '->' in {text!r}")
    matchers: list[Matcher] = []
    for part in parts:
        if not part:
            raise ValueError(f"empty matcher in {left.strip()!r}")
        matchers.append(_parse_matcher(part))
    return Rule(tuple(matchers), target, lineno, text)
