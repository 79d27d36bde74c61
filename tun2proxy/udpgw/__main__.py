"""``python -m tun2proxy.udpgw``: see :mod:`tun2proxy.udpgw.cli`."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
