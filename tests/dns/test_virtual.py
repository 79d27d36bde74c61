"""VirtualDns: answers, forwards and errors, checked with dnspython as an independent parser.

Queries are built with dnslib or dnspython (or by hand where they must be malformed);
responses are always read back with dnspython.
"""

from __future__ import annotations

import ast
import ipaddress
import pathlib
import struct
import subprocess
import sys
import time

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dnslib
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tun2proxy.dns import MAX_QUERY_SIZE, DnsDecision, FakeIpPool, VirtualDns
from tun2proxy.errors import ConfigError

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


@pytest.fixture
def vdns() -> VirtualDns:
    return VirtualDns(FakeIpPool())


def query(
    name: str,
    rdtype: str | int = "A",
    *,
    qid: int = 0x1234,
    rd: bool = True,
    cd: bool = False,
    edns: int | None = None,
    payload: int = 1232,
    do: bool = False,
    rdclass: str = "IN",
) -> bytes:
    """A query built by dnspython."""
    msg = dns.message.make_query(
        name,
        dns.rdatatype.RdataType.make(rdtype),
        dns.rdataclass.RdataClass.make(rdclass),
        use_edns=edns if edns is not None else False,
        payload=payload,
        want_dnssec=do,
        id=qid,
    )
    if not rd:
        msg.flags &= ~dns.flags.RD
    if cd:
        msg.flags |= dns.flags.CD
    return msg.to_wire()


def answer(decision: DnsDecision) -> dns.message.Message:
    """The decision's response, parsed by dnspython."""
    assert decision.response is not None
    assert not decision.forward
    return dns.message.from_wire(decision.response)


def rcode_of(decision: DnsDecision) -> int:
    return answer(decision).rcode()


