"""The settings of one worker's Driver and NetStack, from :class:`~tun2proxy.options.Options`
(limits divided among the workers); used at start and by a reload.
"""

from __future__ import annotations

import os

from ..dns.pool import SlotDirectory
from ..driver.loop import DriverConfig
from ..options import Options
from ..stack.config import StackConfig
from ..tcp.config import TcpConfig

#: A download's send buffer may grow to this many times ``--tcp-buffer`` while the buffer is
#: what limits it (TcpConfig.send_buffer_max); 8 flows server->client moved 4.2-4.9 Gbit/s
#: with 1M and no growth, 5.6-5.9 with 2M-4M (docs/performance.md).
SEND_BUFFER_GROWTH = 4

__all__ = ["driver_config", "stack_config"]


def _share(total: int, workers: int) -> int:
    """One worker's share of a limit (the shares add up to at least the limit)."""
    return max(1, -(-total // workers))


def stack_config(
    opts: Options, mtu: int, offload: bool = False, gso: int = 0, workers: int = 1
) -> StackConfig:
    """The stack settings of one worker's driver (limits divided among ``workers``)."""
    pending = _share(opts.max_pending, workers)
    memory = opts.memory_limit
    return StackConfig(
        isn_secret=os.urandom(16),
        mtu=mtu,
        checksum_offload=offload,
        max_flows=_share(opts.max_sessions, workers),
        max_pending=pending,
        syn_flood_threshold=max(1, pending // 2),
        half_open_timeout=opts.half_open_timeout,
        memory_limit=None if memory is None else max(1 << 20, memory // workers),
        max_udp_sessions=_share(opts.max_udp_sessions, workers),
        udp_timeout=opts.udp_timeout,
        dns_timeout=min(10.0, opts.udp_timeout),
        icmp_echo=opts.icmp,
        tcp=TcpConfig(
            idle_timeout=opts.tcp_timeout, recv_buffer=opts.tcp_buffer,
            send_buffer=opts.tcp_buffer,
            send_buffer_max=min(SEND_BUFFER_GROWTH * opts.tcp_buffer, 1 << 30),
            gso_max_size=gso if offload else 0,
        ),
    )


def driver_config(
    opts: Options, worker: tuple[int, int], directory: SlotDirectory | None
) -> DriverConfig:
    """The driver settings of one worker (the dial limits divided among the workers)."""
    workers = worker[1]
    return DriverConfig(
        connect_timeout=opts.connect_timeout,
        max_connecting=_share(opts.max_connecting, workers),
        max_connecting_per_destination=_share(
            min(opts.max_connecting_per_destination, opts.max_connecting), workers
        ),
        queue_timeout=opts.queue_timeout, udp=opts.udp, dns=opts.dns,
        dns_addr=opts.dns_addr, virtual_dns_pool=opts.virtual_dns_pool,
        virtual_dns_pool6=opts.virtual_dns_pool6, sniff=opts.sniff,
        worker=worker, dns_directory=directory,
    )
