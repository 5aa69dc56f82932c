"""RFC 7591 — OAuth 2.0 Dynamic Client Registration Protocol: the request (§2, §3.1), the
response (§3.2.1) and the error response (§3.2.2). `application_type` is from OpenID Connect
Dynamic Client Registration 1.0 §2.

https://www.rfc-editor.org/rfc/rfc7591
https://openid.net/specs/openid-connect-registration-1_0.html#ClientMetadata

Bastion registers as a native public client (RFC 8252 §8.4) with a loopback redirect URI,
unless the server only accepts confidential clients.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, ValidationError

from bastion.errors import RegistrationError
from bastion.oauth.rfc6749 import parse_oauth_error
from bastion.store.models import ClientRegistration

__all__ = ["ClientMetadata", "build_registration_request", "parse_registration_response"]


class ClientMetadata(BaseModel):
    """Client metadata sent to the registration endpoint (RFC 7591 §2). Send it with
    `model_dump(exclude_none=True)` (or `to_json()`)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    redirect_uris: list[str]
    token_endpoint_auth_method: str | None = None
    grant_types: list[str] | None = None
    response_types: list[str] | None = None
    client_name: str | None = None
    client_uri: str | None = None
    logo_uri: str | None = None
    scope: str | None = None
    contacts: list[str] | None = None
    tos_uri: str | None = None
    policy_uri: str | None = None
    jwks_uri: str | None = None
    software_id: str | None = None
    software_version: str | None = None
    application_type: str | None = None

    def to_json(self) -> bytes:
        """The request body (members that are None are left out)."""
        return self.model_dump_json(exclude_none=True).encode("utf-8")


def _auth_method(supported: Sequence[str] | None) -> str:
    if not supported or "none" in supported:
        return "none"
    for preferred in ("client_secret_basic", "client_secret_post"):
        if preferred in supported:
            return preferred
    return supported[0]


def build_registration_request(
    *,
    server_name: str,
    redirect_uris: Sequence[str],
    scopes: Sequence[str],
    token_endpoint_auth_methods_supported: Sequence[str] | None,
) -> ClientMetadata:
    """The registration request for the MCP server `server_name`: a native public client
    (`token_endpoint_auth_method: none`) for the authorization code grant with refresh tokens.
    When the server lists token endpoint auth methods without `none`, the first of
    client_secret_basic, client_secret_post, or else the server's first method, is asked for.
    """
    return ClientMetadata(
        redirect_uris=list(redirect_uris),
        token_endpoint_auth_method=_auth_method(token_endpoint_auth_methods_supported),
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
        client_name=f"Bastion ({server_name})",
        scope=" ".join(scopes) if scopes else None,
        application_type="native",
    )


def parse_registration_response(
    status: int, body: bytes, *, issuer: str, redirect_uris: Sequence[str]
) -> ClientRegistration:
    """The registration of a successful response (RFC 7591 §3.2.1), with `source="dcr"` and
    `issuer` set. Everything the server returned is kept (unknown members too). When the
    server omits `redirect_uris`, the requested ones are kept; when it omits
    `token_endpoint_auth_method`, the §2 default applies (`client_secret_basic`) if a secret
    was issued, else `none`.

    Raises RegistrationError carrying the §3.2.2 `error` and `error_description` when the
    server refused, or naming the problem when the response is unreadable or has no
    `client_id`.
    """
    hint = "the server may not allow dynamic client registration; configure a pre-registered client for it"
    if not 200 <= status < 300:
        error, description, error_uri = parse_oauth_error(body)
        if error:
            detail = f"{error}: {description}" if description else error
            raise RegistrationError(
                f"registration endpoint of {issuer} refused: {detail}",
                error=error,
                error_description=description,
                error_uri=error_uri,
                hint=hint,
            )
        raise RegistrationError(f"registration endpoint of {issuer} answered HTTP {status}", hint=hint)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise RegistrationError(f"registration endpoint of {issuer} answered with a body that is not a JSON object")
    client_id = data.get("client_id")
    if not isinstance(client_id, str) or not client_id:
        raise RegistrationError(f"registration endpoint of {issuer} answered without a client_id")
    fields = {key: value for key, value in data.items() if value is not None}
    fields.setdefault("redirect_uris", list(redirect_uris))
    fields.setdefault("token_endpoint_auth_method", "client_secret_basic" if fields.get("client_secret") else "none")
    fields.update(issuer=issuer, source="dcr")
    try:
        return ClientRegistration.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(item) for item in first["loc"])
        raise RegistrationError(
            f"registration endpoint of {issuer} answered with an invalid `{where}`: {first['msg']}"
        ) from None
