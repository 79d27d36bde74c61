"""A link over a file descriptor that carries one IP packet per read/write (TUN-style).

Used for a Linux TUN device opened by us, an fd inherited from a parent (Android
``VpnService``, ``--tun-fd``), or a macOS utun fd. Optional framing: Linux packet information
(``struct tun_pi``: 2 flag bytes and a 2-byte EtherType) or the BSD/macOS 4-byte address
family prefix. Reads drain the fd (up to a batch cap) on every wake-up; writes go out at once
and a full device drops the packet (TCP recovers) rather than blocking the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import struct
import sys
from collections.abc import Callable, Sequence

from .base import Link, LinkClosed

__all__ = ["FRAMINGS", "FdLink"]

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
_FATAL = (errno.EBADF, errno.EBADFD, errno.ENODEV, errno.ENXIO, errno.EIO, errno.EINVAL)


class FdLink(Link):
    """Packets over a non-blocking fd, one per read and one per write.

    Args:
        fd: the descriptor (set non-blocking here).
        mtu: the largest packet; reads use a buffer of ``mtu`` plus framing.
        framing: one of :data:`FRAMINGS`.
        close_fd: close the fd in :meth:`close`.
        name: label for logs.
    """

    def __init__(
        self,
        fd: int,
        mtu: int,
        *,
        framing: str = "none",
        close_fd: bool = True,
        name: str = "fd",
    ) -> None:
        if framing not in FRAMINGS:
            raise ValueError(f"framing must be one of {', '.join(FRAMINGS)}")
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
        loop.add_reader(self.fd, self._on_readable)

    def _on_readable(self) -> None:
        batch: list[bytes] = []
        read = os.read
        fd = self.fd
        size = self._read_size
        budget = _BATCH_BYTES
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
        except (OSError, LinkClosed) as e:
            if isinstance(e, LinkClosed) or e.errno in _FATAL:
                self._fail(e)
            else:
                log.warning("%s: read error: %s", self.name, e)
        if not batch:
            return
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
        if self._closed:
            return
        write = os.write
        fd = self.fd
        framed = self._prefix != 0
        for p in packets:
            try:
                write(fd, self._frame(p) if framed else p)
            except (BlockingIOError, InterruptedError):
                self.write_drops += 1
                continue
            except OSError as e:
                if e.errno in _FATAL:
                    self._fail(e)
                    return
                self.write_drops += 1
                continue
            self.bytes_out += len(p)
        self.packets_out += len(packets)

    def _fail(self, exc: BaseException) -> None:
        if self._closed:
            return
        self._stop_reading()
        if self._on_error is not None:
            self._on_error(exc)

    def _stop_reading(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(self.fd)

    def close(self) -> None:
        """Stop reading and close the fd (if owned)."""
        if self._closed:
            return
        self._stop_reading()
        self._closed = True
        if self._close_fd:
            with contextlib.suppress(OSError):
                os.close(self.fd)

    def stats(self) -> dict[str, int]:
        """Packet and byte counters, and write drops."""
        return {
            "packets_in": self.packets_in,
            "packets_out": self.packets_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "write_drops": self.write_drops,
            "bad_frames": self.bad_frames,
        }
