"""Offloads through a real TUN: at MTU 1500 the kernel hands us 64 KiB GSO packets (TSO) and
takes our 64 KiB GSO packets to cut (GSO), and the bytes are the same both ways, IPv4 and
IPv6. With ``T2P_TEST_OFFLOAD=off`` (CI's second pass) the same transfers run on plain
packets and no GSO packet is seen."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from tun2proxy.testing.netlab import TUN_NAME, Lab, run

from .conftest import DANTE_PORT, OFFLOAD, Tun2Proxy, connect, stats
from .servers import payload

pytestmark = pytest.mark.timeout(180)

MiB = 1 << 20



@pytest.fixture
def mtu_1500(lab: Lab) -> Iterator[None]:
    run("ip", "-n", lab.C, "link", "set", TUN_NAME, "mtu", "1500")
    yield
    run("ip", "-n", lab.C, "link", "set", TUN_NAME, "mtu", "65535")


def _recv_all(s: object) -> bytes:
    chunks = []
    while c := s.recv(1 << 20):  # type: ignore[attr-defined]
        chunks.append(c)
    return b"".join(chunks)


@pytest.mark.usefixtures("dante", "mtu_1500")
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_16mib_each_way_at_mtu_1500_with_segmentation_offload(
    lab: Lab, tun2proxy: Tun2Proxy, family: int
) -> None:
    p = tun2proxy(proxy=f"socks5://127.0.0.1:{DANTE_PORT}")
    assert "mtu 1500" in p.output()
    size = 16 * MiB
    s = connect(lab, family, timeout=60)
    s.sendall(f"SOURCE {size} 21\n".encode())
    got = _recv_all(s)
    s.close()
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload(size, 21)).digest()
    data = payload(size, 22)
    s = connect(lab, family, timeout=60)
    s.sendall(f"SINKN {size}\n".encode())
    s.sendall(data)
    assert _recv_all(s).decode().split() == [hashlib.sha256(data).hexdigest(), str(size)]
    s.close()
    link = stats(p)["link"]
    assert isinstance(link, dict)
    if OFFLOAD == "off":
        assert "gso_in" not in link  # a plain TUN link
    else:
        # The app's kernel sent us super-packets (TSO), and took ours (GSO) to cut.
        assert link["gso_in"] > 0 and link["gso_out"] > 0, link
        assert link["bad_checksums"] == 0
