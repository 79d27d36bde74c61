"""Impairment: a bad network between the applications and the stack, on purpose.

A testing and debugging feature (``--impair loss=5%,reorder=10%,dup=2%,delay=5ms,
corrupt=0.1%,seed=N``): it wraps any link and applies a seeded
:class:`~tun2proxy.testing.netsim.Impairment` to packets in both directions — loss,
reordering, duplication, corruption (one flipped bit, which the checksums must catch), delay
and jitter. With a real TUN device this tests the kernel's own TCP against our stack on a
lossy link; the kernel here has no ``tc netem``. The same seed gives the same decisions for
the same packet sequence.
"""

from __future__ import annotations

import asyncio
import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import ConfigError
from .base import Link

__all__ = ["MAX_DELAY", "ImpairedLink", "ImpairedPipe", "Impairment"]

#: The longest delay, jitter or reorder delay an impairment may have, in seconds: packets
#: are held in memory meanwhile, so the time is bounded like everything else.
MAX_DELAY = 10.0


@dataclass(frozen=True, slots=True)
class Impairment:
    """How a simulated link mistreats packets. Probabilities are in ``[0, 1]``; times in seconds.

    Attributes:
        loss: probability a packet is dropped.
        reorder: probability a packet is held back by ``reorder_delay`` so later ones pass it.
        duplicate: probability a packet is delivered twice.
        corrupt: probability one random bit of a packet is flipped.
        delay: fixed one-way delay.
        jitter: extra uniform random delay in ``[0, jitter]`` (implies some reordering).
        reorder_delay: how long a reordered packet is held back.
    """

    loss: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0
    corrupt: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    reorder_delay: float = 0.002

    def __post_init__(self) -> None:
        for name in ("loss", "reorder", "duplicate", "corrupt"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"impairment {name} must be between 0% and 100%")
        for name in ("delay", "jitter", "reorder_delay"):
            v = getattr(self, name)
            if v < 0:
                raise ConfigError(f"impairment {name} must not be negative")
            if not v <= MAX_DELAY:  # also NaN
                raise ConfigError(
                    f"impairment {name} must be between 0 and {MAX_DELAY * 1000:g}ms "
                    f"(got {v * 1000:g}ms)"
                )

    @property
    def is_clean(self) -> bool:
        """True when the link does nothing to packets."""
        return not (
            self.loss or self.reorder or self.duplicate or self.corrupt or self.delay
            or self.jitter
        )

    @classmethod
    def parse(cls, spec: str) -> tuple[Impairment, int]:
        """Parse ``loss=5%,reorder=10%,dup=2%,delay=5ms,jitter=1ms,corrupt=0.1%,seed=N``.

        Returns the impairment and the seed (0 when not given).

        Raises:
            ConfigError: naming the part of the spec that is wrong.
        """
        names = {
            "loss": "loss",
            "reorder": "reorder",
            "dup": "duplicate",
            "duplicate": "duplicate",
            "corrupt": "corrupt",
            "delay": "delay",
            "jitter": "jitter",
            "reorder-delay": "reorder_delay",
            "reorder_delay": "reorder_delay",
        }
        values: dict[str, float] = {}
        seed = 0
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, raw = part.partition("=")
            key = key.strip().lower()
            raw = raw.strip().lower()
            if not sep or not raw:
                raise ConfigError(f"impairment {part!r}: expected name=value")
            if key == "seed":
                try:
                    seed = int(raw)
                except ValueError:
                    raise ConfigError(f"impairment seed {raw!r} is not an integer") from None
                continue
            if key not in names:
                raise ConfigError(
                    f"unknown impairment {key!r} (known: loss, reorder, dup, corrupt, delay, "
                    "jitter, reorder-delay, seed)"
                )
            attr = names[key]
            try:
                if attr in ("delay", "jitter", "reorder_delay"):
                    values[attr] = _parse_time(raw)
                else:
                    values[attr] = _parse_fraction(raw)
            except ValueError:
                raise ConfigError(f"impairment {key}={raw!r}: not a valid value") from None
        return cls(**values), seed


def _parse_fraction(raw: str) -> float:
    if raw.endswith("%"):
        return float(raw[:-1]) / 100.0
    return float(raw)


def _parse_time(raw: str) -> float:
    for suffix, scale in (("ms", 1e-3), ("us", 1e-6), ("s", 1.0)):
        if raw.endswith(suffix):
            return float(raw[: -len(suffix)]) * scale
    return float(raw) * 1e-3  # bare numbers are milliseconds


