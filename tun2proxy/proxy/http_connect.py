"""HTTP CONNECT tunnel client handshake, sans-I/O.

Pure: no I/O. The request is the CONNECT method of RFC 9110 §9.3.6 in the HTTP/1.1 message
syntax of RFC 9112, with ``Proxy-Authorization: Basic`` (RFC 9110 §11.7.2, RFC 7617) when
credentials are given::

    client: CONNECT host:port HTTP/1.1 CRLF Host: host:port CRLF [headers] CRLF
    server: HTTP/1.x NNN reason CRLF headers CRLF   [tunnel bytes follow]

Any 2xx response opens the tunnel (RFC 9110 §9.3.6: it has no body, so every byte after the
header block is tunnel data and is returned in ``Established.trailing``). Interim 1xx responses
(other than 101) are skipped, as RFC 9110 §15.2 asks of clients.

Choices where servers or the specifications leave room:

- lines may end in bare LF as well as CRLF (RFC 9112 §2.2 allows a recipient to accept that);
  obsolete line folding is joined into the previous header's value;
- the whole response header block — status line, headers and the empty line, summed over any
  1xx responses — must fit in ``max_header_bytes``, else the result is a ``protocol`` failure;
- a response that does not start with ``HTTP/`` fails as soon as that is clear;
- 407 → ``auth`` (and 401: tinyproxy answers wrong Basic credentials with it); 403 and 405 →
  ``denied``; 502, 503 and 504 → ``unreachable`` (a 502 does not say the target refused:
  proxies use it for DNS failures and timeouts too, so ``refused`` would claim more than we
  know); any other non-2xx → ``error``. ``Failed.code`` is the status;
- a non-2xx response whose header block is cut short by the server closing still reports its
  status (that is more useful than "closed during handshake"); any body is discarded.
"""

from __future__ import annotations

import base64
import re
from typing import Final

from .address import Address, domain_bytes
from .base import HandshakeBase

__all__ = ["HttpConnectHandshake"]

_STATUS_LINE = re.compile(rb"HTTP/1\.([0-9]) ([0-9]{3})(?:[ \t](.*))?")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE_CHARS = re.compile(r"[\x00\r\n]")
#: Characters allowed in a host name in the request target (RFC 3986 reg-name, no %-escapes).
_REG_NAME = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=]+")
_PREFIX: Final = b"HTTP/"

_STATUS: Final = 0  # waiting for the status line
_HEADERS: Final = 1  # reading header lines


def _host_text(host: str) -> str:
    """The ASCII form of a domain name (IDNA for others); ValueError if unusable in a URI."""
    name = domain_bytes(host).decode("ascii")
    if not _REG_NAME.fullmatch(name):
        raise ValueError(f"host name {host!r} cannot be sent in an HTTP CONNECT request")
    return name


def _classify(code: int) -> str:
    """The UpstreamError reason for a non-2xx final status."""
    if code == 407 or code == 401:
        return "auth"
    if code == 403 or code == 405:
        return "denied"
    if code == 502 or code == 503 or code == 504:
        return "unreachable"
    return "error"


