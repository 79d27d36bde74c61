"""Text rendering of flows and counters for the terminal clients and the logs (no I/O):
human sizes, durations, the flow table with its columns and sort keys, the totals line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "COLUMNS",
    "SORT_KEYS",
    "flow_rows",
    "fmt_bytes",
    "fmt_duration",
    "sort_flows",
    "table",
    "totals_line",
]

#: Sort keys of ``top`` and ``flows --sort``: key -> (column title, flow dict -> value).
SORT_KEYS: dict[str, tuple[str, Any]] = {
    "rate": ("RATE", lambda f: f.get("rate_up", 0) + f.get("rate_down", 0)),
    "bytes": ("BYTES", lambda f: f.get("bytes_up", 0) + f.get("bytes_down", 0)),
    "age": ("AGE", lambda f: f.get("age", 0)),
    "idle": ("IDLE", lambda f: f.get("idle", 0)),
    "id": ("ID", lambda f: (f.get("worker", 0), f.get("id", 0))),
    "dst": ("DST", lambda f: (f.get("host") or "", str(f.get("dst")))),
}

#: The table's columns: title, width (0: shares what is left: SRC 2/5, DST the rest),
#: right-aligned.
COLUMNS: tuple[tuple[str, int, bool], ...] = (
    ("ID", 6, True), ("P", 1, False), ("SRC", 0, False), ("DST", 0, False),
    ("VIA", 8, False), ("STATE", 11, False), ("UP", 7, True), ("DOWN", 7, True),
    ("UP/s", 7, True), ("DOWN/s", 7, True), ("AGE", 6, True), ("IDLE", 6, True),
)


def fmt_bytes(n: float) -> str:
    """``0 B``, ``999 B``, ``1.5K``, ``12.3M``, ``4.0G`` (powers of 1024)."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("K", "M", "G", "T"):
        n /= 1024
        if n < 1024 or unit == "T":
            return f"{n:.1f}{unit}" if n < 100 else f"{n:.0f}{unit}"
    return f"{n:.0f}T"  # pragma: no cover


def fmt_duration(s: float) -> str:
    """``0.4s``, ``12s``, ``3m05s``, ``2h10m``, ``3d04h``."""
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{sec:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def _ep(ep: Sequence[Any]) -> str:
    host, port = str(ep[0]), ep[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def sort_flows(flows: list[dict[str, Any]], key: str, reverse: bool = True) -> list[dict[str, Any]]:
    """``flows`` sorted by one of :data:`SORT_KEYS` (largest first unless ``reverse`` is
    False)."""
    get = SORT_KEYS.get(key, SORT_KEYS["rate"])[1]
    return sorted(flows, key=get, reverse=reverse)


def flow_rows(flows: Sequence[Mapping[str, Any]], workers: int = 1) -> list[list[str]]:
    """One row of cells per flow, in :data:`COLUMNS` order (``W:ID`` with workers)."""
    rows = []
    for f in flows:
        fid = f"{f.get('worker', 0)}:{f['id']}" if workers > 1 else str(f["id"])
        dst = _ep(f["dst"])
        if f.get("host"):
            dst = f"{f['host']}:{f['dst'][1]} ({f['dst'][0]})"
        rows.append([
            fid, "T" if f["protocol"] == "tcp" else "U", _ep(f["src"]), dst,
            str(f.get("upstream") or "-"), str(f.get("state", "")),
            fmt_bytes(f["bytes_up"]), fmt_bytes(f["bytes_down"]),
            fmt_bytes(f.get("rate_up", 0)), fmt_bytes(f.get("rate_down", 0)),
            fmt_duration(f.get("age", 0)), fmt_duration(f.get("idle", 0)),
        ])
    return rows


def table(rows: list[list[str]], width: int = 120, sort_title: str | None = None) -> list[str]:
    """The header and the rows laid out in ``width`` columns (SRC and DST share what the
    other columns leave; cells too long are cut with ``~``); the sorted column's title is
    marked ``*``."""
    fixed = sum(w for _, w, _ in COLUMNS if w) + len(COLUMNS) - 1
    flex = max(27, width - fixed)
    src = max(15, flex * 2 // 5)
    widths = [w or (src if title == "SRC" else flex - src) for title, w, _ in COLUMNS]

    def cell(text: str, w: int, right: bool) -> str:
        if len(text) > w:
            text = text[: w - 1] + "~"
        return text.rjust(w) if right else text.ljust(w)

    titles = []
    for (title, _, right), w in zip(COLUMNS, widths, strict=True):
        shown = title + "*" if sort_title is not None and _matches(title, sort_title) else title
        titles.append(cell(shown, w, right))
    lines = [" ".join(titles).rstrip()]
    for r in rows:
        lines.append(" ".join(
            cell(c, w, right) for c, w, (_, _, right) in zip(r, widths, COLUMNS, strict=True)
        ).rstrip())
    return [ln[:width] for ln in lines]


def _matches(column: str, sort_title: str) -> bool:
    if sort_title == "RATE":
        return column in ("UP/s", "DOWN/s")
    if sort_title == "BYTES":
        return column in ("UP", "DOWN")
    return column == sort_title


def totals_line(stats: Sequence[Mapping[str, Any]], flows: Sequence[Mapping[str, Any]]) -> str:
    """One line over every worker: flows, payload totals and rates, drops, RSS."""
    tcp = sum(1 for f in flows if f.get("protocol") == "tcp")
    udp = len(flows) - tcp
    up = sum(int(s.get("bytes_up", 0)) for s in stats)
    down = sum(int(s.get("bytes_down", 0)) for s in stats)
    rate_up = sum(float(f.get("rate_up", 0)) for f in flows)
    rate_down = sum(float(f.get("rate_down", 0)) for f in flows)
    drops = 0
    for s in stats:
        inner = s.get("stats", {})
        d = inner.get("drops", {}) if isinstance(inner, Mapping) else {}
        drops += sum(int(v) for v in d.values()) if isinstance(d, Mapping) else 0
    rss = sum(int(s.get("rss_bytes", 0)) for s in stats)
    ended = sum(int(s.get("flows_ended", 0)) for s in stats)
    return (
        f"flows: {tcp} tcp, {udp} udp, {ended} ended | up {fmt_bytes(rate_up)}/s "
        f"down {fmt_bytes(rate_down)}/s | total up {fmt_bytes(up)} down {fmt_bytes(down)} | "
        f"drops {drops} | rss {fmt_bytes(rss)}"
    )
