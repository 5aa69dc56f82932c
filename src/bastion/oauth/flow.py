"""The authorization code flow with PKCE, split in two halves so the CLI's loopback listener
and the web page's own route can both complete it:

1. `begin`: discovery → client (reuse / CIMD / DCR) → its redirect URI (this issuer's own path
   below the callback for a registered client, RFC 9700 §4.4.2) → PKCE S256 + single-use `state`
   → authorization URL (with `resource`, RFC 8707).
2. `complete`: check `state`, the path the response arrived on (the issuer's own), the callback's
   `error`, `iss` (RFC 9207) → exchange the code (with `resource` and the verifier) → store the
   token set; a pre-registered client without an issuer is pinned to this one.

`authorize` runs both around a `LoopbackCallback` and a `UserAgent`.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import httpx2

from bastion.errors import AuthorizationError, CallbackTimeout, InvalidGrantError, StateMismatchError, TokenError
from bastion.oauth import netguard, rfc6749, rfc7636, rfc8707, rfc9207
from bastion.oauth.callback import AuthorizationResponse, LoopbackCallback
from bastion.oauth.discovery import Discovery, discover, select_scopes
from bastion.oauth.registration import ensure_client, pin_issuer, pinned, redirect_uri_for
from bastion.oauth.useragent import UserAgent
from bastion.store.base import Store
from bastion.store.models import ClientRegistration, ProviderRecord, TokenSet

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]


def _silent(_: str) -> None:
    return None


@dataclass(frozen=True)
class FlowOptions:
    server_name: str
    server_url: str
    transport: str = "streamable-http"
    scopes: Sequence[str] | None = None
    """`--scopes`: overrides every other source."""
    configured_scopes: Sequence[str] | None = None
    """The catalog's `oauth.scopes`, used when the server says nothing."""
    dcr_enabled: bool = True
    client_id_metadata_document: str | None = None


@dataclass(frozen=True)
class PendingAuthorization:
    """Everything `complete` needs; lives only in memory, never stored."""

    options: FlowOptions
    discovery: Discovery
    client: ClientRegistration
    redirect_uri: str
    state: str
    pkce: rfc7636.PKCE = field(repr=False)
    scopes: list[str]
    url: str
    created_at: float


async def begin(
    http: httpx2.AsyncClient,
    store: Store,
    options: FlowOptions,
    *,
    callback: str,
    progress: Progress = _silent,
) -> PendingAuthorization:
    """Start an authorization; `callback` is the base redirect URI of the caller's listener, which
    must answer every path below it (the flow's redirect URI is `PendingAuthorization.redirect_uri`)."""
    progress(f"Discovering the authorization server of {options.server_url}")
    discovery = await discover(http, options.server_url, transport=options.transport)
    progress(f"Authorization server: {discovery.issuer}")
    record = await store.get(options.server_name)
    extra = list(record.requested_scopes) if record is not None else []
    scopes = select_scopes(discovery, override=options.scopes, extra=extra, configured=options.configured_scopes)
    client = await ensure_client(
        http,
        discovery,
        pinned(record.client, record.tokens) if record is not None else None,
        server_name=options.server_name,
        callback=callback,
        scopes=scopes,
        dcr_enabled=options.dcr_enabled,
        client_id_metadata_document=options.client_id_metadata_document,
    )
    if record is None or record.client != client:
        await _save_client(store, options, client)
        progress(f"Client registered ({client.source}): {client.client_id}")
    if not discovery.metadata.authorization_endpoint:
        raise AuthorizationError(
            f"the authorization server {discovery.issuer} has no authorization endpoint",
            hint="it may only support machine-to-machine grants; configure client credentials for this server",
        )
    redirect_uri = redirect_uri_for(client, callback)
    pkce = rfc7636.generate_pkce()
    state = secrets.token_urlsafe(32)
    extra_params = {"prompt": "consent"} if "offline_access" in scopes else None
    url = rfc6749.build_authorization_url(
        str(discovery.metadata.authorization_endpoint),
        client_id=client.client_id,
        redirect_uri=redirect_uri,
        state=state,
        code_challenge=pkce.challenge,
        scopes=scopes,
        resource=discovery.resource,
        extra=extra_params,
    )
    return PendingAuthorization(
        options=options,
        discovery=discovery,
        client=client,
        redirect_uri=redirect_uri,
        state=state,
        pkce=pkce,
        scopes=scopes,
        url=url,
        created_at=time.time(),
    )


async def _save_client(store: Store, options: FlowOptions, client: ClientRegistration) -> None:
    async with store.lock(options.server_name):
        record = await store.get(options.server_name)
        if record is None:
            record = ProviderRecord(server=options.server_name, resource_url=options.server_url)
        tokens = record.tokens if record.client is not None and record.client.client_id == client.client_id else None
        await store.put(record.model_copy(update={"client": client, "tokens": tokens}))


def check_callback(pending: PendingAuthorization, params: Mapping[str, str], path: str) -> str:
    """Validate the authorization response that arrived on `path` (RFC 6749 §4.1.2, RFC 9700
    §4.4.2, RFC 9207); return the code."""
    received_state = params.get("state")
    if received_state is None or not secrets.compare_digest(received_state.encode(), pending.state.encode()):
        raise StateMismatchError(
            "the authorization response does not belong to this request (state mismatch)",
            hint="start again with `bastion oauth authorize`; if it repeats, someone may be tampering",
        )
    rfc9207.check_redirect_path(path, pending.redirect_uri, pending.discovery.issuer)
    advertised = bool(pending.discovery.metadata.authorization_response_iss_parameter_supported)
    rfc9207.check_iss(params.get("iss"), pending.discovery.issuer, advertised)
    if "error" in params:
        error = params["error"]
        description = params.get("error_description")
        said = f"{error}: {description}" if description else error
        raise AuthorizationError(
            f"the authorization server refused: {said}",
            error=error,
            error_description=description,
            error_uri=params.get("error_uri"),
            hint=f"run `bastion oauth authorize {pending.options.server_name}` to try again",
        )
    code = params.get("code")
    if not code:
        raise AuthorizationError("the authorization response carried no code", hint="try again")
    return code


