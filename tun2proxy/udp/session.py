"""One UDP session: the app endpoint it belongs to, its idle deadline, reply synthesis.

Pure: no I/O. Sessions use endpoint-independent mapping (RFC 4787 §4.1): one session per
application source address and port, whatever the destination, so QUIC, STUN and games see
replies from every peer they talk to.
"""

from __future__ import annotations

import ipaddress

from ..wire.udp import emit_udp_packet

__all__ = ["UdpSession"]

_DST_CACHE = 16


class UdpSession:
    """State of one UDP session, keyed by the application's (address, port)."""

    __slots__ = (
        "_names",
        "app_addr",
        "app_port",
        "bytes_in",
        "bytes_out",
        "datagrams_in",
        "datagrams_out",
        "flow_id",
        "key",
        "last_activity",
        "last_head",
        "sched",
        "src_text",
        "timeout",
        "v4",
    )

    def __init__(
        self, flow_id: int, key: bytes, app_addr: bytes, app_port: int, now: float, timeout: float
    ) -> None:
        self.flow_id = flow_id
        self.key = key
        self.app_addr = app_addr
        self.app_port = app_port
        self.v4 = len(app_addr) == 4
        self.src_text = (str(ipaddress.ip_address(app_addr)), app_port)
        self.last_activity = now
        self.timeout = timeout
        self.sched: float | None = None
        #: IP header + 8 bytes of the latest datagram, quoted by ICMP errors about it.
        self.last_head = b""
        self.datagrams_in = 0
        self.datagrams_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self._names: dict[bytes, str] = {}

    def name_of(self, packed: bytes) -> str:
        """The text form of a destination address, cached per session (bounded)."""
        names = self._names
        s = names.get(packed)
        if s is None:
            s = str(ipaddress.ip_address(packed))
            if len(names) >= _DST_CACHE:
                names.clear()
            names[packed] = s
        return s

    def deadline(self) -> float:
        """When this session expires if nothing more happens."""
        return self.last_activity + self.timeout

    def reply(
        self, src_addr: bytes, src_port: int, payload: bytes | bytearray | memoryview,
        checksum_offload: bool = False,
    ) -> bytearray:
        """A packet carrying ``payload`` from ``src`` to the application endpoint."""
        return emit_udp_packet(
            src_addr, self.app_addr, src_port, self.app_port, payload,
            checksum_offload=checksum_offload,
        )

    def __repr__(self) -> str:
        return f"<UdpSession {self.flow_id} {self.src_text[0]}:{self.app_port}>"
