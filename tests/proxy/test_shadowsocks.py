"""Shadowsocks AEAD-2017 client codecs (SIP004/SIP007: shadowsocks-org ``docs/doc/aead.md``).

The server side used here is written independently of the client code, straight from the
spec: keys by OpenSSL's EVP_BytesToKey (checked against ``openssl enc -P``), subkeys by
``cryptography``'s HKDF, chunks sealed with ``cryptography``'s AEADs and a nonce counter of its
own. Every decryptor is fed whole, one byte at a time and in random splits.
"""

from __future__ import annotations

import hashlib
import os
import random as pyrandom
import struct
import sys
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("cryptography")

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import tun2proxy.proxy.shadowsocks.aead as ss_aead
import tun2proxy.proxy.shadowsocks.replay as ss_replay
from tun2proxy.errors import ConfigError, FlowStateError, UpstreamError
from tun2proxy.proxy.address import Address
from tun2proxy.proxy.shadowsocks import (
    AEAD_METHODS,
    MAX_PAYLOAD,
    AeadStreamDecryptor,
    AeadStreamEncryptor,
    AeadTcpSession,
    SaltFilter,
    ShadowsocksError,
    decode_address,
    decrypt_packet,
    encode_address,
    encrypt_packet,
    evp_bytes_to_key,
    hkdf_sha1,
    key_size,
    password_to_key,
)

DOMAIN = Address.from_host("example.com", 443)
V4 = Address.from_host("192.0.2.7", 80)
V6 = Address.from_host("2001:db8::1", 8443)

# `openssl enc -aes-256-cbc -k password -nosalt -P -md md5` (and -aes-128-cbc): key=...
OPENSSL_KEY_256 = bytes.fromhex("5F4DCC3B5AA765D61D8327DEB882CF992B95990A9151374ABD8FF8C5A7A0FE08")
OPENSSL_KEY_128 = bytes.fromhex("5F4DCC3B5AA765D61D8327DEB882CF99")

SIZES = {"aes-128-gcm": 16, "aes-256-gcm": 32, "chacha20-ietf-poly1305": 32}


@pytest.fixture(autouse=True)
def fresh_salt_filter(monkeypatch: pytest.MonkeyPatch) -> SaltFilter:
    """Each test gets its own process-wide filter, so tests do not see each other's salts."""
    f = SaltFilter()
    monkeypatch.setattr(ss_replay, "default_salt_filter", f)
    return f


def seeded(seed: int) -> Callable[[int], bytes]:
    rng = pyrandom.Random(seed)
    return rng.randbytes


# -- an independent server side ----------------------------------------------------------------


def srv_key(method: str, password: str) -> bytes:
    """EVP_BytesToKey(MD5), written out from OpenSSL's definition."""
    n = SIZES[method]
    d, out = b"", b""
    while len(out) < n:
        d = hashlib.md5(d + password.encode()).digest()
        out += d
    return out[:n]


def srv_aead(method: str, key: bytes, salt: bytes) -> AESGCM | ChaCha20Poly1305:
    sub = HKDF(hashes.SHA1(), len(key), salt, b"ss-subkey").derive(key)
    return ChaCha20Poly1305(sub) if method.startswith("chacha") else AESGCM(sub)


class SrvStream:
    """One direction of a stream as the server sees it: its own nonce counter."""

    def __init__(self, method: str, key: bytes, salt: bytes) -> None:
        self.aead = srv_aead(method, key, salt)
        self.n = 0

    def _nonce(self) -> bytes:
        nonce = self.n.to_bytes(12, "little")
        self.n += 1
        return nonce

    def seal(self, data: bytes) -> bytes:
        return self.aead.encrypt(self._nonce(), data, None)

    def open(self, data: bytes) -> bytes:
        return self.aead.decrypt(self._nonce(), data, None)


