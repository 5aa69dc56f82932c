"""Discovery and registration through Bastion's own OAuth client (`service.new_http_client`)
against hostile servers on 127.0.0.1 (issue 12, points 8 and 11): a body cap, deadlines, the
address check on every discovered URL, one message for every kind of no-answer."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx2
import pytest
from tests.unit.flow.world import MCP, World
from tests.unit.oauth.hostile import (
    FakeResolver,
    LoopbackBackend,
    endless,
    protected,
    respond,
    routes,
    self_signed,
    serve,
    trickle,
)

from bastion.config.catalog import ClientCredentialsSpec
from bastion.errors import DiscoveryError, InsecureEndpointError, RegistrationError, TokenError
from bastion.oauth.client_credentials import ClientCredentials, request_token
from bastion.oauth.discovery import discover
from bastion.oauth.netguard import GuardedTransport
from bastion.oauth.registration import register
from bastion.service import new_http_client

pytestmark = pytest.mark.anyio

PRM = "/.well-known/oauth-protected-resource/mcp"
PUBLIC = "93.184.216.34"
"""A public address, for classification only: the test backend stands in 127.0.0.1 for it."""


def resource_metadata(port: int, issuer: str, **extra: object) -> dict[str, object]:
    return {"resource": f"http://127.0.0.1:{port}/mcp", "authorization_servers": [issuer], **extra}


# -- one message for every kind of no-answer ---------------------------------------------------


def failing_at(world: World, path: str, failure: type[httpx2.TransportError]) -> httpx2.AsyncClient:
    def handle(request: httpx2.Request) -> httpx2.Response:
        if request.url.path == path:
            raise failure("boom", request=request)
        return world.handle(request)

    return httpx2.AsyncClient(transport=httpx2.MockTransport(handle))


@pytest.mark.parametrize("path", [PRM, "/.well-known/oauth-authorization-server/auth"])
async def test_discovered_url_that_does_not_answer_gets_one_message_whatever_the_failure(
    world: World, path: str
) -> None:
    """A closed port (ConnectError), a filtered one (ConnectTimeout) and a slow one (ReadTimeout)
    read the same: the metadata's author learns nothing about what listens where."""
    messages = set()
    for failure in (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.ReadTimeout):
        async with failing_at(world, path, failure) as http:
            with pytest.raises(DiscoveryError) as info:
                await discover(http, MCP)
        messages.add(str(info.value))
    assert len(messages) == 1
    (message,) = messages
    assert "could not reach http://127.0.0.1:9" in message
    assert "Connect" not in message and "Timeout" not in message


async def test_registration_endpoint_that_does_not_answer_gets_one_message(world: World) -> None:
    async with world.client() as http:
        found = await discover(http, MCP)
    messages = set()
    for failure in (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.ReadTimeout):
        async with failing_at(world, "/auth/register", failure) as http:
            with pytest.raises(RegistrationError) as info:
                await register(
                    http, found, server_name="demo", redirect_uri="http://127.0.0.1:5175/callback", scopes=[]
                )
        messages.add(str(info.value))
    assert len(messages) == 1 and "could not reach http://127.0.0.1:9" in messages.pop()


async def test_client_credentials_token_endpoint_that_does_not_answer_gets_one_message(world: World) -> None:
    credentials = ClientCredentials(
        server_url=MCP,
        spec=ClientCredentialsSpec(client_id="bot", client_secret_secret="BOT_SECRET"),
        secret="s3cret-value",
    )
    messages = set()
    for failure in (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.ReadTimeout):
        async with failing_at(world, "/auth/token", failure) as http:
            with pytest.raises(TokenError) as info:
                await request_token(
                    http,
                    credentials,
                    issuer=world.issuer,
                    token_endpoint=f"{world.issuer}/token",
                    revocation_endpoint=None,
                    resource=MCP,
                    scopes=[],
                    now=time.time(),
                )
        messages.add(str(info.value))
    assert len(messages) == 1
    message = messages.pop()
    assert "could not reach http://127.0.0.1:9" in message and "s3cret-value" not in message


