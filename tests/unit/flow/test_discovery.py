"""Discovery orchestration against an in-process fake (MCP authorization spec, "Authorization
Server Discovery"): every way a server can fail or lie gives a clear error."""

from __future__ import annotations

import json

import httpx2
import pytest
from tests.unit.flow.world import ISSUER, MCP, World

from bastion.errors import (
    DiscoveryError,
    InsecureEndpointError,
    IssuerMismatchError,
    PKCEUnsupportedError,
    ResourceMismatchError,
)
from bastion.oauth.discovery import discover, select_scopes

pytestmark = pytest.mark.anyio


async def test_discovery_follows_resource_metadata_from_the_challenge(world: World) -> None:
    async with world.client() as http:
        found = await discover(http, MCP)
    assert found.issuer == ISSUER
    assert found.resource == MCP
    assert found.challenge_scopes == ["mcp:read"]
    assert not found.legacy
    paths = [r.url.path for r in world.requests]
    assert paths[:3] == [
        "/mcp",
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-authorization-server/auth",
    ]


async def test_server_that_lets_initialize_through_is_probed_with_an_operation(world: World) -> None:
    """Per-operation authorization (initialize open, tools need a token): the challenge, and so the
    scope to start from, comes from the operation's 401, not from scopes_supported."""
    world.open_methods = {"initialize"}
    async with world.client() as http:
        found = await discover(http, MCP)
    assert found.challenge_scopes == ["mcp:read"]
    assert select_scopes(found, override=None)[0] == "mcp:read"
    probes = [json.loads(r.content)["method"] for r in world.requests if r.url.path == "/mcp"]
    assert probes == ["initialize", "tools/list"]


async def test_server_without_auth_on_any_method_falls_through_to_well_known(world: World) -> None:
    world.open_methods = {"initialize", "tools/list"}
    async with world.client() as http:
        found = await discover(http, MCP)
    assert found.challenge_scopes == []
    assert select_scopes(found, override=None)[:2] == ["mcp:read", "mcp:write"]


async def test_a_401_to_initialize_is_the_only_probe(world: World) -> None:
    async with world.client() as http:
        await discover(http, MCP)
    assert [r.url.path for r in world.requests].count("/mcp") == 1


@pytest.mark.parametrize("header", [None, "", "Bearer realm=", 'Bearer resource_metadata="unterminated', ",,,"])
async def test_missing_or_malformed_challenge_falls_through_to_well_known(world: World, header: str | None) -> None:
    world.www_authenticate = header
    async with world.client() as http:
        found = await discover(http, MCP)
    assert found.issuer == ISSUER
    assert "/.well-known/oauth-protected-resource/mcp" in [r.url.path for r in world.requests]


async def test_no_resource_metadata_uses_origin_and_default_endpoints(world: World) -> None:
    """2025-03-26 revision: no protected resource metadata → the origin is the issuer, and with no
    metadata there either, its /authorize, /token and /register."""
    world.www_authenticate = "Bearer"
    world.prm_status = 404
    async with world.client() as http:
        found = await discover(http, MCP)
    assert found.legacy
    assert found.issuer == "http://127.0.0.1:9"
    assert str(found.metadata.authorization_endpoint) == "http://127.0.0.1:9/authorize"
    assert str(found.metadata.token_endpoint) == "http://127.0.0.1:9/token"
    assert str(found.metadata.registration_endpoint) == "http://127.0.0.1:9/register"
    assert found.resource is None


async def test_resource_metadata_server_error_is_reported(world: World) -> None:
    world.prm_status = 500
    async with world.client() as http:
        with pytest.raises(DiscoveryError, match="500"):
            await discover(http, MCP)


async def test_resource_metadata_invalid_json_is_reported(world: World) -> None:
    world.prm_body = b"{not json"
    async with world.client() as http:
        with pytest.raises(DiscoveryError):
            await discover(http, MCP)


async def test_resource_metadata_for_another_resource_stops(world: World) -> None:
    world.prm_resource = "http://127.0.0.1:9/other"
    async with world.client() as http:
        with pytest.raises(ResourceMismatchError):
            await discover(http, MCP)


async def test_authorization_server_metadata_with_another_issuer_stops(world: World) -> None:
    world.as_issuer = "http://127.0.0.1:9/evil"
    async with world.client() as http:
        with pytest.raises(IssuerMismatchError):
            await discover(http, MCP)


async def test_authorization_server_metadata_404_everywhere_stops(world: World) -> None:
    world.as_status = 404
    async with world.client() as http:
        with pytest.raises(DiscoveryError, match="no authorization server metadata"):
            await discover(http, MCP)


async def test_authorization_server_metadata_500_is_reported(world: World) -> None:
    world.as_status = 500
    async with world.client() as http:
        with pytest.raises(DiscoveryError, match="500"):
            await discover(http, MCP)


async def test_authorization_server_metadata_invalid_json_is_reported(world: World) -> None:
    world.as_body = b"[]"
    async with world.client() as http:
        with pytest.raises(DiscoveryError):
            await discover(http, MCP)


@pytest.mark.parametrize("methods", [[], ["plain"]])
async def test_authorization_server_without_s256_is_refused(world: World, methods: list[str]) -> None:
    world.code_challenge_methods = methods
    async with world.client() as http:
        with pytest.raises(PKCEUnsupportedError):
            await discover(http, MCP)


async def test_metadata_url_to_cloud_metadata_address_is_never_followed(world: World) -> None:
    world.www_authenticate = 'Bearer resource_metadata="http://169.254.169.254/latest/meta-data"'
    async with world.client() as http:
        with pytest.raises(InsecureEndpointError):
            await discover(http, MCP)
    assert all(r.url.host != "169.254.169.254" for r in world.requests)


async def test_http_endpoint_of_a_remote_server_is_refused(world: World) -> None:
    doc = world.metadata()
    doc["token_endpoint"] = "http://auth.example.com/token"
    world.as_body = json.dumps(doc).encode()
    async with world.client() as http:
        with pytest.raises(InsecureEndpointError, match="token_endpoint"):
            await discover(http, MCP)


async def test_unreachable_server_says_so() -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused", request=request)

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(refuse)) as http:
        with pytest.raises(DiscoveryError, match="cannot reach"):
            await discover(http, MCP)


async def test_scope_selection_order(world: World) -> None:
    async with world.client() as http:
        found = await discover(http, MCP)
    assert select_scopes(found, override=["x"]) == ["x"]
    assert select_scopes(found, override=None) == ["mcp:read", "offline_access"]
    assert select_scopes(found, override=None, extra=["mcp:write"]) == ["mcp:read", "mcp:write", "offline_access"]
    world.www_authenticate = "Bearer"
    async with world.client() as http:
        found = await discover(http, MCP)
    assert select_scopes(found, override=None) == ["mcp:read", "mcp:write", "offline_access"]
