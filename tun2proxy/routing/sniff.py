"""Domain sniffing: the host name in the first bytes of a TCP flow (TLS SNI or HTTP ``Host``).

Pure: no I/O, no clock. :func:`sniff_host` looks at the bytes the application sent first and
returns a :class:`SniffResult`: the host name, which protocol the bytes belong to, and whether
more bytes could still complete the name (``need_more``). It never raises on content, reads
only a bounded prefix, and does no work proportional to anything but that prefix.

TLS (RFC 8446 §5.1 record layer, §4 handshake, §4.1.2 ClientHello; RFC 5246 for 1.2):
handshake records (content type 22, version 3.x, 1..2^14 bytes) are reassembled until the
ClientHello is complete, so a ClientHello fragmented over many records (as anti-censorship
tools do) is read; the message is limited to :data:`MAX_CLIENT_HELLO` bytes. Every length
field is checked against its enclosing one. The ``server_name`` extension (RFC 6066 §3,
type 0) must carry exactly one ``host_name`` entry; a literal IPv4/IPv6 address there is
refused, as RFC 6066 forbids it. The name is returned as soon as its extension is complete
(the bytes after it are not waited for), so a large post-quantum key share does not delay it.

HTTP/1.x (RFC 9112 §3 request line, §3.2 ``Host``, §5 field syntax; RFC 9110 §7.2 ``Host``,
§9 methods): a request line with a known method and ``HTTP/1.x``, then header fields up to
the empty line, within :data:`MAX_HTTP_HEADER` bytes. The whole header block is read so a
request with two ``Host`` fields (RFC 9112 §3.2: must be rejected) is not sniffed at all.
The port is stripped, ``[v6]`` literals are recognised; absolute-form and authority-form
targets (RFC 9112 §3.2.2-3.2.3) give the host from the target, as the RFC requires.

Names are normalised as virtual DNS normalises them (lower case, trailing dot removed, labels
of ``[a-z0-9_-]``, RFC 1035 lengths) and must not look like an IP address in any form that
``inet_aton`` would accept (``1.2.3``, ``0x7f000001``), since the name may later be resolved.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

from ..dns.pool import normalize_name

__all__ = [
    "HTTP_METHODS",
    "MAX_CLIENT_HELLO",
    "MAX_HTTP_HEADER",
    "SniffResult",
    "sniff_host",
]

#: Largest ClientHello handshake message accepted (body length, RFC 8446 §4 uint24).
MAX_CLIENT_HELLO = 16384
#: Largest HTTP request line plus header block read before giving up.
MAX_HTTP_HEADER = 16384
#: Request methods recognised (RFC 9110 §9.1, RFC 5789 PATCH, RFC 4918 WebDAV).
HTTP_METHODS: frozenset[bytes] = frozenset(
    {
        b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE",
        b"PATCH", b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK",
    }
)

_MAX_RECORD = 16384  # RFC 8446 §5.1: TLSPlaintext.length MUST NOT exceed 2^14
_HANDSHAKE = 22
_CLIENT_HELLO = 1
_SERVER_NAME = 0
_HOST_NAME = 0
_MAX_METHOD = max(len(m) for m in HTTP_METHODS)
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2
_TARGET = re.compile(rb"[\x21-\x7e]+")  # visible ASCII, no spaces
_VERSION = re.compile(rb"HTTP/1\.[0-9]")
_NUMERIC_PART = re.compile(r"[0-9]+|0x[0-9a-f]*")

Protocol = Literal["tls", "http"]


@dataclass(frozen=True, slots=True)
class SniffResult:
    """What the first bytes of a flow say about its destination host name.

    Attributes:
        host: the normalised host name, or None.
        protocol: ``tls`` or ``http`` when the bytes are (a prefix of) a ClientHello or an
            HTTP/1.x request, None when they are neither (or malformed).
        need_more: the bytes so far are a valid prefix whose host name is not yet complete;
            waiting for more bytes may give a name.
        reason: why ``host`` is None (``need-more``, ``unknown-protocol``, ``malformed``,
            ``too-large``, ``no-host``, ``ip-literal``, ``bad-name``); empty when found.
    """

    host: str | None
    protocol: Protocol | None
    need_more: bool
    reason: str = ""


_UNKNOWN = SniffResult(None, None, False, "unknown-protocol")
_MALFORMED = SniffResult(None, None, False, "malformed")
_EMPTY = SniffResult(None, None, True, "need-more")


def sniff_host(data: bytes | bytearray | memoryview) -> SniffResult:
    """Find the host name in a flow's first bytes (TLS ClientHello SNI or HTTP ``Host``)."""
    if not isinstance(data, bytes):
        data = bytes(data)
    if not data:
        return _EMPTY
    first = data[0]
    if first == _HANDSHAKE:
        return _sniff_tls(data)
    if 0x41 <= first <= 0x5A or first in (0x0D, 0x0A):  # 'A'..'Z', or CRLF before the request
        return _sniff_http(data)
    return _UNKNOWN


