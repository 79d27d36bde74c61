"""RoutingUpstream: delegation by rule, bypass and proxy-address loops, reject, UDP fan-out."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Mapping
from typing import Any, cast

import pytest

from tun2proxy.errors import ConfigError, UpstreamError
from tun2proxy.proxy.address import Address
from tun2proxy.routing.rules import Rules
from tun2proxy.upstream import router as router_mod
from tun2proxy.upstream.base import DatagramReceiver, FlowInfo, UdpChannel, Upstream
from tun2proxy.upstream.direct import DirectUpstream
from tun2proxy.upstream.resolve import SystemResolver
from tun2proxy.upstream.router import Decision, RoutingUpstream, resolve_proxy_addresses

pytestmark = pytest.mark.timeout(30)


class FakeChannel(UdpChannel):
    """Records what is sent; ``receiver`` lets a test play the far side."""

    def __init__(self, owner: FakeUpstream, receiver: DatagramReceiver) -> None:
        self.owner = owner
        self.receiver = receiver
        self.sent: list[tuple[bytes, Address]] = []
        self.closed = 0

    def send(self, payload: bytes, dst: Address) -> None:
        self.sent.append((payload, dst))

    def close(self) -> None:
        self.closed += 1


class FakeUpstream(Upstream):
    """Records every open_tcp/open_udp; can fail or wait on demand."""

    def __init__(self, name: str, *, fail: str | None = None) -> None:
        self.name = name
        self.fail = fail
        self.tcp: list[tuple[Address, FlowInfo]] = []
        self.udp: list[FlowInfo] = []
        self.channels: list[FakeChannel] = []
        self.gate: asyncio.Event | None = None
        self.closed = 0

    async def open_tcp(
        self, dst: Address, protocol: asyncio.Protocol, flow: FlowInfo
    ) -> asyncio.Transport:
        self.tcp.append((dst, flow))
        if self.fail:
            raise UpstreamError(f"{self.name} failed", self.fail)
        return cast(asyncio.Transport, f"transport via {self.name}")

    async def open_udp(self, flow: FlowInfo, receiver: DatagramReceiver) -> UdpChannel:
        self.udp.append(flow)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise UpstreamError(f"{self.name} has no UDP", self.fail)
        ch = FakeChannel(self, receiver)
        self.channels.append(ch)
        return ch

    def describe(self) -> str:
        return f"fake {self.name}"

    async def close(self) -> None:
        self.closed += 1


class Receiver:
    """The driver's UDP relay, as far as a channel can tell."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, Address]] = []
        self.lost: list[BaseException | None] = []

    def datagram_received(self, payload: bytes, src: Address) -> None:
        self.got.append((payload, src))

    def channel_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


RULES = [
    "suffix:corp.example -> work",
    "domain:blocked.example -> reject",
    "cidr:10.0.0.0/8 -> direct",
    "port:25 -> reject",
    "cidr:2001:db8::/32,port:443 -> work",
]


def make(
    rules: list[str] | None = None, **kw: Any
) -> tuple[RoutingUpstream, dict[str, FakeUpstream]]:
    ups = {n: FakeUpstream(n) for n in ("proxy", "direct", "work")}
    extra: Mapping[str, FakeUpstream] = kw.pop("upstreams", {})
    ups.update(extra)
    r = Rules.parse(rules if rules is not None else RULES, {"work"})
    return RoutingUpstream(ups, r, **kw), ups


def flow(
    dst: str, port: int, domain: str | None = None, fid: int = 1, proto: str = "tcp"
) -> FlowInfo:
    src = ("fd00::2", 40000) if ":" in dst else ("10.99.0.2", 40000)
    return FlowInfo(fid, src, (dst, port), protocol=proto, domain=domain)


async def dial(router: RoutingUpstream, ip: str, port: int, domain: str | None = None) -> Any:
    dst = Address(domain, port) if domain else Address.from_host(ip, port)
    return await router.open_tcp(dst, asyncio.Protocol(), flow(ip, port, domain))


