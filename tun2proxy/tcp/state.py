"""TCP connection states and every legal transition between them, as data (RFC 9293 §3.3.2).

Pure: no I/O. Rule, borrowed from h11's ``_state.py``: every state change of
:class:`~tun2proxy.tcp.connection.TcpConnection` goes through :func:`next_state` with one of
the event names below, so this table is the complete state machine; ``docs/tcp.md`` renders
its diagram from :data:`TRANSITIONS`. Segment acceptability, windows and timers are code in
``connection.py``, commented with RFC sections.
"""

from __future__ import annotations

import enum

__all__ = [
    "CLOSED",
    "CLOSE_WAIT",
    "CLOSING",
    "ESTABLISHED",
    "EVENTS",
    "FIN_WAIT_1",
    "FIN_WAIT_2",
    "LAST_ACK",
    "LISTEN",
    "SYN_RECEIVED",
    "SYN_SENT",
    "TIME_WAIT",
    "TRANSITIONS",
    "State",
    "next_state",
]


class State(enum.Enum):
    """The eleven RFC 9293 connection states."""

    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"


# Module-level aliases: ``state is ESTABLISHED`` is ~5x cheaper than ``State.ESTABLISHED``.
CLOSED = State.CLOSED
LISTEN = State.LISTEN
SYN_SENT = State.SYN_SENT
SYN_RECEIVED = State.SYN_RECEIVED
ESTABLISHED = State.ESTABLISHED
FIN_WAIT_1 = State.FIN_WAIT_1
FIN_WAIT_2 = State.FIN_WAIT_2
CLOSE_WAIT = State.CLOSE_WAIT
CLOSING = State.CLOSING
LAST_ACK = State.LAST_ACK
TIME_WAIT = State.TIME_WAIT

#: Event names and what they mean.
EVENTS = {
    "accept": "the host accepted a pending SYN; we send SYN-ACK",
    "connect": "active open (test peers); we send SYN",
    "rcv_syn_ack": "our SYN was answered with an acceptable SYN-ACK",
    "rcv_ack_of_syn": "the handshake's third segment acknowledged our SYN",
    "rcv_fin": "the peer's FIN arrived in order",
    "close": "the application (or upstream) closed our sending side; FIN is queued",
    "rcv_ack_of_fin": "the peer acknowledged our FIN",
    "timeout": "TIME-WAIT ended",
    "rcv_rst": "an acceptable RST arrived",
    "abort": "local abort (RST sent where synchronized), reject, or a fatal timeout",
}

_ALL = tuple(State)
_SYNCHRONIZED = (
    SYN_RECEIVED, ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT, CLOSING, LAST_ACK,
)

#: (state, event) -> next state. A pair not listed is a bug in the caller.
TRANSITIONS: dict[tuple[State, str], State] = {
    (LISTEN, "accept"): SYN_RECEIVED,
    (CLOSED, "connect"): SYN_SENT,
    (SYN_SENT, "rcv_syn_ack"): ESTABLISHED,
    (SYN_RECEIVED, "rcv_ack_of_syn"): ESTABLISHED,
    (ESTABLISHED, "rcv_fin"): CLOSE_WAIT,
    (FIN_WAIT_1, "rcv_fin"): CLOSING,
    (FIN_WAIT_2, "rcv_fin"): TIME_WAIT,
    (ESTABLISHED, "close"): FIN_WAIT_1,
    (CLOSE_WAIT, "close"): LAST_ACK,
    (FIN_WAIT_1, "rcv_ack_of_fin"): FIN_WAIT_2,
    (CLOSING, "rcv_ack_of_fin"): TIME_WAIT,
    (LAST_ACK, "rcv_ack_of_fin"): CLOSED,
    (TIME_WAIT, "timeout"): CLOSED,
    **{(s, "rcv_rst"): CLOSED for s in (*_SYNCHRONIZED, LISTEN, SYN_SENT, TIME_WAIT)},
    **{(s, "abort"): CLOSED for s in _ALL},
}


def next_state(state: State, event: str) -> State:
    """The state after ``event`` in ``state``.

    Raises:
        RuntimeError: the transition is not in :data:`TRANSITIONS` (a bug, never peer input).
    """
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise RuntimeError(f"illegal TCP transition: {event!r} in {state.value}") from None
