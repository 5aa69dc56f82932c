"""The `Store` protocol: persistence of OAuth providers (client registration + tokens),
user secrets, a cross-process lock, and change events.

Backends: `FileStore` (embedded default, under `$BASTION_HOME/store`), `KeyringStore`
(OS keyring), `RedisStore` (several gateways sharing credentials).

Refresh tokens rotate, so a refresh is: take `lock(server)`, re-read the record, and if
its refresh token is still the one you meant to spend, spend it and `compare_and_set` on the
revision you read. Two refreshers therefore never both spend the same refresh token.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from bastion.store.models import ProviderRecord, StoreEvent


@dataclass(frozen=True)
class Lease:
    """Proof of holding `Store.lock(server)`. `fencing_token` increases with every grant, so a
    write made under a lease that has since expired can be refused by the backend."""

    server: str
    fencing_token: int


@runtime_checkable
class Store(Protocol):
    """Where providers and secrets live. All methods are safe to call from several processes."""

    async def get(self, server: str) -> ProviderRecord | None:
        """The record for `server`, or None."""
        ...

    async def list(self) -> list[ProviderRecord]:
        """Every record, sorted by server name."""
        ...

    async def put(self, record: ProviderRecord) -> ProviderRecord:
        """Write `record` unconditionally; returns it with its new revision."""
        ...

    async def compare_and_set(self, record: ProviderRecord, expected_revision: int) -> ProviderRecord | None:
        """Write `record` only if the stored revision is still `expected_revision` (0 = absent).
        Returns the written record, or None when someone else wrote first."""
        ...

    async def delete(self, server: str) -> bool:
        """Remove the record; True if there was one."""
        ...

    def lock(self, server: str, *, timeout: float = 30.0) -> AbstractAsyncContextManager[Lease]:
        """An exclusive, cross-process lock for `server` (held while refreshing).
        Raises `StoreLockTimeout` after `timeout` seconds."""
        ...

    def watch(self) -> AsyncIterator[StoreEvent]:
        """Changes made by any process (this one included), as they happen."""
        ...

    async def get_secret(self, name: str) -> str | None: ...

    async def set_secret(self, name: str, value: str) -> None: ...

    async def delete_secret(self, name: str) -> bool: ...

    async def list_secrets(self) -> builtins.list[str]:
        """Names only, never values."""
        ...

    async def aclose(self) -> None: ...
