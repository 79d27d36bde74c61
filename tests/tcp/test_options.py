# mypy: disable-error-code="comparison-overlap"
# (mypy keeps a narrowed attribute such as ``conn.state`` narrowed across calls that change it)
"""Options after the handshake: timestamps (RFC 7323 §3-4), PAWS (§5), window scale applied to
the peer's window, options that reduce the payload (RFC 6691). Checklist O3, O5, O6, S1.
"""

from __future__ import annotations

import pytest

from tun2proxy.tcp import TcpConfig

from .helpers import ACK, FIN, RST, SYN, Rig, State, pattern


def _ts_rig(**cfg: object) -> Rig:
    r = Rig(TcpConfig(**cfg))  # type: ignore[arg-type]
    r.establish(mss=1460, ts=(100, 0), sack_permitted=True)
    return r


def test_timestamps_on_every_non_rst_segment() -> None:
    r = _ts_rig(min_rto=1.0)
    outs = []
    outs += r.send(ACK, b"data")  # ACK
    outs += r.send(ACK, b"ooo", seq=100, advance=False)  # dup ACK with SACK
    outs += r.send(RST, seq=50, advance=False, ts=None)  # challenge ACK
    r.conn.send(pattern(5000))
    outs += r.dispatch()  # data
    r.now = 0.5
    outs += r.run_until(1.5)  # retransmission
    r.send(ACK, ack=5000)
    r.conn.shutdown()
    outs += r.dispatch()  # FIN
    kinds = {o.f for o in outs}
    assert {".", "P.", "F."} <= kinds or {".", "P.", "FP."} <= kinds
    for o in outs:
        assert o.ts_val is not None, o
    r.conn.abort()
    (rst,) = r.dispatch()
    assert rst.flags & RST and rst.ts_val is None  # RFC 7323 §3.2: not required on RST


def test_tsval_follows_clock_plus_offset() -> None:
    r = Rig(ts_offset=2**32 - 500)  # the TS clock wraps during the test
    r.establish(ts=(1, 0))
    vals = []
    for t in (0.0, 0.2, 0.499, 0.5, 1.0, 7.25):
        r.now = t
        (o,) = r.send(ACK, b"x")
        vals.append(o.ts_val)
        assert o.ts_val == (int(t * 1000) + 2**32 - 500) & 0xFFFFFFFF
    assert vals[3] == 0 and vals[4] == 500


def test_tsecr_echoes_latest_in_order_tsval() -> None:
    r = _ts_rig()
    for val in (200, 300, 300, 450):
        (o,) = r.send(ACK, b"d", ts=(val, r.ts_recent))
        assert o.ts_ecr == val


def test_ts_recent_not_updated_by_unacceptable_segment() -> None:
    r = _ts_rig()
    r.send(ACK, b"a", ts=(200, 0))
    (o,) = r.send(ACK, b"far", seq=10**6, advance=False, ts=(9_000_000, 0))
    assert o.ts_ecr == 200
    # had TS.Recent jumped, this ordinary segment would now fail PAWS
    (o,) = r.send(ACK, b"b", ts=(201, 0))
    assert r.conn.recv() == b"ab"
    assert o.ts_ecr == 201


def test_ts_recent_not_updated_by_segment_with_invalid_ack() -> None:
    r = _ts_rig()
    r.send(ACK, b"a", ts=(200, 0))
    (o,) = r.send(ACK, b"x", ack=5000, advance=False, ts=(8_000_000, 0))
    assert o.ts_ecr == 200
    r.send(ACK, b"b", ack=0, ts=(201, 0))
    assert r.conn.recv() == b"ab"


def test_ts_recent_not_updated_by_out_of_order_segment() -> None:
    # RFC 7323 §4.3: only a segment with SEG.SEQ <= Last.ACK.sent updates TS.Recent.
    r = _ts_rig()
    r.send(ACK, b"a", ts=(200, 0))
    (o,) = r.send(ACK, b"c", seq=2, advance=False, ts=(300, 0))
    assert o.ts_ecr == 200
    (o,) = r.send(ACK, b"b", seq=1, advance=False, ts=(250, 0))
    assert o.ts_ecr == 250
    assert r.conn.recv() == b"abc"