# -- size cap and deadlines (real sockets) ----------------------------------------------------


async def test_oversized_resource_metadata_is_refused_naming_its_origin() -> None:
    """8 MiB of otherwise valid protected resource metadata: refused at 1 MiB, the error names
    the server's origin, and discovery goes no further."""
    padding = "x" * (8 * 1024 * 1024)
    table = {}
    async with serve(routes(table)) as server:
        issuer = server.url("/auth")
        table["/mcp"] = protected(server.url(PRM))
        table[PRM] = respond(body=resource_metadata(server.port, issuer, padding=padding))
        async with new_http_client() as http:
            with anyio.fail_after(20), pytest.raises(DiscoveryError) as info:
                await discover(http, server.url("/mcp"))
    message = str(info.value)
    assert f"http://127.0.0.1:{server.port}" in message and "1 MiB" in message
    assert [s.path for s in server.seen] == ["/mcp", PRM]


async def test_endless_authorization_server_metadata_is_cut_at_the_cap() -> None:
    table = {}
    async with serve(routes(table)) as server:
        table["/mcp"] = protected(server.url(PRM))
        table[PRM] = respond(body=resource_metadata(server.port, server.url("/auth")))
        table["/.well-known/oauth-authorization-server/auth"] = endless()
        async with new_http_client() as http:
            with anyio.fail_after(20), pytest.raises(DiscoveryError, match="1 MiB"):
                await discover(http, server.url("/mcp"))
    assert server.written < 16 * 1024 * 1024


async def test_trickling_metadata_hits_the_request_deadline() -> None:
    """One byte every 0.2 s: no read timeout ever fires, the per-request deadline does."""
    table = {}
    async with serve(routes(table)) as server:
        table["/mcp"] = protected(server.url(PRM))
        table[PRM] = trickle()
        async with new_http_client(deadline=1.0) as http:
            with anyio.fail_after(20), pytest.raises(DiscoveryError) as info:
                await discover(http, server.url("/mcp"))
    assert f"could not reach http://127.0.0.1:{server.port}" in str(info.value)


async def test_discovery_as_a_whole_has_a_deadline() -> None:
    """Each request within its own deadline, but the whole discovery within `deadline`."""
    table = {}
    async with serve(routes(table)) as server:
        table["/mcp"] = protected(server.url(PRM))
        table[PRM] = trickle()
        async with new_http_client() as http:
            with anyio.fail_after(20), pytest.raises(DiscoveryError, match="did not finish within 1 seconds"):
                await discover(http, server.url("/mcp"), deadline=1.0)


async def test_loopback_server_with_loopback_authorization_server_is_discovered() -> None:
    table = {}
    async with serve(routes(table)) as server:
        issuer = server.url("/auth")
        table["/mcp"] = protected(server.url(PRM))
        table[PRM] = respond(body=resource_metadata(server.port, issuer))
        table["/.well-known/oauth-authorization-server/auth"] = respond(
            body={
                "issuer": issuer,
                "authorization_endpoint": f"{issuer}/authorize",
                "token_endpoint": f"{issuer}/token",
                "code_challenge_methods_supported": ["S256"],
            }
        )
        async with new_http_client() as http:
            found = await discover(http, server.url("/mcp"))
    assert found.issuer == issuer


# -- SSRF: discovered URLs that lead inside ----------------------------------------------------


async def test_resource_metadata_hint_to_a_private_address_is_refused_for_a_loopback_server() -> None:
    """The 401's `resource_metadata` names https://evil.test/..., which resolves to 10.0.0.1; the
    MCP server is on 127.0.0.1, so the hint is refused and nothing connects to 10.0.0.1."""
    backend = LoopbackBackend(stand_ins=["10.0.0.1"])
    resolver = FakeResolver({"evil.test": ["10.0.0.1"]})
    async with serve(routes({"/mcp": protected("https://evil.test" + PRM)})) as server:
        async with new_http_client(resolver=resolver, network_backend=backend) as http:
            with pytest.raises(InsecureEndpointError) as info:
                await discover(http, server.url("/mcp"))
    assert "10.0.0.1" in str(info.value) and "private" in str(info.value)
    assert "10.0.0.1" not in backend.asked


