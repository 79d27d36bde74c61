"""Egress: where one tunnel's own sockets leave from, and which of them are its own (I/O).

One :class:`Egress` belongs to one :class:`~tun2proxy.driver.Driver` (it makes one, or is
given one) and is bound into its upstream (:meth:`~tun2proxy.upstream.base.Upstream.bind_egress`).
It holds everything that used to be process-wide in :mod:`.dial`:

* the :class:`Outbound` options (``SO_BINDTODEVICE``, ``SO_MARK``, a source address) applied to
  every socket the tunnel opens (``--outbound-interface``, ``--fwmark``);
* the own-endpoint registry: the local endpoint of every socket being dialled and of every
  open UDP socket, so a new flow from *this* tunnel's TUN with such a source is recognised as
  the tunnel's own traffic routed back into it (a loop) — and a socket of another tunnel in
  the same process is not;
* the resolver for the names the tunnel itself connects to (``--setup`` installs an
  :class:`~tun2proxy.upstream.own_dns.OwnResolver`).

Two Drivers with two Egress objects are independent: their marks, registries and resolvers
never mix.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .resolve import SystemResolver, literal_answer

#: SO_MARK as an unsigned 32-bit value in the machine's byte order.
_U32 = struct.Struct("=I")

__all__ = ["Egress", "Outbound", "Resolver", "literal_infos"]

#: Resolves names for our own sockets: ``(host, port, family, type) -> getaddrinfo list``.
Resolver = Callable[[str, "int | None", int, int], Awaitable[list[Any]]]

#: The unspecified addresses, as :func:`_key` spells them.
_WILDCARDS = ("0.0.0.0", "::")


@dataclass(frozen=True)
class Outbound:
    """Options applied to every outgoing socket.

    Attributes:
        interface: bind to this device (``SO_BINDTODEVICE``): traffic leaves through it
            whatever the routing table says.
        fwmark: ``SO_MARK`` for policy routing (``ip rule add fwmark N lookup main``).
        bind: a local source address (of the right family; others are left unbound).
    """

    interface: str | None = None
    fwmark: int | None = None
    bind: str | None = None

    def apply(self, sock: socket.socket) -> None:
        """Set the options on ``sock`` (before it connects or binds)."""
        if self.interface:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode())
        if self.fwmark is not None:
            # As 4 bytes: the int form of setsockopt takes a C int, and a mark of 2^31 or
            # more (a valid unsigned 32-bit SO_MARK) would not fit it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, _U32.pack(self.fwmark))
        if self.bind and (":" in self.bind) == (sock.family == socket.AF_INET6):
            sock.bind((self.bind, 0))

    def describe(self) -> str:
        """``interface=eth0 fwmark=1`` (empty when nothing is set)."""
        parts = []
        if self.interface:
            parts.append(f"interface={self.interface}")
        if self.fwmark is not None:
            parts.append(f"fwmark={self.fwmark}")
        if self.bind:
            parts.append(f"bind={self.bind}")
        return " ".join(parts)


def literal_infos(host: str, port: int) -> list[Any] | None:
    """``getaddrinfo``'s answer for an IP address literal, without asyncio's thread-pool hop
    (a proxy given by address is dialled once per flow); None for a name."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        addr = (host, port) if family == socket.AF_INET else (host, port, 0, 0)
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", addr)]
    return None


def _key(host: str, port: int) -> tuple[str, int]:
    return _key_host(host), port


@functools.lru_cache(maxsize=4096)
def _key_host(host: str) -> str:
    """The registry's spelling of a socket's address (cached: one parse per address, not per
    socket)."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def _is_local_address(host: str) -> bool:
    """Whether ``host`` is an address of this host (in this network namespace): only then can
    a wildcard-bound socket of ours have sent from it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
    except OSError:
        return False
    return True


class Egress:
    """One tunnel's outbound options, own-endpoint registry and resolver.

    Args:
        outbound: options for every socket opened through this egress (default: none).
        resolver: resolves the names this tunnel connects to (None: the system resolver).
    """

    __slots__ = ("_own", "_system", "outbound", "resolver")

    def __init__(self, outbound: Outbound | None = None, resolver: Resolver | None = None) -> None:
        self.outbound = outbound if outbound is not None else Outbound()
        self.resolver = resolver
        self._own: dict[tuple[str, int], int] = {}
        self._system: SystemResolver | None = None

    @property
    def system_resolver(self) -> SystemResolver:
        """This tunnel's bounded ``socket.getaddrinfo`` pool (:mod:`.resolve`), used when no
        ``resolver`` is set; its threads start on the first name."""
        if self._system is None:
            self._system = SystemResolver()
        return self._system

    def outbound_for(self, override: Outbound | None) -> Outbound:
        """``override`` (an upstream's own options, e.g. ``DirectUpstream(fwmark=...)``), or
        this egress's."""
        return override if override is not None else self.outbound

    # -- own endpoints (routing-loop detection) ----------------------------------------------

    def remember(self, sock: socket.socket) -> tuple[str, int] | None:
        """Remember ``sock``'s local endpoint as ours; returns the key for :meth:`forget`."""
        try:
            name = sock.getsockname()
            key = _key(name[0], name[1])
        except (OSError, ValueError):
            return None
        if key[1] == 0:
            return None
        self._own[key] = self._own.get(key, 0) + 1
        return key

    def forget(self, key: tuple[str, int] | None) -> None:
        """Undo one :meth:`remember` (None: nothing)."""
        if key is None:
            return
        n = self._own.get(key, 0) - 1
        if n > 0:
            self._own[key] = n
        else:
            self._own.pop(key, None)

    def is_own(self, host: str, port: int) -> bool:
        """Whether ``host:port`` is the local end of a socket this egress is dialling or holds.

        A new flow from the tunnel's TUN with this source is its own traffic come back: a
        loop. A socket bound to the wildcard address (a direct UDP session's) sends from
        whichever local address the route picks, so it matches any address of this host on
        its port.
        """
        if not self._own:
            return False
        try:
            key = _key(host, port)
        except ValueError:
            return False
        if key in self._own:
            return True
        # An IPv6 wildcard socket is dual-stack: it may send IPv4 too.
        wildcards = _WILDCARDS[1:] if ":" in key[0] else _WILDCARDS
        return any((w, port) in self._own for w in wildcards) and _is_local_address(key[0])

    @property
    def own_count(self) -> int:
        """How many endpoints are remembered now (for stats and leak tests)."""
        return len(self._own)

    @property
    def lookups_waiting(self) -> int:
        """Name lookups waiting for a resolver thread now (for stats and leak tests)."""
        return self._system.queued if self._system is not None else 0

    # -- names -------------------------------------------------------------------------------

    async def getaddrinfo(
        self, host: str, port: int | None, family: int = 0, type: int = socket.SOCK_STREAM
    ) -> list[Any]:
        """``getaddrinfo`` for this tunnel's own sockets: IP literals at once, names through
        its resolver, else its :attr:`system_resolver` (bounded threads; never the event
        loop's ``getaddrinfo``, see :mod:`.resolve`)."""
        lit = literal_answer(host, port, family, type)
        if lit is not None:
            return lit
        if self.resolver is not None:
            return await self.resolver(host, port, family, type)
        return await self.system_resolver.getaddrinfo(host, port, family, type)

    def describe(self) -> str:
        """The outbound options and resolver, for logs."""
        parts = [self.outbound.describe()] if self.outbound.describe() else []
        if self.resolver is not None:
            parts.append("own resolver")
        return " ".join(parts) or "default"
