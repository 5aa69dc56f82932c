"""An in-process fake of an MCP server and its authorization server, for the edge cases real
peers cannot be made to produce (lying metadata, 500s, malformed headers). Served through
`httpx2.MockTransport`; every knob is a plain attribute a test flips."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2

MCP = "http://127.0.0.1:9/mcp"
ISSUER = "http://127.0.0.1:9/auth"


@dataclass
class World:
    server_url: str = MCP
    issuer: str = ISSUER
    # What the resource server answers.
    www_authenticate: str | None = (
        'Bearer resource_metadata="http://127.0.0.1:9/.well-known/oauth-protected-resource/mcp", scope="mcp:read"'
    )
    open_methods: set[str] = field(default_factory=set)
    """JSON-RPC methods the resource server answers without a token (per-operation authorization)."""
    prm_status: int = 200
    prm_body: bytes | None = None
    prm_resource: str | None = None
    as_status: int = 200
    as_body: bytes | None = None
    as_issuer: str | None = None
    code_challenge_methods: list[str] = field(default_factory=lambda: ["S256"])
    grant_types: list[str] = field(default_factory=lambda: ["authorization_code", "refresh_token"])
    registration_status: int = 201
    registration_error: dict[str, str] | None = None
    token_error: dict[str, str] | None = None
    refresh_error: dict[str, str] | None = None
    access_ttl: int = 3600
    send_iss: bool = True
    # What happened.
    requests: list[httpx2.Request] = field(default_factory=list)
    registrations: list[dict[str, Any]] = field(default_factory=list)
    token_forms: list[dict[str, str]] = field(default_factory=list)
    token_headers: list[dict[str, str]] = field(default_factory=list)
    revoked: list[dict[str, str]] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    refresh_tokens: set[str] = field(default_factory=set)

    def transport(self) -> httpx2.MockTransport:
        return httpx2.MockTransport(self.handle)

    def client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(transport=self.transport())

    # -- the browser side: what the authorization endpoint would redirect to -----------------

    def approve(self, authorization_url: str, *, error: str | None = None, state: str | None = None) -> str:
        """The redirect the authorization server would send the browser to."""
        query = {k: v[0] for k, v in parse_qs(urlsplit(authorization_url).query).items()}
        params: dict[str, str] = {"state": state if state is not None else query["state"]}
        if error:
            params["error"] = error
            params["error_description"] = "The user said no"
        else:
            code = secrets.token_urlsafe(16)
            self.codes[code] = query
            params["code"] = code
        if self.send_iss:
            params["iss"] = self.issuer
        return f"{query['redirect_uri']}?{urlencode(params)}"

    # -- the servers ---------------------------------------------------------------------------

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        path = request.url.path
        if str(request.url).startswith(self.server_url) and request.method == "POST" and path == "/mcp":
            if json.loads(request.content or b"{}").get("method") in self.open_methods:
                return httpx2.Response(200, json={"jsonrpc": "2.0", "id": 0, "result": {}})
            headers = {"WWW-Authenticate": self.www_authenticate} if self.www_authenticate is not None else {}
            return httpx2.Response(401, headers=headers)
        if path.startswith("/.well-known/oauth-protected-resource"):
            if self.prm_status != 200:
                return httpx2.Response(self.prm_status)
            body = (
                self.prm_body
                or json.dumps(
                    {
                        "resource": self.prm_resource or self.server_url,
                        "authorization_servers": [self.issuer],
                        "scopes_supported": ["mcp:read", "mcp:write"],
                    }
                ).encode()
            )
            return httpx2.Response(200, content=body, headers={"Content-Type": "application/json"})
        if path in (
            "/.well-known/oauth-authorization-server/auth",
            "/.well-known/openid-configuration/auth",
            "/auth/.well-known/openid-configuration",
        ):
            if self.as_status != 200:
                return httpx2.Response(self.as_status)
            body = self.as_body or json.dumps(self.metadata()).encode()
            return httpx2.Response(200, content=body, headers={"Content-Type": "application/json"})
        if path == "/auth/register" and request.method == "POST":
            if self.registration_error is not None:
                return httpx2.Response(self.registration_status, json=self.registration_error)
            doc = json.loads(request.content)
            self.registrations.append(doc)
            return httpx2.Response(201, json={**doc, "client_id": f"client-{len(self.registrations)}"})
        if path == "/auth/token" and request.method == "POST":
            return self._token(request)
        if path == "/auth/revoke" and request.method == "POST":
            self.revoked.append({k: v[0] for k, v in parse_qs(request.content.decode()).items()})
            return httpx2.Response(200)
        return httpx2.Response(404)

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.as_issuer or self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "registration_endpoint": f"{self.issuer}/register",
            "revocation_endpoint": f"{self.issuer}/revoke",
            "response_types_supported": ["code"],
            "grant_types_supported": self.grant_types,
            "code_challenge_methods_supported": self.code_challenge_methods,
            "token_endpoint_auth_methods_supported": ["none", "client_secret_basic"],
            "scopes_supported": ["mcp:read", "mcp:write", "offline_access"],
            "authorization_response_iss_parameter_supported": True,
        }

    def _token(self, request: httpx2.Request) -> httpx2.Response:
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        self.token_forms.append(form)
        self.token_headers.append(dict(request.headers))
        if form.get("grant_type") == "client_credentials":
            if self.token_error is not None:
                return httpx2.Response(401, json=self.token_error)
            return self._issue(form.get("scope", ""), refresh=False)
        if form.get("grant_type") == "refresh_token":
            if self.refresh_error is not None:
                return httpx2.Response(400, json=self.refresh_error)
            if form.get("refresh_token") not in self.refresh_tokens:
                return httpx2.Response(400, json={"error": "invalid_grant", "error_description": "spent"})
            self.refresh_tokens.discard(form["refresh_token"])
            return self._issue(form.get("scope") or "mcp:read")
        if self.token_error is not None:
            return httpx2.Response(400, json=self.token_error)
        query = self.codes.pop(form.get("code", ""), None)
        if query is None:
            return httpx2.Response(400, json={"error": "invalid_grant"})
        return self._issue(query.get("scope", ""))

    def _issue(self, scope: str, *, refresh: bool = True) -> httpx2.Response:
        access = f"at-{secrets.token_urlsafe(12)}"
        self.issued.append(access)
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.access_ttl,
            "scope": scope,
            "issued": time.time(),
        }
        if refresh:
            body["refresh_token"] = f"rt-{secrets.token_urlsafe(12)}"
            self.refresh_tokens.add(body["refresh_token"])
        return httpx2.Response(200, json=body)
