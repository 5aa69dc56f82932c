"""The token manager while the store is unreachable (Redis down): a token that is due for
renewal but still valid keeps being served; nothing is dropped."""

from __future__ import annotations

import time

import pytest
from tests.unit.flow.world import MCP, World

from bastion.config.catalog import ClientCredentialsSpec
from bastion.errors import StoreUnavailable
from bastion.oauth.client_credentials import ClientCredentials
from bastion.oauth.tokens import TokenManager
from bastion.store.file import FileStore

pytestmark = pytest.mark.anyio

CREDENTIALS = ClientCredentials(
    server_url=MCP, spec=ClientCredentialsSpec(client_id="svc", client_secret_secret="demo.secret"), secret="s3cret"
)


async def test_client_credentials_token_is_kept_when_the_store_is_away(store: FileStore) -> None:
    world = World(grant_types=["client_credentials"])
    world.code_challenge_methods = []
    store_down = False

    async def lookup(server: str) -> ClientCredentials | None:
        if store_down:  # the secret lives in the store
            raise StoreUnavailable("Redis at 127.0.0.1:6379 is unreachable")
        return CREDENTIALS

    now = [time.time()]
    async with world.client() as http:
        manager = TokenManager(store, http, refresh_margin=60, clock=lambda: now[0], client_credentials=lookup)
        token = await manager.fresh_token("demo")
        assert token is not None
        now[0] += world.access_ttl - 30  # due for renewal (margin 60 s), not expired
        assert manager.needs_refresh("demo")
        store_down = True
        assert await manager.fresh_token("demo") == token
        assert manager.cached_token("demo") == token
        store_down = False
        renewed = await manager.fresh_token("demo")
    assert renewed is not None and renewed != token
