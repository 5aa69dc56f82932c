"""The demo's peers, built with the `mcp` SDK's server-side auth and served on loopback:

- an authorization server: `DemoProvider` (an `OAuthAuthorizationServerProvider` keeping clients,
  codes and tokens in memory) behind `mcp.server.auth.routes.create_auth_routes`, with dynamic
  client registration, PKCE S256, refresh-token rotation and revocation. Its authorization
  endpoint approves at once: the demo's only user is "demo", so there is no login page.
- a protected MCP server: an `MCPServer` with two tools whose `TokenVerifier` asks the provider,
  answering 401 with `resource_metadata` (RFC 9728) without a valid token.

Both run in this process, each on its own 127.0.0.1 port, as two uvicorn servers.
"""

from __future__ import annotations

import hashlib
import secrets
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import uvicorn
from mcp.server.auth.handlers.metadata import MetadataHandler
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    AuthorizeError,
    OAuthAuthorizationServerProvider,
    RefreshToken,
    TokenError,
    construct_redirect_uri,
)
from mcp.server.auth.routes import build_metadata, cors_middleware, create_auth_routes
from mcp.server.auth.settings import AuthSettings, ClientRegistrationOptions, RevocationOptions
from mcp.server.mcpserver import MCPServer
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp

from bastion.gateway.runtime import bind_listener

HOST = "127.0.0.1"
SCOPE = "demo:tools"
SUBJECT = "demo"
CODE_TTL = 60.0
REFRESH_TTL = 3600


@dataclass
class Counters:
    """What happened at the authorization server (numbers only: nothing secret)."""

    registrations: int = 0
    authorizations: int = 0
    code_exchanges: int = 0
    refreshes: int = 0
    revocations: int = 0
    access_tokens: int = 0


@dataclass
class _Grant:
    """One authorization: its current refresh token and the access tokens issued under it."""

    client_id: str
    scopes: list[str]
    resource: str | None
    refresh_token: str | None = None
    access_tokens: set[str] = field(default_factory=set)


