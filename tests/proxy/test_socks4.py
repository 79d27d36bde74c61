"""SOCKS4 / SOCKS4a CONNECT client handshake.

Every scenario goes through :func:`tr` (h11's ``tr()`` pattern): the server's bytes are fed
whole, one byte at a time, and followed by tunnel data in the same read.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tun2proxy.errors import FlowStateError
from tun2proxy.proxy.address import Address
from tun2proxy.proxy.base import NEED_DATA, Established, Failed, HandshakeEvent
from tun2proxy.proxy.socks4 import Socks4Handshake

TAIL = b"\x00\x5atunnel\r\n\r\n\x00\xff"

V4 = Address.from_host("192.0.2.7", 80)
DOMAIN = Address.from_host("example.com", 443)

REQ_V4 = b"\x04\x01\x00\x50\xc0\x00\x02\x07\x00"
REQ_V4_USER = b"\x04\x01\x00\x50\xc0\x00\x02\x07alice\x00"
REQ_4A = b"\x04\x01\x01\xbb\x00\x00\x00\x01\x00example.com\x00"
REQ_4A_USER = b"\x04\x01\x01\xbb\x00\x00\x00\x01alice\x00example.com\x00"

GRANTED = b"\x00\x5a\x04\x38\x7f\x00\x00\x01"  # bound 127.0.0.1:1080
BOUND = Address("127.0.0.1", 1080)

Make = Callable[[], Socks4Handshake]


def plain() -> Socks4Handshake:
    return Socks4Handshake(V4)


def socks4a() -> Socks4Handshake:
    return Socks4Handshake(DOMAIN, user_id="alice")


def drive(
    hs: Socks4Handshake, chunks: list[bytes], eof: bool = False
) -> tuple[bytes, HandshakeEvent]:
    """Feed chunks as a driver would (stop at a final event); return all sent bytes and it."""
    out = bytearray(hs.bytes_to_send())
    ev = hs.next_event()
    for c in chunks:
        if ev is not NEED_DATA:
            break
        hs.receive_data(c)
        out += hs.bytes_to_send()
        ev = hs.next_event()
    if eof and ev is NEED_DATA:
        hs.receive_data(b"")
        out += hs.bytes_to_send()
        ev = hs.next_event()
    return bytes(out), ev


def tr(make: Make, server: bytes, sent: bytes, event: HandshakeEvent, eof: bool = False) -> None:
    """Run one scenario whole, byte by byte, and with tunnel data after the reply."""
    modes = ["whole", "bytewise"] if eof else ["whole", "bytewise", "trailing"]
    for mode in modes:
        hs = make()
        data = server + TAIL if mode == "trailing" else server
        chunks = [data[i : i + 1] for i in range(len(data))] if mode == "bytewise" else [data]
        out, ev = drive(hs, chunks, eof)
        assert out == sent, mode
        expect = event
        if isinstance(event, Established) and mode == "trailing":
            expect = Established(event.trailing + TAIL, event.bound)
        assert ev == expect, mode
        assert hs.next_event() is ev
        hs.receive_data(b"")
        assert hs.next_event() is ev
        assert hs.bytes_to_send() == b""


# -- golden request bytes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dst", "user", "wire", "is_4a"),
    [
        (V4, "", REQ_V4, False),
        (V4, "alice", REQ_V4_USER, False),
        (DOMAIN, "", REQ_4A, True),
        (DOMAIN, "alice", REQ_4A_USER, True),
        (Address("bücher.example", 80),
         "", b"\x04\x01\x00\x50\x00\x00\x00\x01\x00xn--bcher-kva.example\x00", True),
        (Address("0.0.0.0", 9), "", b"\x04\x01\x00\x09\x00\x00\x00\x00\x00", False),
    ],
    ids=["ipv4", "ipv4-user", "4a", "4a-user", "4a-idna", "zero-address"],
)
def test_request_bytes(dst: Address, user: str, wire: bytes, is_4a: bool) -> None:
    hs = Socks4Handshake(dst, user_id=user)
    assert hs.bytes_to_send() == wire
    assert hs.bytes_to_send() == b""
    assert hs.socks4a is is_4a
    assert hs.next_event() is NEED_DATA


def test_ipv4_request_is_plain_socks4_even_when_domains_are_allowed() -> None:
    assert Socks4Handshake(V4, allow_domain=True).bytes_to_send() == REQ_V4


# -- construction limits -----------------------------------------------------------------------


def test_ipv6_destination_is_rejected() -> None:
    with pytest.raises(ValueError, match="IPv6"):
        Socks4Handshake(Address("2001:db8::1", 80))


def test_domain_without_allow_domain_is_rejected() -> None:
    with pytest.raises(ValueError, match="IPv4"):
        Socks4Handshake(DOMAIN, allow_domain=False)


@pytest.mark.parametrize("user", ["a\x00b", "x" * 256])
def test_bad_user_id_is_rejected(user: str) -> None:
    with pytest.raises(ValueError, match="user id"):
        Socks4Handshake(V4, user_id=user)


def test_user_id_of_255_bytes_is_accepted() -> None:
    Socks4Handshake(V4, user_id="x" * 255)


@pytest.mark.parametrize("host", ["a\x00b.example", "a" * 256])
def test_bad_host_name_is_rejected(host: str) -> None:
    with pytest.raises(ValueError, match="host name"):
        Socks4Handshake(Address(host, 80))


@pytest.mark.parametrize("ip", ["0.0.0.1", "0.0.0.255"])
def test_destination_that_looks_like_the_4a_marker_is_rejected(ip: str) -> None:
    with pytest.raises(ValueError, match="SOCKS4a"):
        Socks4Handshake(Address(ip, 80))


# -- replies -----------------------------------------------------------------------------------


def test_granted() -> None:
    tr(plain, GRANTED, REQ_V4, Established(b"", BOUND))


def test_granted_4a() -> None:
    tr(socks4a, GRANTED, REQ_4A_USER, Established(b"", BOUND))


def test_reply_version_4_is_tolerated() -> None:
    tr(plain, b"\x04" + GRANTED[1:], REQ_V4, Established(b"", BOUND))


def test_zero_bound_address() -> None:
    tr(plain, b"\x00\x5a" + bytes(6), REQ_V4, Established(b"", Address("0.0.0.0", 0)))


@pytest.mark.parametrize(
    ("cd", "reason", "meaning"),
    [
        (91, "refused", "request rejected or failed"),
        (92, "auth", "request rejected: the server cannot reach identd on the client"),
        (93, "auth", "request rejected: identd reports a different user id"),
        (0, "protocol", "unknown reply code"),
        (89, "protocol", "unknown reply code"),
        (94, "protocol", "unknown reply code"),
        (0xFF, "protocol", "unknown reply code"),
    ],
)
def test_reply_codes(cd: int, reason: str, meaning: str) -> None:
    reply = bytes((0, cd)) + bytes(6)
    tr(plain, reply, REQ_V4, Failed(reason, f"reply {cd} ({meaning}) to CONNECT 192.0.2.7:80", cd))


def test_rejection_fails_without_waiting_for_the_rest() -> None:
    hs = plain()
    hs.receive_data(b"\x00\x5b")
    assert hs.next_event() == Failed(
        "refused", "reply 91 (request rejected or failed) to CONNECT 192.0.2.7:80", 91
    )
    assert hs.reply_code == 91


@pytest.mark.parametrize("first", [b"\x05\x00", b"HTTP/1.1 200 OK\r\n\r\n", b"\x01"])
def test_wrong_reply_version_is_protocol_error(first: bytes) -> None:
    _, ev = drive(plain(), [first])
    assert isinstance(ev, Failed)
    assert ev.reason == "protocol"
    assert f"{first[0]:#04x}" in ev.message


@pytest.mark.parametrize("cut", range(len(GRANTED)))
def test_truncated_reply_then_eof(cut: int) -> None:
    tr(plain, GRANTED[:cut], REQ_V4, Failed("protocol", "server closed during handshake"),
       eof=True)


def test_large_tunnel_data_in_the_same_read_is_returned_whole() -> None:
    hs = plain()
    big = bytes(range(256)) * 4096
    hs.receive_data(GRANTED + big)
    ev = hs.next_event()
    assert isinstance(ev, Established)
    assert ev.trailing == big


def test_data_after_established_is_an_api_error() -> None:
    hs = plain()
    hs.receive_data(GRANTED)
    with pytest.raises(FlowStateError):
        hs.receive_data(b"x")


def test_data_after_failure_is_ignored() -> None:
    hs = plain()
    hs.receive_data(b"\x00\x5b")
    ev = hs.next_event()
    hs.receive_data(GRANTED)
    assert hs.next_event() is ev


# -- property tests ----------------------------------------------------------------------------


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@given(
    make=st.sampled_from([plain, socks4a]),
    prefix=st.sampled_from([b"", b"\x00", b"\x00\x5a", b"\x04\x5a\x00"]),
    data=st.binary(max_size=40),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_arbitrary_reply_bytes_never_raise(
    make: Make, prefix: bytes, data: bytes, cuts: list[int]
) -> None:
    hs = make()
    hs.bytes_to_send()
    fed = bytearray()
    ev: HandshakeEvent = NEED_DATA
    for chunk in [*_split(prefix + data, cuts), b""]:
        hs.receive_data(chunk)
        fed += chunk
        ev = hs.next_event()
        if ev is not NEED_DATA:
            break
    assert isinstance(ev, Established | Failed)
    if isinstance(ev, Established):
        assert fed.endswith(ev.trailing)
        assert len(fed) - len(ev.trailing) == 8


@given(
    vn=st.sampled_from([0, 4]),
    tail=st.binary(max_size=64),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_tunnel_data_is_never_lost_under_any_split(vn: int, tail: bytes, cuts: list[int]) -> None:
    hs = socks4a()
    chunks = _split(bytes((vn,)) + GRANTED[1:] + tail, cuts)
    ev: HandshakeEvent = NEED_DATA
    i = 0
    while ev is NEED_DATA:
        hs.receive_data(chunks[i])
        ev = hs.next_event()
        i += 1
    assert isinstance(ev, Established)
    assert ev.bound == BOUND
    assert ev.trailing + b"".join(chunks[i:]) == tail
