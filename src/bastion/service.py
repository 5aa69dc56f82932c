"""The library API the CLI, the web page and the gateway share: one `Bastion` object per
`$BASTION_HOME`, with the operations of the four flows. Shells parse input and render output;
everything they do goes through here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpcore2
import httpx2

from bastion.config.catalog import Catalog, CatalogEntry, load_catalog
from bastion.config.paths import bastion_home, ensure_home
from bastion.config.registry import load_enabled, save_enabled
from bastion.config.settings import Settings, load_settings, save_settings
from bastion.errors import AuthorizationError, ConfigError, UnknownServerError
from bastion.oauth import flow, netguard
from bastion.oauth.client_credentials import ClientCredentials
from bastion.oauth.tokens import TokenManager, revoke
from bastion.oauth.useragent import UserAgent
from bastion.store.base import Store
from bastion.store.factory import open_store
from bastion.store.models import ClientRegistration, ProviderRecord, ProviderState

HTTP_TIMEOUT = httpx2.Timeout(30.0, connect=10.0)


def new_http_client(
    *,
    anchors: Callable[[], Iterable[str]] = tuple,
    resolver: netguard.Resolver = netguard.system_resolver,
    network_backend: httpcore2.AsyncNetworkBackend | None = None,
    deadline: float = netguard.DEADLINE,
    max_body: int = netguard.MAX_BODY,
) -> httpx2.AsyncClient:
    """The client for OAuth requests: no redirects followed (metadata and token endpoints must
    answer themselves), bounded timeouts, trust_env off so tests on loopback never hit a proxy,
    and every request through `netguard.GuardedTransport` (checked addresses, pinned connections,
    a body cap, a deadline). `anchors`: the MCP servers whose address classes count for requests
    made outside a discovery (code exchange, refresh, revocation); the rest is for tests."""
    transport = netguard.GuardedTransport(
        anchors=anchors, resolver=resolver, network_backend=network_backend, deadline=deadline, max_body=max_body
    )
    return httpx2.AsyncClient(transport=transport, timeout=HTTP_TIMEOUT, follow_redirects=False, trust_env=False)


@dataclass(frozen=True)
class ProviderRow:
    """One row of `bastion oauth ls`."""

    server: str
    state: ProviderState
    issuer: str | None
    client_id: str | None
    scopes: list[str]
    expires_at: float | None

    def as_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "state": self.state.value,
            "issuer": self.issuer,
            "client_id": self.client_id,
            "scopes": self.scopes,
            "expires_at": self.expires_at,
        }


def provider_row(record: ProviderRecord, now: float | None = None) -> ProviderRow:
    tokens = record.tokens
    issuer = tokens.issuer if tokens is not None else (record.client.issuer if record.client is not None else None)
    scopes = tokens.scopes if tokens is not None else list(record.requested_scopes)
    return ProviderRow(
        server=record.server,
        state=record.state(now),
        issuer=issuer,
        client_id=record.client.client_id if record.client is not None else None,
        scopes=scopes,
        expires_at=tokens.expires_at if tokens is not None else None,
    )


class Bastion:
    """Operations on one `$BASTION_HOME`. Use as `async with Bastion.open() as app:`."""

    def __init__(self, home: Path, settings: Settings, catalog: Catalog, store: Store) -> None:
        self.home = home
        self.settings = settings
        self.catalog = catalog
        self.store = store
        self._stack = AsyncExitStack()
        self._http: httpx2.AsyncClient | None = None

    @classmethod
    def open(cls, home: Path | None = None) -> Bastion:
        home = ensure_home(home or bastion_home())
        settings = load_settings(home)
        catalog = load_catalog(home)
        store = open_store(settings, home)
        return cls(home, settings, catalog, store)

    async def __aenter__(self) -> Bastion:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._stack.aclose()
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        await self.store.aclose()

    @property
    def http(self) -> httpx2.AsyncClient:
        if self._http is None:
            self._http = new_http_client(anchors=self.remote_urls)
        return self._http

    def remote_urls(self) -> list[str]:
        """The URLs of the enabled remote servers: outside a discovery, an OAuth endpoint may be on
        a loopback or private address only when one of these is in the same class."""
        return [entry.remote.url for entry in self.enabled_entries() if entry.remote is not None]

    # -- servers -------------------------------------------------------------------------------

    def enabled(self) -> list[str]:
        return load_enabled(self.home)

    def entry(self, name: str) -> CatalogEntry:
        return self.catalog.get(name)

    def enabled_entries(self) -> list[CatalogEntry]:
        entries = []
        for name in self.enabled():
            if name in self.catalog:
                entries.append(self.catalog.get(name))
        return entries

    async def enable(self, names: Sequence[str]) -> list[CatalogEntry]:
        """Put servers in the registry; an OAuth server gets a provider in state `unregistered`
        (no network)."""
        entries = [self.catalog.get(n) for n in names]
        enabled = set(self.enabled())
        for entry in entries:
            if entry.uses_oauth and entry.remote is not None:
                async with self.store.lock(entry.name):
                    record = await self.store.get(entry.name)
                    if record is None:
                        await self.store.put(ProviderRecord(server=entry.name, resource_url=entry.remote.url))
            enabled.add(entry.name)
        save_enabled(self.home, sorted(enabled))
        return entries

    async def disable(self, names: Sequence[str]) -> dict[str, list[str]]:
        """Remove servers from the registry, revoking their tokens first (RFC 7009) and removing
        tokens and client registration. Returns revocation problems per server."""
        enabled = set(self.enabled())
        unknown = [n for n in names if n not in enabled and n not in self.catalog]
        if unknown:
            raise UnknownServerError(f"no server named {unknown[0]!r}", hint="`bastion server ls` lists them")
        problems: dict[str, list[str]] = {}
        for name in names:
            record = await self.store.get(name)
            if record is not None:
                problems[name] = await revoke(self.http, record)
                await self.store.delete(name)
            enabled.discard(name)
        save_enabled(self.home, sorted(enabled))
        return problems

    # -- oauth ---------------------------------------------------------------------------------

    async def providers(self) -> list[ProviderRow]:
        now = time.time()
        return [provider_row(r, now) for r in await self.store.list()]

    def _oauth_entry(self, name: str) -> CatalogEntry:
        entry = self.catalog.get(name)
        if entry.remote is None:
            raise ConfigError(f"{name} is a local server; OAuth applies to remote servers only")
        return entry

    def flow_options(self, name: str, scopes: Sequence[str] | None = None) -> flow.FlowOptions:
        entry = self._oauth_entry(name)
        assert entry.remote is not None
        oauth = entry.oauth
        return flow.FlowOptions(
            server_name=name,
            server_url=entry.remote.url,
            transport=entry.remote.transport_type,
            scopes=scopes,
            configured_scopes=oauth.scopes if oauth is not None else None,
            dcr_enabled=self.settings.feature("oauth-dcr"),
            client_id_metadata_document=(oauth.client_id_metadata_document if oauth is not None else None)
            or self.settings.oauth.client_id_metadata_document,
        )

    async def authorize(
        self,
        name: str,
        user_agent: UserAgent,
        *,
        scopes: Sequence[str] | None = None,
        callback_port: int | None = None,
        timeout: float | None = None,
        progress: flow.Progress | None = None,
    ) -> ProviderRecord:
        if name not in self.enabled():
            raise ConfigError(f"{name} is not enabled", hint=f"run `bastion server enable {name}` first")
        if await self.client_credentials(name) is not None:
            return await self._authorize_client_credentials(name, progress or (lambda _: None))
        options = self.flow_options(name, scopes)
        return await flow.authorize(
            self.http,
            self.store,
            options,
            user_agent,
            callback_port=self.settings.oauth.callback_port if callback_port is None else callback_port,
            timeout=self.settings.oauth.callback_timeout if timeout is None else timeout,
            progress=progress or (lambda _: None),
        )

    async def client_credentials(self, name: str) -> ClientCredentials | None:
        """The client credentials of `name` (catalog `oauth.client_credentials`, secret from the
        store), or None when it uses the authorization code flow. The token manager's lookup."""
        if name not in self.catalog:
            return None
        entry = self.catalog.get(name)
        spec = entry.oauth.client_credentials if entry.oauth is not None else None
        if spec is None or entry.remote is None:
            return None
        jwt_auth = spec.token_endpoint_auth_method == "private_key_jwt"
        secret_name = spec.private_key_secret if jwt_auth else spec.client_secret_secret
        field = "private_key_secret" if jwt_auth else "client_secret_secret"
        if not secret_name:
            raise ConfigError(
                f"{name}: oauth.client_credentials uses {spec.token_endpoint_auth_method} but names no {field}",
                hint=f"add `{field}: SECRET_NAME` to the catalog entry and run `bastion secret set SECRET_NAME`",
            )
        secret = await self.store.get_secret(secret_name)
        if not secret:
            raise ConfigError(
                f"{name}: the secret {secret_name!r} for its client credentials is not set",
                hint=f"run `bastion secret set {secret_name}`",
            )
        return ClientCredentials(
            server_url=entry.remote.url, spec=spec, secret=secret, transport=entry.remote.transport_type
        )

    async def _authorize_client_credentials(self, name: str, progress: flow.Progress) -> ProviderRecord:
        progress(f"{name} uses client credentials: requesting a token (no browser)")
        manager = TokenManager(self.store, self.http, client_credentials=self.client_credentials)
        token = await manager.fresh_token(name)
        record = await self.store.get(name)
        if token is None or record is None:
            said = record.last_error if record is not None and record.last_error else "no token was issued"
            raise AuthorizationError(f"the client credentials grant for {name} failed: {said}")
        return record

    async def revoke(self, name: str) -> list[str]:
        """Revoke at the authorization server (when it offers revocation), then delete the tokens
        locally; the client registration is kept."""
        async with self.store.lock(name):
            record = await self.store.get(name)
            if record is None:
                raise UnknownServerError(f"{name} has no OAuth provider", hint="`bastion oauth ls` lists the providers")
            problems = await revoke(self.http, record)
            await self.store.put(
                record.model_copy(update={"tokens": None, "needs_authorization": False, "requested_scopes": []})
            )
        return problems

    async def set_client(
        self, name: str, client_id: str, client_secret: str | None, issuer: str | None, auth_method: str | None
    ) -> ProviderRecord:
        entry = self._oauth_entry(name)
        assert entry.remote is not None
        method = auth_method or ("client_secret_basic" if client_secret else "none")
        client = ClientRegistration(
            client_id=client_id,
            client_secret=client_secret,
            token_endpoint_auth_method=method,
            issuer=issuer,
            source="preregistered",
        )
        async with self.store.lock(name):
            record = await self.store.get(name) or ProviderRecord(server=name, resource_url=entry.remote.url)
            return await self.store.put(record.model_copy(update={"client": client, "tokens": None}))

    async def remove_client(self, name: str) -> bool:
        async with self.store.lock(name):
            record = await self.store.get(name)
            if record is None or record.client is None:
                return False
            await self.store.put(record.model_copy(update={"client": None, "tokens": None}))
            return True

    # -- features ------------------------------------------------------------------------------

    def set_feature(self, name: str, enabled: bool) -> None:
        self.settings.feature(name)  # validates the name
        features = {**self.settings.features, name: enabled}
        self.settings = self.settings.model_copy(update={"features": features})
        save_settings(self.home, self.settings)
