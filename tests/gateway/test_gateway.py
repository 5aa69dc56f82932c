"""The gateway over real MCP servers: aggregation, isolation, restarts, timeouts, authorization."""

from __future__ import annotations

import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpx2
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from bastion.config.catalog import CatalogEntry
from bastion.config.settings import GatewaySettings
from bastion.errors import NeedsAuthorizationError, UpstreamError
from bastion.gateway.runtime import Gateway
from bastion.gateway.upstream import UpstreamState

from .conftest import SILENT, remote_entry, serve_in_process, stdio_entry
from .servers.echo_server import build

pytestmark = pytest.mark.anyio

FAST = GatewaySettings(connect_timeout=10, request_timeout=10, restart_max=3)


def text_of(result: Any) -> str:
    return "".join(block.text for block in result.content if hasattr(block, "text"))


@contextmanager
def socket_closed_port() -> Iterator[int]:
    """A loopback port nothing listens on (bound, never listening, while the test runs)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


async def wait_for_state(gateway: Gateway, server: str, state: UpstreamState, timeout: float = 15) -> None:
    with anyio.fail_after(timeout):
        while True:
            current = {s.name: s for s in gateway.status()}[server]
            if current.state is state:
                return
            await anyio.sleep(0.05)


class RecordAuthorization:
    """ASGI wrapper that records each request's Authorization header and can demand a token."""

    def __init__(self, app: ASGIApp, require: str | None = None) -> None:
        self.app = app
        self.require = require
        self.seen: list[str | None] = []
        self.methods: list[str | None] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            value = dict(scope["headers"]).get(b"authorization")
            header = value.decode() if value is not None else None
            self.seen.append(header)
            method = dict(scope["headers"]).get(b"mcp-method")
            self.methods.append(method.decode() if method is not None else None)
            if self.require is not None and header != f"Bearer {self.require}":
                await send(
                    {"type": "http.response.start", "status": 401, "headers": [(b"www-authenticate", b"Bearer")]}
                )
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, send)


@pytest.fixture
async def web_upstream() -> AsyncIterator[tuple[str, RecordAuthorization]]:
    recorder = RecordAuthorization(build("web").streamable_http_app())
    async for base in serve_in_process(recorder):
        yield f"{base}/mcp", recorder


class Tokens:
    """TokenProvider fake: a fixed cached token; `refresh_after_401` hands out `renewed`."""

    def __init__(self, token: str | None, renewed: str | None = None, *, url: str | None = None) -> None:
        self.token = token
        self.renewed = renewed
        self.url = url
        """The URL the tokens were obtained for (`obtained_for`)."""
        self.refreshes = 0

    def cached_token(self, server: str) -> str | None:
        return self.token

    def obtained_for(self, server: str) -> str | None:
        return self.url if self.token is not None else None

    def needs_refresh(self, server: str) -> bool:
        return False

    async def fresh_token(self, server: str) -> str | None:
        return self.token

    async def refresh_after_401(self, server: str, rejected: str) -> str | None:
        self.refreshes += 1
        self.token = self.renewed
        return self.token

    async def step_up(self, server: str, challenged_scopes: list[str]) -> None:
        return None


async def test_tools_of_stdio_and_http_upstreams_are_aggregated(web_upstream: tuple[str, Any]) -> None:
    url, _ = web_upstream
    async with Gateway([stdio_entry("one"), remote_entry("web", url)], FAST) as gateway:
        names = {tool.name for tool in await gateway.list_tools()}
        assert {"one__echo", "web__echo", "one__pid", "web__pid"} <= names
        assert text_of(await gateway.call_tool("one__echo", {"text": "a"})) == "a"
        assert text_of(await gateway.call_tool("web__echo", {"text": "b"})) == "b"
        states = {status.name: status.state for status in gateway.status()}
        assert states == {"one": UpstreamState.READY, "web": UpstreamState.READY}


async def test_broken_upstreams_do_not_hold_up_the_others() -> None:
    settings = GatewaySettings(connect_timeout=3, request_timeout=5, restart_max=3)
    entries = [
        stdio_entry("good"),
        CatalogEntry(name="silent", command=[sys.executable, SILENT]),
        CatalogEntry(name="missing", command=["/nonexistent/bastion-test-binary"]),
        stdio_entry("secretive", secrets=[{"name": "secretive.key", "env": "BASTION_TEST_UNSET_KEY"}]),
    ]
    gateway = Gateway(entries, settings)
    started = anyio.current_time()
    await gateway.start(wait=False)
    try:
        await wait_for_state(gateway, "good", UpstreamState.READY, timeout=settings.connect_timeout)
        assert anyio.current_time() - started < settings.connect_timeout
        assert text_of(await gateway.call_tool("good__echo", {"text": "ok"})) == "ok"
        await wait_for_state(gateway, "secretive", UpstreamState.FAILED)
        status = {s.name: s for s in gateway.status()}
        assert "secretive.key" in (status["secretive"].last_error or "")
        assert "bastion secret set secretive.key" in (status["secretive"].last_error or "")
        assert status["missing"].state in (UpstreamState.DISCONNECTED, UpstreamState.CONNECTING)
        with pytest.raises(UpstreamError, match="secretive"):
            await gateway.call_tool("secretive__echo", {"text": "x"})
    finally:
        await gateway.aclose()


