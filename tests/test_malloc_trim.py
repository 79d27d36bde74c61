"""``--malloc-trim``: memory that ended flows freed goes back to the system after churn,
at most every N seconds, never when nothing ended (tun2proxy/app/memory.py)."""

from __future__ import annotations

import asyncio

import pytest

from tun2proxy.app.memory import MallocTrimmer, malloc_trim_function
from tun2proxy.options import UsageError, parse_args


async def test_trims_only_after_churn() -> None:
    loop = asyncio.get_running_loop()
    ended = [0]
    calls: list[int] = []

    def trim(pad: int) -> int:
        calls.append(pad)
        return 1

    t = MallocTrimmer(loop, 0.05, lambda: ended[0], trim)
    t.start()
    await asyncio.sleep(0.18)
    assert calls == []  # nothing ended: no trim
    ended[0] = 5
    await asyncio.sleep(0.12)
    assert calls == [0]  # one trim for the churn, however many intervals passed
    ended[0] = 9
    await asyncio.sleep(0.12)
    t.stop()
    assert calls == [0, 0] and t.trims == 2
    ended[0] = 20
    await asyncio.sleep(0.12)
    assert t.trims == 2  # stopped


def test_glibc_trim_is_found_and_runs() -> None:
    fn = malloc_trim_function()
    assert fn is not None  # the test machines run glibc
    assert fn(0) in (0, 1)


def test_the_option_takes_seconds_or_zero() -> None:
    assert parse_args([]).malloc_trim == 30.0
    assert parse_args(["--malloc-trim", "0"]).malloc_trim == 0.0
    assert parse_args(["--malloc-trim", "300"]).malloc_trim == 300.0
    for bad in ("-1", "nan", "1e400", "x", "100000"):
        with pytest.raises(UsageError):
            parse_args(["--malloc-trim", bad])
