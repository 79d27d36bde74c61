"""Shadowsocks 2022 client codecs (SIP022: shadowsocks-org ``docs/doc/sip022.md``).

The server side used here is written independently of the client code, from the spec: subkeys
with the ``blake3`` package directly, AEADs and AES-ECB from ``cryptography``, and
XChaCha20-Poly1305 built on a pure-Python HChaCha20 written out from
draft-irtf-cfrg-xchacha §2.2. Known answers: the BLAKE3 team's derive_key vectors, the
XChaCha draft's HChaCha20 (§2.2.1) and AEAD (§A.3.1) vectors.
"""

from __future__ import annotations

import base64
import os
import struct
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("cryptography")
pytest.importorskip("blake3")

import blake3 as blake3_mod
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

import tun2proxy.proxy.shadowsocks.aead as ss_aead
import tun2proxy.proxy.shadowsocks.aead2022 as ss22
import tun2proxy.proxy.shadowsocks.keys as ss_keys
from tun2proxy.errors import ConfigError, FlowStateError
from tun2proxy.proxy.address import Address
from tun2proxy.proxy.shadowsocks import (
    MAX_PADDING,
    MAX_PAYLOAD_2022,
    METHODS_2022,
    ReplayWindow,
    ShadowsocksError,
    Ss2022TcpSession,
    Ss2022UdpClient,
    decode_psk,
    encode_address,
    session_subkey,
)

DOMAIN = Address.from_host("example.com", 443)
V4 = Address.from_host("192.0.2.7", 80)
V6 = Address.from_host("2001:db8::1", 8443)
DNS = Address.from_host("1.1.1.1", 53)
NOW = 1_700_000_000.25
CTX = "shadowsocks 2022 session subkey"
KEYLEN = {"2022-blake3-aes-128-gcm": 16, "2022-blake3-aes-256-gcm": 32}
KEYLEN["2022-blake3-chacha20-poly1305"] = 32


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def scripted(draws: list[bytes]) -> Callable[[int], bytes]:
    """A ``random`` that returns the given byte strings in turn."""
    it = iter(draws)

    def random(n: int) -> bytes:
        out = next(it)
        assert len(out) == n
        return out

    return random


def new_psk(method: str) -> tuple[bytes, str]:
    psk = os.urandom(KEYLEN[method])
    return psk, base64.b64encode(psk).decode()


# -- independent primitives --------------------------------------------------------------------

M32 = 0xFFFFFFFF


def _rotl(v: int, c: int) -> int:
    return ((v << c) & M32) | (v >> (32 - c))


def _qr(s: list[int], a: int, b: int, c: int, d: int) -> None:
    s[a] = (s[a] + s[b]) & M32
    s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & M32
    s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & M32
    s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & M32
    s[b] = _rotl(s[b] ^ s[c], 7)