# ------------------------------------------------------------------------------------ TCP


async def test_delegates_by_rule_and_default() -> None:
    router, ups = make()
    assert await dial(router, "198.51.100.1", 443, "git.corp.example") == "transport via work"
    assert await dial(router, "10.1.2.3", 80) == "transport via direct"
    assert await dial(router, "2001:db8::5", 443) == "transport via work"
    assert await dial(router, "2001:db8::5", 80) == "transport via proxy"
    assert await dial(router, "198.51.100.1", 80) == "transport via proxy"
    dst, fl = ups["work"].tcp[0]
    assert dst == Address("git.corp.example", 443) and fl.domain == "git.corp.example"
    assert [d for d, _ in ups["proxy"].tcp] == [Address("2001:db8::5", 80),
                                               Address("198.51.100.1", 80)]
    assert router.stats() == {"work": 2, "direct": 1, "proxy": 2}


async def test_reject_raises_denied_and_dials_nothing() -> None:
    router, ups = make()
    with pytest.raises(UpstreamError) as exc:
        await dial(router, "198.51.100.1", 443, "blocked.example")
    assert exc.value.reason == "denied"
    assert "rule 2: domain:blocked.example -> reject" in str(exc.value)
    with pytest.raises(UpstreamError, match="rule 4"):
        await dial(router, "198.51.100.1", 25)
    assert not any(u.tcp for u in ups.values())


async def test_delegate_errors_pass_through() -> None:
    router, _ = make(upstreams={"proxy": FakeUpstream("proxy", fail="unreachable")})
    with pytest.raises(UpstreamError) as exc:
        await dial(router, "198.51.100.1", 80)
    assert exc.value.reason == "unreachable"


async def test_bypass_goes_direct_before_any_rule() -> None:
    router, ups = make(bypass=["198.51.100.0/24", "2001:db8:1::/48"])
    assert await dial(router, "198.51.100.9", 25) == "transport via direct"  # rule 4 says reject
    assert await dial(router, "198.51.100.9", 443, "blocked.example") == "transport via direct"
    assert await dial(router, "2001:db8:1::1", 443) == "transport via direct"  # rule 5 says work
    assert await dial(router, "2001:db8:2::1", 443) == "transport via work"
    assert len(ups["direct"].tcp) == 3


async def test_proxy_addresses_never_go_through_a_proxy() -> None:
    addrs = ["203.0.113.5", "2001:db8:ffff::5"]
    router, ups = make(["any -> proxy"], proxy_addresses=addrs)
    for ip in ("203.0.113.5", "2001:db8:ffff::5", "::ffff:203.0.113.5"):
        assert await dial(router, ip, 1080) == "transport via direct"
    assert await dial(router, "203.0.113.6", 1080) == "transport via proxy"
    assert router.decide(Address("203.0.113.5", 1), flow("203.0.113.5", 1)) == Decision(
        "direct", "proxy-address"
    )
    assert not ups["proxy"].tcp[1:]


async def test_sniffed_name_with_real_ip_keeps_ip_checks() -> None:
    # Sniffing gives dst a name but flow.dst keeps the real IP: bypass still applies to it.
    router, _ = make(bypass=["192.0.2.0/24"])
    fl = flow("192.0.2.7", 443, "git.corp.example")
    got: object = await router.open_tcp(Address("git.corp.example", 443), asyncio.Protocol(), fl)
    assert got == "transport via direct"


async def test_virtual_dns_addresses_are_not_matched_as_ips() -> None:
    rules = ["cidr:198.18.0.0/15 -> reject", "suffix:corp.example -> work"]
    router, _ = make(rules, virtual_networks=["198.18.0.0/15", "fd27:4a46:c40a::/64"])
    assert await dial(router, "198.18.0.7", 443, "git.corp.example") == "transport via work"
    assert await dial(router, "198.18.0.8", 443, "www.example") == "transport via proxy"
    plain, _ = make(rules)
    with pytest.raises(UpstreamError):
        await dial(plain, "198.18.0.7", 443, "git.corp.example")


