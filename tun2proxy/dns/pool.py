"""The fake-IP pool of virtual DNS: host names <-> addresses from reserved ranges.

Pure: no I/O, no clock (``now`` is monotonic seconds passed in by the caller).

Each name gets one *slot*; slot ``i`` stands for host ``i + 1`` of both the IPv4 and the
IPv6 range (the first address of either range, and the last, are never handed out: they
are the IPv4 network and broadcast addresses, and the IPv6 subnet-router anycast address
and its mirror). So a name has the same offset in both families and one table serves both.

Defaults: IPv4 ``198.18.0.0/15`` (RFC 2544 benchmarking space, never routed on the
Internet; the Rust tun2proxy's default, and where Clash and sing-box put their fake IPs too)
and IPv6 ``fd27:4a46:c40a::/64``, a unique local prefix (RFC 4193, ``fd00::/8``) whose
40-bit global ID was drawn at random once for this project, as RFC 4193 section 3.2 asks.
A random ID keeps clear of ``fd00::/64``, which many home routers use, and of the default
tunnel address ``fdfe:dcba:9876::1/125``. (``fc00::/8`` is not used: that half of the ULA
space is not defined for local use.)

Reuse of addresses. A slot is taken by a cursor that walks the whole range in order and
skips slots still mapped, so a released address is handed out again only after the cursor
has gone round the range once: an application that cached an old answer longer than it
should reaches an address that is unmapped (the host rejects the flow) rather than another
name's. At most three quarters of the usable addresses are mapped at once (``capacity``
is clamped to that); the free quarter keeps the cursor's walk O(1) amortised (it skips at
most three mapped slots per assignment on average) and is the quarantine above.

Lifetime contract (what :meth:`FakeIpPool.touch` gives). A mapping is made or refreshed by
:meth:`~FakeIpPool.assign` (a DNS answer) and refreshed by :meth:`~FakeIpPool.touch` (a
flow using the address). It is removed only

* by :meth:`~FakeIpPool.expire` once ``ttl`` seconds have passed since its last use, or
* by LRU eviction, when a *new* name needs a slot and ``capacity`` mappings exist: the
  least recently used one goes (an expired one, if any, since they are the least recent).

Expiry is lazy: an expired mapping that has not been removed still resolves, which is
harmless (its address was not reused). So a host keeps a mapping alive for as long as its
flows live by touching the address when a flow starts and then at least once every ``ttl``
seconds while it lives (touching on every datagram is fine: it is O(1)); the mapping can
then only be lost if ``capacity`` other names are used within one ``ttl``. Once a TCP flow
has been dialled by name, the upstream connection carries the name and the mapping is no
longer needed by that flow; it matters for new flows and for UDP datagrams, which are
resolved one by one. When :meth:`~FakeIpPool.name_of` returns ``None`` for an address in
the pool, the host must reject the flow, never dial the fake address itself.

Several processes (``--workers``). Each worker's pool takes only the slots of its own
*partition* (slot ``i`` belongs to worker ``i mod n``), so no two workers ever hand out one
address, and publishes what it maps in a :class:`SlotDirectory` all workers share. A flow
may land in another worker than the DNS query that made its address (the kernel spreads
flows over the queues by their addresses and ports); that worker finds the name in the
directory and records its uses there, and the owner counts those uses before it expires a
mapping. Two workers asked for the same name give two different addresses, both valid.

Names are normalised by :func:`normalize_name`: lower case, without the trailing dot,
non-ASCII labels converted to ASCII with the standard library's IDNA 2003 codec, and then
restricted to letters, digits, ``-`` and ``_`` with RFC 1035 lengths. The restriction is a
security duty: the name is later written into SOCKS and HTTP CONNECT requests, where a
space, ``/``, ``@``, CR or LF could change the request's meaning.
"""

from __future__ import annotations

import ipaddress
import re
from collections import OrderedDict
from collections.abc import Iterable
from typing import Protocol

from ..errors import ConfigError

__all__ = [
    "DEFAULT_V4_POOL",
    "DEFAULT_V6_POOL",
    "Address",
    "FakeIpPool",
    "SlotDirectory",
    "normalize_name",
]

