"""The library API the CLI, the web page and the gateway share: one `Bastion` object per
`$BASTION_HOME`, with the operations of the four flows. Shells parse input and render output;
everything they do goes through here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpcore2
import httpx2
from pydantic import TypeAdapter, ValidationError

from bastion.config.catalog import (
    OAUTH_SECRETS,
    Catalog,
    CatalogEntry,
    check_secret_name,
    default_secret_servers,
    docker_prefix,
    load_catalog,
)
from bastion.config.paths import bastion_home, ensure_home
from bastion.config.registry import load_enabled, save_enabled
from bastion.config.settings import Settings, load_settings, save_settings
from bastion.errors import AuthorizationError, ConfigError, SecretNotAllowedError, StoreError, UnknownServerError
from bastion.oauth import flow, netguard
from bastion.oauth.client_credentials import ClientCredentials
from bastion.oauth.tokens import TokenManager, revoke
from bastion.oauth.useragent import UserAgent
from bastion.store.base import Store
from bastion.store.factory import open_store
from bastion.store.models import ClientRegistration, ProviderRecord, ProviderState

logger = logging.getLogger(__name__)

HTTP_TIMEOUT = httpx2.Timeout(30.0, connect=10.0)
BOOKKEEPING: Final = "bastion:"
"""Store secrets under this prefix are Bastion's bookkeeping, never shown or handed out."""
SECRET_SERVERS: Final = BOOKKEEPING + "servers:"
"""`bastion:servers:<name>`: the JSON list of the servers secret <name> is for."""
_SECRETS_LOCK: Final = BOOKKEEPING + "secrets"
_SERVER_LIST: Final = TypeAdapter(list[str])


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


@dataclass(frozen=True)
class SecretRow:
    """One row of `bastion secret ls`: a secret's name and the servers it is for (never its value)."""

    name: str
    servers: list[str]


