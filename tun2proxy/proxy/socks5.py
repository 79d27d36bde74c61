"""SOCKS5 client handshake (RFC 1928) with username/password auth (RFC 1929), sans-I/O.

Pure: no I/O. :class:`Socks5Handshake` produces the client's messages and parses the server's
replies from whatever bytes arrive, in any split or coalescing (see :mod:`.base`).
:func:`encode_udp_datagram` and :func:`decode_udp_datagram` are the UDP ASSOCIATE datagram
header codec (RFC 1928 §7).

The exchange (no pipelining: each message is sent only after the previous reply)::

    client: VER=5 NMETHODS METHODS...             (NO_AUTH, plus USERPASS when auth is given)
    server: VER=5 METHOD
    client: VER=1 ULEN UNAME PLEN PASSWD          (RFC 1929, only when METHOD is USERPASS)
    server: VER STATUS
    client: VER=5 CMD RSV=0 ATYP DST.ADDR DST.PORT
    server: VER=5 REP RSV ATYP BND.ADDR BND.PORT  [tunnel bytes follow]

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

import ipaddress
import struct
from typing import Final

from ..errors import FlowStateError, MalformedPacket
from .address import Address
from .base import NEED_DATA, Established, Failed, HandshakeEvent

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

_ATYP_IPV4: Final = 1
_ATYP_DOMAIN: Final = 3
_ATYP_IPV6: Final = 4

_PORT = struct.Struct("!H")

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

# Handshake states.
_METHOD: Final = 0  # waiting for the method selection (VER METHOD)
_AUTH: Final = 1  # waiting for the RFC 1929 status (VER STATUS)
_REPLY: Final = 2  # waiting for the reply to our request
_DONE: Final = 3  # Established or Failed


def _host_bytes(host: str) -> bytes:
    """The wire form of a domain name: ASCII as is, otherwise IDNA (ValueError if invalid)."""
    try:
        return host.encode("ascii")
    except UnicodeEncodeError:
        return host.encode("idna")  # UnicodeError is a ValueError


def _encode_address(addr: Address) -> bytes:
    """ATYP, ADDR and PORT for ``addr`` (RFC 1928 §5); ValueError for names over 255 bytes."""
    ip = addr.ip
    port = _PORT.pack(addr.port)
    if ip is None:
        name = _host_bytes(addr.host)
        if not 1 <= len(name) <= 255:
            raise ValueError(f"domain name {addr.host!r} is {len(name)} bytes; SOCKS5 allows 1-255")
        return bytes((_ATYP_DOMAIN, len(name))) + name + port
    if ip.version == 4:
        return bytes((_ATYP_IPV4,)) + ip.packed + port
    return bytes((_ATYP_IPV6,)) + ip.packed + port


def _encode_userpass(username: str, password: str) -> bytes:
    """The RFC 1929 request; ValueError when either field is longer than 255 bytes."""
    user = username.encode("utf-8")
    pwd = password.encode("utf-8")
    if len(user) > 255:
        raise ValueError(f"SOCKS5 username is {len(user)} bytes; RFC 1929 allows 255")
    if len(pwd) > 255:
        raise ValueError(f"SOCKS5 password is {len(pwd)} bytes; RFC 1929 allows 255")
    return bytes((1, len(user))) + user + bytes((len(pwd),)) + pwd


class Socks5Handshake:
    """The client side of one SOCKS5 CONNECT or UDP ASSOCIATE negotiation (RFC 1928/1929)."""

    __slots__ = (
        "_auth_msg",
        "_buf",
        "_event",
        "_methods",
        "_out",
        "_request",
        "_state",
        "command",
        "dst",
        "method",
        "reply_code",
    )

    def __init__(
        self, dst: Address, *, auth: tuple[str, str] | None = None, command: int = CONNECT
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
        self._request = bytes((_VERSION, command, 0)) + _encode_address(dst)
        self._auth_msg = _encode_userpass(*auth) if auth is not None else b""
        self._methods = bytes((NO_AUTH, USERPASS)) if auth is not None else bytes((NO_AUTH,))
        self._out = bytearray((_VERSION, len(self._methods)))
        self._out += self._methods
        self._buf = bytearray()
        self._state = _METHOD
        self._event: HandshakeEvent = NEED_DATA

    def bytes_to_send(self) -> bytes:
        """Return (and forget) the bytes that must be written to the proxy now."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the proxy; ``b""`` means it closed the connection.

        Raises:
            FlowStateError: non-empty data after :class:`Established` — those bytes belong to
                the tunnel, not to the handshake. (After :class:`Failed` data is ignored.)
        """
        if self._state == _DONE:
            if data and isinstance(self._event, Established):
                raise FlowStateError("SOCKS5 handshake already established; data is tunnel data")
            return
        if not data:
            self._fail("protocol", "server closed during handshake")
            return
        self._buf += data
        self._advance()

    def next_event(self) -> HandshakeEvent:
        """What happened: :data:`NEED_DATA`, :class:`Established` or :class:`Failed`."""
        return self._event

    # -- internals -------------------------------------------------------------------------

    def _fail(self, reason: str, message: str, code: int | None = None) -> None:
        self._event = Failed(reason, message, code)
        self._state = _DONE
        self._buf.clear()

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
                    self._out += self._auth_msg
                    self._state = _AUTH
                else:
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
                self._out += self._request
                self._state = _REPLY
            elif state == _REPLY:
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
                if n < 4:
                    return
                atyp = buf[3]
                if atyp == _ATYP_IPV4:
                    end = 10
                elif atyp == _ATYP_IPV6:
                    end = 22
                elif atyp == _ATYP_DOMAIN:
                    if n < 5:
                        return
                    end = 7 + buf[4]
                else:
                    self._fail("protocol", f"reply has unknown address type {atyp:#04x}")
                    return
                if n < end:
                    return
                port: int = _PORT.unpack_from(buf, end - 2)[0]
                bound = _bound_address(atyp, bytes(buf[4 : end - 2]), port)
                self._event = Established(trailing=bytes(buf[end:]), bound=bound)
                self._state = _DONE
                buf.clear()
                return
            else:  # pragma: no cover - _DONE never reaches _advance
                return


def _bound_address(atyp: int, raw: bytes, port: int) -> Address | None:
    """BND.ADDR:BND.PORT from a reply; None for an empty or unusable domain name."""
    if atyp == _ATYP_IPV4:
        return Address(str(ipaddress.IPv4Address(raw)), port)
    if atyp == _ATYP_IPV6:
        return Address(str(ipaddress.IPv6Address(raw)), port)
    try:
        return Address.from_host(raw[1:].decode("utf-8"), port)
    except ValueError:  # empty, or not UTF-8 (UnicodeDecodeError is a ValueError)
        return None


def encode_udp_datagram(dst: Address, payload: bytes) -> bytes:
    """One UDP ASSOCIATE datagram for ``dst``: RSV=0, FRAG=0, address, then ``payload`` (§7)."""
    return b"\x00\x00\x00" + _encode_address(dst) + payload


def decode_udp_datagram(data: bytes | bytearray | memoryview) -> tuple[Address, memoryview]:
    """Split a relayed datagram into (source address, payload view) (RFC 1928 §7).

    Raises:
        MalformedPacket: ``socks5-udp-truncated`` (header cut short), ``socks5-udp-rsv`` (RSV
            not 0), ``socks5-udp-fragmented`` (FRAG not 0: fragmentation is not implemented, so
            the datagram MUST be dropped), ``socks5-udp-atyp`` (unknown address type) or
            ``socks5-udp-domain`` (empty or non-UTF-8 domain name). The caller drops it.
    """
    mv = memoryview(data)
    n = len(mv)
    if n < 4:
        raise MalformedPacket("socks5-udp-truncated")
    if mv[0] != 0 or mv[1] != 0:
        raise MalformedPacket("socks5-udp-rsv")
    if mv[2] != 0:
        raise MalformedPacket("socks5-udp-fragmented")
    atyp = mv[3]
    if atyp == _ATYP_IPV4:
        end = 10
        if n < end:
            raise MalformedPacket("socks5-udp-truncated")
        host = "%d.%d.%d.%d" % (mv[4], mv[5], mv[6], mv[7])  # noqa: UP031 - fastest here
    elif atyp == _ATYP_IPV6:
        end = 22
        if n < end:
            raise MalformedPacket("socks5-udp-truncated")
        host = str(ipaddress.IPv6Address(bytes(mv[4:20])))
    elif atyp == _ATYP_DOMAIN:
        if n < 5:
            raise MalformedPacket("socks5-udp-truncated")
        end = 7 + mv[4]
        if n < end:
            raise MalformedPacket("socks5-udp-truncated")
        port: int = _PORT.unpack_from(mv, end - 2)[0]
        try:
            addr = Address.from_host(bytes(mv[5 : end - 2]).decode("utf-8"), port)
        except ValueError:
            raise MalformedPacket("socks5-udp-domain") from None
        return addr, mv[end:]
    else:
        raise MalformedPacket("socks5-udp-atyp")
    return Address(host, _PORT.unpack_from(mv, end - 2)[0]), mv[end:]