def _host(text: bytes) -> tuple[str | None, str]:
    """A validated host name from wire bytes and the reason when there is none."""
    try:
        name = text.decode("ascii")
    except UnicodeDecodeError:
        return None, "bad-name"
    bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        pass
    else:
        return None, "ip-literal"
    try:
        norm = normalize_name(name)
    except ValueError:
        return None, "bad-name"
    labels = norm.split(".")
    if labels[-1].isdigit() or all(_NUMERIC_PART.fullmatch(label) for label in labels):
        # inet_aton forms (``1.2.3``, ``0x7f.1``, ``2130706433``) and numeric TLDs.
        return None, "ip-literal"
    if any(label.startswith("-") or label.endswith("-") for label in labels):
        return None, "bad-name"
    return norm, ""


# --------------------------------------------------------------------------------- TLS


class _Truncated(Exception):
    """The ClientHello ends before the field being read (more bytes may complete it)."""


class _Invalid(Exception):
    """The bytes cannot be a ClientHello."""


class _Reader:
    """Bounds-checked big-endian reads over a byte prefix of a message of known length."""

    __slots__ = ("avail", "buf", "pos")

    def __init__(self, buf: bytes, pos: int, avail: int) -> None:
        self.buf = buf
        self.pos = pos
        self.avail = avail  # bytes present (<= the message end)

    def need(self, n: int, end: int) -> int:
        """Advance over ``n`` bytes that must lie before ``end``; return their offset."""
        start = self.pos
        stop = start + n
        if stop > end:
            raise _Invalid
        if stop > self.avail:
            raise _Truncated
        self.pos = stop
        return start

    def u8(self, end: int) -> int:
        """One byte."""
        return self.buf[self.need(1, end)]

    def u16(self, end: int) -> int:
        """A 16-bit big-endian integer."""
        i = self.need(2, end)
        return (self.buf[i] << 8) | self.buf[i + 1]


def _sniff_tls(data: bytes) -> SniffResult:
    """Sniff bytes that start like a TLS handshake record."""
    # Reassemble handshake bytes from consecutive handshake records (RFC 8446 §5.1).
    n = len(data)
    parts: list[bytes] = []
    have = 0
    pos = 0
    msg_end = -1  # 4 + body length, once the handshake header is known
    complete_input = False  # True when the handshake message is entirely present
    while True:
        if pos + 5 > n:
            head = data[pos:]
            if not _record_header_prefix_ok(head):
                return _MALFORMED
            break
        ctype, major, minor = data[pos], data[pos + 1], data[pos + 2]
        length = (data[pos + 3] << 8) | data[pos + 4]
        if ctype != _HANDSHAKE or major != 3 or minor > 4 or length == 0 or length > _MAX_RECORD:
            return _MALFORMED
        frag = data[pos + 5 : pos + 5 + length]
        parts.append(frag)
        have += len(frag)
        pos += 5 + len(frag)
        if msg_end < 0 and have >= 4:
            head4 = b"".join(parts)[:4] if len(parts[0]) < 4 else parts[0][:4]
            if head4[0] != _CLIENT_HELLO:
                return _MALFORMED
            body_len = int.from_bytes(head4[1:4], "big")
            if body_len > MAX_CLIENT_HELLO:
                return SniffResult(None, "tls", False, "too-large")
            msg_end = 4 + body_len
        if msg_end >= 0 and have >= msg_end:
            complete_input = True
            break
        if len(frag) < length:
            break  # the record itself is cut short
    hs = b"".join(parts)
    if hs and hs[0] != _CLIENT_HELLO:
        return _MALFORMED
    if msg_end < 0:
        return SniffResult(None, "tls", True, "need-more")
    end = msg_end
    avail = end if complete_input else len(hs)
    try:
        host = _client_hello_sni(_Reader(hs, 4, avail), end)
    except _Truncated:
        if complete_input:  # cannot happen: avail == end makes every short read _Invalid
            return _MALFORMED
        return SniffResult(None, "tls", True, "need-more")
    except _Invalid:
        return _MALFORMED
    if isinstance(host, str):
        return SniffResult(host, "tls", False)
    return SniffResult(None, "tls", False, host[1])


