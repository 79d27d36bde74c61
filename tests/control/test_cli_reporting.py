"""The ``flows``/``close``/``top --once`` subcommands against an in-process control server,
the flow log line, the JSON log format and the stats summary."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path

import pytest
from driver.test_driver_inprocess import LoopbackUpstream, _echo, running, server

from tun2proxy.cli import main as cli_main
from tun2proxy.control.reporting import FLOW_KEYS, STATS_KEYS, FlowLog, StatsReporter
from tun2proxy.control.server import ControlServer
from tun2proxy.driver.flows import FlowSnapshot
from tun2proxy.logutil import JSON_KEYS, JsonFormatter

pytestmark = pytest.mark.timeout(60)


async def _cli(*argv: str) -> int:
    return await asyncio.to_thread(cli_main, list(argv))


async def test_flows_close_and_top_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sock = str(tmp_path / "c.sock")
    async with server(_echo) as port, running(LoopbackUpstream({80: port})) as (host, driver):
        srv = ControlServer(driver, sock)
        await srv.start()
        try:
            a1, a2 = host.connect("192.0.2.1", 80), host.connect("192.0.2.7", 80)
            for a in (a1, a2):
                await host.send_all(a, b"q" * 3000)
                await host.wait(a, lambda x: len(x.received) >= 3000)
            capsys.readouterr()
            assert await _cli("flows", "--control", sock, "--json") == 0
            data = json.loads(capsys.readouterr().out)
            assert {f["dst"][0] for f in data["flows"]} == {"192.0.2.1", "192.0.2.7"}
            assert await _cli("flows", "--control", sock) == 0
            out = capsys.readouterr().out
            assert "192.0.2.7:80" in out and "DOWN" in out and "flows: 2 tcp" in out
            assert await _cli("top", "--control", sock, "--once") == 0
            out = capsys.readouterr().out
            assert out.startswith("tun2proxy top") and "192.0.2.1:80" in out
            assert await _cli("top", "--control", sock) == 1  # no terminal here
            assert "needs a terminal" in capsys.readouterr().err
            fid = next(f["id"] for f in data["flows"] if f["dst"][0] == "192.0.2.7")
            assert await _cli("close", "--control", sock, str(fid)) == 0
            assert f"closed 1 flow(s): {fid}" in capsys.readouterr().out
            await host.wait(a2, lambda a: a.closed, timeout=5)
            assert await _cli("close", "--control", sock, str(fid)) == 1
            assert "no such flow" in capsys.readouterr().err
            assert await _cli("close", "--control", sock, "--dst", "192.0.2.1") == 0
            assert "closed 1 flow(s)" in capsys.readouterr().out
            await host.wait(a1, lambda a: a.closed, timeout=5)
            conf = tmp_path / "t.toml"
            conf.write_text(f'control = "{sock}"\n')
            assert await _cli("flows", "--config", str(conf), "--json") == 0
            assert json.loads(capsys.readouterr().out)["flows"] == []
        finally:
            await srv.close()


async def test_client_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await _cli("flows") == 2
    assert "give --control" in capsys.readouterr().err
    assert await _cli("close", "--control", str(tmp_path / "x.sock")) == 2
    assert await _cli("flows", "--control", str(tmp_path / "missing.sock")) == 1
    err = capsys.readouterr().err
    assert "cannot reach the control API" in err and "Traceback" not in err
    assert await _cli("flows", "--control", "127.0.0.1:99999") == 1
    empty = tmp_path / "empty"
    empty.write_text("")
    assert await _cli("flows", "--control", "127.0.0.1:1", "--control-token-file",
                      str(empty)) == 2


def _snap(**kw: object) -> FlowSnapshot:
    base: dict[str, object] = {
        "id": 7, "protocol": "tcp", "src": ("10.0.0.33", 40112), "dst": ("10.0.1.2", 443),
        "host": "example.com", "upstream": "proxy", "state": "closed", "tcp_state": "CLOSED",
        "bytes_up": 512, "bytes_down": 1048576, "packets_up": 20, "packets_down": 800,
        "age": 1.25, "idle": 0.0,
        "end": "app-fin",
    }
    base.update(kw)
    return FlowSnapshot(**base)  # type: ignore[arg-type]


def _logger() -> tuple[logging.Logger, io.StringIO]:
    buf = io.StringIO()
    lg = logging.getLogger("tun2proxy.test-reporting")
    lg.handlers[:] = []
    h = logging.StreamHandler(buf)
    h.setFormatter(JsonFormatter(worker=2))
    lg.addHandler(h)
    lg.setLevel(logging.INFO)
    lg.propagate = False
    return lg, buf


def test_flow_log_text_and_json() -> None:
    lg, buf = _logger()
    FlowLog(lg)(_snap())
    FlowLog(lg)(_snap(id=8, protocol="udp", host=None, end="refused", detail="refused: nope"))
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert set(JSON_KEYS) <= set(first) and set(FLOW_KEYS) <= set(first)
    assert first["msg"] == (
        "flow 7 tcp 10.0.0.33:40112 -> 10.0.1.2:443 (example.com) via proxy: 512 B up, "
        "1048576 B down, 1.25 s, app-fin"
    )
    assert first["bytes_down"] == 1048576 and first["end"] == "app-fin" and first["worker"] == 2
    assert first["level"] == "info" and first["ts"].endswith("Z")
    assert lines[1]["detail"] == "refused: nope" and "(refused: nope)" in lines[1]["msg"]
    lg.setLevel(logging.WARNING)
    FlowLog(lg)(_snap())
    assert len(buf.getvalue().splitlines()) == 2  # nothing at warning level


def test_json_formatter_exceptions_and_plain_lines() -> None:
    lg, buf = _logger()
    lg.warning("plain %s", "line")
    try:
        raise ValueError("boom")
    except ValueError:
        lg.exception("failed")
    a, b = (json.loads(x) for x in buf.getvalue().splitlines() if x.startswith("{"))
    assert a["msg"] == "plain line" and a["level"] == "warning"
    assert "ValueError: boom" in b["exc"]


async def test_stats_reporter_line() -> None:
    lg, buf = _logger()
    async with server(_echo) as port, running(LoopbackUpstream({80: port})) as (host, driver):
        rep = StatsReporter(driver, 0.2, lg)
        rep.start()
        app = host.connect("192.0.2.1", 80)
        await host.send_all(app, b"w" * 100_000)
        await host.wait(app, lambda a: len(a.received) >= 100_000)
        await asyncio.sleep(0.5)
        await rep.close()
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert lines, "no stats line"
    assert all(set(STATS_KEYS) <= set(x) for x in lines)
    assert lines[-1]["bytes_up"] == 100_000 and lines[-1]["bytes_down"] == 100_000
    assert sum(x["rate_up"] * x["interval"] for x in lines) == pytest.approx(100_000, rel=0.01)
    assert lines[0]["msg"].startswith("stats: ")
