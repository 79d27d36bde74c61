"""``RoutingUpstream``: an Upstream that sends each flow to the upstream its rules pick (I/O).

The core and the driver know nothing of routing: they dial one upstream, and this one
delegates. A decision looks, in order, at

1. the proxy's own addresses (``proxy_addresses``, from :func:`resolve_proxy_addresses`):
   always ``direct``, so a flow to the proxy is never sent through the proxy;
2. the ``--bypass`` networks: always ``direct``;
3. the :class:`~tun2proxy.routing.rules.Rules` (first match), else their default target.

Inputs are the destination IP the application used (``flow.dst``; an address inside
``virtual_networks`` is a virtual-DNS placeholder and counts as no IP), the port, and the
host name: ``flow.domain`` (virtual DNS or sniffing), else ``dst`` when it is a name.
``reject`` raises ``UpstreamError(..., "denied")`` (the application sees a reset, or ICMP
port unreachable for UDP).

UDP: one channel carries every destination of an application endpoint, so routing is per
datagram. :meth:`RoutingUpstream.open_udp` opens the channel the first destination's target
needs (its errors reach the driver, as for any upstream) and returns a channel that sends
each later datagram through the channel of that datagram's target, opening further
channels on first use (datagrams wait, boundedly, while one opens; those to ``reject``, or
to a target that failed to open in the last :data:`RETRY_AFTER` seconds, are dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import ConfigError, UpstreamError
from ..proxy.address import Address, ip_of
from ..routing.rules import IPAddress, NetworkSet, Rule, Rules, parse_network
from .base import DatagramReceiver, FlowInfo, UdpChannel, Upstream
from .direct import DirectUpstream
from .egress import Egress

__all__ = [
    "MAX_PENDING_DATAGRAMS",
    "RETRY_AFTER",
    "Decision",
    "RoutingUpstream",
    "resolve_proxy_addresses",
]

#: Routing decisions log under the feature's name (as before the router moved here from
#: ``tun2proxy.routing``), so ``tun2proxy.routing`` selects them in a logging configuration.
log = logging.getLogger("tun2proxy.routing.router")

#: Datagrams held per target while its UDP channel opens; later ones are dropped.
MAX_PENDING_DATAGRAMS = 32
#: Seconds a UDP session drops datagrams for a target whose channel failed to open.
RETRY_AFTER = 10.0
_DECISION_CACHE = 256  # per UDP channel: destinations whose target is remembered


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a flow goes and why.

    Attributes:
        target: ``proxy``, ``direct``, ``reject`` or an extra upstream's name.
        why: ``proxy-address``, ``bypass``, ``rule`` or ``default``.
        rule: the matching rule when ``why == "rule"``.
    """

    target: str
    why: str
    rule: Rule | None = None

    def explain(self) -> str:
        """The reason in words, for logs (``rule 3: suffix:lan -> direct``)."""
        if self.rule is not None:
            where = f"rule {self.rule.line}: " if self.rule.line else "rule: "
            return where + (self.rule.text or str(self.rule))
        return self.why


_PROXY_ADDRESS = Decision("direct", "proxy-address")
_BYPASS = Decision("direct", "bypass")


def _network_set(items: Sequence[str], what: str) -> NetworkSet:
    """A NetworkSet from configuration strings; ConfigError names a bad one."""
    nets = []
    for item in items:
        try:
            nets.append(parse_network(item))
        except ValueError:
            raise ConfigError(f"{what} {item!r}: not an IP address or network") from None
    return NetworkSet(nets)


