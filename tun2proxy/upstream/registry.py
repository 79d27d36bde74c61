"""``upstream_from_url``: build an Upstream from a proxy URL, with one-line errors.

Supported: ``direct://``, ``reject://``, ``socks5://[user:pass@]host[:port]`` (also
``socks5h://``; the default port is 1080), ``socks4://[userid@]host[:port]`` and
``socks4a://...`` (port 1080), ``http://[user:pass@]host[:port]`` (HTTP CONNECT, port 8080;
``https://`` is refused). Credentials may be percent-encoded. Every malformed URL raises
:class:`~tun2proxy.errors.ConfigError` naming the part that is wrong.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Callable

from ..errors import ConfigError
from .base import Upstream

__all__ = ["SCHEMES", "parse_host_port", "unquote_strict", "upstream_from_url"]


def _direct(u: urllib.parse.SplitResult, raw: str) -> Upstream:
    from .direct import DirectUpstream

    if u.netloc or u.path not in ("", "/"):
        raise ConfigError(f"proxy URL {raw!r}: direct:// takes no host or path")
    return DirectUpstream()


def _reject(u: urllib.parse.SplitResult, raw: str) -> Upstream:
    from .reject import RejectUpstream

    return RejectUpstream()


def _socks5(u: urllib.parse.SplitResult, raw: str) -> Upstream:
    from .socks5 import Socks5Upstream

    host, port = parse_host_port(u, raw, 1080)
    return Socks5Upstream(host, port, auth=_credentials(u, raw))


def _http(u: urllib.parse.SplitResult, raw: str) -> Upstream:
    from .http import from_url

    return from_url(u, raw)


def _socks4(u: urllib.parse.SplitResult, raw: str) -> Upstream:
    from .socks4 import from_url

    return from_url(u, raw)


def _ss(u: urllib.parse.SplitResult, raw: str) -> Upstream:
    from .ss_url import from_url

    return from_url(u, raw)


#: URL scheme -> builder.
SCHEMES: dict[str, Callable[[urllib.parse.SplitResult, str], Upstream]] = {
    "direct": _direct,
    "none": _direct,
    "reject": _reject,
    "socks5": _socks5,
    "socks5h": _socks5,
    "ss": _ss,
    "socks4": _socks4,
    "socks4a": _socks4,
    "http": _http,
    "https": _http,  # refused with a message saying TLS to the proxy is not supported
}


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


def _credentials(u: urllib.parse.SplitResult, raw: str) -> tuple[str, str] | None:
    if u.username is None and u.password is None:
        return None
    user = unquote_strict(u.username or "", raw, "user name")
    password = unquote_strict(u.password or "", raw, "password")
    if not user:
        raise ConfigError(f"proxy URL {raw!r}: empty user name before '@'")
    if len(user.encode()) > 255 or len(password.encode()) > 255:
        raise ConfigError(f"proxy URL {raw!r}: user name and password are limited to 255 bytes")
    return user, password


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


def upstream_from_url(url: str) -> Upstream:
    """Build the upstream a URL names (``socks5://user:pass@127.0.0.1:1080``, ``direct://``).

    Raises:
        ConfigError: with a one-line message naming what is wrong.
    """
    raw = url.strip()
    try:
        return _build(raw)
    except ConfigError as e:
        shown = redact_url(raw)
        if shown != raw:  # never echo a password into a terminal or a log
            raise ConfigError(str(e).replace(repr(raw), repr(shown)).replace(raw, shown)) from None
        raise


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


def _build(raw: str) -> Upstream:
    if "://" not in raw:
        raise ConfigError(f"proxy URL {raw!r}: missing scheme (e.g. socks5://host:port)")
    try:
        u = urllib.parse.urlsplit(raw)
    except ValueError as e:  # e.g. an unclosed IPv6 bracket
        raise ConfigError(f"proxy URL {raw!r}: {e}") from None
    scheme = u.scheme.lower()
    builder = SCHEMES.get(scheme)
    if builder is None:
        raise ConfigError(
            f"proxy URL {raw!r}: unknown scheme {scheme!r} (known: {', '.join(sorted(SCHEMES))})"
        )
    if (u.query or u.fragment) and scheme != "ss":  # ss:// checks its own (SIP002)
        raise ConfigError(f"proxy URL {raw!r}: unexpected query or fragment")
    return builder(u, raw)
