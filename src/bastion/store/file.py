"""`FileStore`: the embedded default store, under `$BASTION_HOME/store`.

    store/                 0700
      providers/<n>.json   one ProviderRecord per server, 0600, replaced atomically
      secrets/<n>.json     one secret per file, {"name": ..., "value": ...}, 0600
      locks/               lock files, fencing tokens, revision high-water marks (see `_fs`)

`<n>` is `encode_name(server)`: any server name maps to a safe, reversible file name.
Every write is temp file + fsync + rename + directory fsync, so a crash leaves the old or
the new file. Writes to one server are serialised across processes by an flock on its
`locks/<n>.wlock`; reads take no lock. `watch()` is `_fs.DirWatcher` on `providers/`.
"""

from __future__ import annotations

import builtins
import json
import time
from pathlib import Path

import anyio.to_thread
from pydantic import BaseModel, ConfigDict, ValidationError

from bastion.errors import StoreError
from bastion.store import _fs
from bastion.store.models import ProviderRecord


class _SecretFile(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    name: str
    value: str

    def __repr__(self) -> str:
        return f"_SecretFile(name={self.name!r}, value='***')"


class FileStore(_fs.LocalRecordStore):
    """The `Store` protocol on local files. Safe across processes on one machine."""

    def __init__(self, root: Path) -> None:
        self.root = root
        _fs.ensure_private_dir(root)
        self._providers = root / "providers"
        self._secrets = root / "secrets"
        _fs.ensure_private_dir(self._providers)
        _fs.ensure_private_dir(self._secrets)
        self._locks = _fs.FileLocks(root / "locks")
        self._watcher = _fs.DirWatcher(self._providers)

    def __repr__(self) -> str:
        return f"FileStore({str(self.root)!r})"

    # -- records

    def _path(self, server: str) -> Path:
        return self._providers / f"{_fs.encode_name(server)}.json"

    def _read(self, server: str) -> ProviderRecord | None:
        path = self._path(server)
        data = _fs.read_file(path)
        return None if data is None else _parse_record(path, data, server)

    def _read_all(self) -> builtins.list[ProviderRecord]:
        records = []
        for server, path in sorted(_fs.names_in(self._providers, ".json").items()):
            data = _fs.read_file(path)
            if data is not None:  # None: deleted since the directory was listed
                records.append(_parse_record(path, data, server))
        return records

    def _write(self, record: ProviderRecord, expected_revision: int | None) -> ProviderRecord | None:
        server = record.server
        path = self._path(server)
        with self._locks.write_lock(server):
            current = self._read(server)
            if expected_revision is not None and (current.revision if current else 0) != expected_revision:
                return None
            base = current.revision if current else self._locks.last_deleted_revision(server)
            written = record.model_copy(update={"revision": base + 1, "updated_at": time.time()})
            _fs.write_file(path, written.model_dump_json().encode("utf-8"))
            return written

    def _delete(self, server: str) -> bool:
        path = self._path(server)
        with self._locks.write_lock(server):
            current = self._read(server)
            if current is None:
                return False
            self._locks.remember_deleted_revision(server, current.revision)
            return _fs.remove_file(path)

    # -- lock and events

    # -- secrets

    async def get_secret(self, name: str) -> str | None:
        return await anyio.to_thread.run_sync(self._read_secret, name)

    async def set_secret(self, name: str, value: str) -> None:
        data = json.dumps({"name": name, "value": value}).encode("utf-8")
        await anyio.to_thread.run_sync(_fs.write_file, self._secret_path(name), data)

    async def delete_secret(self, name: str) -> bool:
        return await anyio.to_thread.run_sync(_fs.remove_file, self._secret_path(name))

    async def list_secrets(self) -> builtins.list[str]:
        names = await anyio.to_thread.run_sync(_fs.names_in, self._secrets, ".json")
        return sorted(names)

    def _secret_path(self, name: str) -> Path:
        return self._secrets / f"{_fs.encode_name(name)}.json"

    def _read_secret(self, name: str) -> str | None:
        path = self._secret_path(name)
        data = _fs.read_file(path)
        if data is None:
            return None
        try:
            secret = _SecretFile.model_validate_json(data)
        except ValidationError as exc:
            raise _corrupt(path, exc, f"set it again with `bastion secret set {name}`") from None
        if secret.name != name:
            raise StoreError(f"{path} holds the secret {secret.name!r}, not {name!r}", hint="remove the file")
        return secret.value

    async def aclose(self) -> None:
        self._watcher.close()


def _parse_record(path: Path, data: bytes, server: str) -> ProviderRecord:
    try:
        record = ProviderRecord.model_validate_json(data)
    except ValidationError as exc:
        raise _corrupt(path, exc, f"move it away and run `bastion oauth authorize {server}`") from None
    if record.server != server:
        raise StoreError(
            f"{path} holds the record of {record.server!r}, not {server!r}",
            hint=f"move it away and run `bastion oauth authorize {server}`",
        )
    return record


def _corrupt(path: Path, exc: ValidationError, what_to_do: str) -> StoreError:
    # Only the location and pydantic's message: `str(exc)` would quote the input (secrets).
    first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    reason = f"{where}: {first['msg']}" if where else first["msg"]
    return StoreError(f"{path} is corrupt ({reason})", hint=what_to_do)
