"""A client of the control API (blocking, standard library ``http.client``): one worker's
server (:class:`ControlClient`) or every worker of a ``--workers`` run (:class:`Cluster`).
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import urlencode

from ..options.values import split_control_address
from .address import worker_address

__all__ = ["Cluster", "ControlClient", "ControlClientError"]

#: The largest response body read (a few thousand flows fit easily).
MAX_RESPONSE = 64 << 20


class ControlClientError(Exception):
    """The control API could not be reached or refused the request (one line)."""


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix stream socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except OSError:
            s.close()
            raise
        self.sock = s


class ControlClient:
    """Requests to one control server (a unix socket path, or ``(host, port)``)."""

    def __init__(
        self, address: str | tuple[str, int], token: str | None = None, timeout: float = 5.0
    ) -> None:
        self.address = address
        self.token = token
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def _shown(self) -> str:
        a = self.address
        return a if isinstance(a, str) else f"{a[0]}:{a[1]}"

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            a = self.address
            if isinstance(a, str):
                self._conn = _UnixConnection(a, self.timeout)
            else:
                self._conn = http.client.HTTPConnection(a[0], a[1], timeout=self.timeout)
        return self._conn

    def close(self) -> None:
        """Drop the kept-alive connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str) -> Any:
        """The JSON body of a 200 answer to ``method path``.

        Raises:
            ControlClientError: unreachable, or a non-200 answer (its error message).
        """
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, path, headers=headers)
                resp = conn.getresponse()
                body = resp.read(MAX_RESPONSE + 1)
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()  # a kept-alive connection the server closed: once more
                if attempt:
                    raise ControlClientError(
                        f"control API at {self._shown()}: connection closed"
                    ) from None
            except OSError as e:
                self.close()
                raise ControlClientError(
                    f"cannot reach the control API at {self._shown()}: {e.strerror or e}"
                ) from None
        if resp.will_close:
            self.close()
        try:
            data = json.loads(body)
        except ValueError:
            raise ControlClientError(
                f"control API at {self._shown()}: not a JSON answer (HTTP {resp.status})"
            ) from None
        if resp.status != 200:
            msg = data.get("error") if isinstance(data, dict) else None
            raise ControlClientError(f"control API: HTTP {resp.status}: {msg or resp.reason}")
        return data

    def about(self) -> dict[str, Any]:
        """``GET /``."""
        out: dict[str, Any] = self.request("GET", "/")
        return out

    def flows(self, **terms: str) -> list[dict[str, Any]]:
        """``GET /flows`` (optionally filtered); each flow with its ``worker``."""
        q = urlencode({k: v for k, v in terms.items() if v})
        data = self.request("GET", "/flows" + (f"?{q}" if q else ""))
        flows: list[dict[str, Any]] = data["flows"]
        for f in flows:
            f["worker"] = data.get("worker", 0)
        return flows

    def stats(self) -> dict[str, Any]:
        """``GET /stats``."""
        out: dict[str, Any] = self.request("GET", "/stats")
        return out

    def close_flow(self, flow_id: int) -> list[int]:
        """``DELETE /flows/ID``: the ids closed."""
        closed: list[int] = self.request("DELETE", f"/flows/{flow_id}")["closed"]
        return closed

    def close_matching(self, **terms: str) -> list[int]:
        """``DELETE /flows?...``: the ids closed."""
        q = urlencode({k: v for k, v in terms.items() if v})
        closed: list[int] = self.request("DELETE", f"/flows?{q}")["closed"]
        return closed


class Cluster:
    """Every worker's control server of one run: worker 0 at the address given, the others
    beside it (``PATH.N``, ``PORT+N``), found by asking worker 0 how many there are."""

    def __init__(self, address: str, token: str | None = None, timeout: float = 5.0) -> None:
        try:
            base = split_control_address(address)
        except ValueError as e:
            raise ControlClientError(f"--control {address}: {e}") from None
        first = ControlClient(base, token, timeout)
        n = int(first.about().get("workers", 1))
        self.clients = [first] + [
            ControlClient(worker_address(base, i), token, timeout) for i in range(1, n)
        ]

    @property
    def workers(self) -> int:
        """How many workers (servers) there are."""
        return len(self.clients)

    def flows(self, **terms: str) -> list[dict[str, Any]]:
        """Every worker's flows (a worker that cannot be reached is skipped)."""
        out: list[dict[str, Any]] = []
        for i, c in enumerate(self.clients):
            try:
                out += c.flows(**terms)
            except ControlClientError:
                if i == 0:
                    raise
        return out

    def stats(self) -> list[dict[str, Any]]:
        """Every reachable worker's ``/stats``."""
        out = []
        for i, c in enumerate(self.clients):
            try:
                out.append(c.stats())
            except ControlClientError:
                if i == 0:
                    raise
        return out

    def close_flow(self, ident: str) -> list[str]:
        """Close ``ID`` (worker 0) or ``W:ID``; the ``W:ID`` closed."""
        w, sep, fid = ident.partition(":")
        worker, raw = (int(w), fid) if sep and w.isdigit() else (0, ident)
        if not raw.isdigit() or not 0 <= worker < len(self.clients):
            raise ControlClientError(f"{ident!r} is not a flow id (ID, or W:ID with workers)")
        return [f"{worker}:{i}" for i in self.clients[worker].close_flow(int(raw))]

    def close_matching(self, **terms: str) -> list[str]:
        """Close every flow matching ``terms`` on every worker; the ``W:ID`` closed."""
        out = []
        for w, c in enumerate(self.clients):
            out += [f"{w}:{i}" for i in c.close_matching(**terms)]
        return out

    def close(self) -> None:
        """Drop the connections."""
        for c in self.clients:
            c.close()