def srv_read_request(method: str, key: bytes, wire: bytes) -> tuple[bytes, bytes, list[int]]:
    """Decrypt a whole client stream: (salt, plaintext, payload length of every chunk)."""
    n = SIZES[method]
    salt, rest = wire[:n], wire[n:]
    s = SrvStream(method, key, salt)
    out, sizes = b"", []
    while rest:
        (length,) = struct.unpack("!H", s.open(rest[:18]))
        assert length <= 0x3FFF
        out += s.open(rest[18 : 18 + length + 16])
        sizes.append(length)
        rest = rest[18 + length + 16 :]
    return salt, out, sizes


def srv_response(
    method: str, key: bytes, chunks: list[bytes], salt: bytes | None = None
) -> tuple[bytes, list[bytes]]:
    """A server response stream: (wire bytes, the wire form of each whole chunk)."""
    salt = salt if salt is not None else os.urandom(SIZES[method])
    s = SrvStream(method, key, salt)
    wires = [s.seal(struct.pack("!H", len(c))) + s.seal(c) for c in chunks]
    return salt + b"".join(wires), wires


def srv_raw_length_chunk(method: str, key: bytes, length: int) -> bytes:
    """A response whose first chunk declares ``length`` (sealed properly, whatever its value)."""
    salt = os.urandom(SIZES[method])
    s = SrvStream(method, key, salt)
    return salt + s.seal(struct.pack("!H", length)) + s.seal(b"x" * 10)


def srv_parse_address(data: bytes) -> tuple[Address, int]:
    """RFC 1928 §5 address, parsed by hand."""
    atyp = data[0]
    if atyp == 1:
        return Address(".".join(str(b) for b in data[1:5]), int.from_bytes(data[5:7], "big")), 7
    if atyp == 4:
        import ipaddress

        host = str(ipaddress.IPv6Address(data[1:17]))
        return Address(host, int.from_bytes(data[17:19], "big")), 19
    assert atyp == 3
    n = data[1]
    return Address(data[2 : 2 + n].decode(), int.from_bytes(data[2 + n : 4 + n], "big")), 4 + n


def feed_all(dec: Callable[[bytes], bytes], data: bytes, splits: list[int]) -> bytes:
    out, pos = b"", 0
    for cut in sorted(set(splits)):
        out += dec(data[pos:cut])
        pos = cut
    return out + dec(data[pos:])


def feed_bytewise(
    dec: AeadStreamDecryptor, data: bytes | bytearray
) -> tuple[bytes, ShadowsocksError | None]:
    """Feed one byte at a time until the end or an error: (plaintext released, the error)."""
    out = b""
    for i in range(len(data)):
        try:
            out += dec.feed(data[i : i + 1])
        except ShadowsocksError as exc:
            return out, exc
    return out, None


# -- keys --------------------------------------------------------------------------------------


def test_evp_bytes_to_key_matches_openssl() -> None:
    assert evp_bytes_to_key(b"password", 32) == OPENSSL_KEY_256
    assert evp_bytes_to_key(b"password", 16) == OPENSSL_KEY_128
    assert password_to_key("aes-256-gcm", "password") == OPENSSL_KEY_256
    assert password_to_key("aes-128-gcm", "password") == OPENSSL_KEY_128
    assert password_to_key("chacha20-ietf-poly1305", "password") == OPENSSL_KEY_256


def test_hkdf_sha1_rfc5869_case4() -> None:
    okm = hkdf_sha1(bytes([0x0B] * 11), bytes(range(13)), bytes(range(0xF0, 0xFA)), 42)
    assert okm.hex() == (
        "085a01ea1b10f36933068b56efa5ad81a4f14b822f5b091568a9cdd4f155fda2c22e422478d305f3f896"
    )


@settings(max_examples=25)
@given(key=st.binary(min_size=16, max_size=32), salt=st.binary(min_size=16, max_size=32))
def test_subkey_matches_cryptography_hkdf(key: bytes, salt: bytes) -> None:
    ref = HKDF(hashes.SHA1(), len(key), salt, b"ss-subkey").derive(key)
    assert hkdf_sha1(key, salt, b"ss-subkey", len(key)) == ref