def header_bytes(qid: int, flags: int, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


# -- A / AAAA ----------------------------------------------------------------------------------


def test_a_answer_from_the_pool(vdns: VirtualDns) -> None:
    d = vdns.handle(query("www.example.com", "A"), 0.0)
    assert d.name == "www.example.com"
    msg = answer(d)
    assert msg.rcode() == dns.rcode.NOERROR
    assert len(msg.answer) == 1
    rrset = msg.answer[0]
    assert rrset.rdtype == dns.rdatatype.A
    assert rrset.ttl == 1
    addr = V4(rrset[0].address)
    assert addr in vdns.pool.v4_network
    assert vdns.pool.name_of(addr) == "www.example.com"
    assert msg.question[0].name.to_text() == "www.example.com."
    assert vdns.stats()["answered"] == 1


def test_aaaa_answer_from_the_pool_matches_the_a_slot(vdns: VirtualDns) -> None:
    a = answer(vdns.handle(query("example.com", "A"), 0.0)).answer[0][0].address
    aaaa = answer(vdns.handle(query("example.com", "AAAA"), 0.0)).answer[0]
    assert aaaa.rdtype == dns.rdatatype.AAAA
    v6 = V6(aaaa[0].address)
    assert v6 in vdns.pool.v6_network
    assert vdns.pool.name_of(v6) == vdns.pool.name_of(a) == "example.com"
    assert len(vdns.pool) == 1


def test_answers_are_stable_across_repeats(vdns: VirtualDns) -> None:
    first = [answer(vdns.handle(query(n), 0.0)).answer[0][0].address for n in ("a.ex", "b.ex")]
    for t in (1.0, 2.0, 30.0):
        again = [answer(vdns.handle(query(n), t)).answer[0][0].address for n in ("a.ex", "b.ex")]
        assert again == first
    assert first[0] != first[1]


def test_name_normalisation_and_case_echo(vdns: VirtualDns) -> None:
    d1 = vdns.handle(query("WwW.ExAmPlE.CoM"), 0.0)
    d2 = vdns.handle(query("www.example.com"), 0.0)
    assert d1.name == d2.name == "www.example.com"
    m1, m2 = answer(d1), answer(d2)
    assert m1.answer[0][0] == m2.answer[0][0]
    # The question and the owner name keep the client's case (DNS 0x20 clients check it).
    wire = d1.response
    assert wire is not None and b"WwW\x07ExAmPlE\x03CoM" in wire
    assert m1.answer[0].name.to_text() == "WwW.ExAmPlE.CoM."


def test_answer_ttl_is_configurable() -> None:
    v = VirtualDns(FakeIpPool(), answer_ttl=0)
    assert answer(v.handle(query("example.com"), 0.0)).answer[0].ttl == 0


def test_dnslib_built_queries_work_too(vdns: VirtualDns) -> None:
    q = dnslib.DNSRecord.question("example.net", "AAAA")
    d = vdns.handle(q.pack(), 0.0)
    parsed = dnslib.DNSRecord.parse(d.response)
    assert parsed.header.id == q.header.id
    assert str(parsed.rr[0].rdata) == str(vdns.pool.assign("example.net", 0.0)[1])


def test_localhost_and_invalid_special_names(vdns: VirtualDns) -> None:
    assert answer(vdns.handle(query("localhost"), 0.0)).answer[0][0].address == "127.0.0.1"
    assert answer(vdns.handle(query("db.LocalHost", "AAAA"), 0.0)).answer[0][0].address == "::1"
    assert rcode_of(vdns.handle(query("foo.invalid"), 0.0)) == dns.rcode.NXDOMAIN
    assert rcode_of(vdns.handle(query("invalid", "AAAA"), 0.0)) == dns.rcode.NXDOMAIN
    assert len(vdns.pool) == 0


def test_the_pool_is_refreshed_by_queries() -> None:
    pool = FakeIpPool(ttl=10.0)
    v = VirtualDns(pool)
    v.handle(query("example.com"), 0.0)
    v.handle(query("example.com", "AAAA"), 8.0)
    assert pool.expire(15.0) == 0
    assert pool.expire(18.0) == 1


# -- header echo ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rd", [True, False])
@pytest.mark.parametrize("cd", [True, False])
@pytest.mark.parametrize("qid", [0, 1, 0xBEEF, 0xFFFF])
def test_id_and_flags_are_echoed(vdns: VirtualDns, rd: bool, cd: bool, qid: int) -> None:
    msg = answer(vdns.handle(query("example.com", qid=qid, rd=rd, cd=cd), 0.0))
    assert msg.id == qid
    assert msg.flags & dns.flags.QR
    assert msg.flags & dns.flags.RA
    assert bool(msg.flags & dns.flags.RD) == rd
    assert bool(msg.flags & dns.flags.CD) == cd
    assert not msg.flags & dns.flags.AA
    assert not msg.flags & dns.flags.TC
    assert not msg.flags & dns.flags.AD
    assert msg.opcode() == dns.opcode.QUERY


def test_error_responses_echo_the_id_and_rd(vdns: VirtualDns) -> None:
    msg = answer(vdns.handle(query("example.com", "ANY", qid=777, rd=False), 0.0))
    assert msg.rcode() == dns.rcode.NOTIMP
    assert msg.id == 777
    assert not msg.flags & dns.flags.RD
    assert msg.flags & dns.flags.RA


# -- PTR ---------------------------------------------------------------------------------------


def test_ptr_for_mapped_pool_addresses(vdns: VirtualDns) -> None:
    v4, v6 = vdns.pool.assign("mapped.example", 0.0)
    for addr in (v4, v6):
        d = vdns.handle(query(addr.reverse_pointer, "PTR"), 1.0)
        msg = answer(d)
        assert msg.rcode() == dns.rcode.NOERROR
        assert msg.answer[0].rdtype == dns.rdatatype.PTR
        assert msg.answer[0][0].target.to_text() == "mapped.example."
        assert msg.answer[0].ttl == 1
        assert d.name == addr.reverse_pointer


def test_ptr_for_unmapped_pool_address_is_nxdomain(vdns: VirtualDns) -> None:
    for addr in ("198.18.3.4", "198.18.0.0", str(vdns.pool.v6_network[77])):
        d = vdns.handle(query(ipaddress.ip_address(addr).reverse_pointer, "PTR"), 0.0)
        assert rcode_of(d) == dns.rcode.NXDOMAIN


@pytest.mark.parametrize(
    "name",
    [
        "8.8.8.8.in-addr.arpa",
        ipaddress.ip_address("2001:db8::1").reverse_pointer,
        "18.198.in-addr.arpa",  # a zone, not an address
        "300.0.18.198.in-addr.arpa",  # not an address
        "01.0.18.198.in-addr.arpa",
        "_dns-sd._udp.example.com",
    ],
)
def test_ptr_for_anything_else_is_forwarded(vdns: VirtualDns, name: str) -> None:
    d = vdns.handle(query(name, "PTR"), 0.0)
    assert d == DnsDecision(None, True, name.lower())


# -- forwarding and the types we answer without records ------------------------------------------


@pytest.mark.parametrize(
    "rdtype", ["MX", "TXT", "SRV", "NS", "SOA", "CAA", "CNAME", "DS", "DNSKEY", "NAPTR", "TKEY"]
)
def test_other_types_are_forwarded(vdns: VirtualDns, rdtype: str) -> None:
    d = vdns.handle(query("Example.COM", rdtype), 0.0)
    assert d.forward
    assert d.response is None
    assert d.name == "example.com"
    assert vdns.stats()["forwarded"] == 1
    assert len(vdns.pool) == 0


def test_forwarded_names_are_not_restricted(vdns: VirtualDns) -> None:
    # DNS-SD instance names contain spaces; they go to the resolver as DNS, never as text.
    d = vdns.handle(query(r"My\032Printer._ipp._tcp.example.com", "SRV"), 0.0)
    assert d.forward
    assert d.name == r"my\032printer._ipp._tcp.example.com"


def test_root_query_is_forwarded(vdns: VirtualDns) -> None:
    assert vdns.handle(query(".", "NS"), 0.0) == DnsDecision(None, True, ".")


@pytest.mark.parametrize("rdtype", ["HTTPS", "SVCB"])
def test_https_and_svcb_get_an_empty_answer(vdns: VirtualDns, rdtype: str) -> None:
    d = vdns.handle(query("www.example.com", rdtype, edns=0), 0.0)
    msg = answer(d)
    assert msg.rcode() == dns.rcode.NOERROR
    assert msg.answer == [] and msg.authority == []
    assert msg.question[0].rdtype == dns.rdatatype.RdataType.make(rdtype)
    assert d.name == "www.example.com"
    assert vdns.stats()["nodata"] == 1


# -- error paths ------------------------------------------------------------------------------


@pytest.mark.parametrize("rdtype", ["ANY", "AXFR", "IXFR", 253, 254])
def test_any_and_zone_transfers_are_notimp(vdns: VirtualDns, rdtype: str | int) -> None:
    msg = answer(vdns.handle(query("example.com", rdtype), 0.0))
    assert msg.rcode() == dns.rcode.NOTIMP
    assert len(msg.question) == 1


@pytest.mark.parametrize("rdtype", [0, 41, 128, 200, 248, 250])
def test_meta_types_are_formerr(vdns: VirtualDns, rdtype: int) -> None:
    q = dnslib.DNSRecord(q=dnslib.DNSQuestion("example.com", rdtype))
    assert rcode_of(vdns.handle(q.pack(), 0.0)) == dns.rcode.FORMERR


@pytest.mark.parametrize("opcode", [1, 2, 4, 5, 15])
def test_other_opcodes_are_notimp(vdns: VirtualDns, opcode: int) -> None:
    wire = bytearray(query("example.com", qid=99))
    wire[2] = (wire[2] & 0x87) | (opcode << 3)
    msg = answer(vdns.handle(bytes(wire), 0.0))
    assert msg.rcode() == dns.rcode.NOTIMP
    assert msg.opcode() == opcode
    assert msg.id == 99


@pytest.mark.parametrize("qdcount", [0, 2, 65535])
def test_qdcount_other_than_one_is_formerr(vdns: VirtualDns, qdcount: int) -> None:
    q = dnslib.DNSRecord(dnslib.DNSHeader(id=4242))
    for _ in range(min(qdcount, 2)):
        q.add_question(dnslib.DNSQuestion("example.com"))
    wire = bytearray(q.pack())
    wire[4:6] = qdcount.to_bytes(2, "big")
    d = vdns.handle(bytes(wire), 0.0)
    msg = answer(d)
    assert msg.rcode() == dns.rcode.FORMERR
    assert msg.id == 4242
    assert msg.question == []
    assert vdns.stats()["malformed"] == 1
    assert len(vdns.pool) == 0


@pytest.mark.parametrize("rdclass", ["CH", "HS", "ANY", "NONE"])
def test_non_in_class_is_refused(vdns: VirtualDns, rdclass: str) -> None:
    d = vdns.handle(query("version.bind", "TXT", rdclass=rdclass), 0.0)
    assert rcode_of(d) == dns.rcode.REFUSED
    assert vdns.stats()["refused"] == 1


@pytest.mark.parametrize(
    "labels",
    [
        [b"a b", b"com"],
        [b"foo/bar", b"com"],
        [b"user@evil", b"com"],
        [b"x\r\nHost: evil", b"com"],
        [b"a.b", b"com"],  # a dot inside one label
        [b"caf\xc3\xa9", b"com"],  # raw UTF-8 instead of IDNA
        [b"*", b"example", b"com"],
        [],  # the root
    ],
)
@pytest.mark.parametrize("rdtype", [1, 28])
def test_invalid_host_names_are_formerr(vdns: VirtualDns, labels: list[bytes], rdtype: int) -> None:
    q = dnslib.DNSRecord(
        dnslib.DNSHeader(id=5), q=dnslib.DNSQuestion(dnslib.DNSLabel(labels), rdtype)
    )
    d = vdns.handle(q.pack(), 0.0)
    msg = answer(d)
    assert msg.rcode() == dns.rcode.FORMERR
    assert msg.id == 5
    assert len(vdns.pool) == 0


def test_name_longer_than_255_octets_is_formerr(vdns: VirtualDns) -> None:
    # 5 labels of 63 octets: legal label lengths, illegal total. Built by hand because both
    # libraries refuse to encode it.
    qname = b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\x00"
    wire = header_bytes(6, 0x0100) + qname + b"\x00\x01\x00\x01"
    msg = answer(vdns.handle(wire, 0.0))
    assert msg.rcode() == dns.rcode.FORMERR
    assert msg.id == 6


@pytest.mark.parametrize("wire", [b"", b"\x00", b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00"])
def test_shorter_than_a_header_is_dropped(vdns: VirtualDns, wire: bytes) -> None:
    assert vdns.handle(wire, 0.0) == DnsDecision(None, False, None)
    stats = vdns.stats()
    assert stats["dropped"] == stats["malformed"] == 1


def test_responses_are_dropped_not_answered(vdns: VirtualDns) -> None:
    wire = bytearray(query("example.com"))
    wire[2] |= 0x80  # QR
    assert vdns.handle(bytes(wire), 0.0) == DnsDecision(None, False, None)
    assert vdns.stats()["dropped"] == 1


def test_truncated_question_is_formerr(vdns: VirtualDns) -> None:
    wire = query("example.com", qid=0xABCD)
    for cut in range(12, len(wire)):
        msg = answer(vdns.handle(wire[:cut], 0.0))
        assert msg.rcode() == dns.rcode.FORMERR
        assert msg.id == 0xABCD


def test_oversized_query_is_formerr(vdns: VirtualDns) -> None:
    wire = query("example.com", qid=3) + b"\x00" * MAX_QUERY_SIZE
    msg = answer(vdns.handle(wire, 0.0))
    assert msg.rcode() == dns.rcode.FORMERR


def _pointer_chain_query(depth: int) -> bytes:
    """A query whose second additional record is named by a pointer to a pointer to ...
    ``depth`` deep, each pointing two bytes back into the first record's RDATA."""
    question = b"\x01a\x00\x00\x01\x00\x01"
    rdata_start = _HEADER_LEN + len(question) + 1 + 10  # after a root-named RR header
    chain = bytearray(b"\x00")  # the root label the chain ends at
    positions = [rdata_start]
    for i in range(depth):
        chain += (0xC000 | positions[-1]).to_bytes(2, "big")
        positions.append(rdata_start + 1 + 2 * i)
    null_rr = b"\x00" + struct.pack("!HHIH", 10, 1, 0, len(chain)) + bytes(chain)
    a_rr = (0xC000 | positions[-1]).to_bytes(2, "big") + struct.pack("!HHIH", 1, 1, 0, 4)
    return header_bytes(8, 0x0100, qd=1, ar=2) + question + null_rr + a_rr + b"\x01\x02\x03\x04"


_HEADER_LEN = 12


def test_pointer_chain_oracle() -> None:
    with pytest.raises(RecursionError):  # dnslib's decoder recurses once per pointer
        dnslib.DNSRecord.parse(_pointer_chain_query(1900))
    dnslib.DNSRecord.parse(_pointer_chain_query(50))  # a short chain is legal


def test_compression_pointer_chain_is_formerr_quickly(vdns: VirtualDns) -> None:
    wire = _pointer_chain_query(1900)
    assert len(wire) < MAX_QUERY_SIZE
    start = time.perf_counter()
    d = vdns.handle(wire, 0.0)
    assert time.perf_counter() - start < 1.0
    assert rcode_of(d) == dns.rcode.FORMERR
    assert vdns.stats()["errors"] == 0
    assert answer(vdns.handle(_pointer_chain_query(50), 0.0)).answer  # legal: answered


# -- EDNS and truncation -----------------------------------------------------------------------


def test_no_opt_in_query_means_no_opt_in_response(vdns: VirtualDns) -> None:
    msg = answer(vdns.handle(query("example.com"), 0.0))
    assert msg.edns == -1


@pytest.mark.parametrize("do", [True, False])
def test_opt_is_answered_with_our_payload_and_the_do_bit(vdns: VirtualDns, do: bool) -> None:
    msg = answer(vdns.handle(query("example.com", edns=0, payload=4096, do=do), 0.0))
    assert msg.edns == 0
    assert msg.payload == 1232
    assert bool(msg.ednsflags & dns.flags.DO) == do
    assert msg.options == ()


def test_opt_options_are_not_echoed(vdns: VirtualDns) -> None:
    msg = dns.message.make_query("example.com", "A", use_edns=0)
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"\x01" * 8)  # a client cookie
    msg.use_edns(0, options=[cookie])
    reply = answer(vdns.handle(msg.to_wire(), 0.0))
    assert reply.edns == 0 and reply.options == ()
    assert reply.answer


def test_edns_version_1_is_badvers(vdns: VirtualDns) -> None:
    msg = answer(vdns.handle(query("example.com", edns=1), 0.0))
    assert msg.rcode() == dns.rcode.BADVERS
    assert msg.edns == 0
    assert msg.answer == []
    assert vdns.stats()["badvers"] == 1


def test_two_opt_records_are_formerr(vdns: VirtualDns) -> None:
    q = dnslib.DNSRecord.question("example.com")
    q.add_ar(dnslib.EDNS0(udp_len=1232))
    q.add_ar(dnslib.EDNS0(udp_len=4096))
    assert rcode_of(vdns.handle(q.pack(), 0.0)) == dns.rcode.FORMERR


def _long_name() -> str:
    return ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters, the most


def test_largest_own_answer_fits_512_bytes(vdns: VirtualDns) -> None:
    # Our answers carry one record, so even the largest (PTR for an ip6.arpa name pointing
    # at a 253-character name) fits a plain 512-byte UDP response without truncation.
    _, v6 = vdns.pool.assign(_long_name(), 0.0)
    d = vdns.handle(query(v6.reverse_pointer, "PTR", qid=31), 0.0)
    assert d.response is not None and len(d.response) <= 512
    msg = answer(d)
    assert not msg.flags & dns.flags.TC
    assert msg.answer[0][0].target.to_text() == _long_name() + "."
    assert vdns.stats()["truncated"] == 0


def test_payload_below_512_counts_as_512(vdns: VirtualDns) -> None:
    msg = answer(vdns.handle(query("example.com", edns=0, payload=100), 0.0))
    assert not msg.flags & dns.flags.TC
    assert msg.answer


def test_tcp_queries_have_no_udp_limit(vdns: VirtualDns) -> None:
    _, v6 = vdns.pool.assign(_long_name(), 0.0)
    d = vdns.handle(query(v6.reverse_pointer, "PTR", edns=0, payload=512), 0.0, tcp=True)
    msg = answer(d)
    assert not msg.flags & dns.flags.TC
    assert msg.answer[0][0].target.to_text() == _long_name() + "."


# -- helpers for the host ------------------------------------------------------------------------


def test_servfail_and_formerr_helpers(vdns: VirtualDns) -> None:
    q = query("example.com", "MX", qid=55, edns=0, do=True)
    for helper, rcode in ((vdns.servfail, dns.rcode.SERVFAIL), (vdns.formerr, dns.rcode.FORMERR)):
        wire = helper(q)
        assert wire is not None
        msg = dns.message.from_wire(wire)
        assert msg.rcode() == rcode
        assert msg.id == 55
        assert msg.question[0].rdtype == dns.rdatatype.MX
        assert msg.edns == 0 and msg.ednsflags & dns.flags.DO
        assert msg.flags & dns.flags.QR
    assert vdns.stats()["servfail"] == 1


def test_helpers_on_garbage(vdns: VirtualDns) -> None:
    assert vdns.servfail(b"\x01\x02") is None
    assert vdns.formerr(b"") is None
    response = bytearray(query("example.com"))
    response[2] |= 0x80
    assert vdns.servfail(bytes(response)) is None
    junk = header_bytes(9, 0x0100, qd=3) + b"\xff" * 5
    for helper in (vdns.servfail, vdns.formerr):
        wire = helper(junk)
        assert wire is not None
        msg = dns.message.from_wire(wire)
        assert msg.id == 9 and msg.question == []


def _big_txt_response(q: bytes, *, with_opt: bool = False) -> bytes:
    parsed = dnslib.DNSRecord.parse(q)
    reply = parsed.reply()
    for i in range(12):
        reply.add_answer(dnslib.RR(parsed.q.qname, 16, 1, 300, dnslib.TXT(bytes([97 + i]) * 250)))
    reply.add_auth(dnslib.RR("example.com", 2, 1, 300, dnslib.NS("ns1.example.com")))
    if with_opt:
        reply.add_ar(dnslib.EDNS0(udp_len=4096))
    return bytes(reply.pack())


def test_fit_udp_passes_small_responses_through(vdns: VirtualDns) -> None:
    q = query("example.com", "TXT")
    small = dnslib.DNSRecord.parse(q).reply()
    small.add_answer(dnslib.RR("example.com", 16, 1, 300, dnslib.TXT(b"hello")))
    wire = bytes(small.pack())
    assert vdns.fit_udp(q, wire) == wire


@pytest.mark.parametrize(
    ("edns", "payload", "limit"),
    [(None, 0, 512), (0, 100, 512), (0, 512, 512), (0, 1000, 1000), (0, 4096, 1232)],
)
def test_fit_udp_truncates_large_forwarded_answers(
    vdns: VirtualDns, edns: int | None, payload: int, limit: int
) -> None:
    q = query("example.com", "TXT", qid=77, edns=edns, payload=payload)
    big = _big_txt_response(q, with_opt=edns is not None)
    assert len(big) > 1232
    fitted = vdns.fit_udp(q, big)
    assert fitted is not None and len(fitted) <= limit
    msg = dns.message.from_wire(fitted)
    assert msg.flags & dns.flags.TC
    assert msg.id == 77
    assert msg.question[0].rdtype == dns.rdatatype.TXT
    assert msg.answer == [] and msg.authority == []
    assert msg.edns == (-1 if edns is None else 0)  # OPT survives truncation (RFC 6891 s. 7)
    assert vdns.stats()["truncated"] == 1


@pytest.mark.parametrize(("payload", "size", "truncated"), [(1232, 1200, False), (600, 700, True)])
def test_fit_udp_respects_the_payload_exactly(
    vdns: VirtualDns, payload: int, size: int, truncated: bool
) -> None:
    q = query("example.com", "TXT", edns=0, payload=payload)
    parsed = dnslib.DNSRecord.parse(q)
    reply = parsed.reply()
    reply.add_answer(dnslib.RR(parsed.q.qname, 16, 1, 300, dnslib.TXT(b"x" * 200)))
    while len(reply.pack()) < size:
        reply.add_answer(dnslib.RR(parsed.q.qname, 16, 1, 300, dnslib.TXT(b"y" * 20)))
    wire = bytes(reply.pack())
    fitted = vdns.fit_udp(q, wire)
    assert (fitted != wire) == truncated


def test_fit_udp_with_a_large_payload_and_tcp_sized_limit() -> None:
    v = VirtualDns(FakeIpPool(), edns_udp_size=4096)
    q = query("example.com", "TXT", edns=0, payload=4096)
    big = _big_txt_response(q)
    assert v.fit_udp(q, big) == big


def test_fit_udp_unparseable_large_response_becomes_servfail(vdns: VirtualDns) -> None:
    q = query("example.com", "TXT", qid=12)
    junk = (12).to_bytes(2, "big") + b"\x80\x00" + b"\x00\x01" + b"\xff" * 600
    fitted = vdns.fit_udp(q, junk)
    assert fitted is not None
    msg = dns.message.from_wire(fitted)
    assert msg.rcode() == dns.rcode.SERVFAIL and msg.id == 12


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x00" * 11,
        b"\x00" * 600,  # QR clear: not a response
        b"\x00\x0d\x80\x00" + b"\x00" * 8,  # another id
    ],
)
def test_fit_udp_non_answers_become_servfail(vdns: VirtualDns, bad: bytes) -> None:
    q = query("example.com", "TXT", qid=12)
    fitted = vdns.fit_udp(q, bad)
    assert fitted is not None
    msg = dns.message.from_wire(fitted)
    assert msg.rcode() == dns.rcode.SERVFAIL and msg.id == 12


