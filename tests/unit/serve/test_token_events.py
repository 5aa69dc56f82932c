"""`Runtime.on_credentials_changed`: which store events reconnect an upstream. A token refreshed
by another gateway must not (the calls in flight on the session would fail); an authorization,
a revocation, new scopes, or an upstream that gave up while a token is stored must."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest

from bastion.gateway.upstream import UpstreamState
from bastion.oauth.tokens import TokenManager
from bastion.serve import Runtime
from bastion.store.file import FileStore
from bastion.store.models import ProviderRecord, TokenSet

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class FakeStatus:
    name: str
    state: UpstreamState


@dataclass
class FakeGateway:
    state: UpstreamState = UpstreamState.READY
    reconnected: list[str] = field(default_factory=list)

    def status(self) -> list[FakeStatus]:
        return [FakeStatus("notion", self.state)]

    async def reconnect(self, server: str) -> None:
        self.reconnected.append(server)


def tokens(access: str, scopes: tuple[str, ...] = ("read",)) -> TokenSet:
    return TokenSet(
        access_token=access,
        refresh_token=f"refresh-{access}",
        expires_at=time.time() + 3600,
        scopes=list(scopes),
        issuer="https://as.example.com",
        token_endpoint="https://as.example.com/token",
        client_id="client-1",
    )


async def runtime(tmp_path: Path, state: UpstreamState) -> tuple[Any, FileStore, FakeGateway]:
    store = FileStore(tmp_path / "store")
    rt: Any = Runtime.__new__(Runtime)  # only the token manager and the gateway are used here
    rt.tokens = TokenManager(store, httpx2.AsyncClient())
    rt.gateway = FakeGateway(state)
    return rt, store, rt.gateway


async def put(store: FileStore, token_set: TokenSet | None, *, needs_authorization: bool = False) -> None:
    await store.put(
        ProviderRecord(
            server="notion",
            resource_url="https://mcp.example.com/notion",
            tokens=token_set,
            needs_authorization=needs_authorization,
        )
    )


async def test_a_refresh_by_another_gateway_does_not_reconnect(tmp_path: Path) -> None:
    rt, store, gateway = await runtime(tmp_path, UpstreamState.READY)
    await put(store, tokens("a"))
    await rt.tokens.load("notion")
    await put(store, tokens("b"))  # another gateway refreshed
    await rt.on_credentials_changed("notion")
    assert gateway.reconnected == []
    assert rt.tokens.cached_token("notion") == "b"
    await rt.on_credentials_changed(None)  # a resync changes nothing either
    assert gateway.reconnected == []


async def test_new_scopes_authorization_and_revocation_reconnect(tmp_path: Path) -> None:
    rt, store, gateway = await runtime(tmp_path, UpstreamState.READY)
    await put(store, tokens("a"))
    await rt.tokens.load("notion")
    await put(store, tokens("b", ("read", "write")))  # authorized again with more scopes
    await rt.on_credentials_changed("notion")
    await put(store, None, needs_authorization=True)  # revoked
    await rt.on_credentials_changed("notion")
    await rt.on_credentials_changed("notion")  # still nothing: no reconnect
    gateway.state = UpstreamState.NEEDS_AUTHORIZATION
    await put(store, tokens("c"))  # authorized
    await rt.on_credentials_changed("notion")
    assert gateway.reconnected == ["notion"] * 3


async def test_an_upstream_that_gave_up_with_a_stored_token_is_retried(tmp_path: Path) -> None:
    # E.g. its token expired while Redis was away, so it could not be refreshed: after the
    # store's resync the same token is still stored, and the upstream must try again.
    rt, store, gateway = await runtime(tmp_path, UpstreamState.NEEDS_AUTHORIZATION)
    await put(store, tokens("a"))
    await rt.tokens.load("notion")
    await rt.on_credentials_changed(None)
    assert gateway.reconnected == ["notion"]
    gateway.state = UpstreamState.READY
    await rt.on_credentials_changed(None)
    assert gateway.reconnected == ["notion"]
