"""Parse ``ss://`` proxy URLs into a :class:`~tun2proxy.upstream.shadowsocks.ShadowsocksUpstream`.

Accepted forms (the port is required; host names, IPv4 and bracketed IPv6 literals)::

    ss://method:password@host:port              plain; percent-encode ':' '@' '/' '?' '#' '%'
    ss://BASE64URL(method:password)@host:port   SIP002 (URL-safe or standard base64, padded
                                                or not), with an optional '/', '?plugin=' and
                                                '#tag'
    ss://2022-blake3-aes-256-gcm:PSK@host:port  2022: the PSK is base64 ('+', '/', '=' may
                                                be given as is or percent-encoded)
    ss://BASE64(method:password@host:port)#tag  the legacy form before SIP002

SIP003 plugins (``?plugin=obfs-local;...``) are not supported: the URL is refused, naming the
plugin. ``#tag`` is ignored, and so is Outline's ``?outline=1``. ``?uot=2`` (or ``1``)
carries UDP as sing-box's UDP-over-TCP through the server instead of Shadowsocks UDP.
Every malformed URL raises :class:`~tun2proxy.errors.ConfigError` with a one-line message
naming the wrong part; the message never repeats the password or PSK.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse
from typing import Any

from ..errors import ConfigError
from .shadowsocks import METHODS, ShadowsocksUpstream
from .url import UOT_OPTION, UrlOption, parse_host_port, query_options, unquote_strict

__all__ = ["OPTIONS", "from_url"]

_B64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}")
_IGNORED_QUERY = frozenset({"outline"})
#: The query parameters of ``ss://`` URLs (besides ``plugin``, refused, and ``outline``).
OPTIONS: dict[str, UrlOption] = {UOT_OPTION.key: UOT_OPTION}


def _redact(raw: str) -> str:
    """``raw`` with the secret part of the user info replaced by ``***``."""
    head, sep, rest = raw.partition("://")
    if not sep:
        return raw
    cut = len(rest)
    for ch in "?#":
        i = rest.find(ch)
        if i != -1:
            cut = min(cut, i)
    main, tail = rest[:cut], rest[cut:]
    at = main.rfind("@")
    if at == -1:  # the legacy form hides everything in base64; a bare host:port does not
        return f"{head}://***{tail}" if _B64.fullmatch(main.rstrip("/")) else raw
    userinfo, hostport = main[:at], main[at + 1 :]
    method, colon, _ = userinfo.partition(":")
    user = f"{method}:***" if colon else "***"
    return f"{head}://{user}@{hostport}{tail}"


def _b64decode(text: str) -> bytes | None:
    """Standard or URL-safe base64, padded or not; None when it is not base64."""
    t = text.strip()
    if not t or not _B64.fullmatch(t):
        return None
    t = t.rstrip("=").replace("-", "+").replace("_", "/")
    if len(t) % 4 == 1:
        return None
    try:
        return base64.b64decode(t + "=" * (-len(t) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _split_credentials(userinfo: str, shown: str) -> tuple[str, str]:
    """(method, password) from plain ``method:password`` or SIP002 base64 user info."""
    if ":" in userinfo:
        method, _, password = userinfo.partition(":")
        return unquote_strict(method, shown, "method"), unquote_strict(password, shown, "password")
    decoded = _b64decode(urllib.parse.unquote(userinfo))
    if decoded is None:
        raise ConfigError(
            f"proxy URL {shown!r}: user info is neither 'method:password' nor valid base64"
        )
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"proxy URL {shown!r}: base64 user info is not UTF-8 text") from None
    if ":" not in text:
        raise ConfigError(
            f"proxy URL {shown!r}: base64 user info must decode to 'method:password'"
        )
    method, _, password = text.partition(":")
    return method, password


def _check_query(query: str, shown: str) -> dict[str, Any]:
    """The URL's options (:data:`OPTIONS`); a plugin or an unknown key is a ConfigError."""
    if not query:
        return {}
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise ConfigError(f"proxy URL {shown!r}: malformed query {query!r}") from None
    for key, value in pairs:
        if key == "plugin" and value:
            name = value.split(";", 1)[0]
            raise ConfigError(
                f"proxy URL {shown!r}: SIP003 plugin {name!r} is not supported "
                "(run the plugin's client and point tun2proxy at it)"
            )
    return query_options(
        query, shown, "ss", OPTIONS, ignored=_IGNORED_QUERY | {"plugin"}
    )


