"""The token manager with client credentials (RFC 6749 §4.4): tokens come from the grant, never
from a refresh token or a person; renewal needs no discovery; step-up scopes are added."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tests.unit.flow.world import ISSUER, MCP, World

from bastion.config.catalog import ClientCredentialsSpec
from bastion.errors import ConfigError
from bastion.oauth.client_credentials import ClientCredentials
from bastion.oauth.tokens import TokenManager
from bastion.service import Bastion
from bastion.store.file import FileStore

pytestmark = pytest.mark.anyio

SECRET = "cc-secret-value"
CREDENTIALS = ClientCredentials(
    server_url=MCP, spec=ClientCredentialsSpec(client_id="svc", client_secret_secret="demo.secret"), secret=SECRET
)


@pytest.fixture
def world() -> World:
    return World(grant_types=["client_credentials"])


async def lookup(server: str) -> ClientCredentials | None:
    return CREDENTIALS if server == "demo" else None


async def test_first_token_comes_from_discovery_and_the_grant(world: World, store: FileStore) -> None:
    world.code_challenge_methods = []  # no PKCE for a grant without an authorization request
    async with world.client() as http:
        manager = TokenManager(store, http, client_credentials=lookup)
        token = await manager.fresh_token("demo")
    assert token is not None and token == world.issued[-1]
    [form] = world.token_forms
    assert form == {"grant_type": "client_credentials", "scope": "mcp:read", "resource": MCP}
    assert world.token_headers[0]["authorization"].startswith("Basic ")
    record = await store.get("demo")
    assert record is not None and record.tokens is not None
    assert record.tokens.refresh_token is None and record.tokens.issuer == ISSUER
    assert SECRET not in record.model_dump_json()


async def test_renewal_runs_the_grant_again_without_discovery(world: World, store: FileStore) -> None:
    now = [time.time()]
    async with world.client() as http:
        manager = TokenManager(store, http, refresh_margin=60, clock=lambda: now[0], client_credentials=lookup)
        first = await manager.fresh_token("demo")
        seen = len(world.requests)
        now[0] += world.access_ttl
        assert manager.needs_refresh("demo")
        second = await manager.fresh_token("demo")
        rejected = await manager.refresh_after_401("demo", second or "")
    assert first and second and rejected and len({first, second, rejected}) == 3
    assert [f["grant_type"] for f in world.token_forms] == ["client_credentials"] * 3
    assert [r.url.path for r in world.requests[seen:]] == ["/auth/token", "/auth/token"]


async def test_step_up_scopes_are_requested_with_the_next_grant(world: World, store: FileStore) -> None:
    async with world.client() as http:
        manager = TokenManager(store, http, client_credentials=lookup)
        await manager.fresh_token("demo")
        await manager.step_up("demo", ["mcp:write"])
        assert manager.cached_token("demo") is None
        assert await manager.fresh_token("demo") is not None
    assert world.token_forms[-1]["scope"] == "mcp:read mcp:write"
    record = await store.get("demo")
    assert record is not None and not record.needs_authorization and record.requested_scopes == []


async def test_a_refused_grant_leaves_no_token_and_says_why(
    world: World, store: FileStore, caplog: pytest.LogCaptureFixture
) -> None:
    world.token_error = {"error": "invalid_client", "error_description": "bad secret"}
    async with world.client() as http:
        manager = TokenManager(store, http, client_credentials=lookup)
        assert await manager.fresh_token("demo") is None
    record = await store.get("demo")
    assert record is not None and record.tokens is None
    assert record.last_error is not None and "invalid_client" in record.last_error
    assert SECRET not in caplog.text and SECRET not in record.model_dump_json()


async def test_an_authorization_server_without_the_grant_is_refused_clearly(world: World, store: FileStore) -> None:
    world.grant_types = ["authorization_code"]
    async with world.client() as http:
        manager = TokenManager(store, http, client_credentials=lookup)
        assert await manager.fresh_token("demo") is None
    record = await store.get("demo")
    assert record is not None and record.last_error is not None
    assert "does not offer the client credentials grant" in record.last_error
    assert world.token_forms == []


async def test_servers_without_client_credentials_keep_the_refresh_path(world: World, store: FileStore) -> None:
    async with world.client() as http:
        manager = TokenManager(store, http, client_credentials=lookup)
        assert await manager.fresh_token("other") is None
    assert world.token_forms == []


CATALOG = f"""
registry:
  svc:
    type: remote
    remote: {{url: "{MCP}"}}
    oauth:
      client_credentials: {{client_id: svc, client_secret_secret: svc.secret}}
  plain:
    type: remote
    remote: {{url: "{MCP}"}}
    oauth: {{providers: [{{provider: plain}}]}}
"""


async def test_the_service_resolves_the_secret_from_the_store(tmp_path: Path) -> None:
    (tmp_path / "catalog.yaml").write_text(CATALOG)
    async with Bastion.open(tmp_path) as app:
        assert await app.client_credentials("plain") is None
        assert await app.client_credentials("unknown") is None
        with pytest.raises(ConfigError, match="bastion secret set oauth:svc.secret --server svc"):
            await app.client_credentials("svc")
        await app.store.set_secret("svc.secret", SECRET)
        found = await app.client_credentials("svc")
    assert found is not None and found.secret == SECRET and found.server_url == MCP
    assert SECRET not in repr(found)


async def test_time_is_not_wasted_on_a_token_still_valid(world: World, store: FileStore) -> None:
    async with world.client() as http:
        manager = TokenManager(store, http, client_credentials=lookup)
        await manager.fresh_token("demo")
        other = TokenManager(store, http, client_credentials=lookup)  # another process, same store
        started = time.monotonic()
        assert await other.fresh_token("demo") == manager.cached_token("demo")
    assert len(world.token_forms) == 1 and time.monotonic() - started < 5