DEFAULT_V4_POOL = "198.18.0.0/15"
DEFAULT_V6_POOL = "fd27:4a46:c40a::/64"

Address = bytes | bytearray | str | ipaddress.IPv4Address | ipaddress.IPv6Address
"""An address as the pool accepts it: packed (4 or 16 bytes), text, or an ``ipaddress`` object."""

_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
_MAX_NAME = 253  # text length without the trailing dot (255 octets on the wire)
_V4_MAPPED = 0xFFFF  # ::ffff:0:0/96, the upper 96 bits of an IPv4-mapped IPv6 address


def normalize_name(name: str) -> str:
    """``name`` in the pool's canonical form, or :class:`ValueError` if it is no host name.

    Lower case, one trailing dot removed, non-ASCII labels IDNA-encoded (``bücher.de`` ->
    ``xn--bcher-kva.de``); every label 1-63 characters of ``[a-z0-9_-]``, the whole name
    at most 253 characters. The root name (``""`` or ``"."``) is not a host name.
    """
    if not isinstance(name, str):
        raise TypeError("name must be str")
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise ValueError("empty name")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"not an IDNA name: {exc}") from None
    name = name.lower()
    if len(name) > _MAX_NAME:
        raise ValueError("name longer than 253 characters")
    for label in name.split("."):
        if not _LABEL.fullmatch(label):
            raise ValueError(f"invalid label {label!r}")
    return name


class SlotDirectory(Protocol):
    """Mappings shared by the pools of several workers, by slot (see the module docstring).

    The pool only calls it; an implementation may live in shared memory. Every method is
    O(1) and must tolerate a slot being rewritten concurrently (a lookup then misses).
    """

    def publish(self, slot: int, name: str, now: float) -> None:
        """``slot`` now maps ``name`` (called by the slot's owner)."""

    def withdraw(self, slot: int) -> None:
        """``slot`` maps nothing any more (called by the slot's owner)."""

    def lookup(self, slot: int) -> tuple[str, float] | None:
        """The name ``slot`` maps and its last use, or None."""

    def touch(self, slot: int, now: float) -> None:
        """A use of ``slot`` at ``now`` by a worker that does not own it."""


class _Mapping:
    """One live mapping: the name and when it was last assigned or touched."""

    __slots__ = ("last_used", "name")

    def __init__(self, name: str, last_used: float) -> None:
        self.name = name
        self.last_used = last_used


