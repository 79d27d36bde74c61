"""Apply a :class:`~.plan.SetupPlan` to the host and take it off again, whatever happens (I/O).

``with HostSetup(plan) as s:`` checks, records each piece in the state file, adds it, and on
leaving the block — normally, by an exception, or because adding a piece failed half-way —
removes exactly the pieces it added, newest first. :func:`cleanup` does the same from the
state file of a process that could not (SIGKILL, power loss).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import ipaddress
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .netlink import Netlink
from .plan import (
    DEFAULT_STATE_DIR,
    PRIORITY_SPAN,
    Piece,
    SetupError,
    SetupPlan,
    build_pieces,
    exclusions,
)
from .resolver import (
    content_hash,
    inspect_resolv_conf,
    nameservers,
    resolv_conf_content,
    restore_resolv_conf,
    write_resolv_conf,
)
from .state import Owner, SetupState, list_states, state_path

__all__ = ["HostSetup", "InjectedFailure", "check_privileges", "cleanup"]

log = logging.getLogger("tun2proxy.setup")

_CAP_NET_ADMIN = 12


class InjectedFailure(RuntimeError):
    """Raised by a test hook after step N of :meth:`HostSetup.apply`."""


def _has_cap(bit: int) -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


def check_privileges() -> None:
    """Refuse to start without the right to change routes.

    Raises:
        SetupError: neither root nor CAP_NET_ADMIN.
    """
    if not _has_cap(_CAP_NET_ADMIN):
        raise SetupError("--setup and --cleanup change the host's routing: run them as root "
                         "(they need CAP_NET_ADMIN)")


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    try:
        state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise SetupError(f"cannot use the state directory {state_dir}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _undo(state: SetupState, nl: Netlink, *, devices: bool) -> list[str]:
    """Remove the pieces of ``state`` newest first; returns the errors (empty: all gone)."""
    errors = []
    for piece in reversed(state.pieces):
        if piece.kind == "device" and not devices:
            continue  # its owner's fd takes it away
        try:
            if piece.kind == "resolv":
                log.debug("setup: %s", restore_resolv_conf(dict(piece.spec)))
            elif nl.remove(piece):
                log.debug("setup: removed %s", piece.describe())
            else:
                log.debug("setup: %s was already gone", piece.describe())
        except OSError as e:
            errors.append(f"{piece.describe()}: {e.strerror or e}")
    return errors


class HostSetup:
    """The host routing of ``--setup``: :meth:`apply`, then :meth:`teardown` (or ``with``).

    Args:
        plan: what to set up.
        state_dir: where the state file goes (``/run/tun2proxy``).
        netns: act on this network namespace instead of the caller's (tests).
        fail_after: test hook: raise :class:`InjectedFailure` once this many pieces are added.
    """

    def __init__(
        self,
        plan: SetupPlan,
        *,
        state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR,
        netns: str | None = None,
        fail_after: int | None = None,
    ) -> None:
        self.plan = plan
        self.state_dir = Path(state_dir)
        self.netns = netns
        self.fail_after = fail_after
        self.summary = ""
        self.ipv6 = False
        #: The nameservers of the resolver file as it was (for tun2proxy's own lookups,
        #: which must not follow the host's into the tunnel).
        self.original_nameservers: list[str] = []
        self._state: SetupState | None = None
        self._nl: Netlink | None = None

    @property
    def pieces(self) -> list[Piece]:
        """What is recorded as added (or being added), oldest first."""
        return list(self._state.pieces) if self._state else []

    def __enter__(self) -> HostSetup:
        self.apply()
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def apply(self) -> str:
        """Check, then add every piece (recording it first); returns the summary line.

        On any failure everything added so far is removed again before the error propagates.

        Raises:
            SetupError: a check failed (nothing was changed) or a piece could not be added.
        """
        check_privileges()
        plan = self.plan
        with _locked(self.state_dir):
            self._clear_stale()
            self._nl = Netlink(self.netns)
            try:
                pieces, saved = self._check(self._nl)
                self._state = SetupState(
                    state_path(self.state_dir, plan.tun), Owner.current(), plan.tun
                )
                self._state.save()
            except BaseException:
                self._nl.close()
                self._nl = None
                self._state = None
                raise
        try:
            self._add_all(pieces, saved)
        except BaseException as e:
            errors = self._teardown()
            if errors:
                log.error("setup: could not undo everything: %s", "; ".join(errors))
            if isinstance(e, OSError):
                raise SetupError(f"--setup failed, everything was undone: {e}") from e
            raise
        # no netlink socket (nor its thread) held while the proxy runs: teardown opens one
        nl, self._nl = self._nl, None
        if nl is not None:
            nl.close()
        return self.summary

    def _clear_stale(self) -> None:
        for path in list_states(self.state_dir):
            state = SetupState.load(path)
            if state.owner.alive():
                raise SetupError(
                    f"another tun2proxy --setup (PID {state.owner.pid}) is running "
                    f"(state file {path}): stop it first"
                )
            log.warning(
                "setup: cleaning up after tun2proxy --setup PID %d, which did not exit cleanly",
                state.owner.pid,
            )
            _cleanup_one(state, self.netns)

    def _check(self, nl: Netlink) -> tuple[list[Piece], dict[str, Any] | None]:
        plan = self.plan
        idx = nl.link_index(plan.tun)
        if idx is None:
            raise SetupError(f"--setup: the device {plan.tun} does not exist")
        if not nl.link_is_up(idx):
            raise SetupError(f"--setup: the device {plan.tun} is down")
        v4, v6 = nl.has_default_route(2), nl.has_default_route(10)
        if not (v4 or v6):
            raise SetupError(
                "--setup: this host has no default route (ip route show default is empty): "
                "there is no uplink for the proxy connections"
            )
        self.ipv6 = plan.ipv6 == "on" or (plan.ipv6 == "auto" and v6)
        if v6 and not self.ipv6:
            log.warning("setup: IPv6 is not routed into the tunnel: it leaves directly")
        used = nl.rules_between(plan.priority, plan.priority + PRIORITY_SPAN)
        if used:
            raise SetupError(
                f"--setup: rule priorities {plan.priority}-{plan.priority + PRIORITY_SPAN - 1} "
                f"are in use ({', '.join(used[:3])}): choose another --setup-priority"
            )
        if nl.table_routes(plan.table):
            raise SetupError(
                f"--setup: routing table {plan.table} is not empty (ip route show table "
                f"{plan.table}): choose another --setup-table"
            )
        pieces: list[Piece] = []
        if plan.tun_created:
            pieces.append(Piece("device", {"ifname": plan.tun, "index": idx}, "the TUN device"))
        pieces += build_pieces(plan, ifindex=idx, ipv6=self.ipv6)
        if plan.dns is not None:
            dns = ipaddress.ip_address(plan.dns)
            for cidr, why in exclusions(plan):
                if dns in ipaddress.ip_network(cidr):
                    log.warning("setup: the DNS address %s is excluded (%s %s): the host's "
                                "lookups will leave outside the tunnel", dns, why, cidr)
                    break
        saved = inspect_resolv_conf(plan.resolv_conf) if plan.dns is not None else None
        if saved is not None:
            original = base64.b64decode(saved.get("original_for_search") or "")
            self.original_nameservers = nameservers(original)
        return pieces, saved

    def _step(self, piece: Piece, action: Callable[[], None]) -> None:
        """Record ``piece``, then add it (``action``); the test hook may fail after it."""
        assert self._state is not None
        self._state.pieces.append(piece)
        self._state.save()  # recorded before it exists
        action()
        if piece.kind == "device":
            return
        n = sum(1 for p in self._state.pieces if p.kind != "device")
        if self.fail_after is not None and n >= self.fail_after:
            raise InjectedFailure(f"injected failure after step {n}")

    def _add_all(self, pieces: list[Piece], saved: dict[str, Any] | None) -> None:
        plan = self.plan
        nl = self._nl
        assert self._state is not None
        assert nl is not None
        for piece in pieces:
            self._step(piece, (lambda: None) if piece.kind == "device"
                       else functools.partial(nl.add, piece))
        if saved is not None and plan.dns is not None:
            original = base64.b64decode(saved.pop("original_for_search", ""))
            data = resolv_conf_content(plan.dns, original, os.getpid())
            spec = {**saved, "nameserver": plan.dns, "written": content_hash(data)}
            self._step(Piece("resolv", spec, "the host resolver"),
                       functools.partial(write_resolv_conf, saved["path"], data))
        self.summary = self._summarize()
        self._state.summary = self.summary
        self._state.save()
        log.info("%s", self.summary)

    def _summarize(self) -> str:
        plan = self.plan
        kept: dict[str, list[str]] = {}
        for cidr, why in exclusions(plan):
            if ":" in cidr and not self.ipv6:
                continue
            kept.setdefault(why, []).append(cidr)
        listed = [f"{why} {' '.join(c)}" for why, c in kept.items()
                  if why in ("proxy server", "SSH session", "bypass")]
        fixed = [why for why in kept if why not in ("proxy server", "SSH session", "bypass")]
        dns = (f"nameserver {plan.dns} in {plan.resolv_conf}" if plan.dns
               else "resolver left alone")
        if plan.dns_strict:
            dns += ", all port-53 traffic into the tunnel"
        return (
            f"setup: {plan.tun} carries this host's IPv4{'+IPv6' if self.ipv6 else ''} "
            f"(table {plan.table}, rules {plan.priority}-{plan.priority + PRIORITY_SPAN - 1}, "
            f"own sockets marked {plan.fwmark:#x}); kept out: "
            f"{', '.join([*listed, *fixed])} and the main table's more specific routes; "
            f"DNS: {dns}"
        )

    def teardown(self) -> list[str]:
        """Remove everything :meth:`apply` added, newest first; idempotent.

        Returns the pieces that could not be removed (then the state file stays, for
        ``--cleanup``); they are logged too.
        """
        errors = self._teardown()
        if errors:
            log.error("setup: could not undo: %s (the state file stays: run "
                      "python -m tun2proxy --cleanup)", "; ".join(errors))
        return errors

    def _teardown(self) -> list[str]:
        state, self._state = self._state, None
        if state is None:
            return []
        nl = self._nl or Netlink(self.netns)
        self._nl = None
        try:
            errors = _undo(state, nl, devices=False)
        finally:
            nl.close()
        if not errors:
            state.remove()
            log.info("setup: undone (%d pieces removed)", len(state.pieces))
        return errors


def _cleanup_one(state: SetupState, netns: str | None) -> list[str]:
    with Netlink(netns) as nl:
        errors = _undo(state, nl, devices=True)
    if errors:
        raise SetupError(f"cleanup of {state.path} incomplete: {'; '.join(errors)}")
    state.remove()
    return [f"undid the setup of {state.tun} by PID {state.owner.pid} "
            f"({len(state.pieces)} pieces)"]


def cleanup(
    state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR,
    tun: str | None = None,
    *,
    netns: str | None = None,
) -> list[str]:
    """Undo the setups whose state files are in ``state_dir`` (only ``tun``'s when given).

    Returns one line per setup undone (empty: there was nothing to undo).

    Raises:
        SetupError: a setup's process is still running (stop it instead), a state file is
            unreadable, or something could not be removed (the state file then stays).
    """
    check_privileges()
    done: list[str] = []
    with _locked(Path(state_dir)):
        for path in list_states(state_dir, tun):
            state = SetupState.load(path)
            if state.owner.alive() and state.owner.pid != os.getpid():
                raise SetupError(
                    f"tun2proxy --setup (PID {state.owner.pid}) is still running: stop it "
                    f"(kill -TERM {state.owner.pid}); it undoes its own setup"
                )
            done += _cleanup_one(state, netns)
    for line in done:
        log.info("cleanup: %s", line)
    return done