def test_paws_drops_old_segment_but_acks_it() -> None:
    r = _ts_rig()
    r.send(ACK, b"a", ts=(1000, 0))
    out = r.send(ACK, b"old", ts=(999, 0), advance=False)
    assert [(o.f, o.ack, o.ts_ecr) for o in out] == [(".", 1, 1000)]
    assert r.conn.recv() == b"a"
    # the same bytes with a current timestamp are taken
    r.send(ACK, b"old", ts=(1000, 0))
    assert r.conn.recv() == b"old"


def test_paws_applies_to_fin_and_syn_too() -> None:
    r = _ts_rig()
    r.send(ACK, b"a", ts=(1000, 0))
    out = r.send(FIN | ACK, ts=(10, 0), advance=False)
    assert [o.f for o in out] == ["."]
    assert r.conn.state is State.ESTABLISHED
    r.send(FIN | ACK, ts=(1001, 0))
    assert r.conn.state is State.CLOSE_WAIT


@pytest.mark.parametrize(("recent", "newer"), [(2**32 - 5, 3), (2**31 - 1, 2**31 + 10)])
def test_paws_across_tsval_wrap(recent: int, newer: int) -> None:
    r = Rig()
    r.establish(ts=((recent - 10) & 0xFFFFFFFF, 0))
    r.send(ACK, b"a", ts=(recent, 0))
    r.send(ACK, b"b", ts=(newer, 0))
    assert r.conn.recv() == b"ab"
    # now `recent` is old (modulo 2**32)
    out = r.send(ACK, b"c", ts=(recent, 0), advance=False)
    assert [o.ack for o in out] == [2]
    assert r.conn.readable == 0


def test_segment_without_timestamps_after_negotiation_is_accepted() -> None:
    # documented choice (docs/tcp.md): as Linux does, despite RFC 7323 §3.2's SHOULD drop
    r = _ts_rig()
    r.send(ACK, b"no-ts", ts=None)
    assert r.conn.recv() == b"no-ts"


def test_no_timestamps_if_peer_did_not_offer() -> None:
    r = Rig()
    r.establish(mss=1460)
    out = r.send(ACK, b"x")
    r.conn.send(b"y" * 3000)
    out += r.dispatch()
    assert all(o.ts_val is None for o in out)
    # a peer that starts sending timestamps later changes nothing
    (o,) = r.send(ACK, b"z", ts=(5, 0))
    assert o.ts_val is None
    assert r.conn.recv() == b"xz"


def test_peer_window_is_scaled_by_its_shift() -> None:
    r = Rig()
    r.establish(mss=1000, wscale=2)
    r.send(ACK, ack=0, window=1000)  # 4000 bytes
    r.conn.send(pattern(10_000))
    out = r.dispatch()
    assert sum(len(o.payload) for o in out) == 4000


def test_our_window_field_unscaled_without_wscale() -> None:
    r = Rig(TcpConfig(recv_buffer=50_000))
    r.establish(mss=1000)
    (o,) = r.send(ACK, b"x" * 1000)
    assert o.window == 49_000


def test_options_reduce_payload_rfc6691() -> None:
    # TS (12 bytes, budgeted in the MSS) plus SACK blocks (while we hold out-of-order data):
    # data + options never exceed the peer's MSS.
    r = Rig()
    r.establish(mss=1000, ts=(1, 0), sack_permitted=True)
    r.send(ACK, b"hole", seq=100, advance=False)
    r.send(ACK, b"hole", seq=200, advance=False)
    r.conn.send(pattern(5000))
    out = r.dispatch()
    assert out
    for o in out:
        assert o.sack  # the SACK blocks ride on the data
        assert len(o.payload) + o.seg.header_len - 20 <= 1000
    assert len(out[0].payload) == 1000 - 12 - 20  # NOP NOP SACK(2 blocks) = 20 bytes


def test_sack_permitted_alone_does_not_add_options_to_data() -> None:
    r = Rig()
    r.establish(mss=1000, sack_permitted=True)
    r.conn.send(pattern(3000))
    out = r.dispatch()
    assert [len(o.payload) for o in out] == [1000, 1000, 1000]
    assert all(o.seg.header_len == 20 for o in out)


def test_syn_in_established_with_timestamps_draws_challenge_ack_with_ts() -> None:
    r = _ts_rig()
    (o,) = r.send(SYN, seq=10, advance=False)
    assert o.flags == ACK and o.ts_val is not None