def from_url(u: urllib.parse.SplitResult, raw: str) -> ShadowsocksUpstream:
    """Build a :class:`ShadowsocksUpstream` from an ``ss://`` URL (see the module doc).

    ``u`` is ``urlsplit(raw)``; the parsing works on ``raw`` itself, because standard base64
    (``/``) and unencoded PSKs do not survive generic URL splitting.

    Raises:
        ConfigError: naming the wrong part: unknown method, missing port, bad base64, a PSK
            of the wrong length, a plugin, ...
    """
    text = raw.strip()
    shown = _redact(text)
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() != "ss":
        raise ConfigError(f"proxy URL {shown!r}: not an ss:// URL")
    rest = rest.partition("#")[0]
    main, _, query = rest.partition("?")
    opts = _check_query(query, shown)
    if main.endswith("/"):
        main = main[:-1]
    if "@" not in main:
        # The legacy form: the whole of method:password@host:port in base64.
        decoded = _b64decode(urllib.parse.unquote(main))
        try:
            legacy = decoded.decode("utf-8") if decoded is not None else ""
        except UnicodeDecodeError:
            legacy = ""
        if "@" not in legacy or ":" not in legacy.rpartition("@")[0]:
            raise ConfigError(
                f"proxy URL {shown!r}: missing 'method:password@' (or its base64) before the "
                "host (percent-encode '#', '?', '/' in a password)"
            )
        main = legacy
        userinfo, _, hostport = main.rpartition("@")
        method, _, password = userinfo.partition(":")
    else:
        userinfo, _, hostport = main.rpartition("@")
        if not userinfo:
            raise ConfigError(f"proxy URL {shown!r}: missing 'method:password' before '@'")
        method, password = _split_credentials(userinfo, shown)
    if "/" in hostport:
        raise ConfigError(
            f"proxy URL {shown!r}: unexpected path after the host "
            "(percent-encode '/' in a password)"
        )
    try:
        hp = urllib.parse.urlsplit(f"ss://{hostport}")
        port = hp.port
    except ValueError as e:  # a port out of range, or an unbalanced '[' of an IPv6 literal
        raise ConfigError(f"proxy URL {shown!r}: bad host or port ({e})") from None
    host, _ = parse_host_port(hp, shown, 0)
    if port is None:
        raise ConfigError(f"proxy URL {shown!r}: missing port (e.g. ss://...@{hostport}:8388)")
    if port == 0:
        raise ConfigError(f"proxy URL {shown!r}: port 0 is not a server port")
    method = method.strip().lower()
    if not method:
        raise ConfigError(f"proxy URL {shown!r}: missing method before ':'")
    if method not in METHODS and method != "chacha20-poly1305":
        raise ConfigError(
            f"proxy URL {shown!r}: unknown method {method!r} (known: {', '.join(METHODS)})"
        )
    if not password:
        what = "PSK" if method.startswith("2022-") else "password"
        raise ConfigError(f"proxy URL {shown!r}: empty {what}")
    if method.startswith("2022-"):
        # A URL-safe or unpadded PSK is accepted too; the codec wants standard base64.
        key = password.strip().rstrip("=").replace("-", "+").replace("_", "/")
        password = key + "=" * (-len(key) % 4)
    try:
        return ShadowsocksUpstream(host, port, method, password, uot=opts.get("uot"))
    except ConfigError as e:
        raise ConfigError(f"proxy URL {shown!r}: {e}") from None
