"""DNS handling in the driver: ``--dns virtual``, ``--dns over-tcp`` or ``--dns direct``.

* ``virtual``: A/AAAA queries (to any address, port 53) are answered here with fake addresses
  from a pool; flows to a fake address reach the upstream as the *name*, so resolution happens
  at the proxy. Other query types are forwarded as DNS over TCP through the upstream to
  ``dns_addr``.
* ``over-tcp``: every UDP query to port 53 is forwarded as DNS over TCP through the upstream.
* ``direct``: DNS is ordinary UDP (through the upstream's UDP, or direct with ``--udp``).

Failures are answered with SERVFAIL, never by resolving outside the tunnel.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import cast

from ..dns.pool import DEFAULT_V6_POOL, FakeIpPool, SlotDirectory
from ..dns.tcp_framing import TcpDnsReader, frame
from ..dns.virtual import VirtualDns
from ..errors import ConfigError, FlowStateError, UpstreamError, describe_error
from ..proxy.address import Address
from ..stack.events import UdpDatagram
from ..upstream.base import FlowInfo
from .host import RelayHost

__all__ = ["DNS_MODES", "DnsHandler"]

log = logging.getLogger(__name__)

DNS_MODES = ("virtual", "over-tcp", "direct")
_FORWARD_TIMEOUT = 5.0
_MAX_FORWARDS = 256


class _DnsOverTcp(asyncio.Protocol):
    """One query over one TCP connection (RFC 7766 framing), answer to a future."""

    def __init__(self, query: bytes, done: asyncio.Future[bytes]) -> None:
        self.query = query
        self.done = done
        self.reader = TcpDnsReader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance: uvloop's transports are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(frame(self.query))

    def data_received(self, data: bytes) -> None:
        msgs = self.reader.feed(data)
        if msgs and not self.done.done():
            self.done.set_result(msgs[0])
            assert self.transport is not None
            self.transport.close()

    def eof_received(self) -> bool:
        if not self.done.done():
            self.done.set_exception(UpstreamError("DNS server closed without an answer", "error"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(UpstreamError(f"DNS connection lost: {exc}", "error"))


class DnsHandler:
    """The driver's DNS logic (see the module docstring)."""

    def __init__(
        self,
        driver: RelayHost,
        mode: str,
        dns_addr: Address,
        pool_v4: str = "198.18.0.0/15",
        pool_v6: str | None = None,
        *,
        partition: tuple[int, int] = (0, 1),
        directory: SlotDirectory | None = None,
    ) -> None:
        if mode not in DNS_MODES:
            raise ConfigError(f"dns mode must be one of {', '.join(DNS_MODES)}")
        self.driver = driver
        self.mode = mode
        self.dns_addr = dns_addr
        self.vdns: VirtualDns | None = None
        self.pool: FakeIpPool | None = None
        self._forwards = 0
        self._tasks: set[asyncio.Task[None]] = set()
        #: Fake addresses in use by open flows (address -> flows): kept mapped while used.
        self._active: dict[str, int] = {}
        self.forwarded = 0
        self.failed = 0
        self._last_expire = 0.0
        if mode == "virtual":
            self.pool = FakeIpPool(
                pool_v4, pool_v6 or DEFAULT_V6_POOL, partition=partition, directory=directory
            )
            self.vdns = VirtualDns(self.pool)

    # ------------------------------------------------------------------ UDP queries

    def handle_udp(self, ev: UdpDatagram, now: float) -> bool:
        """Take a datagram to port 53 if this mode answers DNS itself; True if taken."""
        if self.mode == "direct" or ev.dst[1] != 53:
            return False
        vdns = self.vdns
        if vdns is not None:
            if now - self._last_expire > 10.0 and self.pool is not None:
                self._last_expire = now
                for addr in self._active:
                    self.pool.touch(addr, now)  # a mapping lives as long as flows use it
                self.pool.expire(now)
            decision = vdns.handle(ev.payload, now)
            if decision.response is not None:
                self._reply(ev, decision.response)
                return True
            if not decision.forward:
                return True  # dropped (malformed) and counted by VirtualDns
        self._forward(ev)
        return True

    def _reply(self, ev: UdpDatagram, response: bytes) -> None:
        try:
            self.driver.stack.udp_send(ev.flow_id, response, ev.dst)
        except (FlowStateError, ValueError):
            return
        self.driver.schedule_pump()

    def _forward(self, ev: UdpDatagram) -> None:
        if self._forwards >= _MAX_FORWARDS:
            self._servfail(ev)
            return
        self._forwards += 1
        task = asyncio.get_running_loop().create_task(self._forward_task(ev))
        self._tasks.add(task)  # keep a reference until done (the loop holds only a weak one)
        task.add_done_callback(self._tasks.discard)

    async def _forward_task(self, ev: UdpDatagram) -> None:
        try:
            answer = await asyncio.wait_for(self.query_over_tcp(ev), _FORWARD_TIMEOUT)
        except (UpstreamError, TimeoutError, OSError) as e:
            self.failed += 1
            why = describe_error(e)
            if isinstance(e, TimeoutError) and not str(e):
                why += f" (no answer within {_FORWARD_TIMEOUT:g}s)"
            self.driver.limited_log.log(
                logging.WARNING, "dns-forward", "DNS over TCP to %s failed: %s", self.dns_addr,
                why,
            )
            self._servfail(ev)
            return
        finally:
            self._forwards -= 1
        self.forwarded += 1
        if self.vdns is not None:
            fitted = self.vdns.fit_udp(ev.payload, answer)
            if fitted is None:
                return
            answer = fitted
        self._reply(ev, answer)

    async def query_over_tcp(self, ev: UdpDatagram) -> bytes:
        """Send the datagram's query as DNS over TCP through the upstream; the answer."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bytes] = loop.create_future()
        proto = _DnsOverTcp(ev.payload, done)
        # Our own connection to the resolver --dns-addr names (it may be on loopback, e.g.
        # 127.0.0.53), not the app's: the app's datagram only triggers it.
        flow = FlowInfo(
            ev.flow_id, ev.src, (self.dns_addr.host, self.dns_addr.port), internal=True
        )
        transport = await self.driver.upstream.open_tcp(self.dns_addr, proto, flow)
        try:
            return await done
        finally:
            transport.close()

    def _servfail(self, ev: UdpDatagram) -> None:
        vdns = self.vdns
        if vdns is None:
            # over-tcp mode has no VirtualDns for message helpers: build one lazily.
            vdns = VirtualDns(FakeIpPool(capacity=16))
        resp = vdns.servfail(ev.payload)
        if resp is not None:
            self._reply(ev, resp)

    # ------------------------------------------------------------------ fake addresses

    def name_for(self, host: str, now: float) -> str | bool | None:
        """For a flow's destination: its name (str) if it is a mapped fake address, False
        if it is a fake address with no mapping (refuse the flow), None otherwise."""
        pool = self.pool
        if pool is None:
            return None
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return None
        if not pool.contains(ip):
            return None
        name = pool.name_of(ip)
        if name is None:
            return False
        pool.touch(ip, now)
        return name

    def flow_started(self, host: str) -> None:
        """A flow to fake address ``host`` opened: keep its mapping alive while it lasts."""
        self._active[host] = self._active.get(host, 0) + 1

    def flow_ended(self, host: str, now: float) -> None:
        """A flow to fake address ``host`` ended (the mapping's TTL restarts now)."""
        left = self._active.get(host, 0) - 1
        if left > 0:
            self._active[host] = left
        else:
            self._active.pop(host, None)
        if self.pool is not None:
            self.pool.touch(host, now)

    def fake_address(self, name: str, v6: bool, now: float) -> str | None:
        """The fake address of ``name`` for a reply (the app only knows that one)."""
        pool = self.pool
        if pool is None:
            return None
        try:
            a4, a6 = pool.assign(name, now)
        except ValueError:
            return None
        return str(a6 if v6 else a4)

    def table_sizes(self) -> dict[str, int]:
        """Fake-address mappings (they expire; the pool's capacity bounds them), addresses in
        use by flows, and DNS forwards in flight."""
        return {
            "dns_mappings": len(self.pool) if self.pool is not None else 0,
            "dns_active_addresses": len(self._active),
            "dns_forwards": len(self._tasks),
        }

    def stats(self) -> dict[str, object]:
        """Counters of the DNS handling."""
        s: dict[str, object] = {"mode": self.mode, "forwarded": self.forwarded,
                                "failed": self.failed}
        if self.vdns is not None:
            s["virtual"] = self.vdns.stats()
        return s
