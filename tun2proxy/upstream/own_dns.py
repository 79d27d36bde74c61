"""Name lookups for tun2proxy's own connections, from sockets that carry the Outbound options.

With ``--setup`` the host resolver points into the tunnel, and glibc's resolver sockets do
not carry our ``SO_MARK``: a lookup tun2proxy makes for itself (a proxy given by name, a
``direct`` flow to a name from virtual DNS) would enter its own TUN and come back as a
virtual address. :class:`OwnResolver` asks the host's *original* nameservers over UDP from
sockets made by :func:`~tun2proxy.upstream.dial.udp_socket` (marked, or bound to the uplink),
after ``/etc/hosts``; install it as the tunnel's ``Egress(resolver=r.getaddrinfo)`` (or set
``driver.egress.resolver``).

A and AAAA only, over UDP (a truncated answer keeps the addresses it holds), each query
bounded by ``timeout`` and tried on each nameserver in turn; answers are cached for their
TTL (at most ``max_ttl``) in a bounded cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from .dial import Outbound, udp_socket

__all__ = ["OwnResolver", "build_query", "parse_answer"]

_A, _AAAA, _IN = 1, 28, 1
_HDR = struct.Struct("!HHHHHH")


def build_query(qid: int, name: str, qtype: int) -> bytes:
    """A recursive DNS query for ``name`` (IDNA-encoded) of type ``qtype``."""
    labels = name.rstrip(".").encode("idna").split(b".")
    q = b"".join(bytes([len(label)]) + label for label in labels if label) + b"\0"
    return _HDR.pack(qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", qtype, _IN)


def _skip_name(msg: bytes, off: int) -> int:
    for _ in range(128):
        n = msg[off]
        if n & 0xC0 == 0xC0:
            return off + 2
        off += 1 + n
        if n == 0:
            return off
    raise ValueError("name too long")


def parse_answer(msg: bytes, qid: int, qtype: int) -> tuple[int, list[str], int]:
    """``(rcode, addresses, ttl)`` from an answer to query ``qid`` of type ``qtype``.

    Raises:
        ValueError: not an answer to that query, or malformed.
    """
    try:
        rid, flags, qd, an, _ns, _ar = _HDR.unpack_from(msg)
        if rid != qid or not flags & 0x8000:
            raise ValueError("not our answer")
        off = _HDR.size
        for _ in range(qd):
            off = _skip_name(msg, off) + 4
        out: list[str] = []
        ttl = 300
        for _ in range(an):
            off = _skip_name(msg, off)
            rtype, rclass, rttl, rdlen = struct.unpack_from("!HHIH", msg, off)
            off += 10
            data = msg[off:off + rdlen]
            off += rdlen
            if rclass != _IN or rtype != qtype or len(data) != (4 if qtype == _A else 16):
                continue  # CNAMEs and the like: the addresses follow them in the section
            out.append(str(ipaddress.ip_address(data)))
            ttl = min(ttl, rttl)
        return flags & 0xF, out, ttl
    except (struct.error, IndexError) as e:
        raise ValueError(f"malformed DNS answer: {e}") from None


class OwnResolver:
    """Resolve names for tun2proxy's own sockets (``getaddrinfo``-shaped answers)."""

    def __init__(
        self,
        nameservers: Sequence[str],
        outbound: Outbound | None = None,
        *,
        timeout: float = 2.0,
        hosts_file: str = "/etc/hosts",
        cache_size: int = 256,
        max_ttl: float = 300.0,
        port: int = 53,
    ) -> None:
        self.nameservers = [n for n in nameservers if _is_ip(n)]
        self.port = port
        self.outbound = outbound
        self.timeout = timeout
        self.hosts_file = hosts_file
        self.cache_size = cache_size
        self.max_ttl = max_ttl
        self._cache: OrderedDict[str, tuple[float, list[str]]] = OrderedDict()

    async def getaddrinfo(
        self, host: str, port: int | None, family: int = 0, type: int = socket.SOCK_STREAM
    ) -> list[tuple[Any, ...]]:
        """Like ``loop.getaddrinfo(host, port, family=..., type=...)`` for A/AAAA names.

        Raises:
            socket.gaierror: the name does not resolve.
        """
        addrs = await self.lookup(host)
        out: list[tuple[Any, ...]] = []
        proto = socket.IPPROTO_UDP if type == socket.SOCK_DGRAM else socket.IPPROTO_TCP
        for a in addrs:
            fam = socket.AF_INET6 if ":" in a else socket.AF_INET
            if family not in (0, fam):
                continue
            sa: tuple[Any, ...] = (a, port or 0) if fam == socket.AF_INET else (a, port or 0, 0, 0)
            out.append((fam, type, proto, "", sa))
        if not out:
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: no address of that family")
        return out

    async def lookup(self, host: str) -> list[str]:
        """The addresses of ``host``: a literal, /etc/hosts, the cache, then the nameservers."""
        name = host.rstrip(".").lower()
        if _is_ip(name):
            return [name]
        found = self._hosts(name)
        if found:
            return found
        hit = self._cache.get(name)
        if hit is not None and hit[0] > time.monotonic():
            self._cache.move_to_end(name)
            return hit[1]
        v4, v6 = await asyncio.gather(self._query(name, _A), self._query(name, _AAAA))
        addrs = v4[0] + v6[0]
        if not addrs:
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: cannot resolve")
        self._cache[name] = (time.monotonic() + max(1.0, min(v4[1], v6[1], self.max_ttl)),
                             addrs)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return addrs

    def _hosts(self, name: str) -> list[str]:
        try:
            with open(self.hosts_file, encoding="utf-8", errors="replace") as f:
                text = f.read(1 << 20)
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            parts = line.split("#", 1)[0].split()
            if len(parts) >= 2 and name in (p.lower() for p in parts[1:]) and _is_ip(parts[0]):
                out.append(parts[0])
        return out

    async def _query(self, name: str, qtype: int) -> tuple[list[str], float]:
        loop = asyncio.get_running_loop()
        for ns in self.nameservers:
            fam = socket.AF_INET6 if ":" in ns else socket.AF_INET
            qid = int.from_bytes(os.urandom(2), "big")
            try:
                sock = udp_socket(fam, self.outbound, remote=(ns, self.port))
            except OSError:
                continue
            try:
                await loop.sock_sendall(sock, build_query(qid, name, qtype))
                async with asyncio.timeout(self.timeout):
                    while True:  # skip datagrams that are not the answer (bounded by timeout)
                        msg = await loop.sock_recv(sock, 4096)
                        with contextlib.suppress(ValueError):
                            rcode, addrs, ttl = parse_answer(msg, qid, qtype)
                            if rcode in (0, 3):  # NOERROR or NXDOMAIN: the final word
                                return addrs, float(ttl)
                            break  # SERVFAIL, REFUSED: ask the next server
            except (OSError, TimeoutError):
                pass
            finally:
                sock.close()
        return [], 0.0


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