def test_fit_udp_without_a_query_header(vdns: VirtualDns) -> None:
    assert vdns.fit_udp(b"\x00", b"\x00" * 20) is None
    response = bytearray(query("example.com"))
    response[2] |= 0x80
    assert vdns.fit_udp(bytes(response), bytes(response)) is None


# -- configuration and packaging -----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"answer_ttl": -1}, {"answer_ttl": 2**31}, {"answer_ttl": 1.5}, {"edns_udp_size": 511}],
)
def test_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        VirtualDns(FakeIpPool(), **kwargs)  # type: ignore[arg-type]


def test_missing_dnslib_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dnslib", None)
    with pytest.raises(ConfigError, match=r"pip install 'tun2proxy\[dns\]'"):
        VirtualDns(FakeIpPool())


def test_dns_package_is_pure() -> None:
    forbidden = {"asyncio", "socket", "os", "time", "random", "threading", "selectors"}
    root = pathlib.Path(__file__).resolve().parents[2] / "tun2proxy" / "dns"
    files = sorted(root.glob("*.py"))
    assert len(files) == 4
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            assert not [n for n in names if n.split(".")[0] in forbidden], path.name


def test_importing_the_package_does_not_import_dnslib() -> None:
    code = "import sys, tun2proxy.dns; print('dnslib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- never raises ---------------------------------------------------------------------------------

