"""FakeIpPool: stable name <-> address mappings, normalisation, LRU, expiry and touch."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tun2proxy.dns import DEFAULT_V4_POOL, DEFAULT_V6_POOL, FakeIpPool, normalize_name
from tun2proxy.errors import ConfigError

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


# -- defaults and configuration --------------------------------------------------------------


def test_defaults() -> None:
    pool = FakeIpPool()
    assert str(pool.v4_network) == DEFAULT_V4_POOL == "198.18.0.0/15"
    assert str(pool.v6_network) == DEFAULT_V6_POOL
    v6 = ipaddress.IPv6Network(DEFAULT_V6_POOL)
    assert v6.subnet_of(ipaddress.IPv6Network("fd00::/8"))  # locally assigned ULA
    assert not v6.overlaps(ipaddress.IPv6Network("fdfe:dcba:9876::/125"))  # the TUN address
    assert not v6.overlaps(ipaddress.IPv6Network("fd00::/64"))  # common home-router prefix
    assert pool.capacity == 65536
    assert pool.ttl == 60.0
    assert len(pool) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"v4": "not-a-net"}, "IPv4 pool"),
        ({"v4": "fd00::/64"}, "IPv4 pool"),
        ({"v6": "198.18.0.0/15"}, "IPv6 pool"),
        ({"v4": "10.0.0.0/31"}, "usable"),
        ({"v6": "fd00::/127"}, "usable"),
        ({"capacity": 0}, "capacity"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": -1.0}, "ttl"),
        ({"v4": "10.0.0.0/30", "reserved": ["10.0.0.1", "10.0.0.2"]}, "reserved"),
    ],
)
def test_config_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        FakeIpPool(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("v4", "capacity", "expected"),
    [
        ("198.18.0.0/15", 65536, 65536),
        ("198.18.0.0/15", 10**9, 131070 - 131070 // 4),
        ("10.0.0.0/24", 65536, 254 - 254 // 4),
        ("10.0.0.0/30", 65536, 2),
        ("10.0.0.0/24", 5, 5),
    ],
)
def test_capacity_is_clamped_to_three_quarters(v4: str, capacity: int, expected: int) -> None:
    assert FakeIpPool(v4, capacity=capacity).capacity == expected


def test_host_bits_of_the_range_are_ignored() -> None:
    pool = FakeIpPool("198.18.7.9/15")
    assert pool.v4_network == ipaddress.IPv4Network("198.18.0.0/15")


# -- assign ------------------------------------------------------------------------------------


def test_assign_gives_addresses_from_both_ranges_at_the_same_offset() -> None:
    pool = FakeIpPool()
    v4, v6 = pool.assign("example.com", 0.0)
    assert v4 == V4("198.18.0.1")  # never the network address
    assert v6 == V6(int(pool.v6_network.network_address) + 1)
    assert v4 in pool.v4_network and v6 in pool.v6_network
    v4b, v6b = pool.assign("example.org", 0.0)
    assert int(v4b) - int(v4) == int(v6b) - int(v6) == 1


def test_same_name_same_addresses_while_mapped() -> None:
    pool = FakeIpPool()
    first = pool.assign("example.com", 0.0)
    pool.assign("other.example", 1.0)
    assert pool.assign("example.com", 2.0) == first
    assert pool.assign("EXAMPLE.com.", 3.0) == first
    assert len(pool) == 2
    stats = pool.stats()
    assert stats["assigned"] == 2
    assert stats["hits"] == 2


def test_distinct_names_distinct_addresses() -> None:
    pool = FakeIpPool()
    names = [f"host{i}.example" for i in range(500)]
    addrs = [pool.assign(n, 0.0) for n in names]
    assert len({a for a, _ in addrs}) == 500
    assert len({b for _, b in addrs}) == 500
    for name, (v4, v6) in zip(names, addrs, strict=True):
        assert pool.name_of(v4) == name
        assert pool.name_of(v6) == name


@pytest.mark.parametrize(
    ("given_name", "expected"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("WWW.Example.Com.", "www.example.com"),
        ("Bücher.de", "xn--bcher-kva.de"),
        ("bücher.DE.", "xn--bcher-kva.de"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("_dmarc.example.com", "_dmarc.example.com"),
        ("localhost", "localhost"),
        ("1.2.3.4", "1.2.3.4"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
    ],
)
def test_name_normalisation(given_name: str, expected: str) -> None:
    assert normalize_name(given_name) == expected
    pool = FakeIpPool()
    v4, _ = pool.assign(given_name, 0.0)
    assert pool.name_of(v4) == expected
    assert pool.assign(expected, 1.0)[0] == v4


@pytest.mark.parametrize(
    "bad",
    [
        "",
        ".",
        "..",
        "a..b",
        ".example.com",
        "a b.com",
        "a/b.com",
        "user@example.com",
        "example.com\r\nHost: evil",
        "exa\x00mple.com",
        "*.example.com",
        "a" * 64 + ".com",
        ".".join(["a" * 63] * 4),  # 255 characters
        "\udcff.com",
    ],
)
def test_invalid_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        normalize_name(bad)
    pool = FakeIpPool()
    with pytest.raises(ValueError):
        pool.assign(bad, 0.0)
    assert len(pool) == 0


def test_longest_valid_name() -> None:
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(name) == 253
    assert normalize_name(name + ".") == name


def test_normalize_name_rejects_non_str() -> None:
    with pytest.raises(TypeError):
        normalize_name(b"example.com")  # type: ignore[arg-type]


# -- lookups -------------------------------------------------------------------------------------


def test_name_of_accepts_every_address_form() -> None:
    pool = FakeIpPool()
    v4, v6 = pool.assign("example.com", 0.0)
    forms: list[object] = [v4, v6, str(v4), str(v6), v4.packed, v6.packed, bytearray(v4.packed)]
    forms.append(V6(f"::ffff:{v4}"))  # IPv4-mapped IPv6 is looked up as IPv4
    forms.append(f"::ffff:{v4}")
    for form in forms:
        assert pool.name_of(form) == "example.com", form  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "addr",
    ["198.18.0.0", "198.19.255.255", "198.18.0.99", "10.0.0.1", "::1", "nonsense", "", b"\x01\x02"],
)
def test_name_of_unmapped_or_invalid_is_none(addr: str | bytes) -> None:
    pool = FakeIpPool()
    pool.assign("example.com", 0.0)
    assert pool.name_of(addr) is None
    assert pool.touch(addr, 1.0) is False


def test_name_of_rejects_unknown_types() -> None:
    pool = FakeIpPool()
    assert pool.name_of(12345) is None  # type: ignore[arg-type]
    assert pool.contains(None) is False  # type: ignore[arg-type]


def test_contains_covers_whole_ranges() -> None:
    pool = FakeIpPool()
    assert pool.contains("198.18.0.0")  # network address: in range, never handed out
    assert pool.contains("198.19.255.255")
    assert pool.contains(V4("198.18.77.1").packed)
    assert pool.contains(pool.v6_network.network_address)
    assert pool.contains(str(pool.v6_network.broadcast_address))
    assert pool.contains("::ffff:198.18.0.5")
    assert not pool.contains("198.17.255.255")
    assert not pool.contains("198.20.0.0")
    assert not pool.contains("fd00::1")
    assert not pool.contains("garbage")
    assert not pool.contains(b"\x00" * 5)


def test_network_and_broadcast_never_handed_out() -> None:
    pool = FakeIpPool("10.0.0.0/29", "fd00:1::/125", capacity=5)
    assert pool.capacity == 5
    seen4: set[V4] = set()
    seen6: set[V6] = set()
    for i in range(200):
        v4, v6 = pool.assign(f"n{i}.example", float(i))
        seen4.add(v4)
        seen6.add(v6)
    assert seen4 == {V4(f"10.0.0.{i}") for i in range(1, 7)}
    assert V6("fd00:1::") not in seen6
    assert V6("fd00:1::7") not in seen6


def test_reserved_addresses_are_never_handed_out() -> None:
    pool = FakeIpPool("10.0.0.0/29", "fd00:1::/120", reserved=["10.0.0.2", V6("fd00:1::5")])
    assert pool.capacity == 4 - 1
    seen = {pool.assign(f"n{i}.example", float(i))[0] for i in range(100)}
    assert V4("10.0.0.2") not in seen
    assert V4("10.0.0.5") not in seen
    assert pool.name_of("10.0.0.2") is None
    assert pool.contains("10.0.0.2")


# -- LRU, expiry, touch --------------------------------------------------------------------------


def test_lru_eviction_at_capacity() -> None:
    pool = FakeIpPool("10.0.0.0/24", capacity=3, ttl=1000.0)
    a = pool.assign("a.example", 0.0)
    b = pool.assign("b.example", 1.0)
    c = pool.assign("c.example", 2.0)
    assert pool.assign("a.example", 3.0) == a  # a is now the most recently used
    d = pool.assign("d.example", 4.0)
    assert len(pool) == 3
    assert pool.name_of(b[0]) is None  # b was least recently used
    assert pool.name_of(a[0]) == "a.example"
    assert pool.name_of(c[0]) == "c.example"
    assert pool.name_of(d[0]) == "d.example"
    assert d[0] != b[0]  # the freed address is not handed out straight away
    assert pool.stats()["evicted"] == 1


def test_touch_protects_from_lru_eviction() -> None:
    pool = FakeIpPool("10.0.0.0/24", capacity=2, ttl=1000.0)
    a = pool.assign("a.example", 0.0)
    b = pool.assign("b.example", 1.0)
    assert pool.touch(a[1], 2.0)  # touching by the IPv6 address refreshes the mapping
    pool.assign("c.example", 3.0)
    assert pool.name_of(a[0]) == "a.example"
    assert pool.name_of(b[0]) is None


def test_expiry_after_ttl_without_touch() -> None:
    pool = FakeIpPool(ttl=10.0)
    v4, v6 = pool.assign("example.com", 100.0)
    assert pool.expire(109.999) == 0
    assert pool.name_of(v4) == "example.com"
    assert pool.expire(110.0) == 1
    assert pool.name_of(v4) is None
    assert pool.name_of(v6) is None
    assert len(pool) == 0
    assert pool.stats()["expired"] == 1
    assert pool.touch(v4, 111.0) is False


def test_touch_keeps_a_mapping_alive() -> None:
    pool = FakeIpPool(ttl=10.0)
    v4, _ = pool.assign("example.com", 0.0)
    pool.assign("idle.example", 0.0)
    for t in (8.0, 16.0, 24.0):
        assert pool.touch(str(v4), t)
        assert pool.expire(t + 1.0) <= 1
    assert pool.name_of(v4) == "example.com"
    assert pool.name_of("198.18.0.2") is None  # the idle one expired
    assert pool.expire(33.9) == 0
    assert pool.expire(34.0) == 1
    assert pool.name_of(v4) is None


def test_assign_refreshes_like_touch() -> None:
    pool = FakeIpPool(ttl=10.0)
    v4, _ = pool.assign("example.com", 0.0)
    pool.assign("example.com", 9.0)
    assert pool.expire(15.0) == 0
    assert pool.name_of(v4) == "example.com"


def test_expiry_is_lazy() -> None:
    pool = FakeIpPool(ttl=10.0)
    v4, _ = pool.assign("example.com", 0.0)
    # No expire() call: the mapping still resolves, and the name keeps its address.
    assert pool.name_of(v4) == "example.com"
    assert pool.assign("example.com", 500.0)[0] == v4
    assert pool.stats()["expired"] == 0


def test_expired_mappings_go_first_when_space_is_needed() -> None:
    pool = FakeIpPool("10.0.0.0/24", capacity=2, ttl=10.0)
    old = pool.assign("old.example", 0.0)
    fresh = pool.assign("fresh.example", 15.0)
    pool.assign("new.example", 16.0)
    assert pool.name_of(old[0]) is None
    assert pool.name_of(fresh[0]) == "fresh.example"
    assert pool.stats()["expired"] == 1
    assert pool.stats()["evicted"] == 0


def test_released_address_waits_for_a_full_cycle() -> None:
    pool = FakeIpPool("10.0.0.0/28", capacity=1, ttl=1.0)
    space = 14
    first, _ = pool.assign("n0.example", 0.0)
    seen = [first]
    for i in range(1, space):
        seen.append(pool.assign(f"n{i}.example", float(i))[0])
    assert len(set(seen)) == space  # every usable address used once before any reuse
    assert pool.assign("again.example", 100.0)[0] == first


def test_cursor_skips_addresses_still_mapped() -> None:
    pool = FakeIpPool("10.0.0.0/29", capacity=5, ttl=1000.0)
    keep = pool.assign("keep.example", 0.0)[0]  # 10.0.0.1, touched forever
    for i in range(50):
        pool.touch(keep, float(i))
        v4, _ = pool.assign(f"churn{i}.example", float(i))
        assert v4 != keep
        assert pool.name_of(keep) == "keep.example"


@settings(max_examples=150)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["assign", "touch", "expire", "name_of"]),
            st.integers(0, 11),
            st.floats(0, 5, allow_nan=False),
        ),
        max_size=80,
    )
)
def test_invariants_under_random_operations(ops: list[tuple[str, int, float]]) -> None:
    pool = FakeIpPool("10.0.0.0/29", "fd00:1::/64", capacity=4, ttl=3.0)
    net4 = pool.v4_network
    now = 0.0
    current: dict[str, V4] = {}
    for op, n, dt in ops:
        now += dt
        name = f"n{n}.example"
        if op == "assign":
            v4, v6 = pool.assign(name, now)
            assert v4 not in (net4.network_address, net4.broadcast_address)
            assert int(v4) - int(net4.network_address) == int(v6) - int(pool.v6_network[0])
            if name in current:
                assert current[name] == v4  # stable while mapped
            current[name] = v4
        elif op == "touch":
            addr = V4(int(net4.network_address) + 1 + n % 6)
            assert pool.touch(addr, now) == (pool.name_of(addr) is not None)
        elif op == "expire":
            pool.expire(now)
        # Keep our view in step with removals, then check the bijection.
        current = {k: v for k, v in current.items() if pool.name_of(v) == k}
        assert len(pool) <= pool.capacity
        assert len(set(current.values())) == len(current)
        mapped = {pool.name_of(V4(int(net4.network_address) + i)) for i in range(1, 7)} - {None}
        assert mapped == set(current)
        assert len(pool) == len(current)
