"""Small YAML files under `$BASTION_HOME`, written atomically (temp file + fsync + rename), and
the ownership and mode checks for Bastion's private directories and files (`check_private`),
which the home (`config.paths.ensure_home`) and the file store (`store._fs`) share."""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import yaml

from bastion.errors import BastionError, ConfigError

logger = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def check_private(
    path: Path,
    st: os.stat_result,
    *,
    error: type[BastionError] = ConfigError,
    refuse_shared_write: bool = True,
    tighten_files: bool = False,
) -> None:
    """Check `path` (with its `st`) is private to this user, the way every file and directory
    Bastion keeps is: owned by the effective user; a directory 0700, a file writable only by its
    owner. A directory (or with `tighten_files`, a file) that is merely readable by others is
    tightened, with a warning. Writable by the group or others: with `refuse_shared_write`,
    refused with the chmod to run (someone else may have changed it already: its content is not
    to be trusted without a look), else tightened too (the store's own directories, whose files
    it checks record by record)."""
    kind = "directory" if stat.S_ISDIR(st.st_mode) else "file"
    if st.st_uid != os.geteuid():
        raise error(
            f"{path} belongs to another user (uid {st.st_uid})",
            hint="chown it to yourself, or point BASTION_HOME elsewhere",
        )
    mode = stat.S_IMODE(st.st_mode)
    wanted = DIR_MODE if kind == "directory" else FILE_MODE
    if mode & _OTHERS_WRITE and refuse_shared_write:
        raise error(
            f"{path} is writable by other users (mode {mode:o}), so its content cannot be trusted",
            hint=f"check it, then run `chmod {wanted:o} {path}`",
        )
    if kind == "directory" and mode != DIR_MODE or kind == "file" and tighten_files and mode & 0o077:
        logger.warning("%s had mode %04o; setting it to %04o", path, mode, wanted)
        os.chmod(path, wanted)


def read_yaml(path: Path) -> Any:
    if not path.exists():
        return None
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML: {getattr(exc, 'problem', exc)}") from None


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` so a crash leaves the old or the new content, never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_yaml(path: Path, doc: Any) -> None:
    atomic_write(path, yaml.safe_dump(doc, sort_keys=True).encode("utf-8"))
