"""Proxy URLs: what each builds, and a one-line error naming the wrong part."""

from __future__ import annotations

import pytest

from tun2proxy.errors import ConfigError
from tun2proxy.upstream import DirectUpstream, RejectUpstream, upstream_from_url
from tun2proxy.upstream.socks5 import Socks5Upstream


def test_direct_and_reject() -> None:
    assert isinstance(upstream_from_url("direct://"), DirectUpstream)
    assert isinstance(upstream_from_url("none://"), DirectUpstream)
    assert isinstance(upstream_from_url("reject://"), RejectUpstream)


@pytest.mark.parametrize(
    ("url", "host", "port", "auth"),
    [
        ("socks5://127.0.0.1:1080", "127.0.0.1", 1080, None),
        ("socks5://proxy.example", "proxy.example", 1080, None),
        ("socks5h://[::1]:9050", "::1", 9050, None),
        ("SOCKS5://u:p@h:1", "h", 1, ("u", "p")),
        ("socks5://us%3Aer:p%40ss%20word@10.0.0.1:1080", "10.0.0.1", 1080, ("us:er", "p@ss word")),
        ("socks5://user:@h:2", "h", 2, ("user", "")),
    ],
)
def test_socks5_urls(url: str, host: str, port: int, auth: tuple[str, str] | None) -> None:
    up = upstream_from_url(url)
    assert isinstance(up, Socks5Upstream)
    assert (up.host, up.port, up.auth) == (host, port, auth)
    assert "p@ss" not in up.describe() and ":p@" not in up.describe()


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("127.0.0.1:1080", "missing scheme"),
        ("ftp://h:1", "unknown scheme 'ftp'"),
        ("socks5://", "missing host"),
        ("socks5://h:99999", "bad port"),
        ("socks5://h:port", "bad port"),
        ("socks5://h:1/path", "unexpected path"),
        ("socks5://:pw@h:1", "empty user name"),
        ("socks5://h:1?x=1", "unexpected query"),
        ("direct://somewhere", "takes no host"),
        ("socks5://" + "u" * 256 + ":p@h:1", "255 bytes"),
        ("socks5://bad..name:1", "bad host name"),
    ],
)
def test_malformed_urls_name_the_problem(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as ei:
        upstream_from_url(url)
    msg = str(ei.value)
    assert fragment in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("socks5://u:secret@[::1:1080", "socks5://u:***@[::1:1080"),
        ("ss://aes-256-gcm:secret@[::1:8388", "ss://aes-256-gcm:***@[::1:8388"),
        ("socks5://u:secret@h:99999", "socks5://u:***@h:99999"),
    ],
)
def test_errors_never_echo_a_password(url: str, shown: str) -> None:
    with pytest.raises(ConfigError) as ei:
        upstream_from_url(url)
    msg = str(ei.value)
    assert "secret" not in msg and repr(shown) in msg and "\n" not in msg


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("socks5://h:0", "port 0 is not a server port"),
        ("http://h:0", "port 0 is not a server port"),
        ("socks4://h:0", "port 0 is not a server port"),
        ("socks5://u:pa%ZZss@h:1080", "invalid percent escape in the password"),
        ("socks5://u:pass%@h:1080", "invalid percent escape in the password"),
        ("socks5://u%4:pass@h:1080", "invalid percent escape in the user name"),
        ("http://u:p%zzw@h:3128", "invalid percent escape in the password"),
        ("socks4://id%G0@h:1080", "invalid percent escape in the user id"),
        ("ss://aes-256-gcm:pa%ZZss@h:8388", "invalid percent escape in the password"),
        ("socks5://u:%ff%fe@h:1080", "not UTF-8 once percent-decoded"),
    ],
)
def test_port_0_and_bad_percent_escapes_are_refused(url: str, fragment: str) -> None:
    # Both were accepted silently (issue 15 item 10): port 0 failed every flow later, and
    # '%ZZ' went to the proxy as it is, another password than the user meant.
    with pytest.raises(ConfigError) as ei:
        upstream_from_url(url)
    msg = str(ei.value)
    assert fragment in msg and "\n" not in msg
    assert "ZZss" not in msg and "p%zzw" not in msg
