"""FdLink over a SOCK_SEQPACKET socketpair (one packet per read/write, like a TUN fd)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tun2proxy.link.fd import FdLink
from tun2proxy.testing import tcp_packet

V4 = tcp_packet("10.0.0.1", "192.0.2.1", 1000, 80, flags=0x02)
V6 = tcp_packet("fd00::1", "2001:db8::1", 1000, 80, flags=0x02)


@pytest.mark.parametrize(
    ("framing", "head4", "head6"),
    [
        ("none", b"", b""),
        ("pi", b"\x00\x00\x08\x00", b"\x00\x00\x86\xdd"),
        ("af", b"\x00\x00\x00\x02", None),
    ],
)
async def test_framing_both_ways(framing: str, head4: bytes, head6: bytes | None) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    link = FdLink(a.detach(), 1500, framing=framing)
    got: list[list[bytes]] = []
    loop = asyncio.get_running_loop()
    link.start(loop, got.append, lambda e: None)
    b.send(head4 + V4)
    if head6 is not None:
        b.send(head6 + V6)
    await asyncio.sleep(0.05)
    assert [p for batch in got for p in batch] == ([V4, V6] if head6 is not None else [V4])
    link.write_batch([V4, V6])
    assert b.recv(2000) == head4 + V4
    six = b.recv(2000)
    assert six.endswith(V6) and len(six) == len(V6) + len(head4)
    link.close()
    b.close()
    assert link.stats()["packets_in"] >= 1


async def test_reads_are_batched_and_eof_is_a_link_failure() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    link = FdLink(a.detach(), 1500)
    batches: list[list[bytes]] = []
    errors: list[BaseException] = []
    link.start(asyncio.get_running_loop(), batches.append, errors.append)
    for _ in range(50):
        b.send(V4)
    await asyncio.sleep(0.05)
    assert sum(len(x) for x in batches) == 50
    assert len(batches) <= 2  # drained per wake-up, not one callback per packet
    b.close()
    await asyncio.sleep(0.05)
    assert len(errors) == 1
    link.close()