class HttpConnectHandshake(HandshakeBase):
    """The client side of one HTTP CONNECT request through a proxy (RFC 9110 §9.3.6)."""

    __slots__ = (
        "_max",
        "_pos",
        "_state",
        "_used",
        "dst",
        "headers",
        "http_version",
        "max_header_bytes",
        "reason_phrase",
        "status_code",
    )

    _name = "HTTP CONNECT"

    def __init__(
        self,
        dst: Address,
        *,
        auth: tuple[str, str] | None = None,
        headers: dict[str, str] | None = None,
        max_header_bytes: int = 8192,
    ) -> None:
        if max_header_bytes < 1:
            raise ValueError(f"max_header_bytes must be positive, got {max_header_bytes}")
        ip = dst.ip
        if ip is None:
            authority = f"{_host_text(dst.host)}:{dst.port}"
        else:
            authority = str(Address(str(ip), dst.port))  # IPv6 in brackets
        fields: dict[str, tuple[str, str]] = {"host": ("Host", authority)}
        if auth is not None:
            user, password = auth
            if ":" in user:
                raise ValueError("a Basic auth user name cannot contain ':' (RFC 7617)")
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            fields["proxy-authorization"] = ("Proxy-Authorization", f"Basic {token}")
        for name, value in (headers or {}).items():
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"invalid HTTP header name {name!r}")
            if _BAD_VALUE_CHARS.search(value):
                raise ValueError(f"HTTP header {name!r} has CR, LF or NUL in its value")
            fields[name.lower()] = (name, value)  # caller's value replaces a default one
        lines = [f"CONNECT {authority} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in fields.values()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")  # ValueError if not

        #: The destination of the CONNECT.
        self.dst = dst
        #: The bound on the response header block, in bytes.
        self.max_header_bytes = max_header_bytes
        #: The final response's status code, once its status line has arrived (for logging).
        self.status_code: int | None = None
        #: The final response's reason phrase (latin-1 text; may be empty).
        self.reason_phrase = ""
        #: The final response's HTTP version, ``"1.0"`` or ``"1.1"``.
        self.http_version = ""
        #: The final response's headers as (name, value) pairs, in order, names as received.
        self.headers: list[tuple[str, str]] = []
        self._max = max_header_bytes
        self._pos = 0  # start of the next unparsed line in _buf
        self._used = 0  # header bytes of 1xx responses already consumed
        self._state = _STATUS
        super().__init__(request)

    def header(self, name: str) -> str | None:
        """The first value of response header ``name`` (case-insensitive), or None."""
        key = name.lower()
        for n, v in self.headers:
            if n.lower() == key:
                return v
        return None

    # -- internals -------------------------------------------------------------------------

    def _closed(self) -> None:
        code = self.status_code
        if self._state == _HEADERS and code is not None and code >= 300:
            self._fail_status(code)
        else:
            super()._closed()

    def _fail_status(self, code: int) -> None:
        text = f"{code} {self.reason_phrase}".rstrip()
        self._fail(_classify(code), f"CONNECT {self.dst} answered {text}", code)

    def _advance(self) -> None:
        buf = self._buf
        while True:
            if self._state == _STATUS:
                head = bytes(buf[self._pos : self._pos + len(_PREFIX)])
                if not _PREFIX.startswith(head):
                    self._fail("protocol", f"not an HTTP response: starts with {head!r}")
                    return
            nl = buf.find(b"\n", self._pos)
            if nl < 0:
                if self._used + len(buf) > self._max:
                    self._too_big()
                return
            end = nl + 1
            if self._used + end > self._max:
                self._too_big()
                return
            line = bytes(buf[self._pos : nl])
            if line.endswith(b"\r"):
                line = line[:-1]
            self._pos = end
            if self._state == _STATUS:
                m = _STATUS_LINE.fullmatch(line)
                code = int(m.group(2)) if m else 0
                if m is None or not 100 <= code <= 599 or b"\r" in line:
                    self._fail("protocol", f"malformed status line {line[:80]!r}")
                    return
                self.status_code = code
                self.http_version = f"1.{m.group(1).decode()}"
                self.reason_phrase = (m.group(3) or b"").decode("latin-1").strip()
                self.headers = []
                self._state = _HEADERS
            elif line:
                if b"\r" in line:  # a bare CR (RFC 9112 §2.2): reject rather than guess
                    self._fail("protocol", f"bare CR in response header line {line[:80]!r}")
                    return
                if line[0] == 0x20 or line[0] == 0x09:  # obs-fold: continues the last value
                    if not self.headers:
                        self._fail("protocol", "response header block starts with a folded line")
                        return
                    name, value = self.headers[-1]
                    extra = line.strip().decode("latin-1")
                    self.headers[-1] = (name, f"{value} {extra}" if value else extra)
                    continue
                raw_name, sep, raw_value = line.partition(b":")
                name_text = raw_name.strip().decode("latin-1")
                if not sep or not _TOKEN.fullmatch(name_text):
                    self._fail("protocol", f"malformed response header line {line[:80]!r}")
                    return
                self.headers.append((name_text, raw_value.strip().decode("latin-1")))
            else:  # the empty line: end of this response's header block
                final = self.status_code
                assert final is not None
                if final < 200 and final != 101:  # interim response: the real one follows
                    del buf[:end]
                    self._used += end
                    self._pos = 0
                    self._state = _STATUS
                    continue
                if final < 200 or final >= 300:
                    self._fail_status(final)
                    return
                self._establish(end, None)
                return

    def _too_big(self) -> None:
        self._fail("protocol", f"response header block exceeds {self._max} bytes")
