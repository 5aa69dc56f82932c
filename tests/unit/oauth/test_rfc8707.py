"""RFC 8707 resource indicators and the MCP canonical server URI."""

from __future__ import annotations

import pytest

from bastion.oauth.rfc8707 import canonical_resource, resource_matches


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("https://mcp.example.com/mcp", "https://mcp.example.com/mcp"),
        ("https://mcp.example.com", "https://mcp.example.com"),
        ("https://mcp.example.com:8443", "https://mcp.example.com:8443"),
        ("https://mcp.example.com/server/mcp", "https://mcp.example.com/server/mcp"),
        ("HTTPS://MCP.Example.COM/MCP", "https://mcp.example.com/MCP"),
        ("https://mcp.example.com/", "https://mcp.example.com"),
        ("https://mcp.example.com:443/mcp", "https://mcp.example.com/mcp"),
        ("http://localhost:80/mcp", "http://localhost/mcp"),
        ("http://127.0.0.1:8080/mcp", "http://127.0.0.1:8080/mcp"),
        ("https://mcp.example.com/mcp#frag", "https://mcp.example.com/mcp"),
        ("https://mcp.example.com/mcp?tenant=a", "https://mcp.example.com/mcp?tenant=a"),
        ("https://mcp.example.com/?tenant=a", "https://mcp.example.com/?tenant=a"),
        ("https://mcp.example.com/mcp/", "https://mcp.example.com/mcp/"),
        ("https://user:pw@mcp.example.com/mcp", "https://mcp.example.com/mcp"),
        ("http://[::1]:3000/mcp", "http://[::1]:3000/mcp"),
    ],
)
def test_canonical_resource(url: str, canonical: str) -> None:
    """MCP 2025-06-18 "Canonical Server URI" examples; RFC 8707 §2 (no fragment)."""
    assert canonical_resource(url) == canonical


@pytest.mark.parametrize("url", ["mcp.example.com/mcp", "/mcp", "", "https://", "https://x:notaport/"])
def test_canonical_resource_refuses_relative_or_malformed_urls(url: str) -> None:
    with pytest.raises(ValueError):
        canonical_resource(url)


@pytest.mark.parametrize(
    ("declared", "server"),
    [
        ("https://x.example/mcp", "https://x.example/mcp"),
        ("https://x.example/mcp/", "https://x.example/mcp"),
        ("https://x.example/mcp", "https://x.example/mcp/"),
        ("https://x.example/", "https://x.example/mcp"),
        ("https://x.example", "https://x.example/mcp"),
        ("https://X.EXAMPLE:443/api", "https://x.example/api/v1/mcp"),
        ("https://x.example/mcp", "https://x.example/mcp?tenant=a"),
        ("https://x.example/mcp?tenant=a", "https://x.example/mcp?tenant=a"),
    ],
)
def test_declared_resource_matches_same_or_parent_path(declared: str, server: str) -> None:
    assert resource_matches(declared, server)


@pytest.mark.parametrize(
    ("declared", "server"),
    [
        ("https://x.example/api", "https://x.example/api2/mcp"),
        ("https://x.example/mcp/sub", "https://x.example/mcp"),
        ("https://evil.example/mcp", "https://x.example/mcp"),
        ("http://x.example/mcp", "https://x.example/mcp"),
        ("https://x.example:8443/mcp", "https://x.example/mcp"),
        ("https://x.example/mcp?tenant=b", "https://x.example/mcp?tenant=a"),
        ("https://x.example.evil/mcp", "https://x.example/mcp"),
        ("not a url", "https://x.example/mcp"),
    ],
)
def test_declared_resource_for_another_origin_or_sibling_path_does_not_match(declared: str, server: str) -> None:
    assert not resource_matches(declared, server)
