"""Outbound sockets: how upstream connections are opened (I/O).

Every upstream opens its sockets here, through the :class:`~.egress.Egress` its Driver bound
into it, so for all of them:

* the egress's :class:`Outbound` options (``SO_BINDTODEVICE``, ``SO_MARK``, a source address)
  apply to every outgoing socket — proxy connections, direct flows, UDP — which is how
  tun2proxy's own traffic is kept out of a TUN device that the routes would otherwise send
  it into (``--outbound-interface``, ``--fwmark``);
* the local endpoint of every socket being dialled, and of every open UDP socket, is in the
  egress's registry, so when one of them shows up as the *source* of a new flow arriving
  from that Driver's TUN, the driver knows it is looking at its own connection routed back
  into the tunnel (a routing loop) and refuses it instead of dialling again and again
  (tun2proxy#215, xjasonlyu/tun2socks#267). Another Driver's sockets are not in it.

No registry is process-wide. :func:`set_default_outbound` and :func:`set_resolver` remain as
deprecated defaults for Egress objects made afterwards (:func:`default_egress`).

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
from collections.abc import Callable
from typing import Any

from ..wire.addrclass import dial_refused
from .egress import Egress, Outbound, Resolver, literal_infos
from .stream import SocketTransport

__all__ = [
    "ATTEMPT_DELAY",
    "Egress",
    "Outbound",
    "connect_tcp",
    "connect_tcp_early",
    "default_egress",
    "default_outbound",
    "getaddrinfo",
    "local_destination",
    "set_default_outbound",
    "set_resolver",
    "udp_socket",
]


#: RFC 8305 §5 "Connection Attempt Delay" (the recommended 250 ms).
ATTEMPT_DELAY = 0.25


# Deprecated process-wide defaults, read only when an Egress is made without options
# (:func:`default_egress`): immutable values, no registry. Prefer ``Driver(egress=Egress(...))``.
_compat_outbound = Outbound()
_compat_resolver: Resolver | None = None


def set_default_outbound(outbound: Outbound) -> None:
    """Deprecated: the options of Egress objects made afterwards without their own (each
    Driver makes one at construction). Pass ``Driver(egress=Egress(outbound))`` instead."""
    global _compat_outbound  # noqa: PLW0603 - deprecated compatibility setting
    _compat_outbound = outbound


def default_outbound() -> Outbound:
    """Deprecated: what :func:`set_default_outbound` set (``Outbound()`` if nothing)."""
    return _compat_outbound


def set_resolver(resolver: Resolver | None) -> None:
    """Deprecated: the resolver of Egress objects made afterwards (``--setup`` uses an
    :class:`~tun2proxy.upstream.own_dns.OwnResolver`); None: the system resolver. Pass
    ``Egress(resolver=...)`` instead."""
    global _compat_resolver  # noqa: PLW0603 - deprecated compatibility setting
    _compat_resolver = resolver


def default_egress() -> Egress:
    """A new :class:`Egress` with the deprecated defaults (its own, empty registry)."""
    return Egress(_compat_outbound, _compat_resolver)


async def getaddrinfo(
    host: str, port: int | None, family: int = 0, type: int = socket.SOCK_STREAM,
    *, egress: Egress | None = None,
) -> list[Any]:
    """``loop.getaddrinfo`` for tun2proxy's own sockets, through ``egress``'s resolver."""
    eg = egress if egress is not None else default_egress()
    return await eg.getaddrinfo(host, port, family, type)


async def _attempt(
    loop: asyncio.AbstractEventLoop, family: int, addr: Any, outbound: Outbound, egress: Egress
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
        key = egress.remember(sock)
        if not connected:
            await loop.sock_connect(sock, addr)  # EALREADY: waits for the outcome
        return sock
    except BaseException:
        sock.close()
        raise
    finally:
        egress.forget(key)


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
    egress: Egress | None = None,
) -> tuple[asyncio.Transport, asyncio.Protocol]:
    """Connect to ``host:port`` (a name is resolved and its addresses raced), attach a protocol.

    The socket leaves with ``outbound`` if given, else ``egress``'s options; its local
    endpoint is in ``egress``'s registry while it connects (None: a new :func:`default_egress`,
    whose registry nobody watches — the upstreams always pass their bound one).

    With ``refuse_local`` (an application's destination), addresses of this host itself
    (:func:`local_destination`) are never dialled.

    Raises:
        OSError: no address could be connected (the last attempt's error);
            :class:`PermissionError` when ``refuse_local`` left no address to try.
    """
    loop = asyncio.get_running_loop()
    eg = egress if egress is not None else default_egress()
    ob = eg.outbound_for(outbound)
    infos = literal_infos(host, port) or await eg.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"cannot resolve {host}")
    if refuse_local:
        infos = _refuse_local(host, infos)
    infos = _interleave(infos)
    if len(infos) == 1:
        sock = await _attempt(loop, infos[0][0], infos[0][4], ob, eg)
    else:
        sock = await _race(loop, infos, ob, eg)
    try:
        transport, protocol = await loop.create_connection(protocol_factory, sock=sock)
    except BaseException:
        sock.close()
        raise
    return transport, protocol


async def connect_tcp_early(
    host: str,
    port: int,
    protocol_factory: Callable[[], asyncio.Protocol],
    outbound: Outbound | None = None,
    *,
    egress: Egress | None = None,
) -> tuple[asyncio.Transport, asyncio.Protocol, Callable[[], None]]:
    """:func:`connect_tcp` for a protocol that waits for its peer's first bytes anyway (a proxy
    handshake): with one address, a :class:`~.stream.SocketTransport` is attached while the
    connect is still in progress — one ``connect()`` call, made and attached in the calling
    wake-up (an IP literal suspends nothing), the first write queued until the socket
    connects. The protocol's ``connection_made`` therefore does not mean connected: a refused
    or unreachable peer arrives as ``connection_lost(OSError)``.

    Returns the transport, the protocol and a callable that ends the socket's place in the
    egress's registry (call it once the peer has answered, or the connection is gone). A name
    is resolved first; when it has several addresses they are raced by :func:`connect_tcp`,
    connected before the protocol is attached (its registry entry already ended: the callable
    does nothing).

    Raises:
        OSError: the socket could not be made or connected (a name: none of its addresses).
    """
    eg = egress if egress is not None else default_egress()
    infos = literal_infos(host, port) or await eg.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"cannot resolve {host}")
    if len(infos) != 1:
        transport, protocol = await connect_tcp(
            host, port, protocol_factory, outbound, egress=eg
        )
        return transport, protocol, _nothing
    family, addr = infos[0][0], infos[0][4]
    sock = socket.socket(family, socket.SOCK_STREAM)
    key = None
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio's transports
        eg.outbound_for(outbound).apply(sock)
        with contextlib.suppress(BlockingIOError):
            sock.connect(addr)  # in progress: the local port is chosen, the SYN is on its way
        key = eg.remember(sock)
        protocol = protocol_factory()
        transport = SocketTransport(asyncio.get_running_loop(), sock, protocol)
    except BaseException:
        eg.forget(key)
        sock.close()
        raise
    return transport, protocol, _Forget(eg, key)


def _nothing() -> None:
    """Nothing to undo."""


class _Forget:
    """Ends one socket's place in an egress's registry, once however often it is called."""

    __slots__ = ("egress", "key")

    def __init__(self, egress: Egress, key: tuple[str, int] | None) -> None:
        self.egress = egress
        self.key = key

    def __call__(self) -> None:
        key, self.key = self.key, None
        self.egress.forget(key)


async def _race(
    loop: asyncio.AbstractEventLoop, infos: list[Any], ob: Outbound, eg: Egress
) -> socket.socket:
    """Staggered attempts (RFC 8305 §5); the first connected socket wins, the rest close."""
    tasks: list[asyncio.Task[socket.socket]] = []
    errors: list[BaseException] = []
    winner: socket.socket | None = None
    nxt = 0
    try:
        while True:
            if nxt < len(infos):  # start the next attempt (after a delay or a failure)
                fam, addr = infos[nxt][0], infos[nxt][4]
                tasks.append(loop.create_task(_attempt(loop, fam, addr, ob, eg)))
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
    ``remote`` when given). Remember its endpoint with :meth:`Egress.remember`. None: the
    deprecated default options (:func:`default_outbound`).

    Raises:
        OSError: the socket could not be set up.
    """
    ob = outbound if outbound is not None else _compat_outbound
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
