"""RFC 6298 retransmission-timeout arithmetic (RttEstimator)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tun2proxy.tcp import RttEstimator

G = 0.001  # clock granularity used by the estimator


def est(initial: float = 1.0, lo: float = 0.2, hi: float = 60.0) -> RttEstimator:
    return RttEstimator(initial, lo, hi)


def test_initial_rto() -> None:
    e = est()
    assert e.srtt is None and e.rttvar == 0.0
    assert e.rto == 1.0
    # the initial value is clamped into [min_rto, max_rto]
    assert RttEstimator(0.05, 0.2, 60.0).rto == 0.2
    assert RttEstimator(100.0, 0.2, 60.0).rto == 60.0


def test_first_sample_rfc6298_2_2() -> None:
    e = est(lo=0.001)
    e.sample(0.4)
    assert e.srtt == pytest.approx(0.4)
    assert e.rttvar == pytest.approx(0.2)
    assert e.rto == pytest.approx(0.4 + 4 * 0.2)


def test_subsequent_samples_rfc6298_2_3() -> None:
    e = est(lo=0.001)
    e.sample(0.4)
    e.sample(0.2)
    # RTTVAR uses the old SRTT: (1 - 1/4) * 0.2 + 1/4 * |0.4 - 0.2|
    rttvar = 0.75 * 0.2 + 0.25 * 0.2
    srtt = 0.875 * 0.4 + 0.125 * 0.2
    assert e.rttvar == pytest.approx(rttvar)
    assert e.srtt == pytest.approx(srtt)
    assert e.rto == pytest.approx(srtt + 4 * rttvar)


def test_granularity_floor_in_k_rttvar() -> None:
    e = est(lo=0.0001)
    for _ in range(200):
        e.sample(0.05)
    assert e.rttvar < G / 4
    assert e.srtt is not None
    assert e.rto == pytest.approx(e.srtt + G)


def test_min_and_max_rto() -> None:
    e = est(lo=0.2, hi=3.0)
    e.sample(0.01)
    assert e.rto == 0.2  # (2.4) floor
    e = est(lo=0.2, hi=3.0)
    e.sample(5.0)
    assert e.rto == 3.0  # (2.5) ceiling


def test_backoff_doubles_and_is_capped() -> None:
    e = est(hi=10.0)
    rtos = []
    for _ in range(6):
        e.backoff()
        rtos.append(e.rto)
    assert rtos == [2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_backoff_ends_on_new_ack_and_on_sample() -> None:
    e = est()
    e.backoff()
    e.backoff()
    assert e.rto == 4.0
    e.reset_backoff()
    assert e.rto == 1.0
    e.backoff()
    e.sample(0.1)
    assert e.backoffs == 0
    assert e.rto == pytest.approx(max(0.2, 0.1 + 4 * 0.05))


def test_estimates_cleared_after_three_backoffs_rfc6298_5_7() -> None:
    e = est(lo=0.01)
    e.sample(0.3)
    e.backoff()
    e.backoff()
    assert e.srtt is not None
    e.backoff()
    assert e.srtt is None
    # the next sample starts afresh (2.2)
    e.sample(0.1)
    assert e.srtt == pytest.approx(0.1) and e.rttvar == pytest.approx(0.05)


def test_negative_sample_ignored() -> None:
    e = est()
    e.sample(-1.0)
    assert e.srtt is None and e.rto == 1.0


def test_huge_backoff_count_does_not_overflow() -> None:
    e = est(hi=60.0)
    for _ in range(1000):
        e.backoff()
    assert e.rto == 60.0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 30.0), min_size=1, max_size=50))
def test_property_rto_within_bounds_and_matches_formula(samples: list[float]) -> None:
    e = est(lo=0.2, hi=60.0)
    srtt: float | None = None
    var = 0.0
    for s in samples:
        e.sample(s)
        if srtt is None:
            srtt, var = s, s / 2
        else:
            var = 0.75 * var + 0.25 * abs(srtt - s)
            srtt = 0.875 * srtt + 0.125 * s
        assert 0.2 <= e.rto <= 60.0
        assert e.rto == pytest.approx(min(max(srtt + max(G, 4 * var), 0.2), 60.0))
