"""Hostile addresses (issue 15 item 1): special sources and destinations never make a flow.

Whoever can send packets into the TUN (a local process, the command of ``--unshare``, which
is root in its namespace and can inject raw packets) chooses both addresses. Every special
form — loopback, unspecified, "this network", multicast, broadcast, reserved, link-local and
site-local, and the IPv6 forms that embed an IPv4 address (mapped, compatible, translated,
NAT64, 6to4, Teredo) — is checked here for TCP SYNs, UDP datagrams and ICMP echo requests,
over IPv4 and IPv6, as destination and as source, in the pure stack; the classifier is
compared with :mod:`ipaddress` as an independent oracle on random addresses; and the
``direct://`` upstream's second check (a *name* that resolves to loopback) is exercised
against real sockets on loopback. The end-to-end test is ``tests/e2e/test_hostile_addresses.py``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tun2proxy.errors import UpstreamError
from tun2proxy.proxy.address import Address
from tun2proxy.stack import NetStack, StackConfig, TcpConnectRequest, UdpDatagram
from tun2proxy.testing import icmp_echo_request, tcp_packet, udp_packet
from tun2proxy.testing.packets import pack
from tun2proxy.upstream import DirectUpstream
from tun2proxy.upstream.base import FlowInfo
from tun2proxy.upstream.dial import connect_tcp, local_destination
from tun2proxy.upstream.resolve import SystemResolver
from tun2proxy.wire import ACK, SYN, unreachable
from tun2proxy.wire.addrclass import SCOPED, bad_destination, bad_source, classify, dial_refused

APP = {4: "10.0.0.1", 6: "fd00::1"}
SERVER = {4: "192.0.2.10", 6: "2001:db8::10"}

#: (address, class): every special form, with its edges.
SPECIAL = [
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "this-network"),
    ("0.255.255.255", "this-network"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("224.0.0.251", "multicast"),
    ("239.255.255.250", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.254", "reserved"),
    ("169.254.169.254", "link-local"),
    ("169.254.0.0", "link-local"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("ff02::fb", "multicast"),
    ("ff05::1:3", "multicast"),
    ("fe80::1", "link-local"),
    ("febf:ffff::1", "link-local"),
    ("fec0::1", "site-local"),
    ("feff::1", "site-local"),
    ("::ffff:127.0.0.1", "mapped-loopback"),
    ("::ffff:127.1.2.3", "mapped-loopback"),
    ("::ffff:0.0.0.0", "mapped-unspecified"),
    ("::ffff:0.0.0.7", "mapped-this-network"),
    ("::ffff:224.0.0.1", "mapped-multicast"),
    ("::ffff:255.255.255.255", "mapped-broadcast"),
    ("::ffff:250.1.2.3", "mapped-reserved"),
    ("::ffff:169.254.169.254", "mapped-link-local"),
    ("::127.0.0.1", "compat-loopback"),
    ("::0.0.0.2", "compat-this-network"),
    ("::224.1.1.1", "compat-multicast"),
    ("::169.254.1.1", "compat-link-local"),
    ("::ffff:0:127.0.0.1", "translated-loopback"),
    ("::ffff:0:0.0.0.0", "translated-unspecified"),
    ("64:ff9b::127.0.0.1", "nat64-loopback"),
    ("64:ff9b::0.0.0.0", "nat64-unspecified"),
    ("64:ff9b::224.0.0.1", "nat64-multicast"),
    ("64:ff9b::255.255.255.255", "nat64-broadcast"),
    ("64:ff9b:1::127.0.0.1", "nat64-loopback"),  # RFC 8215 local use, /96 layout
    ("64:ff9b:1:ffff:ffff:ffff:7f00:1", "nat64-loopback"),  # /96, other prefix bits
    ("64:ff9b:1:7f00:0:100::", "nat64-loopback"),  # /48 layout: 127.0 | u | 0.1
    ("64:ff9b:1:ab7f:0:1::", "nat64-loopback"),  # /56 layout: 127 | u | 0.0.1
    ("64:ff9b:1:abcd:7f:0:100:0", "nat64-loopback"),  # /64 layout: u | 127.0.0.1
    # Ambiguous: the /48 layout of 192.0.2.1 is also the /56 one of 0.2.1.0: refused.
    ("64:ff9b:1:c000:2:100::", "nat64-this-network"),
    ("2002:7f00:1::1", "6to4-loopback"),
    ("2002::1", "6to4-unspecified"),
    ("2002:e000:1::", "6to4-multicast"),
    ("2001:0:7f00:1:0:0:3fff:fdfe", "teredo-loopback"),  # server 127.0.0.1
    ("2001:0:c000:201:0:0:80ff:fffe", "teredo-loopback"),  # client ~7f.00.00.01
]
#: Ordinary destinations and sources, also in every embedding form.
ORDINARY = [
    "192.0.2.1", "8.8.8.8", "10.1.2.3", "100.64.0.1", "172.16.0.1", "1.0.0.0",
    "126.255.255.255", "128.0.0.0", "169.253.255.255", "169.255.0.0", "223.255.255.255",
    "2001:db8::1", "2a00:1450::1", "fd00::2", "fc00::1", "100::1", "fe00::1",
    "::ffff:192.0.2.1", "::ffff:8.8.8.8", "::8.8.8.8", "::ffff:0:8.8.8.8",
    "64:ff9b::192.0.2.1", "64:ff9b::10.0.0.1", "64:ff9b:1::c000:201", "64:ff9b:2::7f00:1",
    "2002:c000:201::1", "2001:0:c000:201:0:0:3fff:fdfe", "2001:1::1",
]


def _v(addr: str) -> int:
    return 6 if ":" in addr else 4


def make_stack(**kw: object) -> NetStack:
    return NetStack(StackConfig(isn_secret=b"0123456789abcdef", **kw))  # type: ignore[arg-type]


# ------------------------------------------------------------------------- the classifier


@pytest.mark.parametrize(("addr", "cls"), SPECIAL)
def test_every_special_form_is_classified(addr: str, cls: str) -> None:
    a = pack(addr)
    assert classify(a) == cls
    assert bad_destination(a) == cls  # refused as a destination...
    scoped = cls in SCOPED
    assert bad_destination(a, allow_scoped=True) == ("" if scoped else cls)  # ...unless opted in
    assert bad_source(a) == ("" if scoped else cls)  # scoped sources are legitimate
    assert dial_refused(a) == ("" if scoped else cls)


@pytest.mark.parametrize("addr", ORDINARY)
def test_ordinary_addresses_are_ordinary(addr: str) -> None:
    a = pack(addr)
    assert classify(a) == ""
    assert bad_destination(a) == bad_source(a) == dial_refused(a) == ""


_V4_SPECIAL = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4", "169.254.0.0/16")]
_V6_SPECIAL = [ipaddress.ip_network(n) for n in (
    "::/128", "::1/128", "ff00::/8", "fe80::/10", "fec0::/10")]


def _oracle4(ip: ipaddress.IPv4Address) -> bool:
    return any(ip in n for n in _V4_SPECIAL)


def _oracle6(ip: ipaddress.IPv6Address) -> bool | None:
    """Whether ``ip`` is special, by :mod:`ipaddress`'s own parsing of every form (None:
    the RFC 8215 local-use prefix, whose layout the address does not tell)."""
    if any(ip in n for n in _V6_SPECIAL):
        return True
    if ip in ipaddress.ip_network("64:ff9b:1::/48"):
        return None
    v4 = int(ip) & 0xFFFFFFFF
    if ip.ipv4_mapped is not None:
        return _oracle4(ip.ipv4_mapped)
    for prefix in ("::/96", "::ffff:0:0:0/96", "64:ff9b::/96"):
        if ip in ipaddress.ip_network(prefix):
            return _oracle4(ipaddress.IPv4Address(v4))
    if ip.sixtofour is not None:
        return _oracle4(ip.sixtofour)
    if ip.teredo is not None:
        server, client = ip.teredo
        return _oracle4(server) or _oracle4(client)
    return False


@settings(max_examples=3000)
@given(st.binary(min_size=4, max_size=4))
def test_ipv4_classifier_agrees_with_ipaddress(a: bytes) -> None:
    assert bool(classify(a)) == _oracle4(ipaddress.IPv4Address(a))


#: IPv6 addresses biased towards the special prefixes, so every branch is hit often.
_PREFIXES = [b"", b"\x00" * 10 + b"\xff\xff", b"\x00" * 12, b"\x00" * 8 + b"\xff\xff\x00\x00",
             b"\x00\x64\xff\x9b" + b"\x00" * 8, b"\x20\x02", b"\x20\x01\x00\x00", b"\xfe",
             b"\xff", b"\x00\x64\xff\x9b\x00\x01"]
_V4_INTERESTING = st.sampled_from([b"\x7f", b"\x00", b"\xe0", b"\xff", b"\xa9\xfe", b"\xc0"])


@st.composite
def _ipv6(draw: st.DrawFn) -> bytes:
    prefix = draw(st.sampled_from(_PREFIXES))
    rest = draw(st.binary(min_size=16 - len(prefix), max_size=16 - len(prefix)))
    if len(prefix) == 12 and draw(st.booleans()):  # embed an interesting IPv4 address
        head = draw(_V4_INTERESTING)
        rest = head + rest[len(head):]
    return prefix + rest


@settings(max_examples=5000)
@given(_ipv6())
def test_ipv6_classifier_agrees_with_ipaddress(a: bytes) -> None:
    expected = _oracle6(ipaddress.IPv6Address(a))
    got = bool(classify(a))
    if expected is None:  # local-use NAT64: at least the /96 layout is always checked
        if _oracle4(ipaddress.IPv4Address(a[12:])):
            assert got
    else:
        assert got == expected, ipaddress.IPv6Address(a)


# ------------------------------------------------------------------------- the stack


def _syn(src: str | bytes, dst: str | bytes) -> bytes:
    return tcp_packet(src, dst, 40000, 1080, flags=SYN)


def _expect_refused(
    stack: NetStack, drop: str, refused: str, packets: int = 1
) -> None:
    assert stack.events() == []
    assert stack.poll(0.0) == []  # never answered: no RST, no reply, no ICMP
    s = stack.stats()
    assert s["drops"] == {drop: packets}
    assert s["addresses_refused"] == {refused: packets}
    assert s["tcp_flows"] == 0 and s["udp_sessions"] == 0


@pytest.mark.parametrize(("addr", "cls"), SPECIAL)
def test_tcp_syn_to_a_special_destination_makes_no_flow(addr: str, cls: str) -> None:
    stack = make_stack()
    stack.receive(_syn(APP[_v(addr)], addr), 0.0)
    # An ACK for no flow to such an address draws no RST either.
    stack.receive(tcp_packet(APP[_v(addr)], addr, 40000, 1080, flags=ACK, seq=1, ack=1), 0.0)
    _expect_refused(stack, "tcp-bad-address", f"tcp-dst-{cls}", 2)


@pytest.mark.parametrize(("addr", "cls"), SPECIAL)
def test_tcp_syn_from_a_special_source(addr: str, cls: str) -> None:
    stack = make_stack()
    stack.receive(_syn(addr, SERVER[_v(addr)]), 0.0)
    if cls in SCOPED:  # an interface with only a link-local address sends from it
        assert isinstance(stack.events()[0], TcpConnectRequest)
    else:
        _expect_refused(stack, "tcp-bad-address", f"tcp-src-{cls}")


@pytest.mark.parametrize(("addr", "cls"), SPECIAL)
def test_udp_to_a_special_destination_is_never_proxied(addr: str, cls: str) -> None:
    stack = make_stack()
    stack.receive(udp_packet(APP[_v(addr)], addr, 5000, 53, b"query"), 0.0)
    _expect_refused(stack, "udp-multicast-or-local", f"udp-dst-{cls}")


@pytest.mark.parametrize(("addr", "cls"), SPECIAL)
def test_udp_from_a_special_source(addr: str, cls: str) -> None:
    stack = make_stack()
    stack.receive(udp_packet(addr, SERVER[_v(addr)], 5000, 53, b"query"), 0.0)
    if cls in SCOPED:
        assert isinstance(stack.events()[0], UdpDatagram)
    else:
        _expect_refused(stack, "udp-bad-source", f"udp-src-{cls}")


@pytest.mark.parametrize(("addr", "cls"), SPECIAL)
def test_icmp_echo_to_a_special_destination_is_not_answered(addr: str, cls: str) -> None:
    stack = make_stack(icmp_echo="reply")
    stack.receive(icmp_echo_request(APP[_v(addr)], addr), 0.0)
    if cls in SCOPED:  # answered here, not forwarded: a scoped destination is harmless
        assert len(stack.poll(0.0)) == 1
    else:
        _expect_refused(stack, "icmp-echo-ignored", f"icmp-dst-{cls}")


@pytest.mark.parametrize(("addr", "cls"), SPECIAL)
def test_icmp_echo_from_a_special_source_is_not_answered(addr: str, cls: str) -> None:
    stack = make_stack(icmp_echo="reply")
    stack.receive(icmp_echo_request(addr, SERVER[_v(addr)]), 0.0)
    if cls in SCOPED:
        assert len(stack.poll(0.0)) == 1
    else:
        _expect_refused(stack, "icmp-echo-ignored", f"icmp-src-{cls}")


@pytest.mark.parametrize(("addr", "cls"), [(a, c) for a, c in SPECIAL if c in SCOPED])
def test_scoped_destinations_when_allowed(addr: str, cls: str) -> None:
    stack = make_stack(allow_link_local=True)
    stack.receive(_syn(APP[_v(addr)], addr), 0.0)
    stack.receive(udp_packet(APP[_v(addr)], addr, 5000, 53, b"q"), 0.0)
    kinds = [type(e) for e in stack.events()]
    assert kinds == [TcpConnectRequest, UdpDatagram]


@pytest.mark.parametrize("addr", ORDINARY)
def test_ordinary_destinations_and_sources_make_flows(addr: str) -> None:
    v = _v(addr)
    stack = make_stack(icmp_echo="reply")
    stack.receive(_syn(APP[v], addr), 0.0)
    stack.receive(udp_packet(APP[v], addr, 5000, 53, b"q"), 0.0)
    stack.receive(_syn(addr, SERVER[v]), 0.0)
    stack.receive(udp_packet(addr, SERVER[v], 5000, 53, b"q"), 0.0)
    kinds = [type(e) for e in stack.events()]
    assert kinds == [TcpConnectRequest, UdpDatagram, TcpConnectRequest, UdpDatagram]
    stack.receive(icmp_echo_request(APP[v], addr), 0.0)
    stack.receive(icmp_echo_request(addr, SERVER[v]), 0.0)
    assert stack.stats()["icmp_echo_replies"] == 2
    assert stack.stats()["addresses_refused"] == {}


@pytest.mark.parametrize("v", [4, 6])
def test_land_is_refused_for_every_protocol(v: int) -> None:
    stack = make_stack(icmp_echo="reply")
    a = SERVER[v]
    stack.receive(_syn(a, a), 0.0)
    stack.receive(udp_packet(a, a, 5000, 53, b"q"), 0.0)
    stack.receive(icmp_echo_request(a, a), 0.0)
    assert stack.events() == [] and stack.poll(0.0) == []
    assert stack.stats()["addresses_refused"] == {"tcp-land": 1, "udp-land": 1, "icmp-land": 1}


@pytest.mark.parametrize("forged", ["127.0.0.1", "224.0.0.1", "0.0.0.0"])
def test_icmp_error_from_a_special_source_ends_no_session(forged: str) -> None:
    stack = make_stack()
    stack.receive(udp_packet(APP[4], SERVER[4], 5000, 9, b"a"), 0.0)
    (ev,) = stack.events()
    stack.udp_send(ev.flow_id, b"reply", (SERVER[4], 9))
    (reply,) = stack.poll(0.0)
    stack.receive(bytes(unreachable(reply, "port", src=pack(forged))), 0.1)
    assert stack.events() == []  # the session lives on
    assert stack.stats()["udp_sessions"] == 1
    assert stack.stats()["drops"] == {"icmp-error-bad-source": 1}
    # The genuine error (from the app's own address) still ends it.
    stack.receive(bytes(unreachable(reply, "port")), 0.2)
    assert [type(e).__name__ for e in stack.events()] == ["UdpSessionClosed"]


# Random addresses inside every special range, embedded in every IPv6 form: always refused.

_V4_RANGES = [(0x00000000, 8), (0x7F000000, 8), (0xE0000000, 4), (0xF0000000, 4),
              (0xA9FE0000, 16)]


@st.composite
def _special_v4(draw: st.DrawFn) -> bytes:
    base, plen = draw(st.sampled_from(_V4_RANGES))
    host = draw(st.integers(0, (1 << (32 - plen)) - 1))
    return (base | host).to_bytes(4, "big")


@st.composite
def _special(draw: st.DrawFn) -> bytes:
    """A random special address: IPv4, IPv6 native, or IPv4 embedded in an IPv6 form."""
    v4 = draw(_special_v4())
    r = draw(st.binary(min_size=16, max_size=16))
    form = draw(st.sampled_from(
        ["v4", "v6", "mapped", "compat", "translated", "nat64", "nat64-local", "6to4",
         "teredo-server", "teredo-client"]
    ))
    if form == "v4":
        return v4
    if form == "v6":
        first = draw(st.sampled_from([b"\xff", b"\xfe\x80", b"\xfe\xc0"]))
        a = first + r[len(first):]
        if first != b"\xff":  # keep the 10-bit prefix: fe80::/10, fec0::/10
            a = bytes([a[0], first[1] | (r[1] & 0x3F)]) + a[2:]
        return draw(st.sampled_from([a, bytes(16), bytes(15) + b"\x01"]))
    if form == "mapped":
        return bytes(10) + b"\xff\xff" + v4
    if form == "compat":
        return bytes(12) + v4
    if form == "translated":
        return bytes(8) + b"\xff\xff\x00\x00" + v4
    if form == "nat64":
        return b"\x00\x64\xff\x9b" + bytes(8) + v4
    if form == "nat64-local":
        return b"\x00\x64\xff\x9b\x00\x01" + r[6:12] + v4
    if form == "6to4":
        return b"\x20\x02" + v4 + r[6:]
    if form == "teredo-server":
        return b"\x20\x01\x00\x00" + v4 + r[8:]
    return b"\x20\x01\x00\x00" + r[4:12] + bytes(x ^ 0xFF for x in v4)


@settings(max_examples=1500)
@given(_special(), st.sampled_from(["tcp", "udp", "icmp"]), st.booleans())
def test_random_special_destinations_are_always_refused(
    dst: bytes, proto: str, as_source: bool
) -> None:
    cls = classify(dst)
    assert cls  # every generated address is special
    app = pack(APP[4 if len(dst) == 4 else 6])
    server = pack(SERVER[4 if len(dst) == 4 else 6])
    if as_source and cls in SCOPED:
        return  # a legitimate source (checked by test_tcp_syn_from_a_special_source)
    src, to = (dst, server) if as_source else (app, dst)
    stack = make_stack(icmp_echo="reply")
    if proto == "tcp":
        stack.receive(_syn(src, to), 0.0)
    elif proto == "udp":
        stack.receive(udp_packet(src, to, 5000, 443, b"x"), 0.0)
    else:
        stack.receive(icmp_echo_request(src, to), 0.0)
    if proto == "icmp" and cls in SCOPED:
        assert stack.stats()["icmp_echo_replies"] == 1  # answered here, never forwarded
        return
    assert stack.events() == [] and stack.poll(0.0) == []
    side = "src" if as_source else "dst"
    assert stack.stats()["addresses_refused"] == {f"{proto}-{side}-{cls}": 1}


@settings(max_examples=1000)
@given(st.one_of(
    st.integers(0x01000000, 0x7EFFFFFF), st.integers(0x80000000, 0xA9FDFFFF),
    st.integers(0xA9FF0000, 0xDFFFFFFF),
).map(lambda n: n.to_bytes(4, "big")) | st.binary(min_size=14, max_size=14).map(
    lambda r: b"\x2a" + r + b"\x01"  # 2a00::/8 global unicast, never special
))
def test_random_ordinary_destinations_are_accepted(dst: bytes) -> None:
    v = 4 if len(dst) == 4 else 6
    stack = make_stack()
    stack.receive(_syn(APP[v], dst), 0.0)
    stack.receive(udp_packet(APP[v], dst, 5000, 443, b"x"), 0.0)
    assert [type(e) for e in stack.events()] == [TcpConnectRequest, UdpDatagram]


# ------------------------------------------------------------------------- at dial time


def test_local_destination_of_literals() -> None:
    assert local_destination("127.0.0.1") == "loopback"
    assert local_destination("::ffff:127.0.0.1") == "mapped-loopback"
    assert local_destination("0.0.0.0") == "unspecified"
    assert local_destination("::") == "unspecified"
    assert local_destination("fe80::1%eth0") == ""  # scoped: the stack's decision
    assert local_destination("192.0.2.1") == ""
    assert local_destination("name.example") == ""  # names are checked once resolved


async def _loopback_listener() -> tuple[asyncio.Server, list[bytes], int]:
    accepted: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(await reader.read(100))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, accepted, server.sockets[0].getsockname()[1]


def _flow(dst: tuple[str, int], proto: str = "tcp") -> FlowInfo:
    return FlowInfo(1, ("10.0.0.1", 40000), dst, proto)


@pytest.mark.parametrize(
    "host", ["localhost", "127.0.0.1", "127.0.0.2", "::ffff:127.0.0.1", "0.0.0.0",
             "::ffff:0.0.0.0", "::1", "::"],
)
async def test_direct_never_connects_an_app_to_this_hosts_loopback(host: str) -> None:
    server, accepted, port = await _loopback_listener()
    async with server:
        with pytest.raises(UpstreamError) as e:
            await DirectUpstream().open_tcp(
                Address(host, port), asyncio.Protocol(), _flow((host, port))
            )
        assert e.value.reason == "denied"  # the app gets a reset
        assert "refused" in str(e.value) and "address" in str(e.value)
        # The same destination with the safety off does connect: the refusal above was
        # ours, not a failure to reach the listener (for the addresses this host answers).
        if host in ("localhost", "127.0.0.1", "::ffff:127.0.0.1", "0.0.0.0", "::ffff:0.0.0.0"):
            t = await DirectUpstream(allow_local=True).open_tcp(
                Address(host, port), asyncio.Protocol(), _flow((host, port))
            )
            t.write(b"control")
            for _ in range(500):
                if accepted:
                    break
                await asyncio.sleep(0.01)
            t.close()
            assert accepted == [b"control"]  # only the control connection got through
        else:
            assert accepted == []


async def test_a_rebinding_name_is_dialled_only_at_its_other_addresses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A name that resolves to loopback *and* elsewhere (DNS rebinding) is dialled only at
    the other addresses; one that resolves to nothing else is refused. Nothing is dialled:
    the attempts are recorded instead."""
    from tun2proxy.upstream import dial

    answer: list[tuple[object, ...]] = []
    tried: list[str] = []

    async def fake_getaddrinfo(*a: object, **kw: object) -> list[tuple[object, ...]]:
        return answer

    async def fake_attempt(loop: object, family: int, addr: tuple[str, int], ob: object,
                           eg: object) -> None:
        tried.append(addr[0])
        raise ConnectionRefusedError("recorded, not dialled")

    monkeypatch.setattr(SystemResolver, "getaddrinfo", fake_getaddrinfo)
    monkeypatch.setattr(dial, "_attempt", fake_attempt)
    answer[:] = [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80)),
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::ffff:127.0.0.1", 80, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", 80)),
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::", 80, 0, 0)),
    ]
    with pytest.raises(ConnectionRefusedError):
        await connect_tcp("rebind.example", 80, asyncio.Protocol, refuse_local=True)
    assert tried == ["192.0.2.1"]
    tried.clear()
    answer[:] = answer[:2]
    with pytest.raises(PermissionError, match=r"rebind\.example resolves to 127\.0\.0\.1, a loop"):
        await connect_tcp("rebind.example", 80, asyncio.Protocol, refuse_local=True)
    assert tried == []
    # The proxy's own address is the operator's: connect_tcp without refuse_local dials it.
    with pytest.raises(ConnectionRefusedError):
        await connect_tcp("rebind.example", 80, asyncio.Protocol)
    assert tried == ["127.0.0.1", "::ffff:127.0.0.1"]


