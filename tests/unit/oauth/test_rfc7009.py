"""RFC 7009 token revocation."""

from __future__ import annotations

import pytest

from bastion.oauth.rfc7009 import revocation_ok, revocation_requests, revocation_retryable
from bastion.store.models import ClientRegistration, TokenSet


def _tokens(refresh: str | None = "rt") -> TokenSet:
    return TokenSet(
        access_token="at",
        refresh_token=refresh,
        issuer="https://as.example",
        token_endpoint="https://as.example/token",
        client_id="cid",
    )


def test_refresh_token_is_revoked_before_access_token() -> None:
    """RFC 7009 §2.1: `token` and `token_type_hint`, with client authentication."""
    assert revocation_requests(_tokens(), ClientRegistration(client_id="cid")) == [
        ({"token": "rt", "token_type_hint": "refresh_token", "client_id": "cid"}, {}),
        ({"token": "at", "token_type_hint": "access_token", "client_id": "cid"}, {}),
    ]


def test_without_refresh_token_only_access_token_is_revoked() -> None:
    requests = revocation_requests(_tokens(None), ClientRegistration(client_id="cid"))
    assert [form["token_type_hint"] for form, _ in requests] == ["access_token"]


def test_confidential_client_authenticates_each_request() -> None:
    client = ClientRegistration(client_id="cid", client_secret="s", token_endpoint_auth_method="client_secret_basic")
    requests = revocation_requests(_tokens(), client)
    assert all(headers["Authorization"].startswith("Basic ") and "client_id" not in form for form, headers in requests)


@pytest.mark.parametrize(("status", "ok", "retry"), [(200, True, False), (204, True, False), (400, False, False)])
def test_revocation_status(status: int, ok: bool, retry: bool) -> None:
    """RFC 7009 §2.2: 200 also for an already invalid token; §2.2.1: 503 is retryable."""
    assert revocation_ok(status) is ok
    assert revocation_retryable(status) is retry


@pytest.mark.parametrize("status", [503, 429])
def test_unavailable_is_retryable(status: int) -> None:
    assert not revocation_ok(status)
    assert revocation_retryable(status)
