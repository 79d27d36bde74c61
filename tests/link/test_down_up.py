"""A link whose device goes down waits for it; only a device that is gone fails the link.

What the kernel really does with a TUN (seen here in a namespace made for the test): while the
device is down, writes fail with ``EIO`` and reads find nothing (``EAGAIN``); once it is
deleted, reads and writes fail with ``EBADFD`` and the fd polls readable. The link must tell
the two apart: down is waited for (logged once each way, packets dropped and counted), gone
fails the link once with a clear message.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator

import pytest

from tun2proxy.link import fd as fdmod
from tun2proxy.link.base import LinkClosed
from tun2proxy.link.fd import FdLink, device_state
from tun2proxy.link.netconf import InterfaceConfig
from tun2proxy.link.netns import entered, netns_path
from tun2proxy.link.tun_linux import IFF_NO_PI, IFF_TUN, IFF_VNET_HDR, open_tun, tun_link
from tun2proxy.wire.udp import emit_udp_packet

pytestmark = pytest.mark.timeout(60)

TUN_ADDR = "10.78.0.1"
PEER = "10.78.0.2"
DEV = "t2pd0"


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
    name = f"t2pd{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _ip(netns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True)


def _open(netns: str, vnet: bool, down_timeout: float | None = None) -> FdLink:
    flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet else 0)
    dev = open_tun(
        DEV, netns=netns, flags=flags,
        config=InterfaceConfig(addresses=(f"{TUN_ADDR}/24",), mtu=1500, loopback_up=True),
    )
    return tun_link(dev, down_timeout=down_timeout)


@pytest.fixture(params=[False, True], ids=["plain", "vnet"])
def link(request: pytest.FixtureRequest, netns: str) -> Iterator[FdLink]:
    """A TUN link in ``netns`` (opened outside the event loop: pyroute2 runs one of its own)."""
    link = _open(netns, request.param)
    yield link
    link.close()


@pytest.fixture
def bounded_link(netns: str) -> Iterator[FdLink]:
    link = _open(netns, False, down_timeout=0.3)
    yield link
    link.close()


def _to_the_kernel(port: int, data: bytes, offload: bool = False) -> bytes:
    """A UDP datagram from the peer to a socket on the device's address (with ``offload``,
    only the pseudo-header sum in its checksum field, as a VnetLink sends it)."""
    return bytes(emit_udp_packet(
        socket.inet_aton(PEER), socket.inet_aton(TUN_ADDR), 4000, port, data,
        checksum_offload=offload,
    ))


class _Watch:
    """The link's callbacks: inbound batches and link failures."""

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self.batches: list[list[bytes]] = []

    def start(self, link: FdLink) -> None:
        link.start(asyncio.get_running_loop(), self.batches.append, self.errors.append)


async def _until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    for _ in range(int(timeout / 0.02)):
        if cond():
            return True
        await asyncio.sleep(0.02)
    return cond()


