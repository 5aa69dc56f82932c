"""Issue 2 end to end against real peers: oidc-provider (open DCR, PKCE required, rotating
refresh tokens, revocation, resource indicators with JWT access tokens) and an OAuth-protected
MCP server built with the mcp SDK. Driven through the `bastion` CLI in subprocesses, with the
headless user agent as $BROWSER."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from bastion.oauth.tokens import TokenManager
from bastion.service import Bastion
from tests.fixtures import peers
from tests.integration.harness import Home

pytestmark = pytest.mark.anyio

OAUTH_LS_KEYS = {"server", "state", "issuer", "client_id", "scopes", "expires_at"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def home(tmp_path: Path, headless_browser: Path) -> Home:
    return Home(tmp_path / "home")


def protected_entry(url: str) -> dict[str, Any]:
    return {
        "type": "remote",
        "title": "Protected test server",
        "remote": {"url": url, "transport_type": "streamable-http"},
        "oauth": {"providers": [{"provider": "protected"}]},
    }


@contextlib.asynccontextmanager
async def bearer_client(url: str, token: str) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=15.0, trust_env=False) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            yield client


async def test_enable_authorize_call_refresh_revoke_disable(
    home: Home, oidc: peers.OidcHandle, protected_mcp: peers.ProtectedMcpHandle
) -> None:
    home.write_catalog({"protected": protected_entry(protected_mcp.url)})

    # Enable: provider recorded unregistered, no network touched.
    out = home.run("server", "enable", "protected").stdout
    assert "bastion oauth authorize protected" in out
    rows = home.json("oauth", "ls", "--json")
    assert rows == [
        {
            "server": "protected",
            "state": "unregistered",
            "issuer": None,
            "client_id": None,
            "scopes": [],
            "expires_at": None,
        }
    ]
    assert oidc.events() == [] and protected_mcp.requests() == []

    # Authorize in the (headless) browser.
    home.run("oauth", "authorize", "protected", "--callback-port", "0", "--timeout", "60")
    [row] = home.json("oauth", "ls", "--json")
    assert set(row) == OAUTH_LS_KEYS
    assert row["state"] == "authorized"
    assert row["issuer"] == oidc.issuer
    assert row["client_id"]
    assert "mcp:read" in row["scopes"]
    assert row["expires_at"] is not None
    assert len(oidc.events("registration_create.success")) == 1

    # A protected tool call with the library's token.
    async with Bastion.open(home.path) as app:
        manager = TokenManager(app.store, app.http)
        await manager.load("protected")
        token = await manager.fresh_token("protected")
        assert token is not None
        async with bearer_client(protected_mcp.url, token) as client:
            result = await client.call_tool("whoami", {})
        assert not result.is_error

        # A refresh (as on a 401): the rotated token works, the old refresh token is spent.
        before = await app.store.get("protected")
        assert before is not None and before.tokens is not None
        new_token = await manager.refresh_after_401("protected", token)
        assert new_token is not None and new_token != token
        after = await app.store.get("protected")
        assert after is not None and after.tokens is not None
        assert after.tokens.refresh_token != before.tokens.refresh_token
        assert oidc.events("grant.success")
        async with bearer_client(protected_mcp.url, new_token) as client:
            result = await client.call_tool("echo", {"text": "hi"})
        assert not result.is_error

    # Revoke: at the authorization server, then locally; the registration is kept.
    home.run("oauth", "revoke", "protected")
    assert oidc.events("grant.revoked") or oidc.events("revocation.success")
    [row] = home.json("oauth", "ls", "--json")
    assert row["state"] == "registered" and row["client_id"]

    # The revoked refresh token is dead at the authorization server.
    assert after.tokens.refresh_token is not None and after.client is not None
    async with httpx2.AsyncClient(timeout=10.0, trust_env=False) as http:
        response = await http.post(
            after.tokens.token_endpoint,
            data={
                "grant_type": "refresh_token",
                "refresh_token": after.tokens.refresh_token,
                "client_id": after.client.client_id,
            },
        )
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"

    # Disable: provider gone.
    home.run("server", "disable", "protected")
    assert home.json("oauth", "ls", "--json") == []
    [listed] = [r for r in home.json("server", "ls", "--json") if r["name"] == "protected"]
    assert listed["enabled"] is False


async def test_disable_revokes_at_the_authorization_server(
    home: Home, oidc: peers.OidcHandle, protected_mcp: peers.ProtectedMcpHandle
) -> None:
    home.write_catalog({"protected": protected_entry(protected_mcp.url)})
    home.run("server", "enable", "protected")
    home.run("oauth", "authorize", "protected", "--callback-port", "0", "--timeout", "60")
    store_before = home.json("oauth", "ls", "--json")
    assert store_before[0]["state"] == "authorized"
    oidc.clear_events()
    home.run("server", "disable", "protected")
    assert oidc.events("grant.revoked") or oidc.events("revocation.success")
    assert home.json("oauth", "ls", "--json") == []


async def test_no_secret_in_debug_logs_or_cli_output(
    home: Home, oidc: peers.OidcHandle, protected_mcp: peers.ProtectedMcpHandle
) -> None:
    home.write_catalog({"protected": protected_entry(protected_mcp.url)})
    home.env["BASTION_LOG_LEVEL"] = "DEBUG"
    home.run("-vv", "server", "enable", "protected")
    home.run("-vv", "oauth", "authorize", "protected", "--callback-port", "0", "--timeout", "60")
    home.run("-vv", "oauth", "ls")
    home.run("-vv", "oauth", "ls", "--json")
    home.run("-vv", "server", "inspect", "protected")
    async with Bastion.open(home.path) as app:
        record = await app.store.get("protected")
        assert record is not None and record.tokens is not None and record.client is not None
        manager = TokenManager(app.store, app.http)
        await manager.load("protected")
        await manager.refresh_after_401("protected", record.tokens.access_token)
        refreshed = await app.store.get("protected")
    assert refreshed is not None and refreshed.tokens is not None
    home.run("-vv", "oauth", "revoke", "protected")
    secrets = [record.tokens.access_token, record.tokens.refresh_token, refreshed.tokens.access_token]
    secrets += [s for s in (record.client.client_secret, refreshed.tokens.refresh_token) if s]
    output = "\n".join(home.outputs)
    assert "DEBUG" in output  # debug logging really was on
    for secret in secrets:
        assert secret and secret not in output
