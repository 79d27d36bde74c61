"""A minimal udpgw server (badvpn's protocol): UDP for clients that reach it over TCP.

Run it next to an SSH or SOCKS server with ``python -m tun2proxy.udpgw --listen HOST:PORT``.
It is written from the protocol description with its own parser (:mod:`.server`), on
purpose independent of the client's codec (:mod:`tun2proxy.proxy.udpgw`), so one
misunderstanding of the format cannot hide in code both ends share.
"""

from __future__ import annotations

from .server import ServerConfig, UdpgwServer

__all__ = ["ServerConfig", "UdpgwServer"]