def _lines(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


async def test_down_is_waited_for_up_carries_on_and_delete_fails_once(
    netns: str, link: FdLink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    watch = _Watch()
    watch.start(link)
    with entered(netns_path(netns)):
        app = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    app.bind((TUN_ADDR, 0))
    app.settimeout(3)
    port = app.getsockname()[1]
    off = link.checksum_offload
    try:
        assert device_state(link.fd, link.ifsock) == "up"
        link.write_batch([_to_the_kernel(port, b"one", off)])
        assert app.recv(100) == b"one"

        _ip(netns, "link", "set", DEV, "down")
        assert device_state(link.fd, link.ifsock) == "down"
        for _ in range(3):  # EIO each time: the device is down, not gone
            lost = _to_the_kernel(port, b"lost", off)
            link.write_batch([lost, lost])
        assert watch.errors == []
        assert link.down_since is not None
        st = link.stats()
        assert st["down_events"] == 1 and st["down_drops"] == 6
        assert _lines(caplog, f"{DEV} is down") == 1

        _ip(netns, "link", "set", DEV, "up")
        assert await _until(lambda: link.down_since is None)  # the probe saw it come back
        assert _lines(caplog, f"{DEV} is back up") == 1
        link.write_batch([_to_the_kernel(port, b"two", off)])
        assert app.recv(100) == b"two"
        # And packets come in again (sent until one does: the kernel restarts the device's
        # queue asynchronously, up to a second after it is up).
        for _ in range(50):
            app.sendto(b"out", (PEER, 4000))
            if await _until(lambda: any(b"out" in p for b in watch.batches for p in b), 0.1):
                break
        assert any(b"out" in p for b in watch.batches for p in b)

        _ip(netns, "link", "del", DEV)
        assert device_state(link.fd, link.ifsock) == "gone"
        assert await _until(lambda: bool(watch.errors))  # the reader sees EBADFD
        link.write_batch([_to_the_kernel(port, b"x", off)])  # during a shutdown: no second report
        await asyncio.sleep(0.1)
        assert len(watch.errors) == 1
        assert isinstance(watch.errors[0], LinkClosed)
        assert "removed" in str(watch.errors[0])
        assert _lines(caplog, "is down") == 1  # deleting was not taken for going down
    finally:
        app.close()


async def test_a_device_deleted_while_down_fails_the_link(netns: str, link: FdLink) -> None:
    watch = _Watch()
    watch.start(link)
    _ip(netns, "link", "set", DEV, "down")
    link.write_batch([_to_the_kernel(9, b"lost", link.checksum_offload)])
    assert link.down_since is not None and watch.errors == []
    _ip(netns, "link", "del", DEV)
    assert await _until(lambda: bool(watch.errors))
    assert len(watch.errors) == 1 and "removed" in str(watch.errors[0])


async def test_down_longer_than_the_bound_fails_the_link(
    netns: str, bounded_link: FdLink
) -> None:
    link = bounded_link
    watch = _Watch()
    watch.start(link)
    _ip(netns, "link", "set", DEV, "down")
    link.write_batch([_to_the_kernel(9, b"lost")])
    assert watch.errors == []
    assert await _until(lambda: bool(watch.errors))
    assert len(watch.errors) == 1
    assert "down for more than 0.3s" in str(watch.errors[0])


# ------------------------------------------------------------------ without a TUN (no root)


def _pair() -> tuple[FdLink, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return FdLink(a.detach(), 1500, name="pair"), b


def _raising(code: int) -> Callable[..., int]:
    def write(fd: int, data: bytes) -> int:
        raise OSError(code, os.strerror(code))
    return write


async def test_eio_on_write_is_down_and_a_good_write_is_back_up(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    link, peer = _pair()
    watch = _Watch()
    watch.start(link)
    real_write = os.write
    try:
        assert device_state(link.fd) == "unknown"  # not a TUN: traffic tells
        monkeypatch.setattr(os, "write", _raising(errno.EIO))
        link.write_batch([b"E" * 40, b"E" * 40, b"E" * 40])
        assert link.down_since is not None and watch.errors == []
        assert link.stats()["down_drops"] == 3  # the rest of the batch is not even tried
        monkeypatch.setattr(os, "write", real_write)
        link.write_batch([b"E" * 40])
        assert link.down_since is None
        assert peer.recv(100) == b"E" * 40
        assert _lines(caplog, "pair is down") == 1 and _lines(caplog, "pair is back up") == 1
    finally:
        link.close()
        peer.close()


@pytest.mark.parametrize(("code", "says"), [(errno.EBADFD, "removed"), (errno.ENODEV, "removed"),
                                            (errno.EBADF, "closed")])
async def test_gone_errors_fail_the_link_once_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, code: int, says: str
) -> None:
    link, peer = _pair()
    watch = _Watch()
    watch.start(link)
    try:
        monkeypatch.setattr(os, "write", _raising(code))
        link.write_batch([b"E" * 40])
        link.write_batch([b"E" * 40])  # a shutdown's last packets: not a second failure
        assert len(watch.errors) == 1
        assert isinstance(watch.errors[0], LinkClosed) and says in str(watch.errors[0])
    finally:
        link.close()
        peer.close()


async def test_eio_on_read_stops_reading_until_the_probe_looks_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Some kernels fail reads of a down TUN with EIO and keep the fd readable: that must not
    # become a busy loop. Reading stops, and the probe tries again every PROBE_INTERVAL.
    monkeypatch.setattr(fdmod, "PROBE_INTERVAL", 0.05)
    link, peer = _pair()
    watch = _Watch()
    calls = 0

    def read(fd: int, n: int) -> bytes:
        nonlocal calls
        calls += 1
        raise OSError(errno.EIO, "Input/output error")

    real_read = os.read
    monkeypatch.setattr(os, "read", read)
    watch.start(link)
    try:
        peer.send(b"R" * 40)  # readable, for ever, as far as the reader is concerned
        await asyncio.sleep(0.3)
        assert link.down_since is not None and watch.errors == []
        assert calls <= 10, f"{calls} reads in 0.3 s: a busy loop"
        monkeypatch.setattr(os, "read", real_read)
        assert await _until(lambda: link.down_since is None)  # a read succeeds: back up
        assert [p for b in watch.batches for p in b] == [b"R" * 40]
    finally:
        link.close()
        peer.close()
