"""Which endpoints Bastion sends credentials to (OAuth 2.1 §1.5, RFC 8252 §8.3, SSRF guard)."""

from __future__ import annotations

import pytest

from bastion.errors import InsecureEndpointError
from bastion.oauth.endpoint_security import check_endpoint, is_forbidden_host, url_for_message

REMOTE = "https://mcp.example.com/mcp"
LOCAL = "http://127.0.0.1:3000/mcp"


@pytest.mark.parametrize(
    ("url", "server"),
    [
        ("https://auth.example.com/token", REMOTE),
        ("https://auth.example.com/token", LOCAL),
        ("http://127.0.0.1:9000/token", LOCAL),
        ("http://localhost:9000/token", "http://localhost:3000/mcp"),
        ("http://[::1]:9000/token", LOCAL),
        ("HTTPS://AUTH.EXAMPLE.COM/token", REMOTE),
    ],
)
def test_allowed_endpoints(url: str, server: str) -> None:
    check_endpoint(url, server, what="token_endpoint")


def test_http_endpoint_for_remote_server_is_refused_with_what_and_why() -> None:
    with pytest.raises(InsecureEndpointError) as info:
        check_endpoint("http://auth.example.com/token?x=secret", REMOTE, what="token_endpoint")
    message = str(info.value)
    assert "token_endpoint" in message and "http://auth.example.com/token" in message and "https" in message
    assert "secret" not in message


def test_http_loopback_endpoint_for_remote_server_is_refused() -> None:
    with pytest.raises(InsecureEndpointError):
        check_endpoint("http://127.0.0.1:9000/token", REMOTE, what="token_endpoint")


def test_http_remote_endpoint_for_loopback_server_is_refused() -> None:
    with pytest.raises(InsecureEndpointError):
        check_endpoint("http://auth.example.com/token", LOCAL, what="token_endpoint")


@pytest.mark.parametrize(
    "url",
    [
        "https://169.254.169.254/latest/meta-data/",
        "http://169.254.169.254/latest/meta-data/",
        "https://169.254.1.2/token",
        "https://[fe80::1]/token",
        "https://[fe80::1%25eth0]/token",
        "https://[fd00:ec2::254]/token",
        "https://100.100.100.200/token",
        "https://metadata.google.internal/computeMetadata/v1/",
        "https://METADATA.GOOGLE.INTERNAL./computeMetadata/v1/",
        "https://[::ffff:169.254.169.254]/token",
        "https://2852039166/token",
        "https://0xa9.0xfe.0xa9.0xfe/token",
        "https://0251.0376.0251.0376/token",
        "https://169.254.43518/token",
        "https://0.0.0.0/token",
    ],
)
def test_link_local_and_metadata_addresses_are_always_refused(url: str) -> None:
    with pytest.raises(InsecureEndpointError, match="metadata"):
        check_endpoint(url, LOCAL, what="token_endpoint")


@pytest.mark.parametrize(
    "url", ["ftp://auth.example.com/token", "file:///etc/passwd", "javascript:alert(1)", "auth.example.com/token"]
)
def test_non_http_schemes_are_refused(url: str) -> None:
    with pytest.raises(InsecureEndpointError, match="scheme"):
        check_endpoint(url, REMOTE, what="authorization_endpoint")


@pytest.mark.parametrize("url", ["https:///token", "https://auth.example.com:99999/token"])
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(InsecureEndpointError):
        check_endpoint(url, REMOTE, what="token_endpoint")


@pytest.mark.parametrize("host", ["auth.example.com", "10.0.0.1", "127.0.0.1", "169.253.255.255", "fe00::1", "1234"])
def test_ordinary_hosts_are_not_forbidden(host: str) -> None:
    assert not is_forbidden_host(host)


def test_url_for_message_drops_userinfo_query_and_fragment() -> None:
    assert url_for_message("https://u:p@x.example:8443/a/b?token=t#f") == "https://x.example:8443/a/b"
    assert url_for_message("http://[::1]:80/x") == "http://[::1]:80/x"
    assert url_for_message("javascript:alert(1)") == "javascript:alert(1)"
    assert url_for_message("/relative?q=1") == "/relative"
    assert url_for_message("http://[::1") == "<invalid URL>"
