"""The token manager: an in-memory cache of access tokens fed by the store, refresh with
single-flight per server (within the process by an asyncio lock, across processes by
`Store.lock` + compare-and-set), step-up and revocation.

Refresh, per RFC 6749 §6 with `resource` (RFC 8707):
1. take the per-server lock (process, then store);
2. re-read the record: if its access token is not the one we were about to replace, someone
   else refreshed or re-authorized — use theirs;
3. spend the refresh token; store the rotated token set with compare-and-set on the revision read;
4. `invalid_grant` → the provider is `needs-authorization` (tokens dropped), and the error says
   to run `bastion oauth authorize NAME`.

A server with client credentials (`client_credentials` lookup, see `client_credentials.py`)
takes the same path under the same locks, but step 3 is a new client credentials grant: it has
no refresh token and needs no authorization by a person. Scopes a step-up asked for are added.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import anyio
import httpx2

from bastion.errors import BastionError, InvalidGrantError, NeedsAuthorizationError, StoreError, TokenError
from bastion.oauth import client_credentials, netguard, rfc6749, rfc7009, rfc8707
from bastion.oauth.client_credentials import ClientCredentials, ClientCredentialsLookup
from bastion.store.base import Store
from bastion.store.models import ProviderRecord, TokenSet

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


def _authorize_hint(server: str) -> str:
    return f"run `bastion oauth authorize {server}`"


def canonical_url(url: str) -> str | None:
    """`url` in RFC 8707 canonical form, or None when it is not an absolute URL."""
    try:
        return rfc8707.canonical_resource(url)
    except ValueError:
        return None


def bound(record: ProviderRecord, tokens: TokenSet) -> TokenSet:
    """`tokens` with the URL they were obtained for filled in. Records stored before Bastion recorded
    it take the record's `resource_url`: `flow.complete` wrote it in the same put as the tokens, from
    the URL it authorized, so it is the URL they were obtained for (no re-authorization needed after
    an upgrade, and the next refresh stores it with the tokens)."""
    if tokens.obtained_for is not None:
        return tokens
    return tokens.model_copy(update={"obtained_for": canonical_url(record.resource_url)})


def _for_server(url: str | None) -> contextlib.AbstractContextManager[None]:
    """Requests for the MCP server at `url` (netguard: its address class decides); without a
    known URL, the enabled servers' classes (the client's anchors) decide."""
    return netguard.serving(url) if url else contextlib.nullcontext()


async def refresh_tokens(http: httpx2.AsyncClient, record: ProviderRecord, *, now: float) -> TokenSet:
    """Spend the refresh token of `record` once (no locking; callers hold the lock). The new token
    set is for the URL the old one was obtained for."""
    tokens, client = record.tokens, record.client
    if tokens is None or client is None or not tokens.refresh_token:
        raise NeedsAuthorizationError(f"{record.server} has no refresh token", hint=_authorize_hint(record.server))
    if client.issuer is not None and client.issuer != tokens.issuer:
        # Never send the client's credentials to the token endpoint of another issuer.
        raise NeedsAuthorizationError(
            f"the client registration of {record.server} belongs to another authorization server than its tokens",
            hint=_authorize_hint(record.server),
        )
    form = rfc6749.refresh_form(tokens.refresh_token, tokens.resource, None)
    auth_form, headers = rfc6749.client_authentication(client)
    obtained_for = bound(record, tokens).obtained_for
    try:
        with _for_server(obtained_for):
            response = await http.post(
                tokens.token_endpoint, data={**form, **auth_form}, headers={**headers, "Accept": "application/json"}
            )
    except httpx2.TransportError as exc:
        raise TokenError(
            f"the refresh of {record.server} failed: {netguard.describe(exc, tokens.token_endpoint)}",
            hint=netguard.hint(exc, "try again later"),
        ) from None
    new_tokens = rfc6749.parse_token_response(
        response.status_code,
        response.content,
        now=now,
        issuer=tokens.issuer,
        token_endpoint=tokens.token_endpoint,
        revocation_endpoint=tokens.revocation_endpoint,
        resource=tokens.resource,
        client_id=client.client_id,
        requested_scopes=tokens.scopes,
        previous_refresh_token=tokens.refresh_token,
    )
    return new_tokens.model_copy(update={"obtained_for": obtained_for})


class TokenManager:
    """Implements `bastion.oauth.api.TokenProvider` over a `Store`."""

    def __init__(
        self,
        store: Store,
        http: httpx2.AsyncClient,
        *,
        refresh_margin: float = 60.0,
        clock: Clock = time.time,
        lock_timeout: float = 30.0,
        refresh_timeout: float = 30.0,
        client_credentials: ClientCredentialsLookup | None = None,
    ) -> None:
        self._store = store
        self._client_credentials = client_credentials
        self._http = http
        self._margin = refresh_margin
        self._clock = clock
        self._lock_timeout = lock_timeout
        self._refresh_timeout = refresh_timeout
        """The deadline of one token request made while holding the server's store lock (every other
        refresher of that server, in any process, waits for the lock)."""
        self._cache: dict[str, TokenSet] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._unsaved: dict[str, tuple[ProviderRecord, TokenSet]] = {}
        """Refreshes the store missed: the record they replace, and the new token set."""
        self.refresh_count = 0
        """Refreshes this manager actually sent (for tests and benchmarks)."""

    # -- cache -------------------------------------------------------------------------------

    async def load(self, server: str) -> TokenSet | None:
        """(Re)load one server's token set from the store into the cache (after writing back a
        refresh the store missed, if any)."""
        await self.flush_unsaved(server)
        record = await self._store.get(server)
        return self._remember(server, record)

    async def flush_unsaved(self, server: str | None = None) -> None:
        """Write back token sets refreshed while the store was unavailable, unless the store moved on
        meanwhile (another process authorized, revoked or refreshed: its state wins)."""
        for name in [server] if server is not None else list(self._unsaved):
            pending = self._unsaved.get(name)
            if pending is None:
                continue
            spent, tokens = pending
            async with self._store.lock(name, timeout=self._lock_timeout):
                current = await self._store.get(name)
                if current is not None and current.revision == spent.revision:
                    await self._store.compare_and_set(
                        current.model_copy(update={"tokens": tokens, "last_error": None}), current.revision
                    )
                    logger.info("wrote back the tokens of %s refreshed while the store was unavailable", name)
            del self._unsaved[name]

    async def load_all(self) -> None:
        await self.flush_unsaved()
        for record in await self._store.list():
            self._remember(record.server, record)

    def forget(self, server: str) -> None:
        self._cache.pop(server, None)

    def _remember(self, server: str, record: ProviderRecord | None) -> TokenSet | None:
        if record is None or record.tokens is None or record.needs_authorization:
            self._cache.pop(server, None)
            return None
        tokens = self._cache[server] = bound(record, record.tokens)
        return tokens

    def cached(self, server: str) -> TokenSet | None:
        return self._cache.get(server)

    # -- TokenProvider -------------------------------------------------------------------------

    def cached_token(self, server: str) -> str | None:
        tokens = self._cache.get(server)
        return tokens.access_token if tokens is not None else None

    def obtained_for(self, server: str) -> str | None:
        tokens = self._cache.get(server)
        return tokens.obtained_for if tokens is not None else None

    def margin_for(self, tokens: TokenSet) -> float:
        """The refresh margin, at most half the token's lifetime (a 5-minute token is not
        refreshed on every call because the margin is 60 seconds)."""
        if tokens.expires_at is None:
            return self._margin
        return min(self._margin, max(0.0, (tokens.expires_at - tokens.obtained_at) / 2))

    def needs_refresh(self, server: str) -> bool:
        tokens = self._cache.get(server)
        return tokens is not None and tokens.expired(self._clock(), self.margin_for(tokens))

    async def fresh_token(self, server: str) -> str | None:
        tokens = self._cache.get(server)
        if tokens is not None and not tokens.expired(self._clock(), self.margin_for(tokens)):
            return tokens.access_token
        stale = tokens.access_token if tokens is not None else None
        return await self._refresh(server, stale, force=False)

    async def refresh_after_401(self, server: str, rejected: str) -> str | None:
        return await self._refresh(server, rejected, force=True)

    async def step_up(self, server: str, challenged_scopes: list[str]) -> None:
        async with self._store.lock(server, timeout=self._lock_timeout):
            record = await self._store.get(server)
            if record is None:
                return
            held = record.tokens.scopes if record.tokens is not None else []
            wanted = list(dict.fromkeys([*held, *record.requested_scopes, *challenged_scopes]))
            await self._store.put(
                record.model_copy(
                    update={
                        "needs_authorization": True,
                        "requested_scopes": wanted,
                        "last_error": f"the server needs more scopes: {' '.join(challenged_scopes)}",
                    }
                )
            )
        self._cache.pop(server, None)

    # -- refresh ------------------------------------------------------------------------------

    async def _refresh(self, server: str, stale: str | None, *, force: bool) -> str | None:
        lock = self._locks.setdefault(server, asyncio.Lock())
        async with lock:
            # Someone in this process refreshed while we waited.
            current = self._cache.get(server)
            if current is not None and current.access_token != stale:
                if force or not current.expired(self._clock(), self.margin_for(current)):
                    return current.access_token
            try:
                return await self._refresh_locked(server, stale, force=force)
            except StoreError as exc:
                logger.warning("refresh of %s: store unavailable (%s)", server, type(exc).__name__)
                return current.access_token if current is not None else None

    async def _refresh_locked(self, server: str, stale: str | None, *, force: bool) -> str | None:
        try:
            credentials = await self._client_credentials(server) if self._client_credentials is not None else None
        except StoreError:
            raise  # the store is away: `_refresh` keeps serving the token held in memory
        except BastionError as exc:  # e.g. the secret it names is not set
            logger.warning("%s: %s", server, exc)
            return None
        async with self._store.lock(server, timeout=self._lock_timeout):
            record = await self._store.get(server)
            if credentials is not None:
                return await self._client_credentials_locked(server, record, credentials, stale, force=force)
            if record is None or record.tokens is None or record.needs_authorization:
                self._remember(server, record)
                return None
            now = self._clock()
            tokens = record.tokens
            if tokens.access_token != stale and (force or not tokens.expired(now, self.margin_for(tokens))):
                # Another process refreshed or re-authorized: adopt its token.
                self._cache[server] = bound(record, tokens)
                return tokens.access_token
            if force and _refused_again(server, tokens, now):
                return None
            if not tokens.refresh_token:
                if tokens.expired(now):
                    self._cache.pop(server, None)
                    return None
                return tokens.access_token
            try:
                self.refresh_count += 1
                logger.info("refreshing the access token of %s (holding its store lock)", server)
                with anyio.fail_after(self._refresh_timeout):
                    new_tokens = await refresh_tokens(self._http, record, now=now)
                new_tokens = new_tokens.model_copy(update={"after_refusal": force})
            except TimeoutError:
                raise self._timed_out(server) from None
            except InvalidGrantError as exc:
                said = exc.error_description or "the refresh token was rejected"
                await self._store.put(
                    record.model_copy(
                        update={"tokens": None, "needs_authorization": True, "last_error": f"invalid_grant: {said}"}
                    )
                )
                self._cache.pop(server, None)
                logger.warning(
                    "%s needs authorization: refresh rejected (invalid_grant); %s", server, _authorize_hint(server)
                )
                return None
            try:
                written = await self._store.compare_and_set(
                    record.model_copy(update={"tokens": new_tokens, "last_error": None}), record.revision
                )
            except StoreError:
                # The authorization server has rotated the refresh token; losing its answer now would
                # cost an invalid_grant later. Keep it in memory and write it back when the store returns.
                self._cache[server] = new_tokens
                self._unsaved[server] = (record, new_tokens)
                logger.warning("refreshed %s but the store is unavailable; keeping the tokens until it is back", server)
                return new_tokens.access_token
            if written is None:
                # Cannot happen while we hold the lock, unless the lease expired: keep what was written.
                logger.warning("refresh of %s raced a concurrent write; re-reading", server)
                return self.cached_token(server) if await self.load(server) else None
            self._cache[server] = new_tokens
            logger.info("refreshed the access token of %s", server)
            return new_tokens.access_token

    def _timed_out(self, server: str) -> TokenError:
        """A token request made under the store lock ran past `refresh_timeout` and was given up: a
        token endpoint that trickles its answer must not hold the lock (and every other refresher of
        the server, in any process) forever. Nothing was stored."""
        return TokenError(
            f"the token endpoint of {server} did not answer within {self._refresh_timeout:g}s",
            hint="try again later; if it keeps happening, the authorization server is overloaded or misbehaving",
        )

    async def _client_credentials_locked(
        self,
        server: str,
        record: ProviderRecord | None,
        credentials: ClientCredentials,
        stale: str | None,
        *,
        force: bool,
    ) -> str | None:
        """Under the store lock: adopt a token another process obtained for this URL, else run the grant."""
        now = self._clock()
        url = canonical_url(credentials.server_url)
        previous = bound(record, record.tokens) if record is not None and record.tokens is not None else None
        if previous is not None and previous.obtained_for != url:
            previous = None  # obtained for another URL (the catalog changed): discover and grant for this one
        tokens = previous if record is not None and not record.needs_authorization else None
        fresh = tokens is not None and (force or not tokens.expired(now, self.margin_for(tokens)))
        if tokens is not None and tokens.access_token != stale and fresh:
            self._cache[server] = tokens
            return tokens.access_token
        if force and tokens is not None and _refused_again(server, tokens, now):
            return None
        extra = record.requested_scopes if record is not None else []
        record = record or ProviderRecord(server=server, resource_url=credentials.server_url)
        try:
            self.refresh_count += 1
            with anyio.fail_after(self._refresh_timeout):
                new_tokens = await client_credentials.obtain(
                    self._http, credentials, previous=previous, extra_scopes=extra, now=now
                )
        except TimeoutError:
            raise self._timed_out(server) from None  # the server may answer again soon: keep the record
        except BastionError as exc:
            # Retrying with a person in the loop would not help: the configuration or the server is wrong.
            await self._store.put(record.model_copy(update={"tokens": None, "last_error": str(exc)}))
            self._cache.pop(server, None)
            logger.warning("%s: the client credentials grant failed: %s", server, exc)
            return None
        new_tokens = new_tokens.model_copy(update={"obtained_for": url, "after_refusal": force})
        written = await self._store.compare_and_set(
            record.model_copy(
                update={"tokens": new_tokens, "needs_authorization": False, "requested_scopes": [], "last_error": None}
            ),
            record.revision,
        )
        if written is None:
            logger.warning("client credentials token of %s raced a concurrent write; re-reading", server)
            return self.cached_token(server) if await self.load(server) else None
        self._cache[server] = new_tokens
        logger.info("obtained an access token for %s with its client credentials", server)
        return new_tokens.access_token


REFUSAL_WINDOW = 60.0
"""A token obtained because the server refused the one before, and refused in turn within this many
seconds, is not refreshed again. Later, a 401 is a new event (a server restart, a revoked grant)
and gets its one refresh like any other token."""


def _refused_again(server: str, tokens: TokenSet, now: float) -> bool:
    """Whether the MCP server refused `tokens`, which were themselves obtained because it refused the
    ones before, right after it got them: then refreshing again would only repeat that (a server
    answering 401 to every token made the gateway refresh dozens of times a second). The server
    needs authorization."""
    if not tokens.after_refusal or now - tokens.obtained_at >= REFUSAL_WINDOW:
        return False
    logger.warning(
        "%s refused an access token obtained right after it refused the previous one; not refreshing again (%s)",
        server,
        _authorize_hint(server),
    )
    return True


async def revoke(http: httpx2.AsyncClient, record: ProviderRecord) -> list[str]:
    """RFC 7009 revocation of the refresh and access tokens at the authorization server.
    Returns a list of problems (empty when all went well); never raises for the server's answer."""
    tokens, client = record.tokens, record.client
    if tokens is None or client is None or not tokens.revocation_endpoint:
        return []
    if client.issuer is not None and client.issuer != tokens.issuer:
        return ["the client registration belongs to another authorization server; not sent to this one"]
    problems: list[str] = []
    for form, headers in rfc7009.revocation_requests(tokens, client):
        kind = form.get("token_type_hint", "token")
        try:
            with _for_server(bound(record, tokens).obtained_for):
                response = await http.post(tokens.revocation_endpoint, data=form, headers=headers)
        except httpx2.TransportError as exc:
            problems.append(f"{kind}: revocation failed: {netguard.describe(exc, tokens.revocation_endpoint)}")
            continue
        if not rfc7009.revocation_ok(response.status_code):
            error, _, _ = rfc6749.parse_oauth_error(response.content)
            problems.append(f"{kind}: revocation endpoint answered {response.status_code} {error or ''}".rstrip())
    return problems
