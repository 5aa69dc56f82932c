"""RFC 7009 — OAuth 2.0 Token Revocation: the request (§2.1) and the response (§2.2).

https://www.rfc-editor.org/rfc/rfc7009#section-2
"""

from __future__ import annotations

from bastion.oauth.rfc6749 import client_authentication
from bastion.store.models import ClientRegistration, TokenSet

__all__ = ["revocation_ok", "revocation_requests", "revocation_retryable"]


def revocation_requests(tokens: TokenSet, client: ClientRegistration) -> list[tuple[dict[str, str], dict[str, str]]]:
    """(form, headers) of each revocation request to send to the revocation endpoint, in
    order: the refresh token first (revoking it also revokes the grant's access tokens at most
    servers, §2.1), then the access token, each with `token_type_hint` and the client's
    authentication. May raise RegistrationError from `client_authentication`."""
    form_auth, headers = client_authentication(client)
    requests: list[tuple[dict[str, str], dict[str, str]]] = []
    if tokens.refresh_token:
        form = {"token": tokens.refresh_token, "token_type_hint": "refresh_token", **form_auth}
        requests.append((form, dict(headers)))
    form = {"token": tokens.access_token, "token_type_hint": "access_token", **form_auth}
    requests.append((form, dict(headers)))
    return requests


def revocation_ok(status: int) -> bool:
    """True when the token is revoked or was already invalid: §2.2 answers 200 in both cases
    (any 2xx is accepted, some servers answer 204). Anything else is a failure: 503 is
    retryable (`revocation_retryable`, §2.2.1), a 400 `unsupported_token_type` means the server
    cannot revoke that kind of token, other errors are as in RFC 6749 §5.2."""
    return 200 <= status < 300


def revocation_retryable(status: int) -> bool:
    """True when the request may be retried later: 503 (§2.2.1, with Retry-After), and 429."""
    return status in (429, 503)
