"""upstream.egress: one tunnel's outbound options, own-endpoint registry and resolver; no
process-wide registry left in the upstream and driver packages."""

from __future__ import annotations

import ast
import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

import tun2proxy
from tun2proxy.proxy.address import Address
from tun2proxy.routing.rules import Rules
from tun2proxy.upstream import dial
from tun2proxy.upstream.base import DatagramReceiver, FlowInfo, Upstream
from tun2proxy.upstream.direct import DirectUpstream
from tun2proxy.upstream.egress import Egress, Outbound
from tun2proxy.upstream.reject import RejectUpstream
from tun2proxy.upstream.router import RoutingUpstream
from tun2proxy.upstream.udp import open_direct_udp
from tun2proxy.upstream.udpgw import UdpgwSettings, UdpgwUpstream

pytestmark = pytest.mark.timeout(30)


class _Receiver:
    def datagram_received(self, payload: bytes, src: Address) -> None:
        pass

    def channel_lost(self, exc: BaseException | None) -> None:
        pass


def test_two_egresses_keep_their_own_endpoints_apart() -> None:
    a, b = Egress(), Egress()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    try:
        key = a.remember(s)
        assert a.is_own("127.0.0.1", port) and a.own_count == 1
        assert not b.is_own("127.0.0.1", port) and b.own_count == 0
        a.forget(key)
        assert not a.is_own("127.0.0.1", port) and a.own_count == 0
    finally:
        s.close()


def test_outbound_for_prefers_the_upstream_s_own_options() -> None:
    eg = Egress(Outbound(fwmark=5))
    assert eg.outbound_for(None) == Outbound(fwmark=5)
    assert eg.outbound_for(Outbound(interface="eth9")) == Outbound(interface="eth9")
    assert Egress().outbound == Outbound()
    assert "fwmark=5" in eg.describe() and Egress().describe() == "default"


async def test_sockets_opened_through_an_egress_carry_its_mark_and_join_its_registry() -> None:
    a, b = Egress(Outbound(fwmark=11)), Egress(Outbound(fwmark=22))
    cha = await open_direct_udp(socket.AF_INET, _Receiver(), egress=a)
    chb = await open_direct_udp(socket.AF_INET, _Receiver(), egress=b)
    try:
        assert cha.transport is not None and chb.transport is not None
        sa, sb = cha.transport.get_extra_info("socket"), chb.transport.get_extra_info("socket")
        assert sa.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 11
        assert sb.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 22
        pa, pb = sa.getsockname()[1], sb.getsockname()[1]
        assert a.is_own("127.0.0.1", pa) and not a.is_own("127.0.0.1", pb)
        assert b.is_own("127.0.0.1", pb) and not b.is_own("127.0.0.1", pa)
    finally:
        cha.close()
        chb.close()
    assert a.own_count == 0 and b.own_count == 0


async def test_a_tcp_dial_is_in_its_egress_s_registry_only() -> None:
    a, b = Egress(), Egress()
    seen: list[tuple[bool, bool]] = []

    async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    srv = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    real = loop.sock_connect

    async def spy(sock: socket.socket, addr: Any) -> None:
        local = sock.getsockname()[:2]
        seen.append((a.is_own(*local), b.is_own(*local)))
        await real(sock, addr)

    loop.sock_connect = spy  # type: ignore[method-assign, assignment]
    try:
        t, _ = await dial.connect_tcp("127.0.0.1", port, asyncio.Protocol, egress=a)
    finally:
        del loop.sock_connect
    t.close()
    srv.close()
    assert seen == [(True, False)]


def test_an_upstream_has_its_own_egress_until_bound() -> None:
    d1, d2 = DirectUpstream(), DirectUpstream()
    assert d1.egress is d1.egress and d1.egress is not d2.egress
    eg = Egress()
    d1.bind_egress(eg)
    assert d1.egress is eg


