"""RFC 9728 protected resource metadata: discovery URLs, parsing, resource check."""

from __future__ import annotations

import json

import pytest

from bastion.errors import DiscoveryError, ResourceMismatchError
from bastion.oauth.rfc9728 import (
    ProtectedResourceMetadata,
    parse_protected_resource_metadata,
    protected_resource_metadata_urls,
    validate_resource,
)


@pytest.mark.parametrize(
    ("server", "header", "urls"),
    [
        pytest.param(
            "https://resource.example.com/resource1",
            None,
            [
                "https://resource.example.com/.well-known/oauth-protected-resource/resource1",
                "https://resource.example.com/.well-known/oauth-protected-resource",
            ],
            id="rfc9728-3.1-path",
        ),
        pytest.param(
            "https://resource.example.com",
            None,
            ["https://resource.example.com/.well-known/oauth-protected-resource"],
            id="no-path",
        ),
        pytest.param(
            "https://resource.example.com/",
            None,
            ["https://resource.example.com/.well-known/oauth-protected-resource"],
            id="root-path",
        ),
        pytest.param(
            "https://x.example/mcp",
            "https://x.example/.well-known/oauth-protected-resource/mcp",
            [
                "https://x.example/.well-known/oauth-protected-resource/mcp",
                "https://x.example/.well-known/oauth-protected-resource",
            ],
            id="header-duplicate-removed",
        ),
        pytest.param(
            "https://x.example/mcp",
            "https://meta.example/prm",
            [
                "https://meta.example/prm",
                "https://x.example/.well-known/oauth-protected-resource/mcp",
                "https://x.example/.well-known/oauth-protected-resource",
            ],
            id="header-first",
        ),
        pytest.param(
            "https://x.example/a/mcp/",
            None,
            [
                "https://x.example/.well-known/oauth-protected-resource/a/mcp/",
                "https://x.example/.well-known/oauth-protected-resource/a/mcp",
                "https://x.example/.well-known/oauth-protected-resource",
            ],
            id="trailing-slash",
        ),
        pytest.param(
            "https://x.example:8443/mcp?tenant=a",
            None,
            [
                "https://x.example:8443/.well-known/oauth-protected-resource/mcp?tenant=a",
                "https://x.example:8443/.well-known/oauth-protected-resource",
            ],
            id="rfc9728-3.1-query",
        ),
        pytest.param(
            "https://x.example/mcp",
            "/.well-known/custom",
            [
                "https://x.example/.well-known/custom",
                "https://x.example/.well-known/oauth-protected-resource/mcp",
                "https://x.example/.well-known/oauth-protected-resource",
            ],
            id="relative-header-resolved",
        ),
    ],
)
def test_protected_resource_metadata_urls(server: str, header: str | None, urls: list[str]) -> None:
    """RFC 9728 §3.1 (well-known insertion) and §5.1 (header first), in the MCP order."""
    assert protected_resource_metadata_urls(server, header) == urls


def test_path_aware_url_inserts_well_known_before_path() -> None:
    assert protected_resource_metadata_urls("https://x.example/v1/mcp", None)[0] == (
        "https://x.example/.well-known/oauth-protected-resource/v1/mcp"
    )


def test_rfc_example_document_parses() -> None:
    """RFC 9728 §3.2 example response."""
    body = json.dumps(
        {
            "resource": "https://resource.example.com",
            "authorization_servers": ["https://as1.example.com", "https://as2.example.net"],
            "bearer_methods_supported": ["header", "body"],
            "scopes_supported": ["profile", "email", "phone"],
            "resource_documentation": "https://resource.example.com/resource_documentation.html",
        }
    ).encode()
    metadata = parse_protected_resource_metadata(body, "https://resource.example.com/.well-known/x")
    assert metadata.resource == "https://resource.example.com"
    assert metadata.authorization_servers == ["https://as1.example.com", "https://as2.example.net"]
    assert metadata.scopes_supported == ["profile", "email", "phone"]
    assert metadata.bearer_methods_supported == ["header", "body"]


def test_unknown_members_are_kept_and_defaults_apply() -> None:
    metadata = parse_protected_resource_metadata(b'{"resource": "https://r.example", "x_custom": 1}', "https://r")
    assert metadata.authorization_servers == []
    assert metadata.scopes_supported is None
    assert metadata.model_extra == {"x_custom": 1}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"<html>not json</html>", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b"{}", "no `resource`"),
        (b'{"resource": 5}', "invalid `resource`"),
        (b'{"resource": "https://r", "authorization_servers": "https://as"}', "invalid `authorization_servers`"),
    ],
)
def test_invalid_document_raises_discovery_error_naming_url(body: bytes, fragment: str) -> None:
    with pytest.raises(DiscoveryError) as info:
        parse_protected_resource_metadata(body, "https://r.example/.well-known/oauth-protected-resource?k=secret")
    message = str(info.value)
    assert fragment in message
    assert "https://r.example/.well-known/oauth-protected-resource" in message
    assert "secret" not in message


def test_matching_resource_is_accepted() -> None:
    validate_resource(ProtectedResourceMetadata(resource="https://x.example/"), "https://x.example/mcp")
    validate_resource(ProtectedResourceMetadata(resource="https://x.example/mcp"), "https://X.example:443/mcp")


def test_resource_for_another_server_is_refused_naming_both() -> None:
    with pytest.raises(ResourceMismatchError) as info:
        validate_resource(ProtectedResourceMetadata(resource="https://evil.example/mcp"), "https://x.example/mcp")
    message = str(info.value)
    assert "https://evil.example/mcp" in message and "https://x.example/mcp" in message
    assert "misconfigured or lying" in message
