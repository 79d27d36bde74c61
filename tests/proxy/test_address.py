"""The one SOCKS address codec (ATYP, address, port) every protocol here shares."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tun2proxy.errors import MalformedPacket
from tun2proxy.proxy.address import (
    SOCKS_ADDRESS_ATYP,
    SOCKS_ADDRESS_TRUNCATED,
    Address,
    decode_socks_address,
    domain_bytes,
    encode_socks_address,
)

_host = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,5}){1,3}", fullmatch=True),
)


@given(host=_host, port=st.integers(0, 0xFFFF), head=st.binary(max_size=5),
       tail=st.binary(max_size=8))
def test_round_trip_at_any_offset(host: str, port: int, head: bytes, tail: bytes) -> None:
    addr = Address.from_host(host, port)
    wire = encode_socks_address(addr)
    assert decode_socks_address(head + wire + tail, len(head)) == (addr, len(head) + len(wire))
    for cut in range(len(wire)):
        with pytest.raises(MalformedPacket) as info:
            decode_socks_address(head + wire[:cut], len(head))
        assert info.value.reason == SOCKS_ADDRESS_TRUNCATED


@pytest.mark.parametrize("atyp", [0, 2, 5, 0xFF])
def test_unknown_type_is_reported_before_the_rest_arrives(atyp: int) -> None:
    with pytest.raises(MalformedPacket) as info:
        decode_socks_address(bytes((atyp,)))
    assert info.value.reason == SOCKS_ADDRESS_ATYP


@pytest.mark.parametrize("raw", [b"", b"\xff\xfe"])
def test_unusable_domain_is_none_but_consumed(raw: bytes) -> None:
    wire = bytes((3, len(raw))) + raw + b"\x00\x35"
    assert decode_socks_address(wire + b"rest") == (None, len(wire))


def test_names_go_out_as_idna() -> None:
    assert domain_bytes("bücher.example") == b"xn--bcher-kva.example"
    wire = encode_socks_address(Address("bücher.example", 80))
    assert wire == b"\x03\x15xn--bcher-kva.example\x00\x50"
    with pytest.raises(ValueError, match="1-255"):
        encode_socks_address(Address("a" * 256, 80))