async def test_never_answering_server_times_out_on_connect() -> None:
    settings = GatewaySettings(connect_timeout=1, request_timeout=5, restart_max=3)
    async with Gateway([CatalogEntry(name="silent", command=[sys.executable, SILENT])], settings) as gateway:
        status = gateway.status()[0]
        assert status.state is UpstreamState.DISCONNECTED
        assert "timed out" in (status.last_error or "")


async def test_secrets_come_from_the_lookup_and_reach_the_child_environment() -> None:
    async def lookup(server: str, name: str) -> str | None:
        return {("one", "one.key"): "from-store"}.get((server, name))

    entry = stdio_entry("one", secrets=[{"name": "one.key", "env": "ONE_KEY"}], env={"GREETING": "hi ${ONE_KEY}"})
    async with Gateway([entry], FAST, secret_lookup=lookup) as gateway:
        assert text_of(await gateway.call_tool("one__env", {"variable": "ONE_KEY"})) == "from-store"
        assert text_of(await gateway.call_tool("one__env", {"variable": "GREETING"})) == "hi from-store"


async def test_crashed_stdio_server_is_restarted_and_works_again() -> None:
    async with Gateway([stdio_entry("one")], FAST) as gateway:
        first_pid = text_of(await gateway.call_tool("one__pid"))
        with pytest.raises(UpstreamError, match="'one'"):
            await gateway.call_tool("one__crash")
        await wait_for_state(gateway, "one", UpstreamState.READY)
        second_pid = text_of(await gateway.call_tool("one__pid"))
        assert second_pid != first_pid
        assert gateway.status()[0].restarts == 1


async def test_crash_loop_is_given_up_after_restart_max() -> None:
    settings = GatewaySettings(connect_timeout=5, request_timeout=5, restart_max=2)
    entry = CatalogEntry(name="dies", command=[sys.executable, "-c", "raise SystemExit(1)"])
    async with Gateway([entry], settings) as gateway:
        await wait_for_state(gateway, "dies", UpstreamState.FAILED, timeout=20)
        status = gateway.status()[0]
        assert "gave up after 3 attempts" in (status.last_error or "")
        with pytest.raises(UpstreamError, match="server 'dies' failed"):
            await gateway.call_tool("dies__echo", {"text": "x"})


async def test_never_answering_tool_call_times_out_instead_of_hanging() -> None:
    settings = GatewaySettings(connect_timeout=10, request_timeout=1, restart_max=3)
    async with Gateway([stdio_entry("one")], settings) as gateway:
        with anyio.fail_after(5), pytest.raises(UpstreamError, match="did not answer tools/call within 1s"):
            await gateway.call_tool("one__hang")
        assert text_of(await gateway.call_tool("one__echo", {"text": "still here"})) == "still here"


async def test_remote_server_without_token_needs_authorization(web_upstream: tuple[str, Any]) -> None:
    url, recorder = web_upstream
    entry = remote_entry("web", url, oauth={"providers": [{"provider": "web"}]})
    async with Gateway([entry], FAST, token_provider=Tokens(None)) as gateway:
        assert gateway.status()[0].state is UpstreamState.NEEDS_AUTHORIZATION
        with pytest.raises(NeedsAuthorizationError, match=r"run `bastion oauth authorize web`"):
            await gateway.call_tool("web__echo", {"text": "x"})
    assert recorder.seen == []


async def test_a_header_value_with_a_line_break_fails_the_server_without_showing_it(
    web_upstream: tuple[str, Any],
) -> None:
    """h11 refuses such a value by quoting it (a secret, here) into the SDK's log: it is refused at
    connect time, naming the header only, and nothing is sent."""
    url, recorder = web_upstream

    async def lookup(server: str, name: str) -> str | None:
        return "s3cret-value\nX-Injected: 1" if (server, name) == ("web", "web.key") else None

    entry = remote_entry("web", url, secrets=[{"name": "web.key", "env": "WEB_KEY"}])
    entry.remote.headers["X-Api-Key"] = "${WEB_KEY}"  # type: ignore[union-attr]
    async with Gateway([entry], FAST, secret_lookup=lookup) as gateway:
        status = gateway.status()[0]
        assert status.state is UpstreamState.FAILED
        assert "header 'X-Api-Key' holds a line break" in (status.last_error or "")
        assert "s3cret" not in (status.last_error or "")
    assert recorder.seen == []


