"""RFC 6749 — The OAuth 2.0 Authorization Framework, as OAuth 2.1 narrows it: the
authorization request (§4.1.1, with PKCE and RFC 8707 `resource`), the token requests
(§4.1.3, §6, §4.4), client authentication (§2.3.1), and token and error responses (§5.1,
§5.2).

https://www.rfc-editor.org/rfc/rfc6749
https://datatracker.ietf.org/doc/html/draft-ietf-oauth-v2-1

Token values never appear in an exception message: messages are built from the endpoint URL
(without query), the server's `error`, and its `error_description` (cleaned and shortened).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import NoReturn
from urllib.parse import parse_qsl, quote, quote_plus, unquote_plus, urlencode, urlsplit, urlunsplit

from bastion.errors import InvalidGrantError, RegistrationError, TokenError
from bastion.oauth.endpoint_security import url_for_message
from bastion.oauth.rfc6750 import is_token68
from bastion.store.models import ClientRegistration, TokenSet

__all__ = [
    "authorization_code_form",
    "build_authorization_url",
    "client_authentication",
    "client_credentials_form",
    "parse_oauth_error",
    "parse_token_response",
    "refresh_form",
]

_MAX_DESCRIPTION = 300


def build_authorization_url(
    endpoint: str,
    *,
    client_id: str,
    redirect_uri: str,
    state: str,
    code_challenge: str,
    scopes: Sequence[str],
    resource: str | None,
    extra: Mapping[str, str] | None = None,
) -> str:
    """The authorization request URL (§4.1.1; RFC 7636 §4.3; RFC 8707 §2).

    The endpoint's own query is kept (§3.1: it MUST be retained), except parameters that this
    request sets (a parameter MUST NOT appear twice); its fragment is dropped. `scope` is left
    out when `scopes` is empty. `extra` adds parameters (e.g. `prompt`); it may not override
    the ones above (ValueError).
    """
    params: list[tuple[str, str]] = [
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("state", state),
        ("code_challenge", code_challenge),
        ("code_challenge_method", "S256"),
    ]
    if scopes:
        params.append(("scope", " ".join(scopes)))
    if resource is not None:
        params.append(("resource", resource))
    ours = {name for name, _ in params}
    for name, value in (extra or {}).items():
        if name in ours:
            raise ValueError(f"extra authorization parameter {name!r} would override a required one")
        params.append((name, value))
        ours.add(name)
    parts = urlsplit(endpoint)
    kept = [piece for piece in parts.query.split("&") if piece and unquote_plus(piece.split("=", 1)[0]) not in ours]
    query = "&".join([*kept, urlencode(params, quote_via=quote)])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def authorization_code_form(code: str, redirect_uri: str, code_verifier: str, resource: str | None) -> dict[str, str]:
    """The access token request (§4.1.3; RFC 7636 §4.5; RFC 8707 §2.2). Add
    `client_authentication`."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": code_verifier,
    }
    if resource is not None:
        form["resource"] = resource
    return form


def refresh_form(refresh_token: str, resource: str | None, scopes: Sequence[str] | None) -> dict[str, str]:
    """The refresh request (§6; RFC 8707 §2.2). `scope` only when `scopes` is non-empty (it
    may only narrow the original grant). Add `client_authentication`."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if scopes:
        form["scope"] = " ".join(scopes)
    if resource is not None:
        form["resource"] = resource
    return form


def client_credentials_form(scopes: Sequence[str], resource: str | None) -> dict[str, str]:
    """The client credentials request (§4.4.2; RFC 8707 §2.2). Add `client_authentication`."""
    form = {"grant_type": "client_credentials"}
    if scopes:
        form["scope"] = " ".join(scopes)
    if resource is not None:
        form["resource"] = resource
    return form


def client_authentication(
    client: ClientRegistration, method: str | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """(form additions, headers) that authenticate `client` with `method` (default: its
    registered `token_endpoint_auth_method`):

    - `none`: `client_id` in the form (public client, §2.3 / §3.2.1);
    - `client_secret_post`: `client_id` and `client_secret` in the form (§2.3.1);
    - `client_secret_basic`: HTTP Basic with id and secret each form-urlencoded first (§2.3.1).

    Raises RegistrationError for a secret method without a secret, or another method.
    """
    method = method or client.token_endpoint_auth_method or "none"
    if method == "none":
        return {"client_id": client.client_id}, {}
    if method not in ("client_secret_post", "client_secret_basic"):
        raise RegistrationError(
            f"the client registration uses token endpoint authentication {method!r}, which Bastion does not support",
            hint="register a client with client_secret_basic, client_secret_post or none",
        )
    if not client.client_secret:
        raise RegistrationError(
            f"the client registration uses {method} but has no client secret",
            hint="set the client secret, or run `bastion oauth authorize` for this server to register again",
        )
    if method == "client_secret_post":
        return {"client_id": client.client_id, "client_secret": client.client_secret}, {}
    userpass = f"{quote_plus(client.client_id)}:{quote_plus(client.client_secret)}"
    return {}, {"Authorization": "Basic " + base64.b64encode(userpass.encode("utf-8")).decode("ascii")}


def _load_object(body: bytes) -> dict[str, object] | None:
    """The body as a JSON object, else as a form-encoded one (some servers, e.g. GitHub without
    `Accept: application/json`), else None."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        data = None
    else:
        return data if isinstance(data, dict) else None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "=" not in text:
        return None
    try:
        return dict(parse_qsl(text.strip(), keep_blank_values=True, strict_parsing=True))
    except ValueError:
        return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _clean(text: str | None, hide: Sequence[str | None] = ()) -> str | None:
    """Server text fit for a message: no control characters, no secret we know of, short."""
    if text is None:
        return None
    for secret in hide:
        if secret:
            text = text.replace(secret, "***")
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    if len(text) > _MAX_DESCRIPTION:
        text = text[: _MAX_DESCRIPTION - 1] + "…"
    return text