def _record_header_prefix_ok(head: bytes) -> bool:
    """Whether ``head`` (under 5 bytes) can start a handshake record header."""
    k = len(head)
    if k >= 1 and head[0] != _HANDSHAKE:
        return False
    if k >= 2 and head[1] != 3:
        return False
    if k >= 3 and head[2] > 4:
        return False
    return not (k >= 4 and head[3] > (_MAX_RECORD >> 8))


def _client_hello_sni(r: _Reader, end: int) -> str | tuple[None, str]:
    """The SNI host name of a ClientHello body (RFC 8446 §4.1.2), or (None, reason)."""
    major = r.u8(end)
    r.u8(end)  # legacy_version minor: any 3.x
    if major != 3:
        raise _Invalid
    r.need(32, end)  # random
    sid = r.u8(end)
    if sid > 32:
        raise _Invalid
    r.need(sid, end)
    suites = r.u16(end)
    if suites < 2 or suites % 2:
        raise _Invalid
    r.need(suites, end)
    comp = r.u8(end)
    if comp < 1:
        raise _Invalid
    r.need(comp, end)
    if r.pos == end:
        return None, "no-host"  # no extensions (allowed before TLS 1.3)
    ext_total = r.u16(end)
    ext_end = r.pos + ext_total
    if ext_end != end:
        raise _Invalid  # the extensions must fill the rest of the message exactly
    while r.pos < ext_end:
        etype = r.u16(ext_end)
        elen = r.u16(ext_end)
        if etype != _SERVER_NAME:
            r.need(elen, ext_end)
            continue
        start = r.need(elen, ext_end)  # the whole extension must be present first
        return _server_name(_Reader(r.buf, start, start + elen), start + elen)
    return None, "no-host"


def _server_name(r: _Reader, end: int) -> str | tuple[None, str]:
    """The host_name of a server_name extension body (RFC 6066 §3)."""
    list_len = r.u16(end)
    if list_len < 1 or r.pos + list_len != end:
        raise _Invalid
    found: bytes | None = None
    while r.pos < end:
        name_type = r.u8(end)
        nlen = r.u16(end)
        if nlen < 1:
            raise _Invalid
        start = r.need(nlen, end)
        if name_type == _HOST_NAME:
            if found is not None:
                raise _Invalid  # RFC 6066: at most one name of each type
            found = r.buf[start : start + nlen]
    if found is None:
        return None, "no-host"
    host, reason = _host(found)
    if host is None:
        return None, reason
    return host


# -------------------------------------------------------------------------------- HTTP


def _sniff_http(data: bytes) -> SniffResult:
    """Sniff bytes that start like an HTTP/1.x request."""
    buf = data[: MAX_HTTP_HEADER + 1]
    pos = 0
    n = len(buf)
    # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request line.
    while pos < n and buf[pos] in (0x0D, 0x0A):
        pos += 1
        if pos > 4:
            return _UNKNOWN
    if pos == n:
        return SniffResult(None, None, n <= 4, "need-more" if n <= 4 else "unknown-protocol")
    nl = buf.find(b"\n", pos)
    if nl < 0:
        return _partial_request_line(buf[pos:], n > MAX_HTTP_HEADER)
    line = buf[pos:nl]
    if line.endswith(b"\r"):
        line = line[:-1]
    parts = line.replace(b"\t", b" ").split()
    if not line or line[0] in b" \t" or len(parts) != 3 or parts[0] not in HTTP_METHODS:
        return _UNKNOWN if not _method_prefix_ok(line) else _MALFORMED
    method, target, version = parts
    if not _VERSION.fullmatch(version) or not _TARGET.fullmatch(target):
        return _MALFORMED
    hosts: list[bytes] = []
    pos = nl + 1
    while True:
        nl = buf.find(b"\n", pos)
        if nl < 0:
            if n > MAX_HTTP_HEADER:
                return SniffResult(None, "http", False, "too-large")
            rest = buf[pos:]
            if rest[:1] in (b" ", b"\t") or (rest and not _field_prefix_ok(rest)):
                return _MALFORMED
            return SniffResult(None, "http", True, "need-more")
        fline = buf[pos:nl]
        pos = nl + 1
        if fline.endswith(b"\r"):
            fline = fline[:-1]
        if not fline:
            break
        if fline[0] in b" \t":
            return _MALFORMED  # obs-fold (RFC 9112 §5.2) or leading whitespace
        name, colon, value = fline.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            return _MALFORMED  # no whitespace before the colon (RFC 9112 §5.1)
        if name.lower() == b"host":
            hosts.append(value.strip(b" \t"))
    authority = _target_authority(method, target)
    if authority is None:
        return _MALFORMED
    if authority:
        value = authority  # RFC 9112 §3.2.2: the target's authority wins over Host
    elif len(hosts) > 1:
        return _MALFORMED
    elif hosts:
        value = hosts[0]
    else:
        return SniffResult(None, "http", False, "no-host")
    host, reason = _authority_host(value)
    return SniffResult(host, "http", False, reason)


