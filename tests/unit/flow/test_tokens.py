"""The token manager: refresh with `resource` and rotation, single-flight, invalid_grant,
step-up, revocation (RFC 6749 §6, RFC 8707, RFC 7009)."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from tests.unit.flow.world import ISSUER, MCP, World

from bastion.oauth.tokens import TokenManager, revoke
from bastion.store.file import FileStore
from bastion.store.models import ClientRegistration, ProviderRecord, ProviderState, TokenSet

pytestmark = pytest.mark.anyio


async def seed(store: FileStore, world: World, *, expires_in: float, age: float = 3000.0) -> ProviderRecord:
    world.refresh_tokens.add("rt-initial")
    tokens = TokenSet(
        access_token="at-initial",
        refresh_token="rt-initial",
        expires_at=time.time() + expires_in,
        scopes=["mcp:read"],
        issuer=ISSUER,
        token_endpoint=f"{ISSUER}/token",
        revocation_endpoint=f"{ISSUER}/revoke",
        resource=MCP,
        client_id="client-1",
        obtained_at=time.time() - age,
    )
    client = ClientRegistration(client_id="client-1", issuer=ISSUER, redirect_uris=["http://127.0.0.1:5175/callback"])
    return await store.put(ProviderRecord(server="demo", resource_url=MCP, client=client, tokens=tokens))


async def test_fresh_token_needs_no_io(world: World, store: FileStore) -> None:
    await seed(store, world, expires_in=3600)
    async with world.client() as http:
        manager = TokenManager(store, http, refresh_margin=60)
        await manager.load("demo")
        assert manager.cached_token("demo") == "at-initial"
        assert not manager.needs_refresh("demo")
        assert await manager.fresh_token("demo") == "at-initial"
    assert world.token_forms == []


async def test_expiring_token_is_refreshed_with_resource_and_rotation_is_stored(world: World, store: FileStore) -> None:
    await seed(store, world, expires_in=10)
    async with world.client() as http:
        manager = TokenManager(store, http, refresh_margin=60)
        await manager.load("demo")
        assert manager.needs_refresh("demo")
        token = await manager.fresh_token("demo")
    assert token is not None and token != "at-initial"
    form = world.token_forms[0]
    assert form["grant_type"] == "refresh_token" and form["resource"] == MCP
    record = await store.get("demo")
    assert record is not None and record.tokens is not None
    assert record.tokens.access_token == token
    assert record.tokens.refresh_token not in (None, "rt-initial")


async def test_concurrent_callers_share_one_refresh(world: World, store: FileStore) -> None:
    await seed(store, world, expires_in=0)
    results: list[str | None] = []
    async with world.client() as http:
        manager = TokenManager(store, http, refresh_margin=60)
        await manager.load("demo")

        async def call() -> None:
            results.append(await manager.fresh_token("demo"))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(call)
    assert len([f for f in world.token_forms if f["grant_type"] == "refresh_token"]) == 1
    assert len(set(results)) == 1 and results[0] is not None


async def test_two_managers_sharing_a_store_refresh_once(world: World, store: FileStore) -> None:
    """Two processes' worth of managers: the second sees the first's rotated token in the store."""
    await seed(store, world, expires_in=0)
    async with world.client() as http:
        first, second = TokenManager(store, http), TokenManager(store, http)
        await first.load("demo")
        await second.load("demo")
        results: list[str | None] = []

        async def call(manager: TokenManager) -> None:
            results.append(await manager.fresh_token("demo"))

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(call, first if i % 2 else second)
    assert len([f for f in world.token_forms if f["grant_type"] == "refresh_token"]) == 1
    assert len(set(results)) == 1


async def test_refresh_after_401_refreshes_once_even_if_not_expired(world: World, store: FileStore) -> None:
    await seed(store, world, expires_in=3600)
    async with world.client() as http:
        manager = TokenManager(store, http)
        await manager.load("demo")
        new = await manager.refresh_after_401("demo", "at-initial")
        again = await manager.refresh_after_401("demo", "at-initial")
    assert new is not None and new == again
    assert len(world.token_forms) == 1


async def test_invalid_grant_moves_the_provider_to_needs_authorization(world: World, store: FileStore) -> None:
    await seed(store, world, expires_in=0)
    world.refresh_error = {"error": "invalid_grant", "error_description": "grant revoked"}
    async with world.client() as http:
        manager = TokenManager(store, http)
        await manager.load("demo")
        assert await manager.fresh_token("demo") is None
        assert manager.cached_token("demo") is None
    record = await store.get("demo")
    assert record is not None
    assert record.state() is ProviderState.NEEDS_AUTHORIZATION
    assert record.last_error is not None and "invalid_grant" in record.last_error
    assert record.tokens is None


async def test_step_up_asks_for_the_union_of_scopes(world: World, store: FileStore) -> None:
    await seed(store, world, expires_in=3600)
    async with world.client() as http:
        manager = TokenManager(store, http)
        await manager.load("demo")
        await manager.step_up("demo", ["mcp:write"])
    record = await store.get("demo")
    assert record is not None
    assert record.state() is ProviderState.NEEDS_AUTHORIZATION
    assert record.requested_scopes == ["mcp:read", "mcp:write"]


async def test_revoke_sends_refresh_then_access_token(world: World, store: FileStore) -> None:
    record = await seed(store, world, expires_in=3600)
    async with world.client() as http:
        problems = await revoke(http, record)
    assert problems == []
    assert [r["token_type_hint"] for r in world.revoked] == ["refresh_token", "access_token"]
    assert [r["token"] for r in world.revoked] == ["rt-initial", "at-initial"]


async def test_refresh_margin_is_at_most_half_the_lifetime(world: World, store: FileStore) -> None:
    """A 10-second token is not 'about to expire' the moment it is issued because the margin is 60s."""
    await seed(store, world, expires_in=10, age=0)
    async with world.client() as http:
        manager = TokenManager(store, http, refresh_margin=60)
        await manager.load("demo")
        tokens = manager.cached("demo")
        assert tokens is not None
        assert manager.margin_for(tokens) <= 5.5


class FlakyStore(FileStore):
    """A file store whose writes fail while `down` is set (as Redis does when it goes away)."""

    down = False

    async def compare_and_set(self, record: ProviderRecord, expected_revision: int) -> ProviderRecord | None:
        if self.down:
            from bastion.errors import StoreUnavailable

            raise StoreUnavailable("the store is unreachable")
        return await super().compare_and_set(record, expected_revision)


async def test_a_refresh_the_store_missed_is_kept_and_written_back(world: World, tmp_path: Path) -> None:
    """The authorization server rotated the refresh token; the store was down at that moment. The
    new tokens are served from memory and written back when the store returns — not lost, which
    would make the next refresh an invalid_grant."""
    store = FlakyStore(tmp_path / "flaky")
    try:
        await seed(store, world, expires_in=0)
        async with world.client() as http:
            manager = TokenManager(store, http)
            await manager.load("demo")
            store.down = True
            token = await manager.fresh_token("demo")
            assert token is not None and token != "at-initial"
            assert manager.cached_token("demo") == token
            store.down = False
            await manager.load("demo")  # e.g. on the store's resync event
            assert manager.cached_token("demo") == token
        record = await store.get("demo")
        assert record is not None and record.tokens is not None and record.tokens.access_token == token
        assert record.tokens.refresh_token in world.refresh_tokens  # the live one, not the spent one
    finally:
        await store.aclose()
