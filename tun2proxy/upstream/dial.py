"""Outbound sockets: where upstream connections leave from, and routing-loop detection (I/O).

Every upstream opens its sockets here, so two things hold for all of them:

* :class:`Outbound` options (``SO_BINDTODEVICE``, ``SO_MARK``, a source address) apply to
  every outgoing socket — proxy connections, direct flows, UDP — which is how tun2proxy's
  own traffic is kept out of a TUN device that the routes would otherwise send it into
  (``--outbound-interface``, ``--fwmark``);
* the local endpoint of every socket being dialled, and of every open UDP socket, is
  remembered, so when one of them shows up as the *source* of a new flow arriving from the
  TUN, the driver knows it is looking at its own connection routed back into the tunnel (a
  routing loop) and refuses it instead of dialling again and again (tun2proxy#215,
  xjasonlyu/tun2socks#267).

TCP connections to a name with several addresses are raced the RFC 8305 way: the next
address is tried when the previous attempt has not completed within 250 ms, alternating
address families, and the first to connect wins.

An application's destination is checked again here, after any name is resolved
(:func:`local_destination`, ``connect_tcp(..., refuse_local=True)``): a name that resolves to
``127.0.0.1``, ``::1`` or ``::ffff:0.0.0.0`` must not reach this host's own services
(``docs/security.md``). The proxy server's own address is not checked: it is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..wire.addrclass import dial_refused

__all__ = [
    "ATTEMPT_DELAY",
    "Outbound",
    "connect_tcp",
    "default_outbound",
    "forget_endpoint",
    "getaddrinfo",
    "is_own_endpoint",
    "local_destination",
    "remember_endpoint",
    "set_default_outbound",
    "set_resolver",
    "udp_socket",
]

_U32 = struct.Struct("=I")

#: RFC 8305 §5 "Connection Attempt Delay" (the recommended 250 ms).
ATTEMPT_DELAY = 0.25


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


_default = Outbound()
_own: dict[tuple[str, int], int] = {}


def set_default_outbound(outbound: Outbound) -> None:
    """Set the options used by upstreams that were not given their own (the CLI does this)."""
    global _default  # noqa: PLW0603 - one process-wide setting, like the socket defaults
    _default = outbound


def default_outbound() -> Outbound:
    """The process-wide default :class:`Outbound`."""
    return _default


#: Resolves names for our own sockets: ``(host, port, family, type) -> getaddrinfo list``.
Resolver = Callable[[str, "int | None", int, int], Awaitable[list[Any]]]
_resolver: Resolver | None = None


def set_resolver(resolver: Resolver | None) -> None:
    """Resolve the names tun2proxy connects to with ``resolver`` instead of the system's
    (``--setup`` installs an :class:`~tun2proxy.upstream.own_dns.OwnResolver`: the system
    resolver then points into the tunnel); None restores the system resolver."""
    global _resolver  # noqa: PLW0603 - one process-wide setting, like the default outbound
    _resolver = resolver


async def getaddrinfo(
    host: str, port: int | None, family: int = 0, type: int = socket.SOCK_STREAM
) -> list[Any]:
    """``loop.getaddrinfo`` for tun2proxy's own sockets, through :func:`set_resolver`'s."""
    if _resolver is not None and _literal(host, port or 0) is None:
        return await _resolver(host, port, family, type)
    return await asyncio.get_running_loop().getaddrinfo(host, port, family=family, type=type)


def _key(host: str, port: int) -> tuple[str, int]:
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), port


def remember_endpoint(sock: socket.socket) -> tuple[str, int] | None:
    """Remember ``sock``'s local endpoint as ours; returns the key for :func:`forget_endpoint`."""
    try:
        name = sock.getsockname()
        key = _key(name[0], name[1])
    except (OSError, ValueError):
        return None
    if key[1] == 0:
        return None
    _own[key] = _own.get(key, 0) + 1
    return key


def forget_endpoint(key: tuple[str, int] | None) -> None:
    """Undo one :func:`remember_endpoint`."""
    if key is None:
        return
    n = _own.get(key, 0) - 1
    if n > 0:
        _own[key] = n
    else:
        _own.pop(key, None)


#: The unspecified addresses, as :func:`_key` spells them.
_WILDCARDS = ("0.0.0.0", "::")


def is_own_endpoint(host: str, port: int) -> bool:
    """Whether ``host:port`` is the local end of a socket tun2proxy is dialling or holds (UDP).

    A new flow from the TUN with this source is tun2proxy's own traffic come back: a loop.
    A socket bound to the wildcard address (a direct UDP session's) sends from whichever
    local address the route picks, so it matches any address of this host on its port.
    """
    if not _own:
        return False
    try:
        key = _key(host, port)
    except ValueError:
        return False
    if key in _own:
        return True
    # An IPv6 wildcard socket is dual-stack: it may send IPv4 too.
    wildcards = _WILDCARDS[1:] if ":" in key[0] else _WILDCARDS
    return any((w, port) in _own for w in wildcards) and _is_local_address(key[0])


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


