"""Run a test coroutine on a fresh asyncio loop or a fresh uvloop loop (the two loops the
upstreams must work on)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

#: The loop kinds to parametrize over.
LOOPS = ["asyncio", "uvloop"]


def run_on(kind: str, fn: Callable[[], Awaitable[None]], timeout: float = 10.0) -> None:
    """Run ``fn()`` to completion on a new loop of ``kind``, bounded by ``timeout``."""
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(fn(), timeout))
    finally:
        loop.close()
