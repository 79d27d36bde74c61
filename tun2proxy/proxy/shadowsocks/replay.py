"""Replay filters: the AEAD-2017 salt filter and the SIP022 packet-id sliding window.

Pure: no I/O.
"""

from __future__ import annotations

from collections import OrderedDict

from ...errors import ConfigError

__all__ = ["ReplayWindow", "SaltFilter", "default_salt_filter", "salt_filter_or_default"]


class SaltFilter:
    """A bounded set of recent salts: the ones this process sent and the response salts it
    accepted. The oldest entry is evicted when ``capacity`` is reached (a ring, so memory stays
    bounded: about 150 bytes per 32-byte salt)."""

    __slots__ = ("_salts", "capacity")

    def __init__(self, capacity: int = 16384) -> None:
        if capacity < 1:
            raise ConfigError(f"salt filter capacity must be at least 1, got {capacity}")
        #: The most salts remembered.
        self.capacity = capacity
        self._salts: OrderedDict[bytes, None] = OrderedDict()

    def __contains__(self, salt: object) -> bool:
        return salt in self._salts

    def __len__(self) -> int:
        return len(self._salts)

    def add(self, salt: bytes) -> None:
        """Remember ``salt`` (evicting the oldest when full)."""
        salts = self._salts
        if salt in salts:
            return
        salts[bytes(salt)] = None
        if len(salts) > self.capacity:
            salts.popitem(last=False)

    def clear(self) -> None:
        """Forget every salt."""
        self._salts.clear()


#: The filter every AEAD-2017 codec uses unless given its own; replace this module attribute
#: (``tun2proxy.proxy.shadowsocks.replay.default_salt_filter = SaltFilter(...)``) to change
#: it for codecs built afterwards.
default_salt_filter: SaltFilter = SaltFilter()


def salt_filter_or_default(salt_filter: SaltFilter | None) -> SaltFilter:
    """``salt_filter``, or the :data:`default_salt_filter` of the moment."""
    return salt_filter if salt_filter is not None else default_salt_filter


class ReplayWindow:
    """A sliding-window filter of packet ids (the WireGuard/RFC 6479 scheme, as SIP022 §3.2.4
    asks): an id is new if it is above the highest accepted one, or within ``size`` below it
    and not yet seen. :meth:`check` does not change state; :meth:`add` records an accepted id.
    """

    __slots__ = ("_bits", "_mask", "_top", "size")

    def __init__(self, size: int = 4096) -> None:
        if size < 1:
            raise ValueError(f"replay window size must be at least 1, got {size}")
        #: How many ids below the highest one are remembered.
        self.size = size
        self._mask = (1 << size) - 1
        self._top = -1  # the highest accepted id (none yet)
        self._bits = 0  # bit i: id (top - i) was accepted

    @property
    def highest(self) -> int:
        """The highest accepted packet id, -1 before any."""
        return self._top

    def check(self, packet_id: int) -> bool:
        """True if ``packet_id`` is neither a duplicate nor too far behind the window."""
        if packet_id > self._top:
            return True
        behind = self._top - packet_id
        if behind >= self.size:
            return False
        return not (self._bits >> behind) & 1

    def add(self, packet_id: int) -> None:
        """Record ``packet_id`` as accepted (call only after it passed :meth:`check` and the
        packet was fully validated)."""
        if packet_id > self._top:
            shift = packet_id - self._top
            self._bits = 1 if shift >= self.size else ((self._bits << shift) | 1) & self._mask
            self._top = packet_id
        else:
            behind = self._top - packet_id
            if behind < self.size:
                self._bits |= 1 << behind
