"""Wiring: a `Gateway` fed by the store and the configuration files, reacting to their changes.

Token events (flow 3): whenever a server's credentials change in the store — authorized or
revoked by the CLI or the web page in another process, refreshed by another gateway, marked
`needs-authorization` by a step-up — the watcher reloads that server's token set into the
in-memory cache and, when the usable token changed, reconnects the upstream (which re-lists its
capabilities and tells the downstream clients `notifications/*/list_changed`).

A refresh made by this process already updated the cache before the store event arrives, so it
needs no reconnect: every upstream request reads the Bearer from the cache.

Configuration events: edits of `catalog.yaml`, `registry.yaml` or `config.yaml` are applied
with `Gateway.apply` (servers enabled or disabled while the gateway runs).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import watchfiles

from bastion.config.catalog import CatalogEntry, load_catalog
from bastion.errors import BastionError, ConfigError, StoreError
from bastion.gateway.runtime import Gateway
from bastion.gateway.upstream import UpstreamState
from bastion.oauth.tokens import TokenManager
from bastion.service import Bastion, new_http_client

logger = logging.getLogger(__name__)

CONFIG_FILES = frozenset({"catalog.yaml", "registry.yaml", "config.yaml"})


def select_entries(app: Bastion, only: Sequence[str] | None) -> list[CatalogEntry]:
    """The enabled servers (all of them, or those named in `only`, which must be enabled)."""
    enabled = app.enabled()
    if only:
        missing = [n for n in only if n not in enabled]
        if missing:
            raise ConfigError(f"{missing[0]} is not enabled", hint=f"run `bastion server enable {missing[0]}`")
        names = list(only)
    else:
        names = enabled
    entries = []
    for name in names:
        if name not in app.catalog:
            logger.warning("%s is enabled but no longer in the catalog; skipping it", name)
            continue
        entries.append(app.catalog.get(name))
    return entries


class Runtime:
    """A `Gateway` with its token manager and watchers. `async with Runtime(app) as rt: rt.gateway`."""

    def __init__(
        self, app: Bastion, *, only: Sequence[str] | None = None, watch: bool = True, wait: bool = True
    ) -> None:
        self.app = app
        self.wait = wait
        """Enter only once every upstream has settled (in-process use: `tools ls/call`, the demo).
        `gateway run` serves at once instead; a client's first listing waits (startup.py)."""
        self.only = list(only) if only else None
        self.watch = watch
        self.http = new_http_client(anchors=app.remote_urls)
        self.tokens = TokenManager(
            app.store,
            self.http,
            refresh_margin=app.settings.gateway.refresh_margin,
            client_credentials=app.client_credentials,
        )
        self.gateway = Gateway(
            select_entries(app, self.only),
            app.settings.gateway,
            token_provider=self.tokens,
            secret_lookup=app.secret_for,
            store_status=self.store_status,
        )
        self._stack = AsyncExitStack()
        self._tg: anyio.abc.TaskGroup | None = None

    def store_status(self) -> dict[str, Any]:
        """For /health: the backend, where it is (redis: HOST:PORT, never credentials), and
        whether its last operation failed (the gateway then serves the tokens it holds)."""
        store = self.app.store
        status: dict[str, Any] = {"backend": self.app.settings.store.backend}
        where = getattr(store, "where", None)
        if isinstance(where, str):
            status["where"] = where
        status["degraded"] = bool(getattr(store, "degraded", False))
        return status

    async def __aenter__(self) -> Runtime:
        try:
            await self.tokens.load_all()
        except StoreError as exc:
            logger.warning("store unavailable at start (%s); servers needing tokens wait for it", exc)
        await self._stack.enter_async_context(self.http)
        self._tg = await self._stack.enter_async_context(anyio.create_task_group())
        if self.watch:
            self._tg.start_soon(self._watch_store)
            self._tg.start_soon(self._watch_config)
        await self.gateway.start(wait=self.wait)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        # Task groups close in the reverse order of entry: the gateway's (entered last) first.
        try:
            await self.gateway.aclose()
        finally:
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
            await self._stack.aclose()

    # -- token events ------------------------------------------------------------------------------

    async def on_credentials_changed(self, server: str | None) -> None:
        servers = [server] if server is not None else [h.name for h in self.gateway.status()]
        for name in servers:
            before = self.tokens.cached(name)
            try:
                await self.tokens.load(name)
            except StoreError as exc:
                logger.warning("cannot reload credentials of %s: %s", name, exc)
                continue
            after = self.tokens.cached(name)
            state = next((s.state for s in self.gateway.status() if s.name == name), None)
            if state is None:
                continue
            if before is None and after is None:
                continue
            if before is None or after is None:
                pass  # authorized, or revoked / needs authorization now
            elif before.access_token == after.access_token:
                # Unchanged (e.g. a resync): reconnect only an upstream that gave up meanwhile
                # (its token could not be refreshed while the store was unreachable).
                if state is not UpstreamState.NEEDS_AUTHORIZATION:
                    continue
            elif (
                state is UpstreamState.READY
                and set(before.scopes) == set(after.scopes)
                and before.obtained_for == after.obtained_for  # for another URL: checked on connect
            ):
                # Refreshed by another gateway: requests read the Bearer from the cache, so the
                # session goes on (a reconnect would fail the calls in flight on it).
                logger.debug("credentials of %s refreshed elsewhere; using them", name)
                continue
            logger.info("credentials of %s changed; reconnecting", name)
            await self.gateway.reconnect(name)

    async def _watch_store(self) -> None:
        while True:
            try:
                async for event in self.app.store.watch():
                    await self.on_credentials_changed(event.server)
                return
            except StoreError as exc:
                logger.warning("store watch interrupted (%s); retrying", exc)
                await anyio.sleep(1.0)

    # -- configuration events -------------------------------------------------------------------------

    async def reload_config(self) -> None:
        try:
            self.app.catalog = load_catalog(self.app.home)
            enabled = set(self.app.enabled())
            names = [n for n in self.only if n in enabled] if self.only else sorted(enabled)
            entries = [self.app.catalog.get(n) for n in names if n in self.app.catalog]
        except BastionError as exc:
            logger.error("configuration not applied: %s", exc)
            return
        await self.gateway.apply(entries)

    async def _watch_config(self) -> None:
        home: Path = self.app.home

        def only_config(_: watchfiles.Change, path: str) -> bool:
            return Path(path).name in CONFIG_FILES

        # A short rust_timeout: cancelling awatch waits for its worker thread's current poll, and the
        # default (5 s) would hold up every gateway shutdown by that much.
        async for _changes in watchfiles.awatch(
            home, watch_filter=only_config, recursive=False, debounce=200, rust_timeout=300
        ):
            logger.info("configuration changed; applying")
            await self.reload_config()