class ImpairedPipe:
    """One direction of an impaired link: ``push`` packets in, ``pop_due`` them out later."""

    def __init__(self, impairment: Impairment, rng: random.Random) -> None:
        self.imp = impairment
        self.rng = rng
        self._queue: list[tuple[float, int, bytes]] = []
        self._seq = 0
        self.sent = 0
        self.lost = 0
        self.duplicated = 0
        self.corrupted = 0
        self.reordered = 0
        self.delivered = 0

    def push(self, packet: bytes | bytearray, now: float) -> None:
        """Offer a packet to the link at time ``now``."""
        imp = self.imp
        rng = self.rng
        self.sent += 1
        if imp.loss and rng.random() < imp.loss:
            self.lost += 1
            return
        copies = 1
        if imp.duplicate and rng.random() < imp.duplicate:
            copies = 2
            self.duplicated += 1
        for _ in range(copies):
            data = bytes(packet)
            if imp.corrupt and rng.random() < imp.corrupt:
                bit = rng.randrange(len(data) * 8)
                b = bytearray(data)
                b[bit >> 3] ^= 1 << (bit & 7)
                data = bytes(b)
                self.corrupted += 1
            t = now + imp.delay
            if imp.jitter:
                t += rng.random() * imp.jitter
            if imp.reorder and rng.random() < imp.reorder:
                t += imp.reorder_delay
                self.reordered += 1
            self._seq += 1
            heapq.heappush(self._queue, (t, self._seq, data))

    def pop_due(self, now: float) -> list[bytes]:
        """Packets whose delivery time has come, in delivery order."""
        q = self._queue
        out = []
        while q and q[0][0] <= now:
            out.append(heapq.heappop(q)[2])
        self.delivered += len(out)
        return out

    def next_due(self) -> float | None:
        """Delivery time of the next packet in flight."""
        return self._queue[0][0] if self._queue else None

    def __len__(self) -> int:
        return len(self._queue)




class ImpairedLink(Link):
    """Wraps ``inner`` and impairs every packet both ways (see the module docstring).

    Args:
        inner: the real link.
        impairment: what to do to packets; ``inbound``/``outbound`` override per direction.
        seed: seed of the random decisions.
    """

    def __init__(
        self,
        inner: Link,
        impairment: Impairment,
        seed: int = 0,
        *,
        inbound: Impairment | None = None,
        outbound: Impairment | None = None,
    ) -> None:
        if inner.checksum_offload:
            # Offloaded packets carry partial checksums both ways: corruption could not be
            # detected and rewritten packets could not be marked. Impair a plain link.
            raise ValueError("ImpairedLink needs a link without checksum offload")
        self.inner = inner
        self.mtu = inner.mtu
        self.name = f"{inner.name} (impaired)"
        # Corrupted packets must be checked by the stack, whatever the device verified.
        self.checksum_ok = False
        self.checksum_offload = False
        rng = random.Random(seed)
        self._in = ImpairedPipe(inbound or impairment, random.Random(rng.getrandbits(64)))
        self._out = ImpairedPipe(outbound or impairment, random.Random(rng.getrandbits(64)))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deliver: Callable[[list[bytes]], None] | None = None
        self._in_timer: asyncio.TimerHandle | None = None
        self._out_timer: asyncio.TimerHandle | None = None
        self._closed = False

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[list[bytes]], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        """Start the inner link, routing its packets through the inbound impairment."""
        self._loop = loop
        self._deliver = deliver
        self.inner.start(loop, self._from_inner, on_error)

    def _from_inner(self, packets: list[bytes]) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        for p in packets:
            self._in.push(p, now)
        self._flush_in()

    def _flush_in(self) -> None:
        self._in_timer = None
        loop = self._loop
        if loop is None or self._closed:
            return
        due = self._in.pop_due(loop.time())
        if due and self._deliver is not None:
            self._deliver(due)
        self._in_timer = self._arm(self._in, self._in_timer, self._flush_in)

    def write_batch(self, packets: Sequence[bytes | bytearray]) -> None:
        """Impair outbound packets; those due now go to the inner link at once."""
        loop = self._loop
        if loop is None or self._closed:
            return
        now = loop.time()
        for p in packets:
            self._out.push(p, now)
        self._flush_out()

    def _flush_out(self) -> None:
        self._out_timer = None
        loop = self._loop
        if loop is None or self._closed:
            return
        due = self._out.pop_due(loop.time())
        if due:
            self.inner.write_batch(due)
        self._out_timer = self._arm(self._out, self._out_timer, self._flush_out)

    def _arm(
        self,
        pipe: ImpairedPipe,
        timer: asyncio.TimerHandle | None,
        cb: Callable[[], None],
    ) -> asyncio.TimerHandle | None:
        loop = self._loop
        assert loop is not None
        nxt = pipe.next_due()
        if nxt is None:
            return timer
        if timer is not None:
            if timer.when() <= nxt:
                return timer
            timer.cancel()
        return loop.call_at(nxt, cb)

    def close(self) -> None:
        """Stop and close the inner link (packets still held back are dropped)."""
        self._closed = True
        for t in (self._in_timer, self._out_timer):
            if t is not None:
                t.cancel()
        self.inner.close()

    def stats(self) -> dict[str, int]:
        """The inner link's counters and what the impairment did in each direction."""
        s = dict(self.inner.stats())
        for name, pipe in (("in", self._in), ("out", self._out)):
            s[f"impair_{name}_lost"] = pipe.lost
            s[f"impair_{name}_duplicated"] = pipe.duplicated
            s[f"impair_{name}_corrupted"] = pipe.corrupted
            s[f"impair_{name}_reordered"] = pipe.reordered
        return s
