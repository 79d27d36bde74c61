"""A packetdrill-style script runner for the whole :class:`~tun2proxy.stack.NetStack`.

A script (``scripts/*.pkt``, language in ``README.md``) plays the application's TCP with whole
IPv4 or IPv6 packets (``<`` lines), states what the stack must emit (``>`` lines), and plays
the host that relays to an upstream (``accept``, ``upstream send 100``, ``event TcpReadable``,
...). Time is virtual: the runner calls ``receive``/``poll`` with the script's times and, to
catch anything emitted too early, polls at every deadline ``poll_at()`` reports in between.

Numbers are relative, as in packetdrill: every value is relative to the base chosen by the
side that owns it. The app's sequence numbers (also as ACK and SACK numbers in our segments)
and its TSvals count from the app's ISN / TS base, chosen per run; the stack's sequence
numbers and TSvals count from the stack's ISN and first TSval, learned from the flow's first
SYN-ACK (absolute before that).

Run one script by hand, printing every step::

    python -m tests.conformance.runner tests/conformance/scripts/h1_syn_synack.pkt --v6 --wrap
"""

from __future__ import annotations

import ast
import hashlib
import ipaddress
import re
import sys
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

from tun2proxy.errors import FlowStateError
from tun2proxy.stack import (
    NetStack,
    StackConfig,
    TcpClosed,
    TcpConnectRequest,
    TcpPeerClosed,
    TcpReadable,
    TcpWritable,
)
from tun2proxy.tcp import TcpConfig
from tun2proxy.testing import ExpectationError, parse_tcp_packet

if TYPE_CHECKING:
    from tun2proxy.stack.events import RejectReason
from tun2proxy.wire import (
    ACK,
    CWR,
    ECE,
    FIN,
    PSH,
    RST,
    SYN,
    URG,
    TcpSegment,
    describe,
    emit_tcp_packet,
    flags_str,
    ones_sum,
    parse_icmp,
    parse_ip,
    parse_quoted,
)

__all__ = [
    "SCRIPTS",
    "VARIANTS",
    "Run",
    "Script",
    "ScriptError",
    "ScriptFailure",
    "Variant",
    "run_script",
]

MASK = 0xFFFFFFFF
SCRIPTS = Path(__file__).parent / "scripts"
SECRET = b"conformance-isn-secret-0123456789"
#: The server (what the app dialled) and the app, per IP version.
ADDRS = {
    4: ("192.0.2.10", "10.0.0.1"),
    6: ("2001:db8::10", "fd00::1"),
}
APP_PORT = 40000
SERVER_PORT = 80
#: Symbolic addresses for ``from X`` / ``to X`` on inbound lines (H6).
SPECIAL_ADDRS = {
    4: {
        "any": "0.0.0.0",
        "loopback": "127.0.0.1",
        "multicast": "224.0.0.251",
        "broadcast": "255.255.255.255",
        "linklocal": "169.254.1.1",
        "app": ADDRS[4][1],
        "self": ADDRS[4][0],
        "other": "10.0.0.99",
    },
    6: {
        "any": "::",
        "loopback": "::1",
        "multicast": "ff02::fb",
        "broadcast": "ff02::1",  # IPv6 has no broadcast; all-nodes multicast stands in
        "linklocal": "fe80::1",
        "app": ADDRS[6][1],
        "self": ADDRS[6][0],
        "other": "fd00::99",
    },
}
DEFAULT_TOLERANCE = 0.004  # packetdrill's default timing tolerance (4 ms)
TS_TOLERANCE = 1  # ms: TSvals are floored clock readings

_FLAG_LETTERS = {
    "S": SYN, "F": FIN, "R": RST, "P": PSH, ".": ACK, "U": URG, "E": ECE, "W": CWR,
}
_EVENT_TYPES: dict[str, type] = {
    "TcpConnectRequest": TcpConnectRequest,
    "TcpReadable": TcpReadable,
    "TcpPeerClosed": TcpPeerClosed,
    "TcpWritable": TcpWritable,
    "TcpClosed": TcpClosed,
}
_ICMP_CODES = {
    4: {"net": 0, "host": 1, "port": 3, "admin": 13},
    6: {"net": 0, "host": 3, "port": 4, "admin": 1},
}
_ICMP_UNREACH_TYPE = {4: 3, 6: 1}


class ScriptError(Exception):
    """The script itself is malformed (a bug in the script, not in the stack)."""


class ScriptFailure(AssertionError):
    """The stack did something other than what the script says."""


# ---------------------------------------------------------------------------- data streams


class _Stream:
    """A long deterministic byte stream: byte ``k`` is the k-th byte a side ever sends."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self.data = bytearray()

    def get(self, offset: int, n: int) -> bytes:
        end = offset + n
        while len(self.data) < end:
            i = len(self.data) // 64
            self.data += hashlib.blake2b(self.seed + i.to_bytes(8, "big")).digest()
        if offset >= 0:
            return bytes(self.data[offset:end])
        # Bytes before the stream (e.g. a keep-alive's garbage byte at ISN) are zeros.
        lead = min(-offset, n)
        return bytes(lead) + bytes(self.data[0 : max(end, 0)])


APP_STREAM = _Stream(b"app->upstream")
UPSTREAM_STREAM = _Stream(b"upstream->app")


# ---------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """Where the numbers start: the app's ISN and TSval base, and the stack ISN we aim for."""

    name: str
    app_isn: int
    stack_isn: int
    app_ts: int