def test_methods_aliases_and_key_sizes() -> None:
    assert AEAD_METHODS == ("aes-128-gcm", "aes-256-gcm", "chacha20-ietf-poly1305")
    assert key_size("AES-128-GCM") == 16
    assert key_size("chacha20-poly1305") == 32
    session = AeadTcpSession("chacha20-poly1305", "pw", DOMAIN, os.urandom)
    assert session.method == "chacha20-ietf-poly1305"
    with pytest.raises(ConfigError, match="unknown Shadowsocks AEAD method"):
        key_size("rc4-md5")
    with pytest.raises(ConfigError, match="16-byte key"):
        AeadTcpSession("aes-128-gcm", b"short", DOMAIN, os.urandom)
    with pytest.raises(ConfigError, match="empty"):
        AeadTcpSession("aes-128-gcm", "", DOMAIN, os.urandom)


def test_error_type() -> None:
    err = ShadowsocksError("boom")
    assert isinstance(err, UpstreamError)
    assert err.reason == "protocol"


def test_missing_cryptography_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ss_aead, "_crypto_cache", [])
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(ConfigError, match=r"tun2proxy\[shadowsocks\]"):
        AeadTcpSession("aes-128-gcm", "pw", DOMAIN, os.urandom)
    with pytest.raises(ConfigError, match="cryptography"):
        decrypt_packet("aes-128-gcm", bytes(16), bytes(64))


# -- addresses ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addr", "wire"),
    [
        (V4, b"\x01\xc0\x00\x02\x07\x00\x50"),
        (V6, b"\x04" + bytes.fromhex("20010db8000000000000000000000001") + b"\x20\xfb"),
        (DOMAIN, b"\x03\x0bexample.com\x01\xbb"),
    ],
)
def test_address_wire_form(addr: Address, wire: bytes) -> None:
    assert encode_address(addr) == wire
    assert decode_address(wire + b"tail") == (addr, len(wire))


@given(
    host=st.one_of(
        st.ip_addresses().map(str),
        st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,5}){1,3}", fullmatch=True),
    ),
    port=st.integers(0, 0xFFFF),
    tail=st.binary(max_size=8),
)
def test_address_round_trip(host: str, port: int, tail: bytes) -> None:
    addr = Address.from_host(host, port)
    wire = encode_address(addr)
    assert decode_address(wire + tail) == (addr, len(wire))
    for cut in range(len(wire)):
        with pytest.raises(ShadowsocksError, match="truncated"):
            decode_address(wire[:cut])


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (b"\x05\x00\x00\x00\x00\x00\x00", "unknown type"),
        (b"\x03\x00\x00\x50", "domain"),
        (b"\x03\x02\xff\xfe\x00\x50", "domain"),
    ],
)
def test_address_errors(wire: bytes, match: str) -> None:
    with pytest.raises(ShadowsocksError, match=match):
        decode_address(wire)


# -- TCP: client -> server ---------------------------------------------------------------------


@pytest.mark.parametrize("method", AEAD_METHODS)
@pytest.mark.parametrize("dst", [V4, V6, DOMAIN])
def test_first_bytes_carry_salt_address_and_payload(method: str, dst: Address) -> None:
    session = AeadTcpSession(method, "correct horse", dst, os.urandom)
    wire = session.first_bytes(b"GET / HTTP/1.1\r\n\r\n")
    salt, plain, sizes = srv_read_request(method, srv_key(method, "correct horse"), wire)
    addr, used = srv_parse_address(plain)
    assert addr == dst
    assert plain[used:] == b"GET / HTTP/1.1\r\n\r\n"
    assert len(sizes) == 1  # address and initial payload share one chunk
    assert len(salt) == SIZES[method]