def test_decide_explains() -> None:
    router, _ = make(bypass=["192.0.2.0/24"])
    d = router.decide(Address("a.corp.example", 1), flow("198.51.100.1", 1, "a.corp.example"))
    assert (d.target, d.why, d.explain()) == ("work", "rule", "rule 1: suffix:corp.example -> work")
    assert router.decide_for(None, 1, None).explain() == "default"
    assert router.decide_for(ipaddress.ip_address("192.0.2.1"), 1, None).why == "bypass"


async def test_each_decision_is_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    router, _ = make(bypass=["192.0.2.0/24"])
    with caplog.at_level(logging.DEBUG, logger="tun2proxy.routing"):
        await dial(router, "192.0.2.1", 80)
        await dial(router, "198.51.100.1", 443, "a.corp.example")
    msgs = [r.getMessage() for r in caplog.records]
    assert "route tcp flow 1 192.0.2.1:80 -> direct [bypass]" in msgs
    rule = "rule 1: suffix:corp.example -> work"
    assert f"route tcp flow 1 a.corp.example:443 -> work [{rule}]" in msgs


# --------------------------------------------------------------------------- configuration


def test_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="no upstream named 'work'"):
        RoutingUpstream({"proxy": FakeUpstream("proxy")}, Rules.parse(RULES, {"work"}))
    with pytest.raises(ConfigError, match="reserved"):
        RoutingUpstream({"proxy": FakeUpstream("p"), "reject": FakeUpstream("r")}, Rules())
    with pytest.raises(ConfigError, match="bypass 'lan': not an IP address or network"):
        make(bypass=["lan"])
    with pytest.raises(ConfigError, match=r"proxy address 'proxy\.example'"):
        make(proxy_addresses=["proxy.example"])


def test_direct_is_built_in_when_not_given() -> None:
    router = RoutingUpstream({"proxy": FakeUpstream("proxy")}, Rules(), bypass=["10.0.0.0/8"])
    assert isinstance(router.upstreams["direct"], DirectUpstream)


def test_virtual_pool_overlap_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tun2proxy.routing"):
        make(proxy_addresses=["198.18.0.9"], virtual_networks=["198.18.0.0/15"])
    assert "virtual DNS pool" in caplog.text


def test_describe() -> None:
    router, _ = make(bypass=["10.0.0.0/8", "192.168.0.0/16"], proxy_addresses=["203.0.113.5"])
    text = router.describe()
    assert text.startswith("router: 5 rules (")
    assert "bypass 2 networks, 1 proxy addresses" in text
    assert "proxy=fake proxy" in text and "work=fake work" in text
    assert "\n" not in text


async def test_close_closes_each_delegate_once() -> None:
    shared = FakeUpstream("shared")
    router = RoutingUpstream({"proxy": shared, "work": shared, "direct": FakeUpstream("d")},
                             Rules())
    await router.close()
    assert shared.closed == 1 and cast(FakeUpstream, router.upstreams["direct"]).closed == 1


# ------------------------------------------------------------------------------------ UDP


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_udp_opens_the_first_destinations_target() -> None:
    router, ups = make()
    rx = Receiver()
    ch = await router.open_udp(flow("10.1.1.1", 53, proto="udp"), rx)
    assert len(ups["direct"].udp) == 1 and not ups["proxy"].udp
    ch.send(b"q", Address("10.1.1.1", 53))
    assert ups["direct"].channels[0].sent == [(b"q", Address("10.1.1.1", 53))]
    ups["direct"].channels[0].receiver.datagram_received(b"a", Address("10.1.1.1", 53))
    assert rx.got == [(b"a", Address("10.1.1.1", 53))]
    ch.close()
    assert ups["direct"].channels[0].closed == 1


async def test_udp_reject_and_unsupported_reach_the_driver() -> None:
    router, _ = make()
    with pytest.raises(UpstreamError) as exc:
        await router.open_udp(flow("198.51.100.1", 25, proto="udp"), Receiver())
    assert exc.value.reason == "denied"
    router, _ = make(upstreams={"proxy": FakeUpstream("proxy", fail="unsupported")})
    with pytest.raises(UpstreamError) as exc:
        await router.open_udp(flow("198.51.100.1", 443, proto="udp"), Receiver())
    assert exc.value.reason == "unsupported"