_SEEDS = [
    query("example.com"),
    query("Example.COM", "AAAA", edns=0, do=True),
    query("1.0.18.198.in-addr.arpa", "PTR"),
    query("example.com", "MX", edns=0),
    query("example.com", "HTTPS"),
    query("version.bind", "TXT", rdclass="CH"),
]


def _check(vdns: VirtualDns, wire: bytes) -> None:
    decision = vdns.handle(wire, 0.0)
    assert isinstance(decision, DnsDecision)
    if decision.response is not None:
        assert not decision.forward
        msg = dns.message.from_wire(decision.response)  # always well-formed DNS
        assert msg.id == int.from_bytes(wire[:2], "big")
        assert msg.flags & dns.flags.QR
        assert len(decision.response) <= 512 or msg.edns >= 0
    assert vdns.stats()["errors"] == 0
    for helper in (vdns.servfail, vdns.formerr):
        out = helper(wire)
        if out is not None:
            dns.message.from_wire(out)
    if len(wire) >= 12 and not wire[2] & 0x80:
        fitted = vdns.fit_udp(wire, wire)  # not an answer (QR clear): SERVFAIL
        assert fitted is not None
        assert dns.message.from_wire(fitted).rcode() == dns.rcode.SERVFAIL


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    _check(VirtualDns(FakeIpPool("10.0.0.0/29", capacity=3)), data)


