"""``python -m tun2proxy``: see :mod:`tun2proxy.cli`."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
