"""Bearer tokens on the wire to remote upstreams (RFC 6750 §2.1, §3)."""

from __future__ import annotations

import httpx2
import pytest

from bastion.gateway.auth import UpstreamBearerAuth, bearer_challenge_params


class FakeTokens:
    """An in-memory TokenProvider that records what the gateway asked for."""

    def __init__(self, token: str | None, *, refreshed: str | None = None, stale: bool = False) -> None:
        self.token = token
        self.refreshed = refreshed
        self.stale = stale
        self.calls: list[str] = []
        self.step_ups: list[list[str]] = []

    def cached_token(self, server: str) -> str | None:
        self.calls.append("cached")
        return self.token

    def obtained_for(self, server: str) -> str | None:
        return None

    def needs_refresh(self, server: str) -> bool:
        return self.stale

    async def fresh_token(self, server: str) -> str | None:
        self.calls.append("fresh")
        self.stale = False
        if self.refreshed is not None:
            self.token = self.refreshed
        return self.token

    async def refresh_after_401(self, server: str, rejected: str) -> str | None:
        self.calls.append(f"refresh_after_401:{rejected == self.token}")
        self.token = self.refreshed
        return self.token

    async def step_up(self, server: str, challenged_scopes: list[str]) -> None:
        self.step_ups.append(challenged_scopes)


def server_accepting(token: str, seen: list[str | None]) -> httpx2.MockTransport:
    def handle(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.headers.get("authorization"))
        if request.headers.get("authorization") == f"Bearer {token}":
            return httpx2.Response(200, json={"ok": True})
        return httpx2.Response(401, headers={"www-authenticate": 'Bearer error="invalid_token"'})

    return httpx2.MockTransport(handle)


@pytest.mark.anyio
async def test_cached_token_is_sent_without_refreshing() -> None:
    tokens = FakeTokens("t1")
    problems: list[str] = []
    seen: list[str | None] = []
    auth = UpstreamBearerAuth("srv", tokens, problems.append)
    async with httpx2.AsyncClient(transport=server_accepting("t1", seen), auth=auth) as client:
        response = await client.post("https://mcp.example/mcp", json={})
    assert response.status_code == 200
    assert seen == ["Bearer t1"]
    assert tokens.calls == ["cached"]
    assert problems == []


@pytest.mark.anyio
async def test_token_near_expiry_is_refreshed_before_sending() -> None:
    tokens = FakeTokens("old", refreshed="new", stale=True)
    seen: list[str | None] = []
    auth = UpstreamBearerAuth("srv", tokens, lambda reason: None)
    async with httpx2.AsyncClient(transport=server_accepting("new", seen), auth=auth) as client:
        await client.post("https://mcp.example/mcp", json={})
    assert seen == ["Bearer new"]
    assert tokens.calls == ["cached", "fresh"]


@pytest.mark.anyio
async def test_401_refreshes_once_and_retries() -> None:
    tokens = FakeTokens("stale", refreshed="good")
    seen: list[str | None] = []
    problems: list[str] = []
    auth = UpstreamBearerAuth("srv", tokens, problems.append)
    async with httpx2.AsyncClient(transport=server_accepting("good", seen), auth=auth) as client:
        response = await client.post("https://mcp.example/mcp", json={"a": 1})
    assert response.status_code == 200
    assert seen == ["Bearer stale", "Bearer good"]
    assert tokens.calls == ["cached", "refresh_after_401:True"]
    assert problems == []


@pytest.mark.anyio
async def test_401_after_refresh_marks_needs_authorization_without_looping() -> None:
    tokens = FakeTokens("stale", refreshed="also-rejected")
    seen: list[str | None] = []
    problems: list[str] = []
    auth = UpstreamBearerAuth("srv", tokens, problems.append)
    async with httpx2.AsyncClient(transport=server_accepting("never", seen), auth=auth) as client:
        response = await client.post("https://mcp.example/mcp", json={})
    assert response.status_code == 401
    assert len(seen) == 2
    assert len(problems) == 1
    assert "also-rejected" not in problems[0] and "stale" not in problems[0]


@pytest.mark.anyio
async def test_401_without_any_token_marks_needs_authorization() -> None:
    tokens = FakeTokens(None)
    problems: list[str] = []
    seen: list[str | None] = []
    auth = UpstreamBearerAuth("srv", tokens, problems.append)
    async with httpx2.AsyncClient(transport=server_accepting("x", seen), auth=auth) as client:
        await client.post("https://mcp.example/mcp", json={})
    assert seen == [None]
    assert problems == ["no access token is stored"]


@pytest.mark.anyio
async def test_403_insufficient_scope_steps_up_with_the_challenged_scopes() -> None:
    def handle(request: httpx2.Request) -> httpx2.Response:
        challenge = 'Bearer error="insufficient_scope", scope="files:read files:write", resource_metadata="https://x"'
        return httpx2.Response(403, headers={"www-authenticate": challenge})

    tokens = FakeTokens("t")
    problems: list[str] = []
    auth = UpstreamBearerAuth("srv", tokens, problems.append)
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handle), auth=auth) as client:
        response = await client.post("https://mcp.example/mcp", json={})
    assert response.status_code == 403
    assert tokens.step_ups == [["files:read", "files:write"]]
    assert len(problems) == 1 and "files:read" in problems[0]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="x", error="insufficient_scope", scope="a b"',
            {"realm": "x", "error": "insufficient_scope", "scope": "a b"},
        ),
        ('Basic realm="y", Bearer error=invalid_token', {"error": "invalid_token"}),
        ('Bearer scope="say \\"hi\\""', {"scope": 'say "hi"'}),
        ('Basic realm="y"', {}),
        ("", {}),
    ],
)
def test_bearer_challenge_params(header: str, expected: dict[str, str]) -> None:
    """RFC 6750 §3: the Bearer challenge's auth-params, whatever other challenges surround it."""
    assert bearer_challenge_params([header]) == expected