@pytest.mark.parametrize("method", AEAD_METHODS)
def test_later_data_continues_the_nonce_and_is_chunked(method: str) -> None:
    key = os.urandom(SIZES[method])
    session = AeadTcpSession(method, key, DOMAIN, os.urandom)
    big = os.urandom(3 * MAX_PAYLOAD + 5)
    wire = session.first_bytes() + session.encrypt(b"hello") + session.encrypt(b"")
    wire += session.encrypt(big)
    _, plain, sizes = srv_read_request(method, key, wire)
    addr, used = srv_parse_address(plain)
    assert addr == DOMAIN
    assert plain[used:] == b"hello" + big
    assert max(sizes) == MAX_PAYLOAD
    assert sizes[-4:] == [MAX_PAYLOAD, MAX_PAYLOAD, MAX_PAYLOAD, 5]


def test_large_first_payload_is_split() -> None:
    key = os.urandom(16)
    session = AeadTcpSession("aes-128-gcm", key, V4, os.urandom)
    payload = os.urandom(40000)
    _, plain, sizes = srv_read_request("aes-128-gcm", key, session.first_bytes(payload))
    assert plain == encode_address(V4) + payload
    assert all(s <= MAX_PAYLOAD for s in sizes)


def test_session_call_order() -> None:
    session = AeadTcpSession("aes-128-gcm", "pw", DOMAIN, os.urandom)
    with pytest.raises(FlowStateError):
        session.encrypt(b"x")
    session.first_bytes()
    with pytest.raises(FlowStateError):
        session.first_bytes()


def test_encryptor_defers_the_salt_until_data() -> None:
    key = os.urandom(32)
    enc = AeadStreamEncryptor("aes-256-gcm", key, seeded(1))
    assert enc.encrypt(b"") == b""
    wire = enc.encrypt(b"abc")
    assert wire.startswith(enc.salt)
    assert srv_read_request("aes-256-gcm", key, wire)[1] == b"abc"


def test_short_random_is_rejected() -> None:
    with pytest.raises(ValueError, match="random"):
        AeadStreamEncryptor("aes-256-gcm", bytes(32), lambda n: b"\x00")


# -- TCP: server -> client ---------------------------------------------------------------------

RESPONSE_CHUNKS = [b"HTTP/1.1 200 OK\r\n", b"", b"x" * 1000, os.urandom(MAX_PAYLOAD), b"end"]


def make_pair(method: str) -> tuple[bytes, AeadTcpSession]:
    key = os.urandom(SIZES[method])
    session = AeadTcpSession(method, key, DOMAIN, os.urandom)
    session.first_bytes()
    return key, session


@pytest.mark.parametrize("method", AEAD_METHODS)
def test_response_whole_and_bytewise(method: str) -> None:
    key, whole = make_pair(method)
    wire, _ = srv_response(method, key, RESPONSE_CHUNKS)
    assert whole.decrypt(wire) == b"".join(RESPONSE_CHUNKS)
    assert whole.decryptor.pending == 0
    whole.feed_eof()

    dec = AeadStreamDecryptor(method, key, salt_filter=SaltFilter())
    small, _ = srv_response(method, key, RESPONSE_CHUNKS[:3])
    out = b"".join(dec.feed(small[i : i + 1]) for i in range(len(small)))
    assert out == b"".join(RESPONSE_CHUNKS[:3])


@settings(max_examples=40)
@given(
    method=st.sampled_from(AEAD_METHODS),
    chunks=st.lists(st.binary(max_size=300), min_size=1, max_size=6),
    data=st.data(),
)
def test_response_in_random_splits(method: str, chunks: list[bytes], data: st.DataObject) -> None:
    key = os.urandom(SIZES[method])
    wire, _ = srv_response(method, key, chunks)
    splits = data.draw(st.lists(st.integers(0, len(wire)), max_size=12))
    dec = AeadStreamDecryptor(method, key, salt_filter=SaltFilter())
    assert feed_all(dec.feed, wire, splits) == b"".join(chunks)
    assert dec.pending == 0


