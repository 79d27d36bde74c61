"""Special IP addresses: which ones a flow may come from or go to (packed bytes in, a class out).

Pure and cheap: called for every SYN and every UDP datagram, so it works on the packed 4 or
16 bytes with a few comparisons and never builds an :mod:`ipaddress` object. The stack uses it
for the sources and destinations of TCP, UDP and ICMP (:func:`bad_source`,
:func:`bad_destination`), and the ``direct://`` upstream uses it again on every address a
dial resolves to (:func:`dial_refused`), so a name that resolves to ``127.0.0.1`` cannot reach
the host's loopback either.

:func:`classify` names the class of an address, ``""`` for an ordinary one:

=========================  ================================================================
``unspecified``            ``0.0.0.0``, ``::`` (a dial to it reaches this host)
``this-network``           ``0.0.0.0/8`` other than ``0.0.0.0`` (RFC 1122 §3.2.1.3)
``loopback``               ``127.0.0.0/8``, ``::1``
``multicast``              ``224.0.0.0/4``, ``ff00::/8``
``broadcast``              ``255.255.255.255`` (limited broadcast)
``reserved``               ``240.0.0.0/4`` but the broadcast address (RFC 1112 "future use")
``link-local``             ``169.254.0.0/16``, ``fe80::/10``
``site-local``             ``fec0::/10`` (deprecated by RFC 3879, scoped like link-local)
=========================  ================================================================

IPv6 forms that carry an IPv4 address are classified by the IPv4 address they embed, since
that is where a dial (or a translator on the way) delivers them: the class is the form's name,
a dash and the IPv4 class (``mapped-loopback`` for ``::ffff:127.0.0.1``), or ``""`` when the
IPv4 address is ordinary (``::ffff:192.0.2.1`` is an ordinary destination: an ``AF_INET6``
socket connects to ``192.0.2.1``):

=========================  ================================================================
``mapped``                 ``::ffff:0:0/96`` IPv4-mapped (RFC 4291 §2.5.5.2)
``compat``                 ``::/96`` IPv4-compatible, deprecated (RFC 4291 §2.5.5.1);
                           ``::`` and ``::1`` themselves stay ``unspecified``/``loopback``
``translated``             ``::ffff:0:0:0/96`` IPv4-translated (RFC 2765 §2.1)
``nat64``                  ``64:ff9b::/96`` (RFC 6052) and ``64:ff9b:1::/48`` (RFC 8215)
``6to4``                   ``2002::/16`` (RFC 3056): the relay's IPv4 address
``teredo``                 ``2001::/32`` (RFC 4380): server or (obfuscated) client address
=========================  ================================================================

NAT64 (decided here, see ``docs/security.md``): ``64:ff9b::/96`` is an ordinary global
destination — a NAT64 gateway on the upstream's path translates it to the IPv4 address in its
last 32 bits — *unless* that IPv4 address is special, because the gateway would then deliver
the flow to its own loopback or network (RFC 6052 §3.1 forbids the well-known prefix for
non-global IPv4 addresses anyway). The local-use prefix ``64:ff9b:1::/48`` may embed the IPv4
address in any RFC 6052 §2.2 layout of length 48 to 96; every layout whose reserved octet
("u", bits 64-71) and suffix are zero is checked, and the address is refused if any of them
embeds a special IPv4 address. The /96 reading always applies, so the /48 and /56 layouts,
whose last 32 bits are zero, read as ``0.0.0.0`` and are refused: only /64 and /96 layouts
of the local-use prefix carry flows (the /96 one is what deployments use). A
network-specific prefix chosen by an operator cannot be recognised from the address alone;
its translator must refuse special IPv4 addresses itself.
"""

from __future__ import annotations

__all__ = [
    "SCOPED",
    "bad_destination",
    "bad_source",
    "classify",
    "classify4",
    "classify6",
    "dial_refused",
]

_Z4 = bytes(4)
_Z6 = bytes(6)
_Z8 = bytes(8)
_Z10 = bytes(10)
_Z16 = bytes(16)
_LOOP16 = bytes(15) + b"\x01"
_ONES4 = b"\xff\xff\xff\xff"
_FFFF = b"\xff\xff"
_ZZ = b"\x00\x00"
_TRANSLATED = b"\xff\xff\x00\x00"
_NAT64 = b"\x00\x64\xff\x9b"
_NAT64_LOCAL = b"\x00\x01"
_TEREDO = b"\x20\x01\x00\x00"
#: First octets of IPv4 addresses that may be special (everything else is ordinary).
_V4_FIRST = frozenset([0, 127, 169, *range(224, 256)])

