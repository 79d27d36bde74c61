"""The udpgw codec against byte sequences worked out by hand from badvpn's headers.

References (ambrop72/badvpn): protocol/packetproto.h — "a 16-bit little-endian unsigned
integer representing the length of the payload"; protocol/udpgw_proto.h — struct udpgw_header
{uint8_t flags; uint16_t conid;} packed, then struct udpgw_addr_ipv4 {uint32_t addr_ip;
uint16_t addr_port;} or udpgw_addr_ipv6 {uint8_t addr_ip[16]; uint16_t addr_port;};
udpgw/udpgw.c writes ``header.conid = htol16(con->conid)`` (little-endian) and copies the
address and port from BAddr unchanged (network order, as in sockaddr).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tun2proxy.proxy.udpgw import (
    FLAG_DNS,
    FLAG_IPV6,
    FLAG_KEEPALIVE,
    FLAG_REBIND,
    UdpgwDecoder,
    UdpgwMessage,
    UdpgwProtocolError,
    encode_keepalive,
    encode_message,
    max_payload,
)

# IPv4: flags 0, conid 258 (0x0102), to 10.200.0.2:9999, payload "hi".
V4_HI = bytes.fromhex(
    "0b00"  # PacketProto length 11 = 3 header + 4 addr + 2 port + 2 payload, little-endian
    "00"  # flags: none
    "0201"  # conid 0x0102, little-endian (htol16): low byte 0x02 first
    "0ac80002"  # 10.200.0.2, network order
    "270f"  # port 9999 = 0x270f, network order
    "6869"  # "hi"
)

# IPv6: flags IPV6|REBIND (0x0a), conid 5, to [fd20::2]:53, payload "x".
V6_X = bytes.fromhex(
    "1600"  # length 22 = 3 + 16 + 2 + 1, little-endian
    "0a"  # flags: IPV6 (1<<3) | REBIND (1<<1)
    "0500"  # conid 5, little-endian
    "fd200000000000000000000000000002"  # fd20::2
    "0035"  # port 53, network order
    "78"  # "x"
)

# A 300-byte payload: the length 309 = 0x0135 has two non-zero bytes, so its order shows.
LEN_309_PREFIX = bytes.fromhex("3501")  # 0x0135 little-endian

# Keepalive: flags KEEPALIVE, conid 0, an all-zero IPv4 address for older servers.
KEEPALIVE = bytes.fromhex("0900" "01" "0000" "00000000" "0000")


def test_flag_values_match_the_header() -> None:
    # #define UDPGW_CLIENT_FLAG_KEEPALIVE (1 << 0) ... UDPGW_CLIENT_FLAG_IPV6 (1 << 3)
    assert (FLAG_KEEPALIVE, FLAG_REBIND, FLAG_DNS, FLAG_IPV6) == (1, 2, 4, 8)


def test_encode_ipv4_by_hand() -> None:
    assert encode_message(0, 258, bytes([10, 200, 0, 2]), 9999, b"hi") == V4_HI


def test_encode_ipv6_by_hand() -> None:
    addr = bytes.fromhex("fd200000000000000000000000000002")
    assert encode_message(FLAG_REBIND, 5, addr, 53, b"x") == V6_X


def test_length_is_little_endian() -> None:
    m = encode_message(0, 1, bytes(4), 1, bytes(300))
    assert m[:2] == LEN_309_PREFIX
    assert len(m) == 2 + 309


def test_keepalive_by_hand() -> None:
    assert encode_keepalive() == KEEPALIVE


def test_decode_by_hand() -> None:
    d = UdpgwDecoder()
    d.feed(V4_HI + V6_X + KEEPALIVE)
    msgs = d.messages()
    assert msgs[0] == UdpgwMessage(0, 258, bytes([10, 200, 0, 2]), 9999, b"hi")
    assert msgs[1].flags == FLAG_IPV6 | FLAG_REBIND
    assert (msgs[1].conid, msgs[1].port, msgs[1].payload) == (5, 53, b"x")
    assert msgs[1].addr == bytes.fromhex("fd200000000000000000000000000002")
    assert msgs[2].keepalive and msgs[2].conid == 0
    assert d.buffered == 0


def test_decode_a_three_byte_keepalive() -> None:
    # newer clients send only struct udpgw_header (3 bytes) as keepalive
    d = UdpgwDecoder()
    d.feed(bytes.fromhex("0300" "01" "0700"))
    m = d.next_message()
    assert m is not None and m.keepalive and m.conid == 7


def test_decode_in_every_split() -> None:
    stream = V4_HI + V6_X
    for cut in range(len(stream) + 1):
        d = UdpgwDecoder()
        d.feed(stream[:cut])
        got = d.messages()
        d.feed(stream[cut:])
        got += d.messages()
        assert [m.payload for m in got] == [b"hi", b"x"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (bytes.fromhex("0200" "0000"), "udpgw-short-header"),
        (bytes.fromhex("0000"), "udpgw-short-header"),
        (bytes.fromhex("0500" "00" "0100" "0a00"), "udpgw-short-address"),
        (bytes.fromhex("0900" "08" "0100" "000000000000"), "udpgw-short-address"),  # IPV6 flag
    ],
)
def test_malformed_is_a_protocol_error_and_consumed(raw: bytes, reason: str) -> None:
    d = UdpgwDecoder()
    d.feed(raw + V4_HI)
    with pytest.raises(UdpgwProtocolError) as e:
        d.next_message()
    assert e.value.reason == reason
    m = d.next_message()  # the framing stays in step
    assert m is not None and m.payload == b"hi"


def test_encode_refuses_what_cannot_be_framed() -> None:
    with pytest.raises(ValueError):
        encode_message(0, 1, bytes(5), 1, b"")
    with pytest.raises(ValueError):
        encode_message(0, 70000, bytes(4), 1, b"")
    assert len(encode_message(0, 1, bytes(4), 1, bytes(max_payload(False)))) == 65537
    with pytest.raises(ValueError):
        encode_message(0, 1, bytes(4), 1, bytes(max_payload(False) + 1))
    with pytest.raises(ValueError):
        encode_message(0, 1, bytes(16), 1, bytes(max_payload(True) + 1))


@given(st.binary(max_size=600))
def test_decoder_never_crashes(data: bytes) -> None:
    d = UdpgwDecoder()
    d.feed(data)
    for _ in range(len(data) + 1):
        try:
            if d.next_message() is None:
                break
        except UdpgwProtocolError:
            continue
    assert d.buffered <= len(data)


@given(
    st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.booleans(), st.binary(max_size=300),
    st.sampled_from([0, FLAG_REBIND, FLAG_DNS]),
)
def test_round_trip(conid: int, port: int, v6: bool, payload: bytes, flags: int) -> None:
    addr = bytes(range(16 if v6 else 4))
    d = UdpgwDecoder()
    d.feed(encode_message(flags, conid, addr, port, payload))
    m = d.next_message()
    assert m == UdpgwMessage(flags | (FLAG_IPV6 if v6 else 0), conid, addr, port, payload)
