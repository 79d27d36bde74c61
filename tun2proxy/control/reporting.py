"""Flow logs and periodic stats: one info line per ended flow, and with ``--stats-interval``
one summary line every interval (flows, throughput each way, drops).

Both go through the ``tun2proxy`` logger, so ``--log-format json`` turns them into JSON
lines; their values are also attached as ``fields`` (``event: "flow"`` or ``"stats"``), so
a JSON line carries them as keys of their own (see docs/observability.md for the keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ..driver.flows import FlowSnapshot
from ..driver.loop import Driver
from .render import fmt_bytes, fmt_duration

__all__ = ["FLOW_KEYS", "STATS_KEYS", "FlowLog", "StatsReporter", "flow_line"]

log = logging.getLogger("tun2proxy")

#: The keys of a flow-end JSON line beyond ts/level/logger/msg.
FLOW_KEYS = (
    "event", "flow_id", "protocol", "src", "dst", "host", "upstream", "bytes_up",
    "bytes_down", "packets_up", "packets_down", "duration", "end", "detail",
)
#: The keys of a stats JSON line beyond ts/level/logger/msg.
STATS_KEYS = (
    "event", "interval", "tcp_flows", "udp_sessions", "flows_ended", "rate_up", "rate_down",
    "bytes_up", "bytes_down", "drops", "drops_total",
)


def _ep(ep: tuple[str, int]) -> str:
    return f"[{ep[0]}]:{ep[1]}" if ":" in ep[0] else f"{ep[0]}:{ep[1]}"


def flow_line(s: FlowSnapshot) -> str:
    """The text of a flow-end line: ``flow 7 tcp 10.0.0.33:40112 -> 10.0.1.2:443
    (example.com) via proxy: 512 B up, 1048576 B down, 1.25 s, app-fin``."""
    host = f" ({s.host})" if s.host else ""
    via = f" via {s.upstream}" if s.upstream else ""
    detail = f" ({s.detail})" if s.detail else ""
    return (
        f"flow {s.id} {s.protocol} {_ep(s.src)} -> {_ep(s.dst)}{host}{via}: "
        f"{s.bytes_up} B up, {s.bytes_down} B down, {s.age:.2f} s, {s.end}{detail}"
    )


class FlowLog:
    """The flow-end hook that writes one info line per ended flow (when info is enabled)."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.logger = logger

    def __call__(self, s: FlowSnapshot) -> None:
        """Log ``s``, the final snapshot of a flow."""
        if not self.logger.isEnabledFor(logging.INFO):
            return
        fields = {
            "event": "flow", "flow_id": s.id, "protocol": s.protocol, "src": _ep(s.src),
            "dst": _ep(s.dst), "host": s.host, "upstream": s.upstream,
            "bytes_up": s.bytes_up, "bytes_down": s.bytes_down, "packets_up": s.packets_up,
            "packets_down": s.packets_down, "duration": round(s.age, 3), "end": s.end,
            "detail": s.detail,
        }
        self.logger.info("%s", flow_line(s), extra={"fields": fields})


class StatsReporter:
    """Every ``interval`` seconds, one info line: live flows, throughput each way over the
    interval, drops in it (a task on the driver's loop; O(live flows) per line)."""

    def __init__(self, driver: Driver, interval: float, logger: logging.Logger = log) -> None:
        self.driver = driver
        self.interval = interval
        self.logger = logger
        self._task: asyncio.Task[None] | None = None
        self._last: tuple[float, int, int, int] | None = None

    def start(self) -> None:
        """Start the task (on the running loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop the task."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        self.sample()  # the baseline
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.report()
            except Exception as e:  # never let the summary end the run
                self.logger.error("stats summary failed: %r", e)

    def sample(self) -> tuple[float, int, int, int]:
        """(time, bytes up, bytes down, drops) now; the baseline of the next report."""
        d = self.driver
        up, down = d.flow_table.totals()
        drops = sum(d.stack.stats_counters.drops.values())
        now = asyncio.get_running_loop().time()
        self._last, prev = (now, up, down, drops), self._last
        return prev or (now, up, down, drops)

    def report(self) -> None:
        """Log one summary line for the time since the previous one."""
        prev = self.sample()
        assert self._last is not None
        now, up, down, drops = self._last
        dt = max(1e-6, now - prev[0])
        d = self.driver
        st = d.stack.stats()
        tcp, udp = st.get("tcp_flows", 0), st.get("udp_sessions", 0)
        fields = {
            "event": "stats", "interval": round(dt, 3), "tcp_flows": tcp, "udp_sessions": udp,
            "flows_ended": d.flow_table.ended, "rate_up": round((up - prev[1]) / dt, 1),
            "rate_down": round((down - prev[2]) / dt, 1), "bytes_up": up, "bytes_down": down,
            "drops": drops - prev[3], "drops_total": drops,
        }
        if not self.logger.isEnabledFor(logging.INFO):
            return
        self.logger.info(
            "stats: %s TCP flows, %s UDP sessions; up %s/s, down %s/s; %d drops in %s",
            tcp, udp, fmt_bytes((up - prev[1]) / dt), fmt_bytes((down - prev[2]) / dt),
            drops - prev[3], fmt_duration(dt), extra={"fields": fields},
        )
