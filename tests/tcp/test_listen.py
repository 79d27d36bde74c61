"""LISTEN: the pending request made from the app's SYN, and the SYN-ACK it is accepted with.

Checklist H1, H5, O2, O3, O4, O5 (negotiation), and the RST-withdraws-request rule.
"""

from __future__ import annotations

import pytest

from tun2proxy.errors import FlowStateError
from tun2proxy.tcp import N_CLOSED, TcpConfig, TcpConnection
from tun2proxy.wire.tcp import CWR, ECE

from .helpers import ACK, ISNS, RST, SYN, Rig, State, data_of


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("local_isn", ISNS)
@pytest.mark.parametrize("remote_isn", [ISNS[0], ISNS[2], 2**32 - 10_001])
def test_synack_numbers(version: int, local_isn: int, remote_isn: int) -> None:
    r = Rig(version=version, local_isn=local_isn, remote_isn=remote_isn)
    synack = r.syn_received(mss=1460)
    assert synack.flags == SYN | ACK
    assert synack.seg.seq == local_isn & 0xFFFFFFFF  # our ISS
    assert synack.seg.ack == (remote_isn + 1) & 0xFFFFFFFF  # IRS + 1
    assert synack.mss == 1460
    assert not synack.payload


def test_synack_mss_is_mss_limit() -> None:
    r = Rig(mss_limit=8960)
    assert r.syn_received(mss=1460).mss == 8960
    r = Rig(version=6, mss_limit=1220)
    assert r.syn_received(mss=None).mss == 1220


def test_synack_without_offered_options_has_only_mss() -> None:
    r = Rig()
    synack = r.syn_received(mss=1460)
    assert synack.wscale is None
    assert not synack.sack_permitted
    assert synack.ts_val is None
    assert synack.seg.header_len == 24  # MSS only
    assert synack.window == 65535


@pytest.mark.parametrize("offer", ["wscale", "sack", "ts", "all"])
def test_synack_options_only_when_offered(offer: str) -> None:
    opts: dict[str, object] = {}
    if offer in ("wscale", "all"):
        opts["wscale"] = 7
    if offer in ("sack", "all"):
        opts["sack_permitted"] = True
    if offer in ("ts", "all"):
        opts["ts"] = (123_456, 0)
    r = Rig()
    synack = r.syn_received(mss=1460, **opts)
    cfg = r.config
    assert (synack.wscale == cfg.recv_wscale) if "wscale" in opts else synack.wscale is None
    assert synack.sack_permitted == ("sack_permitted" in opts)
    if "ts" in opts:
        assert synack.ts_ecr == 123_456  # TSecr = the SYN's TSval
        assert synack.ts_val == (int(r.now * 1000) + r.ts_offset) & 0xFFFFFFFF
    else:
        assert synack.ts_val is None


def test_synack_wscale_value_follows_buffer() -> None:
    for buf, shift in [(65535, 0), (65536, 1), (256 * 1024, 3), (1 << 20, 5), (16 << 20, 9)]:
        r = Rig(TcpConfig(recv_buffer=buf))
        assert r.syn_received(wscale=2).wscale == shift


@pytest.mark.parametrize(
    ("field", "cfg"),
    [("wscale", {"window_scale": False}), ("sack", {"sack": False}), ("ts", {"timestamps": False})],
)
def test_options_disabled_by_config_are_not_negotiated(field: str, cfg: dict[str, bool]) -> None:
    r = Rig(TcpConfig(**cfg))
    synack = r.syn_received(mss=1460, wscale=7, sack_permitted=True, ts=(5, 0))
    if field == "wscale":
        assert synack.wscale is None
    elif field == "sack":
        assert not synack.sack_permitted
    else:
        assert synack.ts_val is None
        r.send(ACK, ack=0, ts=None)
        r.conn.send(b"x" * 10)
        (o,) = r.dispatch()
        assert o.ts_val is None


