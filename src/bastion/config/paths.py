"""Where Bastion keeps its files: `$BASTION_HOME`, else the platform's user config dir.

The home holds what decides where tokens go (`catalog.yaml`: which URL a server's token is sent
to; `config.yaml`; `registry.yaml`) and the gateway token, so it gets the same check as the store's
own directory (`config.files.check_private`): owned by this user, 0700; its YAML files owned by
this user and writable by nobody else. A home or file that others can write is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from bastion.config.files import DIR_MODE, check_private
from bastion.errors import ConfigError

HOME_FILES = ("catalog.yaml", "registry.yaml", "config.yaml")
"""The YAML files of the home that are checked each time it is opened."""


def bastion_home() -> Path:
    """`$BASTION_HOME` or the platform's user config dir for "bastion" (not created here)."""
    env = os.environ.get("BASTION_HOME")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_config_dir("bastion", appauthor=False))


def ensure_home(home: Path | None = None) -> Path:
    """Create the home directory (0700) if missing, check it and its YAML files (see the module
    docstring), and return it."""
    home = home or bastion_home()
    try:
        home.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        st = home.stat()
    except OSError as exc:
        raise ConfigError(f"cannot create BASTION_HOME {home}: {exc.strerror}", hint="check its parent") from None
    if not os.path.isdir(home):
        raise ConfigError(f"BASTION_HOME {home} is not a directory", hint="point BASTION_HOME at a directory")
    check_private(home, st)
    for name in HOME_FILES:
        path = home / name
        try:
            file_st = path.stat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}", hint="check its permissions") from None
        check_private(path, file_st)
    return home
