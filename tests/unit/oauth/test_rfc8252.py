"""RFC 8252 §7.3 / §8.3 loopback redirect URIs."""

from __future__ import annotations

import pytest

from bastion.oauth.rfc8252 import is_loopback_host, loopback_redirect_uri, redirect_uri_port


def test_loopback_redirect_uri_uses_ip_literal_and_port() -> None:
    """RFC 8252 §7.3 example form `http://127.0.0.1:51004/oauth2redirect/example-provider`."""
    assert loopback_redirect_uri(51004) == "http://127.0.0.1:51004/callback"
    assert loopback_redirect_uri(51004, "oauth2redirect/example-provider") == (
        "http://127.0.0.1:51004/oauth2redirect/example-provider"
    )


def test_ipv6_loopback_is_bracketed() -> None:
    assert loopback_redirect_uri(8000, host="::1") == "http://[::1]:8000/callback"
    assert loopback_redirect_uri(8000, host="[::1]") == "http://[::1]:8000/callback"


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_port_out_of_range_is_refused(port: int) -> None:
    with pytest.raises(ValueError):
        loopback_redirect_uri(port)


def test_non_loopback_host_is_refused() -> None:
    with pytest.raises(ValueError):
        loopback_redirect_uri(8000, host="example.com")


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.1.2.3", "127.255.255.255", "::1", "[::1]", "localhost", "LOCALHOST", "localhost.", "a.localhost"]
    + ["::ffff:127.0.0.1"],
)
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host", ["128.0.0.1", "0.0.0.0", "::", "10.0.0.1", "example.com", "localhost.example.com", "", "::2", "169.254.1.1"]
)
def test_non_loopback_hosts(host: str) -> None:
    assert not is_loopback_host(host)


@pytest.mark.parametrize(
    ("uri", "port"),
    [
        ("http://127.0.0.1:51004/callback", 51004),
        ("http://[::1]:8000/cb", 8000),
        ("http://127.0.0.1/callback", None),
        ("http://127.0.0.1:notaport/callback", None),
        ("not a uri", None),
    ],
)
def test_redirect_uri_port(uri: str, port: int | None) -> None:
    assert redirect_uri_port(uri) == port
