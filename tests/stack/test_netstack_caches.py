"""Per-SYN address text is parsed once per address, not once per flow (issue 14)."""

from __future__ import annotations

import ipaddress

import pytest

from tun2proxy.proxy.address import Address
from tun2proxy.stack import tcp_input as netstack


@pytest.mark.parametrize("packed", [bytes([10, 0, 0, 1]), bytes(15) + b"\x01"])
def test_ip_text_is_the_ipaddress_spelling_and_cached(packed: bytes) -> None:
    netstack._ip_text.cache_clear()
    assert netstack._ip_text(packed) == str(ipaddress.ip_address(packed))
    netstack._ip_text(packed)
    assert netstack._ip_text.cache_info().hits == 1


def test_from_host_normalises_through_the_cache() -> None:
    assert Address.from_host("[::FFFF:1.2.3.4]", 1).host == "::ffff:102:304"
    assert Address.from_host("Example.COM.", 1).host == "example.com"
    assert Address.from_host("010.1.1.1", 1).host == "010.1.1.1"  # not an IP: a name, kept
