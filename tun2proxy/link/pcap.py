"""A packet capture tap: a link wrapper that copies every packet both ways into a pcapng file.

:class:`PcapLink` wraps the device's link (innermost, so the capture holds what the device
carried: with ``--impair`` the app's packets before their impairment inbound, the stack's after
it outbound). Per batch, on the loop: one clock read, the optional filter per packet, the
pcapng blocks joined into one chunk and handed to a :class:`CaptureWriter`, whose thread does
the (blocking) writes to the file or pipe. The loop never waits for the disk or a slow reader:
the writer's backlog is bounded (``buffer`` bytes) and packets that do not fit are dropped and
counted (``pcap_dropped``). At ``max_bytes`` written the capture stops (the file ends on a
whole block: it stays readable), and a reader that goes away (``tshark`` quit: EPIPE) stops it
too; the tunnel carries on either way.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

from ..wire import pcapng
from ..wire.pcapfilter import PacketFilter
from .base import Link

__all__ = ["DEFAULT_BUFFER", "CaptureWriter", "PcapLink", "open_capture_fd"]

log = logging.getLogger("tun2proxy")

#: Bytes of encoded packets the writer may have queued before packets are dropped.
DEFAULT_BUFFER = 32 << 20
_Part = bytes | memoryview
#: Bytes queued that wake the writer at once; less is written within FLUSH_INTERVAL seconds.
WAKE_BYTES = 1 << 20
FLUSH_INTERVAL = 0.05
#: Chunks and bytes per write at most.
_IOV_MAX = 512
_WRITE_MAX = 8 << 20


def open_capture_fd(path: str) -> tuple[int, bool]:
    """Open ``path`` for a new capture (``-``: standard output); ``(fd, owned)``.

    A file is created (or truncated) with mode 0600: captures hold payloads.

    Raises:
        OSError: it cannot be opened.
    """
    if path == "-":
        return 1, False
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    return fd, True


class CaptureWriter:
    """Writes chunks to ``fd`` on a thread of its own; bounded, never blocks its caller.

    Args:
        fd: where to write (a file or a pipe).
        owned: close ``fd`` at the end.
        buffer: bytes that may wait to be written at most.
        max_bytes: stop once this much has been accepted (0: no cap).
        name: the capture's label for logs.
    """

    def __init__(
        self, fd: int, *, owned: bool = True, buffer: int = DEFAULT_BUFFER, max_bytes: int = 0,
        name: str = "capture",
    ) -> None:
        self.fd = fd
        self.owned = owned
        self.buffer = buffer
        self.max_bytes = max_bytes
        self.name = name
        self._chunks: collections.deque[_Part] = collections.deque()
        self._wake = threading.Event()
        self._woken_at = 0
        self._closing = False
        #: Bytes accepted (written by the caller's thread only).
        self.accepted = 0
        #: Bytes written (written by the writer thread only).
        self.written = 0
        #: Why the capture stopped (``max`` reached, the reader ``gone``, an ``error``), or None.
        self.stopped: str | None = None
        self._thread = threading.Thread(target=self._run, name="tun2proxy-pcap", daemon=True)
        self._thread.start()

    @property
    def room(self) -> int:
        """Bytes that may be offered now without a drop (0 once stopped)."""
        if self.stopped is not None:
            return 0
        room = self.buffer - (self.accepted - self.written)
        if self.max_bytes:
            room = min(room, self.max_bytes - self.accepted)
        return max(room, 0)

    def cap_reached(self, size: int) -> bool:
        """Whether ``size`` more bytes would pass ``max_bytes`` (then the capture stops)."""
        if self.max_bytes and self.accepted + size > self.max_bytes:
            if self.stopped is None:
                self.stopped = "max"
                log.warning(
                    "%s: --pcap-max %d bytes reached: capture stopped (the tunnel carries on)",
                    self.name, self.max_bytes,
                )
                self._wake.set()
            return True
        return False

    def offer(self, parts: list[_Part], size: int | None = None) -> None:
        """Queue ``parts`` (immutable: they are written later, as they are), ``size`` bytes
        in all (the caller checked :attr:`room`).

        The writer is woken only once :data:`WAKE_BYTES` wait (else it looks every
        :data:`FLUSH_INTERVAL` seconds): a wake-up per batch would hand the GIL to the writer
        thousands of times a second, each time stalling the loop's thread."""
        self.accepted += sum(map(len, parts)) if size is None else size
        self._chunks.extend(parts)
        if self.accepted - self._woken_at >= WAKE_BYTES:
            self._woken_at = self.accepted
            self._wake.set()

    def _run(self) -> None:
        chunks = self._chunks
        wake = self._wake
        while True:
            wake.wait(FLUSH_INTERVAL)
            wake.clear()
            while chunks:
                # Many chunks per system call: each call hands the GIL back and forth with
                # the loop's thread, so few large writes keep up where one per batch would not.
                batch: list[_Part] = []
                size = 0
                while chunks and len(batch) < _IOV_MAX and size < _WRITE_MAX:
                    c = chunks.popleft()
                    batch.append(c)
                    size += len(c)
                if self.stopped not in ("gone", "error"):
                    self._write(batch)
                self.written += size
            if self._closing:
                return

    def _write(self, batch: list[_Part]) -> None:
        try:
            while batch:
                n = os.writev(self.fd, batch)
                while batch and n >= len(batch[0]):
                    n -= len(batch.pop(0))
                if n:
                    batch[0] = memoryview(batch[0])[n:]
        except BrokenPipeError:
            self.stopped = "gone"
            log.warning("%s: the reader went away: capture stopped", self.name)
        except OSError as e:
            self.stopped = "error"
            log.error("%s: write failed: %s: capture stopped", self.name, e.strerror)

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (waiting at most ``timeout`` seconds), then close."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        if self.owned and not self._thread.is_alive():
            with contextlib.suppress(OSError):
                os.close(self.fd)


