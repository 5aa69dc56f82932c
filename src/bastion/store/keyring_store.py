"""`KeyringStore`: records and secrets in the OS keyring (macOS Keychain, Windows Credential
Locker, Secret Service), through the `keyring` package.

Keyring entries, all under one service name (default "bastion"):

    provider:<server>    a ProviderRecord as JSON
    secret:<name>        a secret's value
    index:providers      JSON list of server names (keyrings cannot enumerate)
    index:secrets        JSON list of secret names

A keyring has no compare-and-set, no lock and no notifications, so those live in a local
state directory: `locks/` (the same flock leases and write locks as the file store; one
write lock, `.keyring.wlock`, serialises every mutation because the indexes are shared) and
`changes/<n>.json`, a marker per server holding only its revision, which `watch()` watches.
Index entries are added before and removed after the entry itself, so a crash leaves at
worst a dangling name, which readers skip.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio.to_thread
import keyring
import keyring.errors
from keyring.backend import KeyringBackend
from pydantic import TypeAdapter, ValidationError

from bastion.errors import StoreError, StoreUnavailable
from bastion.store import _fs
from bastion.store.models import ProviderRecord

_T = TypeVar("_T")
_PROVIDERS_INDEX = "index:providers"
_SECRETS_INDEX = "index:secrets"
_WRITE_LOCK = ".keyring"
_names = TypeAdapter(list[str])


class KeyringStore(_fs.LocalRecordStore):
    """The `Store` protocol on the OS keyring, with locks and change events from `state_dir`."""

    def __init__(self, service: str = "bastion", *, state_dir: Path, backend: KeyringBackend | None = None) -> None:
        self.service = service
        self.state_dir = state_dir
        self._backend = backend
        _fs.ensure_private_dir(state_dir)
        self._locks = _fs.FileLocks(state_dir / "locks")
        self._changes = state_dir / "changes"
        _fs.ensure_private_dir(self._changes)
        self._watcher = _fs.DirWatcher(self._changes)

    def __repr__(self) -> str:
        return f"KeyringStore(service={self.service!r}, state_dir={str(self.state_dir)!r})"

    # -- records

    def _read(self, server: str) -> ProviderRecord | None:
        data = self._get(f"provider:{server}")
        if data is None:
            return None
        try:
            record = ProviderRecord.model_validate_json(data)
        except ValidationError:
            # The message would quote the input; say only which entry it is.
            raise StoreError(
                f"the keyring entry provider:{server} of service {self.service!r} is corrupt",
                hint=f"run `bastion oauth authorize {server}` to write it again",
            ) from None
        if record.server != server:
            raise StoreError(
                f"the keyring entry provider:{server} holds the record of {record.server!r}",
                hint=f"run `bastion oauth authorize {server}` to write it again",
            )
        return record

    def _read_all(self) -> builtins.list[ProviderRecord]:
        records = (self._read(server) for server in sorted(self._index(_PROVIDERS_INDEX)))
        return [record for record in records if record is not None]

    def _write(self, record: ProviderRecord, expected_revision: int | None) -> ProviderRecord | None:
        server = record.server
        marker = self._marker(server)
        with self._locks.write_lock(_WRITE_LOCK):
            current = self._read(server)
            if expected_revision is not None and (current.revision if current else 0) != expected_revision:
                return None
            base = current.revision if current else self._locks.last_deleted_revision(server)
            written = record.model_copy(update={"revision": base + 1, "updated_at": time.time()})
            self._add_to_index(_PROVIDERS_INDEX, server)
            self._set(f"provider:{server}", written.model_dump_json())
            _fs.write_file(marker, json.dumps({"server": server, "revision": written.revision}).encode("utf-8"))
            return written

    def _delete(self, server: str) -> bool:
        marker = self._marker(server)
        with self._locks.write_lock(_WRITE_LOCK):
            current = self._read(server)
            if current is None:
                return False
            self._locks.remember_deleted_revision(server, current.revision)
            self._remove(f"provider:{server}")
            self._remove_from_index(_PROVIDERS_INDEX, server)
            _fs.remove_file(marker)
            return True

    def _marker(self, server: str) -> Path:
        return self._changes / f"{_fs.encode_name(server)}.json"

    # -- lock and events

    # -- secrets

    async def get_secret(self, name: str) -> str | None:
        return await anyio.to_thread.run_sync(self._get, f"secret:{name}")

    async def set_secret(self, name: str, value: str) -> None:
        await anyio.to_thread.run_sync(self._set_secret, name, value)

    async def delete_secret(self, name: str) -> bool:
        return await anyio.to_thread.run_sync(self._delete_secret, name)

    async def list_secrets(self) -> builtins.list[str]:
        return await anyio.to_thread.run_sync(self._list_secrets)

    def _set_secret(self, name: str, value: str) -> None:
        _fs.encode_name(name)  # the same names as the file store accepts
        with self._locks.write_lock(_WRITE_LOCK):
            self._add_to_index(_SECRETS_INDEX, name)
            self._set(f"secret:{name}", value)

    def _delete_secret(self, name: str) -> bool:
        with self._locks.write_lock(_WRITE_LOCK):
            existed = self._remove(f"secret:{name}")
            self._remove_from_index(_SECRETS_INDEX, name)
            return existed

    def _list_secrets(self) -> builtins.list[str]:
        return sorted(name for name in self._index(_SECRETS_INDEX) if self._get(f"secret:{name}") is not None)

    async def aclose(self) -> None:
        self._watcher.close()

    # -- the keyring itself

    def _index(self, entry: str) -> builtins.list[str]:
        data = self._get(entry)
        if data is None:
            return []
        try:
            return _names.validate_json(data)
        except ValidationError:
            raise StoreError(
                f"the keyring entry {entry} of service {self.service!r} is corrupt",
                hint=f"delete that entry; then run `bastion oauth authorize NAME` for each server ({self.state_dir})",
            ) from None

    def _add_to_index(self, entry: str, name: str) -> None:
        names = self._index(entry)
        if name not in names:
            self._set(entry, json.dumps(sorted([*names, name])))

    def _remove_from_index(self, entry: str, name: str) -> None:
        names = self._index(entry)
        if name in names:
            self._set(entry, json.dumps([n for n in names if n != name]))

    def _keyring(self) -> KeyringBackend:
        return self._backend if self._backend is not None else keyring.get_keyring()

    def _get(self, username: str) -> str | None:
        value: str | None = self._call(lambda kr: kr.get_password(self.service, username), username)
        return value

    def _set(self, username: str, value: str) -> None:
        self._call(lambda kr: kr.set_password(self.service, username, value), username)

    def _remove(self, username: str) -> bool:
        def remove(kr: KeyringBackend) -> bool:
            try:
                kr.delete_password(self.service, username)
            except keyring.errors.PasswordDeleteError:
                return False
            return True

        return self._call(remove, username)

    def _call(self, op: Callable[[KeyringBackend], _T], username: str) -> _T:
        try:
            return op(self._keyring())
        except keyring.errors.KeyringError as exc:
            raise StoreUnavailable(
                f"the OS keyring failed on {username} of service {self.service!r}: {type(exc).__name__}",
                hint="unlock or install a keyring, or set `store: {backend: file}` in config.yaml",
            ) from None
