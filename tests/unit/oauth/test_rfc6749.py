"""RFC 6749 wire format: authorization URL, token requests, client authentication, responses."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, parse_qsl, unquote_plus, urlsplit

import pytest

from bastion.errors import InvalidGrantError, RegistrationError, TokenError
from bastion.oauth.rfc6749 import (
    authorization_code_form,
    build_authorization_url,
    client_authentication,
    client_credentials_form,
    parse_oauth_error,
    parse_token_response,
    refresh_form,
)
from bastion.store.models import ClientRegistration, TokenSet

NOW = 1_700_000_000.0
ACCESS = "at-SECRET-1234"
REFRESH = "rt-SECRET-5678"


def _authorize(endpoint: str = "https://as.example/authorize", **kwargs: object) -> str:
    args: dict[str, object] = {
        "client_id": "cid",
        "redirect_uri": "http://127.0.0.1:5000/callback",
        "state": "st",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "scopes": ["read", "write"],
        "resource": "https://mcp.example.com/mcp",
    }
    args.update(kwargs)
    return build_authorization_url(endpoint, **args)  # type: ignore[arg-type]


def test_authorization_url_carries_code_flow_pkce_and_resource() -> None:
    """RFC 6749 §4.1.1, RFC 7636 §4.3, RFC 8707 §2."""
    url = _authorize()
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "as.example", "/authorize")
    assert dict(parse_qsl(parts.query)) == {
        "response_type": "code",
        "client_id": "cid",
        "redirect_uri": "http://127.0.0.1:5000/callback",
        "state": "st",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
        "scope": "read write",
        "resource": "https://mcp.example.com/mcp",
    }
    assert "scope=read%20write" in url


def test_authorization_url_keeps_endpoint_query_and_drops_fragment() -> None:
    """RFC 6749 §3.1: the endpoint's query MUST be retained; no fragment."""
    url = _authorize("https://as.example/authorize?tenant=a+b&state=old#frag")
    parts = urlsplit(url)
    assert parts.query.startswith("tenant=a+b&")
    assert parts.fragment == ""
    assert parse_qs(parts.query)["state"] == ["st"]
    assert parse_qs(parts.query)["tenant"] == ["a b"]


def test_authorization_url_omits_empty_scope_and_missing_resource() -> None:
    query = parse_qs(urlsplit(_authorize(scopes=[], resource=None)).query)
    assert "scope" not in query and "resource" not in query


def test_authorization_url_adds_extra_parameters() -> None:
    query = parse_qs(urlsplit(_authorize(extra={"prompt": "consent"})).query)
    assert query["prompt"] == ["consent"]


def test_extra_parameters_cannot_override_required_ones() -> None:
    with pytest.raises(ValueError):
        _authorize(extra={"code_challenge_method": "plain"})


def test_authorization_code_form() -> None:
    """RFC 6749 §4.1.3, RFC 7636 §4.5, RFC 8707 §2.2."""
    assert authorization_code_form("c0de", "http://127.0.0.1:1/cb", "v" * 43, "https://r.example") == {
        "grant_type": "authorization_code",
        "code": "c0de",
        "redirect_uri": "http://127.0.0.1:1/cb",
        "code_verifier": "v" * 43,
        "resource": "https://r.example",
    }
    assert "resource" not in authorization_code_form("c", "r", "v", None)


@pytest.mark.parametrize(
    ("scopes", "resource", "expected"),
    [
        (None, None, {"grant_type": "refresh_token", "refresh_token": REFRESH}),
        ([], "https://r", {"grant_type": "refresh_token", "refresh_token": REFRESH, "resource": "https://r"}),
        (["a", "b"], None, {"grant_type": "refresh_token", "refresh_token": REFRESH, "scope": "a b"}),
    ],
)
def test_refresh_form(scopes: list[str] | None, resource: str | None, expected: dict[str, str]) -> None:
    """RFC 6749 §6, RFC 8707 §2.2."""
    assert refresh_form(REFRESH, resource, scopes) == expected


def test_client_credentials_form() -> None:
    """RFC 6749 §4.4.2."""
    assert client_credentials_form(["a"], "https://r") == {
        "grant_type": "client_credentials",
        "scope": "a",
        "resource": "https://r",
    }
    assert client_credentials_form([], None) == {"grant_type": "client_credentials"}


def test_public_client_sends_client_id_in_form() -> None:
    """RFC 6749 §3.2.1."""
    assert client_authentication(ClientRegistration(client_id="cid")) == ({"client_id": "cid"}, {})


