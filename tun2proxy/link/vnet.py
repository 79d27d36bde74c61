"""A TUN fd opened with ``IFF_VNET_HDR``: checksum and segmentation offload (Linux).

Every packet on the fd is preceded by a 10-byte ``struct virtio_net_hdr`` (little-endian on
the machines Linux TUN runs on; see ``include/uapi/linux/virtio_net.h``)::

    u8 flags        NEEDS_CSUM (1): the checksum at csum_start + csum_offset is partial
                    DATA_VALID (2): the checksum was verified
    u8 gso_type     NONE 0, TCPV4 1, UDP 3, TCPV6 4, (ECN 0x80)
    u16 hdr_len     bytes of headers of a GSO packet
    u16 gso_size    the MSS a GSO packet is to be cut into
    u16 csum_start  where checksumming starts (the transport header)
    u16 csum_offset where, from csum_start, the checksum goes (TCP 16, UDP 6)

What it buys, per 64 KiB packet:

* **inbound**: the kernel marks packets from local sockets ``NEEDS_CSUM`` (their checksum is
  not even computed) or ``DATA_VALID``; neither needs verifying here, which saves the
  largest single cost of the receive path. With ``TUNSETOFFLOAD`` (TSO) the kernel also
  hands over *GSO packets* of up to 64 KiB whatever the MTU, so a 1500-byte MTU costs the
  stack no more packets than a 64 KiB one. Unmarked packets (forwarded from elsewhere) are
  verified here, and dropped and counted when wrong, so the stack can skip verification for
  all of them.
* **outbound**: TCP and UDP packets go out ``NEEDS_CSUM`` with only the pseudo-header sum in
  the checksum field (the stack's ``checksum_offload``); the kernel completes it, or does not
  need to at all for local delivery. A :class:`~tun2proxy.wire.GsoPacket` (a TCP segment
  larger than the path's MSS) is handed over with ``gso_type``/``gso_size`` for the kernel to
  cut.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from collections.abc import Sequence

from ..wire.checksum import ones_sum
from ..wire.gso import GsoPacket
from .fd import FdLink

__all__ = [
    "GSO_MAX_SIZE",
    "TUNSETOFFLOAD",
    "TUN_F_CSUM",
    "TUN_F_TSO4",
    "TUN_F_TSO6",
    "VNET_HDR_LEN",
    "VnetLink",
    "set_offload",
]

TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08

VNET_HDR_LEN = 10
NEEDS_CSUM = 1
DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4

_HDR = struct.Struct("<BBHHHH")
_PLAIN = bytes(VNET_HDR_LEN)
# NEEDS_CSUM headers by (IP header length, protocol).
_CSUM = {
    (20, 6): _HDR.pack(NEEDS_CSUM, GSO_NONE, 0, 0, 20, 16),
    (40, 6): _HDR.pack(NEEDS_CSUM, GSO_NONE, 0, 0, 40, 16),
    (20, 17): _HDR.pack(NEEDS_CSUM, GSO_NONE, 0, 0, 20, 6),
    (40, 17): _HDR.pack(NEEDS_CSUM, GSO_NONE, 0, 0, 40, 6),
}
_MAX_GSO_PACKET = 65535 + 64
#: TCP payload of one outbound GSO packet, at most (65535 less IPv6 + TCP headers, rounded).
GSO_MAX_SIZE = 65000


def set_offload(fd: int, flags: int) -> bool:
    """``TUNSETOFFLOAD``: tell the kernel which offloads this reader handles; False if it
    refuses (old kernel, not a TUN fd)."""
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
    except OSError:
        return False
    return True


def _transport_ok(p: bytes) -> bool:
    """Whether an unmarked packet's IPv4 header and TCP/UDP/ICMP checksums are right."""
    n = len(p)
    if n < 20:
        return False
    v = p[0] >> 4
    if v == 4:
        ihl = (p[0] & 15) * 4
        if ihl < 20 or n < ihl or ones_sum(p[:ihl]) != 0:
            return False
        end = min(n, (p[2] << 8) | p[3])
        proto = p[9]
        if proto == 1:
            return ones_sum(p[ihl:end]) == 0
        pseudo = int.from_bytes(p[12:20], "big")
    elif v == 6:
        if n < 40:
            return False
        ihl = 40
        end = min(n, 40 + ((p[4] << 8) | p[5]))
        proto = p[6]
        pseudo = int.from_bytes(p[8:40], "big")
    else:
        return False
    if proto not in (6, 17, 58):
        return True  # extension headers and the rest: the stack parses and judges them
    if proto == 17 and v == 4 and end - ihl >= 8 and p[ihl + 6] == 0 and p[ihl + 7] == 0:
        return True  # IPv4 UDP without a checksum
    return ones_sum(p[ihl:end], pseudo + proto + (end - ihl)) == 0


