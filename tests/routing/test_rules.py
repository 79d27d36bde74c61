"""The rule language: parsing, every matcher, first-match precedence, errors, big rule sets."""

from __future__ import annotations

import ipaddress
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tun2proxy.errors import ConfigError
from tun2proxy.routing.rules import (
    AnyMatcher,
    CidrMatcher,
    DomainMatcher,
    KeywordMatcher,
    NetworkSet,
    PortMatcher,
    Rule,
    Rules,
    SuffixMatcher,
    parse_network,
)

ip = ipaddress.ip_address


def rules(*lines: str, targets: set[str] | None = None, default: str = "proxy") -> Rules:
    return Rules.parse(lines, targets or {"work"}, default=default)


# --------------------------------------------------------------------------------- parse


def test_parse_every_matcher_kind() -> None:
    r = rules(
        "cidr:10.0.0.0/8 -> direct",
        "cidr:2001:db8::/32 -> direct",
        "port:443 -> work",
        "port:8000-8999 -> reject",
        "domain:Example.COM. -> direct",
        "suffix:.corp.example -> work",
        "keyword:Tracker -> reject",
        "any -> proxy",
    )
    assert [type(m) for rule in r for m in rule.matchers] == [
        CidrMatcher, CidrMatcher, PortMatcher, PortMatcher, DomainMatcher, SuffixMatcher,
        KeywordMatcher, AnyMatcher,
    ]
    assert [str(rule) for rule in r] == [
        "cidr:10.0.0.0/8 -> direct",
        "cidr:2001:db8::/32 -> direct",
        "port:443 -> work",
        "port:8000-8999 -> reject",
        "domain:example.com -> direct",
        "suffix:corp.example -> work",
        "keyword:tracker -> reject",
        "any -> proxy",
    ]
    assert [rule.line for rule in r] == list(range(1, 9))


def test_comments_blank_lines_and_spacing() -> None:
    r = Rules.parse(
        [
            "# LAN goes direct",
            "",
            "   cidr:192.168.0.0/16 ,  port:22->direct   # ssh at home",
            "\tANY\t->\treject\n",
        ],
        set(),
    )
    assert len(r) == 2
    assert r.rules[0].line == 3 and r.rules[0].text == "cidr:192.168.0.0/16 ,  port:22->direct"
    assert r.rules[1] == Rule((AnyMatcher(),), "reject", 4, "ANY\t->\treject")


def test_parse_text_of_a_rules_file() -> None:
    text = "# rules\ndomain:a.example -> direct\n\nport:53 -> reject\n"
    r = Rules.parse_text(text, ())
    assert [(x.line, x.target) for x in r] == [(2, "direct"), (4, "reject")]


def test_str_round_trips() -> None:
    r = rules("cidr:10.1.2.3/8,port:1-1024,suffix:a.example,keyword:x -> work")
    again = rules(str(r.rules[0]))
    assert again.rules[0].matchers == r.rules[0].matchers


@pytest.mark.parametrize(
    ("text", "network"),
    [
        ("10.1.2.3/8", "10.0.0.0/8"),  # host bits ignored
        ("192.0.2.7", "192.0.2.7/32"),
        ("2001:db8::1", "2001:db8::1/128"),
        ("[2001:db8::]/32", "2001:db8::/32"),
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),  # IPv4-mapped networks become IPv4
    ],
)
def test_parse_network(text: str, network: str) -> None:
    assert str(parse_network(text)) == network


