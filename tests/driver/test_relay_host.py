"""The relays depend on a small host protocol, not on Driver: they run with a stand-in."""

from __future__ import annotations

from tun2proxy.driver.udp_relay import MAX_PENDING_DATAGRAMS, UdpHost, UdpRelay
from tun2proxy.proxy.address import Address
from tun2proxy.upstream.base import UdpChannel

DST = Address("192.0.2.1", 53)


class Host:
    """A UdpHost that records what the relay asks of it."""

    def __init__(self) -> None:
        self.replies: list[tuple[int, bytes, Address]] = []
        self.lost: list[tuple[int, BaseException | None]] = []

    def udp_reply(self, relay: UdpRelay, payload: bytes, src: Address) -> None:
        self.replies.append((relay.flow_id, payload, src))

    def udp_lost(self, relay: UdpRelay, exc: BaseException | None) -> None:
        self.lost.append((relay.flow_id, exc))


class Channel(UdpChannel):
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Address]] = []
        self.closed = 0

    def send(self, payload: bytes, dst: Address) -> None:
        self.sent.append((payload, dst))

    def close(self) -> None:
        self.closed += 1


def test_udp_relay_with_a_stand_in_host() -> None:
    host = Host()
    checked: UdpHost = host  # the protocol is all the relay needs (mypy checks this line)
    relay = UdpRelay(checked, 7, v6=False)
    for i in range(MAX_PENDING_DATAGRAMS + 3):
        relay.send(b"q%d" % i, DST)
    assert relay.dropped == 3
    ch = Channel()
    relay.opened(ch)
    assert len(ch.sent) == MAX_PENDING_DATAGRAMS
    assert ch.sent[0] == (b"q0", DST)
    relay.send(b"now", DST)
    assert ch.sent[-1] == (b"now", DST)
    relay.datagram_received(b"answer", DST)
    assert host.replies == [(7, b"answer", DST)]
    err = ConnectionError("gone")
    relay.channel_lost(err)
    assert host.lost == [(7, err)]
    relay.close()
    assert ch.closed == 1
    relay.datagram_received(b"late", DST)
    relay.channel_lost(None)
    assert host.replies == [(7, b"answer", DST)]
    assert host.lost == [(7, err)]