def _method_prefix_ok(line: bytes) -> bool:
    """Whether ``line`` starts with a known method followed by a space."""
    sp = line.find(b" ")
    return sp > 0 and line[:sp] in HTTP_METHODS


def _partial_request_line(line: bytes, over: bool) -> SniffResult:
    """Classify an incomplete request line: a valid prefix (need more) or not HTTP."""
    sp = line.find(b" ")
    if sp < 0:
        if len(line) > _MAX_METHOD or not any(m.startswith(line) for m in HTTP_METHODS):
            return _UNKNOWN
        return SniffResult(None, "http", True, "need-more")
    if line[:sp] not in HTTP_METHODS:
        return _UNKNOWN
    if over:
        return SniffResult(None, "http", False, "too-large")
    rest = line[sp + 1 :]
    cr = rest.endswith(b"\r")
    words = rest[:-1].split() if cr else rest.split()
    if cr:  # only the LF is missing: the line must be complete
        ok = len(words) == 2 and _TARGET.fullmatch(words[0]) and _VERSION.fullmatch(words[1])
        return SniffResult(None, "http", True, "need-more") if ok else _MALFORMED
    if len(words) > 2 or (words and not _TARGET.fullmatch(words[0])):
        return _MALFORMED
    if len(words) == 2 and not _version_prefix_ok(words[1]):
        return _MALFORMED
    return SniffResult(None, "http", True, "need-more")


def _version_prefix_ok(v: bytes) -> bool:
    """Whether ``v`` can still become ``HTTP/1.x``."""
    if len(v) <= 7:
        return b"HTTP/1."[: len(v)] == v
    return _VERSION.fullmatch(v) is not None


def _field_prefix_ok(rest: bytes) -> bool:
    """Whether an incomplete header line can still become a valid field."""
    if rest == b"\r":
        return True
    name = rest.partition(b":")[0]
    return bool(name) and _TOKEN.fullmatch(name) is not None


def _target_authority(method: bytes, target: bytes) -> bytes | None:
    """The authority of an absolute-form/authority-form target, ``b""`` if none, None if bad."""
    if method == b"CONNECT":
        return target if not target.startswith(b"/") else None  # RFC 9112 §3.2.3
    if target.startswith(b"/") or target == b"*":
        return b""
    scheme, sep, rest = target.partition(b"://")
    if not sep or not re.fullmatch(rb"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return None
    cut = len(rest)
    for ch in (b"/", b"?", b"#"):
        i = rest.find(ch)
        if 0 <= i < cut:
            cut = i
    authority = rest[:cut]
    at = authority.rfind(b"@")
    if at >= 0:
        authority = authority[at + 1 :]
    return authority if authority else None


def _authority_host(value: bytes) -> tuple[str | None, str]:
    """The host of ``host[:port]`` / ``[v6][:port]`` and the reason when there is none."""
    if not value:
        return None, "no-host"
    if value.startswith(b"["):
        close = value.find(b"]")
        if close < 0:
            return None, "bad-name"
        after = value[close + 1 :]
        if after and not (after == b":" or (after.startswith(b":") and after[1:].isdigit())):
            return None, "bad-name"
        try:
            ipaddress.IPv6Address(value[1:close].decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return None, "bad-name"
        return None, "ip-literal"
    host, colon, port = value.rpartition(b":")
    if not colon:
        host = value
    elif port and not port.isdigit():
        return None, "bad-name"
    if not host:
        return None, "no-host"
    return _host(host)