class PcapLink(Link):
    """Wraps ``inner`` and writes every packet both ways to ``writer`` (see the module
    docstring). ``keep``: an optional filter (:func:`~tun2proxy.wire.pcapfilter.parse_filter`);
    ``snaplen``: bytes kept of each packet (0: all)."""

    def __init__(
        self, inner: Link, writer: CaptureWriter, keep: PacketFilter | None = None,
        *, snaplen: int = 0, clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.inner = inner
        self.writer = writer
        self.keep = keep
        self.snaplen = snaplen
        self.clock = clock
        self.mtu = inner.mtu
        self.name = inner.name
        self.checksum_ok = inner.checksum_ok
        self.checksum_offload = inner.checksum_offload
        self.gso_max_size = inner.gso_max_size
        self._deliver: Callable[[list[bytes]], None] | None = None
        self._closed = False
        #: Packets written to the capture, and dropped because the writer was behind.
        self.captured = 0
        self.dropped = 0
        writer.offer([pcapng.header(interface=inner.name, snaplen=snaplen)])

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[list[bytes]], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        """Start the inner link; its batches pass through the tap on their way in."""
        self._deliver = deliver
        self.inner.start(loop, self._from_inner, on_error)

    def _from_inner(self, packets: list[bytes]) -> None:
        self._tap(packets, pcapng.INBOUND)
        assert self._deliver is not None
        self._deliver(packets)

    def write_batch(self, packets: Sequence[bytes | bytearray]) -> None:
        """Capture, then write through the inner link."""
        self._tap(packets, pcapng.OUTBOUND)
        self.inner.write_batch(packets)

    def _tap(self, packets: Sequence[bytes | bytearray], direction: int) -> None:
        w = self.writer
        if w.stopped is not None or not packets:
            return
        room = w.room
        ts = self.clock()
        keep = self.keep
        block = pcapng.packet_block
        size = pcapng.epb_size
        parts: list[_Part] = []
        total = 0
        snaplen = self.snaplen
        for p in packets:
            if keep is not None and not keep(p):
                continue
            n = size(len(p), snaplen)
            if total + n > room:
                if w.cap_reached(total + n):
                    break
                self.dropped += 1
                continue
            # The stack's packets are bytearrays it owns: copied (one memcpy); the device's
            # are bytes, written later as they are.
            length = len(p)
            if type(p) is not bytes:
                p = bytes(p[:snaplen] if snaplen else p)
            parts += block(p, ts, direction, snaplen, length)
            total += n
            self.captured += 1
        if parts:
            w.offer(parts, total)

    def close(self) -> None:
        """Close the inner link, then flush and close the capture."""
        if self._closed:
            return
        self._closed = True
        self.inner.close()
        self.writer.close()
        if self.dropped:
            log.warning(
                "%s: %d of %d packets left out (the writer was behind the traffic)",
                self.writer.name, self.dropped, self.dropped + self.captured,
            )

    def stats(self) -> dict[str, int]:
        """The inner link's counters and the capture's."""
        s = dict(self.inner.stats())
        s["pcap_packets"] = self.captured
        s["pcap_dropped"] = self.dropped
        s["pcap_bytes"] = self.writer.accepted
        s["pcap_stopped"] = int(self.writer.stopped is not None)
        return s