VARIANTS = {
    # Both ISNs and the app's TS clock just below 2**32: most scripts cross the wrap.
    "wrap": Variant("wrap", app_isn=MASK - 1500, stack_isn=MASK - 2500, app_ts=MASK - 150),
    "low": Variant("low", app_isn=0, stack_isn=0, app_ts=0),
}


# ---------------------------------------------------------------------------- parsing


@dataclass
class Line:
    lineno: int
    text: str
    time_us: int
    kind: str  # "in", "out", "none", "icmp", "action"
    body: str


@dataclass
class Script:
    """A parsed script: header settings and timed lines."""

    name: str
    lines: list[Line]
    stack_config: dict[str, Any] = field(default_factory=dict)
    tcp_config: dict[str, Any] = field(default_factory=dict)
    tolerance: float = DEFAULT_TOLERANCE

    @classmethod
    def load(cls, path: str | Path) -> Script:
        p = Path(path)
        return cls.parse(p.read_text(), p.name)

    @classmethod
    def parse(cls, text: str, name: str = "<inline>") -> Script:
        script = cls(name, [])
        prev_us = 0
        for lineno, raw in enumerate(text.splitlines(), 1):
            s = raw.split("//", 1)[0].strip()
            if not s:
                continue
            if s.startswith("@"):
                if script.lines:
                    raise ScriptError(f"{name}:{lineno}: header lines must come first")
                script._header(s, lineno)
                continue
            tok, _, rest = s.partition(" ")
            rest = rest.strip()
            try:
                if tok.startswith("+"):
                    t_us = prev_us + _micros(tok[1:])
                else:
                    t_us = _micros(tok)
            except (InvalidOperation, ValueError):
                raise ScriptError(f"{name}:{lineno}: bad time {tok!r}") from None
            if t_us < prev_us:
                raise ScriptError(f"{name}:{lineno}: time goes backwards")
            prev_us = t_us
            if rest.startswith("<"):
                kind, body = "in", rest[1:].strip()
            elif rest.startswith(">"):
                body = rest[1:].strip()
                if body == "none":
                    kind = "none"
                elif body.startswith("icmp"):
                    kind = "icmp"
                else:
                    kind = "out"
            else:
                kind, body = "action", rest
            if not body:
                raise ScriptError(f"{name}:{lineno}: empty line body")
            script.lines.append(Line(lineno, raw.strip(), t_us, kind, body))
        if not script.lines:
            raise ScriptError(f"{name}: no timed lines")
        return script

    def _header(self, s: str, lineno: int) -> None:
        word, _, rest = s[1:].partition(" ")
        if word == "config":
            for item in rest.split():
                key, eq, val = item.partition("=")
                if not eq:
                    raise ScriptError(f"{self.name}:{lineno}: expected key=value, got {item!r}")
                value = _literal(val)
                if key.startswith("tcp."):
                    self.tcp_config[key[4:]] = value
                else:
                    self.stack_config[key] = value
        elif word == "tolerance":
            self.tolerance = float(rest)
        else:
            raise ScriptError(f"{self.name}:{lineno}: unknown header @{word}")


def _micros(text: str) -> int:
    return int((Decimal(text) * 1_000_000).to_integral_value())


def _literal(val: str) -> Any:
    if val in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[val]
    try:
        return int(val)
    except ValueError:
        pass
    try:
        return float(val)
    except ValueError:
        return val


_ALLOWED_NODES = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name, ast.Load,
    ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.USub, ast.UAdd,
)


