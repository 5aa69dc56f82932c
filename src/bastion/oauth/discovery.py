"""Discovery, as the MCP authorization spec numbers it (2025-06-18, 2025-11-25, 2026-07-28).

1. Probe the server without a token; parse every WWW-Authenticate challenge of the 401.
2. Protected resource metadata (RFC 9728): the challenge's `resource_metadata`, then the
   path-aware and root well-known URLs. Its `resource` must match the server.
   No metadata at all (the 2025-03-26 revision): the server's origin is the issuer.
3. Authorization server metadata (RFC 8414, then the OpenID Connect forms); `issuer` must
   equal the issuer used, exactly.
4. S256 must be advertised (the 2025-03-26 default endpoints assume it).
5. Every endpoint passes `check_endpoint` (https, or loopback http for a loopback server).

All of it is one operation for the server (`netguard.serving`): with Bastion's client, every
address is checked against the server's own before a connection is made, each name is resolved
once, each response is capped at 1 MiB and the whole discovery ends within `DEADLINE` seconds.
A discovered URL that does not answer gets one message, "could not reach <origin>", whether the
port is closed, filtered or slow.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

import anyio
import httpx2

from bastion.errors import DiscoveryError, InsecureEndpointError
from bastion.oauth import netguard, rfc6750, rfc8414, rfc8707, rfc9728
from bastion.oauth.endpoint_security import check_endpoint
from bastion.oauth.rfc8414 import AuthorizationServerMetadata
from bastion.oauth.rfc9728 import ProtectedResourceMetadata

logger = logging.getLogger(__name__)

MCP_PROTOCOL_VERSION = "2025-11-25"
DEADLINE = 60.0
"""Seconds for a whole discovery (up to about seven requests, each also bounded on its own)."""

_PROBE_BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": MCP_PROTOCOL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "bastion", "version": "0.1.0"},
        },
    }
).encode()
_OPERATION_PROBE_BODY = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}).encode()
"""A server may authorize per operation and let `initialize` through (the spec's step-up example
does); its first 401, and the `scope` the client must start from, then come with an operation."""


@dataclass(frozen=True)
class Discovery:
    """What discovery learned about one MCP server and its authorization server."""

    server_url: str
    issuer: str
    metadata: AuthorizationServerMetadata
    resource_metadata: ProtectedResourceMetadata | None = None
    challenge: rfc6750.Challenge | None = None
    legacy: bool = False
    """True for the 2025-03-26 fallback (no protected resource metadata)."""
    resource: str | None = None
    """The RFC 8707 `resource` to send, or None when the server predates resource indicators."""
    challenge_scopes: list[str] = field(default_factory=list)


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _where(url: str) -> str:
    """A URL fit for messages: no query string (it could carry anything)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


async def probe(
    http: httpx2.AsyncClient, server_url: str, *, transport: str = "streamable-http"
) -> list[rfc6750.Challenge]:
    """Step 1: an unauthenticated request; the challenges of a 401/403, else [].

    Streamable HTTP: `initialize`, then, when that is let through, `tools/list` (an operation)."""
    try:
        if transport == "sse":
            async with http.stream("GET", server_url, headers={"Accept": "text/event-stream"}) as response:
                status, headers = response.status_code, response.headers
        else:
            for body in (_PROBE_BODY, _OPERATION_PROBE_BODY):
                response = await http.post(
                    server_url,
                    content=body,
                    headers={
                        "Content-Type": "application/json",
                        "Accept": "application/json, text/event-stream",
                        "MCP-Protocol-Version": MCP_PROTOCOL_VERSION,
                    },
                )
                status, headers = response.status_code, response.headers
                if status in (401, 403):
                    break
    except httpx2.TransportError as exc:
        said = str(exc) if isinstance(exc, netguard.GuardError) else type(exc).__name__
        raise DiscoveryError(
            f"cannot reach the MCP server at {_where(server_url)}: {said}",
            hint="check the URL and that the server is running",
        ) from None
    if status not in (401, 403):
        logger.debug("probe of %s answered %s; continuing with well-known discovery", _where(server_url), status)
        return []
    challenges = rfc6750.parse_www_authenticate_headers(headers.get_list("www-authenticate"))
    if not challenges:
        logger.debug("probe of %s: 401 without a usable WWW-Authenticate; using well-known URLs", _where(server_url))
    return challenges


