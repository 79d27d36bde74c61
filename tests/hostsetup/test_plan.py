"""The --setup plan: validation, exclusions, the order pieces are added in, option checks."""

from __future__ import annotations

import pytest

from tun2proxy.hostsetup import (
    DEFAULT_FWMARK,
    DEFAULT_PRIORITY,
    DEFAULT_TABLE,
    Piece,
    SetupError,
    SetupPlan,
    SshPeer,
    build_pieces,
    exclusions,
    parse_ssh_connection,
    validate_setup_options,
)


def test_ssh_connection_gives_the_client_address() -> None:
    assert parse_ssh_connection("198.51.100.7 50022 192.0.2.2 22") == SshPeer("198.51.100.7", 50022)
    # sshd listening on :: reports an IPv4 client as IPv4-mapped
    assert parse_ssh_connection("::ffff:198.51.100.7 1 ::ffff:192.0.2.2 22") == SshPeer(
        "198.51.100.7", 1
    )
    assert parse_ssh_connection("fe80::1%eth0 5 fe80::2%eth0 22") == SshPeer("fe80::1", 5)
    for bad in (None, "", "garbage", "1.2.3.4 x 5.6.7.8 22", "1.2.3.4 5"):
        assert parse_ssh_connection(bad) is None


@pytest.mark.parametrize(("kwargs", "word"), [
    ({"table": 254}, "table 254"),
    ({"table": 0}, "table 0"),
    ({"priority": 32765}, "priority 32765"),
    ({"priority": 0}, "priority 0"),
    ({"fwmark": 0}, "fwmark 0"),
    ({"exclude": ["not-a-net"]}, "bypass 'not-a-net'"),
    ({"proxies": ["proxy.example"]}, "proxy address"),
    ({"dns": "dns.example"}, "DNS address"),
    ({"ipv6": "maybe"}, "ipv6"),
])
def test_bad_plans_are_refused_with_the_setting_named(kwargs: dict[str, object], word: str) -> None:
    with pytest.raises(SetupError, match=word):
        SetupPlan(**kwargs)  # type: ignore[arg-type]


def test_defaults_do_not_collide_with_common_ones() -> None:
    plan = SetupPlan()
    assert (plan.table, plan.priority, plan.fwmark) == (DEFAULT_TABLE, DEFAULT_PRIORITY,
                                                        DEFAULT_FWMARK)
    assert plan.table not in (52, 2022, 51820, 253, 254, 255)  # tailscale, sing-box, wg-quick
    assert not 9000 <= plan.priority < 9050  # sing-box's rules
    # bits kube-proxy, Cilium, Calico, Tailscale give meaning to
    assert plan.fwmark & (0x4000 | 0x8000 | 0x0F00 | 0xFFFF0000) == 0


def test_exclusions_cover_proxies_ssh_bypass_and_the_fixed_ranges_once() -> None:
    plan = SetupPlan(
        proxies=["10.9.9.9", "2001:db8::9", "::ffff:10.9.9.9"],
        ssh=SshPeer("198.51.100.7", 22), exclude=["203.0.113.0/24", "203.0.113.5/24"],
    )
    got = exclusions(plan)
    cidrs = [c for c, _ in got]
    assert len(cidrs) == len(set(cidrs))
    assert ("10.9.9.9/32", "proxy server") in got
    assert ("2001:db8::9/128", "proxy server") in got
    assert ("198.51.100.7/32", "SSH session") in got
    assert ("203.0.113.0/24", "bypass") in got
    for fixed in ("127.0.0.0/8", "::1/128", "169.254.0.0/16", "fe80::/10", "224.0.0.0/4",
                  "ff00::/8", "255.255.255.255/32"):
        assert fixed in cidrs


def _is_catch_all(p: Piece) -> bool:
    return p.kind == "rule" and p.spec["table"] == DEFAULT_TABLE and "ip_proto" not in p.spec


