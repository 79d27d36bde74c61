"""Every public package declares __all__, and each name in it exists."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = [
    "tun2proxy",
    "tun2proxy.wire",
    "tun2proxy.tcp",
    "tun2proxy.udp",
    "tun2proxy.stack",
    "tun2proxy.testing",
    "tun2proxy.proxy",
    "tun2proxy.dns",
    "tun2proxy.upstream",
    "tun2proxy.link",
    "tun2proxy.driver",
    "tun2proxy.routing",
    "tun2proxy.options",
    "tun2proxy.app",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_names_exist_and_are_unique(name: str) -> None:
    mod = importlib.import_module(name)
    exported = mod.__all__
    assert len(exported) == len(set(exported))
    for n in exported:
        assert hasattr(mod, n), f"{name}.{n} listed in __all__ but missing"


def test_top_level_api() -> None:
    import tun2proxy

    for n in ("NetStack", "StackConfig", "TcpConfig", "TcpConnectRequest", "UdpDatagram"):
        assert n in tun2proxy.__all__
    assert tun2proxy.__version__