async def test_udp_routes_each_datagram() -> None:
    router, ups = make(bypass=["192.0.2.0/24"])
    rx = Receiver()
    ch = await router.open_udp(flow("198.51.100.1", 443, proto="udp"), rx)
    proxy_ch = ups["proxy"].channels[0]
    ch.send(b"1", Address("198.51.100.1", 443))
    ch.send(b"2", Address("192.0.2.9", 3478))  # bypass: opens a direct channel
    ch.send(b"3", Address("192.0.2.9", 3478))  # waits for it
    ch.send(b"4", Address("a.corp.example", 443))  # a name (virtual DNS): work
    ch.send(b"5", Address("blocked.example", 443))  # reject: dropped
    assert [p for p, _ in proxy_ch.sent] == [b"1"]
    await settle()
    assert [p for p, _ in ups["direct"].channels[0].sent] == [b"2", b"3"]
    assert [p for p, _ in ups["work"].channels[0].sent] == [b"4"]
    assert ups["work"].udp[0].domain == "a.corp.example"
    assert ups["direct"].udp[0].dst == ("192.0.2.9", 3478)
    ch.send(b"6", Address("192.0.2.9", 3478))
    assert len(ups["direct"].udp) == 1 and len(ups["direct"].channels[0].sent) == 3
    ups["work"].channels[0].receiver.datagram_received(b"r", Address("a.corp.example", 443))
    assert rx.got == [(b"r", Address("a.corp.example", 443))]
    assert router.stats()["udp-dropped"] == 1
    ch.close()
    assert all(c.closed == 1 for u in ups.values() for c in u.channels)


async def test_udp_pending_datagrams_are_bounded() -> None:
    router, ups = make()
    ups["direct"].gate = asyncio.Event()
    ch = await router.open_udp(flow("198.51.100.1", 443, proto="udp"), Receiver())
    for i in range(router_mod.MAX_PENDING_DATAGRAMS + 10):
        ch.send(bytes([i]), Address("10.0.0.1", 53))
    ups["direct"].gate.set()
    await settle()
    assert len(ups["direct"].channels[0].sent) == router_mod.MAX_PENDING_DATAGRAMS
    assert router.stats()["udp-dropped"] == 10


async def test_udp_failed_target_drops_then_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    work = FakeUpstream("work", fail="unsupported")
    router, _ = make(upstreams={"work": work})
    rx = Receiver()
    ch = await router.open_udp(flow("198.51.100.1", 443, proto="udp"), rx)
    ch.send(b"a", Address("x.corp.example", 443))
    await settle()
    ch.send(b"b", Address("x.corp.example", 443))  # within RETRY_AFTER: dropped at once
    await settle()
    assert len(work.udp) == 1 and router.stats()["udp-dropped"] == 2
    monkeypatch.setattr(router_mod, "RETRY_AFTER", 0.0)
    work.fail = None
    ch.send(b"c", Address("x.corp.example", 443))
    await settle()
    assert len(work.udp) == 2 and [p for p, _ in work.channels[0].sent] == [b"c"]
    assert not rx.lost  # a failing secondary target does not end the session


async def test_udp_lost_delegate_ends_the_session_once() -> None:
    router, ups = make()
    rx = Receiver()
    ch = await router.open_udp(flow("198.51.100.1", 443, proto="udp"), rx)
    ch.send(b"x", Address("10.0.0.1", 53))
    await settle()
    err = ConnectionResetError()
    ups["direct"].channels[0].receiver.channel_lost(err)
    ups["proxy"].channels[0].receiver.channel_lost(None)
    assert rx.lost == [err]
    assert ups["proxy"].channels[0].closed == 1 and ups["direct"].channels[0].closed == 1
    ch.send(b"y", Address("198.51.100.1", 443))  # after close: ignored
    ups["proxy"].channels[0].receiver.datagram_received(b"late", Address("198.51.100.1", 443))
    assert rx.got == [] and len(ups["proxy"].channels[0].sent) == 0


