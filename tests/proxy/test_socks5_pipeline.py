"""The pipelined SOCKS5 handshake (``pipeline=True``): greeting, authentication and request in
one write, replies read in order (issue 14).
Against real servers: tests/e2e/test_socks5_pipeline.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tun2proxy.proxy.address import Address
from tun2proxy.proxy.base import NEED_DATA, Established, Failed
from tun2proxy.proxy.socks5 import UDP_ASSOCIATE, USERPASS, Socks5Handshake

from .test_socks5 import (
    AUTH_MSG,
    BOUND_V4,
    DOMAIN,
    OK_V4,
    REQ_DOMAIN,
    REQ_UDP,
    TAIL,
    drive,
)

GREETING_NOAUTH_ONLY = b"\x05\x01\x00"
GREETING_USERPASS_ONLY = b"\x05\x01\x02"


def piped(auth: tuple[str, str] | None = None) -> Socks5Handshake:
    return Socks5Handshake(DOMAIN, auth=auth, pipeline=True)


def test_everything_goes_in_the_first_write_without_auth() -> None:
    hs = piped()
    assert hs.bytes_to_send() == GREETING_NOAUTH_ONLY + REQ_DOMAIN
    assert hs.next_event() is NEED_DATA


def test_everything_goes_in_the_first_write_with_auth() -> None:
    hs = piped(("user", "secret"))
    assert hs.bytes_to_send() == GREETING_USERPASS_ONLY + AUTH_MSG + REQ_DOMAIN


def test_udp_associate_pipelined() -> None:
    hs = Socks5Handshake(Address("0.0.0.0", 0), command=UDP_ASSOCIATE, pipeline=True)
    assert hs.bytes_to_send() == GREETING_NOAUTH_ONLY + REQ_UDP


@pytest.mark.parametrize("auth", [None, ("user", "secret")], ids=["noauth", "auth"])
@pytest.mark.parametrize("mode", ["whole", "bytewise", "trailing"])
def test_replies_in_order_establish_and_nothing_more_is_sent(
    auth: tuple[str, str] | None, mode: str
) -> None:
    replies = (b"\x05\x02\x01\x00" if auth else b"\x05\x00") + OK_V4
    data = replies + TAIL if mode == "trailing" else replies
    chunks = [data[i : i + 1] for i in range(len(data))] if mode == "bytewise" else [data]
    hs = piped(auth)
    sent, ev = drive(hs, chunks)
    assert sent == hs_first(auth)  # the replies trigger no further writes
    assert ev == Established(TAIL if mode == "trailing" else b"", BOUND_V4)
    assert hs.method == (USERPASS if auth else 0)


def hs_first(auth: tuple[str, str] | None) -> bytes:
    return (GREETING_USERPASS_ONLY + AUTH_MSG if auth else GREETING_NOAUTH_ONLY) + REQ_DOMAIN


def test_server_choosing_no_auth_when_userpass_was_the_only_offer_fails() -> None:
    _, ev = drive(piped(("user", "secret")), [b"\x05\x00" + OK_V4])
    assert isinstance(ev, Failed) and ev.reason == "protocol"


def test_auth_rejected_fails_before_the_reply() -> None:
    _, ev = drive(piped(("user", "secret")), [b"\x05\x02\x01\x01"])
    assert isinstance(ev, Failed) and ev.reason == "auth"


def test_refusal_reply_fails() -> None:
    _, ev = drive(piped(), [b"\x05\x00\x05\x05\x00"])
    assert isinstance(ev, Failed) and ev.reason == "refused"


def test_eof_after_the_method_reply_fails_as_protocol() -> None:
    _, ev = drive(piped(), [b"\x05\x00"], eof=True)
    assert isinstance(ev, Failed) and ev.reason == "protocol"


def test_default_is_not_pipelined() -> None:
    hs = Socks5Handshake(DOMAIN)
    assert not hs.pipeline
    assert hs.bytes_to_send() == GREETING_NOAUTH_ONLY


@given(st.lists(st.integers(1, 8), min_size=1, max_size=30), st.booleans())
def test_any_split_of_the_replies_gives_the_same_result(cuts: list[int], auth: bool) -> None:
    creds = ("user", "secret") if auth else None
    replies = (b"\x05\x02\x01\x00" if auth else b"\x05\x00") + OK_V4
    data = replies + TAIL
    chunks, i = [], 0
    for cut in cuts:
        chunks.append(data[i : i + cut])
        i += cut
    chunks.append(data[i:])
    chunks = [c for c in chunks if c]
    sent, ev = drive(piped(creds), chunks)
    assert sent == hs_first(creds)
    end = 0  # the tunnel bytes that came in the same read as the end of the reply
    for c in chunks:
        end += len(c)
        if end >= len(replies):
            break
    assert ev == Established(data[len(replies) : end], BOUND_V4)
