"""TCP connection states and every legal transition between them, as data (RFC 9293 §3.3.2).

Pure: no I/O. Rule, borrowed from h11's ``_state.py``: every state change of
:class:`~tun2proxy.tcp.connection.TcpConnection` goes through :func:`next_state` with one of
the event names below, so this table is the complete state machine; ``docs/tcp.md`` renders
its diagram from :data:`TRANSITIONS`. The event processing that picks the events (segment
acceptability, the RFC 9293 §3.10 steps) is ``connection.py``. Also here: the groups of states
the code tests against, and :data:`CloseReason`, the ways a connection can end.
"""

from __future__ import annotations

import enum
from typing import Literal, get_args

__all__ = [
    "CAN_RECEIVE_DATA",
    "CAN_SEND",
    "CLOSED",
    "CLOSE_REASONS",
    "CLOSE_WAIT",
    "CLOSING",
    "DATA_STATES",
    "ESTABLISHED",
    "EVENTS",
    "FIN_WAIT_1",
    "FIN_WAIT_2",
    "HALF_CLOSED",
    "LAST_ACK",
    "LISTEN",
    "SYNCHRONIZED",
    "SYN_RECEIVED",
    "SYN_SENT",
    "TIME_WAIT",
    "TRANSITIONS",
    "CloseReason",
    "Event",
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

#: The events that move the state machine (:data:`EVENTS` says what each means).
Event = Literal[
    "accept", "connect", "rcv_syn_ack", "rcv_ack_of_syn", "rcv_fin", "close", "rcv_ack_of_fin",
    "timeout", "rcv_rst", "abort",
]

#: Event names and what they mean.
EVENTS: dict[Event, str] = {
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
TRANSITIONS: dict[tuple[State, Event], State] = {
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


def next_state(state: State, event: Event) -> State:
    """The state after ``event`` in ``state``.

    Raises:
        RuntimeError: the transition is not in :data:`TRANSITIONS` (a bug, never peer input).
    """
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise RuntimeError(f"illegal TCP transition: {event!r} in {state.value}") from None


#: States after the SYN exchange began on our side (sequence numbers are synchronized).
SYNCHRONIZED = frozenset((*_SYNCHRONIZED, TIME_WAIT))
#: States in which text from the peer is accepted into the receive buffer.
CAN_RECEIVE_DATA = frozenset((ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2))
#: States in which the application may queue bytes to send (before our FIN).
CAN_SEND = frozenset((SYN_RECEIVED, SYN_SENT, ESTABLISHED, CLOSE_WAIT))
#: Half-closed states, bounded by the half-close timeout.
HALF_CLOSED = frozenset((FIN_WAIT_2, CLOSE_WAIT))
#: States in which segments we sent may still be in flight (a "packet too big" can apply).
DATA_STATES = frozenset((ESTABLISHED, FIN_WAIT_1, CLOSE_WAIT, CLOSING, LAST_ACK))

#: Why a connection ended (``TcpConnection.close_reason``, the stack's ``TcpClosed.reason``):
#: ``closed`` orderly; ``reset`` the peer sent an RST; ``refused`` our SYN was answered with
#: an RST; ``timeout`` retransmissions, keep-alives or a half-close ran out; ``idle`` no
#: traffic for the idle timeout; ``aborted`` by the host; ``rejected`` the host refused the
#: SYN; ``evicted`` dropped silently (SYN flood); ``unreachable`` the test tools' active
#: opener could not reach its peer.
CloseReason = Literal[
    "closed", "reset", "refused", "timeout", "idle", "aborted", "rejected", "evicted",
    "unreachable",
]
#: Every :data:`CloseReason`, for checks at run time.
CLOSE_REASONS: tuple[CloseReason, ...] = get_args(CloseReason)
