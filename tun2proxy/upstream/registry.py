"""``upstream_from_url``: build an Upstream from a proxy URL, with one-line errors.

Supported: ``direct://``, ``reject://``, ``socks5://[user:pass@]host[:port]`` (also
``socks5h://``; the default port is 1080; parameters ``?uot=2`` and ``?udp-relay=ADDR:PORT``),
``socks4://[userid@]host[:port]`` and ``socks4a://...`` (port 1080),
``http://[user:pass@]host[:port]`` (HTTP CONNECT, port 8080; ``https://`` is refused),
``ss://...`` (Shadowsocks, see :mod:`.ss_url`; parameter ``?uot=2``). Credentials may be
percent-encoded. Every malformed URL raises :class:`~tun2proxy.errors.ConfigError` naming the
part that is wrong, never showing a password.

The registry only picks the scheme: each scheme module parses its own URL (``from_url``),
with the helpers of :mod:`.url`.
"""

from __future__ import annotations

import importlib
import urllib.parse
from collections.abc import Callable

from ..errors import ConfigError
from .base import Upstream
from .url import query_options, redact_url

__all__ = ["QUERY_SCHEMES", "SCHEMES", "upstream_from_url"]

#: URL scheme -> the module (in this package) whose ``from_url(split_url, raw_url)`` builds it.
#: Imported on first use, so a ``socks5://`` run never loads the Shadowsocks codecs.
SCHEMES: dict[str, str] = {
    "direct": "direct",
    "none": "direct",
    "reject": "reject",
    "socks5": "socks5",
    "socks5h": "socks5",
    "ss": "ss_url",
    "socks4": "socks4",
    "socks4a": "socks4",
    "http": "http",
    "https": "http",  # refused with a message saying TLS to the proxy is not supported
}


def _builder(module: str) -> Callable[[urllib.parse.SplitResult, str], Upstream]:
    mod = importlib.import_module(f"{__package__}.{module}")
    return mod.from_url  # type: ignore[no-any-return]


#: The schemes whose ``from_url`` reads query parameters (see :func:`.url.query_options`);
#: any query on another scheme is refused here, naming the parameter.
QUERY_SCHEMES = frozenset({"socks5", "socks5h", "ss"})


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


def _build(raw: str) -> Upstream:
    if "://" not in raw:
        raise ConfigError(f"proxy URL {raw!r}: missing scheme (e.g. socks5://host:port)")
    try:
        u = urllib.parse.urlsplit(raw)
    except ValueError as e:  # e.g. an unclosed IPv6 bracket
        raise ConfigError(f"proxy URL {raw!r}: {e}") from None
    scheme = u.scheme.lower()
    module = SCHEMES.get(scheme)
    if module is None:
        raise ConfigError(
            f"proxy URL {raw!r}: unknown scheme {scheme!r} (known: {', '.join(sorted(SCHEMES))})"
        )
    if u.fragment and scheme != "ss":  # ss:// checks its own (SIP002)
        raise ConfigError(f"proxy URL {raw!r}: unexpected query or fragment")
    if u.query and scheme not in QUERY_SCHEMES:
        query_options(u.query, raw, scheme, {})  # raises, naming the parameter
        raise ConfigError(f"proxy URL {raw!r}: unexpected query or fragment")
    return _builder(module)(u, raw)
