"""Proxy URL query parameters: ``?uot=`` and ``?udp-relay=``, and one-line refusals."""

from __future__ import annotations

import pytest

from tun2proxy.errors import ConfigError
from tun2proxy.proxy.address import Address
from tun2proxy.upstream import upstream_from_url
from tun2proxy.upstream.shadowsocks import ShadowsocksUpstream
from tun2proxy.upstream.socks5 import Socks5Upstream
from tun2proxy.upstream.url import parse_endpoint

SS = "ss://aes-256-gcm:secretpw@127.0.0.1:8388"


@pytest.mark.parametrize(
    ("url", "uot", "relay"),
    [
        ("socks5://127.0.0.1:1080", None, None),
        ("socks5://127.0.0.1:1080?uot=2", 2, None),
        ("socks5h://u:p@h.test?uot=1", 1, None),
        ("socks5://h:1?udp-relay=10.0.0.9:5000", None, Address("10.0.0.9", 5000)),
        ("socks5://h:1?udp-relay=[fd00::9]:5000", None, Address("fd00::9", 5000)),
        ("socks5://h:1?udp-relay=%5Bfd00::9%5D:5000", None, Address("fd00::9", 5000)),
        ("socks5://h:1?udp-relay=relay.test:53", None, Address("relay.test", 53)),
    ],
)
def test_socks5_parameters(url: str, uot: int | None, relay: Address | None) -> None:
    up = upstream_from_url(url)
    assert isinstance(up, Socks5Upstream)
    assert (up.uot, up.udp_relay) == (uot, relay)
    if uot:
        assert f"uot={uot}" in up.describe()


def test_ss_uot_parameter() -> None:
    up = upstream_from_url(SS + "?uot=2")
    assert isinstance(up, ShadowsocksUpstream) and up.uot == 2
    assert up.describe().endswith("?uot=2")
    assert "secretpw" not in up.describe()
    up = upstream_from_url(SS + "/?outline=1&uot=1#tag")
    assert isinstance(up, ShadowsocksUpstream) and up.uot == 1
    assert isinstance(up := upstream_from_url(SS), ShadowsocksUpstream) and up.uot is None


def test_socks5_pipeline_parameter() -> None:
    up = upstream_from_url("socks5://u:secretpw@127.0.0.1:1080?pipeline=1")
    assert isinstance(up, Socks5Upstream) and up.pipeline
    assert up.describe() == "socks5://user:***@127.0.0.1:1080?pipeline=1"
    up = upstream_from_url("socks5://127.0.0.1:1080?pipeline=0&uot=2")
    assert isinstance(up, Socks5Upstream) and not up.pipeline and up.uot == 2
    up = upstream_from_url("socks5://127.0.0.1:1080")
    assert isinstance(up, Socks5Upstream) and not up.pipeline  # off by default (microsocks)


@pytest.mark.parametrize(
    ("url", "fragments"),
    [
        ("socks5://h:1?uot=3", ["bad value '3' for 'uot'", "1 or 2"]),
        ("socks5://h:1?uot=", ["bad value '' for 'uot'"]),
        ("socks5://h:1?uot=2&uot=2", ["'uot' given twice"]),
        ("socks5://h:1?pipeline=yes", ["bad value 'yes' for 'pipeline'", "0 or 1"]),
        ("socks5://h:1?color=red", ["unexpected query parameter 'color'",
                                    "socks5:// accepts: pipeline, udp-relay, uot"]),
        ("socks5://h:1?udp-relay=fd00::1:5000", ["bad value", "'udp-relay'", "[IPV6]:PORT"]),
        ("socks5://h:1?udp-relay=10.0.0.1", ["bad value '10.0.0.1' for 'udp-relay'"]),
        ("socks5://h:1?udp-relay=10.0.0.1:0", ["bad value"]),
        ("socks5://h:1?udp-relay=10.0.0.1:70000", ["bad value"]),
        ("socks5://h:1?udp-relay=[fd00::1:53", ["bad value"]),
        ("socks5://h:1?uot=2&udp-relay=1.2.3.4:5", ["has no use with 'uot'"]),
        ("socks5://h:1?x", ["unexpected query"]),
        ("http://h:1?uot=2", ["unexpected query parameter 'uot'", "http:// accepts: none"]),
        ("socks4://h:1?uot=2", ["unexpected query parameter 'uot'"]),
        ("direct://?uot=2", ["unexpected query parameter 'uot'"]),
        (SS + "?uot=9", ["bad value '9' for 'uot'"]),
        (SS + "?udp-relay=1.2.3.4:5", ["unexpected query parameter 'udp-relay'",
                                       "ss:// accepts: uot"]),
    ],
)
def test_bad_parameters_are_one_line_naming_the_key(url: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as ei:
        upstream_from_url(url)
    msg = str(ei.value)
    for f in fragments:
        assert f in msg, msg
    assert "\n" not in msg


def test_passwords_stay_masked_in_parameter_errors() -> None:
    for url in ("socks5://user:hunter2@h:1?uot=5", "ss://aes-256-gcm:hunter2@h:1?uot=5"):
        with pytest.raises(ConfigError) as ei:
            upstream_from_url(url)
        assert "hunter2" not in str(ei.value)
        assert "uot" in str(ei.value)


@pytest.mark.parametrize(
    "bad", ["", ":53", "1.2.3.4:", "1.2.3.4:x", "::1:53", "[1.2.3.4]:53", "bad..name:1"]
)
def test_parse_endpoint_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(bad)