class RoutingUpstream(Upstream):
    """Delegate each flow to the upstream chosen by bypass lists and rules.

    Args:
        upstreams: target name -> upstream: ``proxy``, extra upstreams by name, and
            optionally ``direct`` (a plain :class:`DirectUpstream` when missing; pass one
            with ``interface``/``fwmark`` to keep direct flows out of the tunnel).
            ``reject`` is built in and cannot be given.
        rules: the rule list (its targets must all be in ``upstreams`` or be ``reject``).
        bypass: networks (``10.0.0.0/8``, ``192.0.2.1``, ``2001:db8::/32``) always sent direct.
        proxy_addresses: every address of every proxy upstream; always sent direct.
        virtual_networks: the virtual-DNS pools; addresses in them are placeholders and
            are not matched against networks.

    Raises:
        ConfigError: an unknown target, a reserved name, or a malformed network.
    """

    name = "router"
    #: Told ``(flow_id, target)`` at each decision (the Driver records it for its flows).
    on_route: Callable[[int, str], None] | None = None

    def __init__(
        self,
        upstreams: Mapping[str, Upstream],
        rules: Rules,
        *,
        bypass: Sequence[str] = (),
        proxy_addresses: Sequence[str] = (),
        virtual_networks: Sequence[str] = (),
    ) -> None:
        ups = dict(upstreams)
        if "reject" in ups:
            raise ConfigError("upstream name 'reject' is reserved (rules refuse flows with it)")
        ups.setdefault("direct", DirectUpstream())
        missing = sorted(t for t in rules.targets() if t != "reject" and t not in ups)
        if missing:
            raise ConfigError(
                f"routing: no upstream named {', '.join(map(repr, missing))}"
                f" (have: {', '.join(sorted(ups))}, reject)"
            )
        self.upstreams: dict[str, Upstream] = ups
        self.rules = rules
        self.bypass = _network_set(bypass, "bypass")
        self.proxy_networks = _network_set(proxy_addresses, "proxy address")
        self.virtual_networks = _network_set(virtual_networks, "virtual DNS pool")
        self._counts: dict[str, int] = {}
        self._default = Decision(rules.default, "default")
        for net in self.proxy_networks.networks:
            if any(net.version == v.version and net.overlaps(v)
                   for v in self.virtual_networks.networks):
                log.warning(
                    "proxy address %s lies in the virtual DNS pool: resolve the proxy host"
                    " before virtual DNS answers for it, or flows to it will loop", net,
                )

    def bind_egress(self, egress: Egress) -> None:
        """Bind ``egress`` here and into every target upstream (one tunnel, one registry)."""
        super().bind_egress(egress)
        for up in self.upstreams.values():
            up.bind_egress(egress)

    # ---------------------------------------------------------------------- decisions

    def _real_ip(self, host: str) -> IPAddress | None:
        """``host`` as an IP object, unless it is no IP or a virtual-DNS placeholder."""
        ip = ip_of(host)
        if ip is None:
            return None
        if self.virtual_networks and ip in self.virtual_networks:
            return None
        return ip

    def decide_for(self, ip: IPAddress | None, port: int, domain: str | None) -> Decision:
        """The decision for a destination IP (None if unknown), port and host name."""
        if ip is not None:
            if self.proxy_networks and ip in self.proxy_networks:
                return _PROXY_ADDRESS
            if self.bypass and ip in self.bypass:
                return _BYPASS
        rule = self.rules.match(ip, port, domain)
        if rule is None:
            return self._default
        return Decision(rule.target, "rule", rule)

    def decide(self, dst: Address, flow: FlowInfo) -> Decision:
        """The decision for a flow being dialled (the IP from ``flow.dst``, name as known)."""
        ip = self._real_ip(flow.dst[0])
        if ip is None and not dst.is_domain:
            ip = self._real_ip(dst.host)
        domain = flow.domain or (dst.host if dst.is_domain else None)
        return self.decide_for(ip, dst.port, domain)

    def _note(self, d: Decision, flow: FlowInfo, dst: Address | None = None) -> None:
        """Count a decision and log it at debug level."""
        self._counts[d.target] = self._counts.get(d.target, 0) + 1
        if self.on_route is not None:
            self.on_route(flow.flow_id, d.target)
        if log.isEnabledFor(logging.DEBUG):
            where = str(dst) if dst is not None else f"{flow.dst[0]}:{flow.dst[1]}"
            shown = dst.host if dst is not None else None
            name = f" ({flow.domain})" if flow.domain and flow.domain != shown else ""
            log.debug(
                "route %s flow %d %s%s -> %s [%s]",
                flow.protocol, flow.flow_id, where, name, d.target, d.explain(),
            )

    # ------------------------------------------------------------------------ upstream

    async def open_tcp(
        self, dst: Address, protocol: asyncio.Protocol, flow: FlowInfo
    ) -> asyncio.Transport:
        """Open the stream through the upstream the decision names (``reject``: refuse)."""
        d = self.decide(dst, flow)
        self._note(d, flow, dst)
        if d.target == "reject":
            raise UpstreamError(f"{dst}: rejected by {d.explain()}", "denied")
        return await self.upstreams[d.target].open_tcp(dst, protocol, flow)

    async def open_udp(self, flow: FlowInfo, receiver: DatagramReceiver) -> UdpChannel:
        """A channel routing each datagram; the first destination's channel opens now."""
        ip = self._real_ip(flow.dst[0])
        d = self.decide_for(ip, flow.dst[1], flow.domain)
        self._note(d, flow)
        if d.target == "reject":
            raise UpstreamError(
                f"{flow.dst[0]}:{flow.dst[1]}: rejected by {d.explain()}", "denied"
            )
        channel = _RoutingUdpChannel(self, flow, receiver, d.target)
        first = await self.upstreams[d.target].open_udp(flow, _SubReceiver(channel))
        channel.attach(d.target, first)
        return channel

    def stats(self) -> dict[str, object]:
        """Decisions so far per target, ``udp-dropped`` datagrams, and under ``upstreams``
        the counters of each target upstream that keeps any (udpgw's, for one)."""
        out: dict[str, object] = dict(self._counts)
        delegates: dict[str, object] = {}
        for name, up in sorted(self.upstreams.items()):
            st = getattr(up, "stats", None)
            if callable(st):
                delegates[name] = st()
        if delegates:
            out["upstreams"] = delegates
        return out

    def describe(self) -> str:
        """One line: rules, bypass and proxy-address counts, and the upstreams."""
        ups = ", ".join(f"{k}={v.describe()}" for k, v in sorted(self.upstreams.items()))
        return (
            f"router: {self.rules.describe()}; bypass {len(self.bypass)} networks,"
            f" {len(self.proxy_networks)} proxy addresses; upstreams {ups}"
        )

    async def close(self) -> None:
        """Close every distinct delegate upstream once."""
        seen: set[int] = set()
        for up in self.upstreams.values():
            if id(up) not in seen:
                seen.add(id(up))
                await up.close()


