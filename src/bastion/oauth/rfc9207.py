"""RFC 9207 — OAuth 2.0 Authorization Server Issuer Identification, §2.4 (the client checks
`iss` in the authorization response, against mix-up attacks), and the other defence against
mix-up that RFC 9700 §4.4.2 names: a distinct redirect URI per authorization server.

https://www.rfc-editor.org/rfc/rfc9207#section-2.4
https://www.rfc-editor.org/rfc/rfc9700#section-4.4.2

`iss` only protects when the authorization server sends it. Distinct redirect URIs protect with
any server: a flow started with issuer A waits on `<callback>/<key of A>`, so a response that
another authorization server sends to its own redirect URI (the one registered for Bastion's
client there) never completes A's flow, and its code never reaches A's token endpoint.
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit, urlunsplit

from bastion.errors import IssuerResponseError

__all__ = ["check_iss", "check_redirect_path", "issuer_key", "issuer_redirect_uri"]

ISSUER_KEY_LENGTH = 16
"""Hex digits of SHA-256(issuer) in a per-issuer redirect path (64 bits)."""

_HINT = "authorize again; if it keeps happening, another authorization server may be interfering"


def check_iss(received: str | None, expected_issuer: str, advertised: bool) -> None:
    """Raise IssuerResponseError when the authorization response's `iss` is present and not
    exactly `expected_issuer` (§2.4, simple string comparison), or absent although the server
    advertised `authorization_response_iss_parameter_supported` (§3)."""
    if received is None:
        if advertised:
            raise IssuerResponseError(
                f"the authorization response from {expected_issuer!r} has no `iss` although the server "
                "advertises authorization_response_iss_parameter_supported (RFC 9207); Bastion refuses it",
                hint=_HINT,
            )
        return
    if received != expected_issuer:
        raise IssuerResponseError(
            f"the authorization response names issuer {received[:200]!r}, but Bastion started the flow "
            f"with {expected_issuer!r} (RFC 9207 mix-up protection); Bastion refuses it",
            hint=_HINT,
        )


def issuer_key(issuer: str) -> str:
    """A short, stable key for `issuer` (hex of its SHA-256), safe in a URL path."""
    return hashlib.sha256(issuer.encode()).hexdigest()[:ISSUER_KEY_LENGTH]


def issuer_redirect_uri(callback: str, issuer: str) -> str:
    """The redirect URI of flows with `issuer` below the `callback` base URI (RFC 9700 §4.4.2):
    `http://127.0.0.1:8765/callback` → `http://127.0.0.1:8765/callback/<issuer_key(issuer)>`."""
    parts = urlsplit(callback)
    path = f"{parts.path.rstrip('/')}/{issuer_key(issuer)}"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def check_redirect_path(received_path: str, redirect_uri: str, expected_issuer: str) -> None:
    """Raise IssuerResponseError when the authorization response arrived on another path than
    the flow's `redirect_uri`: it was sent to the redirect URI of another authorization server."""
    if received_path != urlsplit(redirect_uri).path:
        raise IssuerResponseError(
            f"the authorization response arrived at a redirect URI that does not belong to {expected_issuer!r} "
            "(each authorization server has its own, RFC 9700 §4.4 mix-up protection); Bastion refuses it",
            hint=_HINT,
        )
