"""RFC 9728 — OAuth 2.0 Protected Resource Metadata: the document (§2), where to find it
(§3.1, and §5.1 `resource_metadata` in WWW-Authenticate) and the `resource` check (§3.3).

https://www.rfc-editor.org/rfc/rfc9728

The discovery order is the MCP authorization spec's (2025-06-18 and later): the URL from the
401's WWW-Authenticate header, then the path-aware well-known URL, then the root one.
"""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bastion.errors import DiscoveryError, ResourceMismatchError
from bastion.oauth._metadata import describe_validation_error
from bastion.oauth.endpoint_security import url_for_message
from bastion.oauth.rfc8707 import resource_matches

__all__ = [
    "WELL_KNOWN_PATH",
    "ProtectedResourceMetadata",
    "parse_protected_resource_metadata",
    "protected_resource_metadata_urls",
    "validate_resource",
]

WELL_KNOWN_PATH = "/.well-known/oauth-protected-resource"


class ProtectedResourceMetadata(BaseModel):
    """Protected resource metadata (RFC 9728 §2). URLs are kept as sent (plain `str`), since
    `resource` is compared as a string; unknown members are kept too."""

    model_config = ConfigDict(extra="allow", frozen=True)

    resource: str
    authorization_servers: list[str] = Field(default_factory=list)
    jwks_uri: str | None = None
    scopes_supported: list[str] | None = None
    bearer_methods_supported: list[str] | None = None
    resource_signing_alg_values_supported: list[str] | None = None
    resource_name: str | None = None
    resource_documentation: str | None = None
    resource_policy_uri: str | None = None
    resource_tos_uri: str | None = None
    tls_client_certificate_bound_access_tokens: bool | None = None
    authorization_details_types_supported: list[str] | None = None
    dpop_signing_alg_values_supported: list[str] | None = None
    dpop_bound_access_tokens_required: bool | None = None
    signed_metadata: str | None = None


def protected_resource_metadata_urls(server_url: str, header_url: str | None) -> list[str]:
    """Where to look for the metadata of the MCP server at `server_url`, in order, without
    duplicates:

    1. `header_url`, the `resource_metadata` of the 401's WWW-Authenticate (RFC 9728 §5.1),
       resolved against `server_url` if a server sent a relative one;
    2. the path-aware well-known URL (§3.1): `/.well-known/oauth-protected-resource` inserted
       between the origin and the path (and query) of `server_url`, when there is a path other
       than `/` or a query; for a path ending in `/`, the form without that slash follows;
    3. the well-known URL at the origin.
    """
    urls: list[str] = []
    if header_url:
        urls.append(urljoin(server_url, header_url))
    parts = urlsplit(server_url)
    origin = f"{parts.scheme}://{parts.netloc}"
    query = f"?{parts.query}" if parts.query else ""
    path = "" if parts.path == "/" else parts.path
    if path or query:
        urls.append(f"{origin}{WELL_KNOWN_PATH}{path}{query}")
        if path.endswith("/"):
            urls.append(f"{origin}{WELL_KNOWN_PATH}{path.rstrip('/')}{query}")
    urls.append(f"{origin}{WELL_KNOWN_PATH}")
    return list(dict.fromkeys(urls))


def parse_protected_resource_metadata(body: bytes, url: str) -> ProtectedResourceMetadata:
    """The metadata document fetched from `url`. Raises DiscoveryError naming `url` when the
    body is not a JSON object with a string `resource` and well-typed members."""
    try:
        return ProtectedResourceMetadata.model_validate_json(body)
    except ValidationError as exc:
        raise DiscoveryError(
            f"protected resource metadata at {url_for_message(url)} {describe_validation_error(exc)}",
            hint="the MCP server publishes broken OAuth metadata; report it to the server's operator",
        ) from None


def validate_resource(metadata: ProtectedResourceMetadata, server_url: str) -> None:
    """RFC 9728 §3.3: the metadata's `resource` must be the MCP server's URL (or a parent of it
    at a path-segment boundary, see `rfc8707.resource_matches`). Raises ResourceMismatchError."""
    if not resource_matches(metadata.resource, server_url):
        raise ResourceMismatchError(
            f"protected resource metadata names resource {url_for_message(metadata.resource)}, "
            f"but the MCP server is {url_for_message(server_url)}; the server may be misconfigured "
            "or lying, so Bastion does not continue",
            hint="check the server URL in the catalog, or report it to the server's operator",
        )