@settings(max_examples=300)
@given(
    seed=st.sampled_from(_SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.integers(0, 80),
    tail=st.binary(max_size=40),
)
@example(  # found by hypothesis: opcode UPDATE, whose question section is a "zone" section
    seed=b"\x124\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01\x07Example\x03COM\x00\x00\x1c\x00"
    b"\x01\x00\x00)\x04\xd0\x00\x00\x80\x00\x00\x00",
    edits=[(82, 40)], cut=0, tail=b"",
)
def test_mutated_queries_never_raise(
    seed: bytes, edits: list[tuple[int, int]], cut: int, tail: bytes
) -> None:
    wire = bytearray(seed)
    for pos, value in edits:
        wire[pos % len(wire)] = value
    mutated = bytes(wire[: max(0, len(wire) - cut)]) + tail if cut % 3 == 0 else bytes(wire)
    _check(VirtualDns(FakeIpPool("10.0.0.0/29", capacity=3)), mutated)


def test_internal_errors_become_servfail_not_exceptions(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: FakeIpPool, name: str, now: float) -> None:
        raise RuntimeError("bug")

    v = VirtualDns(FakeIpPool())
    monkeypatch.setattr(FakeIpPool, "assign", boom)
    d = v.handle(query("example.com", qid=4), 0.0)
    msg = answer(d)
    assert msg.rcode() == dns.rcode.SERVFAIL and msg.id == 4
    assert v.stats()["errors"] == 1