class FakeIpPool:
    """Bounded, O(1) name <-> fake address table with LRU eviction and lazy expiry.

    Args:
        v4: the IPv4 range (``--virtual-dns-pool``); host bits are ignored.
        v6: the IPv6 range.
        capacity: most names mapped at once; clamped to three quarters of the usable
            addresses of the smaller range (see the module docstring). Read it back from
            :attr:`capacity`.
        ttl: seconds without use after which :meth:`expire` removes a mapping.
        partition: ``(index, count)``: this pool takes only slots ``s`` with
            ``s % count == index`` (one pool per worker process); capacity is clamped to
            the partition's share of the range.
        directory: where the pools of all partitions publish their mappings and look up
            each other's (needed whenever ``count`` > 1).
        reserved: addresses inside the ranges that are never handed out (for example a DNS
            server address the host placed inside the pool). Reserving an address of one
            family also withholds its slot's address in the other family.

    Raises:
        ConfigError: a range is invalid, of the wrong family or too small, or ``capacity``
            or ``ttl`` is not positive.
    """

    __slots__ = (
        "_by_name",
        "_capacity",
        "_cursor",
        "_directory",
        "_entries",
        "_part",
        "_parts",
        "_reserved",
        "_space",
        "_stats",
        "_ttl",
        "_v4",
        "_v4_base",
        "_v6",
        "_v6_base",
    )

    def __init__(
        self,
        v4: str = DEFAULT_V4_POOL,
        v6: str = DEFAULT_V6_POOL,
        *,
        capacity: int = 65536,
        ttl: float = 60.0,
        reserved: Iterable[Address] = (),
        partition: tuple[int, int] = (0, 1),
        directory: SlotDirectory | None = None,
    ) -> None:
        try:
            self._v4 = ipaddress.IPv4Network(v4, strict=False)
        except ValueError as exc:
            raise ConfigError(f"virtual DNS IPv4 pool: {exc}") from None
        try:
            self._v6 = ipaddress.IPv6Network(v6, strict=False)
        except ValueError as exc:
            raise ConfigError(f"virtual DNS IPv6 pool: {exc}") from None
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ConfigError("virtual DNS capacity must be a positive integer")
        if not ttl > 0:
            raise ConfigError("virtual DNS ttl must be positive")
        part, parts = partition
        if not 0 <= part < parts:
            raise ConfigError(f"virtual DNS partition {part} of {parts} is out of range")
        if parts > 1 and directory is None:
            raise ConfigError("a partitioned virtual DNS pool needs a shared directory")
        self._part, self._parts = part, parts
        self._directory = directory
        self._v4_base = int(self._v4.network_address)
        self._v6_base = int(self._v6.network_address)
        self._space = min(self._v4.num_addresses, self._v6.num_addresses) - 2
        if self._space < 1:
            raise ConfigError("virtual DNS pools need at least one usable address (/30, /126)")
        self._reserved: frozenset[int] = frozenset(
            s for s in (self._slot_of(a) for a in reserved) if s is not None
        )
        own = (self._space - part + parts - 1) // parts
        free = own - sum(1 for r in self._reserved if r % parts == part)
        if free < 1:
            raise ConfigError("virtual DNS pool: every address is reserved")
        self._capacity = min(capacity, max(1, free - free // 4))
        self._ttl = float(ttl)
        self._entries: OrderedDict[int, _Mapping] = OrderedDict()  # slot -> mapping, LRU first
        self._by_name: dict[str, int] = {}
        self._cursor = part
        self._stats = {"assigned": 0, "hits": 0, "evicted": 0, "expired": 0}

    # -- properties -----------------------------------------------------------------------

    @property
    def v4_network(self) -> ipaddress.IPv4Network:
        """The IPv4 range."""
        return self._v4

    @property
    def v6_network(self) -> ipaddress.IPv6Network:
        """The IPv6 range."""
        return self._v6

    @property
    def slots(self) -> int:
        """Usable addresses per family (slot numbers run from 0 to ``slots - 1``)."""
        return self._space

    @property
    def capacity(self) -> int:
        """Most names mapped at once (after clamping)."""
        return self._capacity

    @property
    def ttl(self) -> float:
        """Seconds without use after which a mapping may be expired."""
        return self._ttl

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, int]:
        """Counters: ``mappings`` (live), ``capacity``, ``assigned`` (new mappings),
        ``hits`` (a name already mapped), ``evicted`` (LRU, still fresh) and ``expired``."""
        return {"mappings": len(self._entries), "capacity": self._capacity, **self._stats}

    # -- operations -----------------------------------------------------------------------

    def assign(self, name: str, now: float) -> tuple[ipaddress.IPv4Address, ipaddress.IPv6Address]:
        """The fake addresses of ``name``, mapping it if it is not mapped yet.

        The same name gets the same addresses for as long as it stays mapped; assigning
        counts as a use (it refreshes the mapping). Raises :class:`ValueError` if ``name``
        is not a host name (see :func:`normalize_name`).
        """
        key = normalize_name(name)
        slot = self._by_name.get(key)
        if slot is not None:
            entry = self._entries[slot]
            entry.last_used = now
            self._entries.move_to_end(slot)
            self._stats["hits"] += 1
            return self._addresses(slot)
        directory = self._directory
        if len(self._entries) >= self._capacity:
            old_slot, old = self._entries.popitem(last=False)
            del self._by_name[old.name]
            self._stats["expired" if now - old.last_used >= self._ttl else "evicted"] += 1
            if directory is not None:
                directory.withdraw(old_slot)
        slot = self._take_slot()
        self._entries[slot] = _Mapping(key, now)
        self._by_name[key] = slot
        self._stats["assigned"] += 1
        if directory is not None:
            directory.publish(slot, key, now)
        return self._addresses(slot)

    def name_of(self, addr: Address) -> str | None:
        """The name mapped to ``addr``, or ``None`` (unmapped, outside the pool, invalid).

        An IPv4-mapped IPv6 address (``::ffff:198.18.0.1``) is looked up as IPv4.
        """
        slot = self._slot_of(addr)
        if slot is None:
            return None
        entry = self._entries.get(slot)
        if entry is not None:
            return entry.name
        if self._directory is not None and slot % self._parts != self._part:
            found = self._directory.lookup(slot)
            return None if found is None else found[0]
        return None

    def touch(self, addr: Address, now: float) -> bool:
        """Record a use of ``addr`` at ``now``; ``True`` if it is mapped.

        See the module docstring for the lifetime this guarantees.
        """
        slot = self._slot_of(addr)
        if slot is None:
            return False
        entry = self._entries.get(slot)
        if entry is None:
            directory = self._directory
            if directory is not None and slot % self._parts != self._part:
                if directory.lookup(slot) is None:
                    return False
                directory.touch(slot, now)  # the owner sees it before it expires the slot
                return True
            return False
        entry.last_used = now
        self._entries.move_to_end(slot)
        return True

    def contains(self, addr: Address) -> bool:
        """Whether ``addr`` lies in either range at all (mapped or not, reserved included).

        Invalid addresses are simply not contained.
        """
        parsed = _to_int(addr)
        if parsed is None:
            return False
        version, value = parsed
        if version == 4:
            return 0 <= value - self._v4_base < self._v4.num_addresses
        return 0 <= value - self._v6_base < self._v6.num_addresses

    def expire(self, now: float) -> int:
        """Remove the mappings unused for ``ttl`` seconds; return how many went.

        Cost is proportional to the number removed (they sit at the LRU end).
        """
        removed = 0
        entries = self._entries
        directory = self._directory
        while entries:
            slot, entry = next(iter(entries.items()))
            if now - entry.last_used < self._ttl:
                break
            if directory is not None:
                found = directory.lookup(slot)
                if found is not None and now - found[1] < self._ttl:
                    entry.last_used = found[1]  # another worker used it: keep it
                    entries.move_to_end(slot)
                    continue
                directory.withdraw(slot)
            del entries[slot]
            del self._by_name[entry.name]
            removed += 1
        self._stats["expired"] += removed
        return removed

    # -- internals ------------------------------------------------------------------------

    def _addresses(self, slot: int) -> tuple[ipaddress.IPv4Address, ipaddress.IPv6Address]:
        return (
            ipaddress.IPv4Address(self._v4_base + slot + 1),
            ipaddress.IPv6Address(self._v6_base + slot + 1),
        )

    def _take_slot(self) -> int:
        # Called with fewer than ``capacity`` mappings, so a free slot exists and the walk
        # ends; amortised O(1) because a quarter of the range is always free.
        space = self._space
        cursor = self._cursor
        entries = self._entries
        reserved = self._reserved
        step, first = self._parts, self._part
        while cursor in entries or cursor in reserved:
            cursor += step
            if cursor >= space:
                cursor = first
        self._cursor = cursor + step if cursor + step < space else first
        return cursor

    def _slot_of(self, addr: Address) -> int | None:
        parsed = _to_int(addr)
        if parsed is None:
            return None
        version, value = parsed
        slot = value - (self._v4_base if version == 4 else self._v6_base) - 1
        if 0 <= slot < self._space:
            return slot
        return None


def _to_int(addr: Address) -> tuple[int, int] | None:
    """``(version, integer)`` of an address in any accepted form, or ``None`` if invalid."""
    if isinstance(addr, ipaddress.IPv4Address):
        return 4, int(addr)
    if isinstance(addr, ipaddress.IPv6Address):
        value = int(addr)
    elif isinstance(addr, bytes | bytearray):
        if len(addr) == 4:
            return 4, int.from_bytes(addr, "big")
        if len(addr) != 16:
            return None
        value = int.from_bytes(addr, "big")
    elif isinstance(addr, str):
        try:
            parsed = ipaddress.ip_address(addr)
        except ValueError:
            return None
        if parsed.version == 4:
            return 4, int(parsed)
        value = int(parsed)
    else:
        return None
    if value >> 32 == _V4_MAPPED:
        return 4, value & 0xFFFFFFFF
    return 6, value
