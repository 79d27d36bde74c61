"""The options model: every flag is an option of Options, with its default, type and checks;
every bad value is one line that says what is wrong and what is allowed."""

from __future__ import annotations

import dataclasses

import pytest

from tun2proxy.options import Options, UsageError, build_parser, options, parse_args

META_FLAGS = {"--help", "--version", "--config", "--print-config", "--cleanup"}


def _parser_flags() -> set[str]:
    return {
        s for a in build_parser()._actions for s in a.option_strings if s.startswith("--")
    }


def test_every_flag_is_an_option_and_every_option_a_flag() -> None:
    flags = _parser_flags() - META_FLAGS
    model = {o.flag for o in options()}
    switches = {f"--no-{o.key}" for o in options() if o.spec.kind == "switch"}
    assert flags == model | switches
    assert {o.name for o in options()} == {
        f.name for f in dataclasses.fields(Options) if "spec" in f.metadata
    }


def test_every_option_is_documented_and_checked() -> None:
    for o in options():
        assert o.spec.help.strip(), o.flag
        assert o.key == o.flag[2:]
        if o.spec.kind == "switch":
            assert o.default is False and o.spec.parse is None
        else:
            assert o.spec.parse is not None and o.spec.metavar, o.flag


def test_defaults() -> None:
    o = parse_args([])
    assert o == Options()
    assert (o.tun, o.tun_name, o.tun_fd, o.tun_netns, o.framing) == (None, "tun0", None, None,
                                                                     "none")
    assert o.proxy == "direct://" and o.mtu is None and o.unshare is False
    assert (o.tun_address, o.tun_address6) == ("10.0.0.33/24", "fdfe:dcba:9876::1/125")
    assert (o.offload, o.loop, o.workers) == ("auto", "auto", 1)
    assert (o.tcp_timeout, o.connect_timeout) == (600.0, 10.0)
    assert (o.max_sessions, o.max_pending, o.tcp_buffer, o.memory_limit) == (4096, 256,
                                                                            1 << 20, None)
    assert (o.udp, o.udp_timeout, o.max_udp_sessions) == ("proxy", 30.0, 4096)
    assert (o.dns, o.dns_addr) == ("direct", ("8.8.8.8", 53))
    assert (o.virtual_dns_pool, o.virtual_dns_pool6) == ("198.18.0.0/15", "fd27:4a46:c40a::/64")
    assert (o.icmp, o.upstream, o.bypass, o.rule, o.rules) == ("off", (), (), (), None)
    assert (o.sniff, o.outbound_interface, o.fwmark, o.impair) == (False, None, None, None)
    assert o.verbosity == "info" and o.command == () and o.config is None


def test_options_are_frozen() -> None:
    o = Options()
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.proxy = "socks5://h"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("argv", "attr", "value"),
    [
        (["--tcp-buffer", "64K"], "tcp_buffer", 65536),
        (["--tcp-buffer", "1.5M"], "tcp_buffer", 1572864),
        (["--tcp-buffer", "256KiB"], "tcp_buffer", 262144),
        (["--memory-limit", "2g"], "memory_limit", 2 << 30),
        (["--tcp-timeout", "1.5"], "tcp_timeout", 1.5),
        (["--mtu", "1500"], "mtu", 1500),
        (["--fwmark", "2147483648"], "fwmark", 1 << 31),
        (["--fwmark", "4294967295"], "fwmark", (1 << 32) - 1),
        (["--dns-addr", "[2001:db8::1]:5353"], "dns_addr", ("2001:db8::1", 5353)),
        (["--dns-addr", "1.1.1.1"], "dns_addr", ("1.1.1.1", 53)),
        (["--tun-address", "10.1.2.3/16"], "tun_address", "10.1.2.3/16"),
        (["--virtual-dns-pool6", "fd00:1::/48"], "virtual_dns_pool6", "fd00:1::/48"),
        (["--bypass", "10.0.0.0/8", "--bypass", "::ffff:192.168.0.0/112"], "bypass",
         ("10.0.0.0/8", "192.168.0.0/16")),
        (["--upstream", "w=socks5://h:1"], "upstream", ("w=socks5://h:1",)),
        (["--sniff"], "sniff", True),
        (["--sniff", "--no-sniff"], "sniff", False),
        (["-v", "debug"], "verbosity", "debug"),
        (["--tun-fd", "3", "--framing", "pi"], "framing", "pi"),
        (["--impair", "delay=10s"], "impair", "delay=10s"),
    ],
)
def test_values_are_typed(argv: list[str], attr: str, value: object) -> None:
    assert getattr(parse_args(argv), attr) == value


