"""Start-up objects are frozen out of the cyclic GC before serving (issue 14)."""

from __future__ import annotations

import gc

from tun2proxy.app.serve import _freeze_startup_objects


def test_freeze_moves_startup_objects_to_the_permanent_generation() -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        _freeze_startup_objects()
        assert gc.get_freeze_count() > 1000  # the modules and everything they hold
        assert gc.isenabled()  # frozen, not disabled: new garbage is still collected
    finally:
        gc.unfreeze()
