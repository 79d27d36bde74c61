"""HTTP CONNECT client handshake (RFC 9110 §9.3.6, RFC 9112 message syntax).

Every scenario goes through :func:`tr` (h11's ``tr()`` pattern): the server's bytes are fed
whole, one byte at a time, and followed by tunnel data in the same read.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tun2proxy.errors import FlowStateError
from tun2proxy.proxy.address import Address
from tun2proxy.proxy.base import NEED_DATA, Established, Failed, HandshakeEvent
from tun2proxy.proxy.http_connect import HttpConnectHandshake

TAIL = b"HTTP/1.1 200 OK\r\n\r\n\x16\x03\x01tunnel\n\n\x00\xff"

DOMAIN = Address.from_host("example.com", 443)
V4 = Address.from_host("192.0.2.7", 80)
V6 = Address.from_host("2001:db8::1", 8443)

REQ = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
OK = b"HTTP/1.1 200 Connection established\r\n\r\n"

Make = Callable[[], HttpConnectHandshake]


def plain() -> HttpConnectHandshake:
    return HttpConnectHandshake(DOMAIN)


def drive(
    hs: HttpConnectHandshake, chunks: list[bytes], eof: bool = False
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


def tr(
    make: Make, server: bytes, event: HandshakeEvent, eof: bool = False, sent: bytes = REQ
) -> list[HttpConnectHandshake]:
    """Run one scenario whole, byte by byte, and with tunnel data after the reply."""
    modes = ["whole", "bytewise"] if eof else ["whole", "bytewise", "trailing"]
    done = []
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
        done.append(hs)
    return done


# -- golden request bytes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dst", "authority"),
    [
        (DOMAIN, b"example.com:443"),
        (V4, b"192.0.2.7:80"),
        (V6, b"[2001:db8::1]:8443"),
        (Address("bücher.example", 80), b"xn--bcher-kva.example:80"),
    ],
    ids=["domain", "ipv4", "ipv6", "idna"],
)
def test_request_bytes(dst: Address, authority: bytes) -> None:
    hs = HttpConnectHandshake(dst)
    assert hs.bytes_to_send() == (
        b"CONNECT " + authority + b" HTTP/1.1\r\nHost: " + authority + b"\r\n\r\n"
    )
    assert hs.bytes_to_send() == b""
    assert hs.next_event() is NEED_DATA


def test_request_with_basic_auth() -> None:
    hs = HttpConnectHandshake(V6, auth=("user", "pass"))
    assert hs.bytes_to_send() == (
        b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\n"
        b"Host: [2001:db8::1]:8443\r\n"
        b"Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n"
    )


def test_basic_auth_credentials_are_utf8() -> None:
    hs = HttpConnectHandshake(DOMAIN, auth=("jürgen", "pä:ss"))
    token = base64.b64encode("jürgen:pä:ss".encode()).decode()
    assert f"Proxy-Authorization: Basic {token}\r\n".encode() in hs.bytes_to_send()


def test_extra_headers_are_appended_and_may_replace_defaults() -> None:
    hs = HttpConnectHandshake(
        DOMAIN,
        auth=("u", "p"),
        headers={"User-Agent": "tun2proxy", "host": "other:1", "X-Empty": ""},
    )
    assert hs.bytes_to_send() == (
        b"CONNECT example.com:443 HTTP/1.1\r\n"
        b"host: other:1\r\n"
        b"Proxy-Authorization: Basic dTpw\r\n"
        b"User-Agent: tun2proxy\r\n"
        b"X-Empty: \r\n\r\n"
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"headers": {"Bad Name": "x"}},
        {"headers": {"": "x"}},
        {"headers": {"X": "a\r\nInjected: 1"}},
        {"headers": {"X": "a\nb"}},
        {"headers": {"X": "a\x00"}},
        {"headers": {"X": "snow ☃"}},  # not latin-1
        {"auth": ("us:er", "p")},
        {"max_header_bytes": 0},
    ],
)
def test_invalid_arguments_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        HttpConnectHandshake(DOMAIN, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "host", ["evil.example\r\nX-Injected: 1", "a b", "a/b", "a@b", "a:b", "a%0d", "ü" * 70]
)
def test_host_names_that_would_corrupt_the_request_are_rejected(host: str) -> None:
    with pytest.raises(ValueError):
        HttpConnectHandshake(Address(host, 80))


# -- successful responses ----------------------------------------------------------------------


def test_200_established() -> None:
    (hs, *_) = tr(plain, OK, Established())
    assert hs.status_code == 200
    assert hs.reason_phrase == "Connection established"
    assert hs.http_version == "1.1"
    assert hs.headers == []


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.0 200 Connection established\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 200\r\n\r\n",
        b"HTTP/1.1 200 \r\n\r\n",
        b"HTTP/1.1 201 Created\r\n\r\n",
        b"HTTP/1.1 299 Whatever\r\n\r\n",
        b"HTTP/1.1 200 OK\n\n",
        b"HTTP/1.1 200 OK\r\nVia: 1.1 proxy\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",  # ignored for a 2xx to CONNECT
    ],
)
def test_any_2xx_is_established(response: bytes) -> None:
    tr(plain, response, Established())


def test_headers_are_exposed_for_logging() -> None:
    response = (
        b"HTTP/1.1 200 Connection established\r\n"
        b"Proxy-Agent: tinyproxy/1.11\r\n"
        b"Via:  1.1 a\r\n"
        b"via: 1.1 b\r\n"
        b"X-Folded: first\r\n"
        b"\t second\r\n"
        b"X-Empty:\r\n"
        b"\r\n"
    )
    for hs in tr(plain, response, Established()):
        assert hs.headers == [
            ("Proxy-Agent", "tinyproxy/1.11"),
            ("Via", "1.1 a"),
            ("via", "1.1 b"),
            ("X-Folded", "first second"),
            ("X-Empty", ""),
        ]
        assert hs.header("VIA") == "1.1 a"
        assert hs.header("missing") is None


def test_interim_1xx_responses_are_skipped() -> None:
    response = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 102 Processing\r\nX-A: 1\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nX-B: 2\r\n\r\n"
    )
    for hs in tr(plain, response, Established()):
        assert hs.status_code == 200
        assert hs.headers == [("X-B", "2")]


def test_large_tunnel_data_in_the_same_read_is_returned_whole() -> None:
    hs = HttpConnectHandshake(DOMAIN, max_header_bytes=64)
    big = b"\r\n\r\n" + bytes(range(256)) * 4096  # tunnel data, not headers: not bounded
    hs.receive_data(OK + big)
    ev = hs.next_event()
    assert isinstance(ev, Established)
    assert ev.trailing == big


def test_data_after_established_is_an_api_error() -> None:
    hs = plain()
    hs.receive_data(OK)
    with pytest.raises(FlowStateError):
        hs.receive_data(b"x")


def test_data_after_failure_is_ignored() -> None:
    hs = plain()
    hs.receive_data(b"HTTP/1.1 403 Forbidden\r\n\r\n")
    ev = hs.next_event()
    hs.receive_data(OK)
    assert hs.next_event() is ev


# -- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (b"407 Proxy Authentication Required", "auth"),
        (b"403 Forbidden", "denied"),
        (b"405 Method Not Allowed", "denied"),
        (b"502 Bad Gateway", "unreachable"),
        (b"503 Service Unavailable", "unreachable"),
        (b"504 Gateway Timeout", "unreachable"),
        (b"500 Unable to connect", "error"),
        (b"400 Bad Request", "error"),
        (b"401 Unauthorized", "auth"),
        (b"404 Not Found", "error"),
        (b"301 Moved Permanently", "error"),
        (b"101 Switching Protocols", "error"),
        (b"599", "error"),
    ],
)
def test_non_2xx_statuses(status: bytes, reason: str) -> None:
    response = b"HTTP/1.1 " + status + b"\r\nContent-Length: 5\r\n\r\nbody!"
    code = int(status[:3])
    msg = f"CONNECT example.com:443 answered {status.decode()}"
    tr(plain, response, Failed(reason, msg, code))


def test_407_exposes_proxy_authenticate() -> None:
    response = (
        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
        b'Proxy-Authenticate: Basic realm="proxy"\r\n'
        b"Connection: close\r\n\r\n"
    )
    for hs in tr(plain, response, Failed(
        "auth", "CONNECT example.com:443 answered 407 Proxy Authentication Required", 407
    )):
        assert hs.status_code == 407
        assert hs.header("proxy-authenticate") == 'Basic realm="proxy"'
        assert hs.header("connection") == "close"


def test_eof_inside_non_2xx_headers_still_reports_the_status() -> None:
    tr(plain, b"HTTP/1.1 403 Forbidden\r\nVia: x\r\n",
       Failed("denied", "CONNECT example.com:443 answered 403 Forbidden", 403), eof=True)


FULL = b"HTTP/1.1 200 OK\r\nVia: x\r\n\r\n"


@pytest.mark.parametrize("cut", range(len(FULL)))
def test_truncated_2xx_then_eof_is_protocol_error(cut: int) -> None:
    tr(plain, FULL[:cut], Failed("protocol", "server closed during handshake"), eof=True)


def test_eof_inside_an_interim_response_is_protocol_error() -> None:
    tr(plain, b"HTTP/1.1 100 Continue\r\nX: y\r\n",
       Failed("protocol", "server closed during handshake"), eof=True)


@pytest.mark.parametrize(
    "line",
    [
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 abc OK",
        b"HTTP/1.1 099 Low",
        b"HTTP/1.1 600 High",
        b"HTTP/1.1200 OK",
        b"HTTP/2 200",
        b"HTTP/2.0 200 OK",
        b"HTTP/1.1  200 OK",
        b"HTTP/1.1",
        b"HTTP/",
        b"HTTP/1.1 200 OK\rX",
    ],
)
def test_malformed_status_line_is_protocol_error(line: bytes) -> None:
    tr(plain, line + b"\r\n\r\n", Failed("protocol", f"malformed status line {line!r}"))


@pytest.mark.parametrize(
    "start", [b"\x05\x00", b"ICY 200 OK\r\n\r\n", b"\x00\x5a" + bytes(6), b"http/1.1 200 OK\r\n"]
)
def test_non_http_reply_fails_as_soon_as_it_is_clear(start: bytes) -> None:
    hs = plain()
    hs.bytes_to_send()
    hs.receive_data(start[:5] if len(start) >= 5 else start)
    ev = hs.next_event()
    assert isinstance(ev, Failed)
    assert ev.reason == "protocol"
    assert ev.message.startswith("not an HTTP response")


@pytest.mark.parametrize(
    "bad", [b"NoColonHere", b": empty-name", b"Bad Name: x", b" folded-first", b"X: a\rb"]
)
def test_malformed_header_line_is_protocol_error(bad: bytes) -> None:
    response = b"HTTP/1.1 200 OK\r\n" + bad + b"\r\n\r\n"
    _, ev = drive(plain(), [response])
    assert isinstance(ev, Failed)
    assert ev.reason == "protocol"


# -- bounded header buffer ---------------------------------------------------------------------


def _response_of_size(n: int) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nX-Pad: "
    return head + b"p" * (n - len(head) - 4) + b"\r\n\r\n"


def test_header_block_of_exactly_the_limit_is_accepted() -> None:
    response = _response_of_size(100)
    assert len(response) == 100
    tr(lambda: HttpConnectHandshake(DOMAIN, max_header_bytes=100), response, Established())


def test_header_block_one_byte_over_the_limit_is_protocol_error() -> None:
    tr(lambda: HttpConnectHandshake(DOMAIN, max_header_bytes=99), _response_of_size(100),
       Failed("protocol", "response header block exceeds 99 bytes"))


def test_endless_header_without_terminator_fails_at_the_limit() -> None:
    status = b"HTTP/1.1 200 OK\r\n"
    for data in (status + b"X: " + b"a" * 10_000, status + b"X: y\r\n" * 2000):
        hs = HttpConnectHandshake(DOMAIN, max_header_bytes=8192)
        fed = 0
        ev: HandshakeEvent = NEED_DATA
        while ev is NEED_DATA:
            hs.receive_data(data[fed : fed + 100])
            fed += 100
            ev = hs.next_event()
        assert ev == Failed("protocol", "response header block exceeds 8192 bytes")
        assert fed <= 8192 + 100


def test_default_limit_is_8_kib() -> None:
    assert plain().max_header_bytes == 8192
    tr(plain, _response_of_size(8192), Established())
    tr(plain, _response_of_size(8193),
       Failed("protocol", "response header block exceeds 8192 bytes"))


def test_interim_responses_count_towards_the_limit() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"  # 25 bytes
    ok = b"HTTP/1.1 200 OK\r\n\r\n"  # 19 bytes

    def make(limit: int) -> Make:
        return lambda: HttpConnectHandshake(DOMAIN, max_header_bytes=limit)

    tr(make(4 * 25 + 19), interim * 4 + ok, Established())
    tr(make(4 * 25 + 18), interim * 4 + ok,
       Failed("protocol", "response header block exceeds 118 bytes"))


# -- property tests ----------------------------------------------------------------------------


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


_line = st.binary(max_size=30).map(lambda b: b.replace(b"\n", b""))
_reply_bytes = st.one_of(
    st.binary(max_size=200),
    st.lists(_line, max_size=6).map(b"\r\n".join),
    st.tuples(st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.0 407 x", b"HTTP/1.1 100 C"]),
              st.lists(_line, max_size=5))
    .map(lambda t: t[0] + b"\r\n" + b"\r\n".join(t[1])),
)


@given(
    data=_reply_bytes,
    cuts=st.lists(st.integers(min_value=0), max_size=12),
    limit=st.sampled_from([16, 64, 8192]),
)
def test_arbitrary_reply_bytes_never_raise(data: bytes, cuts: list[int], limit: int) -> None:
    hs = HttpConnectHandshake(DOMAIN, max_header_bytes=limit)
    hs.bytes_to_send()
    fed = bytearray()
    ev: HandshakeEvent = NEED_DATA
    for chunk in [*_split(data, cuts), b""]:
        hs.receive_data(chunk)
        fed += chunk
        ev = hs.next_event()
        if ev is not NEED_DATA:
            break
    assert isinstance(ev, Established | Failed)
    if isinstance(ev, Established):
        assert fed.endswith(ev.trailing)
        assert len(fed) - len(ev.trailing) <= limit
        assert hs.status_code is not None and 200 <= hs.status_code < 300


@given(
    response=st.sampled_from([OK, b"HTTP/1.0 200 OK\n\n", b"HTTP/1.1 100 C\r\n\r\n" + OK,
                              b"HTTP/1.1 204 x\r\nA: b\r\n c\r\n\r\n"]),
    tail=st.binary(max_size=64),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
)
def test_tunnel_data_is_never_lost_under_any_split(
    response: bytes, tail: bytes, cuts: list[int]
) -> None:
    hs = plain()
    chunks = _split(response + tail, cuts)
    ev: HandshakeEvent = NEED_DATA
    i = 0
    while ev is NEED_DATA:
        hs.receive_data(chunks[i])
        ev = hs.next_event()
        i += 1
    assert isinstance(ev, Established)
    assert ev.trailing + b"".join(chunks[i:]) == tail
