"""Opening the run's links: the TUN device (created or attached; one queue per worker) or the
inherited fd, synchronously, before the event loop runs (netlink set-up is blocking).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os

from ..link.fd import FdLink
from ..link.netconf import InterfaceConfig
from ..link.tun_linux import IFF_MULTI_QUEUE, IFF_NO_PI, IFF_TUN, IFF_VNET_HDR, open_tun, tun_link
from ..link.unshare import PrivateNamespace
from ..link.vnet import VnetLink
from ..options import DEFAULT_MTU, Options, UsageError

__all__ = ["MTU_RANGE", "close_links", "open_links"]

log = logging.getLogger("tun2proxy")

#: The MTUs the stack works with (IPv6 needs 1280 on the wire; 576 is the IPv4 minimum).
MTU_RANGE = (576, 65535)


def close_links(links: list[FdLink]) -> None:
    """Close every link (a device we created goes away with its last fd)."""
    for link in links:
        link.close()


def _check_mtu(links: list[FdLink], name: str) -> None:
    lo, hi = MTU_RANGE
    mtu = links[0].mtu
    if not lo <= mtu <= hi:
        raise UsageError(
            f"{name} has MTU {mtu}; tun2proxy needs {lo} to {hi} "
            f"(e.g. ip link set {name} mtu 1500)"
        )


def open_links(opts: Options, child: PrivateNamespace | None) -> list[FdLink]:
    """Open the TUN device or fd; one link per queue with --workers.

    Raises:
        OSError, ValueError, RuntimeError: the device cannot be opened.
        UsageError: an existing device's MTU is outside :data:`MTU_RANGE` (closed again).
    """
    mtu = opts.mtu or DEFAULT_MTU
    down = opts.link_down_timeout
    if opts.tun_fd is not None:
        name = f"fd {opts.tun_fd}"
        if opts.framing == "vnet":
            return [VnetLink(opts.tun_fd, mtu, name=name, down_timeout=down)]
        return [FdLink(opts.tun_fd, mtu, framing=opts.framing, name=name, down_timeout=down)]
    offload = opts.offload == "on" or (opts.offload == "auto" and not opts.impair)
    netns = child.netns if child is not None else opts.tun_netns
    cfg = InterfaceConfig(
        addresses=(opts.tun_address, opts.tun_address6),
        mtu=mtu,
        default_routes=child is not None,
        loopback_up=child is not None,
    )
    flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
    if opts.workers > 1:
        flags |= IFF_MULTI_QUEUE
    try:
        try:
            dev = open_tun(opts.tun_name, netns=netns, config=cfg, flags=flags)
        except OSError as e:
            if e.errno != errno.EINVAL or flags & IFF_MULTI_QUEUE:
                raise
            # An existing multi-queue device: one worker attaches as its single queue.
            dev = open_tun(opts.tun_name, netns=netns, config=cfg, flags=flags | IFF_MULTI_QUEUE)
    except OSError as e:
        if opts.workers > 1 and e.errno == errno.EINVAL:
            raise OSError(
                f"{opts.tun_name}: cannot open a queue ({e.strerror}); with --workers the "
                "device must be multi-queue (ip tuntap add ... multi_queue) or not exist yet"
            ) from None
        raise
    if not dev.created and opts.mtu and opts.mtu != dev.mtu:
        log.warning("%s exists with MTU %d; --mtu %d ignored", dev.name, dev.mtu, opts.mtu)
    links = [tun_link(dev, down_timeout=down)]
    try:
        _check_mtu(links, dev.name)
        for _ in range(opts.workers - 1):
            links.append(
                tun_link(open_tun(dev.name, netns=netns, flags=flags), down_timeout=down)
            )
    except BaseException:
        for link in links:
            with contextlib.suppress(OSError):
                os.close(link.fd)
        raise
    link = links[0]
    offloads = "csum+tso" if getattr(link, "tso", False) else "csum" if offload else "none"
    queues = f", {opts.workers} queues" if opts.workers > 1 else ""
    log.info(
        "%s %s (mtu %d, offload %s%s%s)", "created" if dev.created else "attached to",
        dev.name, dev.mtu, offloads, queues,
        f", netns {opts.tun_netns}" if opts.tun_netns else "",
    )
    return links
