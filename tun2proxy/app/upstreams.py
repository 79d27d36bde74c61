"""Building the run's upstream: the outbound socket options, the proxies' addresses
(resolved once at start, bounded and interruptible), and the routing wrapper.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
import socket
from collections.abc import Sequence

from ..errors import ConfigError
from ..routing.rules import Rules
from ..upstream.base import Upstream
from ..upstream.egress import Egress, Outbound
from ..upstream.router import RoutingUpstream
from ..upstream.udpgw import UdpgwUpstream
from .plan import Plan
from .startup import TimedOut, call_bounded

__all__ = ["build_upstream", "make_egress", "proxy_hosts", "resolve_hosts"]

log = logging.getLogger("tun2proxy")


def make_egress(plan: Plan, own_nameservers: Sequence[str] | None = None) -> Egress:
    """The tunnel's Egress: ``--outbound-interface`` and ``--fwmark`` (with ``--setup``
    0x3074 by default) on every socket it opens, and its own-endpoint registry (loop
    detection). With ``own_nameservers`` (``--setup``: the host resolver points into the
    tunnel) the names the tunnel itself connects to are resolved by an
    :class:`~tun2proxy.upstream.own_dns.OwnResolver` asking them from marked sockets."""
    o = plan.options
    outbound = Outbound(interface=o.outbound_interface, fwmark=o.outbound_fwmark)
    egress = Egress(outbound)
    if own_nameservers is not None:
        from ..upstream.own_dns import OwnResolver

        egress.resolver = OwnResolver(own_nameservers, outbound).getaddrinfo
    return egress


def _servers(plan: Plan) -> list[Upstream]:
    """The upstreams that are servers somewhere (they have a host)."""
    return [
        u for u in (plan.main, *plan.extra.values())
        if isinstance(getattr(u, "host", None), str)
    ]


def proxy_hosts(plan: Plan) -> list[str]:
    """The host of every proxy the run uses, each once."""
    hosts: list[str] = []
    for u in _servers(plan):
        host = str(getattr(u, "host", ""))
        if host not in hosts:
            hosts.append(host)
    return hosts


def _literal(host: str) -> str | None:
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    try:
        return str(ipaddress.ip_address(h))
    except ValueError:
        return None


def _lookup(host: str) -> list[str]:
    """Every IPv4 and IPv6 address of ``host`` (blocking: run it through call_bounded)."""
    try:
        infos = socket.getaddrinfo(host, None, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise ConfigError(f"proxy host {host!r}: cannot resolve ({e})") from None
    out: list[str] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        try:
            addr = str(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
        except ValueError:
            continue
        if addr not in out:
            out.append(addr)
    if not out:
        raise ConfigError(f"proxy host {host!r}: no IPv4 or IPv6 address")
    return out


def resolve_hosts(hosts: list[str], timeout: float) -> list[str]:
    """Every address of ``hosts`` (IP literals as they are), each name resolved within
    ``timeout`` seconds; a SIGINT/SIGTERM ends the wait at once (see
    :func:`~tun2proxy.app.startup.call_bounded`).

    Raises:
        ConfigError: a name does not resolve, or not in time ("proxy host 'x': ...").
    """
    addresses: list[str] = []
    for host in hosts:
        literal = _literal(host)
        if literal is not None:
            found = [literal]
        else:
            log.debug("resolving proxy host %s (at most %g s)", host, timeout)
            try:
                found = call_bounded(
                    functools.partial(_lookup, host), timeout, f"resolving proxy host {host!r}"
                )
            except TimedOut:
                raise ConfigError(
                    f"proxy host {host!r}: no answer from the resolver within {timeout:g} s "
                    "(--connect-timeout bounds it)"
                ) from None
        for a in found:
            if a not in addresses:
                addresses.append(a)
    return addresses


def build_upstream(plan: Plan, addresses: list[str]) -> Upstream:
    """The --proxy upstream (with UDP via udpgw around it when ``--udpgw-server`` is
    given), wrapped in a RoutingUpstream when routing applies.

    Only the main upstream gets udpgw: flows routed direct, rejected or to an
    ``--upstream`` keep their own UDP. Routing applies with rules, --bypass or extra
    upstreams, and whenever the proxy is a server (its own ``addresses`` then always go
    direct, so no flow is proxied through itself).
    """
    o = plan.options
    main = plan.main
    if plan.udpgw is not None:
        # Each --workers process has its own client: the connections are divided among them.
        connections = max(1, -(-plan.udpgw.connections // o.workers))
        main = UdpgwUpstream(main, dataclasses.replace(plan.udpgw, connections=connections))
    if not (plan.rules or o.bypass or plan.extra or _servers(plan)):
        return main
    rules = plan.rules if plan.rules is not None else Rules()
    if rules.uses_domains and not o.sniff and o.dns != "virtual":
        log.warning(
            "rules match domains, but names are only known with --dns virtual or --sniff"
        )
    virtual = [o.virtual_dns_pool, o.virtual_dns_pool6] if o.dns == "virtual" else []
    return RoutingUpstream(
        {"proxy": main, **plan.extra}, rules, bypass=list(o.bypass),
        proxy_addresses=addresses, virtual_networks=virtual,
    )
