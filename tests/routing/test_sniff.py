"""Domain sniffing: SNI from real ClientHellos (made by the ssl module) and HTTP Host."""

from __future__ import annotations

import random
import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tun2proxy.dns.pool import normalize_name
from tun2proxy.routing.sniff import MAX_CLIENT_HELLO, MAX_HTTP_HEADER, SniffResult, sniff_host

# ----------------------------------------------------------------------------- helpers


def openssl_hello(
    server_hostname: str | None, max_version: ssl.TLSVersion | None = None
) -> bytes:
    """The first flight of a real TLS client (OpenSSL through the ssl module)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if max_version is not None:
        ctx.maximum_version = max_version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        return outgoing.read()
    raise AssertionError("the handshake cannot complete without a server")


def handshake_bytes(records: bytes) -> bytes:
    """The handshake bytes carried by a stream of TLS records."""
    out = b""
    pos = 0
    while pos < len(records):
        length = struct.unpack_from("!H", records, pos + 3)[0]
        out += records[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return out


def reframe(handshake: bytes, size: int, version: int = 0x0301) -> bytes:
    """The handshake bytes split into records of ``size`` bytes (RFC 8446 §5.1 allows it)."""
    out = b""
    for i in range(0, len(handshake), size):
        frag = handshake[i : i + size]
        out += struct.pack("!BHH", 22, version, len(frag)) + frag
    return out


def ext(etype: int, data: bytes) -> bytes:
    """One extension."""
    return struct.pack("!HH", etype, len(data)) + data


def sni_ext(*entries: tuple[int, bytes]) -> bytes:
    """A server_name extension with the given (name_type, name) entries."""
    body = b"".join(struct.pack("!BH", t, len(n)) + n for t, n in entries)
    return ext(0, struct.pack("!H", len(body)) + body)


def host_sni(name: str | bytes) -> bytes:
    """A server_name extension with one host_name."""
    return sni_ext((0, name.encode() if isinstance(name, str) else name))


def hello_body(
    extensions: list[bytes] | None,
    *,
    suites: bytes = b"\x13\x01\x13\x02",
    session_id: bytes = b"\x11" * 32,
    version: int = 0x0303,
) -> bytes:
    """A ClientHello body (RFC 8446 §4.1.2)."""
    body = struct.pack("!H", version) + b"\x5a" * 32
    body += bytes([len(session_id)]) + session_id
    body += struct.pack("!H", len(suites)) + suites
    body += b"\x01\x00"
    if extensions is not None:
        exts = b"".join(extensions)
        body += struct.pack("!H", len(exts)) + exts
    return body


def handshake(body: bytes, msg_type: int = 1) -> bytes:
    """A handshake message."""
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def record(hs: bytes) -> bytes:
    """One handshake record."""
    return struct.pack("!BHH", 22, 0x0301, len(hs)) + hs


def hello(extensions: list[bytes] | None, **kw: object) -> bytes:
    """A whole ClientHello record."""
    return record(handshake(hello_body(extensions, **kw)))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tls13() -> bytes:
    return openssl_hello("www.Example.COM")


@pytest.fixture(scope="module")
def tls12() -> bytes:
    return openssl_hello("api.example.org", ssl.TLSVersion.TLSv1_2)


def assert_prefixes(data: bytes, expected: SniffResult) -> None:
    """Every proper prefix needs more (or already has the name); the whole gives ``expected``."""
    found_at = None
    for k in range(len(data)):
        r = sniff_host(data[:k])
        if found_at is None and r.host is None:
            assert r.need_more, (k, r)
            assert r.protocol in (None, expected.protocol)
            if k:
                assert r.protocol == expected.protocol
        else:
            assert r.host == expected.host, (k, r)
            found_at = found_at if found_at is not None else k
    assert sniff_host(data) == expected


# ----------------------------------------------------------------------- real TLS hellos


def test_tls13_client_hello(tls13: bytes) -> None:
    assert sniff_host(tls13) == SniffResult("www.example.com", "tls", False)


def test_tls12_client_hello(tls12: bytes) -> None:
    assert tls12[1:3] in (b"\x03\x01", b"\x03\x03")
    assert sniff_host(tls12) == SniffResult("api.example.org", "tls", False)


def test_no_sni_and_ip_hostname_send_no_name() -> None:
    for name in (None, "127.0.0.1", "::1"):
        r = sniff_host(openssl_hello(name))
        assert r == SniffResult(None, "tls", False, "no-host"), name


def test_every_prefix_of_real_hellos(tls13: bytes, tls12: bytes) -> None:
    for data, host in ((tls13, "www.example.com"), (tls12, "api.example.org")):
        assert_prefixes(data, SniffResult(host, "tls", False))
    assert_prefixes(openssl_hello(None), SniffResult(None, "tls", False, "no-host"))


def test_name_is_returned_once_its_extension_is_complete() -> None:
    big = ext(51, b"\x00" * 1200)  # a post-quantum-sized key share after the name
    data = hello([host_sni("a.example"), big])
    end_of_sni = 5 + 4 + len(hello_body([])) + len(host_sni("a.example"))
    assert sniff_host(data[: end_of_sni - 1]).need_more
    assert sniff_host(data[:end_of_sni]).host == "a.example"


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 64, 100, 16384])
def test_client_hello_split_across_records(tls13: bytes, size: int) -> None:
    data = reframe(handshake_bytes(tls13), size)
    assert sniff_host(data) == SniffResult("www.example.com", "tls", False)


def test_every_prefix_of_a_fragmented_hello(tls13: bytes) -> None:
    data = reframe(handshake_bytes(tls13), 7)
    assert_prefixes(data, SniffResult("www.example.com", "tls", False))


def test_bytes_after_the_hello_are_ignored(tls13: bytes) -> None:
    early_data = struct.pack("!BHH", 23, 0x0303, 3) + b"abc"
    assert sniff_host(tls13 + early_data + b"\xff" * 50).host == "www.example.com"
    assert sniff_host(bytearray(tls13)).host == "www.example.com"
    assert sniff_host(memoryview(tls13)).host == "www.example.com"


# ------------------------------------------------------------------- built TLS hellos


def test_grease_and_padding_extensions() -> None:
    exts = [
        ext(0x0A0A, b""),
        ext(0x1A1A, b"\x00"),
        ext(21, b"\x00" * 512),  # padding (RFC 7685)
        ext(10, b"\x00\x04\x0a\x0a\x00\x1d"),  # supported_groups with a GREASE group
        host_sni("grease.example"),
        ext(0xFAFA, b""),
    ]
    data = hello(exts, suites=b"\x3a\x3a\x13\x01\x13\x03")
    assert sniff_host(data) == SniffResult("grease.example", "tls", False)
    assert_prefixes(data, SniffResult("grease.example", "tls", False))


def test_other_name_types_are_skipped() -> None:
    data = hello([sni_ext((7, b"opaque"), (0, b"named.example"))])
    assert sniff_host(data).host == "named.example"


def test_no_extensions_is_a_valid_tls12_hello() -> None:
    assert sniff_host(hello(None)) == SniffResult(None, "tls", False, "no-host")


def test_empty_session_id_and_tls10_version() -> None:
    data = hello([host_sni("old.example")], session_id=b"", version=0x0301)
    assert sniff_host(data).host == "old.example"


@pytest.mark.parametrize(
    ("name", "host", "reason"),
    [
        ("Mixed.Case.Example", "mixed.case.example", ""),
        ("trailing.dot.example.", "trailing.dot.example", ""),
        ("under_score.example", "under_score.example", ""),
        ("xn--bcher-kva.example", "xn--bcher-kva.example", ""),
        ("192.0.2.1", None, "ip-literal"),  # RFC 6066 §3: literal addresses not permitted
        ("2001:db8::1", None, "ip-literal"),
        ("[2001:db8::1]", None, "ip-literal"),
        ("0x7f000001", None, "ip-literal"),  # inet_aton would read these as addresses
        ("127.1", None, "ip-literal"),
        ("host.123", None, "ip-literal"),
        ("bad name.example", None, "bad-name"),
        ("a..b", None, "bad-name"),
        ("-lead.example", None, "bad-name"),
        ("x" * 64 + ".example", None, "bad-name"),
        (".", None, "bad-name"),
        ("evil.example/path", None, "bad-name"),
        ("evil.example\r\nX: y", None, "bad-name"),
    ],
)
def test_sni_names_are_normalised_and_validated(
    name: str, host: str | None, reason: str
) -> None:
    r = sniff_host(hello([host_sni(name)]))
    assert (r.host, r.protocol, r.need_more, r.reason) == (host, "tls", False, reason)


def test_non_ascii_sni_is_refused() -> None:
    r = sniff_host(hello([host_sni("bücher.example".encode())]))
    assert (r.host, r.reason) == (None, "bad-name")


def _bad_hellos() -> dict[str, bytes]:
    good_body = hello_body([host_sni("x.example")])
    sni = host_sni("x.example")
    split = reframe(handshake(good_body), 10)
    return {
        "content type alert": b"\x15" + hello([sni])[1:],
        "record version 2.x": b"\x16\x02" + hello([sni])[2:],
        "record minor 5": b"\x16\x03\x05" + hello([sni])[3:],
        "record too long": struct.pack("!BHH", 22, 0x0301, 16385) + b"\x01",
        "zero-length record": struct.pack("!BHH", 22, 0x0301, 0) + hello([sni]),
        "server hello": record(handshake(good_body, msg_type=2)),
        "second record not handshake": split[:15] + b"\x17" + split[16:],
        "hello version 2.x": record(handshake(hello_body([sni], version=0x0203))),
        "session id 33": record(handshake(hello_body([sni], session_id=b"\x00" * 33))),
        "odd cipher suites": record(handshake(hello_body([sni], suites=b"\x13\x01\x13"))),
        "no cipher suites": record(handshake(hello_body([sni], suites=b""))),
        "no compression": record(
            handshake(good_body.replace(b"\x01\x00" + struct.pack("!H", len(sni)), b"\x00", 1))
        ),
        "extensions longer than message": record(handshake(good_body[:-1])),
        "trailing byte after extensions": record(handshake(good_body + b"\x00")),
        "extension overruns block": hello([ext(5, b"\x00" * 4)[:-2] + b"\x00\x09"]),
        "two host names": hello([sni_ext((0, b"a.example"), (0, b"b.example"))]),
        "empty host name": hello([sni_ext((0, b""))]),
        "server name list too short": hello([ext(0, b"\x00\x04\x00\x00\x02ab")]),
        "server name list too long": hello([ext(0, b"\x00\x06\x00\x00\x02ab")]),
        "host name overruns list": hello([ext(0, b"\x00\x05\x00\x00\x03ab")]),
        "server name list empty": hello([ext(0, b"\x00\x00")]),
    }


@pytest.mark.parametrize("case", sorted(_bad_hellos()))
def test_malformed_hellos_give_no_name(case: str) -> None:
    r = sniff_host(_bad_hellos()[case])
    assert r.host is None and not r.need_more, r


def test_oversized_hello_is_refused_without_waiting() -> None:
    data = struct.pack("!BHH", 22, 0x0301, 4) + b"\x01" + (MAX_CLIENT_HELLO + 1).to_bytes(3, "big")
    assert sniff_host(data) == SniffResult(None, "tls", False, "too-large")
    ok = struct.pack("!BHH", 22, 0x0301, 4) + b"\x01" + MAX_CLIENT_HELLO.to_bytes(3, "big")
    assert sniff_host(ok).need_more


def test_largest_hello_in_tiny_records_is_read() -> None:
    pad = MAX_CLIENT_HELLO - len(hello_body([host_sni("big.example"), ext(21, b"")]))
    body = hello_body([ext(21, b"\x00" * pad), host_sni("big.example")])
    assert len(body) == MAX_CLIENT_HELLO
    data = reframe(handshake(body), 3)
    assert sniff_host(data).host == "big.example"
    assert sniff_host(data[:-1]).need_more


def test_partial_record_headers() -> None:
    assert sniff_host(b"\x16") == SniffResult(None, "tls", True, "need-more")
    assert sniff_host(b"\x16\x03\x01\x02") .need_more
    assert not sniff_host(b"\x16\x02").need_more
    assert not sniff_host(b"\x16\x03\x09").need_more
    assert not sniff_host(b"\x16\x03\x01\x41").need_more  # longer than 2^14
    assert not sniff_host(b"\x16\x03\x01\x00\x05\x02").need_more  # not a ClientHello


# --------------------------------------------------------------------------------- HTTP


@pytest.mark.parametrize(
    ("request_bytes", "host"),
    [
        (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", "example.com"),
        (b"GET / HTTP/1.1\r\nhost: Example.COM\r\n\r\n", "example.com"),
        (b"GET / HTTP/1.1\r\nHOST:example.com\r\n\r\n", "example.com"),
        (b"GET / HTTP/1.1\r\nHost: \t example.com \t \r\n\r\n", "example.com"),
        (b"GET / HTTP/1.1\r\nHost: example.com:8080\r\n\r\n", "example.com"),
        (b"GET / HTTP/1.1\r\nHost: example.com:\r\n\r\n", "example.com"),
        (b"GET / HTTP/1.1\r\nHost: example.com.\r\n\r\n", "example.com"),
        (b"POST /x?y=1 HTTP/1.0\nUser-Agent: t\nHost: a.example\n\n", "a.example"),
        (b"GET  /  HTTP/1.1\r\nHost: spaced.example\r\n\r\n", "spaced.example"),
        (b"GET\t/\tHTTP/1.1\r\nHost: tabs.example\r\n\r\n", "tabs.example"),
        (b"\r\nGET / HTTP/1.1\r\nHost: lead.example\r\n\r\n", "lead.example"),
        (
            b"GET / HTTP/1.1\r\nAccept: */*\r\nCookie: a=b; c=d\r\nHost: late.example\r\n"
            b"Connection: close\r\n\r\nbody bytes",
            "late.example",
        ),
        (b"GET http://abs.example:81/p HTTP/1.1\r\nHost: other.example\r\n\r\n", "abs.example"),
        (b"GET http://user:pw@abs.example/ HTTP/1.1\r\n\r\n", "abs.example"),
        (b"CONNECT tunnel.example:443 HTTP/1.1\r\nHost: tunnel.example:443\r\n\r\n",
         "tunnel.example"),
        (b"OPTIONS * HTTP/1.1\r\nHost: star.example\r\n\r\n", "star.example"),
        (b"PROPFIND /dav HTTP/1.1\r\nHost: dav.example\r\n\r\n", "dav.example"),
    ],
)
def test_http_host(request_bytes: bytes, host: str) -> None:
    assert sniff_host(request_bytes) == SniffResult(host, "http", False)


@pytest.mark.parametrize(
    ("request_bytes", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n\r\n", "ip-literal"),
        (b"GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n", "ip-literal"),
        (b"GET / HTTP/1.1\r\nHost: 192.0.2.7:80\r\n\r\n", "ip-literal"),
        (b"GET http://[::1]:80/ HTTP/1.1\r\n\r\n", "ip-literal"),
        (b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n", "no-host"),
        (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", "no-host"),
        (b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", "bad-name"),
        (b"GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n", "bad-name"),
        (b"GET / HTTP/1.1\r\nHost: [nothex]\r\n\r\n", "bad-name"),
        (b"GET / HTTP/1.1\r\nHost: a.example:http\r\n\r\n", "bad-name"),
        (b"GET / HTTP/1.1\r\nHost: a b.example\r\n\r\n", "bad-name"),
        (b"GET / HTTP/1.1\r\nHost: caf\xc3\xa9.example\r\n\r\n", "bad-name"),
    ],
)
def test_http_without_usable_name(request_bytes: bytes, reason: str) -> None:
    assert sniff_host(request_bytes) == SniffResult(None, "http", False, reason)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",  # RFC 9112 §3.2
        b"GET / HTTP/1.1\r\nHost : a.example\r\n\r\n",  # RFC 9112 §5.1
        b"GET / HTTP/1.1\r\nX: 1\r\n folded\r\nHost: a.example\r\n\r\n",  # obs-fold
        b"GET / HTTP/2.0\r\nHost: a.example\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\nHost: a.example\r\n\r\n",
        b"GET /\x01 HTTP/1.1\r\nHost: a.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET relative HTTP/1.1\r\nHost: a.example\r\n\r\n",
        b"CONNECT /path HTTP/1.1\r\n\r\n",
        b"GET http:///nohost HTTP/1.1\r\n\r\n",
    ],
)
def test_malformed_http(request_bytes: bytes) -> None:
    r = sniff_host(request_bytes)
    assert r.host is None and not r.need_more and r.reason == "malformed", r


@pytest.mark.parametrize(
    "data",
    [
        b"FOO / HTTP/1.1\r\nHost: a.example\r\n\r\n",
        b"get / HTTP/1.1\r\nHost: a.example\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # HTTP/2 prior-knowledge preface
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x00\x01\x02",
        b"GETX",
        b"\r\n\r\n\r\n",
    ],
)
def test_not_tls_or_http(data: bytes) -> None:
    r = sniff_host(data)
    assert (r.host, r.protocol, r.need_more) == (None, None, False), r


def test_empty_input_needs_more() -> None:
    assert sniff_host(b"") == SniffResult(None, None, True, "need-more")


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: split.example:8443\r\nAccept: */*\r\n\r\n",
        b"POST http://abs.example/ HTTP/1.0\nContent-Length: 0\n\n",
        b"\r\nCONNECT c.example:443 HTTP/1.1\r\n\r\n",
    ],
)
def test_every_prefix_of_an_http_request(data: bytes) -> None:
    full = sniff_host(data)
    assert full.host is not None
    for k in range(1, len(data)):
        r = sniff_host(data[:k])
        assert r.need_more and r.host is None, (k, data[:k], r)
        assert r.protocol in ("http", None)


@pytest.mark.parametrize(
    "prefix",
    [b"GET / HTTP/2", b"GET / HTTQ", b"GET / HTTP/1.1 x y", b"GET / HTTP/1.1\r\nHost : a",
     b"GET / HTTP/1.1\r\n folded", b"GET / HTTP/1.1\r\nBad\r", b"GET /\x00", b"GET / HTTP/1.1 x\r"],
)
def test_invalid_prefixes_stop_waiting(prefix: bytes) -> None:
    assert not sniff_host(prefix).need_more


def test_http_header_block_is_bounded() -> None:
    start = b"GET / HTTP/1.1\r\nHost: big.example\r\n"
    filler = b"X-Pad: " + b"a" * 100 + b"\r\n"
    data = start + filler * (MAX_HTTP_HEADER // len(filler) + 1)
    assert sniff_host(data) == SniffResult(None, "http", False, "too-large")
    assert sniff_host(data[:MAX_HTTP_HEADER - 200]).need_more
    long_line = b"GET /" + b"a" * MAX_HTTP_HEADER
    assert sniff_host(long_line) == SniffResult(None, "http", False, "too-large")


# --------------------------------------------------------------------------- properties


def _check(r: SniffResult) -> None:
    assert isinstance(r, SniffResult)
    assert r.protocol in (None, "tls", "http")
    assert isinstance(r.need_more, bool)
    if r.host is not None:
        assert not r.need_more and r.protocol is not None and r.reason == ""
        assert normalize_name(r.host) == r.host
    else:
        assert r.reason


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    _check(sniff_host(data))


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([b"\x16\x03\x01", b"\x16\x03\x03\x02\x00\x01", b"GET ", b"CONNECT ",
                        b"GET / HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHost: "]),
       st.binary(max_size=400))
def test_plausible_starts_never_raise(start: bytes, rest: bytes) -> None:
    _check(sniff_host(start + rest))


def _seed_hellos() -> list[bytes]:
    out = [openssl_hello("seed.example"), openssl_hello(None)]
    out.append(hello([ext(0x0A0A, b""), ext(21, b"\x00" * 40), host_sni("built.example")]))
    out.append(reframe(handshake_bytes(out[0]), 50))
    return out


SEED_HELLOS = _seed_hellos()


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 4))]
        else:
            del data[i:]
    return bytes(data)


@settings(max_examples=150, deadline=None)
@given(mutated(SEED_HELLOS))
def test_mutated_client_hellos_never_raise(data: bytes) -> None:
    _check(sniff_host(data))


HTTP_SEEDS = [
    b"GET / HTTP/1.1\r\nHost: seed.example:80\r\nAccept: */*\r\n\r\n",
    b"CONNECT [::1]:443 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://u@abs.example/ HTTP/1.0\n\n",
]


@settings(max_examples=100, deadline=None)
@given(mutated(HTTP_SEEDS))
def test_mutated_http_requests_never_raise(data: bytes) -> None:
    _check(sniff_host(data))


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(SEED_HELLOS[:1] + SEED_HELLOS[2:]), st.integers(1, 300))
def test_any_record_size_gives_the_same_name(data: bytes, size: int) -> None:
    expected = sniff_host(data).host
    assert expected is not None
    assert sniff_host(reframe(handshake_bytes(data), size)).host == expected


def test_seeded_fuzz_of_hellos_and_requests() -> None:
    """Many cheap seeded mutations (hypothesis above explores fewer, smarter ones)."""
    rng = random.Random(6066)
    seeds = SEED_HELLOS + HTTP_SEEDS
    for _ in range(6000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(data)) if data else 0
            op = rng.randrange(4)
            if op == 0 and data:
                data[i] = rng.randrange(256)
            elif op == 1:
                data[i:i] = rng.randbytes(rng.randint(1, 3))
            elif op == 2:
                del data[i : i + rng.randint(1, 3)]
            else:
                del data[rng.randint(i, len(data)):]
        _check(sniff_host(bytes(data)))
