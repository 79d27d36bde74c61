"""Interface configuration over netlink (pyroute2): addresses, MTU, state, default routes.

Only the device tun2proxy itself created is configured; an existing device is left alone.
Calls act on the network namespace of the calling thread (see :mod:`.netns`).
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

__all__ = ["InterfaceConfig", "configure_interface", "interface_mtu"]

_IFA_F_NODAD = 0x02
_SIOCGIFMTU = 0x8921


@dataclass(frozen=True)
class InterfaceConfig:
    """What to set on a newly created interface.

    Attributes:
        addresses: interface addresses with prefix length (``"10.0.0.33/24"``).
        mtu: link MTU.
        default_routes: also add IPv4/IPv6 default routes through the device (used for a
            private namespace, never on the host unless asked).
        loopback_up: bring ``lo`` up too (a fresh namespace starts with it down).
    """

    addresses: tuple[str, ...] = ()
    mtu: int = 1500
    default_routes: bool = False
    loopback_up: bool = False
    routes: tuple[str, ...] = field(default_factory=tuple)


def _iproute() -> Any:
    try:
        from pyroute2 import IPRoute  # type: ignore[import-untyped]
    except ImportError as e:  # pragma: no cover - declared dependency on Linux
        raise RuntimeError(
            "configuring a TUN device needs pyroute2 (pip install pyroute2)"
        ) from e
    return IPRoute()


def configure_interface(name: str, cfg: InterfaceConfig) -> None:
    """Set MTU, addresses (IPv6 without DAD), state up and routes on interface ``name``."""
    with _iproute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise OSError(f"interface {name} does not exist")
        idx = found[0]
        ipr.link("set", index=idx, mtu=cfg.mtu)
        for a in cfg.addresses:
            iface = ipaddress.ip_interface(a)
            if iface.version == 6:
                ipr.addr(
                    "add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen,
                    flags=_IFA_F_NODAD,
                )
            else:
                ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        ipr.link("set", index=idx, state="up")
        if cfg.loopback_up:
            lo = ipr.link_lookup(ifname="lo")
            if lo:
                ipr.link("set", index=lo[0], state="up")
        routes = list(cfg.routes)
        if cfg.default_routes:
            routes += ["0.0.0.0/0", "::/0"]
        for r in routes:
            net = ipaddress.ip_network(r)
            ipr.route("add", dst=str(net), oif=idx, family=10 if net.version == 6 else 2)


def interface_mtu(name: str) -> int:
    """The MTU of an existing interface in the calling thread's namespace (SIOCGIFMTU)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        res = fcntl.ioctl(s.fileno(), _SIOCGIFMTU, struct.pack("16si12x", name.encode(), 0))
    return int(struct.unpack_from("16si", res)[1])
