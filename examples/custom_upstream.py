"""A custom upstream in a few lines: direct, but only to allowed ports; proven by the suite.

Run it: ``python examples/custom_upstream.py`` prints the conformance report.
"""

import asyncio
import sys

from tun2proxy.errors import UpstreamError
from tun2proxy.proxy.address import Address
from tun2proxy.testing.conformance import check_upstream
from tun2proxy.upstream import FlowInfo, Upstream, upstream_error_from_os


class AllowedPortsUpstream(Upstream):
    """Connect directly to ports 80, 443 and 1024-65535; refuse the rest (the app gets RST)."""

    name = "allowed-ports"

    def __init__(self, allowed: frozenset[int] = frozenset({80, 443, *range(1024, 65536)})):
        self.allowed = allowed

    async def open_tcp(self, dst: Address, protocol: asyncio.Protocol, flow: FlowInfo
                       ) -> asyncio.Transport:
        if dst.port not in self.allowed:
            raise UpstreamError(f"port {dst.port} is not allowed", "denied")
        loop = asyncio.get_running_loop()
        try:  # the protocol is attached at connect: nothing the server sends first is lost
            transport, _ = await loop.create_connection(lambda: protocol, dst.host, dst.port)
        except OSError as e:
            raise upstream_error_from_os(e, f"connection to {dst}") from None
        return transport


if __name__ == "__main__":
    report = asyncio.run(check_upstream(AllowedPortsUpstream))
    print(report)
    sys.exit(0 if report.passed else 1)
