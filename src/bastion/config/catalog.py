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

The built-in catalog (`builtin_catalog.yaml`, data only) is loaded first; the user's
`$BASTION_HOME/catalog.yaml` adds to or overrides it entry by entry.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bastion.errors import ConfigError, UnknownServerError


class _Entry(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class RemoteSpec(_Entry):
    """`remote:` of a catalog entry."""

    url: str
    transport_type: Literal["streamable-http", "sse", "http"] = "streamable-http"
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra request headers; values may use `${VAR}` (expanded from secrets, then the environment)."""

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
    env: str


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
