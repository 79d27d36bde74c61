"""GsoPacket: an outbound packet for a device that segments it (generic segmentation offload).

Pure: a ``bytearray`` with one more attribute. A TCP packet larger than the path allows,
built whole by the stack (one header, one checksum left to the device, ``NEEDS_CSUM``), which
a device with GSO — a Linux TUN opened with ``IFF_VNET_HDR`` — cuts into segments of
``gso_size`` payload bytes, copying the headers and advancing the sequence number; PSH and
FIN stay on the last segment only.
"""

from __future__ import annotations

__all__ = ["GsoPacket"]


class GsoPacket(bytearray):
    """A whole packet (``bytearray``) to be cut into segments of ``gso_size`` payload bytes."""

    __slots__ = ("gso_size",)

    def __init__(self, size_or_data: int | bytes | bytearray = 0, gso_size: int = 0) -> None:
        super().__init__(size_or_data)
        self.gso_size = gso_size