async def test_authorization_server_on_a_private_address_is_refused_for_a_loopback_server() -> None:
    backend = LoopbackBackend(stand_ins=["192.168.7.7"])
    resolver = FakeResolver({"as.evil.test": ["192.168.7.7"]})
    table = {}
    async with serve(routes(table)) as server:
        table["/mcp"] = protected(server.url(PRM))
        table[PRM] = respond(body=resource_metadata(server.port, "https://as.evil.test"))
        async with new_http_client(resolver=resolver, network_backend=backend) as http:
            with pytest.raises(InsecureEndpointError, match="192.168.7.7"):
                await discover(http, server.url("/mcp"))
    assert backend.asked == ["127.0.0.1", "127.0.0.1"]


async def test_intranet_server_may_use_an_intranet_authorization_server(tmp_path: Path) -> None:
    """MCP server on 10.1.1.1, its authorization server on 10.2.2.2: the same class, so discovery
    goes through, over TLS for the names, connected to the checked addresses (the test backend
    stands 127.0.0.1 in for both)."""
    server_tls, client_tls = self_signed("mcp.intranet.test", tmp_path, "auth.intranet.test")
    resolver = FakeResolver({"mcp.intranet.test": ["10.1.1.1"], "auth.intranet.test": ["10.2.2.2"]})
    backend = LoopbackBackend(stand_ins=["10.1.1.1", "10.2.2.2"])
    table = {}
    async with serve(routes(table), tls=server_tls) as server:
        mcp = server.url("/mcp", host="mcp.intranet.test", scheme="https")
        issuer = server.url("/auth", host="auth.intranet.test", scheme="https")
        table["/mcp"] = protected(server.url(PRM, host="mcp.intranet.test", scheme="https"))
        table[PRM] = respond(body={"resource": mcp, "authorization_servers": [issuer]})
        table["/.well-known/oauth-authorization-server/auth"] = respond(
            body={
                "issuer": issuer,
                "authorization_endpoint": f"{issuer}/authorize",
                "token_endpoint": f"{issuer}/token",
                "code_challenge_methods_supported": ["S256"],
            }
        )
        transport = GuardedTransport(resolver=resolver, network_backend=backend, ssl_context=client_tls)
        async with httpx2.AsyncClient(transport=transport) as http:
            found = await discover(http, mcp)
    assert found.issuer == issuer
    assert backend.asked == ["10.1.1.1", "10.1.1.1", "10.2.2.2"]
    assert [s.sni for s in server.seen] == ["mcp.intranet.test", "mcp.intranet.test", "auth.intranet.test"]


async def test_public_server_may_not_use_an_intranet_authorization_server(tmp_path: Path) -> None:
    server_tls, client_tls = self_signed("mcp.example.test", tmp_path)
    resolver = FakeResolver({"mcp.example.test": [PUBLIC], "auth.intranet.test": ["10.2.2.2"]})
    backend = LoopbackBackend(stand_ins=[PUBLIC, "10.2.2.2"])
    table = {}
    async with serve(routes(table), tls=server_tls) as server:
        mcp = server.url("/mcp", host="mcp.example.test", scheme="https")
        table["/mcp"] = protected(server.url(PRM, host="mcp.example.test", scheme="https"))
        table[PRM] = respond(body={"resource": mcp, "authorization_servers": ["https://auth.intranet.test/auth"]})
        transport = GuardedTransport(resolver=resolver, network_backend=backend, ssl_context=client_tls)
        async with httpx2.AsyncClient(transport=transport) as http:
            with pytest.raises(InsecureEndpointError, match="10.2.2.2"):
                await discover(http, mcp)
    assert "10.2.2.2" not in backend.asked
