"""SOCKS4 and SOCKS4a CONNECT client handshake, sans-I/O.

Pure: no I/O. SOCKS4 has no RFC; this follows the de-facto specifications by Ying-Da Lee,
"SOCKS: A protocol for TCP proxy across firewalls" (SOCKS4) and "SOCKS 4A: A Simple Extension
to SOCKS 4 Protocol" (SOCKS4a), as published with the NEC/OpenSSH SOCKS sources. (SOCKS5, the
successor, is RFC 1928.) The exchange::

    client: VN=4 CD=1 DSTPORT DSTIP USERID NUL              (SOCKS4, IPv4 destination)
    client: VN=4 CD=1 DSTPORT 0.0.0.1 USERID NUL HOST NUL   (SOCKS4a, destination by name)
    server: VN=0 CD DSTPORT DSTIP                           [tunnel bytes follow]

CD 90 grants the request; 91 means rejected or failed (reported as ``refused``); 92 and 93
mean the identd check of the user id failed (``auth``); any other CD is a ``protocol`` error.

Leniency: the reply's VN must be 0 per the specification, but some servers echo 4, so 4 is
accepted too; any other VN is a ``protocol`` error. A rejection fails as soon as its CD byte
arrives. The reply's DSTPORT/DSTIP are "ignored" for CONNECT by the specification; they are
still reported as ``Established.bound`` for logging (often ``0.0.0.0:0``).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

from .address import Address, domain_bytes
from .base import HandshakeBase

__all__ = ["Socks4Handshake"]

_VERSION: Final = 4
_CONNECT: Final = 1
_REPLY_LEN: Final = 8
_GRANTED: Final = 90
_REQUEST_HEAD = struct.Struct("!BBH4s")
_REPLY = struct.Struct("!BBH4s")
#: The SOCKS4a marker address 0.0.0.x (x != 0): "the host name follows the user id".
_SOCKS4A_IP: Final = b"\x00\x00\x00\x01"
_MAX_FIELD: Final = 255

_FAILURES: Final[dict[int, tuple[str, str]]] = {
    91: ("refused", "request rejected or failed"),
    92: ("auth", "request rejected: the server cannot reach identd on the client"),
    93: ("auth", "request rejected: identd reports a different user id"),
}


class Socks4Handshake(HandshakeBase):
    """The client side of one SOCKS4 or SOCKS4a CONNECT negotiation."""

    __slots__ = ("dst", "reply_code", "socks4a")

    _name = "SOCKS4 handshake"

    def __init__(self, dst: Address, *, user_id: str = "", allow_domain: bool = True) -> None:
        uid = user_id.encode("utf-8")
        if b"\x00" in uid:
            raise ValueError("SOCKS4 user id must not contain NUL")
        if len(uid) > _MAX_FIELD:
            raise ValueError(f"SOCKS4 user id is {len(uid)} bytes; at most {_MAX_FIELD} allowed")
        ip = dst.ip
        if ip is not None:
            if ip.version != 4:
                raise ValueError(f"SOCKS4 cannot carry the IPv6 destination {dst}")
            if ip.packed[:3] == b"\x00\x00\x00" and ip.packed[3] != 0:
                raise ValueError(f"{dst}: 0.0.0.1-0.0.0.255 would be read as a SOCKS4a marker")
            req = _REQUEST_HEAD.pack(_VERSION, _CONNECT, dst.port, ip.packed) + uid + b"\x00"
            socks4a = False
        else:
            if not allow_domain:
                raise ValueError(f"SOCKS4 needs an IPv4 destination, got the name {dst.host!r}")
            name = domain_bytes(dst.host)
            if b"\x00" in name or not 1 <= len(name) <= _MAX_FIELD:
                raise ValueError(f"unusable SOCKS4a host name {dst.host!r}")
            req = (
                _REQUEST_HEAD.pack(_VERSION, _CONNECT, dst.port, _SOCKS4A_IP)
                + uid + b"\x00" + name + b"\x00"
            )
            socks4a = True
        #: The destination of the CONNECT.
        self.dst = dst
        #: True when the request uses the SOCKS4a form (destination by name).
        self.socks4a = socks4a
        #: The reply's CD code, once it has arrived (for logging).
        self.reply_code: int | None = None
        super().__init__(req)

    def _advance(self) -> None:
        buf = self._buf
        n = len(buf)
        vn = buf[0]
        if vn != 0 and vn != _VERSION:
            self._fail("protocol", f"not a SOCKS4 server: reply version byte {vn:#04x}")
            return
        if n < 2:
            return
        cd = buf[1]
        self.reply_code = cd
        if cd != _GRANTED:
            reason, meaning = _FAILURES.get(cd, ("protocol", "unknown reply code"))
            self._fail(reason, f"reply {cd} ({meaning}) to CONNECT {self.dst}", cd)
            return
        if n < _REPLY_LEN:
            return
        _, _, port, raw = _REPLY.unpack_from(buf)
        self._establish(_REPLY_LEN, Address(str(ipaddress.IPv4Address(raw)), port))
