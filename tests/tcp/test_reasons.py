"""The Literal types (close and reject reasons, state-machine events) match the values the
code checks at run time."""

from __future__ import annotations

from typing import get_args

import pytest

from tun2proxy.stack import REJECT_REASONS
from tun2proxy.stack.events import RejectReason
from tun2proxy.tcp import CLOSE_REASONS, TcpConfig
from tun2proxy.tcp.state import EVENTS, TRANSITIONS, Event

from .helpers import ACK, RST, Rig


def test_reject_reasons_literal_matches_the_runtime_tuple() -> None:
    assert get_args(RejectReason) == REJECT_REASONS


def test_event_literal_matches_the_documented_events_and_the_table() -> None:
    assert set(get_args(Event)) == set(EVENTS)
    assert {e for _s, e in TRANSITIONS} == set(EVENTS)


@pytest.mark.parametrize("how", ["orderly", "reset", "aborted", "timeout", "idle"])
def test_every_close_reason_the_connection_sets_is_listed(how: str) -> None:
    r = Rig(TcpConfig(idle_timeout=5.0, max_retries=1))
    if how == "orderly":
        r.to_state("LAST_ACK")
        r.send(ACK, ack=1)
    elif how == "reset":
        r.establish()
        r.send(RST)
    elif how == "aborted":
        r.establish()
        r.conn.abort()
    elif how == "timeout":
        r.establish()
        r.conn.send(b"x")
        r.dispatch()
        r.run_until(100.0)
    else:
        r.establish()
        r.run_until(100.0)
    reason = r.conn.close_reason
    assert reason in CLOSE_REASONS
    assert reason == {"orderly": "closed"}.get(how, how)
