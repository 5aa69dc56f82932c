"""Keyring backends for tests (there is no OS keyring daemon here).

`MemoryKeyring` lives in one process; `JsonFileKeyring` keeps its entries in a JSON file so
that a child process sees the same keyring. Neither is registered with a usable priority, so
`keyring` never picks them by itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError

from bastion.config.files import atomic_write


class MemoryKeyring(KeyringBackend):
    priority = -1

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.entries: dict[str, str] = {}
        self.fail_with: Exception | None = None

    def _load(self) -> dict[str, str]:
        return self.entries

    def _save(self, entries: dict[str, str]) -> None:
        self.entries = entries

    def get_password(self, service: str, username: str) -> str | None:
        if self.fail_with is not None:
            raise self.fail_with
        return self._load().get(f"{service}\0{username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        entries = self._load()
        entries[f"{service}\0{username}"] = password
        self._save(entries)

    def delete_password(self, service: str, username: str) -> None:
        entries = self._load()
        if entries.pop(f"{service}\0{username}", None) is None:
            raise PasswordDeleteError("not found")
        self._save(entries)


class JsonFileKeyring(MemoryKeyring):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def _load(self) -> dict[str, str]:
        try:
            entries: dict[str, str] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return entries

    def _save(self, entries: dict[str, str]) -> None:
        atomic_write(self.path, json.dumps(entries).encode())