def test_client_secret_post_sends_both_in_form() -> None:
    client = ClientRegistration(client_id="cid", client_secret="s3", token_endpoint_auth_method="client_secret_post")
    assert client_authentication(client) == ({"client_id": "cid", "client_secret": "s3"}, {})


def test_client_secret_basic_form_urlencodes_before_base64() -> None:
    """RFC 6749 §2.3.1: id and secret are application/x-www-form-urlencoded, then Basic."""
    client = ClientRegistration(
        client_id="id:with space", client_secret="p@ss/wörd+", token_endpoint_auth_method="client_secret_basic"
    )
    form, headers = client_authentication(client)
    assert form == {}
    scheme, encoded = headers["Authorization"].split(" ")
    assert scheme == "Basic"
    user, password = base64.b64decode(encoded).decode("ascii").split(":")
    assert user == "id%3Awith+space"
    assert (unquote_plus(user), unquote_plus(password)) == ("id:with space", "p@ss/wörd+")


def test_method_argument_overrides_registration() -> None:
    client = ClientRegistration(client_id="cid", client_secret="s3", token_endpoint_auth_method="client_secret_post")
    assert client_authentication(client, "none") == ({"client_id": "cid"}, {})


def test_secret_method_without_secret_is_refused_without_leaking() -> None:
    with pytest.raises(RegistrationError, match="no client secret"):
        client_authentication(ClientRegistration(client_id="cid", token_endpoint_auth_method="client_secret_basic"))


def test_unsupported_method_is_refused() -> None:
    client = ClientRegistration(client_id="cid", client_secret="s3", token_endpoint_auth_method="private_key_jwt")
    with pytest.raises(RegistrationError, match="private_key_jwt") as info:
        client_authentication(client)
    assert "s3" not in str(info.value)


def _parse(status: int, body: object, **kwargs: object) -> TokenSet:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    args: dict[str, object] = {
        "now": NOW,
        "issuer": "https://as.example",
        "token_endpoint": "https://as.example/token",
        "revocation_endpoint": "https://as.example/revoke",
        "resource": "https://mcp.example.com/mcp",
        "client_id": "cid",
        "requested_scopes": ["read", "write"],
    }
    args.update(kwargs)
    return parse_token_response(status, raw, **args)  # type: ignore[arg-type]


def test_rfc_example_token_response() -> None:
    """RFC 6749 §5.1 example."""
    tokens = _parse(
        200,
        {
            "access_token": "2YotnFZFEjr1zCsicMWpAA",
            "token_type": "Bearer",
            "expires_in": 3600,
            "refresh_token": "tGzv3JOkF0XG5Qx2TlKWIA",
            "example_parameter": "example_value",
        },
    )
    assert tokens.access_token == "2YotnFZFEjr1zCsicMWpAA"
    assert tokens.refresh_token == "tGzv3JOkF0XG5Qx2TlKWIA"
    assert tokens.expires_at == NOW + 3600
    assert tokens.obtained_at == NOW
    assert tokens.scopes == ["read", "write"]
    assert (tokens.issuer, tokens.token_endpoint, tokens.revocation_endpoint) == (
        "https://as.example",
        "https://as.example/token",
        "https://as.example/revoke",
    )
    assert (tokens.resource, tokens.client_id, tokens.token_type) == ("https://mcp.example.com/mcp", "cid", "Bearer")


@pytest.mark.parametrize("token_type", ["bearer", "BEARER", "Bearer"])
def test_token_type_is_case_insensitive(token_type: str) -> None:
    """RFC 6749 §5.1: token_type is case insensitive."""
    assert _parse(200, {"access_token": ACCESS, "token_type": token_type}).token_type == "Bearer"


def test_missing_token_type_is_taken_as_bearer() -> None:
    assert _parse(200, {"access_token": ACCESS}).token_type == "Bearer"


@pytest.mark.parametrize("token_type", ["DPoP", "mac", 5])
def test_non_bearer_token_type_is_refused(token_type: object) -> None:
    with pytest.raises(TokenError, match="Bearer") as info:
        _parse(200, {"access_token": ACCESS, "token_type": token_type})
    assert ACCESS not in str(info.value)


def test_returned_scope_replaces_requested() -> None:
    """RFC 6749 §5.1 / §3.3: the granted scope when it differs."""
    assert _parse(200, {"access_token": ACCESS, "token_type": "Bearer", "scope": "read"}).scopes == ["read"]


