"""VnetLink: a real TUN with IFF_VNET_HDR in a namespace made here, the kernel as the peer.

Shows the contract both ways: what the kernel hands over (NEEDS_CSUM packets whose
checksum is only the pseudo-header sum, accepted without verification), what it accepts
from us (NEEDS_CSUM packets it completes), and that unmarked packets are verified here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tun2proxy.link.netconf import InterfaceConfig
from tun2proxy.link.netns import entered, netns_path
from tun2proxy.link.tun_linux import IFF_NO_PI, IFF_TUN, IFF_VNET_HDR, open_tun, tun_link
from tun2proxy.link.vnet import VnetLink, _transport_ok
from tun2proxy.wire import parse_ip
from tun2proxy.wire.udp import emit_udp_packet

pytestmark = pytest.mark.timeout(60)

TUN_ADDR = "10.77.0.1"
PEER = "10.77.0.2"


def _can_run() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN devices)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


@pytest.fixture
def netns() -> Iterator[str]:
    reason = _can_run()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    name = f"t2pv{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def vnet(netns: str) -> Iterator[VnetLink]:
    dev = open_tun(
        "t2pv0", netns=netns,
        config=InterfaceConfig(addresses=(f"{TUN_ADDR}/24",), mtu=1500, loopback_up=True),
        flags=IFF_TUN | IFF_NO_PI | IFF_VNET_HDR,
    )
    link = tun_link(dev)
    assert isinstance(link, VnetLink)
    yield link
    link.close()


async def _collect(link: VnetLink, want: int = 1, timeout: float = 5.0) -> list[bytes]:
    loop = asyncio.get_running_loop()
    got: list[bytes] = []
    done = asyncio.Event()

    def deliver(batch: list[bytes]) -> None:
        got.extend(batch)
        if len(got) >= want:
            done.set()

    link.start(loop, deliver, lambda e: None)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), timeout)
    link._stop_reading()
    return got


def _udp_socket(netns: str) -> socket.socket:
    with entered(netns_path(netns)):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((TUN_ADDR, 0))
    s.settimeout(3)
    return s


async def test_kernel_packets_arrive_and_replies_with_partial_checksums_are_completed(
    vnet: VnetLink, netns: str
) -> None:
    assert vnet.checksum_ok and vnet.checksum_offload
    s = _udp_socket(netns)
    port = s.getsockname()[1]
    s.sendto(b"ping", (PEER, 9))
    pkts = [p for p in await _collect(vnet) if parse_ip(p).protocol == 17]
    assert pkts, "the UDP datagram came out of the TUN"
    ip = parse_ip(pkts[0])
    assert bytes(pkts[0][ip.offset + 8 : ip.end]) == b"ping"
    # A reply with only the pseudo-header sum in its checksum field, sent NEEDS_CSUM: the
    # kernel completes it and the socket gets the datagram.
    reply = emit_udp_packet(socket.inet_aton(PEER), socket.inet_aton(TUN_ADDR), 9, port,
                            b"pong", checksum_offload=True)
    vnet.write_batch([reply])
    assert s.recvfrom(64) == (b"pong", (PEER, 9))
    assert vnet.stats()["packets_out"] == 1
    s.close()


async def test_without_offload_marking_the_kernel_checks_the_checksum(
    vnet: VnetLink, netns: str
) -> None:
    # Control: the same partial-checksum reply sent as a plain packet (no NEEDS_CSUM) is a
    # packet with a wrong checksum, and the kernel drops it. So the header really matters.
    s = _udp_socket(netns)
    port = s.getsockname()[1]
    reply = emit_udp_packet(socket.inet_aton(PEER), socket.inet_aton(TUN_ADDR), 9, port,
                            b"pong", checksum_offload=True)
    vnet.checksum_offload = False  # what a wrapper that rewrites packets would set
    vnet.write_batch([reply])
    s.settimeout(0.5)
    with pytest.raises(TimeoutError):
        s.recvfrom(64)
    good = emit_udp_packet(socket.inet_aton(PEER), socket.inet_aton(TUN_ADDR), 9, port, b"ok")
    vnet.write_batch([good])
    s.settimeout(3)
    assert s.recvfrom(64)[0] == b"ok"
    s.close()


def test_unmarked_packets_are_verified_here() -> None:
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

    good = [
        bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2) / (b"x" * 33)),
        bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / (b"y" * 10)),
        bytes(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP() / b"z"),
        bytes(IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=1, dport=2) / (b"x" * 7)),
        bytes(IPv6(src="fd00::1", dst="fd00::2") / ICMPv6EchoRequest()),
    ]
    for p in good:
        assert _transport_ok(p), p
        for i in (9 if p[0] >> 4 == 4 else 8, len(p) - 1):  # a header byte, the last byte
            bad = bytearray(p)
            bad[i] ^= 0x10
            assert not _transport_ok(bytes(bad)), (p, i)
    udp = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / b"q"
    no_csum = bytearray(bytes(udp))
    no_csum[26:28] = b"\x00\x00"  # IPv4 UDP without a checksum is valid
    assert _transport_ok(bytes(no_csum))
    assert not _transport_ok(b"\x45" + bytes(5))


async def test_bad_unmarked_inbound_packet_is_dropped_and_counted(vnet: VnetLink) -> None:
    # Feed the reader directly: a raw frame with flags 0 and a corrupted TCP checksum.
    from scapy.layers.inet import IP, TCP

    pkt = bytearray(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2) / b"dat"))
    pkt[-1] ^= 1
    out = vnet._strip([bytes(10) + bytes(pkt), bytes([1]) + bytes(9) + bytes(pkt)])
    assert out == [bytes(pkt)]  # the NEEDS_CSUM one is trusted, the unmarked one is not
    assert vnet.bad_checksums == 1


def _persistent(netns: str, name: str) -> None:
    for cmd in (["tuntap", "add", "dev", name, "mode", "tun"],
                ["addr", "add", f"{TUN_ADDR}/24", "dev", name], ["link", "set", name, "up"]):
        subprocess.run(["ip", "-n", netns, *cmd], check=True)


def _raw_attach(netns: str, name: str) -> int:
    """Attach to ``name`` with plain flags and nothing else (a reader that is not ours)."""
    import fcntl
    import struct

    from tun2proxy.link.tun_linux import TUNSETIFF

    with entered(netns_path(netns)):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def _kernel_udp_packet(netns: str, fd: int) -> bytes:
    """Send a datagram into the TUN from a kernel socket; the first UDP packet read back.

    Sent again until one comes out: a device that just got its reader starts its queue
    asynchronously (the kernel's link watch, up to a second later) and drops what comes
    before."""
    import select

    s = _udp_socket(netns)
    try:
        for _ in range(50):
            s.sendto(b"x" * 300, (PEER, 9))
            while select.select([fd], [], [], 0.1)[0]:
                p = os.read(fd, 65536)
                if parse_ip(p).protocol == 17:
                    return p
    finally:
        s.close()
    raise AssertionError("no UDP packet came out of the TUN")


async def test_offloads_left_on_a_persistent_device_are_cleared_for_a_plain_reader(
    netns: str,
) -> None:
    # A persistent device keeps the offloads its last reader set. A reader killed without
    # closing cleanly leaves them on; a later reader without the virtio header must still get
    # packets with complete checksums, or it drops everything (seen in CI: every SYN dropped).
    _persistent(netns, "t2pp0")
    first = tun_link(open_tun("t2pp0", netns=netns, flags=IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
    assert isinstance(first, VnetLink) and first.checksum_offload
    os.close(first.fd)  # as if killed: no clean close
    dev = open_tun("t2pp0", netns=netns)
    try:
        p = _kernel_udp_packet(netns, dev.fd)
        assert _transport_ok(p), "a partial checksum reached a reader without offloads"
    finally:
        os.close(dev.fd)


def test_a_clean_close_clears_the_offloads_for_the_next_reader(netns: str) -> None:
    _persistent(netns, "t2pp1")
    link = tun_link(open_tun("t2pp1", netns=netns, flags=IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
    assert isinstance(link, VnetLink)
    link.close()
    fd = _raw_attach(netns, "t2pp1")
    try:
        p = _kernel_udp_packet(netns, fd)
        assert _transport_ok(p), "the device kept our offloads after we closed"
    finally:
        os.close(fd)
