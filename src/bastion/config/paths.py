"""Where Bastion keeps its files: `$BASTION_HOME`, else the platform's user config dir."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def bastion_home() -> Path:
    """`$BASTION_HOME` or the platform's user config dir for "bastion" (not created here)."""
    env = os.environ.get("BASTION_HOME")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_config_dir("bastion", appauthor=False))


def ensure_home(home: Path | None = None) -> Path:
    """Create the home directory (0700) if missing and return it."""
    home = home or bastion_home()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return home