async def test_udp_close_while_a_channel_opens() -> None:
    router, ups = make()
    ups["direct"].gate = asyncio.Event()
    ch = await router.open_udp(flow("198.51.100.1", 443, proto="udp"), Receiver())
    ch.send(b"x", Address("10.0.0.1", 53))
    await settle()
    ch.close()
    ch.close()
    ups["direct"].gate.set()
    await settle()
    assert ups["direct"].channels == []  # the open was cancelled


# ------------------------------------------------------------------------- real delegate


async def test_real_direct_delegate_connects() -> None:
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.set_result(await reader.readexactly(5))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # The only server this test may reach is on loopback, which an application's flow may
    # not reach by default (test_builtin_direct_refuses_loopback_proxy_address below).
    router = RoutingUpstream(
        {"proxy": FakeUpstream("proxy"), "direct": DirectUpstream(allow_local=True)}, Rules(),
        proxy_addresses=["127.0.0.1"],
    )
    async with server:
        transport = await router.open_tcp(
            Address("127.0.0.1", port), asyncio.Protocol(), flow("127.0.0.1", port)
        )
        transport.write(b"hello")
        assert await asyncio.wait_for(got, 5) == b"hello"
        transport.close()


async def test_builtin_direct_refuses_loopback_proxy_address() -> None:
    """A proxy on loopback is dialled by tun2proxy itself, but an application's flow to that
    address (sent direct as a proxy address) must not reach the host's loopback."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    router = RoutingUpstream(
        {"proxy": FakeUpstream("proxy")}, Rules(), proxy_addresses=["127.0.0.1"]
    )
    async with server:
        for host in ("127.0.0.1", "::ffff:127.0.0.1"):
            with pytest.raises(UpstreamError) as e:
                await router.open_tcp(Address(host, port), asyncio.Protocol(), flow(host, port))
            assert e.value.reason == "denied"
            assert "loopback" in str(e.value)
        await asyncio.sleep(0)
    assert accepted == []


# ------------------------------------------------------------------------------ resolving


async def test_resolve_literals() -> None:
    assert await resolve_proxy_addresses("192.0.2.1") == ["192.0.2.1"]
    assert await resolve_proxy_addresses(" [2001:DB8::1] ") == ["2001:db8::1"]


async def test_resolve_localhost() -> None:
    assert "127.0.0.1" in await resolve_proxy_addresses("localhost")


async def test_resolve_every_family_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, ...]] = []

    async def fake(
        self: object, host: str, port: object, family: int = 0, type: int = 0
    ) -> list[tuple[Any, ...]]:
        calls.append((host, port, {"family": family, "type": type}))
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("203.0.113.5", 0)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::1%eth0", 0, 0, 2)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("203.0.113.5", 0)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2001:db8::5", 0, 0, 0)),
        ]

    monkeypatch.setattr(SystemResolver, "getaddrinfo", fake)
    assert await resolve_proxy_addresses("proxy.example") == [
        "203.0.113.5", "fe80::1", "2001:db8::5"
    ]
    assert calls[0][2] == {"family": socket.AF_UNSPEC, "type": socket.SOCK_STREAM}


async def test_resolve_failure_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fail(*a: object, **kw: object) -> list[tuple[Any, ...]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def empty(*a: object, **kw: object) -> list[tuple[Any, ...]]:
        return []

    monkeypatch.setattr(SystemResolver, "getaddrinfo", fail)
    with pytest.raises(ConfigError, match=r"proxy host 'nope\.example': cannot resolve"):
        await resolve_proxy_addresses("nope.example")
    monkeypatch.setattr(SystemResolver, "getaddrinfo", empty)
    with pytest.raises(ConfigError, match="no IPv4 or IPv6 address"):
        await resolve_proxy_addresses("nope.example")
