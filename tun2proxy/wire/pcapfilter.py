"""``--pcap-filter``: a small host/port filter language, compiled to a packet predicate (pure).

The grammar (a subset of tcpdump's, with the same meaning)::

    filter    := or
    or        := and ( ("or" | "||") and )*
    and       := not ( ("and" | "&&") not )*
    not       := ("not" | "!") not | primary
    primary   := "(" filter ")"
               | [ PROTO ] [ "src" | "dst" ] "host" ADDRESS   IPv4 or IPv6 literal
               | [ PROTO ] [ "src" | "dst" ] "net" CIDR
               | [ PROTO ] [ "src" | "dst" ] "port" PORT     TCP or UDP, 0 to 65535
               | [ PROTO ] [ "src" | "dst" ] "portrange" LO-HI
               | PROTO
    PROTO     := "tcp" | "udp" | "icmp" | "icmp6" | "ip" | "ip6"

Without ``src``/``dst`` a term matches either end, so ``host 10.0.0.1 and port 443`` keeps both
directions of those flows. ``not`` binds tighter than ``and``, ``and`` tighter than ``or``.
Port terms match TCP and UDP packets whose transport header directly follows the IP header
(IPv6 extension headers: no port is seen) and never an IPv4 fragment other than the first.
Host names are not accepted (nothing is resolved): the error says so.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from ..errors import ConfigError

__all__ = ["PacketFilter", "parse_filter"]

#: A packet -> whether it is kept.
PacketFilter = Callable[[bytes | bytearray | memoryview], bool]

# A packet's fields as the predicates see them: (version, protocol, src, dst, sport, dport),
# ports -1 when the packet has none.
_Fields = tuple[int, int, bytes, bytes, int, int]
_Pred = Callable[[_Fields], bool]

_PROTOS = {"tcp": (6,), "udp": (17,), "icmp": (1,), "icmp6": (58,)}
_KEYWORDS = {"and", "or", "not", "src", "dst", "host", "net", "port", "portrange", "(", ")",
             "&&", "||", "!", *_PROTOS, "ip", "ip6"}


def _fields(p: bytes | bytearray | memoryview) -> _Fields | None:
    n = len(p)
    if n < 20:
        return None
    v = p[0] >> 4
    if v == 4:
        ihl = (p[0] & 15) * 4
        proto = p[9]
        src, dst = bytes(p[12:16]), bytes(p[16:20])
        first = (((p[6] << 8) | p[7]) & 0x1FFF) == 0
    elif v == 6:
        if n < 40:
            return None
        ihl = 40
        proto = p[6]
        src, dst = bytes(p[8:24]), bytes(p[24:40])
        first = True
    else:
        return None
    if first and (proto == 6 or proto == 17) and n >= ihl + 4:
        return (v, proto, src, dst, (p[ihl] << 8) | p[ihl + 1], (p[ihl + 2] << 8) | p[ihl + 3])
    return (v, proto, src, dst, -1, -1)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        for sym in ("(", ")", "!", "&&", "||"):
            text = text.replace(sym, f" {sym} ")
        self.tokens = text.lower().split()
        self.i = 0

    def error(self, what: str) -> ConfigError:
        return ConfigError(f"--pcap-filter {self.text!r}: {what}")

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise self.error("unexpected end")
        self.i += 1
        return tok

    def parse(self) -> _Pred:
        if not self.tokens:
            raise self.error("empty filter")
        pred = self.or_()
        if self.peek() is not None:
            raise self.error(f"unexpected {self.peek()!r}")
        return pred

    def or_(self) -> _Pred:
        terms = [self.and_()]
        while self.peek() in ("or", "||"):
            self.i += 1
            terms.append(self.and_())
        if len(terms) == 1:
            return terms[0]
        return lambda f: any(t(f) for t in terms)

    def and_(self) -> _Pred:
        terms = [self.not_()]
        while self.peek() in ("and", "&&"):
            self.i += 1
            terms.append(self.not_())
        if len(terms) == 1:
            return terms[0]
        return lambda f: all(t(f) for t in terms)

    def not_(self) -> _Pred:
        if self.peek() in ("not", "!"):
            self.i += 1
            inner = self.not_()
            return lambda f: not inner(f)
        return self.primary()

    def primary(self) -> _Pred:
        tok = self.take()
        if tok == "(":
            pred = self.or_()
            if self.peek() != ")":
                raise self.error("missing ')'")
            self.i += 1
            return pred
        proto = self.protocol(tok)
        if proto is not None:
            if self.peek() not in ("src", "dst", "host", "net", "port", "portrange"):
                return proto
            term = self.primary()  # "tcp port 443": the protocol and the term
            return lambda f: proto(f) and term(f)
        side = "any"
        if tok in ("src", "dst"):
            side = tok
            tok = self.take()
        if tok in ("host", "net"):
            return self.address(side, tok, self.take())
        if tok in ("port", "portrange"):
            return self.port(side, tok, self.take())
        if tok in _KEYWORDS:
            raise self.error(f"unexpected {tok!r}")
        raise self.error(
            f"unknown term {tok!r} (expected host, net, port, portrange, tcp, udp, icmp, "
            "icmp6, ip, ip6, and/or/not, parentheses)"
        )

    @staticmethod
    def protocol(tok: str) -> _Pred | None:
        if tok in _PROTOS:
            protos = _PROTOS[tok]
            return lambda f: f[1] in protos
        if tok == "ip":
            return lambda f: f[0] == 4
        if tok == "ip6":
            return lambda f: f[0] == 6
        return None

    def address(self, side: str, kind: str, value: str) -> _Pred:
        try:
            if kind == "host":
                net = ipaddress.ip_network(ipaddress.ip_address(value))
            else:
                net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            hint = " (an IP address: names are not resolved)" if kind == "host" else ""
            raise self.error(f"{kind} {value!r} is not valid{hint}") from None
        version = net.version
        base = net.network_address.packed
        plen = net.prefixlen
        nbytes, bits = divmod(plen, 8)
        mask = (0xFF << (8 - bits)) & 0xFF if bits else 0
        head = base[:nbytes]

        def inside(a: bytes) -> bool:
            if a[:nbytes] != head:
                return False
            return not bits or (a[nbytes] & mask) == base[nbytes]

        if side == "src":
            return lambda f: f[0] == version and inside(f[2])
        if side == "dst":
            return lambda f: f[0] == version and inside(f[3])
        return lambda f: f[0] == version and (inside(f[2]) or inside(f[3]))

    def port(self, side: str, kind: str, value: str) -> _Pred:
        try:
            if kind == "port":
                lo = hi = int(value)
            else:
                a, sep, b = value.partition("-")
                if not sep:
                    raise ValueError
                lo, hi = int(a), int(b)
            if not 0 <= lo <= hi <= 65535:
                raise ValueError
        except ValueError:
            raise self.error(f"{kind} {value!r} is not valid (0 to 65535"
                             f"{', as LO-HI' if kind == 'portrange' else ''})") from None
        if side == "src":
            return lambda f: lo <= f[4] <= hi
        if side == "dst":
            return lambda f: lo <= f[5] <= hi
        return lambda f: lo <= f[4] <= hi or lo <= f[5] <= hi


def parse_filter(text: str) -> PacketFilter:
    """Compile ``text`` (see the module docstring) into a packet predicate.

    Raises:
        ConfigError: naming the part of the filter that is wrong.
    """
    pred = _Parser(text).parse()

    def keep(packet: bytes | bytearray | memoryview) -> bool:
        f = _fields(packet)
        return f is not None and pred(f)

    return keep
