"""State the worker processes of ``--workers`` share: the virtual DNS slot directory.

:class:`SharedSlotDirectory` is a :class:`~tun2proxy.dns.pool.SlotDirectory` in an
anonymous shared memory mapping, made before the workers fork, so every worker sees every
other worker's fake-address mappings (see :mod:`tun2proxy.dns.pool`). One fixed-size record
per slot; untouched pages of the mapping cost no memory.

Concurrency: only a slot's owner writes its name (``publish``/``withdraw``), inside a
sequence counter that is odd while the write is in progress (a seqlock), so a reader in
another process either sees a whole record or retries and, failing that, reports a miss.
Other workers write only the 8-byte last-use time (``touch``), which needs no lock: a use
time that loses a race to another is still a recent use.
"""

from __future__ import annotations

import mmap
import struct

__all__ = ["SharedSlotDirectory"]

# seq (u32), name length (u16), pad, last use (f64), name (up to 253 bytes, padded)
_HEAD = struct.Struct("<IHxxd")
_NAME = 256
_RECORD = _HEAD.size + _NAME  # 272 bytes, 8-aligned
_SEQ = struct.Struct("<I")
_TIME = struct.Struct("<d")
_TIME_AT = 8
_RETRIES = 4


class SharedSlotDirectory:
    """Slot -> (name, last use) for ``slots`` slots, shared by processes forked after it."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("slots must be positive")
        self.slots = slots
        self._mem = mmap.mmap(-1, slots * _RECORD)  # MAP_SHARED | MAP_ANONYMOUS

    def publish(self, slot: int, name: str, now: float) -> None:
        """``slot`` maps ``name`` from now on."""
        raw = name.encode("ascii")[:_NAME]
        off = slot * _RECORD
        mem = self._mem
        (seq,) = _SEQ.unpack_from(mem, off)
        _SEQ.pack_into(mem, off, seq + 1 | 1)  # odd: being written
        mem[off + _HEAD.size : off + _HEAD.size + len(raw)] = raw
        _HEAD.pack_into(mem, off, seq + 1 | 1, len(raw), now)
        _SEQ.pack_into(mem, off, (seq | 1) + 1)  # even again: whole

    def withdraw(self, slot: int) -> None:
        """``slot`` maps nothing."""
        off = slot * _RECORD
        (seq,) = _SEQ.unpack_from(self._mem, off)
        _HEAD.pack_into(self._mem, off, (seq | 1) + 1, 0, 0.0)

    def lookup(self, slot: int) -> tuple[str, float] | None:
        """The name in ``slot`` and its last use, or None (empty, or being rewritten)."""
        off = slot * _RECORD
        mem = self._mem
        for _ in range(_RETRIES):
            seq, length, used = _HEAD.unpack_from(mem, off)
            if seq & 1:
                continue
            raw = bytes(mem[off + _HEAD.size : off + _HEAD.size + length])
            used = max(used, _TIME.unpack_from(mem, off + _TIME_AT)[0])
            if _SEQ.unpack_from(mem, off)[0] != seq:
                continue
            return (raw.decode("ascii"), used) if length else None
        return None

    def touch(self, slot: int, now: float) -> None:
        """Record a use of ``slot`` at ``now``."""
        _TIME.pack_into(self._mem, slot * _RECORD + _TIME_AT, now)

    def close(self) -> None:
        """Unmap (this process's view only)."""
        self._mem.close()