def parse_oauth_error(body: bytes) -> tuple[str | None, str | None, str | None]:
    """(`error`, `error_description`, `error_uri`) of an error response (§5.2), each None when
    absent or not a string. Never raises."""
    data = _load_object(body)
    if data is None:
        return None, None, None
    return _text(data.get("error")), _text(data.get("error_description")), _text(data.get("error_uri"))


def _expires_at(value: object, now: float) -> float | None:
    """`now + expires_in`; a numeric string is accepted, anything else means "unknown"."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return now + float(value)
    if isinstance(value, str):
        try:
            return now + float(int(value.strip()))
        except ValueError:
            return None
    return None


def parse_token_response(
    status: int,
    body: bytes,
    *,
    now: float,
    issuer: str,
    token_endpoint: str,
    revocation_endpoint: str | None,
    resource: str | None,
    client_id: str,
    requested_scopes: Sequence[str],
    previous_refresh_token: str | None = None,
) -> TokenSet:
    """The token set of a token endpoint response (§5.1), or the error it carries (§5.2).

    On success: `access_token` must be a non-empty RFC 6750 `b64token` (§2.1 of RFC 6750; it is sent
    as `Authorization: Bearer <token>`) and `token_type` Bearer (any case;
    a missing `token_type` is taken as Bearer, since some servers omit it); `expires_at` is
    `now + expires_in`; `scopes` are the returned `scope`, else the requested ones (§5.1);
    the previous refresh token is kept when none is returned (§6).

    Raises InvalidGrantError for `invalid_grant`, TokenError for any other refusal or an
    unreadable response.
    """
    endpoint = url_for_message(token_endpoint)
    data = _load_object(body)
    error = _text(data.get("error")) if data is not None else None
    if not 200 <= status < 300 or error is not None:
        _raise_token_error(status, data, endpoint, hide=(previous_refresh_token,))
    if data is None:
        raise TokenError(f"token endpoint {endpoint} answered HTTP {status} with a body that is not a JSON object")
    access_token = data.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise TokenError(f"token endpoint {endpoint} answered without an access_token")
    if not is_token68(access_token):  # RFC 6750 §2.1 b64token: the same grammar as token68
        # Not quoted: a value with CR/LF, spaces or other bytes would corrupt the Authorization
        # header (or smuggle another one), and it is a secret all the same.
        raise TokenError(
            f"token endpoint {endpoint} issued an access token that is not an RFC 6750 b64token "
            f"({len(access_token)} characters; only A-Z a-z 0-9 - . _ ~ + / and trailing = are allowed)",
            hint="report it to the server's operator; the token was not stored or used",
        )
    token_type = data.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        shown = _clean(token_type if isinstance(token_type, str) else type(token_type).__name__)
        raise TokenError(
            f"token endpoint {endpoint} issued a token of type {shown!r}; Bastion only uses Bearer tokens",
            hint="report it to the server's operator",
        )
    scope = data.get("scope")
    refresh_token = data.get("refresh_token")
    return TokenSet(
        access_token=access_token,
        token_type="Bearer",
        refresh_token=refresh_token if isinstance(refresh_token, str) and refresh_token else previous_refresh_token,
        expires_at=_expires_at(data.get("expires_in"), now),
        scopes=scope.split() if isinstance(scope, str) else list(requested_scopes),
        issuer=issuer,
        token_endpoint=token_endpoint,
        revocation_endpoint=revocation_endpoint,
        resource=resource,
        client_id=client_id,
        obtained_at=now,
    )


_ERROR_HINTS = {
    "invalid_grant": "the code or refresh token is spent, expired or revoked; "
    "run `bastion oauth authorize` for this server",
    "invalid_client": "the client registration is no longer accepted; "
    "run `bastion oauth authorize` for this server to register again",
    "invalid_scope": "the server refused the requested scopes; check the scopes configured for this server",
}


def _raise_token_error(
    status: int, data: dict[str, object] | None, endpoint: str, hide: Sequence[str | None]
) -> NoReturn:
    error = _clean(_text(data.get("error")), hide) if data is not None else None
    description = _clean(_text(data.get("error_description")), hide) if data is not None else None
    error_uri = _clean(_text(data.get("error_uri")), hide) if data is not None else None
    if error is None:
        raise TokenError(f"token endpoint {endpoint} answered HTTP {status} without an OAuth error response")
    message = f"token endpoint refused: {error}: {description}" if description else f"token endpoint refused: {error}"
    cls = InvalidGrantError if error == "invalid_grant" else TokenError
    raise cls(
        message,
        error=error,
        error_description=description,
        error_uri=error_uri,
        hint=_ERROR_HINTS.get(error),
    )
