"""The dial queue alone (no loop): limits globally and per destination, handshake-completed
flows first, round robin across destinations, deadlines, and bounded bookkeeping."""

from __future__ import annotations

import pytest

from tun2proxy.driver.admission import DialQueue


def _drain(q: DialQueue[str]) -> list[str]:
    out = []
    while (nxt := q.pop()) is not None:
        out.append(nxt[2])
    return out


def test_dials_are_bounded_globally_and_per_destination() -> None:
    q: DialQueue[str] = DialQueue(max_active=3, max_active_per_key=2)
    for i in range(4):
        q.push(i, "dead", f"dead{i}", verified=True, deadline=10.0)
    q.push(10, "ok", "ok0", verified=True, deadline=10.0)
    q.push(11, "ok", "ok1", verified=True, deadline=10.0)
    assert _drain(q) == ["dead0", "ok0", "dead1"]  # 3 in flight, 2 per destination at most
    assert q.active == 3 and len(q) == 3
    q.done("dead")
    assert _drain(q) == ["ok1"]  # the free slot: it is "ok"'s turn
    q.done("ok")
    assert _drain(q) == ["dead2"]
    q.done("ok")
    assert _drain(q) == []  # a free slot, but "dead" has its 2 in flight
    q.done("dead")
    assert _drain(q) == ["dead3"]


def test_one_hanging_destination_does_not_hold_up_the_others() -> None:
    q: DialQueue[str] = DialQueue(max_active=256, max_active_per_key=32)
    for i in range(1000):
        q.push(i, "10.201.0.9", "dead", verified=False, deadline=10.0)
    assert len(_drain(q)) == 32  # and those 32 hang
    q.push(5000, "10.200.0.2", "healthy", verified=False, deadline=10.0)
    assert _drain(q) == ["healthy"]


def test_completed_handshakes_go_first_and_destinations_take_turns() -> None:
    q: DialQueue[str] = DialQueue(max_active=100, max_active_per_key=100)
    q.push(1, "a", "a-unverified", verified=False, deadline=10.0)
    for i in range(3):
        q.push(10 + i, "a", f"a{i}", verified=True, deadline=10.0)
    for i in range(2):
        q.push(20 + i, "b", f"b{i}", verified=True, deadline=10.0)
    assert _drain(q) == ["a0", "b0", "a1", "b1", "a2", "a-unverified"]


def test_deadlines_take_flows_out_oldest_first() -> None:
    q: DialQueue[str] = DialQueue(max_active=1, max_active_per_key=1)
    q.push(1, "a", "first", verified=True, deadline=1.0)
    q.push(2, "a", "second", verified=True, deadline=2.0)
    q.push(3, "a", "third", verified=True, deadline=3.0)
    assert _drain(q) == ["first"]
    assert q.next_deadline() == 2.0  # the one in flight is the driver's to time out
    assert q.expired(1.5) == []
    assert q.expired(2.5) == [(2, "second")]
    q.discard(3)
    assert q.next_deadline() is None and len(q) == 0
    q.done("a")
    assert _drain(q) == []


def test_unverified_flows_can_be_taken_out_and_come_back_verified() -> None:
    q: DialQueue[str] = DialQueue(max_active=1, max_active_per_key=1)
    q.push(1, "a", "busy", verified=True, deadline=10.0)
    assert _drain(q) == ["busy"]
    q.push(2, "a", "u2", verified=False, deadline=10.0)
    q.push(3, "b", "u3", verified=False, deadline=10.0)
    q.push(4, "b", "v4", verified=True, deadline=10.0)
    assert q.unverified == 2
    assert sorted(q.take_unverified()) == [2, 3]
    assert q.unverified == 0 and len(q) == 1
    q.push(2, "a", "v2", verified=True, deadline=11.0)  # its handshake completed
    q.done("a")
    assert _drain(q) == ["v4"]
    q.done("b")
    assert _drain(q) == ["v2"]


def test_flows_that_go_away_leave_no_bookkeeping_behind() -> None:
    q: DialQueue[str] = DialQueue(max_active=4, max_active_per_key=1)
    q.push(0, "dead", "hangs", verified=True, deadline=1e9)
    assert _drain(q) == ["hangs"]
    for i in range(1, 10_001):  # apps that give up while "dead" never frees its slot
        q.push(i, "dead", "x", verified=bool(i % 2), deadline=1e9)
        assert q.discard(i) == "x"
    d = q._dests["dead"]
    assert sum(len(x) for x in d.queues) <= 40  # stale ids are compacted away
    q.done("dead")
    assert q.stats() == {"queued": 0, "queued_unverified": 0, "dialling": 0, "destinations": 0}
    assert q.clear() == []


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        DialQueue(0, 1)
    q: DialQueue[str] = DialQueue(1, 1)
    q.push(1, "a", "x", verified=True, deadline=1.0)
    with pytest.raises(ValueError):
        q.push(1, "a", "x", verified=True, deadline=1.0)


def test_new_limits_apply_to_the_next_dials() -> None:
    q: DialQueue[str] = DialQueue(max_active=4, max_active_per_key=1)
    for i in range(4):
        q.push(i, "a", f"a{i}", verified=True, deadline=10.0)
    q.push(10, "b", "b0", verified=False, deadline=10.0)
    assert _drain(q) == ["a0", "b0"]  # one per destination
    q.set_limits(4, 3)  # raised: "a" takes its turn again at once
    assert _drain(q) == ["a1", "a2"]
    assert q.active == 4
    q.set_limits(2, 1)  # lowered: what is in flight keeps its slots, nothing more starts
    q.done("a")
    q.done("a")
    assert _drain(q) == []  # "a" still has 1 in flight (its limit), 2 in all (the limit)
    q.done("b")
    assert _drain(q) == []  # 1 in flight in all, but it is "a"'s, at its limit of 1
    q.done("a")
    assert _drain(q) == ["a3"]
    with pytest.raises(ValueError):
        q.set_limits(0, 1)
