"""The client credentials grant (RFC 6749 §4.4) for headless gateways, as the MCP extension
`io.modelcontextprotocol/oauth-client-credentials` (SEP-1046) uses it.

A server configured with `oauth.client_credentials` in the catalog gets its access tokens from the
token endpoint directly, no browser and no refresh token: the token manager asks again when the
token nears expiry or is rejected. The client authenticates with

- `client_secret_basic` / `client_secret_post` (RFC 6749 §2.3.1), the secret from the store's
  secrets (`bastion secret set NAME`, named by `client_secret_secret`); or
- `private_key_jwt` (RFC 7523 §2.2, OpenID Connect Core §9): a short-lived JWT signed with the
  PEM private key from the store's secrets (`private_key_secret`), `iss` = `sub` = the client
  id, `aud` = the authorization server's issuer identifier.

https://www.rfc-editor.org/rfc/rfc6749#section-4.4
https://www.rfc-editor.org/rfc/rfc7523#section-2.2
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import httpx2

from bastion.config.catalog import ClientCredentialsSpec
from bastion.errors import RegistrationError, TokenError
from bastion.oauth import netguard, rfc6749
from bastion.oauth.discovery import discover, select_scopes
from bastion.store.models import ClientRegistration, TokenSet

GRANT_TYPE = "client_credentials"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 300
"""Seconds a client assertion is valid: RFC 7523 §3 wants `exp`, and a short one limits replay."""


@dataclass(frozen=True)
class ClientCredentials:
    """One server's client credentials configuration with its secret resolved."""

    server_url: str
    spec: ClientCredentialsSpec
    secret: str = field(repr=False)
    """The client secret, or the PEM private key for private_key_jwt."""
    transport: str = "streamable-http"


ClientCredentialsLookup = Callable[[str], Awaitable[ClientCredentials | None]]
"""Server name → its client credentials, or None for a server that uses the authorization code flow."""


def client_assertion(credentials: ClientCredentials, audience: str, *, now: float) -> str:
    """An RFC 7523 client assertion: iss = sub = client_id, aud, iat, exp, jti."""
    spec = credentials.spec
    claims = {
        "iss": spec.client_id,
        "sub": spec.client_id,
        "aud": audience,
        "iat": int(now),
        "exp": int(now) + ASSERTION_LIFETIME,
        "jti": secrets.token_urlsafe(16),
    }
    import jwt  # lazy: PyJWT + cryptography cost ~80 ms at start, and only private_key_jwt needs them

    try:
        return jwt.encode(claims, credentials.secret, algorithm=spec.signing_alg)
    except (jwt.exceptions.PyJWTError, ValueError, TypeError) as exc:
        # The key itself is never part of the message.
        raise RegistrationError(
            f"cannot sign a client assertion with {spec.signing_alg}: {type(exc).__name__}",
            hint="the private key secret must be a PEM private key matching `signing_alg`",
        ) from None


def authentication(credentials: ClientCredentials, issuer: str, *, now: float) -> tuple[dict[str, str], dict[str, str]]:
    """(form additions, headers) authenticating the client at the token endpoint."""
    spec = credentials.spec
    if spec.token_endpoint_auth_method == "private_key_jwt":
        return {
            "client_id": spec.client_id,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(credentials, issuer, now=now),
        }, {}
    client = ClientRegistration(
        client_id=spec.client_id,
        client_secret=credentials.secret,
        token_endpoint_auth_method=spec.token_endpoint_auth_method,
        source="preregistered",
    )
    return rfc6749.client_authentication(client)


def token_form(scopes: Sequence[str], resource: str | None) -> dict[str, str]:
    form = {"grant_type": GRANT_TYPE}
    if scopes:
        form["scope"] = " ".join(scopes)
    if resource:
        form["resource"] = resource
    return form


async def request_token(
    http: httpx2.AsyncClient,
    credentials: ClientCredentials,
    *,
    issuer: str,
    token_endpoint: str,
    revocation_endpoint: str | None,
    resource: str | None,
    scopes: Sequence[str],
    now: float,
) -> TokenSet:
    """One client credentials token request (§4.4.2) and its response (§4.4.3)."""
    auth_form, headers = authentication(credentials, issuer, now=now)
    try:
        with netguard.serving(credentials.server_url):
            response = await http.post(
                token_endpoint,
                data={**token_form(scopes, resource), **auth_form},
                headers={**headers, "Accept": "application/json"},
            )
    except httpx2.TransportError as exc:
        raise TokenError(
            f"the token endpoint of {issuer}: {netguard.describe(exc, token_endpoint)}", hint="try again later"
        ) from None
    return rfc6749.parse_token_response(
        response.status_code,
        response.content,
        now=now,
        issuer=issuer,
        token_endpoint=token_endpoint,
        revocation_endpoint=revocation_endpoint,
        resource=resource,
        client_id=credentials.spec.client_id,
        requested_scopes=scopes,
    )


async def obtain(
    http: httpx2.AsyncClient,
    credentials: ClientCredentials,
    *,
    previous: TokenSet | None,
    extra_scopes: Sequence[str] = (),
    now: float,
) -> TokenSet:
    """A new token set. With a previous one, its issuer, endpoints, resource and scopes are reused
    (no discovery); otherwise discovery runs first (RFC 9728, RFC 8414)."""
    configured = credentials.spec.scope.split() if credentials.spec.scope else None
    if previous is not None:
        scopes = list(dict.fromkeys([*(configured or previous.scopes), *extra_scopes]))
        return await request_token(
            http,
            credentials,
            issuer=previous.issuer,
            token_endpoint=previous.token_endpoint,
            revocation_endpoint=previous.revocation_endpoint,
            resource=previous.resource,
            scopes=scopes,
            now=now,
        )
    found = await discover(http, credentials.server_url, transport=credentials.transport, require_pkce=False)
    grants = found.metadata.grant_types_supported
    if grants is not None and GRANT_TYPE not in grants:
        raise TokenError(
            f"the authorization server {found.issuer} does not offer the client credentials grant",
            hint="remove `oauth.client_credentials` from the catalog entry and run `bastion oauth authorize`",
        )
    scopes = select_scopes(found, override=configured, extra=extra_scopes, wants_refresh=False)
    return await request_token(
        http,
        credentials,
        issuer=found.issuer,
        token_endpoint=str(found.metadata.token_endpoint),
        revocation_endpoint=str(found.metadata.revocation_endpoint) if found.metadata.revocation_endpoint else None,
        resource=found.resource,
        scopes=scopes,
        now=now,
    )