def test_wrapping_upstreams_pass_the_egress_on() -> None:
    inner = DirectUpstream()
    extra = DirectUpstream()
    router = RoutingUpstream({"proxy": inner, "other": extra}, Rules([], default="proxy"))
    eg = Egress()
    router.bind_egress(eg)
    assert inner.egress is eg and extra.egress is eg
    assert router.upstreams["direct"].egress is eg
    wrapped = DirectUpstream()
    udpgw = UdpgwUpstream(wrapped, UdpgwSettings(server=Address("192.0.2.1", 7300)))
    eg2 = Egress()
    udpgw.bind_egress(eg2)
    assert wrapped.egress is eg2 and udpgw.egress is eg2


def test_a_custom_upstream_without_init_still_has_an_egress() -> None:
    class Mine(Upstream):
        async def open_tcp(
            self, dst: Address, protocol: asyncio.Protocol, flow: FlowInfo
        ) -> asyncio.Transport:
            raise NotImplementedError

    m = Mine()
    assert isinstance(m.egress, Egress)
    assert isinstance(RejectUpstream().egress, Egress)
    _: DatagramReceiver = _Receiver()


def test_the_deprecated_defaults_apply_to_egresses_made_afterwards() -> None:
    before = dial.default_outbound()
    try:
        dial.set_default_outbound(Outbound(fwmark=9))
        assert dial.default_egress().outbound.fwmark == 9
    finally:
        dial.set_default_outbound(before)
    assert dial.default_egress().outbound == before
    assert dial.default_egress() is not dial.default_egress()  # each its own registry


def test_the_old_process_wide_registry_is_gone() -> None:
    for name in ("_own", "_default", "_resolver", "remember_endpoint", "forget_endpoint",
                 "is_own_endpoint"):
        assert not hasattr(dial, name), name


#: Module-level names in upstream/ and driver/ bound to a mutable container on purpose.
#: (module, name): why it is not per-tunnel state.
ALLOWED_MODULE_STATE: dict[tuple[str, str], str] = {
    ("upstream/registry.py", "SCHEMES"): "constant table: scheme -> module name, never mutated",
    ("upstream/shadowsocks.py", "_ALIASES"): "constant table of method names",
    ("upstream/socks5.py", "OPTIONS"): "constant table of the URL query parameters",
    ("upstream/ss_url.py", "OPTIONS"): "constant table of the URL query parameters",
    ("driver/tcp_flows.py", "_REJECT"): "constant table: upstream error reason -> reply",
    ("upstream/shadowsocks.py", "_limited"): "a log throttle only (which message, when)",
    ("upstream/udp.py", "_refusal_log"): "a log throttle only (which message, when)",
}


def _mutable(node: ast.expr | None) -> bool:
    if isinstance(node, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)):
        return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id in {"dict", "list", "set", "OrderedDict", "defaultdict", "deque",
                                "WeakKeyDictionary", "WeakValueDictionary", "WeakSet",
                                "RateLimitedLog"}
    return False


def test_no_module_level_mutable_state_in_upstream_and_driver() -> None:
    # A module-level dict/list/set is shared by every Driver in the process: per-tunnel state
    # belongs to the Driver or its Egress. Constants are tuples/frozensets; globals rebound
    # with `global` are listed too (only dial.py's deprecated defaults may do that).
    root = Path(tun2proxy.__file__).parent
    found: list[str] = []
    rebound: list[str] = []
    for pkg in ("upstream", "driver"):
        for path in sorted((root / pkg).glob("*.py")):
            tree = ast.parse(path.read_text())
            mod = f"{pkg}/{path.name}"
            for node in tree.body:
                targets: list[ast.expr] = []
                value: ast.expr | None = None
                if isinstance(node, ast.Assign):
                    targets, value = node.targets, node.value
                elif isinstance(node, ast.AnnAssign):
                    targets, value = [node.target], node.value
                for t in targets:
                    if isinstance(t, ast.Name) and _mutable(value) and t.id != "__all__":
                        if (mod, t.id) not in ALLOWED_MODULE_STATE:
                            found.append(f"{mod}: {t.id}")
            for any_node in ast.walk(tree):
                if isinstance(any_node, ast.Global):
                    rebound += [f"{mod}: {n}" for n in any_node.names]
    assert found == []
    assert sorted(rebound) == ["upstream/dial.py: _compat_outbound",
                               "upstream/dial.py: _compat_resolver"]
