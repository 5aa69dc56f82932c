"""Issue 12 hardening of the token manager: the margin of adopted client credentials tokens, the
deadline of a refresh that holds the store lock, one refresh per refused token, and the URL a
token set was obtained for."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import anyio
import httpx2
import pytest
from tests.unit.flow.world import ISSUER, MCP, World

from bastion.config.catalog import ClientCredentialsSpec
from bastion.errors import TokenError
from bastion.oauth.client_credentials import ClientCredentials
from bastion.oauth.tokens import TokenManager
from bastion.store.file import FileStore
from bastion.store.models import ClientRegistration, ProviderRecord, TokenSet

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


@pytest.fixture
async def dripping_token_endpoint() -> AsyncIterator[str]:
    """A token endpoint on a real socket that sends its headers, then one body byte every 0.2 s,
    forever (each read is quick, so no per-read timeout ever fires)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
            for _ in range(600):
                await asyncio.sleep(0.2)
                writer.write(b" ")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/token"
    finally:
        server.close()
        for task in asyncio.all_tasks():
            if task.get_coro().__qualname__.startswith("dripping_token_endpoint"):  # type: ignore[union-attr]
                task.cancel()


async def test_a_refresh_that_never_ends_gives_up_and_frees_the_store_lock(
    store: FileStore, dripping_token_endpoint: str
) -> None:
    """Point 8: the refresh runs under the server's store lock; a token endpoint that never finishes
    its answer must not hold that lock (and every other refresher of the server) forever."""
    tokens = TokenSet(
        access_token="at-old",
        refresh_token="rt-old",
        expires_at=time.time() - 1,
        issuer="http://127.0.0.1:9/auth",
        token_endpoint=dripping_token_endpoint,
        resource=MCP,
        client_id="client-1",
    )
    client = ClientRegistration(client_id="client-1", issuer="http://127.0.0.1:9/auth")
    await store.put(ProviderRecord(server="demo", resource_url=MCP, client=client, tokens=tokens))
    async with httpx2.AsyncClient(trust_env=False) as http:
        manager = TokenManager(store, http, refresh_timeout=1.0)
        await manager.load("demo")
        with anyio.fail_after(10):
            with pytest.raises(TokenError, match="did not answer within"):
                await manager.fresh_token("demo")
            async with store.lock("demo", timeout=2):
                pass


def legacy_record(world: World) -> ProviderRecord:
    """A record as stored before Bastion recorded `obtained_for`."""
    world.refresh_tokens.add("rt-initial")
    tokens = TokenSet(
        access_token="at-initial",
        refresh_token="rt-initial",
        expires_at=time.time() + 3600,
        scopes=["mcp:read"],
        issuer=ISSUER,
        token_endpoint=f"{ISSUER}/token",
        resource=MCP,
        client_id="client-1",
    )
    client = ClientRegistration(client_id="client-1", issuer=ISSUER)
    return ProviderRecord(server="demo", resource_url="HTTP://127.0.0.1:9/mcp", client=client, tokens=tokens)


async def test_tokens_from_before_take_the_records_url_and_store_it_with_the_next_refresh(
    world: World, store: FileStore
) -> None:
    """Point 1, existing records: no re-authorization after an upgrade, and the binding is written
    with the refreshed tokens."""
    await store.put(legacy_record(world))
    async with world.client() as http:
        manager = TokenManager(store, http)
        await manager.load("demo")
        assert manager.obtained_for("demo") == MCP
        assert await manager.refresh_after_401("demo", "at-initial") is not None
    record = await store.get("demo")
    assert record is not None and record.tokens is not None and record.tokens.obtained_for == MCP


async def test_a_refresh_after_401_happens_once_per_refused_token_across_processes(
    world: World, store: FileStore
) -> None:
    """Point 10: the token a refresh after a 401 brought is marked; refused too, neither this
    manager nor another one sharing the store refreshes it again."""
    await store.put(legacy_record(world))
    async with world.client() as http:
        first = TokenManager(store, http)
        second = TokenManager(store, http)
        await first.load("demo")
        renewed = await first.refresh_after_401("demo", "at-initial")
        assert renewed is not None
        assert await first.refresh_after_401("demo", renewed) is None
        await second.load("demo")
        assert await second.refresh_after_401("demo", renewed) is None
    assert [f["grant_type"] for f in world.token_forms] == ["refresh_token"]
    record = await store.get("demo")
    assert record is not None and record.tokens is not None and record.tokens.access_token == renewed
    assert not record.needs_authorization  # the gateway's upstream is needs-authorization; the grant stays


async def test_a_token_refused_long_after_a_refusal_gets_its_one_refresh(world: World, store: FileStore) -> None:
    """The mark of a token obtained after a 401 does not outlive its cause: refused an hour later
    (a server restart, say), it is refreshed once like any other token."""
    now = [time.time()]
    await store.put(legacy_record(world))
    async with world.client() as http:
        manager = TokenManager(store, http, clock=lambda: now[0])
        await manager.load("demo")
        renewed = await manager.refresh_after_401("demo", "at-initial")
        assert renewed is not None
        now[0] += 30  # still right after the refusal: no second refresh
        assert await manager.refresh_after_401("demo", renewed) is None
        now[0] += 3600
        again = await manager.refresh_after_401("demo", renewed)
        assert again is not None and again != renewed
    assert [f["grant_type"] for f in world.token_forms] == ["refresh_token", "refresh_token"]


async def test_a_token_that_expired_normally_may_be_refreshed_after_a_401_again(world: World, store: FileStore) -> None:
    now = [time.time()]
    await store.put(legacy_record(world))
    async with world.client() as http:
        manager = TokenManager(store, http, clock=lambda: now[0])
        await manager.load("demo")
        renewed = await manager.refresh_after_401("demo", "at-initial")
        now[0] += 7200
        expiry = await manager.fresh_token("demo")  # a scheduled refresh: not after a refusal
        assert expiry is not None and expiry != renewed
        assert await manager.refresh_after_401("demo", expiry) is not None
    assert len(world.token_forms) == 3


async def test_client_credentials_tokens_for_another_url_are_not_adopted(store: FileStore) -> None:
    """The catalog moved a client-credentials server: its token (and the resource it was granted
    for) is not reused; the grant runs again for the new URL, with discovery."""
    other_url = "http://127.0.0.2:9/mcp"
    world = World(grant_types=["client_credentials"])
    moved_world = World(
        grant_types=["client_credentials"],
        server_url=other_url,
        www_authenticate='Bearer resource_metadata="http://127.0.0.2:9/.well-known/oauth-protected-resource/mcp"',
    )
    moved_credentials = ClientCredentials(server_url=other_url, spec=CREDENTIALS.spec, secret="s3cret")

    async def moved(server: str) -> ClientCredentials | None:
        return moved_credentials

    async with world.client() as http, moved_world.client() as moved_http:
        first = TokenManager(store, http, client_credentials=cc_lookup)
        token = await first.fresh_token("demo")
        assert first.obtained_for("demo") == MCP
        second = TokenManager(store, moved_http, client_credentials=moved)
        other = await second.fresh_token("demo")
    assert token is not None and other is not None and other != token
    assert second.obtained_for("demo") == other_url
    assert [f["resource"] for f in moved_world.token_forms] == [other_url]
