"""The catalog: which MCP servers exist and how to reach them.

Entries use the shape of Docker's MCP catalog, so a Docker catalog file can be imported as is:

    registry:
      notion-remote:
        type: remote            # or "server" (a local stdio program started from `command`)
        title: Notion
        description: ...
        remote: {url: https://mcp.notion.com/mcp, transport_type: streamable-http, headers: {}}
        oauth: {providers: [{provider: notion-remote}]}
        command: [npx, -y, some-server]     # type: server only
        env: [{name: FOO, value: bar}] or {FOO: bar}
        secrets: [{name: notion.api_key, env: NOTION_API_KEY}]

`${NAME}` in `env` values and `remote.headers` is expanded from what the entry itself declares
(its `secrets`, by secret name or env name, and, in headers, its `env`), never from the gateway's
environment. A stored secret reaches only the servers it was set for (`bastion secret set NAME
--server S`); the secrets Bastion keeps for itself (client credentials) live under `oauth:`,
a namespace no entry's `secrets` can name.

The built-in catalog (`builtin_catalog.yaml`, data only) is loaded first; the user's
`$BASTION_HOME/catalog.yaml` adds to or overrides it entry by entry.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bastion.errors import ConfigError, UnknownServerError

_ORDINARY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*(?:_[A-Za-z0-9.-]+)*")
MAX_PREFIX = 52
"""The longest prefix whose cut tool names still begin with `<prefix>__` (gateway/naming.py)."""


def is_ordinary_name(name: str) -> bool:
    """Starts with a letter or digit, only `A-Za-z0-9._-`, no `__`, does not end with `_`: reading
    `<name>__<tool>` up to its first `__` gives `name` back (docs/naming.md)."""
    return _ORDINARY_NAME.fullmatch(name) is not None


OAUTH_SECRETS: Final = "oauth:"
"""The namespace of the secrets Bastion uses itself (client secrets, private keys of client
credentials): `oauth.client_credentials` names them, no entry's `secrets` can."""
_RESERVED = ":"
"""A secret name holding this belongs to Bastion (`oauth:...`, and its own bookkeeping)."""


def _user_secret_name(value: str) -> str:
    if not value or _RESERVED in value:
        raise ValueError(
            "a secret name cannot be empty or hold ':' (names with ':' are Bastion's own, e.g. `oauth:`); "
            "use a name like `server.api_key`"
        )
    return value


def check_secret_name(name: str) -> str:
    """A name a person may give `bastion secret`: a plain one (`github.personal_access_token`) or
    one under `oauth:` (client credentials); any other name with `:` is Bastion's own."""
    try:
        if name.startswith(OAUTH_SECRETS):
            return OAUTH_SECRETS + _user_secret_name(name.removeprefix(OAUTH_SECRETS))
        return _user_secret_name(name)
    except ValueError as exc:
        raise ConfigError(f"invalid secret name {name!r}: {exc}") from None


def _oauth_secret_name(value: str | None) -> str | None:
    if value is None:
        return None
    return _user_secret_name(value.removeprefix(OAUTH_SECRETS))


