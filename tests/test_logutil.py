"""RateLimitedLog: one line per key per interval, repeats summarised, memory bounded."""

from __future__ import annotations

import logging

import pytest

from tun2proxy.logutil import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "t.ratelog"]


def test_one_line_per_key_per_interval_and_a_summary(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("t.ratelog"), 10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="t.ratelog"):
        for i in range(5):
            limited.warning("a", "flow %d failed", i)
        limited.log(logging.ERROR, "b", "other kind")
        clock.now += 10.0
        limited.warning("a", "flow %d failed", 9)
    assert _lines(caplog) == [
        "flow 0 failed",
        "other kind",
        "flow 9 failed (and 4 more like it in the last 10s)",
    ]
    assert [r.levelno for r in caplog.records if r.name == "t.ratelog"] == [
        logging.WARNING, logging.ERROR, logging.WARNING,
    ]


def test_keys_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limited = RateLimitedLog(logging.getLogger("t.ratelog"), 10.0, max_keys=4, clock=clock)
    with caplog.at_level(logging.INFO, logger="t.ratelog"):
        for i in range(100):
            limited.warning(f"k{i}", "key %d", i)
            assert len(limited._last) <= 4
        # Forgotten keys log again at once: the bound costs repeats, never silence.
        limited.warning("k0", "key %d", 0)
    assert len(_lines(caplog)) == 101