def test_synack_window_is_never_scaled() -> None:
    # RFC 7323 §2.2: the window field of a SYN(-ACK) is not scaled, so it says min(room, 65535)
    # even though we announce a shift; later segments carry the scaled value.
    r = Rig(TcpConfig(recv_buffer=256 * 1024))
    synack = r.syn_received(wscale=7)
    assert synack.wscale == 3
    assert synack.window == 65535
    r.send(ACK, ack=0)
    out = r.send(ACK, b"a")
    assert out[0].window == (256 * 1024 - 1) >> 3 or out[0].window == (256 * 1024) >> 3


def test_synack_window_is_buffer_when_small() -> None:
    r = Rig(TcpConfig(recv_buffer=4096))
    assert r.syn_received(wscale=7).window == 4096


def test_no_wscale_caps_receive_window_at_64k() -> None:
    r = Rig(TcpConfig(recv_buffer=256 * 1024))
    r.establish()  # no window scale offered: never advertise more than 65535
    out = r.send(ACK, b"x" * 1000)
    assert out[0].window <= 65535
    # The peer may fill exactly 65535 bytes; the window then reads zero.
    out = []
    for _ in range(65):
        out += r.send(ACK, b"y" * 1000)
    out += r.advance(0.1)  # the delayed ACK, if one is pending
    assert out[-1].ack == 65535
    assert out[-1].window == 0
    assert r.conn.readable == 65535


def _segment_sizes(r: Rig, n: int = 20_000) -> list[int]:
    r.conn.send(b"s" * n)
    return [len(o.payload) for o in r.dispatch()]


@pytest.mark.parametrize(("version", "default"), [(4, 536), (6, 1220)])
@pytest.mark.parametrize("mss", [None, 0])
def test_peer_mss_absent_or_zero_uses_default(version: int, default: int, mss: int | None) -> None:
    r = Rig(version=version)
    r.establish(mss=mss)
    sizes = _segment_sizes(r)
    assert max(sizes) == default
    assert sizes[0] == default


@pytest.mark.parametrize("mss", [1, 10, 64, 87])
def test_tiny_peer_mss_is_clamped_to_min_mss(mss: int) -> None:
    r = Rig()
    r.establish(mss=mss)
    sizes = _segment_sizes(r, 1000)
    assert sizes[0] == r.config.min_mss == 88
    r = Rig(TcpConfig(min_mss=200))
    r.establish(mss=mss)
    assert _segment_sizes(r, 1000)[0] == 200


def test_peer_mss_above_our_limit_is_limited() -> None:
    r = Rig(mss_limit=1400)
    r.establish(mss=9000)
    assert max(_segment_sizes(r)) == 1400


def test_mss_with_timestamps_leaves_room_for_the_option() -> None:
    r = Rig()
    r.establish(mss=1000, ts=(1, 0))
    r.conn.send(b"t" * 5000)
    out = r.dispatch()
    assert max(len(o.payload) for o in out) == 1000 - 12
    for o in out:
        assert len(o.payload) + o.seg.header_len - 20 <= 1000


@pytest.mark.parametrize("shift", [14, 15, 200])
def test_wscale_above_14_is_treated_as_14(shift: int) -> None:
    r = Rig(TcpConfig(initial_window=20))
    r.establish(mss=1024, wscale=shift)
    # A window field of 1 now means 1 << 14 = 16384 bytes (not 32768 or more).
    r.send(ACK, ack=0, window=1)
    r.conn.send(b"w" * 40_000)
    out = r.dispatch()
    assert sum(len(o.payload) for o in out) == 16384


def test_syn_window_is_never_scaled_on_receipt() -> None:
    r = Rig()
    r.listen(mss=1280, wscale=7, window=100)
    assert r.conn.snd_wnd == 100  # RFC 7323 §2.2: not 100 << 7
    r.conn.accept()
    r.dispatch()
    r.send(ACK, ack=0, window=100)
    assert r.conn.snd_wnd == 100 << 7
    r.conn.send(b"q" * 20_000)
    out = r.dispatch()
    assert sum(len(o.payload) for o in out) == 12_800


