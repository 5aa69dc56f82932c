"""What the store keeps for each server: its OAuth client registration and token set.

These are the values every layer passes around (no `dict[str, Any]` crosses a module
boundary). Secrets are plain `str` fields so the wire and the store see the real value;
`repr()` of every model hides them, and nothing logs a model with `str()`.
"""

from __future__ import annotations

import enum
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SECRET_FIELDS = frozenset(
    {"access_token", "refresh_token", "client_secret", "registration_access_token", "id_token", "code_verifier"}
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    def __repr_args__(self):  # type: ignore[no-untyped-def]
        for name, value in super().__repr_args__():
            if name in SECRET_FIELDS and value is not None:
                yield name, "***"
            else:
                yield name, value


class ProviderState(enum.StrEnum):
    """The lifecycle of one server's OAuth provider, as `bastion oauth ls` shows it."""

    UNREGISTERED = "unregistered"
    """Enabled, OAuth known from the catalog, nothing registered yet (no network touched)."""
    REGISTERED = "registered"
    """A client registration exists (pre-registered, CIMD or DCR), no token yet."""
    AUTHORIZED = "authorized"
    """A token set exists and its access token has not expired (or has a refresh token)."""
    EXPIRED = "expired"
    """The access token expired and there is no refresh token to renew it."""
    NEEDS_AUTHORIZATION = "needs-authorization"
    """A refresh failed with invalid_grant, the token was revoked, or more scopes are needed."""


class ClientRegistration(_Model):
    """An OAuth client registration (RFC 7591 §3.2.1 client information response).

    `issuer` is the authorization server the registration belongs to; `None` for a
    pre-registered client that the user set without naming an issuer (valid for any issuer).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    client_id: str
    client_secret: str | None = None
    client_id_issued_at: int | None = None
    client_secret_expires_at: int | None = None
    token_endpoint_auth_method: str = "none"
    redirect_uris: list[str] = Field(default_factory=list)
    registration_access_token: str | None = None
    registration_client_uri: str | None = None
    issuer: str | None = None
    source: Literal["preregistered", "cimd", "dcr"] = "dcr"


class TokenSet(_Model):
    """A token response (RFC 6749 §5.1) with what is needed to refresh and revoke later
    without discovery: the issuer, its token and revocation endpoints, and the resource."""

    access_token: str
    token_type: str = "Bearer"
    refresh_token: str | None = None
    expires_at: float | None = None
    """Absolute expiry (epoch seconds), computed from `expires_in` when received."""
    scopes: list[str] = Field(default_factory=list)
    issuer: str
    token_endpoint: str
    revocation_endpoint: str | None = None
    resource: str | None = None
    client_id: str
    obtained_at: float = Field(default_factory=time.time)
    obtained_for: str | None = None
    """The canonical URL (RFC 8707 form, `rfc8707.canonical_resource`) of the MCP server these tokens
    were obtained for; the gateway sends them to that URL only. None in records stored before
    Bastion recorded it: the token manager then takes the record's `resource_url` (written in the
    same put as the tokens by the flow) and stores it with the next refresh."""
    after_refusal: bool = False
    """Obtained because the MCP server refused the previous access token (a refresh after a 401).
    If the server refuses this one too, Bastion does not refresh again: the server needs
    authorization (issue 12: one refresh per refused token, never a refresh storm)."""

    def expired(self, now: float, margin: float = 0.0) -> bool:
        return self.expires_at is not None and now + margin >= self.expires_at


class ProviderRecord(_Model):
    """Everything the store knows about one server's OAuth provider."""

    server: str
    resource_url: str
    """The MCP server URL the provider protects (the canonical RFC 8707 resource)."""
    client: ClientRegistration | None = None
    tokens: TokenSet | None = None
    needs_authorization: bool = False
    requested_scopes: list[str] = Field(default_factory=list)
    """Scopes to ask for on the next authorization (e.g. after an insufficient_scope step-up)."""
    last_error: str | None = None
    revision: int = 0
    """Bumped by the store on every write; compare-and-set keys on it."""
    updated_at: float = Field(default_factory=time.time)

    def state(self, now: float | None = None) -> ProviderState:
        now = time.time() if now is None else now
        if self.needs_authorization:
            return ProviderState.NEEDS_AUTHORIZATION
        if self.tokens is not None:
            if self.tokens.expired(now) and not self.tokens.refresh_token:
                return ProviderState.EXPIRED
            return ProviderState.AUTHORIZED
        if self.client is not None:
            return ProviderState.REGISTERED
        return ProviderState.UNREGISTERED


class StoreEvent(_Model):
    """A change seen in the store: `server` changed (or was deleted); `None` means "something,
    re-read everything" (e.g. after a reconnect)."""

    server: str | None
    kind: Literal["changed", "deleted", "resync"] = "changed"
    revision: int | None = None
