"""The loop-thread cost of the ``--pcap`` tap per packet, in-process (no root, no TUN).

CPU time of the calling thread (``time.thread_time``: what the event loop would spend) to
capture batches of 16 packets to /dev/null: bytes packets (as the device hands them over:
referenced, not copied) and bytearray packets (as the stack writes them: copied once), with and
without a filter that rejects them. The writer thread's own work is not counted here.

    python benchmarks/pcap_tap.py
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tun2proxy.link.base import Link
from tun2proxy.link.pcap import CaptureWriter, PcapLink
from tun2proxy.wire.pcapfilter import parse_filter


class _Null(Link):
    name = "null"

    def start(self, loop: object, deliver: Callable[[list[bytes]], None],
              on_error: Callable[[BaseException], None]) -> None:
        pass

    def write_batch(self, packets: Sequence[bytes | bytearray]) -> None:
        pass

    def close(self) -> None:
        pass


def main() -> int:
    fd = os.open(os.devnull, os.O_WRONLY)
    for size in (1500, 65000):
        for kind in (bytes, bytearray):
            for filt in (None, "host 10.0.0.1 and port 443"):
                writer = CaptureWriter(fd, owned=False, buffer=1 << 34)
                link = PcapLink(_Null(), writer, parse_filter(filt) if filt else None)
                pkt = bytearray(size)
                pkt[0], pkt[9] = 0x45, 6
                batch = [kind(pkt)] * 16
                n = 32000 if size == 1500 else 8000
                t = time.thread_time()
                for _ in range(n // 16):
                    link.write_batch(batch)
                dt = time.thread_time() - t
                writer.close()
                what = f"filter {filt!r} (no match)" if filt else "every packet"
                print(f"{size:6} B {kind.__name__:9} {what:42} {dt / n * 1e6:6.2f} us/packet")
    os.close(fd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
