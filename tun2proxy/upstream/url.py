"""Proxy URL parsing helpers shared by every scheme's ``from_url`` (one-line ConfigErrors).

Each scheme module (:mod:`.direct`, :mod:`.reject`, :mod:`.socks5`, :mod:`.socks4`,
:mod:`.http`, :mod:`.ss_url`) turns its URL into an upstream with these; the registry
(:mod:`.registry`) only picks the scheme.

Query parameters (``socks5://host:port?uot=2&udp-relay=10.0.0.1:5000``) are declared per
scheme as :class:`UrlOption` tables and read with :func:`query_options`: an unknown key, a
repeated key or a bad value is one line naming the key and what is allowed.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..proxy.address import Address

__all__ = [
    "UDP_RELAY_OPTION",
    "UOT_OPTION",
    "UrlOption",
    "credentials",
    "parse_endpoint",
    "parse_host_port",
    "query_options",
    "redact_url",
    "unquote_strict",
]

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def unquote_strict(text: str, raw: str, what: str) -> str:
    """Percent-decode ``text`` (a part of the URL ``raw`` named ``what``), refusing a ``%``
    that is not followed by two hex digits and bytes that are not UTF-8: unquote would keep
    or replace them silently, and a proxy would then see another password than meant.

    Raises:
        ConfigError: naming the part, never echoing it.
    """
    if _BAD_ESCAPE.search(text):
        raise ConfigError(
            f"proxy URL {raw!r}: invalid percent escape in the {what} ('%' must be followed "
            "by two hex digits; write a literal '%' as %25)"
        )
    try:
        return urllib.parse.unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise ConfigError(
            f"proxy URL {raw!r}: the {what} is not UTF-8 once percent-decoded"
        ) from None


@dataclass(frozen=True, slots=True)
class UrlOption:
    """One query parameter a scheme accepts: its key, what values are allowed (for the
    error message) and the parser (raises ValueError for a bad value)."""

    key: str
    allowed: str
    parse: Callable[[str], Any]


def _uot_version(value: str) -> int:
    """``1`` or ``2`` as an int; ValueError otherwise."""
    if value not in ("1", "2"):
        raise ValueError("not a UoT version")
    return int(value)


def _flag(value: str) -> bool:
    """``1`` or ``0`` as a bool; ValueError otherwise."""
    if value not in ("0", "1"):
        raise ValueError("not 0 or 1")
    return value == "1"


def parse_endpoint(value: str) -> Address:
    """``ADDR:PORT`` (IPv6 as ``[ADDR]:PORT``, or a host name) as an Address; the port is
    1-65535. Raises ValueError."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError("not ADDR:PORT")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError("unbalanced '['")
        ipaddress.IPv6Address(host[1:-1])
    elif ":" in host:
        raise ValueError("an IPv6 address needs brackets: [ADDR]:PORT")
    n = int(port)
    if not 1 <= n <= 0xFFFF:
        raise ValueError("port out of range")
    addr = Address.from_host(host, n)
    if addr.is_domain and not all(
        part and len(part) < 64 for part in addr.host.rstrip(".").split(".")
    ):
        raise ValueError("bad host name")
    return addr


#: ``uot=1|2``: carry UDP as sing-box's UDP-over-TCP stream through the proxy.
UOT_OPTION = UrlOption("uot", "1 or 2 (the UDP-over-TCP version)", _uot_version)
#: ``pipeline=1``: send the SOCKS5 greeting, authentication and request in one write.
PIPELINE_OPTION = UrlOption("pipeline", "0 or 1", _flag)
#: ``udp-relay=ADDR:PORT``: send SOCKS5 UDP datagrams there, whatever the proxy announced.
UDP_RELAY_OPTION = UrlOption(
    "udp-relay", "ADDR:PORT, [IPV6]:PORT or NAME:PORT", parse_endpoint
)


def query_options(
    query: str, raw: str, scheme: str, known: Mapping[str, UrlOption],
    *, ignored: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The parsed values of ``query`` (key -> value) for a scheme accepting ``known``.

    Keys in ``ignored`` are accepted and dropped.

    Raises:
        ConfigError: a malformed query, an unknown or repeated key, or a bad value — one
            line naming the key and what is allowed.
    """
    if not query:
        return {}
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ConfigError(
            f"proxy URL {raw!r}: unexpected query {query!r} (expected key=value&...)"
        ) from None
    accepted = ", ".join(sorted(known)) or "none"
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in ignored:
            continue
        opt = known.get(key)
        if opt is None:
            raise ConfigError(
                f"proxy URL {raw!r}: unexpected query parameter {key!r} "
                f"({scheme}:// accepts: {accepted})"
            )
        if key in out:
            raise ConfigError(f"proxy URL {raw!r}: query parameter {key!r} given twice")
        try:
            out[key] = opt.parse(value)
        except ValueError:
            raise ConfigError(
                f"proxy URL {raw!r}: bad value {value!r} for {key!r} (allowed: {opt.allowed})"
            ) from None
    return out


def parse_host_port(u: urllib.parse.SplitResult, raw: str, default_port: int) -> tuple[str, int]:
    """Host and port of a URL, validated; IPv6 literals come without brackets."""
    try:
        host = u.hostname
        port = u.port
    except ValueError as e:
        raise ConfigError(f"proxy URL {raw!r}: bad port ({e})") from None
    if not host:
        raise ConfigError(f"proxy URL {raw!r}: missing host")
    if port == 0:
        raise ConfigError(f"proxy URL {raw!r}: port 0 is not a server port (allowed: 1 to 65535)")
    if u.path not in ("", "/"):
        raise ConfigError(f"proxy URL {raw!r}: unexpected path {u.path!r}")
    if "[" not in u.netloc:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not all(part and len(part) < 64 for part in host.rstrip(".").split(".")):
                raise ConfigError(f"proxy URL {raw!r}: bad host name {host!r}") from None
    return host, port if port is not None else default_port


def credentials(u: urllib.parse.SplitResult, raw: str) -> tuple[str, str] | None:
    """The percent-decoded ``user:password`` of a URL, None without one; ConfigError for an
    empty user name or fields over 255 bytes."""
    if u.username is None and u.password is None:
        return None
    user = unquote_strict(u.username or "", raw, "user name")
    password = unquote_strict(u.password or "", raw, "password")
    if not user:
        raise ConfigError(f"proxy URL {raw!r}: empty user name before '@'")
    if len(user.encode()) > 255 or len(password.encode()) > 255:
        raise ConfigError(f"proxy URL {raw!r}: user name and password are limited to 255 bytes")
    return user, password


def redact_url(raw: str) -> str:
    """``raw`` with the password of its user-info part replaced by ``***``."""
    head, sep, rest = raw.partition("://")
    if not sep:
        return raw
    at = rest.rfind("@", 0, len(rest.split("/", 1)[0]) if "/" in rest else len(rest))
    if at < 0:
        return raw
    user, colon, _password = rest[:at].partition(":")
    return f"{head}://{user}{':***' if colon else ''}{rest[at:]}"