async def test_direct_udp_never_sends_to_this_hosts_loopback() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    port = rx.getsockname()[1]

    class Receiver:
        def datagram_received(self, payload: bytes, src: Address) -> None:
            pass

        def channel_lost(self, exc: BaseException | None) -> None:
            pass

    try:
        v4 = await DirectUpstream().open_udp(_flow(("10.0.0.9", port), "udp"), Receiver())
        v6 = await DirectUpstream().open_udp(
            FlowInfo(2, ("fd00::1", 40000), ("fd00::9", port), "udp"), Receiver()
        )
        v4.send(b"literal", Address("127.0.0.1", port))
        v4.send(b"name", Address("localhost", port))  # resolved first, then refused
        v4.send(b"any", Address("0.0.0.0", port))
        v6.send(b"mapped", Address("::ffff:127.0.0.1", port))
        for _ in range(500):  # the name's resolution runs in a task: wait for its outcome
            if v4.refused == 3:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.01)
        assert (v4.refused, v6.refused) == (3, 1)  # type: ignore[attr-defined]
        control = await DirectUpstream(allow_local=True).open_udp(
            _flow(("10.0.0.9", port), "udp"), Receiver()
        )
        control.send(b"control", Address("127.0.0.1", port))
        got = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(rx, 100), 5)
        assert got == b"control"  # the first and only datagram that arrived
        with pytest.raises(BlockingIOError):
            rx.recv(100)
        for ch in (v4, v6, control):
            ch.close()
    finally:
        rx.close()
