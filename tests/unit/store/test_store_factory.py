"""`open_store`: the backend the settings name."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bastion.config.settings import Settings, StoreSettings
from bastion.errors import ConfigError
from bastion.store.base import Store
from bastion.store.factory import open_store
from bastion.store.file import FileStore
from bastion.store.keyring_store import KeyringStore


def test_file_is_the_default_under_home_store(tmp_path: Path) -> None:
    store = open_store(Settings(), tmp_path)
    assert isinstance(store, FileStore) and isinstance(store, Store)
    assert store.root == tmp_path / "store"


def test_keyring_keeps_its_state_under_home_store(tmp_path: Path) -> None:
    store = open_store(Settings(store=StoreSettings(backend="keyring")), tmp_path)
    assert isinstance(store, KeyringStore) and isinstance(store, Store)
    assert store.state_dir == tmp_path / "store"


def test_redis_without_a_url_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a URL"):
        open_store(Settings(store=StoreSettings(backend="redis")), tmp_path)


def test_redis_without_its_module_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bastion.store.redis_store", None)  # import raises ImportError
    settings = Settings(store=StoreSettings(backend="redis", url="redis://:hunter2@127.0.0.1:6379/0"))
    with pytest.raises(ConfigError, match="redis store backend is not available") as info:
        open_store(settings, tmp_path)
    assert "hunter2" not in str(info.value)


def test_redis_prefix_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_STORE_KEY", "00" * 32)
    default = open_store(Settings(store=StoreSettings(backend="redis", url="redis://127.0.0.1:1/0")), tmp_path)
    assert getattr(default, "prefix", None) == "bastion:"  # lazy: nothing is sent to Redis
    settings = Settings(store=StoreSettings(backend="redis", url="redis://127.0.0.1:1/0", prefix="team-a:"))
    assert getattr(open_store(settings, tmp_path), "prefix", None) == "team-a:"