async def _attempt(
    loop: asyncio.AbstractEventLoop, family: int, addr: Any, outbound: Outbound
) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    key = None
    try:
        sock.setblocking(False)
        outbound.apply(sock)
        try:
            sock.connect(addr)
            connected = True
        except BlockingIOError:
            connected = False  # in progress: the local port is chosen, the SYN is on its way
        key = remember_endpoint(sock)
        if not connected:
            await loop.sock_connect(sock, addr)  # EALREADY: waits for the outcome
        return sock
    except BaseException:
        sock.close()
        raise
    finally:
        forget_endpoint(key)


def _literal(host: str, port: int) -> list[Any] | None:
    """``getaddrinfo``'s answer for an IP address literal, without asyncio's thread-pool hop
    (a proxy given by address is dialled once per flow)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        addr = (host, port) if family == socket.AF_INET else (host, port, 0, 0)
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", addr)]
    return None


def local_destination(host: str) -> str:
    """Why an application may not be connected to IP literal ``host`` (it is this host:
    loopback, unspecified, ``::ffff:127.0.0.1``...; or not unicast), or "" (names: "")."""
    try:
        packed = ipaddress.ip_address(host.split("%", 1)[0]).packed
    except ValueError:
        return ""
    return dial_refused(packed)


def _refuse_local(host: str, infos: list[Any]) -> list[Any]:
    """``infos`` without the addresses :func:`local_destination` refuses; an error if none is
    left."""
    kept = [i for i in infos if not local_destination(str(i[4][0]))]
    if not kept:
        ip = str(infos[0][4][0])
        what = f"{ip} is" if ip == host else f"{host} resolves to {ip},"
        raise PermissionError(
            errno.EACCES, f"refused: {what} a {local_destination(ip)} address, which the tunnel"
            " may not reach"
        )
    return kept


def _interleave(infos: list[Any]) -> list[Any]:
    """RFC 8305 §4: alternate address families, starting with the first one returned."""
    first = [i for i in infos if i[0] == infos[0][0]]
    other = [i for i in infos if i[0] != infos[0][0]]
    out = []
    for a, b in zip(first, other, strict=False):
        out += [a, b]
    n = min(len(first), len(other))
    return out + first[n:] + other[n:]


async def connect_tcp(
    host: str,
    port: int,
    protocol_factory: Callable[[], asyncio.Protocol],
    outbound: Outbound | None = None,
    *,
    refuse_local: bool = False,
) -> tuple[asyncio.Transport, asyncio.Protocol]:
    """Connect to ``host:port`` (a name is resolved and its addresses raced), attach a protocol.

    With ``refuse_local`` (an application's destination), addresses of this host itself
    (:func:`local_destination`) are never dialled.

    Raises:
        OSError: no address could be connected (the last attempt's error);
            :class:`PermissionError` when ``refuse_local`` left no address to try.
    """
    loop = asyncio.get_running_loop()
    ob = outbound if outbound is not None else _default
    infos = _literal(host, port) or await getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"cannot resolve {host}")
    if refuse_local:
        infos = _refuse_local(host, infos)
    infos = _interleave(infos)
    if len(infos) == 1:
        sock = await _attempt(loop, infos[0][0], infos[0][4], ob)
    else:
        sock = await _race(loop, infos, ob)
    try:
        transport, protocol = await loop.create_connection(protocol_factory, sock=sock)
    except BaseException:
        sock.close()
        raise
    return transport, protocol


async def _race(loop: asyncio.AbstractEventLoop, infos: list[Any], ob: Outbound) -> socket.socket:
    """Staggered attempts (RFC 8305 §5); the first connected socket wins, the rest close."""
    tasks: list[asyncio.Task[socket.socket]] = []
    errors: list[BaseException] = []
    winner: socket.socket | None = None
    nxt = 0
    try:
        while True:
            if nxt < len(infos):  # start the next attempt (after a delay or a failure)
                fam, addr = infos[nxt][0], infos[nxt][4]
                tasks.append(loop.create_task(_attempt(loop, fam, addr, ob)))
                nxt += 1
            pending = [t for t in tasks if not t.done()]
            if not pending:
                if nxt < len(infos):
                    continue
                raise errors[-1] if errors else OSError("no address could be connected")
            done, _ = await asyncio.wait(
                pending, timeout=ATTEMPT_DELAY if nxt < len(infos) else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for t in done:
                exc = t.exception()
                if exc is None:
                    if winner is None:
                        winner = t.result()
                else:
                    errors.append(exc)
            if winner is not None:
                return winner
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                sock = await t
                if sock is not winner:
                    sock.close()


def udp_socket(
    family: int, outbound: Outbound | None = None, remote: tuple[str, int] | None = None
) -> socket.socket:
    """A non-blocking UDP socket with the outbound options, bound (and connected to
    ``remote`` when given). Remember its endpoint with :func:`remember_endpoint`.

    Raises:
        OSError: the socket could not be set up.
    """
    ob = outbound if outbound is not None else _default
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        ob.apply(sock)
        if sock.getsockname()[1] == 0:
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        if remote is not None:
            sock.connect(remote)
    except BaseException:
        sock.close()
        raise
    return sock
