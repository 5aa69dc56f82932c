"""`config.yaml`: settings and feature flags.

features: {oauth-dcr: true}
store: {backend: file | keyring | redis, url: redis://127.0.0.1:6379/0, prefix: "bastion:"}
oauth: {callback_port: 5175, callback_timeout: 300, client_id_metadata_document: https://...}
gateway: {connect_timeout: 15, request_timeout: 60, refresh_margin: 60, startup_wait: 15, require_token: true,
          naming: prefixed | bare}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bastion.config.files import read_yaml, write_yaml
from bastion.errors import ConfigError

FEATURES: dict[str, tuple[bool, str]] = {
    "oauth-dcr": (True, "register OAuth clients dynamically (RFC 7591) when no client is pre-registered"),
}
"""Known feature flags: name -> (default, description)."""

DEFAULT_CALLBACK_PORT = 5175


class StoreSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backend: Literal["file", "keyring", "redis"] = "file"
    url: str | None = None
    """Redis URL for the redis backend."""
    prefix: str | None = Field(None, min_length=1)
    """Key prefix of the redis backend (default `bastion:`); BASTION_STORE_PREFIX overrides it."""


class OAuthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    callback_port: int = Field(DEFAULT_CALLBACK_PORT, ge=0, le=65535)
    callback_timeout: float = Field(300.0, gt=0)
    client_id_metadata_document: str | None = None
    """https URL of Bastion's client ID metadata document, used where the server supports it."""


class GatewaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    connect_timeout: float = Field(15.0, gt=0)
    request_timeout: float = Field(60.0, gt=0)
    refresh_margin: float = Field(60.0, ge=0)
    """Refresh an access token this many seconds before it expires."""
    naming: Literal["prefixed", "bare"] = "prefixed"
    """`prefixed`: tools and prompts as `<prefix>__<name>` (stable whatever else is enabled);
    `bare`: the upstream's own names, prefixed only where two servers share one (docs/naming.md)."""
    startup_wait: float | None = Field(None, ge=0)
    """A client's first listing waits this long at most for the servers still starting
    (gateway/startup.py); default: `connect_timeout`. 0 turns the wait off."""
    restart_max: int = Field(5, ge=0)
    """A stdio server that exits this many times in a row without becoming ready is given up."""
    require_token: bool = True
    """The HTTP transports require the gateway token (`Authorization: Bearer`), on loopback too.
    False (or `gateway run --no-token`) lets any local process use the gateway: warned each start."""


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    features: dict[str, bool] = Field(default_factory=dict)
    store: StoreSettings = Field(default_factory=StoreSettings)
    oauth: OAuthSettings = Field(default_factory=OAuthSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)

    def feature(self, name: str) -> bool:
        if name not in FEATURES:
            raise ConfigError(f"unknown feature {name!r}", hint=f"known features: {', '.join(sorted(FEATURES))}")
        return self.features.get(name, FEATURES[name][0])


def settings_path(home: Path) -> Path:
    return home / "config.yaml"


def load_settings(home: Path) -> Settings:
    path = settings_path(home)
    doc = read_yaml(path) or {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping")
    try:
        settings = Settings.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: field {field!r}: {first['msg']}") from None
    env_store = os.environ.get("BASTION_STORE")
    if env_store:
        if env_store.startswith(("redis://", "rediss://", "unix://")):
            store = StoreSettings(backend="redis", url=env_store, prefix=settings.store.prefix)
            settings = settings.model_copy(update={"store": store})
        elif env_store in ("file", "keyring"):
            settings = settings.model_copy(update={"store": StoreSettings(backend=env_store)})
        else:
            raise ConfigError(f"BASTION_STORE={env_store!r}: expected file, keyring or a redis:// URL")
    env_prefix = os.environ.get("BASTION_STORE_PREFIX")
    if env_prefix:
        settings = settings.model_copy(update={"store": settings.store.model_copy(update={"prefix": env_prefix})})
    return settings


def save_settings(home: Path, settings: Settings) -> None:
    write_yaml(settings_path(home), settings.model_dump(mode="json", exclude_defaults=True))
