"""UDP-over-TCP codec (sing-box ``uot``): bytes worked out by hand from sagernet/sing.

The references, in sagernet/sing ``common/uot`` and ``common/metadata``:

* ``protocol.go``: ``MagicAddress = "sp.v2.udp-over-tcp.arpa"``,
  ``LegacyMagicAddress = "sp.udp-over-tcp.arpa"``; ``RequestDestination`` puts them in a
  ``Socksaddr{Fqdn: ...}`` whose port is the zero value; ``EncodeRequest`` writes
  ``binary.Write(IsConnect)`` (a Go bool: one byte, 0 or 1), then
  ``M.SocksaddrSerializer.WriteAddrPort``; ``AddrParser`` maps family bytes 0x00 -> IPv4,
  0x01 -> IPv6, 0x02 -> FQDN.
* ``serializer_socks.go`` (metadata): ``SocksaddrSerializer`` maps 0x01 IPv4, 0x04 IPv6,
  0x03 FQDN.
* ``serializer.go``: ``WriteAddress`` is the family byte then the 4/16 address bytes, or for
  a name ``WriteString``: one length byte and the bytes; ``WritePort`` is
  ``binary.Write(BigEndian, uint16)``; address before port (no ``PortThenAddress``).
* ``conn.go`` ``WritePacket``: non-connect: ``AddrParser.WriteAddrPort`` then
  ``binary.Write(BigEndian, uint16(len))`` then the payload; connect: the length and payload.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tun2proxy.proxy.address import Address
from tun2proxy.proxy.uot import (
    MAGIC_V1,
    MAGIC_V2,
    UOT_BAD_FAMILY,
    UOT_BAD_NAME,
    UotDecoder,
    decode_uot_address,
    encode_packet,
    encode_request,
    encode_uot_address,
    magic_address,
)


def test_magic_addresses() -> None:
    assert magic_address(2) == Address("sp.v2.udp-over-tcp.arpa", 0) == Address(MAGIC_V2, 0)
    assert magic_address(1) == Address("sp.udp-over-tcp.arpa", 0) == Address(MAGIC_V1, 0)
    with pytest.raises(ValueError):
        magic_address(3)


def test_request_non_connect_ipv4() -> None:
    req = encode_request(Address("10.200.0.2", 9999))
    assert req == bytes.fromhex(
        "00"        # IsConnect = false: binary.Write of a Go bool is one byte, 0
        "01"        # SocksaddrSerializer: AddressFamilyByte(0x01, IPv4)
        "0ac80002"  # 10.200.0.2, AsSlice(): 4 bytes
        "270f"      # port 9999 = 0x270f, big endian (WritePort)
    )


def test_request_connect_ipv6_and_name() -> None:
    assert encode_request(Address("fd20::2", 53), connect=True) == bytes.fromhex(
        "01"        # IsConnect = true
        "04"        # SocksaddrSerializer: AddressFamilyByte(0x04, IPv6)
        "fd200000000000000000000000000002"  # fd20::2, 16 bytes
        "0035"      # port 53
    )
    assert encode_request(Address("name.test", 443)) == bytes.fromhex(
        "00"        # non-connect
        "03"        # SocksaddrSerializer: AddressFamilyByte(0x03, FQDN)
        "09"        # WriteString: one length byte, len("name.test") = 9
        "6e616d652e74657374"  # "name.test"
        "01bb"      # port 443
    )


def test_packet_non_connect_uses_uot_family_bytes() -> None:
    # AddrParser, not SocksaddrSerializer: IPv4 is 0x00 here, not 0x01.
    assert encode_packet(b"hi", Address("10.200.0.2", 9999)) == bytes.fromhex(
        "00"        # AddrParser: AddressFamilyByte(0x00, IPv4)
        "0ac80002"  # 10.200.0.2
        "270f"      # port 9999
        "0002"      # binary.Write(BigEndian, uint16(len(p))) = 2
        "6869"      # "hi"
    )
    assert encode_packet(b"\x00", Address("fd20::3", 7)) == bytes.fromhex(
        "01"        # AddrParser: AddressFamilyByte(0x01, IPv6)
        "fd200000000000000000000000000003"
        "0007"      # port 7
        "0001"      # length 1
        "00"
    )
    assert encode_packet(b"", Address("a.b", 1)) == bytes.fromhex(
        "02"        # AddrParser: AddressFamilyByte(0x02, FQDN)
        "03" "612e62"  # WriteString("a.b")
        "0001"      # port 1
        "0000"      # an empty datagram: length 0, no payload
    )


def test_packet_connect_mode_is_length_and_payload() -> None:
    assert encode_packet(b"abc", None) == bytes.fromhex("0003" "616263")


def test_packet_limits() -> None:
    assert len(encode_packet(b"x" * 0xFFFF, None)) == 0xFFFF + 2
    with pytest.raises(ValueError):
        encode_packet(b"x" * 0x10000, None)
    with pytest.raises(ValueError):
        encode_uot_address(Address("a" * 256, 1))


def test_decoder_non_connect_any_split() -> None:
    wire = (
        bytes.fromhex("00" "0ac80003" "270f" "0003") + b"one"
        + bytes.fromhex("01" "fd200000000000000000000000000004" "270f" "0000")
        + bytes.fromhex("02" "09") + b"name.test" + bytes.fromhex("0035" "0002") + b"ok"
    )
    want = [
        (Address("10.200.0.3", 9999), b"one"),
        (Address("fd20::4", 9999), b""),
        (Address("name.test", 53), b"ok"),
    ]
    for step in (len(wire), 1, 2, 5, 7):
        dec = UotDecoder()
        got = []
        for i in range(0, len(wire), step):
            got += dec.feed(wire[i : i + step])
        assert got == want, step
        assert dec.buffered == 0 and dec.failed is None


def test_decoder_connect_mode() -> None:
    peer = Address("10.200.0.2", 9999)
    dec = UotDecoder(peer)
    assert dec.feed(bytes.fromhex("0002") + b"ab" + bytes.fromhex("00")) == [(peer, b"ab")]
    assert dec.buffered == 1
    assert dec.feed(bytes.fromhex("01") + b"c") == [(peer, b"c")]


def test_decoder_bad_family_fails_once_and_for_all() -> None:
    dec = UotDecoder()
    good = encode_packet(b"x", Address("1.2.3.4", 5))
    # 0x03 is SOCKS5's domain ATYP, but no uot family: a server speaking SOCKS5 framing.
    assert dec.feed(good + b"\x03\x00") == [(Address("1.2.3.4", 5), b"x")]
    assert dec.failed == UOT_BAD_FAMILY
    assert dec.feed(good) == []
    dec = UotDecoder()
    assert dec.feed(b"\x02\x02\xff\xfe\x00\x01\x00\x00") == []
    assert dec.failed == UOT_BAD_NAME


def test_decode_address_truncated_is_none() -> None:
    full = encode_uot_address(Address("fd20::2", 80))
    for i in range(len(full)):
        assert decode_uot_address(full[:i]) is None
    assert decode_uot_address(full) == (Address("fd20::2", 80), len(full))


_addrs = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z]{1,20}(\.[a-z]{1,10}){0,3}", fullmatch=True),
)


@given(
    st.lists(
        st.tuples(_addrs, st.integers(0, 65535), st.binary(max_size=300)), max_size=8
    ),
    st.integers(1, 50),
)
def test_round_trip_and_garbage_never_raises(
    frames: list[tuple[str, int, bytes]], step: int
) -> None:
    want = [(Address.from_host(h, p), b) for h, p, b in frames]
    wire = b"".join(encode_packet(b, a) for a, b in want)
    dec = UotDecoder()
    got = []
    for i in range(0, len(wire), step):
        got += dec.feed(wire[i : i + step])
    assert got == want
    UotDecoder().feed(bytes(reversed(wire)))  # garbage: counted as failed, never raised
