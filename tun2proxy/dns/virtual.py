"""Virtual DNS: answer the applications' A/AAAA queries with fake addresses (``--dns virtual``).

Pure: no I/O, no clock. Every DNS message is read and written with dnslib, an optional
dependency (``pip install 'tun2proxy[dns]'``) imported when a :class:`VirtualDns` is made.

:meth:`VirtualDns.handle` takes one query and returns a :class:`DnsDecision`: bytes to send
back to the application, or ``forward=True`` (the host sends the query unchanged through
the upstream, as DNS over TCP, then hands the answer back through :meth:`VirtualDns.fit_udp`),
or neither (the input is dropped and counted). It never raises on the query's content.

What each query gets (checked in this order):

===========================================  ============================================
not 12 bytes long, or QR=1 (not a query)      dropped (``None``), counted
opcode other than QUERY                       NOTIMP (header only)
longer than 4096 bytes, QDCOUNT != 1,         FORMERR (header only)
unparseable
more than one OPT record                      FORMERR (RFC 6891 section 6.1.1)
EDNS version other than 0                     BADVERS (RFC 6891 section 6.1.3)
class other than IN                           REFUSED
name over 255 octets; QTYPE 0, OPT, TSIG or   FORMERR (meta-types cannot be asked for;
a meta-type (128-248, e.g. NXNAME)            RFC 9824 section 3.5 for NXNAME)
ANY, AXFR, IXFR, MAILA, MAILB                 NOTIMP
HTTPS, SVCB                                   NOERROR, no answer
A, AAAA of a name that is no host name        FORMERR
A, AAAA of ``localhost``/``*.localhost``      127.0.0.1 / ::1 (RFC 6761 section 6.3)
A, AAAA of ``invalid``/``*.invalid``          NXDOMAIN (RFC 6761 section 6.4)
A, AAAA of any other host name                the name's fake IPv4 / IPv6 address
PTR of an address inside the pool             the mapped name, or NXDOMAIN if unmapped
PTR of anything else, every other type        forwarded
===========================================  ============================================

Choices:

* ANY gets NOTIMP rather than REFUSED: REFUSED says "not for you, by policy" about the
  name, while the truth is that this server does not implement the query type. RFC 8482's
  other option, a synthesised HINFO record, would put a record of ours into real caches.
* HTTPS and SVCB (types 65 and 64) are answered NOERROR with no records instead of being
  forwarded. A real HTTPS record carries ``ipv4hint``/``ipv6hint`` addresses (and ECH
  keys) that browsers use to connect straight to the real address, bypassing the fake one:
  the proxy would then be asked for an IP instead of the name, which loses the whole point
  of virtual DNS (resolution at the proxy) and can leak the real address choice. An empty
  answer is the documented "no such record" case, after which clients use A/AAAA; the cost
  is that Encrypted Client Hello and HTTP/3 upgrade hints are not available.
* Host names are restricted to letters, digits, ``-`` and ``_`` (see
  :func:`~tun2proxy.dns.pool.normalize_name`) because they end up in SOCKS and HTTP CONNECT
  requests. Forwarded queries are not restricted (DNS-SD names, for one, contain spaces):
  they travel as DNS messages and never become request text.
* Responses keep the query's id, opcode, RD and CD bits and its question (the name's case
  included, for clients that randomise it); they set QR and RA, never AA or AD. Answer
  records carry ``answer_ttl`` (1 s by default) so applications ask again rather than
  cache a fake address past the mapping's life. Negative answers carry no SOA, so they are
  not cached (RFC 2308 section 5).
* A query with an OPT record gets one back: version 0, our payload size (1232 by default,
  the DNS Flag Day 2020 value), the DO bit copied (RFC 3225), no options. A UDP response
  must fit ``max(512, the query's payload size)``, capped by our own payload size; without
  OPT it must fit 512 bytes. One that does not fit is sent with TC=1 and only its question
  and OPT record, so the client retries over TCP (RFC 7766). Over TCP the limit is 65535.
  Our own answers hold one record and stay under 400 bytes (a PTR answer with a 253-character
  name to an ``ip6.arpa`` question is the largest), so in practice the limit bites on
  forwarded answers, which the host passes through :meth:`VirtualDns.fit_udp`; the same code
  truncates both.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .pool import FakeIpPool, normalize_name

__all__ = [
    "MAX_QUERY_SIZE",
    "DnsDecision",
    "VirtualDns",
]

_NEEDS_DNSLIB = "virtual DNS needs dnslib: pip install 'tun2proxy[dns]'"
MAX_QUERY_SIZE = 4096
"""Queries longer than this get FORMERR unparsed (real queries are a few hundred bytes)."""

# RCODEs (RFC 1035, RFC 6891 for the extended BADVERS).
_NOERROR = 0
_FORMERR = 1
_SERVFAIL = 2
_NXDOMAIN = 3
_NOTIMP = 4
_REFUSED = 5
_BADVERS = 16

# RR types.
_A = 1
_PTR = 12
_AAAA = 28
_OPT = 41
_SVCB = 64
_HTTPS = 65
_TSIG = 250
_NOT_IMPLEMENTED = frozenset({251, 252, 253, 254, 255})  # IXFR AXFR MAILB MAILA ANY
_CLASS_IN = 1

_UDP_MIN = 512
_TCP_MAX = 65535
_HEADER = 12
_LOOPBACK4 = ipaddress.IPv4Address("127.0.0.1")
_LOOPBACK6 = ipaddress.IPv6Address("::1")
_HEX = frozenset("0123456789abcdef")

_COUNTERS = (
    "queries",
    "answered",
    "nodata",
    "nxdomain",
    "forwarded",
    "refused",
    "notimp",
    "formerr",
    "badvers",
    "malformed",
    "dropped",
    "truncated",
    "servfail",
    "errors",
)


def _load_dnslib() -> Any:
    """The ``dnslib`` module, or :class:`ConfigError` if it is not installed."""
    try:
        import dnslib  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError as exc:
        raise ConfigError(_NEEDS_DNSLIB) from exc
    return dnslib


@dataclass(frozen=True, slots=True)
class DnsDecision:
    """What to do with one query.

    Attributes:
        response: bytes to send back to the application, or ``None``.
        forward: send the query, unchanged, to the real resolver through the upstream
            (``response`` is then ``None``).
        name: the query's name, lower case without the trailing dot (``"."`` for the root),
            when the question could be read; for logging and policy. For A/AAAA answers it
            is the name now mapped in the pool. Names of forwarded queries are not
            validated: non-printable octets appear as ``\\DDD``.

    ``response is None and not forward`` means the input was dropped.
    """

    response: bytes | None
    forward: bool = False
    name: str | None = None


_DROP = DnsDecision(None)


class VirtualDns:
    """Answers DNS queries from a :class:`~tun2proxy.dns.pool.FakeIpPool`.

    Args:
        pool: where names get their fake addresses.
        answer_ttl: TTL in seconds of the records we answer with (0 to 2**31 - 1).
        edns_udp_size: the UDP payload size we announce in OPT records, and the most we send
            over UDP (512 to 65535).

    Raises:
        ConfigError: dnslib is missing, or a setting is out of range.
    """

    __slots__ = ("_answer_ttl", "_d", "_edns_size", "_pool", "_stats")

    def __init__(self, pool: FakeIpPool, *, answer_ttl: int = 1, edns_udp_size: int = 1232) -> None:
        self._d = _load_dnslib()
        if isinstance(answer_ttl, bool) or not isinstance(answer_ttl, int):
            raise ConfigError("answer_ttl must be an integer")
        if not 0 <= answer_ttl <= 0x7FFFFFFF:
            raise ConfigError("answer_ttl must be between 0 and 2**31 - 1")
        if not _UDP_MIN <= edns_udp_size <= _TCP_MAX:
            raise ConfigError("edns_udp_size must be between 512 and 65535")
        self._pool = pool
        self._answer_ttl = answer_ttl
        self._edns_size = edns_udp_size
        self._stats = dict.fromkeys(_COUNTERS, 0)

    @property
    def pool(self) -> FakeIpPool:
        """The pool answers come from."""
        return self._pool

    def stats(self) -> dict[str, int]:
        """A copy of the counters.

        ``queries`` (every input), ``answered`` (responses with an A, AAAA or PTR record),
        ``nodata`` (NOERROR without records: HTTPS/SVCB), ``nxdomain``, ``forwarded``,
        ``refused``, ``notimp``, ``formerr``, ``badvers`` (responses by RCODE),
        ``malformed`` (inputs that were no well-formed query: every FORMERR and every
        drop), ``dropped`` (inputs given no response), ``truncated`` (responses sent with
        TC, including by :meth:`fit_udp`), ``servfail`` (from :meth:`servfail`) and
        ``errors`` (internal errors caught by the last-resort guard; always 0 unless a
        bug).
        """
        return dict(self._stats)

    # -- the entry point ------------------------------------------------------------------

    def handle(self, query: bytes, now: float, *, tcp: bool = False) -> DnsDecision:
        """Decide on one DNS query that arrived at ``now``.

        ``tcp`` says the query came over TCP (framed with
        :class:`~tun2proxy.dns.tcp_framing.TcpDnsReader`): the response may then be up to
        65535 bytes and is never truncated.
        """
        self._stats["queries"] += 1
        data = bytes(query)
        try:
            return self._handle(data, now, tcp)
        except Exception:  # last-resort guard: never raise on query content
            self._stats["errors"] += 1
            return DnsDecision(self._header_only(data, _SERVFAIL))

    # -- helpers for the host -------------------------------------------------------------

    def servfail(self, query: bytes) -> bytes | None:
        """A SERVFAIL response to ``query`` (when forwarding it failed), or ``None`` if the
        query has no readable header or is itself a response."""
        response = self._error_response(bytes(query), _SERVFAIL)
        if response is not None:
            self._stats["servfail"] += 1
        return response

    def formerr(self, query: bytes) -> bytes | None:
        """A FORMERR response to ``query``, or ``None`` if it has no readable header or is
        itself a response."""
        return self._error_response(bytes(query), _FORMERR)

    def fit_udp(self, query: bytes, response: bytes) -> bytes | None:
        """``response`` (e.g. from the upstream over TCP) made fit to answer ``query`` by UDP.

        Returned unchanged if it answers ``query`` (QR set, same id) and fits the query's
        UDP limit; rebuilt with TC=1 and only its question and OPT record if it is too large,
        so the client retries over TCP. A response that is not an answer to ``query``, or too
        large and unparseable, becomes SERVFAIL. ``None`` when ``query`` has no readable
        header or is itself a response.
        """
        q = bytes(query)
        r = bytes(response)
        try:
            d = self._d
            if len(q) < _HEADER:
                return None
            if len(r) < _HEADER:
                return self.servfail(q)
            qhdr = d.DNSHeader.parse(d.DNSBuffer(q[:_HEADER]))
            rhdr = d.DNSHeader.parse(d.DNSBuffer(r[:_HEADER]))
            if qhdr.qr:
                return None
            if not rhdr.qr or rhdr.id != qhdr.id:
                return self.servfail(q)
            limit = self._udp_limit_of(q)
            if len(r) <= limit:
                return r
            try:
                rec = d.DNSRecord.parse(r)
            except Exception:
                return self.servfail(q)
            return self._pack_within(rec, limit)
        except Exception:
            self._stats["errors"] += 1
            return self._header_only(q, _SERVFAIL)

    # -- internals ------------------------------------------------------------------------

    def _handle(self, query: bytes, now: float, tcp: bool) -> DnsDecision:
        stats = self._stats
        d = self._d
        if len(query) < _HEADER:
            stats["malformed"] += 1
            stats["dropped"] += 1
            return _DROP
        qhdr = d.DNSHeader.parse(d.DNSBuffer(query[:_HEADER]))
        if qhdr.qr:
            stats["malformed"] += 1
            stats["dropped"] += 1
            return _DROP
        if qhdr.opcode != 0:
            return self._header_reply(qhdr, _NOTIMP)
        if len(query) > MAX_QUERY_SIZE or qhdr.q != 1:
            return self._header_reply(qhdr, _FORMERR)
        try:
            rec = d.DNSRecord.parse(query)
        except Exception:  # dnslib raises many types on bad input; all mean FORMERR
            return self._header_reply(qhdr, _FORMERR)

        question = rec.questions[0]
        opts = [rr for rr in rec.ar if rr.rtype == _OPT]
        labels: tuple[bytes, ...] = tuple(question.qname.label)
        text = _display_name(labels)
        if len(opts) > 1:
            return self._reply(rec, _FORMERR, None, tcp, text)
        opt = opts[0] if opts else None
        if opt is not None and opt.edns_ver != 0:
            return self._reply(rec, _BADVERS, opt, tcp, text)
        if question.qclass != _CLASS_IN:
            return self._reply(rec, _REFUSED, opt, tcp, text)
        qtype = int(question.qtype)
        if sum(len(label) + 1 for label in labels) + 1 > 255:
            return self._reply(rec, _FORMERR, opt, tcp, None)
        if qtype in (0, _OPT, _TSIG) or 128 <= qtype <= 248:
            return self._reply(rec, _FORMERR, opt, tcp, text)
        if qtype in _NOT_IMPLEMENTED:
            return self._reply(rec, _NOTIMP, opt, tcp, text)
        if qtype in (_HTTPS, _SVCB):
            return self._reply(rec, _NOERROR, opt, tcp, text)

        if qtype == _A or qtype == _AAAA:
            name = _host_name(labels)
            if name is None:
                return self._reply(rec, _FORMERR, opt, tcp, text)
            if name == "invalid" or name.endswith(".invalid"):
                return self._reply(rec, _NXDOMAIN, opt, tcp, name)
            if name == "localhost" or name.endswith(".localhost"):
                v4: ipaddress.IPv4Address = _LOOPBACK4
                v6: ipaddress.IPv6Address = _LOOPBACK6
            else:
                v4, v6 = self._pool.assign(name, now)
            if qtype == _A:
                rdata = d.A(str(v4))
            else:
                rdata = d.AAAA(str(v6))
            answer = d.RR(question.qname, qtype, _CLASS_IN, self._answer_ttl, rdata)
            return self._reply(rec, _NOERROR, opt, tcp, name, answer)

        if qtype == _PTR:
            addr = _reverse_pointer(labels)
            if addr is not None and self._pool.contains(addr):
                mapped = self._pool.name_of(addr)
                if mapped is None:
                    return self._reply(rec, _NXDOMAIN, opt, tcp, text)
                answer = d.RR(
                    question.qname,
                    _PTR,
                    _CLASS_IN,
                    self._answer_ttl,
                    d.PTR(mapped.encode("ascii") + b"."),
                )
                return self._reply(rec, _NOERROR, opt, tcp, text, answer)

        stats["forwarded"] += 1
        return DnsDecision(None, True, text)

    def _reply(
        self,
        rec: Any,
        rcode: int,
        opt: Any,
        tcp: bool,
        name: str | None,
        answer: Any = None,
    ) -> DnsDecision:
        """Count and build the response to the parsed query ``rec``."""
        self._count(rcode, answer is not None)
        limit = _TCP_MAX if tcp else self._udp_limit(opt)
        response = self._build(rec.header, rec.questions, rcode, opt, answer, limit)
        return DnsDecision(response, False, name)

    def _header_reply(self, qhdr: Any, rcode: int) -> DnsDecision:
        self._count(rcode, False)
        return DnsDecision(self._build(qhdr, [], rcode, None, None, _UDP_MIN))

    def _count(self, rcode: int, answered: bool) -> None:
        stats = self._stats
        if rcode == _NOERROR:
            stats["answered" if answered else "nodata"] += 1
        elif rcode == _NXDOMAIN:
            stats["nxdomain"] += 1
        elif rcode == _REFUSED:
            stats["refused"] += 1
        elif rcode == _NOTIMP:
            stats["notimp"] += 1
        elif rcode == _BADVERS:
            stats["badvers"] += 1
        elif rcode == _FORMERR:
            stats["formerr"] += 1
            stats["malformed"] += 1

    def _build(
        self,
        qhdr: Any,
        questions: list[Any],
        rcode: int,
        opt: Any,
        answer: Any,
        limit: int,
    ) -> bytes:
        """Pack a response within ``limit`` (see :meth:`_pack_within`).

        Falls back to the bare header when the question cannot be packed again.
        """
        d = self._d
        header = d.DNSHeader(id=qhdr.id, bitmap=0)
        header.qr = 1
        header.opcode = qhdr.opcode
        header.rd = qhdr.rd
        header.ra = 1
        header.cd = qhdr.cd
        header.rcode = rcode & 0xF
        rec = d.DNSRecord(header, questions=list(questions))
        if answer is not None:
            rec.add_answer(answer)
        if opt is not None:
            rec.add_ar(
                d.EDNS0(
                    udp_len=self._edns_size,
                    ext_rcode=rcode >> 4,
                    flags="do" if opt.edns_do else "",
                )
            )
        try:
            out = bytes(rec.pack())
        except Exception:  # a question dnslib parsed but will not pack (name too long)
            rec.questions = []
            out = bytes(rec.pack())
        return self._pack_within(rec, limit, out)

    def _pack_within(self, rec: Any, limit: int, out: bytes | None = None) -> bytes:
        """Pack ``rec`` (already packed as ``out``, if given); if that exceeds ``limit``,
        set TC and keep only the question and the OPT record."""
        if out is None:
            out = bytes(rec.pack())
        if len(out) <= limit:
            return out
        self._stats["truncated"] += 1
        rec.header.tc = 1
        rec.rr = []
        rec.auth = []
        rec.ar = [rr for rr in rec.ar if rr.rtype == _OPT][:1]
        out = bytes(rec.pack())
        if len(out) > limit:
            rec.questions = []
            out = bytes(rec.pack())
        return out

    def _udp_limit(self, opt: Any) -> int:
        if opt is None:
            return _UDP_MIN
        asked = int(opt.rclass)
        return min(max(_UDP_MIN, asked), self._edns_size)

    def _udp_limit_of(self, query: bytes) -> int:
        try:
            rec = self._d.DNSRecord.parse(query)
        except Exception:
            return _UDP_MIN
        opts = [rr for rr in rec.ar if rr.rtype == _OPT]
        return self._udp_limit(opts[0] if len(opts) == 1 else None)

    def _error_response(self, query: bytes, rcode: int) -> bytes | None:
        """An error response echoing the question and OPT of ``query`` where they parse."""
        try:
            d = self._d
            if len(query) < _HEADER:
                return None
            qhdr = d.DNSHeader.parse(d.DNSBuffer(query[:_HEADER]))
            if qhdr.qr:
                return None
            if qhdr.opcode != 0:
                # Another opcode's sections mean other things (UPDATE: zone, prerequisites):
                # answer with the header only, as for NOTIMP.
                return self._build(qhdr, [], rcode, None, None, _UDP_MIN)
            try:
                rec = d.DNSRecord.parse(query)
            except Exception:
                return self._build(qhdr, [], rcode, None, None, _UDP_MIN)
            opts = [rr for rr in rec.ar if rr.rtype == _OPT]
            opt = opts[0] if len(opts) == 1 else None
            questions = rec.questions[:1] if qhdr.q == 1 else []
            return self._build(rec.header, questions, rcode, opt, None, self._udp_limit(opt))
        except Exception:
            self._stats["errors"] += 1
            return None

    def _header_only(self, query: bytes, rcode: int) -> bytes | None:
        """A bare header response, or ``None``; used only after an internal error."""
        try:
            if len(query) < _HEADER:
                return None
            d = self._d
            qhdr = d.DNSHeader.parse(d.DNSBuffer(query[:_HEADER]))
            if qhdr.qr:
                return None
            return self._build(qhdr, [], rcode, None, None, _UDP_MIN)
        except Exception:
            return None


def _display_name(labels: tuple[bytes, ...]) -> str:
    """A lower-case text form of wire labels for logs (``\\DDD`` for unprintable octets)."""
    if not labels:
        return "."
    parts = []
    for label in labels:
        if all(33 <= c <= 126 and c != 0x5C for c in label):
            parts.append(label.decode("ascii").lower())
        else:
            parts.append(
                "".join(
                    chr(c).lower() if 33 <= c <= 126 and c != 0x5C else f"\\{c:03d}" for c in label
                )
            )
    return ".".join(parts)


def _host_name(labels: tuple[bytes, ...]) -> str | None:
    """The normalised host name of wire labels, or ``None`` if they do not form one."""
    if not labels:
        return None
    try:
        text = b".".join(labels).decode("ascii")
    except UnicodeDecodeError:
        return None
    if any(b"." in label for label in labels):
        return None
    try:
        return normalize_name(text)
    except ValueError:
        return None


def _reverse_pointer(
    labels: tuple[bytes, ...],
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a full ``in-addr.arpa``/``ip6.arpa`` name points at, else ``None``."""
    try:
        parts = [label.decode("ascii").lower() for label in labels]
    except UnicodeDecodeError:
        return None
    if len(parts) == 6 and parts[4] == "in-addr" and parts[5] == "arpa":
        octets = parts[3::-1]
        if not all(p.isdigit() for p in octets):
            return None
        try:
            return ipaddress.IPv4Address(".".join(octets))
        except ValueError:
            return None
    if len(parts) == 34 and parts[32] == "ip6" and parts[33] == "arpa":
        nibbles = parts[31::-1]
        if not all(len(n) == 1 and n in _HEX for n in nibbles):
            return None
        return ipaddress.IPv6Address(int("".join(nibbles), 16))
    return None
