"""RFC 8414 — OAuth 2.0 Authorization Server Metadata: the document (§2), where to find it
(§3.1, and §5 for the OpenID Connect form), and the `issuer` check (§3.3).

https://www.rfc-editor.org/rfc/rfc8414
https://openid.net/specs/openid-connect-discovery-1_0.html#ProviderConfig

Also the 2025-03-26 MCP fallback for servers without metadata:
https://modelcontextprotocol.io/specification/2025-03-26/basic/authorization#2-3-3-fallbacks-for-servers-without-metadata-discovery
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError

from bastion.errors import DiscoveryError, IssuerMismatchError, PKCEUnsupportedError
from bastion.oauth._metadata import describe_validation_error
from bastion.oauth.endpoint_security import url_for_message

__all__ = [
    "AuthorizationServerMetadata",
    "authorization_server_metadata_urls",
    "legacy_default_metadata",
    "parse_authorization_server_metadata",
    "require_s256",
    "validate_issuer",
]

OAUTH_WELL_KNOWN = "/.well-known/oauth-authorization-server"
OIDC_WELL_KNOWN = "/.well-known/openid-configuration"


class AuthorizationServerMetadata(BaseModel):
    """Authorization server metadata (RFC 8414 §2; OpenID Connect Discovery 1.0 §3 members are
    kept as extras). URLs are plain `str`: `issuer` is compared as a string (§3.3).

    `issuer` and `token_endpoint` are required (RFC 8414 §2: the token endpoint is required
    unless only the implicit grant is supported, which OAuth 2.1 removed).
    `authorization_endpoint` is optional here because a client-credentials-only server need
    not have one; the authorization code flow must check it. `response_types_supported` is
    required by the RFC but often missing in the wild, so it is optional too.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    issuer: str
    authorization_endpoint: str | None = None
    token_endpoint: str
    jwks_uri: str | None = None
    registration_endpoint: str | None = None
    scopes_supported: list[str] | None = None
    response_types_supported: list[str] | None = None
    response_modes_supported: list[str] | None = None
    grant_types_supported: list[str] | None = None
    token_endpoint_auth_methods_supported: list[str] | None = None
    token_endpoint_auth_signing_alg_values_supported: list[str] | None = None
    service_documentation: str | None = None
    ui_locales_supported: list[str] | None = None
    op_policy_uri: str | None = None
    op_tos_uri: str | None = None
    revocation_endpoint: str | None = None
    revocation_endpoint_auth_methods_supported: list[str] | None = None
    revocation_endpoint_auth_signing_alg_values_supported: list[str] | None = None
    introspection_endpoint: str | None = None
    introspection_endpoint_auth_methods_supported: list[str] | None = None
    introspection_endpoint_auth_signing_alg_values_supported: list[str] | None = None
    code_challenge_methods_supported: list[str] | None = None
    signed_metadata: str | None = None
    authorization_response_iss_parameter_supported: bool = False
    """RFC 9207 §3: the authorization response carries `iss`."""
    client_id_metadata_document_supported: bool = False
    """draft-ietf-oauth-client-id-metadata-document: a URL may be used as `client_id`."""


def authorization_server_metadata_urls(issuer: str) -> list[str]:
    """Where to look for the metadata of `issuer`, in order (MCP 2025-06-18 "Authorization
    Server Metadata Discovery"):

    - issuer with a path (`https://as/tenant1`): RFC 8414 §3.1 insertion
      `https://as/.well-known/oauth-authorization-server/tenant1`, the same insertion of
      `openid-configuration` (RFC 8414 §5), then OpenID Connect Discovery's appended form
      `https://as/tenant1/.well-known/openid-configuration`;
    - issuer without a path: `https://as/.well-known/oauth-authorization-server`, then
      `https://as/.well-known/openid-configuration`.

    One trailing slash of the path is removed before insertion (§3.1: "any terminating `/`").
    """
    parts = urlsplit(issuer)
    origin = f"{parts.scheme}://{parts.netloc}"
    path = parts.path[:-1] if parts.path.endswith("/") else parts.path
    if not path:
        return [f"{origin}{OAUTH_WELL_KNOWN}", f"{origin}{OIDC_WELL_KNOWN}"]
    urls = [f"{origin}{OAUTH_WELL_KNOWN}{path}", f"{origin}{OIDC_WELL_KNOWN}{path}", f"{origin}{path}{OIDC_WELL_KNOWN}"]
    return list(dict.fromkeys(urls))


def parse_authorization_server_metadata(body: bytes, url: str) -> AuthorizationServerMetadata:
    """The metadata document fetched from `url`. Raises DiscoveryError naming `url` when the
    body is not a JSON object with `issuer`, `token_endpoint` and well-typed members."""
    try:
        return AuthorizationServerMetadata.model_validate_json(body)
    except ValidationError as exc:
        raise DiscoveryError(
            f"authorization server metadata at {url_for_message(url)} {describe_validation_error(exc)}",
            hint="the authorization server publishes broken metadata; report it to the server's operator",
        ) from None


def validate_issuer(metadata: AuthorizationServerMetadata, issuer: str) -> None:
    """RFC 8414 §3.3: the metadata's `issuer` must be identical to the issuer whose well-known
    URL was fetched (exact string comparison, no normalisation). Raises IssuerMismatchError."""
    if metadata.issuer != issuer:
        raise IssuerMismatchError(
            f"authorization server metadata names issuer {metadata.issuer!r}, but it was fetched for "
            f"issuer {issuer!r}; the server may be misconfigured or an impersonation, so Bastion does not continue",
            hint="report it to the server's operator",
        )


def require_s256(metadata: AuthorizationServerMetadata) -> None:
    """MCP requires PKCE with S256 (RFC 7636 §4.2); a server that does not list it in
    `code_challenge_methods_supported` (RFC 8414 §2) is refused. Raises PKCEUnsupportedError."""
    if "S256" not in (metadata.code_challenge_methods_supported or []):
        raise PKCEUnsupportedError(
            f"authorization server {metadata.issuer!r} does not advertise PKCE S256 in "
            "code_challenge_methods_supported, so Bastion refuses to authorize with it",
            hint="the MCP authorization spec requires S256; report it to the server's operator",
        )


def legacy_default_metadata(origin: str) -> AuthorizationServerMetadata:
    """The 2025-03-26 MCP fallback for a server without metadata: `/authorize`, `/token` and
    `/register` at the MCP server's origin (any path of `origin` is ignored), S256 assumed."""
    parts = urlsplit(origin)
    base = f"{parts.scheme}://{parts.netloc}"
    return AuthorizationServerMetadata(
        issuer=base,
        authorization_endpoint=f"{base}/authorize",
        token_endpoint=f"{base}/token",
        registration_endpoint=f"{base}/register",
        response_types_supported=["code"],
        grant_types_supported=["authorization_code", "refresh_token"],
        code_challenge_methods_supported=["S256"],
    )