class VnetLink(FdLink):
    """Packets over a TUN fd with ``IFF_VNET_HDR`` (see the module docstring).

    Args:
        fd: the TUN fd, opened with ``IFF_VNET_HDR`` (header size left at 10).
        mtu: the device MTU (GSO packets may be larger; reads allow 64 KiB).
        tso: ask for TSO (``TUNSETOFFLOAD``); otherwise checksum offload only.
        name: label for logs.
        down_timeout, ifsock: as for :class:`~tun2proxy.link.fd.FdLink` (a device that
            goes down is waited for).
    """

    def __init__(
        self,
        fd: int,
        mtu: int,
        *,
        tso: bool = True,
        close_fd: bool = True,
        name: str = "tun",
        down_timeout: float | None = None,
        ifsock: socket.socket | None = None,
    ) -> None:
        super().__init__(
            fd, mtu, framing="none", close_fd=close_fd, name=name, down_timeout=down_timeout,
            ifsock=ifsock,
        )
        self._prefix = VNET_HDR_LEN  # FdLink's reader hands each batch to _strip
        self._read_size = max(mtu, _MAX_GSO_PACKET) + VNET_HDR_LEN
        flags = TUN_F_CSUM | ((TUN_F_TSO4 | TUN_F_TSO6) if tso else 0)
        self.tso = tso and set_offload(fd, flags)
        if not self.tso:
            set_offload(fd, TUN_F_CSUM)
        self.checksum_ok = True  # unmarked packets are verified here
        self.checksum_offload = True
        # One GSO packet may carry up to this much TCP payload: the IP length fields (16
        # bits) must still hold it with the largest headers.
        self.gso_max_size = GSO_MAX_SIZE
        #: Inbound packets with a wrong checksum (dropped here).
        self.bad_checksums = 0
        #: Inbound GSO packets (larger than the MTU, cut by nobody: we take them whole).
        self.gso_in = 0
        #: Outbound GSO packets handed to the kernel to cut.
        self.gso_out = 0

    def close(self) -> None:
        """Clear the device's offloads (a persistent device keeps them for its next reader,
        which may not speak the virtio header), then close as any fd link."""
        if not self._closed and self._close_fd:
            set_offload(self.fd, 0)
        super().close()

    def _strip(self, batch: list[bytes]) -> list[bytes]:
        out = []
        for raw in batch:
            if len(raw) <= VNET_HDR_LEN:
                self.bad_frames += 1
                continue
            p = raw[VNET_HDR_LEN:]
            if raw[1]:
                self.gso_in += 1
            if not raw[0] & (NEEDS_CSUM | DATA_VALID) and not _transport_ok(p):
                self.bad_checksums += 1
                continue
            out.append(p)
        return out

    def write_batch(self, packets: Sequence[bytes | bytearray]) -> None:
        """Write each packet behind its virtio header (``writev``: no copy)."""
        if self._closed:
            return
        writev = os.writev
        fd = self.fd
        # checksum_offload False: the packets carry complete checksums (a wrapper such as
        # --impair rewrites them), so nothing may be marked NEEDS_CSUM.
        csum = _CSUM if self.checksum_offload else {}
        plain = _PLAIN
        sent = self.bytes_out
        for i, p in enumerate(packets):
            b0 = p[0]
            if b0 >> 4 == 4:
                hl = (b0 & 15) * 4
                proto = p[9]
            else:
                hl = 40
                proto = p[6]
            if type(p) is GsoPacket:
                gso = GSO_TCPV4 if b0 >> 4 == 4 else GSO_TCPV6
                thl = (p[hl + 12] >> 4) * 4
                hdr = _HDR.pack(NEEDS_CSUM, gso, hl + thl, p.gso_size, hl, 16)
                self.gso_out += 1
            else:
                hdr = csum.get((hl, proto), plain)
            try:
                writev(fd, (hdr, p))
            except (BlockingIOError, InterruptedError):
                self.write_drops += 1
                continue
            except OSError as e:
                if self._write_failed(e, len(packets) - i):
                    return
                continue
            self.bytes_out += len(p)
        self.packets_out += len(packets)
        if self.down_since is not None and self.bytes_out != sent:
            self._back_up()  # the device takes packets again

    def stats(self) -> dict[str, int]:
        """FdLink's counters plus checksum drops and GSO packets each way."""
        s = super().stats()
        s["bad_checksums"] = self.bad_checksums
        s["gso_in"] = self.gso_in
        s["gso_out"] = self.gso_out
        return s
