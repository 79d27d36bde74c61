"""SOCKS5 client handshake (RFC 1928) with username/password auth (RFC 1929), sans-I/O.

Pure: no I/O. :class:`Socks5Handshake` produces the client's messages and parses the server's
replies from whatever bytes arrive, in any split or coalescing (see :mod:`.base`).
:func:`encode_udp_datagram` and :func:`decode_udp_datagram` are the UDP ASSOCIATE datagram
header codec (RFC 1928 §7).

The exchange (by default each message is sent only after the previous reply)::

    client: VER=5 NMETHODS METHODS...             (NO_AUTH, plus USERPASS when auth is given)
    server: VER=5 METHOD
    client: VER=1 ULEN UNAME PLEN PASSWD          (RFC 1929, only when METHOD is USERPASS)
    server: VER STATUS
    client: VER=5 CMD RSV=0 ATYP DST.ADDR DST.PORT
    server: VER=5 REP RSV ATYP BND.ADDR BND.PORT  [tunnel bytes follow]

With ``pipeline=True`` the greeting, the authentication and the request go in one write and
the replies are read in order: one round trip to the proxy instead of two or three. The
greeting then offers exactly one method (USERPASS with credentials, NO_AUTH without), so the
bytes that follow it can only mean one thing; a server that selects another fails the
handshake. Servers that read each message with its own ``recv`` and drop what follows
(microsocks) never answer the request: the caller's timeout ends the attempt, and its error
names the pipelining. dante, 3proxy, sing-box and hev accept it.

Leniency, where servers differ from the letter of the RFCs:

- the RSV byte of the reply is ignored (RFC 1928 says it is 0; a non-zero value carries no
  meaning we could act on, so it is not worth failing a working tunnel over);
- the RFC 1929 status reply is accepted with VER 1 (the RFC) or 5 (what some servers send);
- credentials may be empty (RFC 1929 says 1-255 bytes); only longer ones are refused, locally;
- a reply whose BND.ADDR is an empty or unusable domain name gives ``Established.bound=None``.

A reply with REP != 0 fails as soon as its REP byte arrives, without waiting for the rest:
the server closes the connection after it anyway (RFC 1928 §6).

For UDP ASSOCIATE, ``Established.bound`` is the relay's address; ``0.0.0.0``/``::`` there
means "the proxy's own address", which the caller substitutes.
"""

from __future__ import annotations

from typing import Final

from ..errors import MalformedPacket
from .address import (
    SOCKS_ADDRESS_TRUNCATED,
    Address,
    decode_socks_address,
    encode_socks_address,
)
from .base import HandshakeBase

__all__ = [
    "CONNECT",
    "NO_ACCEPTABLE_METHODS",
    "NO_AUTH",
    "UDP_ASSOCIATE",
    "USERPASS",
    "Socks5Handshake",
    "decode_udp_datagram",
    "encode_udp_datagram",
]

_VERSION: Final = 5
#: CMD: open a TCP stream to DST (RFC 1928 §4).
CONNECT: Final = 1
#: CMD: open a UDP relay for datagrams from DST (RFC 1928 §4, §7).
UDP_ASSOCIATE: Final = 3
#: METHOD: no authentication required (RFC 1928 §3).
NO_AUTH: Final = 0x00
#: METHOD: username/password (RFC 1929).
USERPASS: Final = 0x02
#: METHOD reply: none of the offered methods is acceptable (RFC 1928 §3).
NO_ACCEPTABLE_METHODS: Final = 0xFF

#: REP code -> (UpstreamError reason, RFC 1928 §6 meaning).
_REPLIES: Final[dict[int, tuple[str, str]]] = {
    1: ("error", "general SOCKS server failure"),
    2: ("denied", "connection not allowed by ruleset"),
    3: ("unreachable", "network unreachable"),
    4: ("unreachable", "host unreachable"),
    5: ("refused", "connection refused"),
    6: ("unreachable", "TTL expired"),
    7: ("unsupported", "command not supported"),
    8: ("unsupported", "address type not supported"),
}

_COMMAND_NAMES: Final = {CONNECT: "CONNECT", UDP_ASSOCIATE: "UDP ASSOCIATE"}

# Handshake states (the end is HandshakeBase's).
_METHOD: Final = 0  # waiting for the method selection (VER METHOD)
_AUTH: Final = 1  # waiting for the RFC 1929 status (VER STATUS)
_REPLY: Final = 2  # waiting for the reply to our request


def _encode_userpass(username: str, password: str) -> bytes:
    """The RFC 1929 request; ValueError when either field is longer than 255 bytes."""
    user = username.encode("utf-8")
    pwd = password.encode("utf-8")
    if len(user) > 255:
        raise ValueError(f"SOCKS5 username is {len(user)} bytes; RFC 1929 allows 255")
    if len(pwd) > 255:
        raise ValueError(f"SOCKS5 password is {len(pwd)} bytes; RFC 1929 allows 255")
    return bytes((1, len(user))) + user + bytes((len(pwd),)) + pwd


