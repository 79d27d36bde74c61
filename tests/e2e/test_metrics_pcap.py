"""--metrics and --pcap end to end: the kernel's TCP and dig as the apps, dante as the
upstream; the metrics scraped over real HTTP (curl) and parsed by prometheus_client's parser;
the captures read by tshark, from a file and live from ``--pcap -``."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tun2proxy.testing.netlab import SERVER_V4, TUN_NAME, Lab, Proc, wait_for

from .conftest import (
    CLOSED_PORT,
    DANTE_PORT,
    LOOP,
    OFFLOAD,
    STREAM_PORT,
    Tun2Proxy,
    connect,
)

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20
METRICS_PORT = 9464
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def _scrape(lab: Lab, port: int = METRICS_PORT) -> Samples:
    """GET /metrics with curl inside R, parsed by prometheus_client's own text parser."""
    res = subprocess.run(
        ["ip", "netns", "exec", lab.R, "curl", "-sf", "--max-time", "10",
         f"http://127.0.0.1:{port}/metrics"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    out: Samples = {}
    for fam in text_string_to_metric_families(res.stdout):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def _recv_all(s: socket.socket) -> int:
    n = 0
    while c := s.recv(1 << 20):
        n += len(c)
    return n


def _download(lab: Lab, n: int) -> None:
    s = connect(lab, 4)
    s.sendall(f"SOURCE {n} 1\n".encode())
    assert _recv_all(s) == n
    s.close()


def _upload(lab: Lab, n: int) -> None:
    s = connect(lab, 4)
    s.sendall(f"SINKN {n}\n".encode())
    s.sendall(b"u" * n)
    reply = s.recv(200).decode().split()
    s.close()
    assert reply[1] == str(n)


def test_metrics_count_an_8_mib_transfer_each_way(
    lab: Lab, tun2proxy: Tun2Proxy, dante: Proc
) -> None:
    p = tun2proxy("--metrics", f"127.0.0.1:{METRICS_PORT}",
                  proxy=f"socks5://127.0.0.1:{DANTE_PORT}")
    assert wait_for(lambda: "metrics at http://127.0.0.1" in p.output()), p.output()
    before = _scrape(lab)
    _download(lab, 8 * MiB)
    _upload(lab, 8 * MiB)
    with pytest.raises(ConnectionRefusedError):  # dante cannot connect: the dial fails
        connect(lab, 4, CLOSED_PORT)
    after = _scrape(lab)

    def grew(name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
        return after[name][labels] - before.get(name, {}).get(labels, 0.0)

    assert grew("tun2proxy_link_receive_bytes_total") >= 8 * MiB  # the upload
    assert grew("tun2proxy_link_transmit_bytes_total") >= 8 * MiB  # the download
    assert grew("tun2proxy_link_receive_packets_total") > 0
    assert grew("tun2proxy_link_transmit_packets_total") > 0
    assert grew("tun2proxy_flows_opened_total", (("protocol", "tcp"),)) == 2
    assert grew("tun2proxy_upstream_dial_duration_seconds_count") == 2
    assert sum(v for k, v in after["tun2proxy_upstream_dial_failures_total"].items()
               if ("protocol", "tcp") in k) >= 1
    assert after["tun2proxy_flows_failed_total"][()] >= 1
    assert after["process_resident_memory_bytes"][()] > 0
    assert "tun2proxy_tcp_flows" in after and "tun2proxy_dial_queue_length" in after


def _tshark(path: str, *fields: str, display: str = "") -> list[list[str]]:
    cmd = ["tshark", "-r", path, "-T", "fields", "-E", "separator=|"]
    if display:
        cmd += ["-Y", display]
    for f in fields:
        cmd += ["-e", f]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    return [line.split("|") for line in res.stdout.splitlines() if line.strip()]


def _payload_bytes(rows: list[list[str]]) -> int:
    """Distinct payload bytes of (relative seq, len) rows: retransmissions count once."""
    spans = sorted((int(seq), int(seq) + int(n)) for seq, n in rows if int(n) > 0)
    total, end = 0, 0
    for a, b in spans:
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def test_a_capture_of_a_tcp_download_and_a_dns_exchange_reads_in_tshark(
    lab: Lab, tun2proxy: Tun2Proxy, dnsmasq: Proc
) -> None:
    path = str(lab.tmp / "capture.pcapng")
    p = tun2proxy("--pcap", path, "--pcap-filter", f"port {STREAM_PORT} or port 53")
    n = 3 * MiB
    s = connect(lab, 4)
    request = f"SOURCE {n} 1\n".encode()
    s.sendall(request)
    assert _recv_all(s) == n
    sport = s.getsockname()[1]
    s.close()
    dig = subprocess.run(
        ["ip", "netns", "exec", lab.C, "dig", "+time=3", "+tries=2", "+short",
         f"@{SERVER_V4}", "name.test", "A"], capture_output=True, text=True, timeout=30,
        check=False,
    )
    assert dig.stdout.split() == [SERVER_V4], dig
    # a ping goes into the TUN too, and is not captured: the filter
    subprocess.run(["ip", "netns", "exec", lab.C, "ping", "-c1", "-W1", SERVER_V4],
                   capture_output=True, timeout=10, check=False)
    time.sleep(0.3)  # the app's last ACK of the FIN
    p.stop()  # the capture is flushed and closed at shutdown
    assert "capturing packets to" in p.output()
    flow = f"tcp.port == {sport}"
    rows = _tshark(path, "frame.packet_flags_direction", "tcp.flags.syn", "tcp.flags.ack",
                   "tcp.flags.fin", "tcp.seq", "tcp.len", display=flow)
    inbound = [r for r in rows if int(r[0], 16) == 1]  # read from the TUN: the app's
    outbound = [r for r in rows if int(r[0], 16) == 2]  # written to the TUN: ours
    assert any(r[1:3] == ["1", "0"] for r in inbound), rows[:5]  # SYN
    assert any(r[1:3] == ["1", "1"] for r in outbound), rows[:5]  # SYN-ACK
    assert any(r[3] == "1" for r in inbound)  # FIN each way
    assert any(r[3] == "1" for r in outbound)
    assert _payload_bytes([[r[4], r[5]] for r in outbound]) == n
    assert _payload_bytes([[r[4], r[5]] for r in inbound]) == len(request)
    dns = _tshark(path, "frame.packet_flags_direction", "dns.flags.response", "dns.qry.name",
                  "dns.a", display="dns")
    assert ["0x00000001", "0", "name.test", ""] in dns, dns
    assert ["0x00000002", "1", "name.test", SERVER_V4] in dns, dns
    every = _tshark(path, "ip.proto")
    assert {r[0] for r in every} <= {"6", "17"}  # the ping was filtered out


def test_a_live_capture_on_standard_output_into_tshark(lab: Lab) -> None:
    log = lab.tmp / "tun2proxy-live.log"
    offload = ["--offload", OFFLOAD]
    with open(log, "wb") as err:
        t2p = subprocess.Popen(
            ["ip", "netns", "exec", lab.R, sys.executable, "-m", "tun2proxy", "--tun", TUN_NAME,
             "--tun-netns", lab.C, "--proxy", "direct://", "-v", "debug", "--loop", LOOP,
             *offload, "--pcap", "-", "--pcap-filter", f"tcp port {STREAM_PORT}"],
            stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    proc = Proc("tun2proxy-live", t2p, log)
    lab.procs.append(proc)
    tshark = subprocess.Popen(
        ["tshark", "-l", "-i", "-", "-T", "fields", "-E", "separator=|",
         "-e", "frame.packet_flags_direction", "-e", "tcp.flags.str", "-e", "tcp.len"],
        stdin=t2p.stdout, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert t2p.stdout is not None
    t2p.stdout.close()  # tshark holds the pipe's reading end now
    lines: list[str] = []

    def read() -> None:
        assert tshark.stdout is not None
        for raw in tshark.stdout:
            lines.append(raw.decode(errors="replace").strip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert wait_for(lambda: "event loop:" in proc.output() or not proc.alive()), \
            proc.output()
        assert proc.alive(), proc.output()
        s = connect(lab, 4)
        s.sendall(b"ECHO\n")
        s.sendall(b"x" * 1000)
        got = b""
        while len(got) < 1000:
            got += s.recv(4096)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(10) == b""
        s.close()

        def seen() -> bool:
            flags = [ln.split("|") for ln in list(lines) if ln.count("|") == 2]
            return (any(f[0] == "0x00000001" and "S" in f[1] and "A" not in f[1] for f in flags)
                    and any(f[0] == "0x00000002" and "F" in f[1] for f in flags)
                    and sum(int(f[2] or 0) for f in flags if f[0] == "0x00000002") >= 1000)

        assert wait_for(seen, timeout=15), (lines, proc.output()[-2000:])
    finally:
        proc.stop()
        if tshark.poll() is None:
            tshark.terminate()
        try:
            tshark.wait(10)
        except subprocess.TimeoutExpired:
            tshark.kill()
            tshark.wait(5)
        reader.join(5)


@pytest.mark.usefixtures("dante")
def test_with_two_workers_each_serves_its_metrics_and_writes_its_capture(lab: Lab) -> None:
    from .test_workers import _round_trip, _start, _stop

    path = str(lab.tmp / "workers.pcapng")
    p = _start(lab, "--metrics", f"127.0.0.1:{METRICS_PORT + 10}", "--pcap", path)
    try:
        assert wait_for(lambda: p.output().count("metrics at http://") == 2), p.output()
        for i in range(8):
            assert _round_trip(lab, SERVER_V4, 300 + i)
        scrapes = [_scrape(lab, METRICS_PORT + 10 + i) for i in range(2)]
    finally:
        _stop(lab, p)
    opened = [s["tun2proxy_flows_opened_total"][(("protocol", "tcp"),)] for s in scrapes]
    assert sum(opened) == 16, opened
    syns = 0
    for f in (path, f"{path}.1"):
        syns += len(_tshark(f, "tcp.srcport", display=(
            "tcp.flags.syn == 1 && tcp.flags.ack == 0 && frame.packet_flags_direction == 1")))
    assert syns >= 16  # every connection's SYN, in one worker's capture or the other's


def test_a_metrics_address_in_use_is_one_line_and_exit_1(lab: Lab) -> None:
    busy = lab.socket(lab.R)
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        res = subprocess.run(
            ["ip", "netns", "exec", lab.R, sys.executable, "-m", "tun2proxy", "--tun", TUN_NAME,
             "--tun-netns", lab.C, "--loop", LOOP, "--metrics", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60, check=False,
        )
    finally:
        busy.close()
    assert res.returncode == 1, res.stderr
    assert f"--metrics: cannot listen on 127.0.0.1:{port}: Address already in use" in res.stderr
    assert "Traceback" not in res.stderr