_REFUSED_HINT = "check the server's metadata, or report it to the server's operator"


async def _get_json(http: httpx2.AsyncClient, url: str, *, what: str) -> tuple[int, bytes]:
    try:
        response = await http.get(
            url, headers={"Accept": "application/json", "MCP-Protocol-Version": MCP_PROTOCOL_VERSION}
        )
    except netguard.AddressRefused as exc:
        raise InsecureEndpointError(f"{what}: {exc}", hint=_REFUSED_HINT) from None
    except netguard.ResponseTooLarge as exc:
        raise DiscoveryError(f"{what}: {exc}", hint=_REFUSED_HINT) from None
    except httpx2.TransportError as exc:
        # One message for a closed port, a filtered one and a slow one: a discovered URL must not
        # turn Bastion into a port scanner for whoever wrote the metadata.
        raise DiscoveryError(
            f"{what}: {netguard.describe(exc, url)}", hint="is the server reachable? try again later"
        ) from None
    return response.status_code, response.content


M = TypeVar("M")


async def _first_metadata(
    http: httpx2.AsyncClient,
    urls: Sequence[str],
    server_url: str,
    *,
    what: str,
    parse: Callable[[bytes, str], M],
    validate: Callable[[M], None],
) -> M | None:
    """The first document among `urls` that answers 200, parsed and validated. 404s (and other
    4xx) fall through to the next URL; 5xx answers are reported when nothing is found."""
    failures: list[str] = []
    for url in urls:
        check_endpoint(url, server_url, what=what)
        status, body = await _get_json(http, url, what=what)
        if status == 200:
            metadata = parse(body, url)
            validate(metadata)
            return metadata
        if status >= 500:
            failures.append(f"{_where(url)} answered {status}")
        logger.debug("no %s at %s (%s)", what, _where(url), status)
    if failures:
        raise DiscoveryError(f"{what} unavailable: " + "; ".join(failures), hint="the server failed; try again later")
    return None


async def fetch_resource_metadata(
    http: httpx2.AsyncClient, server_url: str, header_url: str | None
) -> ProtectedResourceMetadata | None:
    """Step 2: the first protected resource metadata found, validated; None if there is none."""
    return await _first_metadata(
        http,
        rfc9728.protected_resource_metadata_urls(server_url, header_url),
        server_url,
        what="protected resource metadata",
        parse=rfc9728.parse_protected_resource_metadata,
        validate=lambda metadata: rfc9728.validate_resource(metadata, server_url),
    )


async def fetch_authorization_server_metadata(
    http: httpx2.AsyncClient, issuer: str, server_url: str
) -> AuthorizationServerMetadata | None:
    """Step 3: the first authorization server metadata found, with `issuer` checked; None if none."""
    return await _first_metadata(
        http,
        rfc8414.authorization_server_metadata_urls(issuer),
        server_url,
        what="authorization server metadata",
        parse=rfc8414.parse_authorization_server_metadata,
        validate=lambda metadata: rfc8414.validate_issuer(metadata, issuer),
    )


def _check_endpoints(metadata: AuthorizationServerMetadata, server_url: str) -> None:
    """Step 5."""
    for what in ("authorization_endpoint", "token_endpoint", "registration_endpoint", "revocation_endpoint"):
        value = getattr(metadata, what, None)
        if value:
            check_endpoint(str(value), server_url, what=what)


