"""The fake-IP pool split among worker processes: disjoint partitions, one shared directory.

The pure pool is tested with a dict directory; the shared-memory directory is then tested
across a real fork, the way ``--workers`` uses it.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tun2proxy.dns import FakeIpPool
from tun2proxy.driver.shared import SharedSlotDirectory
from tun2proxy.errors import ConfigError


class DictDirectory:
    """The directory contract on a dict (what shared memory does across processes)."""

    def __init__(self) -> None:
        self.slots: dict[int, tuple[str, float]] = {}

    def publish(self, slot: int, name: str, now: float) -> None:
        self.slots[slot] = (name, now)

    def withdraw(self, slot: int) -> None:
        self.slots.pop(slot, None)

    def lookup(self, slot: int) -> tuple[str, float] | None:
        return self.slots.get(slot)

    def touch(self, slot: int, now: float) -> None:
        name, _ = self.slots[slot]
        self.slots[slot] = (name, now)


def _pools(n: int, d: DictDirectory, **kw: object) -> list[FakeIpPool]:
    return [
        FakeIpPool("10.0.0.0/24", "fd00::/120", partition=(i, n), directory=d, **kw)  # type: ignore[arg-type]
        for i in range(n)
    ]


def test_partitions_are_disjoint_and_cover_the_range() -> None:
    d = DictDirectory()
    pools = _pools(3, d)
    seen: dict[str, int] = {}
    for i, pool in enumerate(pools):
        for k in range(pool.capacity):
            a4, _ = pool.assign(f"w{i}-{k}.example", 0.0)
            assert str(a4) not in seen, f"{a4} handed out by two workers"
            seen[str(a4)] = i
            assert (int(a4) - int(pool.v4_network.network_address) - 1) % 3 == i
    # Each worker holds at most three quarters of its own share (254 slots: 85, 85, 84).
    assert [p.capacity for p in pools] == [85 - 85 // 4, 85 - 85 // 4, 84 - 84 // 4]


def test_a_name_mapped_in_one_worker_resolves_in_another() -> None:
    d = DictDirectory()
    a, b = _pools(2, d)
    fake4, fake6 = a.assign("name.test", 1.0)
    assert b.name_of(fake4) == "name.test"
    assert b.name_of(fake6) == "name.test"
    assert b.touch(fake4, 2.0)
    # Unmapped addresses of the other partition stay unmapped: the flow is refused.
    assert b.name_of(fake4 + 2) is None and not b.touch(fake4 + 2, 2.0)
    # An address of b's own partition is never looked up in the directory.
    d.slots[1] = ("forged.test", 0.0)
    assert b.name_of(a.v4_network.network_address + 2) is None


def test_uses_in_another_worker_keep_the_mapping_alive() -> None:
    d = DictDirectory()
    a, b = _pools(2, d, ttl=10.0)
    fake, _ = a.assign("kept.test", 0.0)
    other, _ = a.assign("dropped.test", 0.0)
    for t in (5.0, 12.0, 19.0):  # b's flow touches it every 7 s
        assert b.touch(fake, t)
    assert a.expire(21.0) == 1  # dropped.test: no use for 21 s
    assert a.name_of(fake) == "kept.test" and b.name_of(fake) == "kept.test"
    assert a.name_of(other) is None and b.name_of(other) is None  # withdrawn for both
    assert a.expire(40.0) == 1  # no more uses: it goes, for both
    assert b.name_of(fake) is None


def test_eviction_withdraws_from_the_directory() -> None:
    d = DictDirectory()
    a, b = _pools(2, d, capacity=2)
    first, _ = a.assign("one.test", 0.0)
    a.assign("two.test", 1.0)
    a.assign("three.test", 2.0)  # evicts one.test
    assert b.name_of(first) is None
    assert sorted(n for n, _ in d.slots.values()) == ["three.test", "two.test"]


def test_a_partitioned_pool_needs_a_directory_and_a_valid_index() -> None:
    with pytest.raises(ConfigError, match="directory"):
        FakeIpPool(partition=(0, 2))
    with pytest.raises(ConfigError, match="partition"):
        FakeIpPool(partition=(2, 2), directory=DictDirectory())


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 30), st.booleans()), max_size=200))
def test_no_address_ever_names_two_things(ops: list[tuple[int, int, bool]]) -> None:
    d = DictDirectory()
    pools = _pools(3, d, capacity=8, ttl=5.0)
    now = 0.0
    for worker, name, expire in ops:
        now += 1.0
        pool = pools[worker]
        if expire:
            pool.expire(now)
            continue
        a4, _ = pool.assign(f"n{name}.test", now)
        for p in pools:  # every worker reads the same name for that address
            assert p.name_of(a4) == f"n{name}.test"


def test_shared_memory_directory_across_a_fork() -> None:
    d = SharedSlotDirectory(1000)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the other worker
        code = 1
        try:
            d.publish(7, "from-the-child.test", 3.5)
            d.touch(8, 9.0)  # touching a slot with nothing in it changes nothing visible
            os.write(w, b"k")
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    assert os.read(r, 1) == b"k"
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert d.lookup(7) == ("from-the-child.test", 3.5)
    assert d.lookup(8) is None
    d.touch(7, 8.0)
    assert d.lookup(7) == ("from-the-child.test", 8.0)
    d.publish(7, "x" * 253, 9.0)
    assert d.lookup(7) == ("x" * 253, 9.0)
    d.withdraw(7)
    assert d.lookup(7) is None
    d.close()
