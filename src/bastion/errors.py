"""Bastion's one exception tree.

Every error a user can meet says what to do next.

    BastionError                      base; `str(err)` is a one-line message for humans
    ├── ConfigError                   catalog/registry/config file is invalid (names file, entry, field)
    │   ├── UnknownServerError        a NAME that is not in the catalog / registry
    │   └── SecretNotAllowedError     a stored secret is not set for the server that asks for it
    ├── StoreError                    the credential store cannot be read or written
    │   ├── StoreLockTimeout          another process held the lock for too long
    │   ├── StoreKeyError             encrypted store: wrong or missing key
    │   └── StoreUnavailable          backend (e.g. Redis) unreachable
    ├── OAuthError                    anything in the OAuth client
    │   ├── DiscoveryError            RFC 9728 / RFC 8414 discovery failed or lied
    │   │   ├── ResourceMismatchError protected resource metadata names another resource
    │   │   ├── IssuerMismatchError   authorization server metadata names another issuer
    │   │   ├── PKCEUnsupportedError  no S256 in code_challenge_methods_supported
    │   │   └── InsecureEndpointError http on a non-loopback host, link-local / metadata address
    │   ├── RegistrationError         RFC 7591 registration refused / not allowed (carries error code)
    │   ├── AuthorizationError        the authorization response carried an error, or was invalid
    │   │   ├── StateMismatchError    `state` did not match (possible CSRF)
    │   │   ├── IssuerResponseError   RFC 9207 `iss` missing / wrong
    │   │   └── CallbackTimeout       no callback before the timeout
    │   ├── TokenError                token endpoint refused (carries error code)
    │   │   └── InvalidGrantError     refresh token / code spent, expired or revoked
    │   └── NeedsAuthorizationError   no usable token; run `bastion oauth authorize NAME`
    ├── UpstreamError                 an upstream MCP server is unavailable / failed / timed out
    └── GatewayError                  the gateway itself (listener, security)

Secrets never appear in messages: build them from server names, URLs without query strings,
and the server's own `error`/`error_description`. URL user-info (`user:password@`) is cut out
of every message and hint here, whoever built it.
"""

from __future__ import annotations

from bastion.text import strip_userinfo


class BastionError(Exception):
    """Base of every error Bastion raises on purpose."""

    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(strip_userinfo(message))
        if hint is not None:
            self.hint = strip_userinfo(hint)

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} ({self.hint})" if self.hint else base


class ConfigError(BastionError):
    """A configuration file or entry is invalid."""


class UnknownServerError(ConfigError):
    """NAME is not a known server."""


class SecretNotAllowedError(ConfigError):
    """A catalog entry asks for a stored secret that was set for other servers only."""


class StoreError(BastionError):
    """The credential store failed."""


class StoreLockTimeout(StoreError):
    """Could not take the store lock in time."""


class StoreKeyError(StoreError):
    """The encryption key is wrong or missing."""


class StoreUnavailable(StoreError):
    """The store backend cannot be reached."""


class OAuthError(BastionError):
    """An OAuth step failed.

    `error`, `error_description` and `error_uri` are the RFC 6749 §5.2 fields when the
    authorization server sent them.
    """

    def __init__(
        self,
        message: str,
        *,
        error: str | None = None,
        error_description: str | None = None,
        error_uri: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.error = error
        self.error_description = None if error_description is None else strip_userinfo(error_description)
        self.error_uri = error_uri


class DiscoveryError(OAuthError):
    """Discovery of the protected resource or authorization server failed."""


class ResourceMismatchError(DiscoveryError):
    """Protected resource metadata names a different resource than the server URL."""


class IssuerMismatchError(DiscoveryError):
    """Authorization server metadata names a different issuer than the one used."""


class PKCEUnsupportedError(DiscoveryError):
    """The authorization server does not advertise S256."""


class InsecureEndpointError(DiscoveryError):
    """An endpoint is not https (outside loopback) or points to a forbidden address."""


class RegistrationError(OAuthError):
    """Client registration failed or is not allowed."""


class AuthorizationError(OAuthError):
    """The authorization step failed."""


class StateMismatchError(AuthorizationError):
    """The callback's `state` does not match."""


class IssuerResponseError(AuthorizationError):
    """RFC 9207 `iss` in the authorization response is missing or wrong."""


class CallbackTimeout(AuthorizationError):
    """No callback arrived before the timeout."""


class TokenError(OAuthError):
    """The token endpoint refused a request."""


class InvalidGrantError(TokenError):
    """The grant (code or refresh token) is invalid, expired or revoked."""


class NeedsAuthorizationError(OAuthError):
    """There is no usable token for a server; the user must authorize again."""


class UpstreamError(BastionError):
    """An upstream MCP server is unavailable, failed or timed out."""


class GatewayError(BastionError):
    """The gateway itself failed (listener, security)."""
