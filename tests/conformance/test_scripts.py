"""Run every conformance script for IPv4 and IPv6, with ISNs next to 2**32 and at 0.

Scripts live in ``scripts/``; the language and the checklist index are in ``README.md``.
A script that fails because the library (not the script) is wrong stays in the suite and is
listed in ``KNOWN_BUGS`` with a precise reason: its parametrizations are strict xfails, so
the day the bug is fixed the suite says so.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from .runner import SCRIPTS, VARIANTS, Script, ScriptError, ScriptFailure, run_script

#: Script file name -> why the library, not the script, is wrong (all parametrizations).
KNOWN_BUGS: dict[str, str] = {}

VERSIONS = (4, 6)
SCRIPT_PATHS = sorted(SCRIPTS.glob("*.pkt"))


def _params() -> list[Any]:
    params = []
    for path in SCRIPT_PATHS:
        reason = KNOWN_BUGS.get(path.name)
        marks = [pytest.mark.xfail(strict=True, raises=ScriptFailure, reason=reason)] if (
            reason
        ) else []
        for version in VERSIONS:
            for variant in VARIANTS:
                params.append(
                    pytest.param(
                        path, version, variant, marks=marks,
                        id=f"{path.stem}-v{version}-{variant}",
                    )
                )
    return params


@pytest.mark.parametrize(("path", "version", "variant"), _params())
def test_script(path: object, version: int, variant: str) -> None:
    run_script(path, version, variant)  # type: ignore[arg-type]


def test_known_bugs_name_existing_scripts() -> None:
    names = {p.name for p in SCRIPT_PATHS}
    assert set(KNOWN_BUGS) <= names
    assert len(SCRIPT_PATHS) >= 40


def test_every_checklist_row_has_a_script() -> None:
    rows = {p.name.split("_", 1)[0].upper() for p in SCRIPT_PATHS}
    wanted = (
        [f"H{i}" for i in range(1, 8)]
        + ["O1", "O2", "O3", "O5", "O6"]
        + [f"R{i}" for i in range(1, 10)]
        + [f"S{i}" for i in range(1, 8)]
        + [f"C{i}" for i in range(1, 9)]
        + ["X1", "X2", "X3", "T1"]
    )
    assert not [r for r in wanted if r not in rows]


def test_wrap_variant_really_starts_next_to_the_wrap() -> None:
    """The wrap runs only test wraparound if the stack's ISN landed where we aimed it."""
    r = run_script(SCRIPTS / "h1_syn_synack.pkt", 4, "wrap")
    assert r.stack_isn == VARIANTS["wrap"].stack_isn, (
        "the stack's ISN formula changed: Run._clock_origin no longer places the stack's "
        "ISN next to 2**32, so the wrap variant lost half of its coverage"
    )


# ---------------------------------------------------------------------------- the runner itself

_HANDSHAKE = """\
0     < S 0:0(0) win 65535 <mss 1000>
0     accept
0     > S. 0:0(0) ack 1 <mss MSS>
0.1   < . 1:1(0) ack 1 win 65535
"""


def _fail(text: str, version: int = 4, variant: str = "low") -> str:
    with pytest.raises(ScriptFailure) as info:
        run_script(Script.parse(text, "inline.pkt"), version, variant)
    return str(info.value)


@pytest.mark.parametrize("version", VERSIONS)
def test_runner_reports_a_wrong_expectation(version: int) -> None:
    msg = _fail(
        _HANDSHAKE
        + "0.2   < P. 1:101(100) ack 1 win 65535\n"
        + "0.2   > . 1:1(0) ack 100\n",  # deliberately wrong: it must be ack 101
        version,
        "wrap",
    )
    assert msg.startswith(f"inline.pkt:6 [IPv{version}, wrap ISNs]: outbound segment differs")
    assert "ack 101 != 100" in msg
    assert "expected: . 1:1(0) ack 100" in msg
    # The actual packet in script syntax and as tcpdump would print it.
    assert re.search(r"actual: +\. 1:1\(0\) ack 101 win \d+ +\[IP6? ", msg)
    assert "recent history:" in msg


def test_runner_catches_an_early_retransmission() -> None:
    # RTO after this handshake is 0.3 s: a script claiming 1 s must fail at the early packet.
    msg = _fail(
        _HANDSHAKE
        + "0.1   upstream send 100\n"
        + "0.1   > P. 1:101(100) ack 1\n"
        + "1.1   > P. 1:101(100) ack 1\n"
    )
    assert "inline.pkt:7" in msg
    assert "packet emitted too early: at 0.400000, expected at 1.100000" in msg


def test_runner_catches_a_missing_packet() -> None:
    msg = _fail(_HANDSHAKE + "0.2   > . 1:1(0) ack 1\n")
    assert "inline.pkt:5" in msg and "nothing was emitted" in msg


def test_runner_catches_an_unexpected_packet() -> None:
    msg = _fail(_HANDSHAKE + "0.2   < P. 1:101(100) ack 1 win 65535\n0.3   > none\n")
    assert "inline.pkt:6" in msg and "expected nothing to be emitted" in msg
    msg = _fail(_HANDSHAKE + "0.2   < P. 1:101(100) ack 1 win 65535\n")
    assert "unexpected packet emitted at 0.200000 (end of script)" in msg


def test_runner_checks_events_and_upstream_bytes() -> None:
    msg = _fail(_HANDSHAKE + "0.2   < P. 1:101(100) ack 1 win 65535\n0.2   event TcpPeerClosed\n")
    assert "wrong event" in msg and "TcpReadable(flow_id=1)" in msg
    msg = _fail(_HANDSHAKE + "0.2   < P. 1:101(100) ack 1 win 65535\n0.2   upstream recv 200\n")
    assert "recv(200) returned 100 bytes" in msg


def test_runner_rejects_malformed_scripts() -> None:
    with pytest.raises(ScriptError, match="bad flag"):
        run_script(Script.parse("0 < Q 0:0(0)\n", "bad.pkt"), 4, "low")
    with pytest.raises(ScriptError, match="time goes backwards"):
        Script.parse("1 > none\n0 > none\n")
    with pytest.raises(ScriptError, match="needs 'ack N'"):
        run_script(Script.parse("0 < . 1:1(0) win 5\n"), 4, "low")