def _servers_text(servers: Sequence[str]) -> str:
    return ", ".join(servers) if servers else "no server"


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
        self._secrets_migrated = False

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
        secret_name = spec.store_secret
        field = "private_key_secret" if jwt_auth else "client_secret_secret"
        if secret_name is None:
            raise ConfigError(
                f"{name}: oauth.client_credentials uses {spec.token_endpoint_auth_method} but names no {field}",
                hint=f"add `{field}: SECRET_NAME` to the catalog entry and run "
                f"`bastion secret set {OAUTH_SECRETS}SECRET_NAME --server {name}`",
            )
        secret = await self.secret_for(name, secret_name)
        if not secret:
            raise ConfigError(
                f"{name}: the secret {secret_name!r} for its client credentials is not set",
                hint=f"run `bastion secret set {secret_name} --server {name}`",
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

    # -- secrets -------------------------------------------------------------------------------
    #
    # A secret is handed only to the servers it was set for (`bastion:servers:<name>`). Secrets
    # stored before that was recorded are bound once, by `migrate_secrets`, to the servers that
    # could already use them; from then on no edited or imported entry can add itself.

    async def secret_for(self, server: str, name: str) -> str | None:
        """The value of secret `name` when it is set for `server`; None when it is not set. Raises
        `SecretNotAllowedError` when it is set for other servers only. The gateway's `SecretLookup`
        and the client credentials' source."""
        if not self._secrets_migrated:
            await self.migrate_secrets()
        value = await self.store.get_secret(name)
        servers = await self._secret_servers(name) if value is not None else None
        if value is None and name.startswith(OAUTH_SECRETS):
            legacy = name.removeprefix(OAUTH_SECRETS)
            stale = await self.store.get_secret(legacy) is not None and await self._secret_servers(legacy) is None
        else:
            stale = value is not None and servers is None
        if stale:  # stored by an older Bastion since this process migrated
            await self.migrate_secrets()
            value = await self.store.get_secret(name)
            servers = await self._secret_servers(name)
        if value is None:
            return None
        if server not in (servers or []):
            raise SecretNotAllowedError(
                f"the secret {name!r} is set for {_servers_text(servers or [])}, not for server {server!r}",
                hint=f"if {server} should have it, run `bastion secret allow {name} {server}`",
            )
        return value

    def secret_name(self, name: str) -> str:
        """The stored name `bastion secret ... NAME` means: `oauth:NAME` when NAME is what an entry's
        client credentials name and no entry's `secrets` asks for NAME itself (so `bastion secret set
        reports.key < key.pem` keeps working); else NAME."""
        check_secret_name(name)
        if name.startswith(OAUTH_SECRETS):
            return name
        asked = [entry.store_secrets for entry in self.catalog.entries.values()]
        if any(OAUTH_SECRETS + name in names for names in asked) and not any(name in names for names in asked):
            return OAUTH_SECRETS + name
        return name

    async def secret_targets(self, name: str, servers: Sequence[str] = ()) -> list[str]:
        """The servers `bastion secret set NAME` binds: `servers` when given (catalog names), else
        the ones it is already set for, else `default_secret_servers`. Raises when it cannot tell."""
        check_secret_name(name)
        if servers:
            for server in servers:
                self.catalog.get(server)
            return sorted(set(servers))
        if await self.store.get_secret(name) is not None and (existing := await self._secret_servers(name)):
            return existing
        derived = default_secret_servers(self.catalog, name)
        if derived is None:
            users = [entry.name for entry in self.catalog.entries.values() if name in entry.store_secrets]
            asked = f" (asked for by {', '.join(users)})" if users else ""
            raise ConfigError(
                f"say which server may use the secret {name!r}{asked}",
                hint=f"run `bastion secret set {name} --server SERVER` (repeat --server for several)",
            )
        return derived

    async def set_secret(self, name: str, value: str, servers: Sequence[str]) -> list[str]:
        """Store secret `name` for exactly `servers` (see `secret_targets`)."""
        check_secret_name(name)
        targets = sorted(set(servers))
        async with self.store.lock(_SECRETS_LOCK):
            await self._write_secret_servers(name, targets)
            await self.store.set_secret(name, value)
        return targets

    async def allow_secret(self, name: str, server: str) -> list[str]:
        """Hand secret `name` to `server` too; returns the servers it is now for."""
        check_secret_name(name)
        self.catalog.get(server)
        await self.migrate_secrets()
        async with self.store.lock(_SECRETS_LOCK):
            if await self.store.get_secret(name) is None:
                raise ConfigError(
                    f"no secret named {name!r}", hint=f"run `bastion secret set {name} --server {server}`"
                )
            servers = sorted({*(await self._secret_servers(name) or []), server})
            await self._write_secret_servers(name, servers)
        return servers

    async def disallow_secret(self, name: str, server: str) -> list[str]:
        """Stop handing secret `name` to `server`; returns the servers it is still for."""
        check_secret_name(name)
        await self.migrate_secrets()
        async with self.store.lock(_SECRETS_LOCK):
            if await self.store.get_secret(name) is None:
                raise ConfigError(f"no secret named {name!r}", hint="`bastion secret ls` lists them")
            servers = [s for s in await self._secret_servers(name) or [] if s != server]
            await self._write_secret_servers(name, servers)
        return servers

    async def delete_secret(self, name: str) -> bool:
        check_secret_name(name)
        async with self.store.lock(_SECRETS_LOCK):
            await self.store.delete_secret(SECRET_SERVERS + name)
            return await self.store.delete_secret(name)

    async def list_secrets(self) -> list[SecretRow]:
        """Every secret a person set (names and servers, never values)."""
        await self.migrate_secrets()
        rows = []
        for name in await self.store.list_secrets():
            if not name.startswith(BOOKKEEPING):
                rows.append(SecretRow(name, await self._secret_servers(name) or []))
        return rows

    async def migrate_secrets(self) -> list[str]:
        """Bind each secret stored before secrets were bound to servers, once, to the servers that
        could already use it: the enabled entries that ask for it, plus the server its Docker-shaped
        name points to (`github` for `github.personal_access_token`). One that an entry names as its
        client credentials secret moves under `oauth:`, out of every entry's reach but that grant's.
        Returns what was done (also logged)."""
        notes: list[str] = []
        async with self.store.lock(_SECRETS_LOCK):
            names = await self.store.list_secrets()
            present = set(names)
            enabled = set(self.enabled())
            for name in names:
                if ":" in name or SECRET_SERVERS + name in present:
                    continue
                value = await self.store.get_secret(name)
                if value is None:
                    continue
                prefix = docker_prefix(name)
                candidates = [e for e in self.catalog.entries.values() if e.name in enabled or e.name == prefix]
                moved = OAUTH_SECRETS + name
                grants = sorted(e.name for e in candidates if moved in e.store_secrets)
                if grants and moved not in present:
                    await self._write_secret_servers(moved, grants)
                    await self.store.set_secret(moved, value)
                    await self.store.delete_secret(name)
                    notes.append(
                        f"secret {name!r} is a client credentials secret: now {moved!r}, for {', '.join(grants)}"
                    )
                    continue
                users = sorted(e.name for e in candidates if name in e.store_secrets)
                if not users and prefix is not None:
                    users = [prefix]
                await self._write_secret_servers(name, users)
                notes.append(
                    f"secret {name!r} (stored before secrets were bound to servers) is now for {_servers_text(users)}"
                )
            self._secrets_migrated = True
        for note in notes:
            logger.warning("%s; `bastion secret ls` shows it, `bastion secret allow NAME SERVER` adds a server", note)
        return notes

    async def _secret_servers(self, name: str) -> list[str] | None:
        """The servers secret `name` is for; None when that was never recorded (an older Bastion)."""
        raw = await self.store.get_secret(SECRET_SERVERS + name)
        if raw is None:
            return None
        try:
            return _SERVER_LIST.validate_json(raw)
        except ValidationError:
            raise StoreError(
                f"the list of servers of the secret {name!r} is unreadable",
                hint=f"run `bastion secret set {name} --server SERVER` again",
            ) from None

    async def _write_secret_servers(self, name: str, servers: Sequence[str]) -> None:
        await self.store.set_secret(SECRET_SERVERS + name, _SERVER_LIST.dump_json(sorted(set(servers))).decode())

    # -- features ------------------------------------------------------------------------------

    def set_feature(self, name: str, enabled: bool) -> None:
        self.settings.feature(name)  # validates the name
        features = {**self.settings.features, name: enabled}
        self.settings = self.settings.model_copy(update={"features": features})
        save_settings(self.home, self.settings)