class DemoProvider(OAuthAuthorizationServerProvider[AuthorizationCode, RefreshToken, AccessToken]):
    """An in-memory authorization server for one user, who always says yes."""

    def __init__(self, issuer: str, *, access_token_ttl: int = 20) -> None:
        self.issuer = issuer
        self.access_token_ttl = access_token_ttl
        self.counters = Counters()
        self._clients: dict[str, OAuthClientInformationFull] = {}
        self._codes: dict[str, AuthorizationCode] = {}
        self._access: dict[str, AccessToken] = {}
        self._refresh: dict[str, RefreshToken] = {}
        self._grant_of: dict[str, _Grant] = {}  # token (access or refresh) -> its grant

    # -- clients (RFC 7591) ---------------------------------------------------------------------

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        return self._clients.get(client_id)

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        assert client_info.client_id is not None
        self._clients[client_info.client_id] = client_info
        self.counters.registrations += 1

    # -- authorization endpoint -----------------------------------------------------------------

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        if params.resource is None:
            raise AuthorizeError("invalid_target", "this server issues tokens for one resource: send `resource`")
        assert client.client_id is not None
        code = secrets.token_urlsafe(32)
        self._codes[code] = AuthorizationCode(
            code=code,
            scopes=params.scopes or [SCOPE],
            expires_at=time.time() + CODE_TTL,
            client_id=client.client_id,
            code_challenge=params.code_challenge,
            redirect_uri=params.redirect_uri,
            redirect_uri_provided_explicitly=params.redirect_uri_provided_explicitly,
            resource=params.resource,
            subject=SUBJECT,
        )
        self.counters.authorizations += 1
        # Approved without asking: RFC 9207 `iss` goes with the code and the state.
        return construct_redirect_uri(str(params.redirect_uri), code=code, state=params.state, iss=self.issuer)

    # -- token endpoint ---------------------------------------------------------------------------

    async def load_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: str
    ) -> AuthorizationCode | None:
        code = self._codes.get(authorization_code)
        return code if code is not None and code.client_id == client.client_id else None

    async def exchange_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: AuthorizationCode
    ) -> OAuthToken:
        if self._codes.pop(authorization_code.code, None) is None:  # single use
            raise TokenError("invalid_grant", "authorization code already used")
        self.counters.code_exchanges += 1
        grant = _Grant(authorization_code.client_id, authorization_code.scopes, authorization_code.resource)
        return self._issue(grant)

    async def load_refresh_token(self, client: OAuthClientInformationFull, refresh_token: str) -> RefreshToken | None:
        token = self._refresh.get(refresh_token)
        return token if token is not None and token.client_id == client.client_id else None

    async def exchange_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: RefreshToken, scopes: list[str]
    ) -> OAuthToken:
        grant = self._grant_of.get(refresh_token.token)
        if grant is None or self._refresh.pop(refresh_token.token, None) is None:
            raise TokenError("invalid_grant", "refresh token already used or revoked")
        self._grant_of.pop(refresh_token.token, None)  # rotation: the old refresh token is spent
        self.counters.refreshes += 1
        return self._issue(grant, scopes=scopes)

    def _issue(self, grant: _Grant, *, scopes: list[str] | None = None) -> OAuthToken:
        now = int(time.time())
        scopes = scopes or grant.scopes
        access = secrets.token_urlsafe(32)
        refresh = secrets.token_urlsafe(32)
        self._access[access] = AccessToken(
            token=access,
            client_id=grant.client_id,
            scopes=scopes,
            expires_at=now + self.access_token_ttl,
            resource=grant.resource,
            subject=SUBJECT,
            claims={"iss": self.issuer},
        )
        self._refresh[refresh] = RefreshToken(
            token=refresh,
            client_id=grant.client_id,
            scopes=grant.scopes,
            expires_at=now + REFRESH_TTL,
            resource=grant.resource,
            subject=SUBJECT,
        )
        grant.refresh_token = refresh
        grant.access_tokens.add(access)
        self._grant_of[access] = grant
        self._grant_of[refresh] = grant
        self.counters.access_tokens += 1
        return OAuthToken(
            access_token=access,
            token_type="Bearer",
            expires_in=self.access_token_ttl,
            scope=" ".join(scopes),
            refresh_token=refresh,
        )

    # -- tokens at the resource, revocation (RFC 7009) --------------------------------------------

    async def load_access_token(self, token: str) -> AccessToken | None:
        access = self._access.get(token)
        if access is None or (access.expires_at is not None and access.expires_at < time.time()):
            return None
        return access

    async def revoke_token(self, token: AccessToken | RefreshToken) -> None:
        """Revoking either token ends the whole grant: its refresh token and every access token."""
        grant = self._grant_of.get(token.token)
        if grant is None:
            return
        for access in grant.access_tokens:
            self._access.pop(access, None)
            self._grant_of.pop(access, None)
        if grant.refresh_token is not None:
            self._refresh.pop(grant.refresh_token, None)
            self._grant_of.pop(grant.refresh_token, None)
        grant.access_tokens.clear()
        grant.refresh_token = None
        self.counters.revocations += 1

    def live_access_tokens(self) -> int:
        now = time.time()
        return sum(1 for t in self._access.values() if t.expires_at is None or t.expires_at >= now)


class ResourceTokenVerifier:
    """`mcp.server.auth.provider.TokenVerifier` for the MCP server: asks the provider (same process)."""

    def __init__(self, provider: DemoProvider) -> None:
        self.provider = provider
        self.verified = 0
        self.last_digest: str | None = None
        """sha256 of the last token accepted, to tell which token a call used (never printed)."""

    async def verify_token(self, token: str) -> AccessToken | None:
        access = await self.provider.load_access_token(token)
        if access is not None:
            self.verified += 1
            self.last_digest = token_digest(token)
        return access


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _auth_settings(issuer: str, resource: str) -> AuthSettings:
    # Strings, validated by AuthSettings (url_preserve_empty_path): the path-less issuer stays
    # exactly `http://127.0.0.1:PORT`, with no trailing slash, as the client compares it exactly.
    return AuthSettings.model_validate(
        {
            "issuer_url": issuer,
            "resource_server_url": resource,
            "required_scopes": [SCOPE],
            "validate_token_resource": True,
            "client_registration_options": {"enabled": True, "valid_scopes": [SCOPE], "default_scopes": [SCOPE]},
            "revocation_options": {"enabled": True},
        }
    )


