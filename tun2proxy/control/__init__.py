"""Seeing and steering a running tunnel: the control API server (:mod:`.server`), its
client (:mod:`.client`), flow logs and periodic stats (:mod:`.reporting`), the text
rendering (:mod:`.render`) and the ``top``/``flows``/``close`` commands (:mod:`.cli`).

Nothing here is imported unless ``--control``, ``--stats-interval`` or a subcommand asks
for it (flow log lines are written by :mod:`.reporting`, imported by the serve loop).
"""

from __future__ import annotations

__all__: list[str] = []
