"""Issue 12 hardening of the token manager: the margin of adopted client credentials tokens, the
deadline of a refresh that holds the store lock, one refresh per refused token, and the URL a
token set was obtained for."""

from __future__ import annotations

import pytest
from tests.unit.flow.world import MCP, World

from bastion.config.catalog import ClientCredentialsSpec
from bastion.oauth.client_credentials import ClientCredentials
from bastion.oauth.tokens import TokenManager
from bastion.store.file import FileStore

pytestmark = pytest.mark.anyio

CREDENTIALS = ClientCredentials(
    server_url=MCP, spec=ClientCredentialsSpec(client_id="svc", client_secret_secret="demo.secret"), secret="s3cret"
)


async def cc_lookup(server: str) -> ClientCredentials | None:
    return CREDENTIALS if server == "demo" else None


async def test_a_short_lived_client_credentials_token_from_another_process_is_adopted(store: FileStore) -> None:
    """Point 20: a 60 s token with the default 60 s margin is good for 30 s (`margin_for`), so a
    second process adopts the token the first one stored instead of running the grant again."""
    world = World(grant_types=["client_credentials"], access_ttl=60)
    async with world.client() as http:
        first = TokenManager(store, http, refresh_margin=60, client_credentials=cc_lookup)
        second = TokenManager(store, http, refresh_margin=60, client_credentials=cc_lookup)
        token = await first.fresh_token("demo")
        assert token is not None
        assert await second.fresh_token("demo") == token
    assert [f["grant_type"] for f in world.token_forms] == ["client_credentials"]
