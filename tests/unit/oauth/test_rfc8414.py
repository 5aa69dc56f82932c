"""RFC 8414 authorization server metadata, with the OpenID Connect discovery forms."""

from __future__ import annotations

import json

import pytest

from bastion.errors import DiscoveryError, IssuerMismatchError, PKCEUnsupportedError
from bastion.oauth.rfc8414 import (
    AuthorizationServerMetadata,
    authorization_server_metadata_urls,
    legacy_default_metadata,
    parse_authorization_server_metadata,
    require_s256,
    validate_issuer,
)

MINIMAL = {"issuer": "https://as.example", "token_endpoint": "https://as.example/token"}


def _metadata(**fields: object) -> AuthorizationServerMetadata:
    return AuthorizationServerMetadata.model_validate({**MINIMAL, **fields})


@pytest.mark.parametrize(
    ("issuer", "urls"),
    [
        pytest.param(
            "https://example.com/issuer1",
            [
                "https://example.com/.well-known/oauth-authorization-server/issuer1",
                "https://example.com/.well-known/openid-configuration/issuer1",
                "https://example.com/issuer1/.well-known/openid-configuration",
            ],
            id="rfc8414-3.1-path",
        ),
        pytest.param(
            "https://example.com",
            [
                "https://example.com/.well-known/oauth-authorization-server",
                "https://example.com/.well-known/openid-configuration",
            ],
            id="rfc8414-3.1-no-path",
        ),
        pytest.param(
            "https://example.com/",
            [
                "https://example.com/.well-known/oauth-authorization-server",
                "https://example.com/.well-known/openid-configuration",
            ],
            id="root-slash",
        ),
        pytest.param(
            "https://example.com/tenant/a/",
            [
                "https://example.com/.well-known/oauth-authorization-server/tenant/a",
                "https://example.com/.well-known/openid-configuration/tenant/a",
                "https://example.com/tenant/a/.well-known/openid-configuration",
            ],
            id="trailing-slash-stripped",
        ),
        pytest.param(
            "http://127.0.0.1:9000/realms/x",
            [
                "http://127.0.0.1:9000/.well-known/oauth-authorization-server/realms/x",
                "http://127.0.0.1:9000/.well-known/openid-configuration/realms/x",
                "http://127.0.0.1:9000/realms/x/.well-known/openid-configuration",
            ],
            id="port-kept",
        ),
    ],
)
def test_authorization_server_metadata_urls(issuer: str, urls: list[str]) -> None:
    """RFC 8414 §3.1 and §5; OpenID Connect Discovery 1.0 §4; MCP 2025-06-18 order."""
    assert authorization_server_metadata_urls(issuer) == urls


def test_path_issuer_inserts_well_known_before_path() -> None:
    assert authorization_server_metadata_urls("https://as.example/t1")[0] == (
        "https://as.example/.well-known/oauth-authorization-server/t1"
    )


def test_rfc_example_document_parses() -> None:
    """RFC 8414 §3.2 example response."""
    body = json.dumps(
        {
            "issuer": "https://server.example.com",
            "authorization_endpoint": "https://server.example.com/authorize",
            "token_endpoint": "https://server.example.com/token",
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
            "userinfo_endpoint": "https://server.example.com/userinfo",
            "jwks_uri": "https://server.example.com/jwks.json",
            "registration_endpoint": "https://server.example.com/register",
            "scopes_supported": ["openid", "profile", "email", "address", "phone", "offline_access"],
            "response_types_supported": ["code", "code token"],
            "service_documentation": "http://server.example.com/service_documentation.html",
            "ui_locales_supported": ["en-US", "en-GB", "en-CA", "fr-FR", "fr-CA"],
        }
    ).encode()
    metadata = parse_authorization_server_metadata(body, "https://server.example.com/.well-known/x")
    assert metadata.issuer == "https://server.example.com"
    assert metadata.registration_endpoint == "https://server.example.com/register"
    assert metadata.token_endpoint_auth_methods_supported == ["client_secret_basic", "private_key_jwt"]
    assert metadata.model_extra == {"userinfo_endpoint": "https://server.example.com/userinfo"}
    assert metadata.authorization_response_iss_parameter_supported is False
    assert metadata.client_id_metadata_document_supported is False


def test_issuer_is_kept_verbatim() -> None:
    metadata = parse_authorization_server_metadata(
        json.dumps({**MINIMAL, "issuer": "https://AS.example/"}).encode(), "u"
    )
    assert metadata.issuer == "https://AS.example/"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "not valid JSON"),
        (b'"a string"', "not a JSON object"),
        (b'{"token_endpoint": "https://as/token"}', "no `issuer`"),
        (b'{"issuer": "https://as"}', "no `token_endpoint`"),
        (b'{"issuer": "https://as", "token_endpoint": "t", "code_challenge_methods_supported": "S256"}', "invalid"),
    ],
)
def test_invalid_document_raises_discovery_error_naming_url(body: bytes, fragment: str) -> None:
    with pytest.raises(DiscoveryError) as info:
        parse_authorization_server_metadata(body, "https://as.example/.well-known/oauth-authorization-server")
    assert fragment in str(info.value)
    assert "https://as.example/.well-known/oauth-authorization-server" in str(info.value)


def test_same_issuer_is_accepted() -> None:
    validate_issuer(_metadata(), "https://as.example")


@pytest.mark.parametrize(
    "issuer", ["https://as.example/", "https://AS.example", "https://as.example:443", "https://other"]
)
def test_issuer_must_match_exactly(issuer: str) -> None:
    """RFC 8414 §3.3: identical, no normalisation."""
    with pytest.raises(IssuerMismatchError) as info:
        validate_issuer(_metadata(), issuer)
    assert issuer in str(info.value) and "https://as.example" in str(info.value)


def test_s256_advertised_is_accepted() -> None:
    require_s256(_metadata(code_challenge_methods_supported=["plain", "S256"]))


@pytest.mark.parametrize("methods", [None, [], ["plain"], ["s256"]])
def test_missing_s256_is_refused(methods: list[str] | None) -> None:
    with pytest.raises(PKCEUnsupportedError, match="S256.*refuses"):
        require_s256(_metadata(code_challenge_methods_supported=methods))


def test_legacy_default_metadata_uses_origin_endpoints() -> None:
    """MCP 2025-03-26 §2.3.3 fallback."""
    metadata = legacy_default_metadata("https://mcp.example.com/some/path")
    assert metadata.issuer == "https://mcp.example.com"
    assert metadata.authorization_endpoint == "https://mcp.example.com/authorize"
    assert metadata.token_endpoint == "https://mcp.example.com/token"
    assert metadata.registration_endpoint == "https://mcp.example.com/register"
    assert metadata.code_challenge_methods_supported == ["S256"]
    require_s256(metadata)
