"""A link over a file descriptor that carries one IP packet per read/write (TUN-style).

Used for a Linux TUN device opened by us, an fd inherited from a parent (Android
``VpnService``, ``--tun-fd``), or a macOS utun fd. Optional framing: Linux packet information
(``struct tun_pi``: 2 flag bytes and a 2-byte EtherType) or the BSD/macOS 4-byte address
family prefix. Reads drain the fd (up to a batch cap) on every wake-up; writes go out at once
and a full device drops the packet (TCP recovers) rather than blocking the loop.

A device that is *down* (``ip link set DEV down``: Linux TUN then fails writes, and on some
kernels reads, with ``EIO``) is not a failure: the link logs it once, drops packets while
it lasts and carries on when the device is up again, so flows survive a flap (TCP
retransmits what was lost). Only a device that is *gone* (deleted: the fd then reports
``EBADFD``; or the fd closed) fails the link — or one down for longer than ``down_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence

from .base import Link, LinkClosed

__all__ = ["FRAMINGS", "PROBE_INTERVAL", "FdLink", "device_state"]

log = logging.getLogger(__name__)

#: ``none`` (raw IP, Linux IFF_NO_PI), ``pi`` (Linux struct tun_pi), ``af`` (4-byte
#: address family in network order, as macOS utun and the BSDs use).
FRAMINGS = ("none", "pi", "af")

_ETH_P_IP = 0x0800
_ETH_P_IPV6 = 0x86DD
_AF_INET = 2
_AF_INET6 = 30 if sys.platform == "darwin" else 10
_U16U16 = struct.Struct("!HH")
_U32 = struct.Struct("!I")
_BATCH = 256
#: Bytes read per wake-up at most. Large batches of 64 KiB packets starve the pipeline (the
#: app's kernel waits for ACKs while we read megabytes) and leave cache: measured with 8
#: flows client->server at MTU 65535, 16-32 packets a batch moved 4.5-5.7 Gbit/s, 64 or
#: more about 2 (docs/performance.md).
_BATCH_BYTES = 1 << 20
#: The fd no longer reaches a device: it was deleted (a TUN fd then fails with EBADFD) or the
#: fd is closed.
_GONE = (errno.EBADF, errno.EBADFD, errno.ENODEV, errno.ENXIO)
#: The device is there but down (Linux TUN: EIO; other fds may say ENETDOWN).
_DOWN = (errno.EIO, errno.ENETDOWN)
#: Errors that end the link at once (EINVAL: the fd is not something we can use).
_FATAL = (*_GONE, errno.EINVAL)
#: While the device is down: how often it is looked at (gone? back up?), in seconds.
PROBE_INTERVAL = 0.5
_TUNGETIFF = 0x800454D2
_SIOCGIFFLAGS = 0x8913
_IFF_UP = 0x1


def device_state(fd: int, ifsock: socket.socket | None = None) -> str:
    """What the TUN behind ``fd`` looks like now: ``gone`` (deleted: the fd is detached),
    ``up``/``down`` (its ``IFF_UP``, read through ``ifsock``, a socket in the device's network
    namespace), or ``unknown`` (not a TUN fd, or no ``ifsock`` to ask)."""
    try:
        ifr = fcntl.ioctl(fd, _TUNGETIFF, bytes(18))
    except OSError as e:
        return "gone" if e.errno in _GONE else "unknown"
    if ifsock is None:
        return "unknown"
    name = ifr[:16]
    try:
        res = fcntl.ioctl(ifsock.fileno(), _SIOCGIFFLAGS, struct.pack("16sH14x", name, 0))
    except OSError:
        return "unknown"  # the fd is attached, so it exists: moved to another namespace?
    flags = struct.unpack_from("16sH", res)[1]
    return "up" if flags & _IFF_UP else "down"


class FdLink(Link):
    """Packets over a non-blocking fd, one per read and one per write.

    Args:
        fd: the descriptor (set non-blocking here).
        mtu: the largest packet; reads use a buffer of ``mtu`` plus framing.
        framing: one of :data:`FRAMINGS`.
        close_fd: close the fd in :meth:`close`.
        name: label for logs.
        down_timeout: how long the device may stay down before the link fails (seconds);
            None: as long as it exists.
        ifsock: a socket in the device's network namespace, to see it come back up at once
            (without one, the first packet through says so).
    """

    def __init__(
        self,
        fd: int,
        mtu: int,
        *,
        framing: str = "none",
        close_fd: bool = True,
        name: str = "fd",
        down_timeout: float | None = None,
        ifsock: socket.socket | None = None,
    ) -> None:
        if framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {', '.join(FRAMINGS)}")
        if down_timeout is not None and not down_timeout >= 0:
            raise ValueError("down_timeout must be a number of seconds >= 0, or None")
        self.fd = fd
        self.mtu = mtu
        self.name = name
        self.framing = framing
        self._prefix = 0 if framing == "none" else 4
        self._read_size = mtu + self._prefix + 64
        self._close_fd = close_fd
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deliver: Callable[[list[bytes]], None] | None = None
        self._on_error: Callable[[BaseException], None] | None = None
        self._closed = False
        self._failed = False
        self._reading = False
        self.down_timeout = down_timeout
        self.ifsock = ifsock
        #: Since when (monotonic) the device is down; None while it is up.
        self.down_since: float | None = None
        self._probe: asyncio.TimerHandle | None = None
        #: Times the device went down, and packets dropped because it was.
        self.down_events = 0
        self.down_drops = 0
        self.packets_in = 0
        self.packets_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.write_drops = 0
        self.bad_frames = 0
        os.set_blocking(fd, False)

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[list[bytes]], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        """Register the fd with the loop's reader."""
        self._loop = loop
        self._deliver = deliver
        self._on_error = on_error
        self._start_reading()

    def _start_reading(self) -> None:
        loop = self._loop
        if loop is not None and not self._reading and not self._closed and not self._failed:
            loop.add_reader(self.fd, self._on_readable)
            self._reading = True

    def _on_readable(self) -> None:
        batch: list[bytes] = []
        read = os.read
        fd = self.fd
        size = self._read_size
        budget = _BATCH_BYTES
        down = False
        try:
            for _ in range(_BATCH):
                pkt = read(fd, size)
                if not pkt:
                    raise LinkClosed(f"{self.name}: end of file")
                batch.append(pkt)
                budget -= len(pkt)
                if budget <= 0:
                    break  # the rest on the next wake-up: the fd stays readable
        except BlockingIOError:
            pass
        except InterruptedError:
            pass
        except LinkClosed as e:
            self._fail(e)
        except OSError as e:
            if e.errno in _DOWN:
                # Some kernels fail reads of a down TUN too, and may keep the fd readable:
                # stop reading until the probe looks again, so this is no busy loop.
                self._stop_reading()
                self._went_down(e)
                down = True
            elif e.errno in _FATAL:
                self._fail(self._gone(e))
            else:
                log.warning("%s: read error: %s", self.name, e)
        if not batch:
            return
        if (
            self.down_since is not None and not down
            and device_state(self.fd, self.ifsock) != "down"  # not just what was queued
        ):
            self._back_up()  # packets come in again
        self.packets_in += len(batch)
        if self._prefix:
            batch = self._strip(batch)
        for p in batch:
            self.bytes_in += len(p)
        assert self._deliver is not None
        self._deliver(batch)

    def _strip(self, batch: list[bytes]) -> list[bytes]:
        out = []
        for p in batch:
            if len(p) <= 4:
                self.bad_frames += 1
                continue
            out.append(p[4:])
        return out

    def _frame(self, p: bytes | bytearray) -> bytes | bytearray:
        v = p[0] >> 4 if p else 0
        if self.framing == "pi":
            head = _U16U16.pack(0, _ETH_P_IPV6 if v == 6 else _ETH_P_IP)
        else:
            head = _U32.pack(_AF_INET6 if v == 6 else _AF_INET)
        return head + bytes(p)

    def write_batch(self, packets: Sequence[bytes | bytearray]) -> None:
        """Write each packet; a full device or a transient error drops that packet."""
        if self._closed or self._failed:
            return
        write = os.write
        fd = self.fd
        framed = self._prefix != 0
        sent = self.bytes_out
        for i, p in enumerate(packets):
            try:
                write(fd, self._frame(p) if framed else p)
            except (BlockingIOError, InterruptedError):
                self.write_drops += 1
                continue
            except OSError as e:
                if self._write_failed(e, len(packets) - i):
                    return
                continue
            self.bytes_out += len(p)
        self.packets_out += len(packets)
        if self.down_since is not None and self.bytes_out != sent:
            self._back_up()  # the device takes packets again

    def _write_failed(self, e: OSError, left: int) -> bool:
        """Handle a write error with ``left`` packets (this one included) still to go; True
        when the rest of the batch is not to be tried."""
        if e.errno in _DOWN:
            self._went_down(e)
            self.down_drops += left  # the device takes none of them while down
            return True
        if e.errno in _FATAL:
            self._fail(self._gone(e))
            return True
        self.write_drops += 1
        return False

    def _gone(self, e: OSError) -> BaseException:
        """The error to fail with: a clear :class:`LinkClosed` when the device is gone."""
        if e.errno == errno.EBADF:
            return LinkClosed(f"the file descriptor was closed ({e.strerror})")
        if e.errno in _GONE:
            return LinkClosed(f"the device was removed ({e.strerror})")
        return e

    # ------------------------------------------------------------------ down and up

    def _went_down(self, e: OSError) -> None:
        """The device is down (or, if the probe says so, gone): wait for it, bounded."""
        if self.down_since is not None or self._failed or self._closed:
            return
        if device_state(self.fd, self.ifsock) == "gone":
            self._fail(LinkClosed(f"the device was removed ({e.strerror})"))
            return
        self.down_since = time.monotonic()
        self.down_events += 1
        bound = (
            "as long as it exists" if self.down_timeout is None
            else f"up to {self.down_timeout:g}s"
        )
        log.warning(
            "%s is down (%s): waiting for it to come back (%s); flows are kept, packets to it "
            "are dropped meanwhile", self.name, e.strerror, bound,
        )
        self._arm_probe()

    def _arm_probe(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed() and self._probe is None:
            self._probe = loop.call_later(PROBE_INTERVAL, self._on_probe)

    def _on_probe(self) -> None:
        """While down: gone (fail), back up (carry on), or still down (look again later)."""
        self._probe = None
        since = self.down_since
        if since is None or self._closed or self._failed:
            return
        state = device_state(self.fd, self.ifsock)
        if state == "gone":
            self._fail(LinkClosed("the device was removed while it was down"))
            return
        if state == "up":
            self._back_up()
            return
        if self.down_timeout is not None and time.monotonic() - since > self.down_timeout:
            self._fail(LinkClosed(f"down for more than {self.down_timeout:g}s"))
            return
        self._start_reading()  # a reader stopped by a read error tries again
        self._arm_probe()

    def _back_up(self) -> None:
        since = self.down_since
        if since is None:
            return
        self.down_since = None
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        self._start_reading()
        log.warning(
            "%s is back up after %.1fs (%d packets to it dropped while it was down)",
            self.name, time.monotonic() - since, self.down_drops,
        )

    def _fail(self, exc: BaseException) -> None:
        """Fail for good: stop, and tell the driver once."""
        if self._closed or self._failed:
            return
        self._failed = True
        self.down_since = None
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        self._stop_reading()
        if self._on_error is not None:
            self._on_error(exc)

    def _stop_reading(self) -> None:
        if not self._reading:
            return
        self._reading = False
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self.fd)

    def close(self) -> None:
        """Stop reading and close the fd (if owned)."""
        if self._closed:
            return
        self._stop_reading()
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        self._closed = True
        if self._close_fd:
            with contextlib.suppress(OSError):
                os.close(self.fd)
        if self.ifsock is not None:
            self.ifsock.close()

    def stats(self) -> dict[str, int]:
        """Packet and byte counters, and write drops."""
        return {
            "packets_in": self.packets_in,
            "packets_out": self.packets_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "write_drops": self.write_drops,
            "bad_frames": self.bad_frames,
            "down_events": self.down_events,
            "down_drops": self.down_drops,
        }