@pytest.mark.parametrize(("expires_in", "expected"), [("120", NOW + 120), (None, None), ("soon", None), (True, None)])
def test_expires_in_is_lenient(expires_in: object, expected: float | None) -> None:
    body = {"access_token": ACCESS, "token_type": "Bearer", "expires_in": expires_in}
    assert _parse(200, body).expires_at == expected


def test_previous_refresh_token_is_kept_when_none_returned() -> None:
    """RFC 6749 §6: the server MAY issue a new refresh token."""
    tokens = _parse(200, {"access_token": ACCESS, "token_type": "Bearer"}, previous_refresh_token=REFRESH)
    assert tokens.refresh_token == REFRESH


def test_rotated_refresh_token_replaces_previous() -> None:
    body = {"access_token": ACCESS, "token_type": "Bearer", "refresh_token": "new"}
    assert _parse(200, body, previous_refresh_token=REFRESH).refresh_token == "new"


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", json.dumps({"token_type": "Bearer"}).encode(), json.dumps({"access_token": ""}).encode()],
)
def test_unreadable_success_response_raises_token_error(body: bytes) -> None:
    with pytest.raises(TokenError) as info:
        _parse(200, body)
    assert not isinstance(info.value, InvalidGrantError)


@pytest.mark.parametrize(
    ("status", "body", "cls", "message"),
    [
        pytest.param(
            400,
            {"error": "invalid_request"},
            TokenError,
            "token endpoint refused: invalid_request",
            id="rfc6749-5.2",
        ),
        pytest.param(
            400,
            {"error": "invalid_grant", "error_description": "refresh token revoked", "error_uri": "https://e/x"},
            InvalidGrantError,
            "token endpoint refused: invalid_grant: refresh token revoked",
            id="invalid-grant",
        ),
        pytest.param(
            200,
            {"error": "invalid_client", "error_description": "unknown client"},
            TokenError,
            "token endpoint refused: invalid_client: unknown client",
            id="error-in-200",
        ),
        pytest.param(
            401,
            b"error=invalid_client&error_description=bad+client",
            TokenError,
            "token endpoint refused: invalid_client: bad client",
            id="form-encoded",
        ),
    ],
)
def test_error_response_raises_with_rfc_fields(status: int, body: object, cls: type[TokenError], message: str) -> None:
    """RFC 6749 §5.2."""
    with pytest.raises(cls) as info:
        _parse(status, body)
    assert type(info.value) is cls
    assert str(info.value).startswith(message)
    assert info.value.error is not None and info.value.error in message


def test_error_fields_are_carried() -> None:
    body = {"error": "invalid_grant", "error_description": "expired", "error_uri": "https://as.example/e"}
    with pytest.raises(InvalidGrantError) as info:
        _parse(400, body)
    assert (info.value.error, info.value.error_description, info.value.error_uri) == (
        "invalid_grant",
        "expired",
        "https://as.example/e",
    )
    assert info.value.hint is not None and "bastion oauth authorize" in info.value.hint


def test_error_message_never_contains_the_refresh_token() -> None:
    body = {"error": "invalid_grant", "error_description": f"token {REFRESH} was revoked\r\nInjected: x"}
    with pytest.raises(InvalidGrantError) as info:
        _parse(400, body, previous_refresh_token=REFRESH)
    assert REFRESH not in str(info.value)
    assert "\n" not in str(info.value)


def test_non_oauth_error_body_names_status_and_endpoint() -> None:
    with pytest.raises(TokenError) as info:
        _parse(502, b"<html>Bad gateway</html>", token_endpoint="https://as.example/token?key=secret")
    assert "HTTP 502" in str(info.value) and "https://as.example/token" in str(info.value)
    assert "secret" not in str(info.value)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"error": "invalid_grant", "error_description": "d", "error_uri": "u"}', ("invalid_grant", "d", "u")),
        (b'{"error": 5}', (None, None, None)),
        (b"[1]", (None, None, None)),
        (b"", (None, None, None)),
        (b"\xff\xfe", (None, None, None)),
        (b"[" * 100_000, (None, None, None)),
        (b"error=access_denied", ("access_denied", None, None)),
        (b"plain text", (None, None, None)),
    ],
)
def test_parse_oauth_error_never_raises(body: bytes, expected: tuple[str | None, str | None, str | None]) -> None:
    assert parse_oauth_error(body) == expected
