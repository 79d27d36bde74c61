"""RFC 5961 blind-attack mitigations: RST (§3), SYN (§4), ACK (§5) and the challenge-ACK rate
limit (§7). Checklist X1, X2, X3.
"""

from __future__ import annotations

import pytest

from tun2proxy.tcp import N_CLOSED, TcpConfig

from .helpers import ACK, ISNS, RST, SYN, Rig, State

SYNC_STATES = ["ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "CLOSE_WAIT", "CLOSING", "LAST_ACK",
               "TIME_WAIT"]


def _rel_rcv_nxt(r: Rig) -> int:
    return r.conn.rcv_nxt - r.conn.irs - 1


def _rel_snd_max(r: Rig) -> int:
    return r.conn.snd_max - r.conn.iss - 1


@pytest.mark.parametrize("state", SYNC_STATES)
@pytest.mark.parametrize("flags", [RST, RST | ACK])
def test_rst_at_rcv_nxt_resets(state: str, flags: int) -> None:
    r = Rig()
    r.to_state(state)
    r.conn.notify = 0
    out = r.send(flags, seq=_rel_rcv_nxt(r), ack=r.peer_ack)
    assert out == []
    assert r.conn.state is State.CLOSED
    if state != "TIME_WAIT":
        assert r.conn.close_reason == "reset"
        assert r.conn.notify & N_CLOSED
    assert r.conn.poll_at() is None


@pytest.mark.parametrize("isn", ISNS)
@pytest.mark.parametrize("state", SYNC_STATES[:-1])
@pytest.mark.parametrize("offset", [1, 100, 60_000])
def test_rst_in_window_draws_challenge_ack(state: str, offset: int, isn: int) -> None:
    r = Rig(remote_isn=isn, local_isn=isn)
    r.to_state(state)
    nxt = _rel_rcv_nxt(r)
    out = r.send(RST, seq=nxt + offset, advance=False)
    assert [(o.flags, o.seq, o.ack) for o in out] == [(ACK, _rel_snd_max(r), nxt)]
    assert r.conn.state is State[state]
    assert r.conn.close_reason is None
    # the blind attacker now "knows" RCV.NXT only if it sees the ACK; an exact RST still works
    r.send(RST, seq=nxt)
    assert r.conn.state is State.CLOSED


@pytest.mark.parametrize("state", SYNC_STATES)
@pytest.mark.parametrize("offset", [-1, -1000, 65_535, 70_000, 2**31 - 1, 2**31, 2**31 + 5])
def test_rst_out_of_window_silently_dropped(state: str, offset: int) -> None:
    r = Rig()
    r.to_state(state)
    nxt = _rel_rcv_nxt(r)
    assert r.send(RST, seq=nxt + offset, advance=False) == []
    assert r.send(RST | ACK, seq=nxt + offset, ack=0, advance=False) == []
    assert r.conn.state is State[state]


def test_rst_with_old_timestamp_is_still_processed() -> None:
    # PAWS (RFC 7323 §5.3) does not apply to RST segments
    r = Rig()
    r.establish(ts=(1_000_000, 0))
    r.send(ACK, b"x")
    r.send(RST, seq=1, ts=(5, 0))
    assert r.conn.state is State.CLOSED
    assert r.conn.close_reason == "reset"


@pytest.mark.parametrize("state", SYNC_STATES[:-1])
@pytest.mark.parametrize("where", ["rcv_nxt", "in_window", "behind", "ahead"])
@pytest.mark.parametrize("payload", [b"", b"syn-data"])
def test_syn_in_synchronized_state_draws_challenge_ack(
    state: str, where: str, payload: bytes
) -> None:
    r = Rig()
    r.to_state(state)
    nxt = _rel_rcv_nxt(r)
    seq = {"rcv_nxt": nxt, "in_window": nxt + 500, "behind": nxt - 5000,
           "ahead": nxt + 10**6}[where]
    out = r.send(SYN, payload, seq=seq, advance=False)
    assert [(o.flags, o.seq, o.ack) for o in out] == [(ACK, _rel_snd_max(r), nxt)]
    assert r.conn.state is State[state]
    assert r.conn.readable == 0
    out = r.send(SYN | ACK, payload, seq=seq, ack=r.peer_ack, advance=False)
    assert [(o.flags, o.ack) for o in out] == [(ACK, nxt)]
    assert r.conn.state is State[state]


@pytest.mark.parametrize("rate", [1, 3, 10])
def test_challenge_acks_rate_limited(rate: int) -> None:
    r = Rig(TcpConfig(challenge_ack_rate=rate))
    r.establish()
    r.now = 10.0
    out = []
    for _ in range(3 * rate + 5):
        out += r.send(RST, seq=50, advance=False)
    assert len(out) == rate
    # the budget refills at `rate` per second
    r.now = 10.0 + 1.0 / rate + 1e-9
    out = []
    for _ in range(5):
        out += r.send(RST, seq=50, advance=False)
    assert len(out) == 1
    r.now = 100.0
    out = []
    for _ in range(3 * rate):
        out += r.send(SYN, seq=50, advance=False)
    assert len(out) == rate  # capped: idle time does not bank more than `rate`


def test_challenge_ack_budget_shared_by_rst_syn_and_bad_ack() -> None:
    r = Rig(TcpConfig(challenge_ack_rate=4))
    r.establish()
    r.now = 5.0
    out = r.send(RST, seq=10, advance=False)
    out += r.send(SYN, seq=10, advance=False)
    out += r.send(ACK, ack=1000, advance=False)  # ACK above SND.NXT
    out += r.send(RST, seq=20, advance=False)
    assert len(out) == 4
    assert r.send(RST, seq=30, advance=False) == []
    assert r.send(SYN, seq=30, advance=False) == []
    assert r.send(ACK, ack=1000, advance=False) == []
    # data ACKs are never limited
    assert [(o.f, o.ack) for o in r.send(ACK, b"data", ack=0)] == [(".", 4)]
    assert r.conn.state is State.ESTABLISHED


def test_rate_limit_is_per_connection() -> None:
    a, b = Rig(TcpConfig(challenge_ack_rate=2)), Rig(TcpConfig(challenge_ack_rate=2))
    a.establish()
    b.establish()
    for _ in range(5):
        a.send(RST, seq=9, advance=False)
    assert len(b.send(RST, seq=9, advance=False)) == 1


def test_out_of_window_syn_with_data_is_rate_limited() -> None:
    r = Rig(TcpConfig(challenge_ack_rate=10))
    r.establish()
    out = []
    for _ in range(30):
        out += r.send(SYN, b"x", seq=10**6, advance=False)
    assert len(out) == 10