class _Entry(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class RemoteSpec(_Entry):
    """`remote:` of a catalog entry."""

    url: str
    transport_type: Literal["streamable-http", "sse", "http"] = "streamable-http"
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra request headers; values may use `${VAR}` (the entry's own `secrets` and `env` only)."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value


class OAuthProviderSpec(_Entry):
    provider: str | None = None
    secret: str | None = None
    env: str | None = None


class ClientCredentialsSpec(_Entry):
    """OAuth client-credentials grant (for headless gateways): secret names in the store."""

    client_id: str
    client_secret_secret: str | None = None
    """Name of the store secret holding the client secret (client_secret_basic/post)."""
    private_key_secret: str | None = None
    """Name of the store secret holding a PEM private key (private_key_jwt, RFC 7523)."""
    signing_alg: str = "RS256"
    token_endpoint_auth_method: Literal["client_secret_basic", "client_secret_post", "private_key_jwt"] = (
        "client_secret_basic"
    )
    scope: str | None = None

    _secret_names = field_validator("client_secret_secret", "private_key_secret")(_oauth_secret_name)

    @property
    def store_secret(self) -> str | None:
        """The store name of the secret this grant uses (under `oauth:`), or None."""
        name = (
            self.private_key_secret
            if self.token_endpoint_auth_method == "private_key_jwt"
            else self.client_secret_secret
        )
        return None if name is None else OAUTH_SECRETS + name


class OAuthSpec(_Entry):
    """`oauth:` of a catalog entry."""

    providers: list[OAuthProviderSpec] = Field(default_factory=list)
    scopes: list[str] | None = None
    """Scopes to request when the server does not say (overridden by `--scopes`)."""
    client_id_metadata_document: str | None = None
    """An https URL of a client ID metadata document to use as client_id where supported."""
    client_credentials: ClientCredentialsSpec | None = None


class SecretSpec(_Entry):
    name: str
    """The stored secret (`bastion secret set NAME`); never `oauth:...` or any name with `:`."""
    env: str

    _name = field_validator("name")(_user_secret_name)


class EnvSpec(_Entry):
    name: str
    value: str = ""


class CatalogEntry(_Entry):
    """One server of the catalog."""

    name: str
    type: Literal["remote", "server", "poci"] = "server"
    title: str | None = None
    description: str | None = None
    remote: RemoteSpec | None = None
    oauth: OAuthSpec | None = None
    command: list[str] = Field(default_factory=list)
    env: list[EnvSpec] = Field(default_factory=list)
    secrets: list[SecretSpec] = Field(default_factory=list)
    prefix: str | None = None
    """The first part of this server's exposed names (`<prefix>__<tool>`; default: its name). An
    ordinary name (docs/naming.md) of at most 52 characters."""
    source: str = "builtin"
    """The file the entry came from (for error messages)."""

    @field_validator("env", mode="before")
    @classmethod
    def _env_mapping(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return [{"name": str(k), "value": "" if v is None else str(v)} for k, v in value.items()]
        return value

    @field_validator("oauth", mode="before")
    @classmethod
    def _oauth_list(cls, value: Any) -> Any:
        # Docker's catalog sometimes writes `oauth: [ {provider: ...} ]`.
        if isinstance(value, list):
            return {"providers": value}
        return value

    @field_validator("prefix")
    @classmethod
    def _ordinary_prefix(cls, value: str | None) -> str | None:
        if value is not None and not (is_ordinary_name(value) and len(value) <= MAX_PREFIX):
            raise ValueError(
                "`prefix` must start with a letter or digit, hold only A-Z a-z 0-9 . - _, have no `__`, "
                "not end with `_`, and be at most 52 characters"
            )
        return value

    @model_validator(mode="after")
    def _shape(self) -> CatalogEntry:
        if self.type == "remote" and self.remote is None:
            raise ValueError("a remote server needs `remote.url`")
        if self.type == "server" and not self.command and self.remote is None:
            raise ValueError("a local server needs `command` (argv list)")
        return self

    @property
    def is_remote(self) -> bool:
        return self.remote is not None and not self.command

    @property
    def uses_oauth(self) -> bool:
        return self.oauth is not None and self.is_remote

    @property
    def store_secrets(self) -> frozenset[str]:
        """The store names of every secret this entry asks for: its `secrets`, and the client
        credentials secret (under `oauth:`)."""
        names = {spec.name for spec in self.secrets}
        grant = self.oauth.client_credentials if self.oauth is not None else None
        if grant is not None and grant.store_secret is not None:
            names.add(grant.store_secret)
        return frozenset(names)


class Catalog:
    """The merged catalog (built-in, then the user's file)."""

    def __init__(self, entries: dict[str, CatalogEntry]) -> None:
        self.entries = dict(sorted(entries.items()))

    def get(self, name: str) -> CatalogEntry:
        try:
            return self.entries[name]
        except KeyError:
            raise UnknownServerError(
                f"no server named {name!r} in the catalog", hint="`bastion server ls` lists the known servers"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return list(self.entries)


def docker_prefix(secret: str) -> str | None:
    """The server a Docker-shaped secret name points to: `github` for `github.personal_access_token`
    (also under `oauth:`); None for a name without a `.`."""
    server, dot, rest = secret.removeprefix(OAUTH_SECRETS).partition(".")
    return server if dot and server and rest else None


def default_secret_servers(catalog: Catalog, secret: str) -> list[str] | None:
    """The servers a secret is for when `bastion secret set` is not told (`--server`): the server
    its Docker-shaped name points to when that entry asks for it; else the one entry that asks
    for it; else, when none does yet, the server its name points to. None when that is ambiguous
    or unknown (then the person must say)."""
    users = [entry.name for entry in catalog.entries.values() if secret in entry.store_secrets]
    prefix = docker_prefix(secret)
    if prefix is not None and prefix in users:
        return [prefix]
    if len(users) == 1:
        return users
    if not users and prefix is not None:
        return [prefix]
    return None


def parse_catalog(text: str, source: str) -> dict[str, CatalogEntry]:
    """Parse one catalog document; errors name the file, the entry and the field."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}:{where} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict) or not isinstance(doc.get("registry", {}), dict):
        raise ConfigError(f"{source}: expected a mapping with a top-level `registry:` mapping of servers")
    entries: dict[str, CatalogEntry] = {}
    for name, raw in (doc.get("registry") or {}).items():
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: entry {name!r}: expected a mapping")
        try:
            entries[str(name)] = CatalogEntry.model_validate({**raw, "name": str(name), "source": source})
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "(entry)"
            raise ConfigError(f"{source}: entry {name!r}: field {field!r}: {first['msg']}") from None
    return entries


def builtin_catalog_text() -> str:
    return resources.files("bastion.config").joinpath("builtin_catalog.yaml").read_text(encoding="utf-8")


def load_catalog(home: Path) -> Catalog:
    entries = parse_catalog(builtin_catalog_text(), "builtin catalog")
    user = home / "catalog.yaml"
    if user.exists():
        entries.update(parse_catalog(user.read_text(encoding="utf-8"), str(user)))
    return Catalog(entries)
