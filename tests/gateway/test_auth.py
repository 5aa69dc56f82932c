"""Bearer tokens on the wire to remote upstreams (RFC 6750 §2.1, §3)."""

from __future__ import annotations

import anyio
import httpx2
import pytest

from bastion.gateway.auth import (
    UpstreamBearerAuth,
    bearer_challenge_params,
    plain_http_problem,
    token_destination_problem,
)
from bastion.gateway.runtime import Gateway
from bastion.gateway.upstream import UpstreamState

from .conftest import remote_entry, serve_in_process
from .servers.echo_server import build
from .test_gateway import FAST, RecordAuthorization


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


# -- issue 12: where a token may go, decided when the upstream connects --------------------------


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("https://mcp.notion.com/mcp", False),
        ("http://127.0.0.1:8000/mcp", False),
        ("http://localhost:8000/mcp", False),
        ("http://[::1]:8000/mcp", False),
        ("http://mcp.notion.com/mcp", True),
        ("http://10.0.0.5/mcp", True),
        ("HTTP://Example.com/mcp", True),
    ],
)
def test_an_oauth_token_goes_over_plain_http_only_to_loopback(url: str, refused: bool) -> None:
    assert (plain_http_problem(url) is not None) is refused


@pytest.mark.parametrize(
    ("url", "obtained_for", "problem"),
    [
        ("https://mcp.notion.com/mcp", "https://mcp.notion.com/mcp", None),
        ("HTTPS://MCP.Notion.com:443/mcp", "https://mcp.notion.com/mcp", None),
        ("https://mcp.notion.com/", "https://mcp.notion.com", None),
        ("https://evil.example/mcp", "https://mcp.notion.com/mcp", "URL changed"),
        ("https://mcp.notion.com/mcp/other", "https://mcp.notion.com/mcp", "URL changed"),
        ("https://mcp.notion.com/mcp?tenant=b", "https://mcp.notion.com/mcp?tenant=a", "URL changed"),
        ("https://mcp.notion.com/mcp", None, "does not know"),
    ],
)
def test_a_token_goes_only_to_the_url_it_was_obtained_for(
    url: str, obtained_for: str | None, problem: str | None
) -> None:
    found = token_destination_problem(url, obtained_for)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_the_url_changed_message_leaves_out_queries_and_user_info() -> None:
    found = token_destination_problem("https://user:pw@evil.example/mcp?key=SECRET", "https://a.example/mcp?k=S2")
    assert found is not None and "https://evil.example/mcp" in found and "https://a.example/mcp" in found
    assert "SECRET" not in found and "S2" not in found and "pw" not in found


class RefusedTokens:
    """A TokenProvider whose token every server refuses and which refreshes no more (what the token
    manager answers for a token obtained by a refresh after a 401)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.refreshes = 0

    def cached_token(self, server: str) -> str | None:
        return "refused"

    def obtained_for(self, server: str) -> str | None:
        return self.url

    def needs_refresh(self, server: str) -> bool:
        return False

    async def fresh_token(self, server: str) -> str | None:
        return "refused"

    async def refresh_after_401(self, server: str, rejected: str) -> str | None:
        self.refreshes += 1
        return None

    async def step_up(self, server: str, challenged_scopes: list[str]) -> None:
        return None


@pytest.mark.anyio
async def test_reconnects_with_a_refused_token_back_off() -> None:
    """Point 10: reconnect requests (store events, resyncs) while the token held is still the one the
    server refused wait a growing delay instead of asking the server again at once."""
    recorder = RecordAuthorization(build("web").streamable_http_app(), require="never-issued")
    async for base in serve_in_process(recorder):
        entry = remote_entry("web", f"{base}/mcp", oauth={"providers": [{"provider": "web"}]})
        async with Gateway([entry], FAST, token_provider=RefusedTokens(f"{base}/mcp")) as gateway:
            assert gateway.status()[0].state is UpstreamState.NEEDS_AUTHORIZATION
            first = len(recorder.seen)
            with anyio.fail_after(10):
                for _ in range(16):
                    await gateway.reconnect("web")
                    await anyio.sleep(0.1)
            asked = len(recorder.seen) - first
    assert first >= 1
    assert asked <= 3  # 1.6 s: backing off 0.5 s, then 1 s (without: one connect per reconnect)


@pytest.mark.anyio
async def test_a_token_for_another_url_is_not_sent_and_says_the_url_changed() -> None:
    recorder = RecordAuthorization(build("web").streamable_http_app())
    async for base in serve_in_process(recorder):
        tokens = RefusedTokens("https://mcp.notion.com/mcp")
        entry = remote_entry("web", f"{base}/mcp", oauth={"providers": [{"provider": "web"}]})
        async with Gateway([entry], FAST, token_provider=tokens) as gateway:
            status = gateway.status()[0]
    assert status.state is UpstreamState.NEEDS_AUTHORIZATION
    assert "URL changed" in (status.last_error or "") and "bastion oauth authorize web" in (status.last_error or "")
    assert recorder.seen == [] and tokens.refreshes == 0


@pytest.mark.anyio
async def test_a_plain_http_url_off_loopback_gets_no_token() -> None:
    tokens = RefusedTokens("http://mcp.example.invalid/mcp")
    entry = remote_entry("web", "http://mcp.example.invalid/mcp", oauth={"providers": [{"provider": "web"}]})
    async with Gateway([entry], FAST, token_provider=tokens) as gateway:
        status = gateway.status()[0]
    assert status.state is UpstreamState.FAILED
    assert "plain http" in (status.last_error or "") and "https" in (status.last_error or "")