#: At least one bad value for every option that takes one, and the part of the message that
#: says what is allowed.
BAD = [
    ("--tun", "a/b", "is not an interface name"),
    ("--tun", "x" * 16, "1 to 15 bytes"),
    ("--tun-fd", "-1", "must be a file descriptor number"),
    ("--tun-fd", "3.5", "must be a file descriptor number"),
    ("--tun-netns", "..", "is not a namespace"),
    ("--framing", "raw", "invalid choice 'raw' (choose from none, pi, af, vnet)"),
    ("--proxy", "socks5://h:0", "port 0 is not a server port"),
    ("--proxy", "socks5://u:pa%ZZss@h:1080", "invalid percent escape in the password"),
    ("--mtu", "575", "--mtu must be between 576 and 65535 (got 575)"),
    ("--mtu", "1e3", "is not a number (allowed: 576 to 65535)"),
    ("--tun-address", "10.0.0.1", None),  # a bare address is a /32: allowed
    ("--tun-address", "fd00::1/64", "is not an IPv4 address"),
    ("--tun-address6", "10.0.0.1/24", "is not an IPv6 address"),
    ("--offload", "yes", "choose from auto, on, off"),
    ("--loop", "trio", "choose from auto, asyncio, uvloop"),
    ("--workers", "65", "must be between 1 and 64"),
    ("--workers", "0", "must be positive"),
    ("--tcp-timeout", "nan", "must be a finite number of seconds"),
    ("--tcp-timeout", "inf", "must be a finite number of seconds"),
    ("--tcp-timeout", "-1", "must be positive"),
    ("--tcp-timeout", "604801", "must be at most 604800 seconds"),
    ("--connect-timeout", "0", "must be positive"),
    ("--connect-timeout", "1e400", "must be a finite number of seconds"),
    ("--max-sessions", "1048577", "must be between 1 and 1048576"),
    ("--max-pending", "-5", "must be positive"),
    ("--max-connecting", "0", "must be positive"),
    ("--max-connecting", "65537", "must be between 1 and 65536"),
    ("--max-connecting-per-destination", "1.5", "is not a number"),
    ("--queue-timeout", "0", "must be positive"),
    ("--queue-timeout", "3601", "must be at most 3600 seconds"),
    ("--half-open-timeout", "inf", "must be a finite number of seconds"),
    ("--half-open-timeout", "121", "must be at most 120 seconds"),
    ("--link-down-timeout", "-1", "must be positive"),
    ("--link-down-timeout", "1e400", "must be a finite number of seconds"),
    ("--tcp-buffer", "1e400", "must be between 4K and 1G (got 1e400)"),
    ("--tcp-buffer", "1K", "must be between 4K and 1G"),
    ("--tcp-buffer", "lots", "is not a size"),
    ("--memory-limit", "infM", "is not a size"),
    ("--memory-limit", "512K", "must be between 1M and 1T"),
    ("--udp", "maybe", "choose from proxy, direct, reject"),
    ("--udp-timeout", "-inf", "must be a finite number of seconds"),
    ("--malloc-trim", "-1", "must be positive"),
    ("--max-udp-sessions", "0", "must be positive"),
    ("--dns", "doh", "choose from virtual, over-tcp, direct"),
    ("--dns-addr", "8.8.8.8:0", "is not an IP address with an optional port"),
    ("--dns-addr", "dns.google", "is not an IP address with an optional port"),
    ("--virtual-dns-pool", "0.0.0.0/0", "a pool must be /8 to /28"),
    ("--virtual-dns-pool", "127.0.0.0/16", "overlaps the special range 127.0.0.0/8"),
    ("--virtual-dns-pool", "10.0.0.0/29", "a pool must be /8 to /28"),
    ("--virtual-dns-pool6", "::/0", "a pool must be /32 to /124"),
    ("--virtual-dns-pool6", "::ffff:0:0/100", "overlaps the special range ::ffff:0:0/96"),
    ("--virtual-dns-pool6", "fe80::/64", "overlaps the special range fe80::/10"),
    ("--virtual-dns-pool6", "10.0.0.0/24", "is not an IPv6 network"),
    ("--icmp", "on", "choose from off, reply"),
    ("--udpgw-server", "gw.example", "is not HOST:PORT"),
    ("--udpgw-server", "::1:7300", "write an IPv6 address in brackets"),
    ("--udpgw-server", "[::1]:0", "is not HOST:PORT"),
    ("--udpgw-server", "300.1.1.1:7300", "is not HOST:PORT"),
    ("--udpgw-server", "-bad-.example:7300", "is not HOST:PORT"),
    ("--udpgw-mode", "never", "choose from auto, always"),
    ("--udpgw-connections", "0", "must be positive"),
    ("--udpgw-connections", "257", "must be between 1 and 256"),
    ("--udpgw-conids-per-connection", "65537", "must be between 1 and 65536"),
    ("--udpgw-keepalive", "nan", "must be a finite number of seconds"),
    ("--udpgw-keepalive", "0", "must be positive"),
    ("--udpgw-queue", "1K", "must be between 4K and 64M"),
    ("--upstream", "work", "expected NAME=URL"),
    ("--upstream", "a b=direct://", "letters, digits"),
    ("--upstream", "direct=direct://", "reserved"),
    ("--bypass", "10.0.0.0/33", "not an IP address or network"),
    ("--rule", " ", "is empty"),
    ("--rules", "", "is empty: give a file name"),
    ("--outbound-interface", "eth0 ", None),  # stripped: allowed
    ("--outbound-interface", "a:b", "is not an interface name"),
    ("--fwmark", "4294967296", "must be between 1 and 4294967295"),
    ("--fwmark", "0", "must be positive"),
    ("--impair", "delay=1e9ms", "impairment delay must be between 0 and 10000ms"),
    ("--impair", "loss=150%", "loss must be between 0% and 100%"),
    ("--impair", "jitter=nan", "jitter must be between 0 and 10000ms"),
    ("--verbosity", "loud", "invalid choice 'loud'"),
    ("--proxy-file", "", "is empty: give a file name"),
    ("--setup-table", "254", "is the kernel's main table"),
    ("--setup-table", "0", "must be positive"),
    ("--setup-priority", "32762", "must be between 1 and 32761"),
    ("--setup-ipv6", "yes", "choose from auto, on, off"),
    ("--setup-dns", "strict", "choose from on, off"),
    ("--setup-state-dir", " ", "is empty: give a file name"),
    ("--setup-resolv-conf", "", "is empty: give a file name"),
    ("--pid-file", "", "is empty: give a file name"),
    ("--metrics", "9100", "is not HOST:PORT"),
    ("--metrics", "[::1]:0", "is not HOST:PORT"),
    ("--metrics", "localhost:9100", "an IP address and a port"),
    ("--pcap", "", "is empty: give a file name"),
    ("--pcap-filter", "host example.com", "names are not resolved"),
    ("--pcap-filter", "port 1 and", "unexpected end"),
    ("--pcap-max", "1K", "must be between 4K and 1T"),
    ("--pcap-snaplen", "20", "must be between 64 and 262144"),
    ("--control", " ", "is empty"),
    ("--control", "localhost:0", "neither a socket path nor HOST:PORT"),
    ("--control", "127.0.0.1:9000", "needs --control-token-file"),
    ("--control", "/run/t2p.sock", None),
    ("--control-token-file", "", "is empty: give a file name"),
    ("--log-format", "xml", "choose from text, json"),
    ("--stats-interval", "0", "must be positive"),
]


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--pcap-filter", "tcp"], "--pcap-filter applies to --pcap only"),
        (["--pcap-max", "1M"], "--pcap-max applies to --pcap only"),
        (["--pcap", "-", "--workers", "2"], "takes one worker"),
        (["--pcap", "-", "--unshare", "--", "true"], "give --pcap FILE"),
        (["--metrics", "127.0.0.1:65535", "--workers", "2"], "past 65535"),
    ],
)
def test_observability_flags_that_do_not_go_together(argv: list[str], fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        parse_args(argv)


def test_observability_flags_parse() -> None:
    o = parse_args(["--metrics", "[::1]:9100", "--pcap", "-", "--pcap-filter", " port 53 ",
                    "--pcap-max", "10M"])
    assert o.metrics == ("::1", 9100)
    assert (o.pcap, o.pcap_filter, o.pcap_max) == ("-", "port 53", 10 << 20)


def test_every_option_has_a_bad_value_case() -> None:
    covered = {flag for flag, _, _ in BAD}
    want = {o.flag for o in options() if o.spec.kind != "switch"}
    assert want <= covered, want - covered


@pytest.mark.parametrize(("flag", "value", "fragment"), BAD)
def test_bad_values_are_one_clear_line(flag: str, value: str, fragment: str | None) -> None:
    argv = [f"{flag}={value}"]  # '=': a value may start with '-'
    if fragment is None:
        parse_args(argv)
        return
    with pytest.raises(UsageError) as ei:
        parse_args(argv)
    msg = str(ei.value)
    assert msg.startswith(flag) and fragment in msg, msg
    assert "\n" not in msg
    assert "ZZss" not in msg  # never a password


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--unshare"], "--unshare needs a command after '--'"),
        (["--", "true"], "only run with --unshare"),
        (["--unshare", "--tun-netns", "x", "--", "true"], "drop --tun-fd/--tun-netns"),
        (["--tun-fd", "3", "--workers", "2"], "--workers needs a TUN device it opens itself"),
        (["--framing", "af"], "--framing applies to --tun-fd only"),
        (["--impair", "loss=1%", "--offload", "on"], "drop --offload on"),
        (["--upstream", "w=direct://", "--upstream", "w=reject://"], "given twice"),
        (["--tun", "\udcff"], "not valid UTF-8"),
        (["--proxy", "socks5://h\x00:1"], "NUL"),
    ],
)
def test_settings_that_exclude_each_other(argv: list[str], fragment: str) -> None:
    with pytest.raises(UsageError) as ei:
        parse_args(argv)
    assert fragment in str(ei.value)


def test_the_model_checks_combinations_when_built_directly() -> None:
    with pytest.raises(UsageError, match="exclude each other"):
        Options(tun="tun1", tun_fd=3)
    assert Options(unshare=True, command=("true",)).unshare
