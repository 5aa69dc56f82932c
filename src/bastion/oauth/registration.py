"""Client registration, in the order the MCP spec prefers:

1. pre-registered credentials (`bastion oauth client set`);
2. a client ID metadata document URL, when configured and the server advertises
   `client_id_metadata_document_supported`;
3. RFC 7591 Dynamic Client Registration, only when the `oauth-dcr` feature is on.

Registrations are keyed by server and issuer: a different issuer, a changed redirect URI or an
expired client secret means register again (and so does `invalid_client`, see `flow`).

A pre-registered client set without `--issuer` is pinned to the issuer of its first successful
authorization (`pin_issuer`); from then on it is never used with another authorization server, so
its secret and the codes issued to it never reach another server's token endpoint.

Redirect URIs (`redirect_uri_for`): a dynamically registered client gets the per-issuer redirect URI
(`rfc9207.issuer_redirect_uri`, the RFC 9700 §4.4.2 mix-up defence), since Bastion registers it
itself. A pre-registered or CIMD client keeps the base callback URI (`http://127.0.0.1:PORT/callback`):
its redirect URIs were registered by a person or published in a document Bastion cannot change. Such
a client belongs to one issuer, and no dynamically registered flow ever waits on the base path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import httpx2

from bastion.errors import RegistrationError
from bastion.oauth import netguard, rfc7591, rfc9207
from bastion.oauth.discovery import Discovery
from bastion.store.models import ClientRegistration, TokenSet

logger = logging.getLogger(__name__)


def reusable(client: ClientRegistration | None, *, issuer: str, redirect_uri: str, now: float) -> bool:
    """May `client` be used for this issuer and redirect URI?"""
    if client is None:
        return False
    if client.source == "preregistered":
        return client.issuer is None or client.issuer == issuer
    if client.issuer != issuer:
        return False
    if client.source == "dcr" and redirect_uri not in client.redirect_uris:
        return False
    expires = client.client_secret_expires_at
    return not (expires and expires <= now)


def pin_issuer(client: ClientRegistration, issuer: str) -> ClientRegistration:
    """`client` bound to `issuer` if it names none yet (a pre-registered client after its first
    successful authorization there); unchanged otherwise."""
    return client if client.issuer is not None else client.model_copy(update={"issuer": issuer})


def pinned(client: ClientRegistration | None, tokens: TokenSet | None) -> ClientRegistration | None:
    """A stored client as pinned as what is known: a pre-registered client without an issuer that
    already holds tokens from an issuer (stored before Bastion pinned) belongs to that issuer."""
    if client is None or client.issuer is not None or tokens is None or tokens.client_id != client.client_id:
        return client
    return pin_issuer(client, tokens.issuer)


def redirect_uri_for(client: ClientRegistration, callback: str) -> str:
    """The redirect URI of a flow with `client` (see the module docstring)."""
    if client.source == "dcr" and client.issuer is not None:
        return rfc9207.issuer_redirect_uri(callback, client.issuer)
    return callback


def client_id_metadata_client(document_url: str, *, issuer: str, redirect_uri: str) -> ClientRegistration:
    """A CIMD client: the document's https URL is the client_id (no registration request)."""
    return ClientRegistration(
        client_id=document_url,
        token_endpoint_auth_method="none",
        redirect_uris=[redirect_uri],
        issuer=issuer,
        source="cimd",
    )


MAX_REDIRECT_URIS = 4
"""A new registration keeps up to this many redirect URIs of the one it replaces, so switching
between the CLI's loopback callback and the web page's callback does not register every time."""


async def register(
    http: httpx2.AsyncClient,
    discovery: Discovery,
    *,
    server_name: str,
    redirect_uri: str,
    scopes: Sequence[str],
    keep_redirect_uris: Sequence[str] = (),
) -> ClientRegistration:
    """RFC 7591 §3: POST the client metadata to the registration endpoint."""
    redirect_uris = [redirect_uri, *[u for u in keep_redirect_uris if u != redirect_uri]][:MAX_REDIRECT_URIS]
    endpoint = discovery.metadata.registration_endpoint
    if not endpoint:
        raise RegistrationError(
            f"the authorization server {discovery.issuer} does not offer dynamic client registration",
            hint=f"register a client with the provider, then `bastion oauth client set {server_name} --client-id ID`",
        )
    request = rfc7591.build_registration_request(
        server_name=server_name,
        redirect_uris=redirect_uris,
        scopes=scopes,
        token_endpoint_auth_methods_supported=discovery.metadata.token_endpoint_auth_methods_supported,
    )
    try:
        with netguard.serving(discovery.server_url):
            response = await http.post(
                str(endpoint),
                json=request.model_dump(mode="json", exclude_none=True),
                headers={"Accept": "application/json"},
            )
    except httpx2.TransportError as exc:
        raise RegistrationError(
            f"the registration endpoint of {discovery.issuer}: {netguard.describe(exc, str(endpoint))}",
            hint="check your network and try again; if it repeats, report it to the server's operator",
        ) from None
    client = rfc7591.parse_registration_response(
        response.status_code, response.content, issuer=discovery.issuer, redirect_uris=redirect_uris
    )
    logger.info("registered client for %s at %s", server_name, discovery.issuer)
    return client


async def ensure_client(
    http: httpx2.AsyncClient,
    discovery: Discovery,
    existing: ClientRegistration | None,
    *,
    server_name: str,
    callback: str,
    scopes: Sequence[str],
    dcr_enabled: bool,
    client_id_metadata_document: str | None,
) -> ClientRegistration:
    """The client to authorize with: reuse, CIMD, or register (in that order). `callback` is the
    base redirect URI; a registration gets this issuer's own redirect URI below it."""
    redirect_uri = rfc9207.issuer_redirect_uri(callback, discovery.issuer)
    if reusable(existing, issuer=discovery.issuer, redirect_uri=redirect_uri, now=time.time()):
        assert existing is not None
        return existing
    if existing is not None and existing.source == "preregistered":
        raise RegistrationError(
            f"the pre-registered client of {server_name} belongs to {existing.issuer}, "
            f"but the server now uses {discovery.issuer}",
            hint=f"run `bastion oauth client set {server_name} --client-id ID --issuer {discovery.issuer}`",
        )
    if client_id_metadata_document and discovery.metadata.client_id_metadata_document_supported:
        return client_id_metadata_client(client_id_metadata_document, issuer=discovery.issuer, redirect_uri=callback)
    if not dcr_enabled:
        raise RegistrationError(
            f"{server_name} has no pre-registered OAuth client and dynamic registration (oauth-dcr) is off",
            hint=(
                f"register a client with the provider and run `bastion oauth client set {server_name} "
                "--client-id ID [--client-secret SECRET]`, or `bastion feature enable oauth-dcr`"
            ),
        )
    keep = existing.redirect_uris if existing is not None and existing.issuer == discovery.issuer else []
    return await register(
        http, discovery, server_name=server_name, redirect_uri=redirect_uri, scopes=scopes, keep_redirect_uris=keep
    )