class Socks5Handshake(HandshakeBase):
    """The client side of one SOCKS5 CONNECT or UDP ASSOCIATE negotiation (RFC 1928/1929)."""

    __slots__ = (
        "_auth_msg",
        "_methods",
        "_request",
        "_state",
        "command",
        "dst",
        "method",
        "pipeline",
        "reply_code",
    )

    _name = "SOCKS5 handshake"

    def __init__(
        self, dst: Address, *, auth: tuple[str, str] | None = None, command: int = CONNECT,
        pipeline: bool = False,
    ) -> None:
        if command not in _COMMAND_NAMES:
            raise ValueError(f"unsupported SOCKS5 command {command}; use CONNECT or UDP_ASSOCIATE")
        #: The destination (CONNECT) or the client's expected UDP source (UDP ASSOCIATE).
        self.dst = dst
        #: The request's CMD: :data:`CONNECT` or :data:`UDP_ASSOCIATE`.
        self.command = command
        #: The method the server selected, once it has answered (for logging).
        self.method: int | None = None
        #: The reply's REP code, once it has arrived (for logging).
        self.reply_code: int | None = None
        #: Greeting, authentication and request sent at once (see the module's docstring).
        self.pipeline = pipeline
        self._request = bytes((_VERSION, command, 0)) + encode_socks_address(dst)
        self._auth_msg = _encode_userpass(*auth) if auth is not None else b""
        if pipeline:  # one method only: what follows the greeting must be unambiguous
            self._methods = bytes((USERPASS,)) if auth is not None else bytes((NO_AUTH,))
        else:
            self._methods = bytes((NO_AUTH, USERPASS)) if auth is not None else bytes((NO_AUTH,))
        greeting = bytes((_VERSION, len(self._methods))) + self._methods
        if pipeline:
            greeting += self._auth_msg + self._request
        super().__init__(greeting)
        self._state = _METHOD

    # -- internals -------------------------------------------------------------------------

    def _what(self) -> str:
        return f"{_COMMAND_NAMES[self.command]} {self.dst}"

    def _advance(self) -> None:
        buf = self._buf
        while True:
            n = len(buf)
            state = self._state
            if state == _METHOD:
                if n >= 1 and buf[0] != _VERSION:
                    self._fail("protocol", f"not a SOCKS5 server: version byte {buf[0]:#04x}")
                    return
                if n < 2:
                    return
                method = buf[1]
                self.method = method
                if method == NO_ACCEPTABLE_METHODS:
                    if self._auth_msg:
                        msg = "server accepted no offered authentication method"
                    else:
                        msg = "server requires authentication and no credentials were given"
                    self._fail("auth", msg, method)
                    return
                if method not in self._methods:
                    self._fail("protocol", f"server selected method {method:#04x}, not offered")
                    return
                del buf[:2]
                if method == USERPASS:
                    if not self.pipeline:
                        self._out += self._auth_msg
                    self._state = _AUTH
                else:
                    if not self.pipeline:
                        self._out += self._request
                    self._state = _REPLY
            elif state == _AUTH:
                if n >= 1 and buf[0] != 1 and buf[0] != _VERSION:
                    self._fail("protocol", f"bad username/password reply version {buf[0]:#04x}")
                    return
                if n < 2:
                    return
                status = buf[1]
                if status != 0:
                    self._fail("auth", f"username/password rejected (status {status:#04x})", status)
                    return
                del buf[:2]
                if not self.pipeline:
                    self._out += self._request
                self._state = _REPLY
            else:  # _REPLY
                if n >= 1 and buf[0] != _VERSION:
                    self._fail("protocol", f"bad reply version {buf[0]:#04x}")
                    return
                if n < 2:
                    return
                rep = buf[1]
                self.reply_code = rep
                if rep != 0:
                    reason, meaning = _REPLIES.get(rep, ("error", "unknown reply code"))
                    self._fail(reason, f"reply {rep:#04x} ({meaning}) to {self._what()}", rep)
                    return
                try:
                    # BND.ADDR:BND.PORT; None for an empty or unusable domain name.
                    bound, end = decode_socks_address(buf, 3)
                except MalformedPacket as e:
                    if e.reason != SOCKS_ADDRESS_TRUNCATED:
                        self._fail("protocol", f"reply has unknown address type {buf[3]:#04x}")
                    return
                self._establish(end, bound)
                return


def encode_udp_datagram(dst: Address, payload: bytes) -> bytes:
    """One UDP ASSOCIATE datagram for ``dst``: RSV=0, FRAG=0, address, then ``payload`` (§7)."""
    return b"\x00\x00\x00" + encode_socks_address(dst) + payload


def decode_udp_datagram(data: bytes | bytearray | memoryview) -> tuple[Address, memoryview]:
    """Split a relayed datagram into (source address, payload view) (RFC 1928 §7).

    Raises:
        MalformedPacket: ``socks5-udp-truncated`` (header cut short), ``socks5-udp-rsv`` (RSV
            not 0), ``socks5-udp-fragmented`` (FRAG not 0: fragmentation is not implemented, so
            the datagram MUST be dropped), ``socks5-udp-atyp`` (unknown address type) or
            ``socks5-udp-domain`` (empty or non-UTF-8 domain name). The caller drops it.
    """
    mv = memoryview(data)
    if len(mv) < 4:
        raise MalformedPacket("socks5-udp-truncated")
    if mv[0] != 0 or mv[1] != 0:
        raise MalformedPacket("socks5-udp-rsv")
    if mv[2] != 0:
        raise MalformedPacket("socks5-udp-fragmented")
    try:
        addr, end = decode_socks_address(mv, 3)
    except MalformedPacket as e:
        truncated = e.reason == SOCKS_ADDRESS_TRUNCATED
        raise MalformedPacket("socks5-udp-truncated" if truncated else "socks5-udp-atyp") from None
    if addr is None:
        raise MalformedPacket("socks5-udp-domain")
    return addr, mv[end:]