# ------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["cidr:10.0.0.0/8 direct"], "rule line 1: missing '->'"),
        (["# c", "", "prt:443 -> direct"], "rule line 3: unknown matcher 'prt:443'"),
        (["port:443 -> nowhere"], "unknown target 'nowhere' (known: direct, proxy, reject, work)"),
        (["cidr:10.0.0.0/33 -> direct"], "bad network '10.0.0.0/33'"),
        (["cidr:example.com -> direct"], "bad network 'example.com'"),
        (["port:http -> direct"], "bad port 'http'"),
        (["port:0 -> direct"], "bad port range '0'"),
        (["port:70000 -> direct"], "bad port range '70000'"),
        (["port:9000-8000 -> direct"], "bad port range '9000-8000'"),
        (["port:1- -> direct"], "bad port '1-'"),
        (["domain:*.example.com -> direct"], "no wildcards"),
        (["domain:a..b -> direct"], "bad name 'a..b'"),
        (["suffix:a b -> direct"], "bad name 'a b'"),
        (["keyword:a/b -> direct"], "bad keyword 'a/b'"),
        (["domain: -> direct"], "empty value in 'domain:'"),
        (["port:1,,port:2 -> direct"], "empty matcher"),
        ([" -> direct"], "no matcher before '->'"),
        (["any ->"], "missing target"),
        (["any -> direct -> proxy"], "more than one '->'"),
        (["any -> di rect"], "bad target name 'di rect'"),
        (["any"], "missing '->'"),
        (["domain:ok.example -> direct", "any -> Direct"], "rule line 2: unknown target 'Direct'"),
    ],
)
def test_errors_name_the_line_and_the_wrong_part(lines: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        Rules.parse(lines, {"work"})
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_error_source_and_default() -> None:
    with pytest.raises(ConfigError, match=r"^rules file r\.conf line 2: "):
        Rules.parse_text("any -> direct\nbogus\n", (), source="rules file r.conf")
    with pytest.raises(ConfigError, match="unknown default target 'nope'"):
        Rules.parse([], (), default="nope")


# ------------------------------------------------------------------------------ matchers


def test_cidr_matches_ip_of_its_family_only() -> None:
    r = rules("cidr:10.0.0.0/8 -> direct", "cidr:2001:db8::/32 -> work")
    assert r.decide(ip("10.200.1.1"), 80, None) == "direct"
    assert r.decide(ip("11.0.0.1"), 80, None) == "proxy"
    assert r.decide(ip("2001:db8:1::5"), 80, None) == "work"
    assert r.decide(ip("::a00:1"), 80, None) == "proxy"  # IPv4-compatible is not IPv4
    assert r.decide(ip("::ffff:10.1.2.3"), 80, None) == "direct"  # IPv4-mapped is
    assert r.decide(None, 80, "ten.example") == "proxy"


def test_ports_single_and_range() -> None:
    r = rules("port:443 -> direct", "port:8000-8999 -> work")
    assert r.decide(None, 443, None) == "direct"
    assert r.decide(None, 444, None) == "proxy"
    assert [r.decide(None, p, None) for p in (7999, 8000, 8500, 8999, 9000)] == [
        "proxy", "work", "work", "work", "proxy",
    ]


def test_domain_is_exact() -> None:
    r = rules("domain:example.com -> direct")
    assert r.decide(None, 1, "example.com") == "direct"
    assert r.decide(None, 1, "EXAMPLE.com.") == "direct"
    assert r.decide(None, 1, "www.example.com") == "proxy"
    assert r.decide(None, 1, "example.co") == "proxy"
    assert r.decide(ip("192.0.2.1"), 1, None) == "proxy"


def test_suffix_is_label_aligned() -> None:
    r = rules("suffix:example.com -> direct")
    for name in ("example.com", "a.example.com", "a.b.c.example.com", "A.Example.Com."):
        assert r.decide(None, 1, name) == "direct", name
    for name in ("notexample.com", "example.com.evil", "com", "xample.com"):
        assert r.decide(None, 1, name) == "proxy", name


def test_idna_names_in_rules() -> None:
    r = rules("suffix:bücher.example -> direct")
    assert r.decide(None, 1, "www.xn--bcher-kva.example") == "direct"


def test_keyword_is_a_substring_of_the_name() -> None:
    r = rules("keyword:track -> reject")
    assert r.decide(None, 1, "ads.tracker.example") == "reject"
    assert r.decide(None, 1, "tracking.example") == "reject"
    assert r.decide(None, 1, "trac.example") == "proxy"
    assert r.decide(ip("192.0.2.1"), 1, None) == "proxy"


def test_all_matchers_of_a_rule_must_match() -> None:
    r = rules("cidr:10.0.0.0/8,port:22 -> direct", "suffix:corp.example,port:443-443 -> work")
    assert r.decide(ip("10.0.0.1"), 22, None) == "direct"
    assert r.decide(ip("10.0.0.1"), 23, None) == "proxy"
    assert r.decide(ip("11.0.0.1"), 22, None) == "proxy"
    assert r.decide(ip("11.0.0.1"), 443, "git.corp.example") == "work"
    assert r.decide(ip("11.0.0.1"), 80, "git.corp.example") == "proxy"


def test_default_target() -> None:
    assert Rules().decide(None, 1, None) == "proxy"
    assert rules("port:1 -> work", default="direct").decide(None, 2, None) == "direct"
    assert rules("any -> reject").decide(None, 2, None) == "reject"


# ---------------------------------------------------------------------------- precedence


def test_first_matching_rule_wins_across_index_kinds() -> None:
    r = rules(
        "keyword:ads -> reject",  # scanned
        "suffix:example.com -> work",  # suffix index
        "domain:ads.example.com -> direct",  # exact index, but later
        "cidr:10.0.0.0/8 -> direct",
        "port:443 -> reject",
        "any -> proxy",
    )
    assert r.decide(None, 1, "ads.example.com") == "reject"
    assert r.decide(None, 1, "www.example.com") == "work"
    assert r.decide(ip("10.0.0.1"), 443, "www.example.com") == "work"
    assert r.decide(ip("10.0.0.1"), 443, None) == "direct"
    assert r.decide(ip("11.0.0.1"), 443, None) == "reject"
    assert r.decide(ip("11.0.0.1"), 80, None) == "proxy"
    assert r.match(ip("11.0.0.1"), 80, None) is r.rules[5]


def test_scanned_rule_before_and_after_an_indexed_one() -> None:
    r = rules("domain:a.example -> direct", "any -> work", "domain:b.example -> reject")
    assert r.decide(None, 1, "a.example") == "direct"
    assert r.decide(None, 1, "b.example") == "work"


def test_longer_and_shorter_cidrs_keep_rule_order() -> None:
    r = rules("cidr:10.0.0.0/8 -> work", "cidr:10.1.0.0/16 -> direct")
    assert r.decide(ip("10.1.2.3"), 1, None) == "work"
    r = rules("cidr:10.1.0.0/16 -> direct", "cidr:10.0.0.0/8 -> work")
    assert r.decide(ip("10.1.2.3"), 1, None) == "direct"
    assert r.decide(ip("10.2.2.3"), 1, None) == "work"


def test_nested_suffixes_keep_rule_order() -> None:
    r = rules("suffix:b.example -> direct", "suffix:a.b.example -> work")
    assert r.decide(None, 1, "x.a.b.example") == "direct"
    r = rules("suffix:a.b.example -> work", "suffix:b.example -> direct")
    assert r.decide(None, 1, "x.a.b.example") == "work"
    assert r.decide(None, 1, "x.c.b.example") == "direct"


def test_introspection() -> None:
    r = rules("domain:a.example -> work", "cidr:10.0.0.0/8 -> reject", default="direct")
    assert r.targets() == {"work", "reject", "direct"}
    assert r.uses_domains
    assert not rules("cidr:10.0.0.0/8 -> direct").uses_domains
    assert r.describe() == "2 rules (1 -> reject, 1 -> work; default direct)"
    assert Rules().describe() == "no rules (default proxy)"
    assert "2 rules" in repr(r)


# ---------------------------------------------------------------------------- NetworkSet


def test_network_set() -> None:
    s = NetworkSet(["10.0.0.0/8", "10.1.0.0/16", "192.0.2.1", "2001:db8::/32", "[::1]"])
    assert [str(n) for n in s.networks] == ["10.0.0.0/8", "192.0.2.1/32", "::1/128",
                                            "2001:db8::/32"]
    assert ip("10.9.9.9") in s and "192.0.2.1" in s and "::ffff:192.0.2.1" in s
    assert ip("2001:db8::7") in s and "::1" in s
    assert "192.0.2.2" not in s and "not an ip" not in s and 42 not in s
    assert len(s) == 4 and s and not NetworkSet()
    assert "10.0.0.0/8" in repr(s)


# ------------------------------------------------------------------------ big rule sets


def linear(rule_list: list[Rule], default: str, addr: ipaddress.IPv4Address | None, port: int,
           domain: str | None) -> str:
    """The oracle: try every rule in order."""
    for r in rule_list:
        if r.matches(addr, port, domain):
            return r.target
    return default


def big_rule_set(n: int, seed: int = 1) -> tuple[list[str], random.Random]:
    rng = random.Random(seed)
    lines = []
    kinds = ["domain", "suffix", "cidr", "port", "keyword", "mix"]
    for i in range(n):
        kind = kinds[i % len(kinds)]
        target = rng.choice(["proxy", "direct", "reject", "work"])
        if kind == "domain":
            m = f"domain:h{rng.randrange(n)}.d{rng.randrange(50)}.example"
        elif kind == "suffix":
            m = f"suffix:d{rng.randrange(n)}.example"
        elif kind == "cidr":
            plen = rng.choice([8, 16, 20, 24, 32])
            m = f"cidr:{ipaddress.IPv4Address(rng.getrandbits(32))}/{plen}"
        elif kind == "port":
            lo = rng.randrange(1, 60000)
            m = f"port:{lo}" if rng.random() < 0.7 else f"port:{lo}-{lo + rng.randrange(100)}"
        elif kind == "keyword":
            m = f"keyword:k{rng.randrange(n * 10)}"
        else:
            m = f"suffix:d{rng.randrange(n)}.example,port:{rng.randrange(1, 100)}"
        lines.append(f"{m} -> {target}")
    return lines, rng


Query = tuple[ipaddress.IPv4Address | None, int, str | None]


def random_query(rng: random.Random, n: int) -> Query:
    addr = ipaddress.IPv4Address(rng.getrandbits(32)) if rng.random() < 0.7 else None
    port = rng.randrange(1, 100) if rng.random() < 0.5 else rng.randrange(1, 65536)
    domain = None
    if rng.random() < 0.8:
        domain = rng.choice(
            [f"h{rng.randrange(n)}.d{rng.randrange(50)}.example", f"x.d{rng.randrange(n)}.example",
             f"k{rng.randrange(n * 10)}.example", "plain.example"]
        )
    return addr, port, domain


def test_large_rule_set_agrees_with_linear_scan() -> None:
    lines, rng = big_rule_set(800)
    r = rules(*lines)
    for _ in range(300):
        addr, port, domain = random_query(rng, 800)
        assert r.decide(addr, port, domain) == linear(list(r.rules), "proxy", addr, port, domain)


def test_large_rule_set_is_indexed() -> None:
    lines = [f"suffix:site{i}.example -> direct" for i in range(20000)]
    lines += [f"cidr:10.{i // 256}.{i % 256}.0/24 -> work" for i in range(5000)]
    lines += [f"domain:exact{i}.example -> reject" for i in range(5000)]
    lines += ["port:22 -> direct", "any -> proxy"]
    r = rules(*lines)
    queries = [(ipaddress.IPv4Address(f"10.{i % 40}.{i % 256}.9"), 443,
                f"a.b.site{i * 7 % 25000}.example") for i in range(2000)]
    start = time.perf_counter()
    got = [r.decide(a, p, d) for a, p, d in queries]
    elapsed = time.perf_counter() - start
    assert got[:3] == ["direct", "direct", "direct"]
    cidr_rules = {(i // 256, i % 256) for i in range(5000)}
    assert got == [
        "direct" if i * 7 % 25000 < 20000
        else "work" if (i % 40, i % 256) in cidr_rules
        else "proxy"
        for i in range(2000)
    ]
    # A linear scan would do ~30 000 rule checks per query; the indexes do a few.
    assert elapsed < 1.0, elapsed


names = st.sampled_from(["a.example", "b.a.example", "c.b.a.example", "example", "x.example"])
small_rules = st.lists(
    st.tuples(
        st.lists(
            st.one_of(
                st.sampled_from(["domain", "suffix", "keyword"]).flatmap(
                    lambda k: names.map(lambda n: f"{k}:{n}")
                ),
                st.sampled_from(["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "0.0.0.0/0",
                                 "2001:db8::/32"]).map(lambda c: f"cidr:{c}"),
                st.sampled_from(["80", "443", "1-1000"]).map(lambda p: f"port:{p}"),
                st.just("any"),
            ),
            min_size=1,
            max_size=3,
        ),
        st.sampled_from(["proxy", "direct", "reject", "work"]),
    ),
    max_size=12,
)


@settings(max_examples=80, deadline=None)
@given(
    small_rules,
    st.one_of(st.none(), st.sampled_from(["10.1.2.3", "10.2.0.1", "11.0.0.1", "2001:db8::1"])),
    st.sampled_from([80, 443, 500, 2000]),
    st.one_of(st.none(), names),
)
def test_indexes_agree_with_linear_scan(
    spec: list[tuple[list[str], str]], addr: str | None, port: int, domain: str | None
) -> None:
    r = rules(*(f"{','.join(ms)} -> {t}" for ms, t in spec))
    a = ipaddress.ip_address(addr) if addr else None
    assert r.decide(a, port, domain) == linear(list(r.rules), "proxy", a, port, domain)  # type: ignore[arg-type]