def test_ecn_flags_on_syn_are_tolerated() -> None:
    # H7: ECE/CWR on the SYN (an ECN setup request) is accepted; ECN is not negotiated.
    r = Rig()
    syn = r.syn_segment()
    syn.flags |= ECE | CWR
    r.conn = TcpConnection.from_syn(syn, r.config, r.local, r.remote, r.iss, 0.0, mss_limit=1460)
    r.conn.accept()
    (synack,) = r.dispatch()
    assert synack.flags == SYN | ACK
    r.send(ACK, ack=0)
    assert r.conn.state is State.ESTABLISHED


def test_syn_payload_is_not_acknowledged() -> None:
    # H5: data on a SYN is not taken (the SYN-ACK acknowledges the SYN only); the app resends.
    r = Rig()
    synack = r.syn_received(payload=b"early")
    assert synack.ack == 0
    r.send(ACK, ack=0)
    assert r.conn.readable == 0
    r.send(ACK, b"early")
    assert r.conn.recv() == b"early"


# ---------------------------------------------------------------- the pending request


def test_listen_emits_nothing_until_accept() -> None:
    r = Rig()
    r.listen()
    assert r.dispatch() == []
    assert r.conn.state is State.LISTEN


def test_retransmitted_syn_in_listen_is_ignored() -> None:
    r = Rig()
    r.listen()
    r.conn.on_segment(r.syn_segment(), 0.5)
    assert r.dispatch() == []
    assert r.conn.state is State.LISTEN


@pytest.mark.parametrize("rel", [-1, 0])
def test_rst_in_listen_withdraws_the_request(rel: int) -> None:
    r = Rig()
    r.listen()
    out = r.send(RST, seq=rel)
    assert out == []
    assert r.conn.state is State.CLOSED
    assert r.conn.close_reason == "reset"
    assert r.conn.notify & N_CLOSED
    with pytest.raises(FlowStateError):
        r.conn.accept()


@pytest.mark.parametrize("rel", [-2, 1, 1000, 2**31])
def test_rst_in_listen_with_other_seq_is_ignored(rel: int) -> None:
    r = Rig()
    r.listen()
    assert r.send(RST, seq=rel) == []
    assert r.conn.state is State.LISTEN
    assert r.send(RST | SYN, seq=-1) == []  # RST+SYN is not a withdrawal
    assert r.conn.state is State.LISTEN


def test_ack_or_data_in_listen_is_ignored() -> None:
    r = Rig()
    r.listen()
    assert r.send(ACK, b"data", ack=0) == []
    assert r.conn.state is State.LISTEN
    assert r.conn.readable == 0


def test_api_misuse_in_listen_raises() -> None:
    r = Rig()
    r.listen()
    with pytest.raises(FlowStateError):
        r.conn.send(b"x")
    with pytest.raises(FlowStateError):
        r.conn.shutdown()
    r.conn.accept()
    with pytest.raises(FlowStateError):
        r.conn.accept()


def test_abort_in_listen_sends_nothing() -> None:
    r = Rig()
    r.listen()
    r.conn.abort("refused")
    assert r.dispatch() == []
    assert r.conn.state is State.CLOSED
    assert r.conn.close_reason == "refused"


def test_accept_then_handshake_crossing_the_wrap() -> None:
    r = Rig(local_isn=2**32 - 1, remote_isn=2**32 - 1)
    synack = r.establish(mss=1460)
    assert synack.seg.seq == 2**32 - 1 and synack.seg.ack == 0
    out = r.send(ACK, b"abc")
    assert out[0].seg.ack == 3 and out[0].seg.seq == 0
    r.conn.send(b"xyz")
    assert data_of(r.dispatch()) == b"xyz"
