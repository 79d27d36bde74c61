"""The netlink side of ``--setup``: add and remove rules and routes with pyroute2 (I/O).

Acts on the network namespace of the thread that creates the :class:`Netlink`, or on the
namespace named by ``netns`` (a name from ``ip netns`` or a path; tests use it, the CLI does
not). pyroute2's synchronous API runs an asyncio loop of its own and fails inside a running
one, so every call is made on a private thread: the CLI may set up from its event loop.
"""

from __future__ import annotations

import errno
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .plan import MAIN_TABLE, Piece, SetupError

__all__ = ["Netlink"]

#: Errors meaning "it is not there (any more)": rule (ENOENT), route (ESRCH), device gone.
_GONE = {errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL}
_AF_INET, _AF_INET6 = 2, 10
_RTN_UNICAST = 1


def _ipr(netns: str | None) -> Any:
    try:
        from pyroute2 import IPRoute  # type: ignore[import-untyped]
    except ImportError as e:  # pragma: no cover - declared dependency on Linux
        raise SetupError("--setup needs pyroute2 (pip install pyroute2)") from e
    if netns is None:
        return IPRoute()
    return IPRoute(netns=netns)


def _code(e: BaseException) -> int | None:
    code = getattr(e, "code", None)
    if isinstance(code, int):
        return code
    return e.errno if isinstance(e, OSError) else None


class _OnThread:
    """Calls the methods of ``obj`` on the executor's thread; iterators come back as lists."""

    def __init__(self, ex: ThreadPoolExecutor, obj: Any) -> None:
        self._ex = ex
        self._obj = obj

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kw: Any) -> Any:
            def run() -> Any:
                res = getattr(self._obj, name)(*args, **kw)
                if isinstance(res, (types.GeneratorType, Iterator)):
                    return list(res)
                return res

            return self._ex.submit(run).result()

        return call


class Netlink:
    """A netlink connection for one setup or cleanup; close it (or use ``with``)."""

    def __init__(self, netns: str | None = None) -> None:
        self._ex = ThreadPoolExecutor(1, thread_name_prefix="tun2proxy-netlink")
        try:
            self._ipr = _OnThread(self._ex, self._ex.submit(_ipr, netns).result())
        except BaseException:
            self._ex.shutdown()
            raise

    def close(self) -> None:
        """Close the netlink socket and its thread."""
        try:
            self._ipr.close()
        finally:
            self._ex.shutdown()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def link_index(self, name: str) -> int | None:
        """The index of interface ``name``, or None."""
        found = self._ipr.link_lookup(ifname=name)
        return int(found[0]) if found else None

    def link_name(self, index: int) -> str | None:
        """The name of the interface with ``index``, or None when there is none."""
        try:
            links = self._ipr.get_links(index)
        except Exception as e:
            if _code(e) in _GONE:
                return None
            raise
        for link in links:
            name = link.get_attr("IFLA_IFNAME")
            return str(name) if name is not None else None
        return None

    def link_is_up(self, index: int) -> bool:
        """Whether the interface is administratively up."""
        for link in self._ipr.get_links(index):
            return bool(link["flags"] & 1)
        return False

    def has_default_route(self, family: int) -> bool:
        """Whether the main table has a unicast default route of ``family``."""
        for r in self._ipr.get_routes(family=family, table=MAIN_TABLE):
            table = r.get_attr("RTA_TABLE") or r["table"]
            if table == MAIN_TABLE and r["dst_len"] == 0 and r["type"] == _RTN_UNICAST:
                return True
        return False

    def rules_between(self, lo: int, hi: int) -> list[str]:
        """Rules (both families) with a priority in ``lo .. hi-1``, described briefly."""
        found = []
        for fam in (_AF_INET, _AF_INET6):
            for r in self._ipr.get_rules(family=fam):
                prio = r.get_attr("FRA_PRIORITY") or 0
                if lo <= prio < hi:
                    table = r.get_attr("FRA_TABLE") or r["table"]
                    found.append(f"{'-6 ' if fam == _AF_INET6 else ''}{prio}: lookup {table}")
        return found

    def table_routes(self, table: int) -> int:
        """How many routes (both families) table ``table`` holds."""
        n = 0
        for fam in (_AF_INET, _AF_INET6):
            for r in self._ipr.get_routes(family=fam, table=table):
                if (r.get_attr("RTA_TABLE") or r["table"]) == table:
                    n += 1
        return n

    def add(self, piece: Piece) -> None:
        """Add a rule or route.

        Raises:
            OSError: netlink refused (the errno says why; EEXIST: it is there already).
        """
        try:
            self._call("add", piece)
        except OSError:
            raise
        except Exception as e:
            raise OSError(_code(e) or 0, f"{piece.describe()}: {e}") from e

    def remove(self, piece: Piece) -> bool:
        """Remove a rule, route or device; False when it was not there (already gone).

        Raises:
            OSError: netlink refused for another reason.
        """
        try:
            self._call("del", piece)
        except Exception as e:
            if _code(e) in _GONE:
                return False
            raise OSError(_code(e) or 0, f"removing {piece.describe()}: {e}") from e
        return True

    def _call(self, op: str, piece: Piece) -> None:
        spec = dict(piece.spec)
        if piece.kind == "rule":
            self._ipr.rule(op, **spec)
        elif piece.kind == "route":
            spec.pop("ifname", None)
            self._ipr.route(op, **spec)
        elif piece.kind == "device" and op == "del":
            index = int(spec["index"])
            if self.link_name(index) != spec["ifname"]:
                raise OSError(errno.ENODEV, "not the device we created")
            self._ipr.link("del", index=index)
        else:
            raise ValueError(f"cannot {op} a {piece.kind} over netlink")
