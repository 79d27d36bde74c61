"""Linux TUN devices: create or attach (``/dev/net/tun``, ``IFF_TUN | IFF_NO_PI``).

``open_tun("tun0")`` creates the device when it does not exist — then it is configured
(addresses, MTU, up) and disappears when the fd closes — or attaches to it as it is when it
does (a persistent device prepared by someone else: its addresses, routes and MTU are left
alone). ``netns`` opens the device inside another network namespace while the process stays
where it is, so upstream connections leave from the original namespace.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct
from dataclasses import dataclass

from .fd import FdLink
from .netconf import InterfaceConfig, configure_interface, interface_mtu
from .netns import entered, netns_path

__all__ = [
    "IFF_MULTI_QUEUE",
    "IFF_NO_PI",
    "IFF_TUN",
    "IFF_VNET_HDR",
    "TunDevice",
    "TunLink",
    "device_socket",
    "open_tun",
    "tun_link",
]

log = logging.getLogger(__name__)

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000
_IFNAMSIZ = 16


@dataclass
class TunDevice:
    """An open TUN device: its fd, name, MTU, and whether we created it."""

    fd: int
    name: str
    mtu: int
    created: bool
    netns: str | None = None
    flags: int = IFF_TUN | IFF_NO_PI


def _exists(name: str) -> bool:
    # Not /sys/class/net: sysfs shows the namespace it was mounted in, not the thread's.
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def open_tun(
    name: str,
    *,
    netns: str | None = None,
    config: InterfaceConfig | None = None,
    flags: int = IFF_TUN | IFF_NO_PI,
) -> TunDevice:
    """Create (and configure with ``config``) or attach to the TUN device ``name``.

    Raises:
        OSError: the device cannot be opened (no permission, not a TUN device, ...).
    """
    if len(name.encode()) >= _IFNAMSIZ:
        raise ValueError(f"interface name {name!r} is longer than {_IFNAMSIZ - 1} bytes")
    path = netns_path(netns) if netns else None
    with entered(path):
        existed = _exists(name)
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        try:
            ifr = struct.pack("16sH", name.encode(), flags)
            res = fcntl.ioctl(fd, TUNSETIFF, ifr)
            real = res[:_IFNAMSIZ].rstrip(b"\0").decode()
            if not flags & IFF_VNET_HDR:
                # A persistent device keeps the offloads its last reader asked for; a reader
                # without the virtio header would get partial checksums and GSO packets.
                from .vnet import set_offload

                set_offload(fd, 0)
            if not existed:
                cfg = config or InterfaceConfig()
                configure_interface(real, cfg)
                mtu = cfg.mtu
            else:
                mtu = interface_mtu(real)
        except BaseException:
            os.close(fd)
            raise
    os.set_blocking(fd, False)
    log.debug("opened %s device %s (mtu %d)", "a new" if not existed else "the existing", real, mtu)
    return TunDevice(fd=fd, name=real, mtu=mtu, created=not existed, netns=netns, flags=flags)


def device_socket(device: TunDevice) -> socket.socket | None:
    """A socket in ``device``'s network namespace, through which a link sees whether the
    device is up (None if one cannot be made)."""
    try:
        with entered(netns_path(device.netns) if device.netns else None):
            return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return None


class TunLink(FdLink):
    """A link over a TUN device opened with :func:`open_tun`.

    ``down_timeout``: how long the device may be down before the link fails (None: as long
    as the device exists; see :class:`~tun2proxy.link.fd.FdLink`).
    """

    def __init__(self, device: TunDevice, *, down_timeout: float | None = None) -> None:
        super().__init__(
            device.fd, device.mtu, framing="none", name=device.name,
            down_timeout=down_timeout, ifsock=device_socket(device),
        )
        self.device = device


def tun_link(
    device: TunDevice, *, tso: bool = True, down_timeout: float | None = None
) -> FdLink:
    """The link for an open device: a :class:`~tun2proxy.link.vnet.VnetLink` (checksum and
    segmentation offload) when it was opened with ``IFF_VNET_HDR``, else a :class:`TunLink`.
    A device that goes down is waited for (``down_timeout`` seconds at most; None: as long
    as it exists)."""
    if device.flags & IFF_VNET_HDR:
        from .vnet import VnetLink

        return VnetLink(
            device.fd, device.mtu, tso=tso, name=device.name, down_timeout=down_timeout,
            ifsock=device_socket(device),
        )
    return TunLink(device, down_timeout=down_timeout)
