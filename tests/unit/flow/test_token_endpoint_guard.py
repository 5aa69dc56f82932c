"""Refresh and revocation (oauth/tokens.py) through Bastion's own OAuth client against hostile
token and revocation endpoints on 127.0.0.1 (issue 12, points 8 and 11): the stored endpoints
are metadata-derived URLs too, checked again, capped and bounded on every use."""

from __future__ import annotations

import time

import anyio
import pytest
from tests.unit.oauth.hostile import FakeResolver, LoopbackBackend, endless, respond, serve, silent, trickle

from bastion.errors import TokenError
from bastion.oauth.tokens import refresh_tokens, revoke
from bastion.service import new_http_client
from bastion.store.models import ClientRegistration, ProviderRecord, TokenSet

pytestmark = pytest.mark.anyio

SECRETS = ("at-secret-1", "rt-secret-1")


def record(token_endpoint: str, revocation_endpoint: str | None = None, *, mcp: str) -> ProviderRecord:
    return ProviderRecord(
        server="demo",
        resource_url=mcp,
        client=ClientRegistration(client_id="bastion-client", issuer="https://as.test", source="dcr"),
        tokens=TokenSet(
            access_token=SECRETS[0],
            refresh_token=SECRETS[1],
            expires_at=time.time() - 1,
            issuer="https://as.test",
            token_endpoint=token_endpoint,
            revocation_endpoint=revocation_endpoint,
            resource=mcp,
            client_id="bastion-client",
        ),
    )


def loopback(mcp: str) -> tuple[str, ...]:
    return (mcp,)


async def test_refresh_against_a_trickling_token_endpoint_ends_at_the_deadline() -> None:
    async with serve(trickle()) as server:
        mcp = server.url("/mcp")
        async with new_http_client(anchors=lambda: loopback(mcp), deadline=1.0) as http:
            with anyio.fail_after(10), pytest.raises(TokenError) as info:
                await refresh_tokens(http, record(server.url("/token"), mcp=mcp), now=time.time())
    assert "could not reach http://127.0.0.1:" in str(info.value)
    assert info.value.hint == "try again later"
    assert not any(secret in str(info.value) for secret in SECRETS)


async def test_refresh_against_a_silent_token_endpoint_ends_at_the_deadline() -> None:
    async with serve(silent()) as server:
        mcp = server.url("/mcp")
        async with new_http_client(anchors=lambda: loopback(mcp), deadline=1.0) as http:
            with anyio.fail_after(10), pytest.raises(TokenError):
                await refresh_tokens(http, record(server.url("/token"), mcp=mcp), now=time.time())


async def test_refresh_with_an_endless_token_response_is_cut_at_the_cap() -> None:
    async with serve(endless()) as server:
        mcp = server.url("/mcp")
        async with new_http_client(anchors=lambda: loopback(mcp)) as http:
            with anyio.fail_after(20), pytest.raises(TokenError, match="sent a response larger than 1 MiB") as info:
                await refresh_tokens(http, record(server.url("/token"), mcp=mcp), now=time.time())
    assert server.written < 16 * 1024 * 1024
    assert "try again" not in (info.value.hint or "")


async def test_refresh_to_a_token_endpoint_that_now_resolves_to_a_private_address_is_refused() -> None:
    """The endpoint was checked when it was discovered; its name now answers 10.0.0.5 (rebinding
    after the fact). The refresh token is not sent there."""
    resolver = FakeResolver({"auth.example.test": ["10.0.0.5"]})
    backend = LoopbackBackend(stand_ins=["10.0.0.5"])
    async with serve(respond(body={"access_token": "x", "token_type": "Bearer"})) as server:
        mcp = server.url("/mcp")
        token_endpoint = server.url("/token", host="auth.example.test", scheme="https")
        async with new_http_client(anchors=lambda: loopback(mcp), resolver=resolver, network_backend=backend) as http:
            with pytest.raises(TokenError, match=r"points to 10\.0\.0\.5, a private address") as info:
                await refresh_tokens(http, record(token_endpoint, mcp=mcp), now=time.time())
    assert backend.asked == [] and server.seen == []
    assert "check which server this is" in (info.value.hint or "")


async def test_refresh_is_judged_by_its_own_servers_class_not_by_every_enabled_server() -> None:
    """A public MCP server's token endpoint that resolves to loopback is refused even while another
    enabled server is on loopback (the client's anchors): the refresh is made for its own server."""
    resolver = FakeResolver({"mcp.example.test": ["93.184.216.34"], "auth.example.test": ["127.0.0.1"]})
    backend = LoopbackBackend(stand_ins=["93.184.216.34"])
    async with serve(respond(body={"access_token": "x", "token_type": "Bearer"})) as server:
        local_mcp = server.url("/mcp")
        public_mcp = "https://mcp.example.test/mcp"
        token_endpoint = server.url("/token", host="auth.example.test", scheme="https")
        async with new_http_client(
            anchors=lambda: (local_mcp, public_mcp), resolver=resolver, network_backend=backend
        ) as http:
            with pytest.raises(TokenError, match="a loopback address, while the MCP server is not on one"):
                await refresh_tokens(http, record(token_endpoint, mcp=public_mcp), now=time.time())
            problems = await revoke(http, record(token_endpoint, token_endpoint, mcp=public_mcp))
    assert problems and all("loopback address" in problem for problem in problems)
    assert server.seen == []


async def test_refresh_against_a_loopback_token_endpoint_of_a_loopback_server_works() -> None:
    answer = {"access_token": "at-2", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "rt-2"}
    async with serve(respond(body=answer)) as server:
        mcp = server.url("/mcp")
        async with new_http_client(anchors=lambda: loopback(mcp)) as http:
            tokens = await refresh_tokens(http, record(server.url("/token"), mcp=mcp), now=time.time())
    assert tokens.access_token == "at-2"


async def test_revocation_endpoint_that_trickles_is_reported_within_the_deadline() -> None:
    async with serve(trickle()) as server:
        mcp = server.url("/mcp")
        async with new_http_client(anchors=lambda: loopback(mcp), deadline=1.0) as http:
            with anyio.fail_after(10):
                problems = await revoke(http, record(server.url("/token"), server.url("/revoke"), mcp=mcp))
    assert problems and all("could not reach http://127.0.0.1:" in problem for problem in problems)
    assert not any(secret in problem for problem in problems for secret in SECRETS)
