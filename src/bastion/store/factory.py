"""`open_store`: the backend `config.yaml` (or `BASTION_STORE`) asks for."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from bastion.config.settings import Settings
from bastion.errors import ConfigError
from bastion.store.base import Store
from bastion.store.file import FileStore


def open_store(settings: Settings, home: Path) -> Store:
    """file: `home/store`; keyring: the OS keyring, with locks and change markers in
    `home/store`; redis: `settings.store.url` under `settings.store.prefix` (default `bastion:`),
    encrypted with `BASTION_STORE_KEY`."""
    backend = settings.store.backend
    if backend == "file":
        return FileStore(home / "store")
    if backend == "keyring":
        # Lazy: importing `keyring` costs ~60 ms of every CLI start otherwise.
        from bastion.store.keyring_store import KeyringStore

        return KeyringStore(state_dir=home / "store")
    if not settings.store.url:
        raise ConfigError(
            "the redis store needs a URL",
            hint="set `store: {backend: redis, url: redis://HOST:6379/0}` in config.yaml, or BASTION_STORE=redis://...",
        )
    try:
        # Imported lazily (only redis users pay for the redis client), by name so that the
        # type checker does not need the module, which is written separately.
        redis_store = importlib.import_module("bastion.store.redis_store")
    except ImportError as exc:
        raise ConfigError(
            f"the redis store backend is not available ({exc.msg})",
            hint="use `store: {backend: file}` in config.yaml, or install Bastion with redis support",
        ) from None
    options = {"prefix": settings.store.prefix} if settings.store.prefix else {}
    store: Store = redis_store.RedisStore.from_url(
        settings.store.url, key=os.environ.get("BASTION_STORE_KEY"), **options
    )
    return store