def test_returns_only_complete_chunks() -> None:
    key, session = make_pair("aes-256-gcm")
    wire, wires = srv_response("aes-256-gcm", key, [b"first", b"second"])
    first_end = 32 + len(wires[0])
    assert session.decrypt(wire[: first_end - 1]) == b""
    assert session.decrypt(wire[first_end - 1 : first_end]) == b"first"
    assert session.decrypt(wire[first_end : len(wire) - 1]) == b""
    # The second chunk's length part is already open; its payload part waits, one byte short.
    assert session.decryptor.pending == len(wires[1]) - 1 - 18
    assert session.decrypt(wire[-1:]) == b"second"


@pytest.mark.parametrize("method", AEAD_METHODS)
def test_flipped_bit_anywhere_releases_nothing_of_that_chunk(method: str) -> None:
    key = os.urandom(SIZES[method])
    chunks = [b"alpha", b"bravo-bravo"]
    wire, wires = srv_response(method, key, chunks)
    salt_len = SIZES[method]
    bounds = [salt_len, salt_len + len(wires[0]), len(wire)]
    for pos in range(len(wire)):
        bad = bytearray(wire)
        bad[pos] ^= 1 << (pos % 8)
        # Whole: the error, and not a byte of plaintext.
        dec = AeadStreamDecryptor(method, key, salt_filter=SaltFilter())
        with pytest.raises(ShadowsocksError):
            dec.feed(bytes(bad))
        assert dec.failed
        with pytest.raises(ShadowsocksError):
            dec.feed(b"more")
        # Byte by byte: only the chunks wholly before the damaged one come out.
        out, err = feed_bytewise(AeadStreamDecryptor(method, key, salt_filter=SaltFilter()), bad)
        assert isinstance(err, ShadowsocksError)
        damaged = 0 if pos < bounds[1] else 1
        assert out == b"".join(chunks[:damaged])


def test_truncated_stream_fails_at_eof() -> None:
    key, session = make_pair("chacha20-ietf-poly1305")
    wire, _ = srv_response("chacha20-ietf-poly1305", key, [b"one", b"two"])
    assert session.decrypt(wire[:-1]) == b"one"
    with pytest.raises(ShadowsocksError, match="truncated"):
        session.feed_eof()
    assert session.decryptor.failed
    # A salt cut short is truncated too; a stream that never started is a clean close.
    dec = AeadStreamDecryptor("aes-128-gcm", bytes(16), salt_filter=SaltFilter())
    dec.feed(b"\x00" * 5)
    with pytest.raises(ShadowsocksError):
        dec.feed_eof()
    AeadStreamDecryptor("aes-128-gcm", bytes(16), salt_filter=SaltFilter()).feed_eof()


@pytest.mark.parametrize("length", [0x4000, 0x8000, 0xC000, 0xFFFF])
def test_length_with_high_bits_set_fails(length: int) -> None:
    key, session = make_pair("aes-128-gcm")
    wire = srv_raw_length_chunk("aes-128-gcm", key, length)
    with pytest.raises(ShadowsocksError, match="exceeds"):
        session.decrypt(wire)
    assert session.decryptor.pending == 0


def test_max_length_is_accepted() -> None:
    key, session = make_pair("aes-128-gcm")
    wire, _ = srv_response("aes-128-gcm", key, [b"y" * MAX_PAYLOAD])
    assert session.decrypt(wire) == b"y" * MAX_PAYLOAD


# -- salt filter -------------------------------------------------------------------------------


def test_reflected_request_is_rejected(fresh_salt_filter: SaltFilter) -> None:
    """An attacker echoes our own request stream back: same key, same salt, valid tags."""
    key, _ = make_pair("aes-256-gcm")
    session = AeadTcpSession("aes-256-gcm", key, DOMAIN, os.urandom)
    request = session.first_bytes(b"GET /")
    assert request[:32] in fresh_salt_filter
    with pytest.raises(ShadowsocksError, match="salt"):
        session.decrypt(request)