async def exchange_code(http: httpx2.AsyncClient, pending: PendingAuthorization, code: str) -> TokenSet:
    metadata = pending.discovery.metadata
    if pending.client.issuer not in (None, pending.discovery.issuer):
        # `ensure_client` never pairs them; this guards the client secret and the code all the same.
        raise AuthorizationError(
            f"the client of {pending.options.server_name} belongs to another authorization server",
            hint=f"run `bastion oauth authorize {pending.options.server_name}` again",
        )
    form = rfc6749.authorization_code_form(
        code, pending.redirect_uri, pending.pkce.verifier, pending.discovery.resource
    )
    auth_form, headers = rfc6749.client_authentication(pending.client)
    try:
        # For this MCP server: its address class decides where the code and secret may go (netguard).
        with netguard.serving(pending.options.server_url):
            response = await http.post(
                str(metadata.token_endpoint),
                data={**form, **auth_form},
                headers={**headers, "Accept": "application/json"},
            )
    except httpx2.TransportError as exc:
        raise TokenError(
            f"the token exchange failed: {netguard.describe(exc, str(metadata.token_endpoint))}",
            hint=netguard.hint(exc, "try again"),
        ) from None
    tokens = rfc6749.parse_token_response(
        response.status_code,
        response.content,
        now=time.time(),
        issuer=pending.discovery.issuer,
        token_endpoint=str(metadata.token_endpoint),
        revocation_endpoint=str(metadata.revocation_endpoint) if metadata.revocation_endpoint else None,
        resource=pending.discovery.resource,
        client_id=pending.client.client_id,
        requested_scopes=pending.scopes,
    )
    # The gateway sends these tokens to this URL only (issue 12: a token follows its URL, not a name).
    return tokens.model_copy(update={"obtained_for": rfc8707.canonical_resource(pending.options.server_url)})


async def complete(
    http: httpx2.AsyncClient, store: Store, pending: PendingAuthorization, params: Mapping[str, str], *, path: str
) -> ProviderRecord:
    """Finish the flow with the authorization response `params` that arrived on `path`."""
    code = check_callback(pending, params, path)
    try:
        tokens = await exchange_code(http, pending, code)
    except TokenError as exc:
        if exc.error == "invalid_client" and pending.client.source == "dcr":
            await forget_client(store, pending.options.server_name)
            raise TokenError(
                "the authorization server no longer knows Bastion's client registration",
                error=exc.error,
                hint=f"run `bastion oauth authorize {pending.options.server_name}` again to register anew",
            ) from None
        raise
    name = pending.options.server_name
    async with store.lock(name):
        record = await store.get(name) or ProviderRecord(server=name, resource_url=pending.options.server_url)
        record = record.model_copy(
            update={
                "client": pin_issuer(pending.client, pending.discovery.issuer),
                "tokens": tokens,
                "needs_authorization": False,
                "requested_scopes": [],
                "last_error": None,
                "resource_url": pending.options.server_url,
            }
        )
        return await store.put(record)


async def forget_client(store: Store, server: str) -> None:
    async with store.lock(server):
        record = await store.get(server)
        if record is not None and record.client is not None and record.client.source != "preregistered":
            await store.put(record.model_copy(update={"client": None, "tokens": None}))


OpenURL = Callable[[str], Awaitable[None] | None]

REMINDER_EVERY = 30.0


async def _wait_with_reminders(callback: LoopbackCallback, timeout: float, progress: Progress) -> AuthorizationResponse:
    """Wait for the callback, saying every `REMINDER_EVERY` seconds how long is left."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            return await callback.wait(min(REMINDER_EVERY, max(left, 0.0)))
        except CallbackTimeout:
            left = deadline - time.monotonic()
            if left <= 0.05:
                raise CallbackTimeout(
                    f"no authorization callback within {timeout:.0f} seconds",
                    hint="finish the login in the browser sooner, or run the command again",
                ) from None
            progress(f"Still waiting for the browser ({left:.0f}s left; Ctrl-C to give up)…")


async def authorize(
    http: httpx2.AsyncClient,
    store: Store,
    options: FlowOptions,
    user_agent: UserAgent,
    *,
    callback_port: int,
    timeout: float,
    progress: Progress = _silent,
) -> ProviderRecord:
    """The whole flow on the loopback callback. An `invalid_client` from the token endpoint for a
    dynamically registered client registers again and retries once."""
    for attempt in (1, 2):
        async with LoopbackCallback(callback_port) as callback:
            pending = await begin(http, store, options, callback=callback.redirect_uri, progress=progress)
            callback.expect(pending.state)
            user_agent.open(pending.url)
            progress(f"Waiting for the browser (up to {timeout:.0f}s)…")
            response = await _wait_with_reminders(callback, timeout, progress)
        try:
            return await complete(http, store, pending, response.params, path=response.path)
        except TokenError as exc:
            if attempt == 1 and exc.error == "invalid_client" and pending.client.source == "dcr":
                progress("The authorization server forgot our client; registering again")
                continue
            raise
    raise AssertionError("unreachable")


__all__ = [
    "FlowOptions",
    "InvalidGrantError",
    "PendingAuthorization",
    "authorize",
    "begin",
    "check_callback",
    "complete",
    "exchange_code",
]