def select_resource(server_url: str, resource_metadata: ProtectedResourceMetadata | None) -> str | None:
    """RFC 8707 `resource`: the metadata's resource when it covers the server (it was validated),
    else the canonical server URL. Servers without protected resource metadata (2025-03-26)
    predate resource indicators: none is sent to them."""
    if resource_metadata is None:
        return None
    if rfc8707.resource_matches(resource_metadata.resource, server_url):
        return resource_metadata.resource
    return rfc8707.canonical_resource(server_url)


async def discover(
    http: httpx2.AsyncClient,
    server_url: str,
    *,
    transport: str = "streamable-http",
    require_pkce: bool = True,
    deadline: float = DEADLINE,
) -> Discovery:
    """Steps 1–5. Raises a `DiscoveryError` subclass that says what went wrong and what to do.
    `require_pkce=False` skips step 4, for grants without an authorization request (client credentials)."""
    try:
        with anyio.fail_after(deadline), netguard.serving(server_url):
            return await _discover(http, server_url, transport=transport, require_pkce=require_pkce)
    except TimeoutError:
        raise DiscoveryError(
            f"discovery for {_where(server_url)} did not finish within {deadline:g} seconds",
            hint="the server or its authorization server answers too slowly; try again later",
        ) from None


async def _discover(http: httpx2.AsyncClient, server_url: str, *, transport: str, require_pkce: bool) -> Discovery:
    challenges = await probe(http, server_url, transport=transport)
    challenge = rfc6750.bearer_challenge(challenges)
    header_url = challenge.resource_metadata if challenge is not None else None

    resource_metadata = await fetch_resource_metadata(http, server_url, header_url)
    legacy = resource_metadata is None
    if resource_metadata is not None:
        if not resource_metadata.authorization_servers:
            raise DiscoveryError(
                f"the protected resource metadata of {_where(server_url)} names no authorization server",
                hint="the server is misconfigured; contact its operator",
            )
        issuer = resource_metadata.authorization_servers[0]
    else:
        issuer = origin_of(server_url)
    check_endpoint(issuer, server_url, what="issuer")

    metadata = await fetch_authorization_server_metadata(http, issuer, server_url)
    if metadata is None:
        if not legacy:
            raise DiscoveryError(
                f"no authorization server metadata for issuer {issuer}",
                hint="the issuer serves neither RFC 8414 nor OpenID Connect discovery",
            )
        metadata = rfc8414.legacy_default_metadata(issuer)
    elif require_pkce:
        rfc8414.require_s256(metadata)
    _check_endpoints(metadata, server_url)

    return Discovery(
        server_url=server_url,
        issuer=issuer,
        metadata=metadata,
        resource_metadata=resource_metadata,
        challenge=challenge,
        legacy=legacy,
        resource=select_resource(server_url, resource_metadata),
        challenge_scopes=list(challenge.scope) if challenge is not None else [],
    )


def select_scopes(
    discovery: Discovery,
    *,
    override: Sequence[str] | None,
    extra: Sequence[str] = (),
    configured: Sequence[str] | None = None,
    wants_refresh: bool = True,
) -> list[str]:
    """Scope to request: `--scopes`, else the challenge's `scope`, else the resource's
    `scopes_supported`, else the catalog's; plus `extra` (step-up union). `offline_access` is
    added only when the authorization server lists it."""
    if override is not None:
        chosen = list(override)
    elif discovery.challenge_scopes:
        chosen = list(discovery.challenge_scopes)
    elif discovery.resource_metadata is not None and discovery.resource_metadata.scopes_supported:
        chosen = list(discovery.resource_metadata.scopes_supported)
    elif configured:
        chosen = list(configured)
    else:
        chosen = []
    for scope in extra:
        if scope not in chosen:
            chosen.append(scope)
    supported = discovery.metadata.scopes_supported or []
    if (
        override is None
        and chosen
        and wants_refresh
        and "offline_access" in supported
        and "offline_access" not in chosen
    ):
        chosen.append("offline_access")
    return chosen