class _SubReceiver:
    """Receiver for one delegate channel: replies pass through, a loss ends the session."""

    __slots__ = ("channel",)

    def __init__(self, channel: _RoutingUdpChannel) -> None:
        self.channel = channel

    def datagram_received(self, payload: bytes, src: Address) -> None:
        """A reply: hand it to the application's receiver."""
        if not self.channel.closed:
            self.channel.receiver.datagram_received(payload, src)

    def channel_lost(self, exc: BaseException | None) -> None:
        """A delegate channel ended: end the whole routed session."""
        self.channel.lost(exc)


class _RoutingUdpChannel(UdpChannel):
    """One application endpoint's UDP channel, fanned out to one delegate per target."""

    def __init__(
        self, router: RoutingUpstream, flow: FlowInfo, receiver: DatagramReceiver, first: str
    ) -> None:
        self.router = router
        self.flow = flow
        self.receiver = receiver
        self.first = first
        self.closed = False
        self.channels: dict[str, UdpChannel] = {}
        self.pending: dict[str, list[tuple[bytes, Address]]] = {}
        self.failed: dict[str, float] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.cache: dict[Address, str] = {}

    def attach(self, target: str, channel: UdpChannel) -> None:
        """Use ``channel`` for ``target`` (closing it at once if the session has ended)."""
        if self.closed:
            channel.close()
            return
        self.channels[target] = channel

    def _target(self, dst: Address) -> str:
        """The target for one datagram's destination (cached per destination)."""
        target = self.cache.get(dst)
        if target is not None:
            return target
        router = self.router
        flow = self.flow
        ip: IPAddress | None = None
        domain: str | None = dst.host
        if not dst.is_domain:
            ip = router._real_ip(dst.host)
            domain = flow.domain if dst.host == flow.dst[0] else None
        d = router.decide_for(ip, dst.port, domain)
        router._note(d, flow, dst)
        if len(self.cache) >= _DECISION_CACHE:
            self.cache.clear()
        self.cache[dst] = d.target
        return d.target

    def _drop(self) -> None:
        counts = self.router._counts
        counts["udp-dropped"] = counts.get("udp-dropped", 0) + 1

    def send(self, payload: bytes, dst: Address) -> None:
        """Send through the channel of the destination's target (opening it if needed)."""
        if self.closed:
            return
        target = self._target(dst)
        channel = self.channels.get(target)
        if channel is not None:
            channel.send(payload, dst)
            return
        if target == "reject":
            self._drop()
            return
        queue = self.pending.get(target)
        if queue is not None:  # opening
            if len(queue) < MAX_PENDING_DATAGRAMS:
                queue.append((payload, dst))
            else:
                self._drop()
            return
        loop = asyncio.get_running_loop()
        failed_at = self.failed.get(target)
        if failed_at is not None and loop.time() - failed_at < RETRY_AFTER:
            self._drop()
            return
        self.pending[target] = [(payload, dst)]
        flow = dataclasses.replace(
            self.flow,
            dst=self.flow.dst if dst.is_domain else (dst.host, dst.port),
            domain=dst.host if dst.is_domain else None,
        )
        task = loop.create_task(self._open(target, flow))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _open(self, target: str, flow: FlowInfo) -> None:
        """Open the delegate channel for ``target`` and flush what waited for it."""
        try:
            channel = await self.router.upstreams[target].open_udp(flow, _SubReceiver(self))
        except Exception as e:  # an upstream's failure must not end other targets' traffic
            waiting = self.pending.pop(target, [])
            for _ in waiting:
                self._drop()
            self.failed[target] = asyncio.get_running_loop().time()
            reason = e.reason if isinstance(e, UpstreamError) else type(e).__name__
            log.debug("UDP channel via %s for flow %d failed (%s): %s",
                      target, flow.flow_id, reason, e)
            return
        waiting = self.pending.pop(target, [])
        self.attach(target, channel)
        if self.closed:
            return
        self.failed.pop(target, None)
        for payload, dst in waiting:
            channel.send(payload, dst)

    def lost(self, exc: BaseException | None) -> None:
        """A delegate ended: close everything and tell the application's receiver once."""
        if self.closed:
            return
        self.close()
        self.receiver.channel_lost(exc)

    def close(self) -> None:
        """Close every delegate channel and cancel channels still opening (idempotent)."""
        if self.closed:
            return
        self.closed = True
        for task in list(self.tasks):
            task.cancel()
        self.pending.clear()
        channels = list(self.channels.values())
        self.channels.clear()
        for channel in channels:
            with contextlib.suppress(Exception):
                channel.close()


async def resolve_proxy_addresses(host: str, egress: Egress | None = None) -> list[str]:
    """Every address (IPv4 and IPv6) of a proxy host, for ``proxy_addresses``.

    An IP literal (``[v6]`` brackets allowed) is returned as it is; a name is resolved
    through ``egress`` (default: a new :class:`Egress`, the system resolver: see
    :mod:`.resolve`; ``--setup``: the tunnel's OwnResolver, which asks outside the tunnel).
    Call it before virtual DNS answers the host's own queries.

    Raises:
        ConfigError: the name does not resolve.
    """
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    try:
        return [str(ipaddress.ip_address(h))]
    except ValueError:
        pass
    eg = egress if egress is not None else Egress()
    try:
        infos = await eg.getaddrinfo(h, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise ConfigError(f"proxy host {host!r}: cannot resolve ({e})") from None
    out: list[str] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        text = str(sockaddr[0]).split("%", 1)[0]
        try:
            addr = str(ipaddress.ip_address(text))
        except ValueError:
            continue
        if addr not in out:
            out.append(addr)
    if not out:
        raise ConfigError(f"proxy host {host!r}: no IPv4 or IPv6 address")
    return out
