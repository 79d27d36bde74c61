"""The state table is the whole state machine: every transition the connection performs (by
any code path) is in TRANSITIONS, and next_state refuses everything else.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tun2proxy.tcp import TRANSITIONS, TcpConfig, TcpConnection, next_state
from tun2proxy.tcp import connection as connection_mod
from tun2proxy.tcp.state import EVENTS, State
from tun2proxy.wire.tcp import TcpSegment

from . import helpers
from .helpers import ACK, FIN, RST, SYN, Rig

_SLOT = TcpConnection.__dict__["state"]  # the slot descriptor of the real attribute


class RecordingConnection(TcpConnection):
    """Records every assignment to ``state`` (the two made while constructing excepted)."""

    __slots__ = ()
    changes: list[tuple[State, State]] = []

    @classmethod
    def from_syn(cls, *args: object, **kw: object) -> TcpConnection:  # type: ignore[override]
        conn = super().from_syn(*args, **kw)  # type: ignore[arg-type]
        # construction, not a transition: a new connection is put in LISTEN (CLOSED -> LISTEN)
        assert cls.changes.pop() == (State.CLOSED, State.LISTEN)
        return conn

    @property
    def state(self) -> State:
        return _SLOT.__get__(self, TcpConnection)  # type: ignore[no-any-return]

    @state.setter
    def state(self, new: State) -> None:
        try:
            old: State | None = _SLOT.__get__(self, TcpConnection)
        except AttributeError:
            old = None
        _SLOT.__set__(self, new)
        if old is not None and old is not new:
            RecordingConnection.changes.append((old, new))


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> list[tuple[State, str, State]]:
    calls: list[tuple[State, str, State]] = []
    real = next_state

    def spy(state: State, event: str) -> State:
        new = real(state, event)  # type: ignore[arg-type]  # the spy sees whatever it is given
        calls.append((state, event, new))
        return new

    monkeypatch.setattr(connection_mod, "next_state", spy)
    monkeypatch.setattr(helpers, "TcpConnection", RecordingConnection)
    RecordingConnection.changes = []
    return calls


def _legal(old: State, new: State) -> bool:
    return any(s is old and t is new for (s, _e), t in TRANSITIONS.items())


def test_next_state_accepts_every_listed_pair() -> None:
    for (state, event), target in TRANSITIONS.items():
        assert next_state(state, event) is target
        assert event in EVENTS


@pytest.mark.parametrize("state", list(State))
def test_next_state_raises_on_illegal_pairs(state: State) -> None:
    for event in [*EVENTS, "bogus"]:
        if (state, event) in TRANSITIONS:
            continue
        with pytest.raises(RuntimeError, match="illegal TCP transition"):
            next_state(state, event)  # type: ignore[arg-type]  # illegal on purpose


def test_table_shape() -> None:
    sources = {s for s, _ in TRANSITIONS}
    assert sources == set(State)  # every state can be left (abort at least)
    targets = set(TRANSITIONS.values())
    assert targets == set(State) - {State.LISTEN}  # LISTEN is only entered by from_syn
    assert all(TRANSITIONS[(s, "abort")] is State.CLOSED for s in State)


def _scenarios() -> list[Callable[[], None]]:
    def states() -> None:
        for name in ("FIN_WAIT_2", "CLOSING", "TIME_WAIT", "LAST_ACK"):
            r = Rig()
            r.to_state(name)
            if name == "TIME_WAIT":
                r.run_until(100.0)
            elif name in ("LAST_ACK", "CLOSING"):
                r.send(ACK, ack=1)
                r.run_until(100.0)
            elif name == "FIN_WAIT_2":
                r.send(FIN | ACK)
            assert r.conn.state is State.CLOSED or r.conn.state is State.TIME_WAIT

    def fin_and_ack_together() -> None:
        r = Rig()
        r.to_state("FIN_WAIT_1")
        r.send(FIN | ACK, ack=1)

    def resets() -> None:
        for name in ("ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "CLOSE_WAIT", "CLOSING",
                     "LAST_ACK", "TIME_WAIT"):
            r = Rig()
            r.to_state(name)
            r.send(RST, seq=r.conn.rcv_nxt - r.conn.irs - 1)
            assert r.conn.state is State.CLOSED
        r = Rig()
        r.syn_received()
        r.send(RST, seq=0)
        r = Rig()
        r.listen()
        r.send(RST, seq=0)

    def aborts() -> None:
        for name in ("ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "CLOSE_WAIT", "CLOSING",
                     "LAST_ACK", "TIME_WAIT"):
            r = Rig()
            r.to_state(name)
            r.conn.abort()
        r = Rig()
        r.syn_received()
        r.conn.abort()
        r = Rig()
        r.listen()
        r.conn.abort()

    def timeouts() -> None:
        cfg = TcpConfig(half_close_timeout=5.0, idle_timeout=20.0, max_retries=1,
                        keepalive_idle=3.0)
        for name in ("ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "CLOSE_WAIT", "LAST_ACK",
                     "CLOSING"):
            r = Rig(cfg)
            r.to_state(name)
            r.run_until(1000.0)
            assert r.conn.state is State.CLOSED, name
        r = Rig(TcpConfig(syn_retries=0))
        r.syn_received()
        r.run_until(1000.0)
        r = Rig()
        r.listen()
        r.run_until(10_000.0)
        assert r.conn.state is State.CLOSED

    def active_open() -> None:
        local, remote = helpers.ADDRS[4]
        for outcome in ("synack", "rst", "timeout"):
            c = RecordingConnection.connect(
                TcpConfig(syn_retries=1), remote, 40000, local, 80, 1000, 0.0, mss_limit=1460,
            )
            out: list[bytearray] = []
            c.dispatch(0.0, out)
            assert len(out) == 1
            if outcome == "synack":
                c.on_segment(TcpSegment(80, 40000, 5000, 1001, SYN | ACK, 65535, mss=1460), 0.1)
                assert c.state is State.ESTABLISHED
            elif outcome == "rst":
                c.on_segment(TcpSegment(80, 40000, 0, 1001, RST | ACK, 0), 0.1)
                assert c.state is State.CLOSED
            else:
                t = 0.0
                while c.state is not State.CLOSED:
                    t = c.poll_at() or t + 1.0
                    c.on_timer(t)
                    c.dispatch(t, out)

    return [states, fin_and_ack_together, resets, aborts, timeouts, active_open]


def test_every_transition_performed_is_in_the_table(
    recorder: list[tuple[State, str, State]],
) -> None:
    for scenario in _scenarios():
        scenario()
    changes = RecordingConnection.changes
    assert changes, "the recorder saw nothing"
    for old, new in changes:
        assert _legal(old, new), f"{old.value} -> {new.value} is not in TRANSITIONS"
    # every state change went through next_state (no direct assignment elsewhere)
    via_table = [(s, t) for s, _e, t in recorder if s is not t]
    assert sorted(changes, key=str) == sorted(via_table, key=str)
    # and the scenarios exercise the whole table (self-loops aside)
    seen = set(changes)
    wanted = {(s, t) for (s, _e), t in TRANSITIONS.items() if s is not t}
    assert wanted <= seen, sorted((s.value, t.value) for s, t in wanted - seen)
    events_seen = {e for _s, e, _t in recorder}
    assert events_seen == set(EVENTS)