def test_replayed_response_is_rejected(fresh_salt_filter: SaltFilter) -> None:
    key, first = make_pair("aes-128-gcm")
    wire, _ = srv_response("aes-128-gcm", key, [b"reply"])
    assert first.decrypt(wire) == b"reply"
    assert wire[:16] in fresh_salt_filter
    second = AeadTcpSession("aes-128-gcm", key, DOMAIN, os.urandom)
    second.first_bytes()
    with pytest.raises(ShadowsocksError, match="replay"):
        second.decrypt(wire)


def test_forged_salt_does_not_enter_the_filter(fresh_salt_filter: SaltFilter) -> None:
    _, session = make_pair("aes-128-gcm")
    before = len(fresh_salt_filter)
    with pytest.raises(ShadowsocksError):
        session.decrypt(os.urandom(16 + 18))
    assert len(fresh_salt_filter) == before


def test_salt_filter_is_bounded() -> None:
    f = SaltFilter(capacity=3)
    for i in range(5):
        f.add(bytes([i]) * 16)
    assert len(f) == 3
    assert bytes([0]) * 16 not in f
    assert bytes([4]) * 16 in f
    f.add(bytes([4]) * 16)
    assert len(f) == 3
    f.clear()
    assert len(f) == 0
    with pytest.raises(ConfigError):
        SaltFilter(capacity=0)


def test_default_filter_can_be_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    mine = SaltFilter(capacity=10)
    monkeypatch.setattr(ss_replay, "default_salt_filter", mine)
    enc = AeadStreamEncryptor("aes-128-gcm", bytes(16), os.urandom)
    assert enc.salt in mine
    own = SaltFilter()
    enc = AeadStreamEncryptor("aes-128-gcm", bytes(16), os.urandom, salt_filter=own)
    assert enc.salt in own
    assert enc.salt not in mine


# -- UDP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", AEAD_METHODS)
def test_udp_client_to_server(method: str) -> None:
    key = srv_key(method, "udp-pass")
    payload = encode_address(V4) + b"\x12\x34 dns query"
    packet = encrypt_packet(method, password_to_key(method, "udp-pass"), os.urandom, payload)
    n = SIZES[method]
    assert len(packet) == n + len(payload) + 16
    plain = srv_aead(method, key, packet[:n]).decrypt(bytes(12), packet[n:], None)
    addr, used = srv_parse_address(plain)
    assert (addr, plain[used:]) == (V4, b"\x12\x34 dns query")
    # A fresh salt every packet.
    again = encrypt_packet(method, key, os.urandom, payload)
    assert again[:n] != packet[:n]


@pytest.mark.parametrize("method", AEAD_METHODS)
def test_udp_server_to_client(method: str) -> None:
    key = os.urandom(SIZES[method])
    salt = os.urandom(SIZES[method])
    body = encode_address(V6) + b"answer"
    packet = salt + srv_aead(method, key, salt).encrypt(bytes(12), body, None)
    plain = decrypt_packet(method, key, packet)
    assert decode_address(plain) == (V6, 19)
    assert plain[19:] == b"answer"
    for pos in range(0, len(packet), 3):
        bad = bytearray(packet)
        bad[pos] ^= 0x80
        with pytest.raises(ShadowsocksError, match="authentication"):
            decrypt_packet(method, key, bytes(bad))
    with pytest.raises(ShadowsocksError, match="too short"):
        decrypt_packet(method, key, packet[: SIZES[method] + 15])


def test_udp_deterministic_with_injected_random() -> None:
    key = bytes(range(16))
    a = encrypt_packet("aes-128-gcm", key, seeded(7), b"\x01\x7f\x00\x00\x01\x00\x35q")
    b = encrypt_packet("aes-128-gcm", key, seeded(7), b"\x01\x7f\x00\x00\x01\x00\x35q")
    assert a == b
    assert decrypt_packet("aes-128-gcm", key, a) == b"\x01\x7f\x00\x00\x01\x00\x35q"
