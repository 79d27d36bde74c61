"""Prometheus metrics of a Driver (``--metrics HOST:PORT``; needs ``tun2proxy[metrics]``).

Nothing is counted for the metrics themselves: :class:`DriverCollector` turns the counters the
Driver keeps anyway (:meth:`~tun2proxy.driver.Driver.stats`) into metric families at scrape
time, so a tunnel without ``--metrics`` pays nothing and one with it pays one ``stats()`` call
per scrape. :class:`MetricsServer` serves ``/metrics`` from a thread of its own (one request
at a time, each bounded by a socket timeout): parsing the request and formatting the text
never run on the event loop, and the snapshot is taken *on* the loop (``call_soon_threadsafe``)
so it never races the data path's tables. A scrape costs the loop one ``stats(per_flow=False)``
call (constant time: counters and table sizes, no walk over the flows), however slow the
scraper and however many flows.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ._version import __version__
from .driver.dialing import DIAL_BUCKETS

__all__ = ["DriverCollector", "LoopSnapshot", "MetricsServer", "families", "serve_metrics"]

Stats = Mapping[str, Any]

#: How long a scrape waits for the loop to take the snapshot.
SNAPSHOT_TIMEOUT = 5.0
#: A scraper that sends nothing for this long is dropped (the server takes one at a time).
REQUEST_TIMEOUT = 10.0

#: Link counters that count dropped packets, by the ``reason`` label they get.
_LINK_DROPS = {"write_drops": "write", "bad_frames": "bad-frame",
               "bad_checksums": "bad-checksum", "down_drops": "device-down"}


class _StatsSource(Protocol):
    """What a snapshot is taken of: a Driver."""

    @property
    def loop(self) -> Any: ...

    def stats(self, per_flow: bool = True) -> dict[str, object]: ...


def _dict(v: object) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _num(v: object) -> float:
    return float(v) if isinstance(v, (int, float)) else 0.0


def families(stats: Stats) -> list[Metric]:
    """The metric families of one ``Driver.stats()`` snapshot (see docs/observability.md)."""
    out: list[Metric] = []
    link = _dict(stats.get("link"))

    def counter(name: str, doc: str, value: object) -> None:
        c = CounterMetricFamily(f"tun2proxy_{name}", doc)
        c.add_metric([], _num(value))
        out.append(c)

    def gauge(name: str, doc: str, value: object) -> None:
        g = GaugeMetricFamily(f"tun2proxy_{name}", doc)
        g.add_metric([], _num(value))
        out.append(g)

    def labelled(kind: type[Any], name: str, doc: str, labels: list[str],
                 items: Iterable[tuple[list[str], object]]) -> None:
        m = kind(f"tun2proxy_{name}", doc, labels=labels)
        for values, v in items:
            m.add_metric(values, _num(v))
        out.append(m)

    info = GaugeMetricFamily("tun2proxy_build_info", "The running version (always 1).",
                             labels=["version"])
    info.add_metric([__version__], 1)
    out.append(info)
    # --- traffic on the link (the TUN device): receive = from the apps, transmit = to them
    counter("link_receive_packets_total", "IP packets read from the link.",
            link.get("packets_in"))
    counter("link_receive_bytes_total", "Bytes of IP packets read from the link.",
            link.get("bytes_in"))
    counter("link_transmit_packets_total", "IP packets written to the link (dropped ones too).",
            link.get("packets_out"))
    counter("link_transmit_bytes_total", "Bytes of IP packets written to the link.",
            link.get("bytes_out"))
    labelled(CounterMetricFamily, "link_dropped_packets_total",
             "Packets the link dropped, by reason.", ["reason"],
             [([r], link[k]) for k, r in _LINK_DROPS.items() if k in link])
    if "gso_in" in link:
        labelled(CounterMetricFamily, "link_gso_packets_total",
                 "GSO super-packets (offload) each way.", ["direction"],
                 [(["receive"], link["gso_in"]), (["transmit"], link["gso_out"])])
    # --- the stack
    labelled(CounterMetricFamily, "dropped_packets_total",
             "Packets the stack dropped, by reason.", ["reason"],
             [([r], n) for r, n in sorted(_dict(stats.get("drops")).items())])
    labelled(CounterMetricFamily, "flows_opened_total",
             "Flows opened: TCP connections accepted, UDP sessions started.", ["protocol"],
             [(["tcp"], stats.get("tcp_accepted")), (["udp"], stats.get("udp_sessions_opened"))])
    closed = [(["tcp", r], n) for r, n in sorted(_dict(stats.get("tcp_closed")).items())]
    closed += [(["udp", r], n) for r, n in sorted(_dict(stats.get("udp_closed")).items())]
    labelled(CounterMetricFamily, "flows_closed_total", "Flows ended, by protocol and reason.",
             ["protocol", "reason"], closed)
    counter("tcp_syn_received_total", "TCP connection requests (SYNs of new flows).",
            stats.get("tcp_syn_received"))
    counter("tcp_resets_sent_total", "TCP resets sent to apps.", stats.get("tcp_rst_sent"))
    counter("flows_failed_total",
            "TCP flows refused or reset because no upstream connection was made.",
            stats.get("flows_failed"))
    labelled(CounterMetricFamily, "routing_loops_total",
             "Flows refused because they were tun2proxy's own connections come back.",
             ["protocol"], [(["tcp"], stats.get("flows_looped")),
                            (["udp"], stats.get("udp_looped"))])
    labelled(CounterMetricFamily, "udp_datagrams_total", "UDP datagrams each way.",
             ["direction"], [(["receive"], stats.get("udp_datagrams_in")),
                             (["transmit"], stats.get("udp_datagrams_out"))])
    counter("icmp_errors_sent_total", "ICMP errors sent to apps (unreachable, ...).",
            stats.get("icmp_errors_sent"))
    counter("syn_flood_episodes_total", "Times the stack entered SYN-flood mode.",
            stats.get("syn_flood_episodes"))
    gauge("tcp_flows", "TCP flows in the flow table.", stats.get("tcp_flows"))
    states = _dict(stats.get("tcp_states"))
    if states:  # a per-flow snapshot only (a scrape takes none: it would walk every flow)
        labelled(GaugeMetricFamily, "tcp_flows_by_state", "TCP flows by TCP state.", ["state"],
                 [([s], n) for s, n in sorted(states.items())])
    gauge("udp_sessions", "UDP sessions.", stats.get("udp_sessions"))
    gauge("tcp_pending_handshakes", "TCP connection requests waiting for their upstream.",
          stats.get("tcp_pending"))
    gauge("syn_flood_mode", "1 while the stack is in SYN-flood mode.", stats.get("syn_flood_mode"))
    gauge("memory_buffered_bytes", "Bytes of the memory budget in use (flow buffers).",
          stats.get("memory_estimate"))
    if stats.get("memory_limit") is not None:
        gauge("memory_limit_bytes", "The memory budget (--memory-limit).",
              stats.get("memory_limit"))
    gauge("tcp_buffered_bytes", "Bytes buffered in TCP flows, both ways.",
          stats.get("tcp_buffered_bytes"))
    # --- the driver and the upstreams
    labelled(GaugeMetricFamily, "upstream_connections", "Flows relayed to an upstream now.",
             ["protocol"], [(["tcp"], stats.get("relays")), (["udp"], stats.get("udp_relays"))])
    gauge("dials_in_progress", "Upstream connections being made.", stats.get("connecting"))
    gauge("dial_queue_length", "Flows waiting for an upstream dial slot.", stats.get("queued"))
    counter("dial_queue_expired_total", "Flows refused after waiting too long for a dial slot.",
            stats.get("queue_expired"))
    dials = _dict(stats.get("dials"))
    failures = []
    for key, n in sorted(_dict(dials.get("failures")).items()):
        proto, _, reason = str(key).partition(":")
        failures.append(([proto, reason], n))
    labelled(CounterMetricFamily, "upstream_dial_failures_total",
             "Upstream connections that failed, by protocol and reason.",
             ["protocol", "reason"], failures)
    raw = dials.get("latency_buckets")
    if isinstance(raw, list) and len(raw) == len(DIAL_BUCKETS) + 1:
        acc = 0.0
        buckets: list[tuple[str, float]] = []
        for bound, n in zip((*DIAL_BUCKETS, float("inf")), raw, strict=True):
            acc += _num(n)
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), acc))
        h = HistogramMetricFamily(
            "tun2proxy_upstream_dial_duration_seconds",
            "Time to make an upstream TCP connection (successful dials; proxy handshake "
            "included).",
        )
        h.add_metric([], buckets, sum_value=_num(dials.get("latency_sum")))
        out.append(h)
    targets = _dict(stats.get("upstream"))
    if targets:
        labelled(CounterMetricFamily, "routed_total",
                 "Routing decisions by target upstream (rules, bypass).", ["target"],
                 [([str(t)], n) for t, n in sorted(targets.items())])
    # --- packet capture (--pcap)
    if "pcap_packets" in link:
        counter("pcap_captured_packets_total", "Packets written to the capture.",
                link["pcap_packets"])
        counter("pcap_dropped_packets_total",
                "Packets left out of the capture because its writer was behind.",
                link["pcap_dropped"])
        counter("pcap_written_bytes_total", "Bytes of the capture file.", link["pcap_bytes"])
        gauge("pcap_stopped", "1 once the capture stopped (--pcap-max, reader gone).",
              link["pcap_stopped"])
    return out


class DriverCollector(Collector):
    """A prometheus_client collector over ``snapshot`` (a callable returning a stats dict)."""

    def __init__(self, snapshot: Callable[[], Stats]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        """The families of one snapshot, taken now."""
        return families(self.snapshot())


class LoopSnapshot:
    """A snapshot function for another thread: ``driver.stats()`` run on the driver's loop
    (waited for at most ``timeout`` seconds; :meth:`close` fails the waiting ones at once)."""

    def __init__(self, driver: _StatsSource, timeout: float = SNAPSHOT_TIMEOUT) -> None:
        self.driver = driver
        self.timeout = timeout
        self._pending: set[concurrent.futures.Future[dict[str, object]]] = set()
        self._closed = False

    def __call__(self) -> Stats:
        """Take one snapshot."""
        if self._closed:
            raise RuntimeError("the driver has stopped")
        fut: concurrent.futures.Future[dict[str, object]] = concurrent.futures.Future()

        def take() -> None:
            if fut.done():
                return
            try:
                fut.set_result(self.driver.stats(per_flow=False))  # constant time
            except BaseException as e:  # the scrape fails, the loop does not
                fut.set_exception(e)

        self._pending.add(fut)
        try:
            self.driver.loop.call_soon_threadsafe(take)
            return fut.result(self.timeout)
        finally:
            self._pending.discard(fut)

    def close(self) -> None:
        """The loop is stopping: scrapes waiting for it fail now."""
        self._closed = True
        for fut in list(self._pending):
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                fut.set_exception(RuntimeError("the driver has stopped"))


class _Handler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: no line per scrape."""


class MetricsServer:
    """``/metrics`` of ``registry`` over HTTP on ``host:port``, from a daemon thread.

    Raises:
        OSError: the address cannot be bound (in use, not local).
    """

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET

        class Server(WSGIServer):
            address_family = family
            allow_reuse_address = True

        self.server = make_server(host, port, make_wsgi_app(registry), Server,
                                  handler_class=_Handler)
        self._on_close = on_close
        #: The bound port (useful with port 0).
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.5},
            name="tun2proxy-metrics", daemon=True,
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving and close the socket."""
        if self._on_close is not None:
            self._on_close()  # a scrape waiting for a stopped loop must not hold us up
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(2.0)


def serve_metrics(driver: _StatsSource, host: str, port: int) -> MetricsServer:
    """Serve ``driver``'s metrics and this process's (``process_*``: RSS, CPU, fds) on
    ``host:port``; call while the driver's loop runs (or is about to)."""
    registry = CollectorRegistry(auto_describe=False)
    snapshot = LoopSnapshot(driver)
    registry.register(DriverCollector(snapshot))
    ProcessCollector(registry=registry)
    return MetricsServer(host, port, registry, on_close=snapshot.close)
