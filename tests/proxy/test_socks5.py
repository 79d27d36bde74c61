"""SOCKS5 client handshake (RFC 1928/1929) and UDP ASSOCIATE datagram codec (RFC 1928 §7).

Every scenario goes through :func:`tr` (h11's ``tr()`` pattern): the server's bytes are fed
whole, one byte at a time, and followed by tunnel data in the same read.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tun2proxy.errors import FlowStateError, MalformedPacket
from tun2proxy.proxy.address import Address
from tun2proxy.proxy.base import NEED_DATA, Established, Failed, HandshakeEvent
from tun2proxy.proxy.socks5 import (
    CONNECT,
    NO_ACCEPTABLE_METHODS,
    NO_AUTH,
    UDP_ASSOCIATE,
    USERPASS,
    Socks5Handshake,
    decode_udp_datagram,
    encode_udp_datagram,
)

#: Tunnel bytes that look like protocol bytes, to catch a parser that reads too far.
TAIL = b"\x05\x00\x00\x01tunnel\r\n\r\n\x00\xff"

DOMAIN = Address.from_host("example.com", 443)
V4 = Address.from_host("192.0.2.7", 80)
V6 = Address.from_host("2001:db8::1", 8443)

GREETING = b"\x05\x01\x00"
GREETING_AUTH = b"\x05\x02\x00\x02"
AUTH_MSG = b"\x01\x04user\x06secret"
REQ_DOMAIN = b"\x05\x01\x00\x03\x0bexample.com\x01\xbb"
REQ_V4 = b"\x05\x01\x00\x01\xc0\x00\x02\x07\x00\x50"
REQ_V6 = b"\x05\x01\x00\x04" + bytes.fromhex("20010db8000000000000000000000001") + b"\x20\xfb"
REQ_UDP = b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00"

OK_V4 = b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x38"  # bound 127.0.0.1:1080
OK_V6 = b"\x05\x00\x00\x04" + bytes(15) + b"\x01\x04\x39"  # bound [::1]:1081
OK_DOMAIN = b"\x05\x00\x00\x03\x09proxy.lan\x00\x16"  # bound proxy.lan:22
BOUND_V4 = Address("127.0.0.1", 1080)

Make = Callable[[], Socks5Handshake]


def no_auth() -> Socks5Handshake:
    return Socks5Handshake(DOMAIN)


def with_auth() -> Socks5Handshake:
    return Socks5Handshake(DOMAIN, auth=("user", "secret"))


def drive(
    hs: Socks5Handshake, chunks: list[bytes], eof: bool = False
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
        # Final events are sticky; nothing more to send.
        assert hs.next_event() is ev
        hs.receive_data(b"")
        assert hs.next_event() is ev
        assert hs.bytes_to_send() == b""


# -- golden request bytes --------------------------------------------------------------------


def test_greeting_offers_no_auth_only_without_credentials() -> None:
    assert no_auth().bytes_to_send() == GREETING


def test_greeting_offers_userpass_with_credentials() -> None:
    assert with_auth().bytes_to_send() == GREETING_AUTH


def test_bytes_to_send_forgets_what_it_returned() -> None:
    hs = no_auth()
    assert hs.bytes_to_send() == GREETING
    assert hs.bytes_to_send() == b""


@pytest.mark.parametrize(
    ("dst", "wire"),
    [(DOMAIN, REQ_DOMAIN), (V4, REQ_V4), (V6, REQ_V6)],
    ids=["domain", "ipv4", "ipv6"],
)
def test_connect_request_bytes(dst: Address, wire: bytes) -> None:
    hs = Socks5Handshake(dst)
    hs.bytes_to_send()
    hs.receive_data(b"\x05\x00")
    assert hs.bytes_to_send() == wire


def test_udp_associate_request_bytes() -> None:
    hs = Socks5Handshake(Address("0.0.0.0", 0), command=UDP_ASSOCIATE)
    hs.bytes_to_send()
    hs.receive_data(b"\x05\x00")
    assert hs.bytes_to_send() == REQ_UDP


def test_unicode_domain_is_sent_as_idna() -> None:
    hs = Socks5Handshake(Address("bücher.example", 80))
    hs.bytes_to_send()
    hs.receive_data(b"\x05\x00")
    assert hs.bytes_to_send() == b"\x05\x01\x00\x03\x15xn--bcher-kva.example\x00\x50"


def test_no_pipelining_each_message_waits_for_the_previous_reply() -> None:
    hs = with_auth()
    assert hs.bytes_to_send() == GREETING_AUTH
    hs.receive_data(b"\x05")
    assert hs.bytes_to_send() == b""
    hs.receive_data(b"\x02")
    assert hs.bytes_to_send() == AUTH_MSG  # the auth message, not yet the request
    hs.receive_data(b"\x01")
    assert hs.bytes_to_send() == b""
    hs.receive_data(b"\x00")
    assert hs.bytes_to_send() == REQ_DOMAIN
    assert hs.next_event() is NEED_DATA
    assert hs.method == USERPASS
    assert hs.reply_code is None


def test_auth_message_bytes_with_utf8_credentials() -> None:
    hs = Socks5Handshake(DOMAIN, auth=("jürgen", "pä"))
    hs.bytes_to_send()
    hs.receive_data(b"\x05\x02")
    assert hs.bytes_to_send() == b"\x01\x07j\xc3\xbcrgen\x03p\xc3\xa4"


def test_empty_credentials_are_sent_as_zero_lengths() -> None:
    hs = Socks5Handshake(DOMAIN, auth=("", ""))
    hs.bytes_to_send()
    hs.receive_data(b"\x05\x02")
    assert hs.bytes_to_send() == b"\x01\x00\x00"


# -- construction limits -----------------------------------------------------------------------


def test_domain_of_255_bytes_is_accepted_256_rejected() -> None:
    name = ".".join(["a" * 63] * 4)[:255]
    Socks5Handshake(Address(name, 1))
    with pytest.raises(ValueError, match="255"):
        Socks5Handshake(Address(name + "b", 1))


@pytest.mark.parametrize("which", [0, 1])
def test_credentials_longer_than_255_bytes_are_rejected(which: int) -> None:
    creds = ["u", "p"]
    creds[which] = "x" * 255
    Socks5Handshake(DOMAIN, auth=(creds[0], creds[1]))
    creds[which] = "é" * 128  # 256 bytes in UTF-8
    with pytest.raises(ValueError, match="255"):
        Socks5Handshake(DOMAIN, auth=(creds[0], creds[1]))


@pytest.mark.parametrize("command", [0, 2, 4])
def test_unsupported_command_is_rejected(command: int) -> None:
    with pytest.raises(ValueError, match="command"):
        Socks5Handshake(DOMAIN, command=command)


def test_unencodable_domain_is_rejected() -> None:
    with pytest.raises(ValueError):
        Socks5Handshake(Address("ü" * 70 + ".example", 80))


# -- successful replies ------------------------------------------------------------------------


def test_no_auth_connect_established_with_ipv4_bound() -> None:
    tr(no_auth, b"\x05\x00" + OK_V4, GREETING + REQ_DOMAIN, Established(b"", BOUND_V4))


def test_auth_connect_established_with_ipv6_bound() -> None:
    tr(
        with_auth,
        b"\x05\x02\x01\x00" + OK_V6,
        GREETING_AUTH + AUTH_MSG + REQ_DOMAIN,
        Established(b"", Address("::1", 1081)),
    )


def test_domain_bound_address() -> None:
    tr(
        no_auth, b"\x05\x00" + OK_DOMAIN, GREETING + REQ_DOMAIN,
        Established(b"", Address("proxy.lan", 22)),
    )


def test_server_may_choose_no_auth_when_credentials_are_offered() -> None:
    tr(with_auth, b"\x05\x00" + OK_V4, GREETING_AUTH + REQ_DOMAIN, Established(b"", BOUND_V4))


def test_auth_status_with_version_5_is_tolerated() -> None:
    tr(
        with_auth, b"\x05\x02\x05\x00" + OK_V4, GREETING_AUTH + AUTH_MSG + REQ_DOMAIN,
        Established(b"", BOUND_V4),
    )


def test_nonzero_rsv_in_reply_is_tolerated() -> None:
    reply = b"\x05\x00\x07" + OK_V4[3:]
    tr(no_auth, b"\x05\x00" + reply, GREETING + REQ_DOMAIN, Established(b"", BOUND_V4))


def test_empty_bound_domain_gives_no_bound_address() -> None:
    tr(no_auth, b"\x05\x00\x05\x00\x00\x03\x00\x00\x00", GREETING + REQ_DOMAIN, Established())


def test_non_utf8_bound_domain_gives_no_bound_address() -> None:
    reply = b"\x05\x00\x05\x00\x00\x03\x02\xff\xfe\x00\x01"
    tr(no_auth, reply, GREETING + REQ_DOMAIN, Established())


def test_longest_possible_reply_then_tunnel_data() -> None:
    name = b"n" * 255
    reply = b"\x05\x00\x00\x03\xff" + name + b"\x00\x01"
    tr(no_auth, b"\x05\x00" + reply, GREETING + REQ_DOMAIN,
       Established(b"", Address(name.decode(), 1)))


def test_udp_associate_established_with_relay_address() -> None:
    def make() -> Socks5Handshake:
        return Socks5Handshake(Address("0.0.0.0", 0), command=UDP_ASSOCIATE)

    reply = b"\x05\x00\x00\x01\x00\x00\x00\x00\x9c\x40"  # relay 0.0.0.0:40000
    tr(make, b"\x05\x00" + reply, GREETING + REQ_UDP, Established(b"", Address("0.0.0.0", 40000)))


def test_large_tunnel_data_in_the_same_read_is_returned_whole() -> None:
    hs = no_auth()
    hs.bytes_to_send()
    big = bytes(range(256)) * 4096
    hs.receive_data(b"\x05\x00" + OK_V4 + big)
    ev = hs.next_event()
    assert isinstance(ev, Established)
    assert ev.trailing == big


def test_data_after_established_is_an_api_error() -> None:
    hs = no_auth()
    hs.receive_data(b"\x05\x00" + OK_V4)
    assert isinstance(hs.next_event(), Established)
    with pytest.raises(FlowStateError):
        hs.receive_data(b"more")
    hs.receive_data(b"")  # EOF after the handshake is not the handshake's business
    assert isinstance(hs.next_event(), Established)


def test_data_after_failure_is_ignored() -> None:
    hs = no_auth()
    hs.receive_data(b"\x05\xff")
    ev = hs.next_event()
    hs.receive_data(b"\x05\x00" + OK_V4)
    assert hs.next_event() is ev


# -- failures ----------------------------------------------------------------------------------


def test_no_acceptable_method_without_credentials_is_auth_failure() -> None:
    tr(no_auth, b"\x05\xff", GREETING,
       Failed("auth", "server requires authentication and no credentials were given", 0xFF))


def test_no_acceptable_method_with_credentials_is_auth_failure() -> None:
    tr(with_auth, b"\x05\xff", GREETING_AUTH,
       Failed("auth", "server accepted no offered authentication method", 0xFF))
    assert NO_ACCEPTABLE_METHODS == 0xFF


@pytest.mark.parametrize("method", [USERPASS, 0x01, 0x03, 0x80])
def test_method_not_offered_is_protocol_error(method: int) -> None:
    hs = no_auth()
    out, ev = drive(hs, [bytes((5, method))])
    assert out == GREETING
    assert isinstance(ev, Failed)
    assert ev.reason == "protocol"
    assert f"{method:#04x}" in ev.message
    assert hs.method == method


def test_gssapi_not_offered_even_with_credentials() -> None:
    tr(with_auth, b"\x05\x01", GREETING_AUTH,
       Failed("protocol", "server selected method 0x01, not offered"))


@pytest.mark.parametrize("first", [b"\x04\x00", b"HTTP/1.1 400 Bad Request\r\n\r\n", b"\x00"])
def test_wrong_version_in_method_selection_is_protocol_error(first: bytes) -> None:
    hs = no_auth()
    _, ev = drive(hs, [first])
    assert isinstance(ev, Failed)
    assert ev.reason == "protocol"
    assert "not a SOCKS5 server" in ev.message


@pytest.mark.parametrize("status", [1, 2, 0x7F, 0xFF])
def test_auth_rejected(status: int) -> None:
    tr(with_auth, b"\x05\x02\x01" + bytes((status,)), GREETING_AUTH + AUTH_MSG,
       Failed("auth", f"username/password rejected (status {status:#04x})", status))


def test_auth_reply_with_bad_version_is_protocol_error() -> None:
    tr(with_auth, b"\x05\x02\x02\x00", GREETING_AUTH + AUTH_MSG,
       Failed("protocol", "bad username/password reply version 0x02"))


def test_reply_with_bad_version_is_protocol_error() -> None:
    tr(no_auth, b"\x05\x00\x04\x00\x00\x01" + bytes(6), GREETING + REQ_DOMAIN,
       Failed("protocol", "bad reply version 0x04"))


REP_TABLE = [
    (1, "error", "general SOCKS server failure"),
    (2, "denied", "connection not allowed by ruleset"),
    (3, "unreachable", "network unreachable"),
    (4, "unreachable", "host unreachable"),
    (5, "refused", "connection refused"),
    (6, "unreachable", "TTL expired"),
    (7, "unsupported", "command not supported"),
    (8, "unsupported", "address type not supported"),
    (9, "error", "unknown reply code"),
    (0x80, "error", "unknown reply code"),
    (0xFF, "error", "unknown reply code"),
]


@pytest.mark.parametrize(("rep", "reason", "meaning"), REP_TABLE)
def test_reply_codes_map_to_reasons(rep: int, reason: str, meaning: str) -> None:
    reply = bytes((5, rep, 0, 1)) + bytes(6)
    msg = f"reply {rep:#04x} ({meaning}) to CONNECT example.com:443"
    tr(no_auth, b"\x05\x00" + reply, GREETING + REQ_DOMAIN, Failed(reason, msg, rep))


def test_failure_reply_names_udp_associate() -> None:
    hs = Socks5Handshake(Address("0.0.0.0", 0), command=UDP_ASSOCIATE)
    _, ev = drive(hs, [b"\x05\x00\x05\x07\x00\x01" + bytes(6)])
    assert ev == Failed("unsupported", "reply 0x07 (command not supported) to UDP ASSOCIATE "
                        "0.0.0.0:0", 7)
    assert hs.reply_code == 7


def test_failure_reply_fails_without_waiting_for_the_address() -> None:
    hs = no_auth()
    hs.receive_data(b"\x05\x00\x05\x05")
    ev = hs.next_event()
    assert isinstance(ev, Failed)
    assert ev.reason == "refused"


@pytest.mark.parametrize("atyp", [0, 2, 5, 0xFF])
def test_unknown_atyp_is_protocol_error(atyp: int) -> None:
    reply = bytes((5, 0, 0, atyp)) + bytes(6)
    tr(no_auth, b"\x05\x00" + reply, GREETING + REQ_DOMAIN,
       Failed("protocol", f"reply has unknown address type {atyp:#04x}"))


FULL_AUTH_TRANSCRIPT = b"\x05\x02\x01\x00" + OK_DOMAIN


@pytest.mark.parametrize("cut", range(len(FULL_AUTH_TRANSCRIPT)))
def test_truncated_reply_then_eof_is_protocol_error(cut: int) -> None:
    tr(
        with_auth,
        FULL_AUTH_TRANSCRIPT[:cut],
        GREETING_AUTH + (AUTH_MSG if cut >= 2 else b"") + (REQ_DOMAIN if cut >= 4 else b""),
        Failed("protocol", "server closed during handshake"),
        eof=True,
    )


def test_bytes_due_before_a_failure_are_still_reported() -> None:
    hs = no_auth()
    hs.bytes_to_send()
    hs.receive_data(b"\x05\x00\x05\x01")  # request due, then a failure in the same read
    assert isinstance(hs.next_event(), Failed)
    assert hs.bytes_to_send() == REQ_DOMAIN  # deterministic whatever the split
    assert hs.bytes_to_send() == b""


# -- property tests ----------------------------------------------------------------------------


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


MAKERS: list[Make] = [
    no_auth,
    with_auth,
    lambda: Socks5Handshake(V6, command=UDP_ASSOCIATE),
]


@given(
    maker=st.sampled_from(MAKERS),
    data=st.binary(max_size=300),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
    prefix=st.sampled_from([b"", b"\x05", b"\x05\x00", b"\x05\x02", b"\x05\x02\x01\x00",
                            b"\x05\x00\x05\x00\x00", b"\x05\x02\x01\x00\x05\x00\x00\x03"]),
)
def test_arbitrary_reply_bytes_never_raise(
    maker: Make, data: bytes, cuts: list[int], prefix: bytes
) -> None:
    hs = maker()
    hs.bytes_to_send()
    fed = bytearray()
    ev: HandshakeEvent = NEED_DATA
    for chunk in [*_split(prefix + data, cuts), b""]:
        hs.receive_data(chunk)
        fed += chunk
        hs.bytes_to_send()
        ev = hs.next_event()
        if ev is not NEED_DATA:
            break
    assert isinstance(ev, Established | Failed)  # EOF at the latest ends the handshake
    if isinstance(ev, Established):
        assert fed.endswith(ev.trailing)  # tunnel data is a suffix of what was fed
    else:
        assert ev.reason in {"auth", "protocol", "denied", "unreachable", "refused",
                             "unsupported", "error"}


@given(
    auth=st.booleans(),
    reply=st.sampled_from([OK_V4, OK_V6, OK_DOMAIN]),
    tail=st.binary(max_size=64),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
)
def test_tunnel_data_is_never_lost_under_any_split(
    auth: bool, reply: bytes, tail: bytes, cuts: list[int]
) -> None:
    hs = with_auth() if auth else no_auth()
    data = (b"\x05\x02\x01\x00" if auth else b"\x05\x00") + reply + tail
    chunks = _split(data, cuts)
    hs.bytes_to_send()
    ev: HandshakeEvent = NEED_DATA
    i = 0
    while ev is NEED_DATA:
        hs.receive_data(chunks[i])
        hs.bytes_to_send()
        ev = hs.next_event()
        i += 1
    assert isinstance(ev, Established)
    assert ev.trailing + b"".join(chunks[i:]) == tail


# -- UDP ASSOCIATE datagram codec ------------------------------------------------------------


@pytest.mark.parametrize(
    ("dst", "header"),
    [
        (V4, b"\x00\x00\x00\x01\xc0\x00\x02\x07\x00\x50"),
        (V6, b"\x00\x00\x00\x04" + bytes.fromhex("20010db8000000000000000000000001") + b"\x20\xfb"),
        (DOMAIN, b"\x00\x00\x00\x03\x0bexample.com\x01\xbb"),
    ],
    ids=["ipv4", "ipv6", "domain"],
)
def test_udp_datagram_golden_bytes(dst: Address, header: bytes) -> None:
    assert encode_udp_datagram(dst, b"payload") == header + b"payload"
    addr, payload = decode_udp_datagram(header + b"payload")
    assert addr == dst
    assert bytes(payload) == b"payload"


def test_udp_datagram_empty_payload_and_buffer_types() -> None:
    raw = encode_udp_datagram(V4, b"")
    for buf in (raw, bytearray(raw), memoryview(raw)):
        addr, payload = decode_udp_datagram(buf)
        assert addr == V4
        assert len(payload) == 0


def test_udp_encode_rejects_overlong_domain() -> None:
    with pytest.raises(ValueError, match="255"):
        encode_udp_datagram(Address("a" * 256, 53), b"x")


_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
_domain = st.lists(_label, min_size=1, max_size=5).map(".".join).filter(
    lambda s: not s.replace(".", "").isdigit()
)
_host = st.one_of(st.ip_addresses().map(str), _domain)


@given(host=_host, port=st.integers(0, 65535), payload=st.binary(max_size=200))
def test_udp_datagram_round_trip(host: str, port: int, payload: bytes) -> None:
    dst = Address.from_host(host, port)
    addr, data = decode_udp_datagram(encode_udp_datagram(dst, payload))
    assert addr == dst
    assert bytes(data) == payload


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "socks5-udp-truncated"),
        (b"\x00\x00\x00", "socks5-udp-truncated"),
        (b"\x00\x01\x00\x01" + bytes(6), "socks5-udp-rsv"),
        (b"\x01\x00\x00\x01" + bytes(6), "socks5-udp-rsv"),
        (b"\x00\x00\x01\x01" + bytes(6), "socks5-udp-fragmented"),
        (b"\x00\x00\x80\x01" + bytes(6), "socks5-udp-fragmented"),
        (b"\x00\x00\x00\x02" + bytes(6), "socks5-udp-atyp"),
        (b"\x00\x00\x00\x00" + bytes(6), "socks5-udp-atyp"),
        (b"\x00\x00\x00\x01" + bytes(5), "socks5-udp-truncated"),
        (b"\x00\x00\x00\x04" + bytes(17), "socks5-udp-truncated"),
        (b"\x00\x00\x00\x03", "socks5-udp-truncated"),
        (b"\x00\x00\x00\x03\x05abcde\x00", "socks5-udp-truncated"),
        (b"\x00\x00\x00\x03\x00\x00\x35", "socks5-udp-domain"),
        (b"\x00\x00\x00\x03\x02\xff\xfe\x00\x35", "socks5-udp-domain"),
    ],
)
def test_udp_datagram_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket) as info:
        decode_udp_datagram(data)
    assert info.value.reason == reason


@pytest.mark.parametrize("dst", [V4, V6, DOMAIN], ids=["ipv4", "ipv6", "domain"])
def test_udp_datagram_every_truncated_header_is_malformed(dst: Address) -> None:
    raw = encode_udp_datagram(dst, b"")
    for cut in range(len(raw)):
        with pytest.raises(MalformedPacket) as info:
            decode_udp_datagram(raw[:cut])
        assert info.value.reason == "socks5-udp-truncated"


@given(st.binary(max_size=64))
def test_udp_decode_raises_only_malformed_packet(data: bytes) -> None:
    reason = ""
    try:
        addr, payload = decode_udp_datagram(data)
    except MalformedPacket as e:
        reason = e.reason
    if reason:
        assert reason.startswith("socks5-udp-")
    else:
        assert isinstance(addr, Address)
        assert len(payload) <= len(data)


def test_constants() -> None:
    assert (CONNECT, UDP_ASSOCIATE, NO_AUTH, USERPASS) == (1, 3, 0, 2)