def authorization_server_app(provider: DemoProvider, settings: AuthSettings) -> Starlette:
    registration = settings.client_registration_options or ClientRegistrationOptions(enabled=True)
    revocation = settings.revocation_options or RevocationOptions(enabled=True)
    routes = create_auth_routes(
        provider,
        issuer_url=settings.issuer_url,
        client_registration_options=registration,
        revocation_options=revocation,
    )
    # The SDK's metadata, corrected on two points (see the module docstring of bastion.demo):
    # - it lists client_secret_basic, but the SDK's token and revocation endpoints read
    #   `client_id` (and, for revocation, `client_secret`) from the form only, so a client that
    #   authenticates with HTTP Basic alone, as RFC 6749 §2.3.1 allows, is refused: only
    #   client_secret_post is advertised;
    # - the authorization response carries `iss` (RFC 9207), which the metadata should say.
    metadata = build_metadata(settings.issuer_url, None, registration, revocation)
    metadata.authorization_response_iss_parameter_supported = True
    metadata.token_endpoint_auth_methods_supported = ["client_secret_post"]
    metadata.revocation_endpoint_auth_methods_supported = ["client_secret_post"]
    well_known = Route(
        "/.well-known/oauth-authorization-server",
        endpoint=cors_middleware(MetadataHandler(metadata).handle, ["GET", "OPTIONS"]),
        methods=["GET", "OPTIONS"],
    )
    return Starlette(routes=[well_known, *routes])


def resource_server(verifier: ResourceTokenVerifier, settings: AuthSettings) -> MCPServer:
    server = MCPServer("bastion-demo", token_verifier=verifier, auth=settings, log_level="WARNING")

    @server.tool()
    def hello(name: str) -> str:
        """Greet someone, as the signed-in user."""
        token = get_access_token()
        who = token.subject if token is not None and token.subject else "someone"
        return f"Hello, {name}! (from the demo server, signed in as {who})"

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    return server


@dataclass
class DemoServers:
    issuer: str
    mcp_url: str
    provider: DemoProvider
    verifier: ResourceTokenVerifier


async def _serve(tg: anyio.abc.TaskGroup, app: ASGIApp, sock: socket.socket, started: list[uvicorn.Server]) -> None:
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1))
    server.capture_signals = _no_signal_capture  # type: ignore[method-assign]
    started.append(server)

    async def run() -> None:
        with anyio.CancelScope(shield=True):  # stopped by should_exit, so connections close cleanly
            await server.serve(sockets=[sock])

    tg.start_soon(run)
    with anyio.fail_after(10):
        while not server.started:
            await anyio.sleep(0.01)


class _NoSignals:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _no_signal_capture() -> Any:
    return _NoSignals()


@asynccontextmanager
async def demo_servers(*, access_token_ttl: int = 20) -> AsyncIterator[DemoServers]:
    """Start the authorization server and the protected MCP server; stop both on exit."""
    as_sock, rs_sock = bind_listener(HOST, 0), bind_listener(HOST, 0)
    try:
        issuer = f"http://{HOST}:{as_sock.getsockname()[1]}"
        mcp_url = f"http://{HOST}:{rs_sock.getsockname()[1]}/mcp"
        settings = _auth_settings(issuer, mcp_url)
        provider = DemoProvider(issuer, access_token_ttl=access_token_ttl)
        verifier = ResourceTokenVerifier(provider)
        as_app = authorization_server_app(provider, settings)
        rs_app = resource_server(verifier, settings).streamable_http_app(streamable_http_path="/mcp", host=HOST)
        servers: list[uvicorn.Server] = []
        async with anyio.create_task_group() as tg:
            try:
                await _serve(tg, as_app, as_sock, servers)
                await _serve(tg, rs_app, rs_sock, servers)
                yield DemoServers(issuer=issuer, mcp_url=mcp_url, provider=provider, verifier=verifier)
            finally:
                for server in servers:
                    server.should_exit = True
    finally:
        as_sock.close()
        rs_sock.close()