async def test_a_stored_token_that_is_no_bearer_token_is_never_sent(web_upstream: tuple[str, Any]) -> None:
    url, recorder = web_upstream
    entry = remote_entry("web", url, oauth={"providers": [{"provider": "web"}]})
    async with Gateway([entry], FAST, token_provider=Tokens("at-secret\r\nX-Injected: 1", url=url)) as gateway:
        status = gateway.status()[0]
        assert status.state is UpstreamState.NEEDS_AUTHORIZATION
        assert "not a valid Bearer token" in (status.last_error or "")
        assert "at-secret" not in (status.last_error or "")
    assert recorder.seen == []


async def test_rejected_token_is_refreshed_once_and_injected() -> None:
    recorder = RecordAuthorization(build("web").streamable_http_app(), require="good")
    async for base in serve_in_process(recorder):
        tokens = Tokens("stale", renewed="good", url=f"{base}/mcp")
        entry = remote_entry("web", f"{base}/mcp", oauth={"providers": [{"provider": "web"}]})
        async with Gateway([entry], FAST, token_provider=tokens) as gateway:
            assert gateway.status()[0].state is UpstreamState.READY
            assert text_of(await gateway.call_tool("web__echo", {"text": "x"})) == "x"
        assert tokens.refreshes == 1
        assert recorder.seen[0] == "Bearer stale"
        assert set(recorder.seen[1:]) == {"Bearer good"}


async def test_token_rejected_after_refresh_makes_the_server_need_authorization() -> None:
    recorder = RecordAuthorization(build("web").streamable_http_app(), require="never-issued")
    async for base in serve_in_process(recorder):
        tokens = Tokens("stale", renewed="also-bad", url=f"{base}/mcp")
        entry = remote_entry("web", f"{base}/mcp", oauth={"providers": [{"provider": "web"}]})
        async with Gateway([entry], FAST, token_provider=tokens) as gateway:
            status = gateway.status()[0]
            assert status.state is UpstreamState.NEEDS_AUTHORIZATION
            assert "bastion oauth authorize web" in (status.last_error or "")
            assert "also-bad" not in (status.last_error or "")
        assert tokens.refreshes == 1


async def test_apply_adds_removes_and_restarts_changed_servers() -> None:
    async with Gateway([stdio_entry("one")], FAST) as gateway:
        one_pid = text_of(await gateway.call_tool("one__pid"))
        await gateway.apply([stdio_entry("one"), stdio_entry("two")])
        await gateway.wait_settled()
        assert [s.name for s in gateway.status()] == ["one", "two"]
        assert text_of(await gateway.call_tool("one__pid")) == one_pid
        assert text_of(await gateway.call_tool("two__echo", {"text": "2"})) == "2"
        await gateway.apply([stdio_entry("two", env={"CHANGED": "1"})])
        await gateway.wait_settled()
        assert [s.name for s in gateway.status()] == ["two"]
        assert text_of(await gateway.call_tool("two__env", {"variable": "CHANGED"})) == "1"
        with pytest.raises(UpstreamError, match="unknown tool"):
            await gateway.call_tool("one__pid")


async def test_reconnect_gives_a_new_session() -> None:
    async with Gateway([stdio_entry("one")], FAST) as gateway:
        before = text_of(await gateway.call_tool("one__pid"))
        await gateway.reconnect("one")
        await anyio.sleep(0.05)
        await wait_for_state(gateway, "one", UpstreamState.READY)
        assert text_of(await gateway.call_tool("one__pid")) != before
        assert gateway.status()[0].restarts == 0


async def test_upstream_http_client_is_reused_across_calls(web_upstream: tuple[str, Any]) -> None:
    """A call is one upstream request: no new session, no re-listing, no discovery per call."""
    url, recorder = web_upstream
    async with Gateway([remote_entry("web", url)], FAST) as gateway:
        await anyio.sleep(0.2)  # let the change subscription (subscriptions/listen) open
        recorder.methods.clear()
        for index in range(20):
            assert text_of(await gateway.call_tool("web__echo", {"text": str(index)})) == str(index)
        assert recorder.methods == ["tools/call"] * 20


def test_httpx2_is_the_http_stack() -> None:
    assert httpx2.AsyncClient is not None


async def test_the_status_of_an_upstream_shows_no_url_user_info() -> None:
    """`/health` and `/ui` show `last_error`: a `user:password@` in the catalog URL stays out of it."""
    with socket_closed_port() as port:
        entry = remote_entry("basic", f"http://alice:hunter2@127.0.0.1:{port}/mcp")
        async with Gateway([entry], FAST) as gateway:
            with anyio.fail_after(15):
                while not gateway.status()[0].last_error:
                    await anyio.sleep(0.05)
            status = gateway.status()[0].to_json()
    assert "hunter2" not in str(status) and "alice" not in str(status)
    assert f"127.0.0.1:{port}" in str(status["last_error"])
