"""``tun2proxy top``: a live, sortable table of flows refreshing in place (curses, from the
standard library).

Keys: ``s`` next sort column, ``r`` reverse the order, ``t`` rate, ``b`` bytes, ``a`` age,
``l`` idle, ``i`` id, ``d`` destination, ``q`` (or Esc) quit.
"""

from __future__ import annotations

import curses
import os
import time
from typing import Any

from .client import Cluster, ControlClientError
from .render import SORT_KEYS, flow_rows, sort_flows, table, totals_line

__all__ = ["KEYS", "frame", "run_top"]

#: Key -> sort column.
KEYS = {"t": "rate", "b": "bytes", "a": "age", "l": "idle", "i": "id", "d": "dst"}
_ORDER = list(SORT_KEYS)
_HELP = "s: next sort  r: reverse  t/b/a/l/i/d: sort by rate/bytes/age/idle/id/dst  q: quit"


def frame(
    cluster: Cluster, sort: str, descending: bool, width: int, where: str,
    error: str | None = None,
) -> list[str]:
    """The lines of one screen: title, totals, the table (sorted), and a key help line."""
    flows: list[dict[str, Any]] = []
    stats: list[dict[str, Any]] = []
    if error is None:
        try:
            flows = cluster.flows()
            stats = cluster.stats()
        except ControlClientError as e:
            error = str(e)
    order = "desc" if descending else "asc"
    head = [
        f"tun2proxy top - {where} - {cluster.workers} worker(s) - "
        f"{time.strftime('%H:%M:%S')} - sort {sort} {order}",
        error or totals_line(stats, flows),
        "",
    ]
    rows = flow_rows(sort_flows(flows, sort, descending), cluster.workers)
    return [*head, *table(rows, width, SORT_KEYS[sort][0])]


def run_top(cluster: Cluster, where: str, sort: str, interval: float) -> int:
    """Run the live table until ``q``; exit code 0."""
    # LINES/COLUMNS in the environment would pin curses to a size the terminal may not
    # have (or no longer have after a resize): ask the terminal itself.
    os.environ.pop("LINES", None)
    os.environ.pop("COLUMNS", None)
    return int(curses.wrapper(_loop, cluster, where, sort, interval))


def _loop(scr: Any, cluster: Cluster, where: str, sort: str, interval: float) -> int:
    curses.curs_set(0)
    scr.timeout(100)
    descending = sort not in ("id", "dst")
    next_at = 0.0
    lines: list[str] = []
    while True:
        now = time.monotonic()
        if now >= next_at:
            h, w = scr.getmaxyx()
            lines = frame(cluster, sort, descending, max(40, w - 1), where)
            lines.append("")
            scr.erase()
            for y, line in enumerate(lines[: h - 1]):
                attr = curses.A_REVERSE if y == 3 else curses.A_NORMAL
                scr.addnstr(y, 0, line, max(1, w - 1), attr)
            scr.addnstr(h - 1, 0, _HELP, max(1, w - 1), curses.A_DIM)
            scr.refresh()
            next_at = now + interval
        ch = scr.getch()
        if ch == -1:
            continue
        key = chr(ch) if 0 <= ch < 256 else ""
        if key in ("q", "Q", "\x1b"):
            return 0
        if key == "s":
            sort = _ORDER[(_ORDER.index(sort) + 1) % len(_ORDER)]
        elif key == "r":
            descending = not descending
        elif key in KEYS:
            sort = KEYS[key]
        elif ch != curses.KEY_RESIZE:
            continue
        next_at = 0.0  # redraw now