@pytest.mark.parametrize("ipv6", [False, True])
@pytest.mark.parametrize("strict", [False, True])
def test_everything_that_keeps_traffic_out_comes_before_the_rule_that_takes_it_in(
    ipv6: bool, strict: bool
) -> None:
    plan = SetupPlan(proxies=["10.9.9.9", "2001:db8::9"], ssh=SshPeer("198.51.100.7", 22),
                     dns_strict=strict)
    pieces = build_pieces(plan, ifindex=7, ipv6=ipv6)
    fams = {2, 10} if ipv6 else {2}
    assert {p.spec["family"] for p in pieces} == fams
    catch = [i for i, p in enumerate(pieces) if _is_catch_all(p)]
    assert len(catch) == len(fams)
    first_in = min(catch)
    # the last pieces are the catch-all rules, everything else is before them
    assert catch == list(range(len(pieces) - len(fams), len(pieces)))
    # routes into the tunnel exist before any rule points at our table
    routes = [i for i, p in enumerate(pieces) if p.kind == "route"]
    to_table = [i for i, p in enumerate(pieces)
                if p.kind == "rule" and p.spec["table"] == DEFAULT_TABLE]
    assert max(routes) < min(to_table) <= first_in
    assert all(p.spec["oif"] == 7 for p in pieces if p.kind == "route")
    # priorities: mark first, strict DNS, exclusions, suppress, catch-all
    prio = {p.why: p.spec["priority"] - DEFAULT_PRIORITY for p in pieces if p.kind == "rule"}
    assert prio["tun2proxy's own sockets"] == 0
    assert prio["SSH session"] == prio["proxy server"] == prio["loopback"] == 2
    assert prio["main table's more specific routes (LAN, on-link)"] == 3
    assert prio["everything else into the tunnel"] == 4
    assert ("every DNS query into the tunnel" in prio) == strict
    if strict:
        assert prio["every DNS query into the tunnel"] == 1
    suppress = [p for p in pieces if "FRA_SUPPRESS_PREFIXLEN" in p.spec]
    assert len(suppress) == len(fams)
    assert all(p.spec["FRA_SUPPRESS_PREFIXLEN"] == 0 for p in suppress)
    for p in pieces:
        assert Piece.from_json(p.to_json()) == p


def test_descriptions_read_like_ip_rule() -> None:
    plan = SetupPlan(tun="tun7", ssh=SshPeer("198.51.100.7", 22), dns_strict=True)
    text = [p.describe() for p in build_pieces(plan, ifindex=3, ipv6=True)]
    assert "ip rule 9100: fwmark 0x3074 lookup main" in text
    assert "ip rule 9102: to 198.51.100.7/32 lookup main" in text
    assert "ip -6 rule 9103: all lookup main suppress_prefixlength 0" in text
    assert "ip rule 9101: ipproto udp dport 53 lookup 7368" in text
    assert "ip -6 route default dev tun7 table 7368" in text
    assert text[-1] == "ip -6 rule 9104: all lookup 7368"


@pytest.mark.parametrize(("kwargs", "word"), [
    ({"unshare": True}, "--unshare"),
    ({"tun_fd": 3}, "--tun-fd"),
    ({"tun_netns": "box"}, "--tun-netns"),
    ({"cleanup": True}, "--cleanup"),
])
def test_setup_refuses_options_it_cannot_honour(kwargs: dict[str, object], word: str) -> None:
    with pytest.raises(SetupError, match=word) as info:
        validate_setup_options(setup=True, **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_without_setup_nothing_is_refused() -> None:
    validate_setup_options(setup=False, unshare=True, tun_fd=3, tun_netns="x")


def test_ssh_peer_from_the_environment() -> None:
    from tun2proxy.hostsetup import ssh_from_environment

    assert ssh_from_environment({"SSH_CONNECTION": "203.0.113.50 4242 192.0.2.2 22"}) == SshPeer(
        "203.0.113.50", 4242
    )
    assert ssh_from_environment({}) is None
