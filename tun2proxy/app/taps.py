"""The run's observation taps: ``--pcap`` (a capture around the device's link) and
``--metrics`` (the Prometheus endpoint), one of each per worker process.

With ``--workers N`` worker ``i`` writes its own capture (``FILE`` for worker 0, ``FILE.i``
for the others: pcapng files cannot be shared by writers; ``mergecap`` joins them) and serves
its own metrics on ``PORT + i`` (each worker is one Prometheus target; sum over them).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..errors import ConfigError, describe_error
from ..link.base import Link
from ..link.pcap import CaptureWriter, PcapLink, open_capture_fd
from ..options import Options
from ..wire.pcapfilter import parse_filter

if TYPE_CHECKING:
    from ..driver.loop import Driver
    from ..metrics import MetricsServer

__all__ = ["capture_path", "open_capture", "start_metrics"]

log = logging.getLogger("tun2proxy")


def capture_path(path: str, index: int) -> str:
    """Worker ``index``'s capture file: ``path`` itself for worker 0, else ``path.index``."""
    return path if index == 0 or path == "-" else f"{path}.{index}"


def open_capture(opts: Options, link: Link, index: int = 0) -> Link:
    """``link`` with a capture tap when ``--pcap`` is given (``link`` itself otherwise).

    Raises:
        ConfigError: the capture file cannot be created (one line naming it).
    """
    if opts.pcap is None:
        return link
    path = capture_path(opts.pcap, index)
    try:
        fd, owned = open_capture_fd(path)
    except OSError as e:
        raise ConfigError(f"--pcap {path}: cannot create the capture: "
                          f"{e.strerror or describe_error(e)}") from None
    shown = "standard output" if path == "-" else path
    writer = CaptureWriter(fd, owned=owned, max_bytes=opts.pcap_max or 0,
                           name=f"capture {shown}")
    keep = parse_filter(opts.pcap_filter) if opts.pcap_filter else None
    if index == 0:
        log.info(
            "capturing packets to %s (pcapng%s%s%s)%s", shown,
            f", filter {opts.pcap_filter!r}" if opts.pcap_filter else "",
            f", at most {opts.pcap_max} bytes" if opts.pcap_max else "",
            f", {opts.pcap_snaplen} bytes of each packet" if opts.pcap_snaplen else "",
            "; offloads are on: large GSO packets and partial TCP/UDP checksums are captured "
            "as the device carries them (see docs/observability.md)"
            if link.checksum_offload else "",
        )
    return PcapLink(link, writer, keep, snaplen=opts.pcap_snaplen or 0)


def start_metrics(opts: Options, driver: Driver, index: int = 0) -> MetricsServer | None:
    """Serve ``driver``'s metrics when ``--metrics`` is given (on ``PORT + index``).

    Raises:
        ConfigError: the address cannot be bound (one line naming it).
    """
    if opts.metrics is None:
        return None
    from ..metrics import serve_metrics

    host, port = opts.metrics
    shown = f"[{host}]" if ":" in host else host
    try:
        server = serve_metrics(driver, host, port + index)
    except OSError as e:
        raise ConfigError(f"--metrics: cannot listen on {shown}:{port + index}: "
                          f"{e.strerror or describe_error(e)}") from None
    log.info("metrics at http://%s:%d/metrics", shown, server.port)
    return server
