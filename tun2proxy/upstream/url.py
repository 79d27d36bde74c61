"""Proxy URL parsing helpers shared by every scheme's ``from_url`` (one-line ConfigErrors).

Each scheme module (:mod:`.direct`, :mod:`.reject`, :mod:`.socks5`, :mod:`.socks4`,
:mod:`.http`, :mod:`.ss_url`) turns its URL into an upstream with these; the registry
(:mod:`.registry`) only picks the scheme.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse

from ..errors import ConfigError

__all__ = ["credentials", "parse_host_port", "redact_url", "unquote_strict"]

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