def _eval(expr: str, names: dict[str, int]) -> int:
    """Evaluate an integer expression such as ``DEFMSS+1`` or ``3*1000``."""
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        raise ScriptError(f"bad number {expr!r}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise ScriptError(f"bad number {expr!r}")
        if isinstance(node, ast.Name) and node.id not in names:
            raise ScriptError(f"unknown name {node.id!r} in {expr!r}")
        if isinstance(node, ast.Constant) and not isinstance(node.value, int):
            raise ScriptError(f"bad number {expr!r}")
    value = eval(compile(tree, "<expr>", "eval"), {"__builtins__": {}}, dict(names))
    return int(value)


@dataclass
class OptSpec:
    kind: str  # mss, wscale, sackOK, TS, sack, nop, eol, raw
    values: list[str | None]  # None = wildcard


@dataclass
class SegSpec:
    flags: int
    start: int
    length: int
    ack: int | None
    ack_wild: bool
    win: int | None
    options: list[OptSpec] | None
    mods: dict[str, str]


_SEQ_RE = re.compile(r"^(?P<start>[^:()]+)(?::(?P<end>[^()]+))?(?:\((?P<len>[^)]*)\))?$")


def _parse_flags(tok: str) -> int:
    flags = 0
    if tok in ("-", "none"):
        return 0
    for ch in tok:
        if ch not in _FLAG_LETTERS:
            raise ScriptError(f"bad flag {ch!r} in {tok!r}")
        flags |= _FLAG_LETTERS[ch]
    return flags


def _parse_options(text: str) -> list[OptSpec]:
    opts = []
    for item in text.split(","):
        words = item.split()
        if not words:
            continue
        k = words[0]
        if k in ("nop", "eol", "sackOK"):
            opts.append(OptSpec(k, []))
        elif k in ("mss", "wscale"):
            if len(words) != 2:
                raise ScriptError(f"option {item!r}: expected '{k} N'")
            opts.append(OptSpec(k, [None if words[1] == "*" else words[1]]))
        elif k == "TS":
            if len(words) != 5 or words[1] != "val" or words[3] != "ecr":
                raise ScriptError(f"option {item!r}: expected 'TS val V ecr E'")
            opts.append(OptSpec(k, [None if w == "*" else w for w in (words[2], words[4])]))
        elif k == "sack":
            opts.append(OptSpec(k, list[str | None](words[1:])))
        elif k == "raw":
            opts.append(OptSpec(k, ["".join(words[1:])]))
        else:
            raise ScriptError(f"unknown option {k!r}")
    return opts


def _parse_segment(body: str, names: dict[str, int], outbound: bool) -> SegSpec:
    options = None
    m = re.search(r"<([^<>]*)>", body)
    if m:
        options = _parse_options(m.group(1))
        body = body[: m.start()] + " " + body[m.end() :]
    toks = body.split()
    if len(toks) < 2:
        raise ScriptError("expected FLAGS SEQ...")
    flags = _parse_flags(toks[0])
    sm = _SEQ_RE.match(toks[1])
    if not sm:
        raise ScriptError(f"bad sequence spec {toks[1]!r}")
    start = _eval(sm.group("start"), names)
    end = _eval(sm.group("end"), names) if sm.group("end") else None
    length = _eval(sm.group("len"), names) if sm.group("len") else None
    if end is None:
        end = start + (length or 0)
    if length is None:
        length = end - start
    if end - start != length or length < 0:
        raise ScriptError(f"sequence spec {toks[1]!r}: end - start != len")
    ack = None
    ack_wild = False
    win = None
    mods: dict[str, str] = {}
    i = 2
    while i < len(toks):
        k = toks[i]
        if k in ("ack", "win", "from", "to", "port"):
            if i + 1 >= len(toks):
                raise ScriptError(f"{k!r} needs a value")
            v = toks[i + 1]
            if k == "ack":
                if v == "*":
                    ack_wild = True
                else:
                    ack = _eval(v, names)
            elif k == "win":
                win = None if v == "*" else _eval(v, names)
            else:
                mods[k] = v
            i += 2
        elif k in ("badcsum", "badipcsum", "absseq"):
            mods[k] = "1"
            i += 1
        else:
            raise ScriptError(f"unexpected {k!r}")
    if flags & ACK and ack is None and not ack_wild:
        raise ScriptError("an ACK segment needs 'ack N' (or 'ack *' outbound)")
    if not outbound and ack_wild:
        raise ScriptError("wildcards are for outbound segments")
    return SegSpec(flags, start, length, ack, ack_wild, win, options, mods)


# ---------------------------------------------------------------------------- the run


class Run:
    """One execution of a script for one IP version and one numbering variant."""

    def __init__(self, script: Script, version: int, variant: Variant, *, trace: bool = False):
        self.script = script
        self.version = version
        self.variant = variant
        self.trace_all = trace
        self.log: list[str] = []
        self.server, self.app = ADDRS[version]
        cfg = StackConfig(
            isn_secret=SECRET,
            tcp=TcpConfig(**script.tcp_config),
            **script.stack_config,
        )
        self.config = cfg
        self.stack = NetStack(cfg)
        self.names = {
            "MSS": cfg.mss_for(version),
            "DEFMSS": 536 if version == 4 else 1220,
            "MTU": cfg.mtu,
            "V4": int(version == 4),
            "V6": int(version == 6),
        }
        self.tol = script.tolerance
        self.t0 = self._clock_origin()
        self.now = self.t0
        self.unpolled = False
        self.pending: list[tuple[float, bytes]] = []
        self.events: list[tuple[float, object]] = []
        self.requests: list[int] = []  # flow ids of TcpConnectRequests not yet decided
        self.flow: int | None = None
        self.isn_flow: int | None = None
        self.stack_isn = 0  # absolute until learned from a SYN-ACK
        self.stack_ts: int | None = None
        self.up_sent = 0
        self.app_read = 0
        self.line: Line | None = None

    # ------------------------------------------------------------------ clock

    def _clock_origin(self) -> float:
        """Pick the virtual time origin so that the stack's ISN lands on the variant's target.

        NetStack's ISN is ``int(now * 250000) + H(4-tuple)`` (RFC 6528). This only chooses
        *where* virtual time starts; if the ISN formula changes, scripts still pass, they
        just no longer start the stack's numbers next to the wrap.
        """
        syn_us = 0
        for ln in self.script.lines:
            if ln.kind == "in":
                try:
                    flags = _parse_flags(ln.body.split()[0])
                except ScriptError:
                    continue
                if flags & SYN and not flags & ACK:
                    syn_us = ln.time_us
                    break
        key = (
            ipaddress.ip_address(self.app).packed
            + ipaddress.ip_address(self.server).packed
            + APP_PORT.to_bytes(2, "big")
            + SERVER_PORT.to_bytes(2, "big")
        )
        h = hashlib.blake2s(key, key=SECRET[:32], digest_size=8).digest()
        k = (self.variant.stack_isn - int.from_bytes(h[:4], "big")) & MASK
        t0 = (k + (1 << 32) + 0.5) / 250_000
        return t0 - syn_us / 1_000_000

    def _rel(self, t: float) -> str:
        return f"{t - self.t0:.6f}"

    # ------------------------------------------------------------------ failure reporting

    def _where(self) -> str:
        ln = self.line
        head = f"{self.script.name}"
        if ln is not None:
            head += f":{ln.lineno}"
        return f"{head} [IPv{self.version}, {self.variant.name} ISNs]"

    def fail(
        self, msg: str, *, expected: str | None = None, actual: str | None = None
    ) -> NoReturn:
        parts = [f"{self._where()}: {msg}"]
        if self.line is not None:
            parts.append(f"  script:   {self.line.text}")
        if expected is not None:
            parts.append(f"  expected: {expected}")
        if actual is not None:
            parts.append(f"  actual:   {actual}")
        if self.log:
            parts.append("  recent history:")
            parts += [f"    {x}" for x in self.log[-12:]]
        raise ScriptFailure("\n".join(parts))

    def _trace(self, msg: str) -> None:
        self.log.append(msg)
        if self.trace_all:
            print(msg)

    # ------------------------------------------------------------------ stack plumbing

    def _drain(self, t: float) -> None:
        for ev in self.stack.events():
            self.events.append((t, ev))
            if isinstance(ev, TcpConnectRequest):
                self.requests.append(ev.flow_id)
            elif isinstance(ev, TcpClosed) and ev.flow_id in self.requests:
                self.requests.remove(ev.flow_id)  # withdrawn or timed out while pending
            self._trace(f"{self._rel(t)} event {ev!r}")

    def _poll(self, t: float) -> None:
        self.now = t
        self.unpolled = False
        for p in self.stack.poll(t):
            pkt = bytes(p)
            self.pending.append((t, pkt))
            self._trace(f"{self._rel(t)} > {self.render(pkt)}")
        self._drain(t)

    def advance(self, t: float, extra: float = 0.0) -> None:
        """Flush output owed now, then run every timer due up to ``t + extra``, each at its
        own deadline, so that early emissions are seen at the time they happen."""
        if self.unpolled:
            self._poll(self.now)
        limit = t + extra
        for _ in range(100_000):
            d = self.stack.poll_at()
            if d is None or d > limit:
                break
            self._poll(max(d, self.now))
        else:
            assert d is not None
            self.fail(f"poll_at() keeps reporting a due deadline ({self._rel(d)})")
        if t > self.now:
            self.now = t

    def _check_no_pending(self, strict: bool) -> None:
        """Fail on output nobody expected: everything (strict) or what is older than now."""
        for t, pkt in self.pending:
            if strict or t < self.now - self.tol:
                self.fail(
                    f"unexpected packet emitted at {self._rel(t)}",
                    actual=self.render(pkt),
                )

    # ------------------------------------------------------------------ numbers

    def app_abs(self, rel: int) -> int:
        return (self.variant.app_isn + rel) & MASK

    def stack_abs(self, rel: int) -> int:
        return (self.stack_isn + rel) & MASK

    def app_rel(self, wire: int) -> int:
        return _signed(wire - self.variant.app_isn)

    def stack_rel(self, wire: int) -> int:
        return _signed(wire - self.stack_isn)

    # ------------------------------------------------------------------ rendering

    def render(self, pkt: bytes) -> str:
        """An emitted packet in script syntax (relative numbers), with tcpdump's view."""
        try:
            ip = parse_ip(pkt, verify_checksum=False)
        except Exception:
            return describe(pkt)
        if ip.protocol != 6:
            return describe(pkt)
        try:
            _s, _d, seg = parse_tcp_packet(pkt, verify=False)
        except Exception:
            return describe(pkt)
        n = len(seg.payload)
        start = self.stack_rel(seg.seq)
        text = f"{flags_str(seg.flags) if seg.flags else '-'} {start}:{start + n}({n})"
        if seg.flags & ACK:
            text += f" ack {self.app_rel(seg.ack)}"
        text += f" win {seg.window}"
        opts = []
        if seg.mss is not None:
            opts.append(f"mss {seg.mss}")
        if seg.sack_permitted:
            opts.append("sackOK")
        if seg.ts_val is not None:
            val = seg.ts_val - self.stack_ts if self.stack_ts is not None else seg.ts_val
            ecr = _signed((seg.ts_ecr or 0) - self.variant.app_ts)
            opts.append(f"TS val {_signed(val)} ecr {ecr}")
        if seg.wscale is not None:
            opts.append(f"wscale {seg.wscale}")
        if seg.sack:
            opts.append(
                "sack "
                + " ".join(f"{self.app_rel(a)}:{self.app_rel(b)}" for a, b in seg.sack)
            )
        if opts:
            text += " <" + ",".join(opts) + ">"
        port = seg.dst_port
        if port != APP_PORT:
            text += f" port {port}"
        return f"{text}   [{describe(pkt)}]"

    # ------------------------------------------------------------------ running

    def run(self) -> None:
        for ln in self.script.lines:
            self.line = ln
            t = self.t0 + ln.time_us / 1_000_000
            try:
                self._step(ln, t)
            except (ScriptFailure, AssertionError):
                raise
            except ScriptError as e:
                raise ScriptError(f"{self._where()}: {e}\n  script:   {ln.text}") from None
            except FlowStateError as e:
                self.fail(f"the host call raised FlowStateError: {e}")
            except Exception as e:  # the stack must never raise on packet content
                self.fail(f"the stack raised {type(e).__name__}: {e}")
        self.line = None
        if self.unpolled:
            self._poll(self.now)
        if self.pending:
            t, pkt = self.pending[0]
            self.fail(
                f"unexpected packet emitted at {self._rel(t)} (end of script)",
                actual=self.render(pkt),
            )
        if self.events:
            t, ev = self.events[0]
            self.fail(
                f"unconsumed event at end of script (emitted at {self._rel(t)})",
                actual=repr(ev),
            )

    def _step(self, ln: Line, t: float) -> None:
        self._trace(f"{self._rel(t)} [line {ln.lineno}] {ln.body}")
        if ln.kind == "out":
            self.advance(t, self.tol)
            self._expect_segment(ln, t)
            return
        if ln.kind == "icmp":
            self.advance(t, self.tol)
            self._expect_icmp(ln, t)
            return
        if ln.kind == "none":
            self.advance(t)
            for pt, pkt in self.pending:
                self.fail(
                    f"expected nothing to be emitted, got a packet at {self._rel(pt)}",
                    actual=self.render(pkt),
                )
            return
        if t > self.now:
            self.advance(t)
        if ln.kind == "in":
            self._check_no_pending(strict=True)
            self._inbound(ln)
            return
        self._action(ln)

    # ------------------------------------------------------------------ inbound

    def _inbound(self, ln: Line) -> None:
        spec = _parse_segment(ln.body, self.names, outbound=False)
        mods = spec.mods
        specials = SPECIAL_ADDRS[self.version]
        src = specials.get(mods.get("from", "app"), mods.get("from"))
        dst = specials.get(mods.get("to", "self"), mods.get("to"))
        if src is None or dst is None:
            raise ScriptError("'from' and 'to' need an address")
        try:
            src_b = ipaddress.ip_address(src).packed
            dst_b = ipaddress.ip_address(dst).packed
        except ValueError:
            raise ScriptError(f"bad address {src!r} / {dst!r}") from None
        if len(src_b) != len(dst_b):
            raise ScriptError("from/to addresses of different IP versions")
        port = int(mods.get("port", APP_PORT))
        ack = 0
        if spec.ack is not None:
            ack = self.stack_abs(spec.ack)
        syn = 1 if spec.flags & SYN else 0
        payload = APP_STREAM.get(spec.start - 1 + syn, spec.length)
        seg = TcpSegment(
            port, SERVER_PORT, self.app_abs(spec.start), ack, spec.flags,
            65535 if spec.win is None else spec.win, 0, payload,
        )
        opts = self._build_options(spec.options or [])
        pkt = bytearray(emit_tcp_packet(src_b, dst_b, seg, options=opts))
        hl = 20 if len(src_b) == 4 else 40
        if "badcsum" in mods or ("badipcsum" in mods and hl == 40):
            pkt[hl + 17] ^= 0x01
        if "badipcsum" in mods and hl == 20:
            pkt[11] ^= 0x01
        self.stack.receive(bytes(pkt), self.now)
        self.unpolled = True
        self._drain(self.now)

    def _build_options(self, opts: list[OptSpec]) -> bytes:
        out = bytearray()
        for o in opts:
            v = o.values
            if o.kind == "nop":
                out += b"\x01"
            elif o.kind == "eol":
                out += b"\x00"
            elif o.kind == "mss":
                out += b"\x02\x04" + _need(v[0], self.names).to_bytes(2, "big")
            elif o.kind == "wscale":
                out += b"\x03\x03" + bytes((_need(v[0], self.names),))
            elif o.kind == "sackOK":
                out += b"\x04\x02"
            elif o.kind == "TS":
                val = (self.variant.app_ts + _need(v[0], self.names)) & MASK
                ecr = _need(v[1], self.names)
                if self.stack_ts is not None:
                    ecr = (self.stack_ts + ecr) & MASK
                out += b"\x08\x0a" + val.to_bytes(4, "big") + (ecr & MASK).to_bytes(4, "big")
            elif o.kind == "sack":
                blocks = [_block(str(b), self.names) for b in v]
                out += bytes((5, 2 + 8 * len(blocks)))
                for a, b in blocks:
                    out += self.stack_abs(a).to_bytes(4, "big") + self.stack_abs(b).to_bytes(
                        4, "big"
                    )
            elif o.kind == "raw":
                try:
                    out += bytes.fromhex(str(v[0]))
                except ValueError:
                    raise ScriptError(f"bad raw option hex {v[0]!r}") from None
        while len(out) % 4:
            out += b"\x00"  # EOL padding to a 32-bit boundary
        if len(out) > 40:
            raise ScriptError("more than 40 bytes of options")
        return bytes(out)

    # ------------------------------------------------------------------ outbound

    def _take(self, t: float, what: str) -> tuple[float, bytes]:
        if not self.pending:
            self.fail(
                f"expected a packet at {self._rel(t)} (+{self.tol * 1000:g} ms), "
                "nothing was emitted",
                expected=what,
            )
        pt, pkt = self.pending.pop(0)
        if pt < t - self.tol:
            self.fail(
                f"packet emitted too early: at {self._rel(pt)}, expected at {self._rel(t)}",
                expected=what,
                actual=self.render(pkt),
            )
        return pt, pkt

    def _expect_segment(self, ln: Line, t: float) -> None:
        spec = _parse_segment(ln.body, self.names, outbound=True)
        _pt, pkt = self._take(t, ln.body)
        actual = self.render(pkt)
        try:
            ip = parse_ip(pkt, verify_checksum=True)
        except Exception as e:
            self.fail(f"emitted packet does not parse: {e!r}", expected=ln.body, actual=actual)
        if ip.protocol != 6:
            self.fail("expected a TCP segment", expected=ln.body, actual=actual)
        try:
            src, dst, seg = parse_tcp_packet(pkt, verify=not self.config.checksum_offload)
        except ExpectationError as e:
            self.fail(f"bad emitted segment: {e}", expected=ln.body, actual=actual)
        problems = []
        port = int(spec.mods.get("port", APP_PORT))
        if ip.version != self.version:
            problems.append(f"IP version {ip.version}")
        if src != ipaddress.ip_address(self.server).packed or dst != ipaddress.ip_address(
            self.app
        ).packed:
            problems.append("addresses")
        if seg.src_port != SERVER_PORT or seg.dst_port != port:
            problems.append(f"ports {seg.src_port}>{seg.dst_port}")
        if seg.flags != spec.flags:
            problems.append(f"flags [{flags_str(seg.flags)}] != [{flags_str(spec.flags)}]")
        learn = bool(seg.flags & SYN and self.isn_flow != self.flow and self.flow is not None)
        if learn:
            self.stack_isn = (seg.seq - spec.start) & MASK
            self.isn_flow = self.flow
            self.stack_ts = None
        rel_seq = _signed(seg.seq) if "absseq" in spec.mods else self.stack_rel(seg.seq)
        if rel_seq != spec.start:
            problems.append(f"seq {rel_seq} != {spec.start}")
        n = len(seg.payload)
        if n != spec.length:
            problems.append(f"length {n} != {spec.length}")
        if spec.ack is not None:
            rel_ack = self.app_rel(seg.ack)
            if _signed(rel_ack - spec.ack) != 0:
                problems.append(f"ack {rel_ack} != {spec.ack}")
        if spec.win is not None and seg.window != spec.win:
            problems.append(f"win {seg.window} != {spec.win}")
        if spec.options is not None:
            problems += self._check_options(seg, spec.options, learn)
        if n and not problems:
            off = spec.start - 1 + (1 if seg.flags & SYN else 0)
            want = UPSTREAM_STREAM.get(off, n)
            if bytes(seg.payload) != want:
                bad = next(i for i in range(n) if seg.payload[i] != want[i])
                problems.append(
                    f"payload differs from the upstream's bytes at stream offset {off + bad}"
                )
        if problems:
            self.fail("outbound segment differs: " + "; ".join(problems),
                      expected=ln.body, actual=actual)

    def _check_options(self, seg: TcpSegment, opts: list[OptSpec], learn: bool) -> list[str]:
        problems = []
        want = {o.kind: o for o in opts if o.kind not in ("nop", "eol")}
        have = {
            "mss": seg.mss is not None,
            "wscale": seg.wscale is not None,
            "sackOK": seg.sack_permitted,
            "TS": seg.ts_val is not None,
            "sack": bool(seg.sack),
        }
        for k, present in have.items():
            if present and k not in want:
                problems.append(f"unexpected option {k}")
            if not present and k in want:
                problems.append(f"missing option {k}")
        if "raw" in want:
            raise ScriptError("raw options are for inbound segments")
        for k, o in want.items():
            if not have.get(k):
                continue
            v = o.values
            if k == "mss" and v[0] is not None and seg.mss != _eval(v[0], self.names):
                problems.append(f"mss {seg.mss} != {v[0]}")
            elif k == "wscale" and v[0] is not None and seg.wscale != _eval(v[0], self.names):
                problems.append(f"wscale {seg.wscale} != {v[0]}")
            elif k == "TS":
                assert seg.ts_val is not None
                if learn or self.stack_ts is None:
                    base = _eval(v[0], self.names) if v[0] is not None else 0
                    self.stack_ts = (seg.ts_val - base) & MASK
                if v[0] is not None:
                    rel = _signed(seg.ts_val - self.stack_ts)
                    exp = _eval(v[0], self.names)
                    if abs(rel - exp) > TS_TOLERANCE:
                        problems.append(f"TS val {rel} != {exp}")
                if v[1] is not None:
                    ecr = _signed((seg.ts_ecr or 0) - self.variant.app_ts)
                    exp = _eval(v[1], self.names)
                    if ecr != exp:
                        problems.append(f"TS ecr {ecr} != {exp}")
            elif k == "sack":
                got = [(self.app_rel(a), self.app_rel(b)) for a, b in seg.sack or ()]
                exp_blocks = [_block(str(b), self.names) for b in v]
                if got != exp_blocks:
                    problems.append(f"sack {got} != {exp_blocks}")
        return problems

    def _expect_icmp(self, ln: Line, t: float) -> None:
        words = ln.body.split()
        if len(words) != 3 or words[1] != "unreachable" or words[2] not in _ICMP_CODES[4]:
            raise ScriptError("expected 'icmp unreachable net|host|port|admin'")
        _pt, pkt = self._take(t, ln.body)
        actual = self.render(pkt)
        problems = []
        try:
            ip = parse_ip(pkt, verify_checksum=True)
            msg = parse_icmp(pkt, ip.offset, ip.end)
        except Exception as e:
            self.fail(f"emitted packet does not parse: {e!r}", expected=ln.body, actual=actual)
        if ip.protocol not in (1, 58):
            self.fail("expected an ICMP error", expected=ln.body, actual=actual)
        initial = 0
        if ip.version == 6:
            initial = int.from_bytes(ip.src, "big") + int.from_bytes(ip.dst, "big")
            initial += 58 + ip.end - ip.offset
        if ones_sum(memoryview(pkt)[ip.offset : ip.end], initial) != 0:
            problems.append("bad ICMP checksum")
        want_type = _ICMP_UNREACH_TYPE[self.version]
        want_code = _ICMP_CODES[self.version][words[2]]
        if (msg.type, msg.code) != (want_type, want_code):
            problems.append(f"type/code {msg.type}/{msg.code} != {want_type}/{want_code}")
        if ip.src != ipaddress.ip_address(self.server).packed or ip.dst != ipaddress.ip_address(
            self.app
        ).packed:
            problems.append("addresses")
        try:
            q = parse_quoted(msg.body)
            if (q.src_port, q.dst_port, q.protocol) != (APP_PORT, SERVER_PORT, 6):
                problems.append("the quoted packet is not the app's SYN")
        except Exception:
            problems.append("the quote does not parse")
        if problems:
            self.fail("ICMP error differs: " + "; ".join(problems),
                      expected=ln.body, actual=actual)

    # ------------------------------------------------------------------ host actions

    def _flow_id(self) -> int:
        if self.flow is None:
            raise ScriptError("no flow yet (accept first)")
        return self.flow

    def _action(self, ln: Line) -> None:
        words = ln.body.split()
        verb = words[0]
        observe = verb in ("event", "stats", "state") or (
            verb == "upstream" and len(words) > 1 and words[1] == "readable"
        )
        self._check_no_pending(strict=not observe)
        if verb in ("accept", "reject"):
            if not self.requests:
                self.fail(f"no pending TcpConnectRequest to {verb}")
            fid = self.requests.pop(0)
            self.events = [
                (t, e) for t, e in self.events
                if not (isinstance(e, TcpConnectRequest) and e.flow_id == fid)
            ]
            self.flow = fid
            if verb == "accept":
                if len(words) != 1:
                    raise ScriptError("'accept' takes no argument")
                self.stack.tcp_accept(fid)
            else:
                reason = words[1] if len(words) > 1 else "reset"
                self.stack.tcp_reject(fid, cast("RejectReason", reason))  # the stack checks it
            self.unpolled = True
            self._drain(self.now)
        elif verb == "upstream":
            self._upstream(words[1:])
        elif verb == "event":
            self._expect_events(" ".join(words[1:]))
        elif verb == "stats":
            self._expect_stat(words[1:])
        elif verb == "state":
            self._expect_state(words[1:])
        else:
            raise ScriptError(f"unknown action {verb!r}")

    def _upstream(self, words: list[str]) -> None:
        if not words:
            raise ScriptError("upstream what?")
        op = words[0]
        fid = self._flow_id()
        st = self.stack
        if op == "send":
            # upstream send N [-> M]: M is how many bytes send() must accept (default N)
            if len(words) not in (2, 4) or (len(words) == 4 and words[2] != "->"):
                raise ScriptError("expected 'upstream send N [-> M]'")
            n = _eval(words[1], self.names)
            want = _eval(words[3], self.names) if len(words) == 4 else n
            got = st.send(fid, UPSTREAM_STREAM.get(self.up_sent, n))
            if got != want:
                self.fail(f"send() accepted {got} bytes, expected {want}")
            self.up_sent += got
        elif op == "recv":
            # upstream recv [N]: read N bytes (or everything), check they are the app's bytes
            if len(words) > 2:
                raise ScriptError("expected 'upstream recv [N]'")
            if len(words) == 2:
                n = _eval(words[1], self.names)
                data = st.recv(fid, n)
                if len(data) != n:
                    self.fail(f"recv({n}) returned {len(data)} bytes")
            else:
                data = st.recv(fid)
            expected = APP_STREAM.get(self.app_read, len(data))
            if bytes(data) != expected:
                bad = next(i for i in range(len(data)) if data[i] != expected[i])
                self.fail(
                    f"upstream received wrong bytes at app stream offset {self.app_read + bad}"
                )
            self.app_read += len(data)
        elif op == "readable":
            if len(words) != 2:
                raise ScriptError("expected 'upstream readable N'")
            n = _eval(words[1], self.names)
            got = st.readable(fid)
            if got != n:
                self.fail(f"readable() is {got}, expected {n}")
            return
        elif op == "shutdown":
            st.shutdown(fid)
        elif op == "abort":
            st.abort(fid)
        else:
            raise ScriptError(f"unknown upstream operation {op!r}")
        self.unpolled = True
        self._drain(self.now)

    def _expect_events(self, spec: str) -> None:
        spec = spec.strip()
        if spec == "none":
            if self.events:
                t, ev = self.events[0]
                self.fail(f"expected no event, got one (at {self._rel(t)})", actual=repr(ev))
            return
        for item in [s.strip() for s in spec.split(",") if s.strip()]:
            name, _, reason = item.partition(":")
            cls = _EVENT_TYPES.get(name)
            if cls is None:
                raise ScriptError(f"unknown event {name!r}")
            if not self.events:
                self.fail("expected an event, none is pending", expected=item)
            t, ev = self.events.pop(0)
            ok = isinstance(ev, cls) and (not reason or getattr(ev, "reason", None) == reason)
            fid = getattr(ev, "flow_id", None)
            if ok and self.flow is not None and fid != self.flow and cls is not TcpConnectRequest:
                ok = False
            if not ok:
                self.fail(
                    f"wrong event (emitted at {self._rel(t)}; current flow {self.flow})",
                    expected=item, actual=repr(ev),
                )

    def _expect_stat(self, words: list[str]) -> None:
        if len(words) != 2:
            raise ScriptError("expected 'stats KEY[.SUBKEY] N'")
        value: Any = self.stack.stats()
        for part in words[0].split("."):
            value = value.get(part, 0) if isinstance(value, dict) else 0
        want = _eval(words[1], self.names)
        if value != want:
            self.fail(f"stats {words[0]} is {value}, expected {want}")

    def _expect_state(self, words: list[str]) -> None:
        if len(words) != 1:
            raise ScriptError("expected 'state NAME|none'")
        states = self.stack.stats()["tcp_states"]
        assert isinstance(states, dict)
        # A flow that reached CLOSED is reaped at the next poll; until then it is not a state.
        states = {k: v for k, v in states.items() if k != "CLOSED"}
        want: dict[str, int] = {}
        if words[0] != "none":
            want = {words[0].upper().replace("_", "-"): 1}
        if states != want:
            self.fail(f"TCP flow states are {states}, expected {want or 'none'}")


def _signed(d: int) -> int:
    d &= MASK
    return d - (1 << 32) if d >= (1 << 31) else d


def _need(v: str | None, names: dict[str, int]) -> int:
    if v is None:
        raise ScriptError("wildcards are for outbound segments")
    return _eval(v, names)


def _block(text: str, names: dict[str, int]) -> tuple[int, int]:
    a, colon, b = text.partition(":")
    if not colon:
        raise ScriptError(f"bad SACK block {text!r} (expected a:b)")
    return _eval(a, names), _eval(b, names)


def run_script(
    script: Script | str | Path, version: int, variant: str | Variant, *, trace: bool = False
) -> Run:
    """Run ``script`` (a :class:`Script` or a path) once; raise ScriptFailure on a mismatch."""
    if not isinstance(script, Script):
        script = Script.load(script)
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    r = Run(script, version, v, trace=trace)
    r.run()
    return r


def main(argv: list[str]) -> int:
    paths = [a for a in argv if not a.startswith("--")]
    version = 6 if "--v6" in argv else 4
    variant = "wrap" if "--wrap" in argv else "low"
    rc = 0
    for p in paths:
        print(f"== {p} IPv{version} {variant}")
        try:
            run_script(p, version, variant, trace=True)
        except (ScriptFailure, ScriptError) as e:
            print(e)
            rc = 1
        else:
            print("PASS")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