def ref_hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 as draft-irtf-cfrg-xchacha §2.2 writes it: 20 rounds, no feed-forward."""
    s = list(struct.unpack("<4I", b"expand 32-byte k"))
    s += list(struct.unpack("<8I", key)) + list(struct.unpack("<4I", nonce16))
    for _ in range(10):
        _qr(s, 0, 4, 8, 12)
        _qr(s, 1, 5, 9, 13)
        _qr(s, 2, 6, 10, 14)
        _qr(s, 3, 7, 11, 15)
        _qr(s, 0, 5, 10, 15)
        _qr(s, 1, 6, 11, 12)
        _qr(s, 2, 7, 8, 13)
        _qr(s, 3, 4, 9, 14)
    return struct.pack("<8I", *(s[0:4] + s[12:16]))


def ref_xchacha(key: bytes, nonce24: bytes) -> tuple[ChaCha20Poly1305, bytes]:
    return ChaCha20Poly1305(ref_hchacha20(key, nonce24[:16])), bytes(4) + nonce24[16:]


def ref_subkey(psk: bytes, salt: bytes) -> bytes:
    return blake3_mod.blake3(psk + salt, derive_key_context=CTX).digest(len(psk))


def ref_aead(method: str, key: bytes) -> AESGCM | ChaCha20Poly1305:
    return ChaCha20Poly1305(key) if "chacha" in method else AESGCM(key)


def srv_parse_address(data: bytes) -> tuple[Address, int]:
    """RFC 1928 §5 address, parsed by hand."""
    atyp = data[0]
    if atyp == 1:
        return Address(".".join(str(b) for b in data[1:5]), int.from_bytes(data[5:7], "big")), 7
    if atyp == 4:
        import ipaddress

        return Address(str(ipaddress.IPv6Address(data[1:17])), int.from_bytes(data[17:19])), 19
    assert atyp == 3
    n = data[1]
    return Address(data[2 : 2 + n].decode(), int.from_bytes(data[2 + n : 4 + n], "big")), 4 + n


# -- an independent TCP server -----------------------------------------------------------------


class SrvStream:
    def __init__(self, method: str, psk: bytes, salt: bytes) -> None:
        self.aead = ref_aead(method, ref_subkey(psk, salt))
        self.n = 0

    def _nonce(self) -> bytes:
        nonce = self.n.to_bytes(12, "little")
        self.n += 1
        return nonce

    def seal(self, data: bytes) -> bytes:
        return self.aead.encrypt(self._nonce(), data, None)

    def open(self, data: bytes) -> bytes:
        return self.aead.decrypt(self._nonce(), data, None)


class Request:
    def __init__(self, method: str, psk: bytes, wire: bytes) -> None:
        n = len(psk)
        self.salt = wire[:n]
        s = SrvStream(method, psk, self.salt)
        kind, self.timestamp, vlen = struct.unpack("!BQH", s.open(wire[n : n + 27]))
        assert kind == 0
        var = s.open(wire[n + 27 : n + 27 + vlen + 16])
        self.var_len = vlen
        self.addr, used = srv_parse_address(var)
        (padlen,) = struct.unpack_from("!H", var, used)
        self.padding = var[used + 2 : used + 2 + padlen]
        self.payload = var[used + 2 + padlen :]
        self.header_payload = len(self.payload)
        rest = wire[n + 27 + vlen + 16 :]
        self.sizes: list[int] = []
        while rest:
            (length,) = struct.unpack("!H", s.open(rest[:18]))
            self.payload += s.open(rest[18 : 18 + length + 16])
            self.sizes.append(length)
            rest = rest[18 + length + 16 :]


def srv_response(
    method: str,
    psk: bytes,
    request_salt: bytes,
    chunks: list[bytes],
    *,
    timestamp: int = int(NOW),
    kind: int = 1,
) -> tuple[bytes, list[int]]:
    """A response stream: (wire, the end offset of each payload chunk in the wire)."""
    salt = os.urandom(len(psk))
    s = SrvStream(method, psk, salt)
    fixed = struct.pack("!BQ", kind, timestamp) + request_salt + struct.pack("!H", len(chunks[0]))
    wire = salt + s.seal(fixed) + s.seal(chunks[0])
    ends = [len(wire)]
    for c in chunks[1:]:
        wire += s.seal(struct.pack("!H", len(c))) + s.seal(c)
        ends.append(len(wire))
    return wire, ends


def tcp_pair(
    method: str, payload: bytes = b"GET /", clock: Clock | None = None
) -> tuple[bytes, Ss2022TcpSession, Request]:
    psk, b64 = new_psk(method)
    session = Ss2022TcpSession(method, b64, DOMAIN, os.urandom, clock or Clock())
    return psk, session, Request(method, psk, session.first_bytes(payload))


# -- an independent UDP server -----------------------------------------------------------------


@dataclass
class ClientPacket:
    session_id: bytes
    packet_id: int
    kind: int
    timestamp: int
    padding: bytes
    addr: Address
    payload: bytes


class SrvUdp:
    def __init__(self, method: str, psk: bytes) -> None:
        self.method = method
        self.psk = psk
        self.session_id = os.urandom(8)
        self.packet_id = 0
        self.ecb = Cipher(algorithms.AES(psk), modes.ECB()) if "aes" in method else None

    def open_client(self, packet: bytes) -> ClientPacket:
        aead: AESGCM | ChaCha20Poly1305
        if self.ecb is None:
            aead, nonce = ref_xchacha(self.psk, packet[:24])
            plain = aead.decrypt(nonce, packet[24:], None)
            header, body = plain[:16], plain[16:]
        else:
            header = self.ecb.decryptor().update(packet[:16])
            aead = AESGCM(ref_subkey(self.psk, header[:8]))
            body = aead.decrypt(header[4:16], packet[16:], None)
        kind, ts, padlen = struct.unpack_from("!BQH", body)
        addr, used = srv_parse_address(body[11 + padlen :])
        return ClientPacket(
            session_id=header[:8],
            packet_id=int.from_bytes(header[8:16], "big"),
            kind=kind,
            timestamp=ts,
            padding=body[11 : 11 + padlen],
            addr=addr,
            payload=body[11 + padlen + used :],
        )

    def seal(
        self,
        client_session: bytes,
        addr: Address,
        payload: bytes,
        *,
        timestamp: int = int(NOW),
        packet_id: int | None = None,
        kind: int = 1,
        padding: int = 0,
    ) -> bytes:
        if packet_id is None:
            packet_id = self.packet_id
            self.packet_id += 1
        header = self.session_id + packet_id.to_bytes(8, "big")
        body = struct.pack("!BQ", kind, timestamp) + client_session + struct.pack("!H", padding)
        body += bytes(padding) + encode_address(addr) + payload
        if self.ecb is None:
            nonce = os.urandom(24)
            aead, n12 = ref_xchacha(self.psk, nonce)
            return nonce + aead.encrypt(n12, header + body, None)
        sealed = AESGCM(ref_subkey(self.psk, self.session_id)).encrypt(header[4:16], body, None)
        return self.ecb.encryptor().update(header) + sealed


def udp_pair(method: str, clock: Clock | None = None) -> tuple[SrvUdp, Ss2022UdpClient]:
    psk, b64 = new_psk(method)
    return SrvUdp(method, psk), Ss2022UdpClient(method, b64, os.urandom, clock or Clock())


# -- known answers -----------------------------------------------------------------------------

B3_CONTEXT = "BLAKE3 2019-12-27 16:29:52 test vectors context"


def test_blake3_derive_key_official_vectors() -> None:
    derive = ss_keys.blake3_derive_key
    assert derive(B3_CONTEXT, b"", 32).hex() == (
        "2cc39783c223154fea8dfb7c1b1660f2ac2dcbd1c1de8277b0b0dd39b7e50d7d"
    )
    assert derive(B3_CONTEXT, b"\x00", 32).hex() == (
        "b3e2e340a117a499c6cf2398a19ee0d29cca2bb7404c73063382693bf66cb06c"
    )
    assert derive(B3_CONTEXT, b"", 16).hex() == "2cc39783c223154fea8dfb7c1b1660f2"


def test_session_subkey_is_blake3_derive_key_of_psk_and_salt() -> None:
    psk, salt = bytes(range(32)), bytes(range(100, 132))
    assert session_subkey(psk, salt) == ref_subkey(psk, salt)
    assert len(session_subkey(psk[:16], salt[:16])) == 16
    assert session_subkey(psk[:16], salt[:16]) == ref_subkey(psk[:16], salt[:16])


def test_hchacha20_draft_vector() -> None:
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    want = "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    assert ss_aead.hchacha20(key, nonce).hex() == want
    assert ref_hchacha20(key, nonce).hex() == want


@settings(max_examples=25)
@given(key=st.binary(min_size=32, max_size=32), nonce=st.binary(min_size=16, max_size=16))
def test_hchacha20_matches_the_reference(key: bytes, nonce: bytes) -> None:
    assert ss_aead.hchacha20(key, nonce) == ref_hchacha20(key, nonce)


def test_xchacha20_poly1305_draft_vector() -> None:
    key = bytes(range(0x80, 0xA0))
    nonce = bytes(range(0x40, 0x58))
    aad = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
    plaintext = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
        b"the future, sunscreen would be it."
    )
    sealed = bytes.fromhex(
        "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
        "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
        "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
        "21f9664c97637da9768812f615c68b13b52e"
        "c0875924c1c7987947deafd8780acf49"
    )
    assert ss_aead.xchacha_seal(key, nonce, plaintext, aad) == sealed
    assert ss_aead.xchacha_open(key, nonce, sealed, aad) == plaintext
    with pytest.raises(ShadowsocksError):
        ss_aead.xchacha_open(key, nonce, sealed[:-1] + b"\x00", aad)


# -- PSK ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS_2022)
def test_psk_of_the_right_length(method: str) -> None:
    psk, b64 = new_psk(method)
    assert decode_psk(method, b64) == psk
    assert decode_psk(method.upper(), f"  {b64}\n") == psk


@pytest.mark.parametrize(
    ("method", "size"),
    [
        ("2022-blake3-aes-128-gcm", 32),
        ("2022-blake3-aes-128-gcm", 15),
        ("2022-blake3-aes-256-gcm", 16),
        ("2022-blake3-chacha20-poly1305", 31),
    ],
)
def test_wrong_psk_length(method: str, size: int) -> None:
    b64 = base64.b64encode(os.urandom(size)).decode()
    with pytest.raises(ConfigError, match=rf"exactly {KEYLEN[method]} bytes, got {size}"):
        decode_psk(method, b64)
    with pytest.raises(ConfigError, match="exactly"):
        Ss2022TcpSession(method, b64, DOMAIN, os.urandom, Clock())
    with pytest.raises(ConfigError, match="exactly"):
        Ss2022UdpClient(method, b64, os.urandom, Clock())


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("not base64!!", "not valid base64"),
        ("AAAA====AAAA", "not valid base64"),
        ("", "empty"),
        ("a:b", "not implemented"),
    ],
)
def test_bad_psk_text(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        decode_psk("2022-blake3-aes-128-gcm", text)


def test_unknown_method() -> None:
    with pytest.raises(ConfigError, match="unknown Shadowsocks 2022 method"):
        decode_psk("aes-128-gcm", "AAAA")


def test_missing_blake3_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "blake3", None)
    _, b64 = new_psk("2022-blake3-aes-128-gcm")
    with pytest.raises(ConfigError, match=r"blake3.*tun2proxy\[shadowsocks\]"):
        Ss2022TcpSession("2022-blake3-aes-128-gcm", b64, DOMAIN, os.urandom, Clock())


# -- TCP: request ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS_2022)
@pytest.mark.parametrize("dst", [V4, V6, DOMAIN])
def test_request_with_initial_payload(method: str, dst: Address) -> None:
    psk, b64 = new_psk(method)
    session = Ss2022TcpSession(method, b64, dst, os.urandom, Clock())
    wire = session.first_bytes(b"\x16\x03\x01 client hello")
    req = Request(method, psk, wire)
    assert req.salt == session.salt
    assert req.timestamp == int(NOW)
    assert req.addr == dst
    assert req.padding == b""  # payload present: no padding needed
    assert req.payload == b"\x16\x03\x01 client hello"
    assert req.sizes == []  # everything in the header chunks of the one write


@pytest.mark.parametrize("method", METHODS_2022)
def test_request_without_payload_is_padded(method: str) -> None:
    lengths = set()
    for _ in range(8):
        _, _, req = tcp_pair(method, b"")
        assert 1 <= len(req.padding) <= MAX_PADDING
        assert req.payload == b""
        lengths.add(len(req.padding))
    assert len(lengths) > 1  # random, not fixed


def test_padding_length_is_uniform() -> None:
    """1..900 comes from two random bytes by rejection sampling: every value, equally often."""
    counts: Counter[int] = Counter()
    for v in range(65536):
        counts[ss22._random_below(scripted([v.to_bytes(2, "big"), b"\x00\x00"]), MAX_PADDING)] += 1
    assert set(counts) == set(range(MAX_PADDING))
    per_value = 65536 // MAX_PADDING
    rejected = 65536 - per_value * MAX_PADDING  # redrawn, here as 0
    assert counts[MAX_PADDING - 1] == per_value
    assert counts[0] == per_value + rejected


def test_big_initial_payload_fills_the_header_then_chunks() -> None:
    method = "2022-blake3-aes-128-gcm"
    payload = os.urandom(2 * MAX_PAYLOAD_2022 + 10)
    _, _, req = tcp_pair(method, payload)
    assert req.payload == payload
    assert req.var_len == MAX_PAYLOAD_2022
    assert all(size <= MAX_PAYLOAD_2022 for size in req.sizes)
    assert req.header_payload == MAX_PAYLOAD_2022 - len(encode_address(DOMAIN)) - 2


@pytest.mark.parametrize("method", METHODS_2022)
def test_later_data_continues_the_stream(method: str) -> None:
    psk, b64 = new_psk(method)
    session = Ss2022TcpSession(method, b64, DOMAIN, os.urandom, Clock())
    big = os.urandom(MAX_PAYLOAD_2022 + 1)
    wire = (
        session.first_bytes(b"a")
        + session.encrypt(b"bc")
        + session.encrypt(b"")
        + session.encrypt(big)
    )
    req = Request(method, psk, wire)
    assert req.payload == b"abc" + big
    assert req.sizes == [2, MAX_PAYLOAD_2022, 1]


def test_call_order() -> None:
    _, b64 = new_psk("2022-blake3-aes-128-gcm")
    session = Ss2022TcpSession("2022-blake3-aes-128-gcm", b64, DOMAIN, os.urandom, Clock())
    with pytest.raises(FlowStateError):
        session.encrypt(b"x")
    with pytest.raises(FlowStateError):
        session.decrypt(b"x")
    session.first_bytes()
    with pytest.raises(FlowStateError):
        session.first_bytes()


# -- TCP: response -----------------------------------------------------------------------------

CHUNKS = [b"HTTP/1.1 200 OK\r\n\r\n", b"", os.urandom(MAX_PAYLOAD_2022), b"tail"]


@pytest.mark.parametrize("method", METHODS_2022)
def test_response_whole_and_bytewise(method: str) -> None:
    psk, session, req = tcp_pair(method)
    wire, _ = srv_response(method, psk, req.salt, CHUNKS)
    assert session.decrypt(wire) == b"".join(CHUNKS)
    assert session.response_salt == wire[: len(psk)]
    session.feed_eof()

    psk, session, req = tcp_pair(method)
    wire, _ = srv_response(method, psk, req.salt, [b"one", b"two", b"three"])
    out = b"".join(session.decrypt(wire[i : i + 1]) for i in range(len(wire)))
    assert out == b"onetwothree"
    assert session.pending == 0


@settings(max_examples=40)
@given(
    method=st.sampled_from(METHODS_2022),
    chunks=st.lists(st.binary(max_size=300), min_size=1, max_size=6),
    data=st.data(),
)
def test_response_in_random_splits(method: str, chunks: list[bytes], data: st.DataObject) -> None:
    psk, session, req = tcp_pair(method)
    wire, _ = srv_response(method, psk, req.salt, chunks)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(wire)), max_size=12))))
    out, pos = b"", 0
    for cut in [*cuts, len(wire)]:
        out += session.decrypt(wire[pos:cut])
        pos = cut
    assert out == b"".join(chunks)


@pytest.mark.parametrize("skew", [-30, 30])
def test_timestamp_at_the_limit_is_accepted(skew: int) -> None:
    psk, session, req = tcp_pair("2022-blake3-aes-128-gcm")
    wire, _ = srv_response(
        "2022-blake3-aes-128-gcm", psk, req.salt, [b"ok"], timestamp=int(NOW) + skew
    )
    assert session.decrypt(wire) == b"ok"


@pytest.mark.parametrize("skew", [-31, 31, -3600])
def test_timestamp_skew_fails(skew: int) -> None:
    psk, session, req = tcp_pair("2022-blake3-aes-256-gcm")
    wire, _ = srv_response(
        "2022-blake3-aes-256-gcm", psk, req.salt, [b"no"], timestamp=int(NOW) + skew
    )
    with pytest.raises(ShadowsocksError, match="timestamp"):
        session.decrypt(wire)
    assert session.failed
    with pytest.raises(ShadowsocksError):
        session.decrypt(b"")


def test_client_clock_skew_fails_too() -> None:
    clock = Clock()
    psk, session, req = tcp_pair("2022-blake3-aes-128-gcm", clock=clock)
    wire, _ = srv_response("2022-blake3-aes-128-gcm", psk, req.salt, [b"x"])
    clock.now = NOW + 31
    with pytest.raises(ShadowsocksError, match="timestamp"):
        session.decrypt(wire)


@pytest.mark.parametrize("kind", [0, 2, 255])
def test_wrong_response_type_fails(kind: int) -> None:
    psk, session, req = tcp_pair("2022-blake3-chacha20-poly1305")
    wire, _ = srv_response("2022-blake3-chacha20-poly1305", psk, req.salt, [b"x"], kind=kind)
    with pytest.raises(ShadowsocksError, match="type"):
        session.decrypt(wire)


def test_mismatched_request_salt_fails() -> None:
    psk, session, req = tcp_pair("2022-blake3-aes-128-gcm")
    other = bytes(a ^ 1 for a in req.salt)
    wire, _ = srv_response("2022-blake3-aes-128-gcm", psk, other, [b"x"])
    with pytest.raises(ShadowsocksError, match="request salt"):
        session.decrypt(wire)
    assert session.pending == 0


def test_replayed_response_from_another_connection_fails() -> None:
    method = "2022-blake3-aes-256-gcm"
    psk, b64 = new_psk(method)
    first = Ss2022TcpSession(method, b64, DOMAIN, os.urandom, Clock())
    req = Request(method, psk, first.first_bytes(b"q"))
    recorded, _ = srv_response(method, psk, req.salt, [b"secret answer"])
    assert first.decrypt(recorded) == b"secret answer"
    second = Ss2022TcpSession(method, b64, DOMAIN, os.urandom, Clock())
    second.first_bytes(b"q")
    with pytest.raises(ShadowsocksError, match="request salt"):
        second.decrypt(recorded)


def test_reflected_request_fails() -> None:
    _, b64 = new_psk("2022-blake3-aes-128-gcm")
    session = Ss2022TcpSession("2022-blake3-aes-128-gcm", b64, DOMAIN, os.urandom, Clock())
    request = session.first_bytes(b"x" * 100)
    with pytest.raises(ShadowsocksError):
        session.decrypt(request)


@pytest.mark.parametrize("method", METHODS_2022)
def test_flipped_bit_anywhere_releases_nothing_of_that_chunk(method: str) -> None:
    psk, _, req = tcp_pair(method)
    chunks = [b"alpha", b"bravo!"]
    wire, ends = srv_response(method, psk, req.salt, chunks)
    for pos in range(len(wire)):
        bad = bytearray(wire)
        bad[pos] ^= 1 << (pos % 8)
        for bytewise in (False, True):
            # The same request salt again, so that the response is for this session.
            same = scripted([req.salt])
            session = Ss2022TcpSession(
                method, base64.b64encode(psk).decode(), DOMAIN, same, Clock()
            )
            session.first_bytes(b"GET /")
            out = b""
            try:
                if bytewise:
                    for i in range(len(bad)):
                        out += session.decrypt(bad[i : i + 1])
                else:
                    out += session.decrypt(bytes(bad))
            except ShadowsocksError:
                pass
            else:
                pytest.fail(f"flipped bit at {pos} was accepted")
            damaged = 0 if pos < ends[0] else 1
            assert out == (b"".join(chunks[:damaged]) if bytewise else b"")


def test_truncated_response_fails_at_eof() -> None:
    psk, session, req = tcp_pair("2022-blake3-aes-128-gcm")
    wire, ends = srv_response("2022-blake3-aes-128-gcm", psk, req.salt, [b"one", b"two"])
    assert session.decrypt(wire[: ends[1] - 1]) == b"one"
    with pytest.raises(ShadowsocksError, match="truncated"):
        session.feed_eof()
    psk, session, req = tcp_pair("2022-blake3-aes-128-gcm")
    wire, _ = srv_response("2022-blake3-aes-128-gcm", psk, req.salt, [b"one"])
    assert session.decrypt(wire[:20]) == b""  # an incomplete header
    with pytest.raises(ShadowsocksError, match="truncated"):
        session.feed_eof()


# -- UDP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS_2022)
@pytest.mark.parametrize("dst", [V4, V6, DOMAIN])
def test_udp_client_packets(method: str, dst: Address) -> None:
    server, client = udp_pair(method)
    for i in range(3):
        pkt = server.open_client(client.encrypt(dst, b"payload %d" % i))
        assert pkt.session_id == client.session_id
        assert pkt.packet_id == i
        assert pkt.kind == 0
        assert pkt.timestamp == int(NOW)
        assert pkt.padding == b""
        assert pkt.addr == dst
        assert pkt.payload == b"payload %d" % i
    assert client.next_packet_id == 3


@pytest.mark.parametrize("method", METHODS_2022)
def test_udp_dns_queries_and_empty_packets_are_padded(method: str) -> None:
    server, client = udp_pair(method)
    query = b"\xab\xcd" + bytes(30)
    pkt = server.open_client(client.encrypt(DNS, query))
    assert 1 <= len(pkt.padding) <= MAX_PADDING - len(query)
    assert pkt.payload == query
    pkt = server.open_client(client.encrypt(V4, b""))
    assert 1 <= len(pkt.padding) <= MAX_PADDING


def test_udp_session_ids_are_random() -> None:
    _, a = udp_pair("2022-blake3-aes-128-gcm")
    _, b = udp_pair("2022-blake3-aes-128-gcm")
    assert len(a.session_id) == 8
    assert a.session_id != b.session_id


@pytest.mark.parametrize("method", METHODS_2022)
def test_udp_server_packets(method: str) -> None:
    server, client = udp_pair(method)
    for i, addr in enumerate([V4, V6, DOMAIN]):
        pkt = server.seal(client.session_id, addr, b"answer %d" % i, padding=i * 7)
        assert client.decrypt(pkt) == (addr, b"answer %d" % i)
    assert client.server_sessions == (server.session_id,)


@pytest.mark.parametrize("method", METHODS_2022)
def test_udp_replayed_packet_is_rejected(method: str) -> None:
    server, client = udp_pair(method)
    pkt = server.seal(client.session_id, V4, b"once")
    assert client.decrypt(pkt) == (V4, b"once")
    with pytest.raises(ShadowsocksError, match="replayed"):
        client.decrypt(pkt)


def test_udp_reordering_within_the_window_is_accepted() -> None:
    server, client = udp_pair("2022-blake3-aes-128-gcm")
    packets = [server.seal(client.session_id, V4, b"%d" % i) for i in range(20)]
    for i in [5, 0, 19, 3, 4, 18, 1]:
        assert client.decrypt(packets[i]) == (V4, b"%d" % i)
    with pytest.raises(ShadowsocksError, match="replayed"):
        client.decrypt(packets[3])


def test_udp_packet_far_behind_the_window_is_rejected() -> None:
    server, client = udp_pair("2022-blake3-aes-256-gcm")
    old = server.seal(client.session_id, V4, b"old", packet_id=10)
    assert client.decrypt(server.seal(client.session_id, V4, b"new", packet_id=10 + 4096)) == (
        V4,
        b"new",
    )
    with pytest.raises(ShadowsocksError, match="too old"):
        client.decrypt(old)
    # One inside the window still gets in.
    assert client.decrypt(server.seal(client.session_id, V4, b"ok", packet_id=11)) == (V4, b"ok")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"timestamp": int(NOW) + 31}, "timestamp"),
        ({"timestamp": int(NOW) - 31}, "timestamp"),
        ({"kind": 0}, "type"),
    ],
)
def test_udp_invalid_packet_does_not_consume_its_id(kwargs: dict[str, int], match: str) -> None:
    server, client = udp_pair("2022-blake3-chacha20-poly1305")
    bad = server.seal(client.session_id, V4, b"bad", packet_id=7, **kwargs)
    with pytest.raises(ShadowsocksError, match=match):
        client.decrypt(bad)
    assert client.server_sessions == ()  # nothing remembered from a rejected packet
    assert client.decrypt(server.seal(client.session_id, V4, b"good", packet_id=7)) == (V4, b"good")


def test_udp_other_client_session_is_rejected() -> None:
    server, client = udp_pair("2022-blake3-aes-128-gcm")
    with pytest.raises(ShadowsocksError, match="another client session"):
        client.decrypt(server.seal(os.urandom(8), V4, b"x"))


def test_udp_reflected_packet_is_rejected() -> None:
    for method in METHODS_2022:
        _, client = udp_pair(method)
        with pytest.raises(ShadowsocksError, match="own session id"):
            client.decrypt(client.encrypt(V4, b"echo"))


@pytest.mark.parametrize("method", METHODS_2022)
def test_udp_flipped_bits_and_truncation(method: str) -> None:
    server, client = udp_pair(method)
    pkt = server.seal(client.session_id, DOMAIN, b"data")
    for pos in range(len(pkt)):
        bad = bytearray(pkt)
        bad[pos] ^= 1 << (pos % 8)
        with pytest.raises(ShadowsocksError):
            client.decrypt(bytes(bad))
    for cut in (0, 10, 40, len(pkt) - 1):
        with pytest.raises(ShadowsocksError):
            client.decrypt(pkt[:cut])
    assert client.decrypt(pkt) == (DOMAIN, b"data")


def test_udp_server_sessions_current_and_previous_only() -> None:
    clock = Clock()
    method = "2022-blake3-aes-128-gcm"
    psk, b64 = new_psk(method)
    client = Ss2022UdpClient(method, b64, os.urandom, clock)
    a, b, c = SrvUdp(method, psk), SrvUdp(method, psk), SrvUdp(method, psk)
    assert client.decrypt(a.seal(client.session_id, V4, b"a1"))[1] == b"a1"
    clock.now += 5
    assert client.decrypt(b.seal(client.session_id, V4, b"b1"))[1] == b"b1"  # a server restart
    assert client.server_sessions == (b.session_id, a.session_id)
    clock.now += 5
    assert client.decrypt(a.seal(client.session_id, V4, b"a2"))[1] == b"a2"  # old still heard
    with pytest.raises(ShadowsocksError, match="more than once"):
        client.decrypt(c.seal(client.session_id, V4, b"c1", timestamp=int(clock.now)))
    clock.now += 60  # the old session has been silent for 60 s
    assert (
        client.decrypt(c.seal(client.session_id, V4, b"c2", timestamp=int(clock.now)))[1] == b"c2"
    )
    assert client.server_sessions == (c.session_id, b.session_id)


def test_udp_packet_id_exhaustion() -> None:
    _, client = udp_pair("2022-blake3-aes-128-gcm")
    client._packet_id = (1 << 64) - 1
    client.encrypt(V4, b"last")
    with pytest.raises(ShadowsocksError, match="exhausted"):
        client.encrypt(V4, b"one too many")


# -- the replay window -------------------------------------------------------------------------


def test_replay_window() -> None:
    w = ReplayWindow(size=64)
    assert w.highest == -1
    assert w.check(0)
    w.add(0)
    assert not w.check(0)
    w.add(100)
    assert w.check(50)
    assert not w.check(36)  # 100 - 36 = 64: outside
    assert w.check(37)
    w.add(37)
    assert not w.check(37)
    w.add(1 << 63)  # a huge jump must not build a huge integer
    assert w.highest == 1 << 63
    assert not w.check(100)
    assert w._bits.bit_length() <= 64
    with pytest.raises(ValueError):
        ReplayWindow(size=0)


@settings(max_examples=50)
@given(ids=st.lists(st.integers(0, 300), max_size=80))
def test_replay_window_matches_a_set(ids: list[int]) -> None:
    w = ReplayWindow(size=32)
    seen: set[int] = set()
    for i in ids:
        expect = i not in seen and (not seen or i > max(seen) - 32)
        assert w.check(i) == expect
        if expect:
            w.add(i)
            seen.add(i)
