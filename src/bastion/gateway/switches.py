"""The hot path's off switches: each optimization can be turned off by an environment variable,
so that `python -m bench.ab` (and the bench's own variants) can measure it against its absence.
All are on unless set to 0, false, no or off."""

from __future__ import annotations

import os

_OFF = frozenset({"0", "false", "no", "off"})


def switched_on(variable: str) -> bool:
    """False only when `variable` is set to 0 / false / no / off (any case, spaces ignored)."""
    return os.environ.get(variable, "1").strip().lower() not in _OFF