_FORMS = ("mapped", "compat", "translated", "nat64", "6to4", "teredo")
_V4_CLASSES = (
    "unspecified", "this-network", "loopback", "multicast", "broadcast", "reserved", "link-local"
)
#: Classes refused as destinations only while scoped addresses are not allowed
#: (``StackConfig.allow_link_local``), and accepted as sources: link-local and site-local,
#: also when embedded (``mapped-link-local``).
SCOPED = frozenset(
    ["link-local", "site-local", *(f"{form}-link-local" for form in _FORMS)]
)
#: Every embedded class, precomputed so classifying allocates no string.
_EMBEDDED = {form: {c: f"{form}-{c}" for c in _V4_CLASSES} for form in _FORMS}


def classify4(a: bytes) -> str:
    """The class of a packed IPv4 address (4 bytes): ``""`` when ordinary."""
    b0 = a[0]
    if b0 not in _V4_FIRST:
        return ""
    if b0 == 0:
        return "unspecified" if a == _Z4 else "this-network"
    if b0 == 127:
        return "loopback"
    if b0 == 169:
        return "link-local" if a[1] == 254 else ""
    if b0 < 240:
        return "multicast"
    return "broadcast" if a == _ONES4 else "reserved"


def _embedded(form: str, v4: bytes) -> str:
    c = classify4(v4)
    return _EMBEDDED[form][c] if c else ""


def _nat64_local(a: bytes) -> str:
    """``64:ff9b:1::/48`` (RFC 8215): every plausible RFC 6052 layout from /48 to /96."""
    if a[8] == 0:  # the "u" octet of the shorter layouts must be zero
        for v4, suffix in (
            (a[6:8] + a[9:11], a[11:16]),  # /48
            (a[7:8] + a[9:12], a[12:16]),  # /56
            (a[9:13], a[13:16]),  # /64
        ):
            if not any(suffix):
                c = _embedded("nat64", v4)
                if c:
                    return c
    return _embedded("nat64", a[12:16])  # /96: the last 32 bits (0.0.0.0 for a /48 or /56)


def classify6(a: bytes) -> str:
    """The class of a packed IPv6 address (16 bytes): ``""`` when ordinary."""
    b0 = a[0]
    if b0 == 0xFF:
        return "multicast"
    if b0 == 0xFE:
        scope = a[1] & 0xC0
        if scope == 0x80:
            return "link-local"
        return "site-local" if scope == 0xC0 else ""
    if b0 == 0:
        if a[:10] == _Z10:
            w = a[10:12]
            if w == _FFFF:
                return _embedded("mapped", a[12:16])
            if w == _ZZ:
                if a == _Z16:
                    return "unspecified"
                if a == _LOOP16:
                    return "loopback"
                return _embedded("compat", a[12:16])
            return ""
        if a[:8] == _Z8 and a[8:12] == _TRANSLATED:
            return _embedded("translated", a[12:16])
        if a[:4] == _NAT64:
            if a[4:12] == _Z8:
                return _embedded("nat64", a[12:16])
            if a[4:6] == _NAT64_LOCAL:
                return _nat64_local(a)
        return ""
    if b0 == 0x20:
        b1 = a[1]
        if b1 == 0x02:
            return _embedded("6to4", a[2:6])
        if b1 == 0x01 and a[:4] == _TEREDO:
            client = bytes(x ^ 0xFF for x in a[12:16])  # RFC 4380 §4: stored inverted
            return _embedded("teredo", a[4:8]) or _embedded("teredo", client)
    return ""


def classify(a: bytes) -> str:
    """The class of a packed IPv4 (4 bytes) or IPv6 (16 bytes) address: ``""`` when ordinary."""
    return classify4(a) if len(a) == 4 else classify6(a)


def bad_source(a: bytes) -> str:
    """Why a packet from ``a`` is never answered (RFC 1122 §3.2.1.3, RFC 9293 MUST-63), or "".

    Unspecified, "this network", loopback, multicast, broadcast and reserved sources — also
    embedded in an IPv6 form — are refused; link-local and site-local sources are accepted
    (an interface with only such an address sends from it).
    """
    if len(a) == 4:
        if a[0] not in _V4_FIRST:
            return ""
        c = classify4(a)
    else:
        c = classify6(a)
    return c if c and c not in SCOPED else ""


def bad_destination(a: bytes, allow_scoped: bool = False) -> str:
    """Why no flow may go to ``a`` (RFC 9293 MUST-57 and anything a dial would make local), or "".

    Every special class is refused; link-local and site-local ones (:data:`SCOPED`) only
    unless ``allow_scoped``.
    """
    if len(a) == 4:
        if a[0] not in _V4_FIRST:
            return ""
        c = classify4(a)
    else:
        c = classify6(a)
    if not c or (allow_scoped and c in SCOPED):
        return ""
    return c


def dial_refused(a: bytes) -> str:
    """Why an upstream must not dial ``a`` for an application (the host's own addresses and
    what is not unicast), or "".

    The same classes as :func:`bad_source`: at dial time the address may come from a name
    (virtual DNS, sniffing) that resolved to ``127.0.0.1`` or ``::ffff:0.0.0.0``. Scoped
    addresses are not refused here: whether an application may reach them is the stack's
    decision (``allow_link_local``), and they are not this host.
    """
    return bad_source(a)
