"""Helpers for NetStack tests: a stack with a fixed secret and parsed outputs."""

from __future__ import annotations

from dataclasses import replace

from tun2proxy.stack import NetStack, StackConfig
from tun2proxy.tcp import TcpConfig
from tun2proxy.testing import ScriptedTcpPeer
from tun2proxy.wire import parse_ip

SECRET = b"0123456789abcdef"
ADDRS = {4: ("10.0.0.1", "192.0.2.10"), 6: ("fd00::1", "2001:db8::10")}


def make_stack(**kw: object) -> NetStack:
    tcp = kw.pop("tcp", TcpConfig())
    cfg = StackConfig(isn_secret=SECRET, tcp=tcp, **kw)  # type: ignore[arg-type]
    return NetStack(cfg)


def with_config(stack: NetStack, **kw: object) -> NetStack:
    return NetStack(replace(stack.config, **kw))  # type: ignore[arg-type]


def peer(version: int = 4, sport: int = 40000, dport: int = 80, **kw: object) -> ScriptedTcpPeer:
    app, srv = ADDRS[version]
    return ScriptedTcpPeer(app, sport, srv, dport, **kw)  # type: ignore[arg-type]


def proto_of(packet: bytes | bytearray) -> int:
    return parse_ip(packet).protocol


def establish(stack: NetStack, p: ScriptedTcpPeer, now: float = 0.0, **syn_opts: object) -> int:
    """Run the handshake through the stack; return the flow id."""
    from tun2proxy.stack import TcpConnectRequest

    stack.receive(p.syn(**syn_opts), now)
    evs = stack.events()
    assert len(evs) == 1 and isinstance(evs[0], TcpConnectRequest)
    fid = evs[0].flow_id
    stack.tcp_accept(fid)
    p.expect(stack.poll(now), flags=0x12)
    stack.receive(p.ack(), now)
    assert stack.events() == []
    stack.poll(now)
    return fid
