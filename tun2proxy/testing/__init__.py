"""Public test tools: packet builders, a scripted TCP peer, and a seeded network simulator.

Not pure: the simulator uses a seeded :class:`random.Random`. Nothing here touches the OS.
"""

from __future__ import annotations

from .netsim import ImpairedPipe, Impairment, TransferResult, run_transfer
from .packets import icmp_echo_request, pack, tcp_packet, tls_client_hello, udp_packet
from .peer import ExpectationError, ScriptedTcpPeer, parse_tcp_packet

__all__ = [
    "ExpectationError",
    "ImpairedPipe",
    "Impairment",
    "ScriptedTcpPeer",
    "TransferResult",
    "icmp_echo_request",
    "pack",
    "parse_tcp_packet",
    "run_transfer",
    "tcp_packet",
    "tls_client_hello",
    "udp_packet",
]
