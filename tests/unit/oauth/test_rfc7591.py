"""RFC 7591 dynamic client registration."""

from __future__ import annotations

import json

import pytest

from bastion.errors import RegistrationError
from bastion.oauth.rfc7591 import ClientMetadata, build_registration_request, parse_registration_response

REDIRECT = ["http://127.0.0.1:5000/callback"]
ISSUER = "https://as.example"


def _request(methods: list[str] | None = None, scopes: list[str] | None = None) -> ClientMetadata:
    return build_registration_request(
        server_name="notion",
        redirect_uris=REDIRECT,
        scopes=scopes or [],
        token_endpoint_auth_methods_supported=methods,
    )


def test_registration_request_is_a_native_public_client() -> None:
    """RFC 7591 §2; OpenID Connect Registration §2 `application_type`."""
    assert json.loads(_request(scopes=["read", "write"]).to_json()) == {
        "redirect_uris": REDIRECT,
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "client_name": "Bastion (notion)",
        "scope": "read write",
        "application_type": "native",
    }


def test_scope_is_left_out_when_empty() -> None:
    assert "scope" not in json.loads(_request().to_json())


@pytest.mark.parametrize(
    ("methods", "chosen"),
    [
        (None, "none"),
        ([], "none"),
        (["client_secret_basic", "none"], "none"),
        (["client_secret_post", "client_secret_basic"], "client_secret_basic"),
        (["private_key_jwt", "client_secret_post"], "client_secret_post"),
        (["private_key_jwt", "tls_client_auth"], "private_key_jwt"),
    ],
)
def test_auth_method_follows_server_support(methods: list[str] | None, chosen: str) -> None:
    assert _request(methods).token_endpoint_auth_method == chosen


def test_rfc_example_response_is_kept_whole() -> None:
    """RFC 7591 §3.2.1 example."""
    body = {
        "client_id": "s6BhdRkqt3",
        "client_secret": "cf136dc3c1fc93f31185e5885805d",
        "client_id_issued_at": 2893256800,
        "client_secret_expires_at": 2893276800,
        "redirect_uris": ["https://client.example.org/callback", "https://client.example.org/callback2"],
        "grant_types": ["authorization_code", "refresh_token"],
        "client_name": "My Example Client",
        "token_endpoint_auth_method": "client_secret_basic",
        "logo_uri": "https://client.example.org/logo.png",
        "jwks_uri": "https://client.example.org/my_public_keys.jwks",
        "example_extension_parameter": "example_value",
    }
    client = parse_registration_response(201, json.dumps(body).encode(), issuer=ISSUER, redirect_uris=REDIRECT)
    assert client.client_id == "s6BhdRkqt3"
    assert client.client_secret == "cf136dc3c1fc93f31185e5885805d"
    assert client.client_id_issued_at == 2893256800
    assert client.token_endpoint_auth_method == "client_secret_basic"
    assert client.redirect_uris == body["redirect_uris"]
    assert (client.issuer, client.source) == (ISSUER, "dcr")
    assert client.model_extra is not None and client.model_extra["example_extension_parameter"] == "example_value"
    assert "cf136dc3c1fc93f31185e5885805d" not in repr(client)


def test_omitted_fields_get_requested_redirects_and_public_method() -> None:
    client = parse_registration_response(
        201, b'{"client_id": "abc", "client_secret": null}', issuer=ISSUER, redirect_uris=REDIRECT
    )
    assert client.redirect_uris == REDIRECT
    assert client.token_endpoint_auth_method == "none"
    assert client.client_secret is None


def test_omitted_method_with_secret_defaults_to_client_secret_basic() -> None:
    """RFC 7591 §2: the default token_endpoint_auth_method is client_secret_basic."""
    body = b'{"client_id": "abc", "client_secret": "s"}'
    client = parse_registration_response(201, body, issuer=ISSUER, redirect_uris=REDIRECT)
    assert client.token_endpoint_auth_method == "client_secret_basic"


def test_server_cannot_override_issuer_or_source() -> None:
    body = b'{"client_id": "abc", "issuer": "https://evil", "source": "preregistered"}'
    client = parse_registration_response(201, body, issuer=ISSUER, redirect_uris=REDIRECT)
    assert (client.issuer, client.source) == (ISSUER, "dcr")


def test_rfc_error_response_raises_with_code_and_description() -> None:
    """RFC 7591 §3.2.2 example."""
    body = json.dumps(
        {
            "error": "invalid_redirect_uri",
            "error_description": "The redirection URI http://sketchy.example.com is not allowed by this server.",
        }
    ).encode()
    with pytest.raises(RegistrationError) as info:
        parse_registration_response(400, body, issuer=ISSUER, redirect_uris=REDIRECT)
    assert info.value.error == "invalid_redirect_uri"
    assert info.value.error_description is not None and "not allowed" in info.value.error_description
    assert "invalid_redirect_uri" in str(info.value) and ISSUER in str(info.value)


def test_refusal_without_error_body_names_status() -> None:
    with pytest.raises(RegistrationError, match="HTTP 403"):
        parse_registration_response(403, b"Forbidden", issuer=ISSUER, redirect_uris=REDIRECT)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "not a JSON object"),
        (b"[]", "not a JSON object"),
        (b"{}", "without a client_id"),
        (b'{"client_id": ""}', "without a client_id"),
        (b'{"client_id": 7}', "without a client_id"),
        (b'{"client_id": "a", "redirect_uris": "x"}', "invalid `redirect_uris`"),
    ],
)
def test_unreadable_success_response_raises(body: bytes, fragment: str) -> None:
    with pytest.raises(RegistrationError, match=fragment):
        parse_registration_response(201, body, issuer=ISSUER, redirect_uris=REDIRECT)
