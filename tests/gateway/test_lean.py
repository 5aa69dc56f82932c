"""The lean path (gateway/lean.py): same bytes as the SDK's generic path, or the SDK answers itself."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from starlette.applications import Starlette

from bastion.config.catalog import CatalogEntry
from bastion.config.settings import GatewaySettings
from bastion.gateway.lean import LeanPath, accepts
from bastion.gateway.runtime import Gateway
from bastion.gateway.security import GatewaySecurityMiddleware
from bastion.gateway.server import http_app
from bastion.gateway.upstream import UpstreamState

from .conftest import front_of, remote_entry, serve_in_process, stdio_entry
from .servers.echo_server import build
from .test_gateway import RecordAuthorization, text_of, wait_for_state

pytestmark = pytest.mark.anyio

SETTINGS = GatewaySettings(connect_timeout=10, request_timeout=3, restart_max=0)
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
MODERN = "2026-07-28"
ENVELOPE = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}}


def lean_of(app: Starlette) -> LeanPath:
    endpoint = app.routes[0].app  # type: ignore[attr-defined]
    assert isinstance(endpoint, LeanPath)
    return endpoint


class Side:
    """One HTTP front (lean or generic) over the shared gateway."""

    def __init__(self, base: str, app: Starlette) -> None:
        self.http = httpx2.AsyncClient(base_url=base, headers=ACCEPT, timeout=10)
        self.app = app
        self.session: dict[str, str] = {}

    @property
    def served(self) -> int:
        return lean_of(self.app).served

    async def open_legacy(self, version: str = "2025-11-25") -> None:
        init = await self.http.post(
            "/mcp",
            json={
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
            },
        )
        assert init.status_code == 200
        self.session = {"mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": version}
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        await self.http.post("/mcp", headers=self.session, json=initialized)

    async def legacy(self, body: Any, **headers: str) -> httpx2.Response:
        return await self.http.post("/mcp", headers={**self.session, **headers}, json=body)

    async def modern(self, method: str, params: dict[str, Any], request_id: Any = 1, **headers: str) -> httpx2.Response:
        routing = {"mcp-protocol-version": MODERN, "mcp-method": method}
        name = params.get("name", params.get("uri"))
        if isinstance(name, str):
            routing["mcp-name"] = name
        body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**params, "_meta": ENVELOPE}}
        return await self.http.post("/mcp", headers={**routing, **headers}, json=body)


def comparable(response: httpx2.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = [(k, v) for k, v in response.headers.items() if k not in ("date", "mcp-session-id")]
    return response.status_code, headers, response.content


def call(name: str, arguments: dict[str, Any], request_id: Any = 1, **params: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments, **params},
    }


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    bad = CatalogEntry(name="bad", command=[sys.executable, "-c", "raise SystemExit(3)"])
    async with Gateway([stdio_entry("one"), stdio_entry("two"), bad], SETTINGS) as running:
        await wait_for_state(running, "bad", UpstreamState.FAILED)
        yield running


@pytest.fixture(params=["asgi", "lane"])
async def sides(gateway: Gateway, request: pytest.FixtureRequest) -> AsyncIterator[tuple[Side, Side]]:
    """The lean side is served as an ASGI layer, and as `gateway run` serves it: in the fast lane."""
    lean_app = http_app(gateway.server, gateway.pool, lean=True)
    generic_app = http_app(gateway.server, gateway.pool, lean=False)
    async for lean_base in serve_in_process(*front_of(lean_app, request.param)):
        async for generic_base in serve_in_process(generic_app):
            lean, generic = Side(lean_base, lean_app), Side(generic_base, generic_app)
            async with lean.http, generic.http:
                yield lean, generic


async def test_legacy_replies_are_the_sdks_single_event_sse(sides: tuple[Side, Side]) -> None:
    lean, generic = sides
    await lean.open_legacy()
    await generic.open_legacy()
    bodies = [
        call("one__echo", {"text": "hé"}, "a7"),
        call("nope__x", {}, 3),
        call("bad__echo", {"text": "x"}, 4),
        {"jsonrpc": "2.0", "id": 5, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 6, "method": "tools/list", "params": {}},
        {"jsonrpc": "2.0", "id": 7, "method": "resources/read", "params": {"uri": "two://hello"}},
        {"jsonrpc": "2.0", "id": 8, "method": "resources/read", "params": {"uri": "nope://x"}},
    ]
    for body in bodies:
        before = lean.served
        mine, theirs = await lean.legacy(body), await generic.legacy(body)
        assert lean.served == before + 1, body
        assert comparable(mine) == comparable(theirs), body
        assert mine.headers["content-type"] == "text/event-stream"
        assert mine.headers["mcp-session-id"] == lean.session["mcp-session-id"]
    assert b'"text":"h\xc3\xa9"' in (await lean.legacy(bodies[0])).content
    assert b"server 'bad' failed" in (await lean.legacy(bodies[2])).content


async def test_older_legacy_session_is_sieved_for_its_negotiated_version(sides: tuple[Side, Side]) -> None:
    lean, generic = sides
    await lean.open_legacy("2025-03-26")
    await generic.open_legacy("2025-03-26")
    body = call("one__echo", {"text": "old"})
    mine, theirs = await lean.legacy(body), await generic.legacy(body)
    assert lean.served == 1
    assert comparable(mine) == comparable(theirs)


async def test_modern_replies_match_including_error_statuses(sides: tuple[Side, Side]) -> None:
    lean, generic = sides
    cases: list[tuple[str, dict[str, Any]]] = [
        ("tools/call", {"name": "one__echo", "arguments": {"text": "hé"}}),
        ("tools/call", {"name": "nope__x", "arguments": {}}),
        ("tools/call", {"name": "bad__echo", "arguments": {"text": "x"}}),
        ("tools/list", {}),
        ("resources/read", {"uri": "two://hello"}),
    ]
    for method, params in cases:
        before = lean.served
        mine, theirs = await lean.modern(method, params), await generic.modern(method, params)
        assert lean.served == before + 1, params
        assert comparable(mine) == comparable(theirs), params
    unknown = await lean.modern("tools/call", {"name": "nope__x", "arguments": {}})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["message"] == "unknown tool 'nope__x'"
    echoed = (await lean.modern("tools/call", {"name": "one__echo", "arguments": {"text": "x"}}, request_id="s")).json()
    assert echoed["id"] == "s"
    assert echoed["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "bastion"


async def test_unusual_requests_fall_back_to_the_sdk_unchanged(sides: tuple[Side, Side]) -> None:
    lean, generic = sides
    await lean.open_legacy()
    await generic.open_legacy()
    legacy_cases: list[tuple[Any, dict[str, str]]] = [
        (call("one__echo", {"text": "p"}, 1, _meta={"progressToken": "t"}), {}),  # wants progress
        ([call("one__echo", {"text": "b"})], {}),  # a batch
        ({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"cursor": "x"}}, {}),
        ({"jsonrpc": "2.0", "id": 3, "method": "prompts/list"}, {}),
        ({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": 5}}, {}),  # invalid params
        (call("one__echo", {"text": "x"}), {"mcp-session-id": "not-a-session"}),
        (call("one__echo", {"text": "x"}), {"accept": "application/json"}),
        (call("one__echo", {"text": "x"}), {"content-type": "text/plain"}),
        ({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}, {}),
    ]
    for body, headers in legacy_cases:
        before = lean.served
        mine, theirs = await lean.legacy(body, **headers), await generic.legacy(body, **headers)
        assert lean.served == before, body
        if headers.get("mcp-session-id") is None:  # same session semantics; unknown ids differ by nothing
            assert mine.status_code == theirs.status_code, body
    progress = await lean.legacy(legacy_cases[0][0])
    assert b'"text":"p"' in progress.content

    modern_cases: list[tuple[str, dict[str, Any], dict[str, str]]] = [
        ("tools/call", {"name": "one__echo", "arguments": {"text": "x"}}, {"mcp-name": "two__echo"}),
        ("tools/call", {"name": "one__echo", "arguments": {"text": "x"}}, {"mcp-method": "tools/list"}),
        ("tools/call", {"name": "one__echo", "arguments": {"text": "x"}}, {"mcp-protocol-version": "2099-01-01"}),
        ("tools/call", {"name": "one__echo", "arguments": {"text": "x"}}, {"accept": "application/json"}),
        ("prompts/list", {}, {}),
    ]
    for method, params, headers in modern_cases:
        before = lean.served
        mine, theirs = await lean.modern(method, params, **headers), await generic.modern(method, params, **headers)
        assert lean.served == before, (params, headers)
        assert comparable(mine) == comparable(theirs), (params, headers)
    mismatch = await lean.modern("tools/call", {"name": "one__echo", "arguments": {}}, **{"mcp-name": "two__echo"})
    assert mismatch.status_code == 400
    assert "Mcp-Name".lower() in mismatch.json()["error"]["message"].lower()

    # GET and DELETE always belong to the SDK.
    async with lean.http.stream("GET", "/mcp", headers={**lean.session, "accept": "text/event-stream"}) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"] == "text/event-stream"
    deleted = await lean.http.delete("/mcp", headers=lean.session)
    assert deleted.status_code == 200
    gone = await lean.legacy(call("one__echo", {"text": "x"}))
    assert gone.status_code == 404  # the SDK's answer for a terminated session


@pytest.mark.parametrize("front", ["asgi", "lane"])
async def test_real_clients_of_both_eras_ride_the_lean_path(gateway: Gateway, front: str) -> None:
    app = http_app(gateway.server, gateway.pool, lean=True)
    async for base in serve_in_process(*front_of(app, front)):
        for mode in ("legacy", "auto"):
            before = lean_of(app).served
            async with Client(f"{base}/mcp", mode=mode) as client:
                names = {tool.name for tool in (await client.list_tools()).tools}
                assert {"one__echo", "two__echo"} <= names
                assert text_of(await client.call_tool("one__echo", {"text": mode})) == mode
                resource = await client.read_resource("two://hello")
                assert "hello from two" in str(resource.contents[0])
                seen: list[float] = []

                async def on_progress(
                    progress: float, total: float | None, message: str | None, seen: list[float] = seen
                ) -> None:
                    seen.append(progress)

                done = await client.call_tool("one__slow_progress", {"steps": 2}, progress_callback=on_progress)
                assert text_of(done) == "done"
                assert seen == [1, 2]  # progress requests take the generic path
            assert lean_of(app).served >= before + 3


async def test_tools_list_cache_follows_the_routing_snapshot(sides: tuple[Side, Side], gateway: Gateway) -> None:
    lean, _ = sides
    first = (await lean.modern("tools/list", {})).json()["result"]["tools"]
    assert any(tool["name"] == "two__echo" for tool in first)
    cached_for = lean_of(lean.app)._cache_routes
    await gateway.reconnect("one")
    with anyio.fail_after(15):
        while gateway.pool.routes is cached_for or "one__echo" not in gateway.pool.routes.tools:
            await anyio.sleep(0.05)
    again = (await lean.modern("tools/list", {})).json()["result"]["tools"]
    assert lean_of(lean.app)._cache_routes is gateway.pool.routes
    assert again == first
    await gateway.remove("two")
    after = (await lean.modern("tools/list", {})).json()["result"]["tools"]
    assert after and not any(tool["name"].startswith("two__") for tool in after)
    called = await lean.modern("tools/call", {"name": "one__echo", "arguments": {"text": "still"}})
    assert called.json()["result"]["content"][0]["text"] == "still"


async def test_timeouts_and_cancellation(sides: tuple[Side, Side], gateway: Gateway) -> None:
    lean, generic = sides
    await lean.open_legacy()
    await generic.open_legacy()
    mine, theirs = await lean.legacy(call("one__hang", {}, 9)), await generic.legacy(call("one__hang", {}, 9))
    assert lean.served == 1
    assert comparable(mine) == comparable(theirs)
    assert b"server 'one' did not answer tools/call within 3s" in mine.content

    async with anyio.create_task_group() as tg:
        replies: list[httpx2.Response] = []

        async def hang() -> None:
            replies.append(await lean.legacy(call("one__hang", {}, 10)))

        tg.start_soon(hang)
        with anyio.fail_after(5):
            while not lean_of(lean.app)._inflight:
                await anyio.sleep(0.01)
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 10}}
        assert (await lean.legacy(cancel)).status_code == 202
    data = json.loads(replies[0].content.split(b"data: ", 1)[1])
    assert data == {"jsonrpc": "2.0", "id": 10, "error": {"code": -32800, "message": "Request cancelled"}}
    assert not lean_of(lean.app)._inflight
    # The upstream session is still fine afterwards.
    assert b'"text":"ok"' in (await lean.legacy(call("one__echo", {"text": "ok"}, 11))).content


async def test_downstream_authorization_is_never_forwarded_upstream() -> None:
    recorder = RecordAuthorization(build("web").streamable_http_app())
    async for upstream_base in serve_in_process(recorder):
        async with Gateway([remote_entry("web", f"{upstream_base}/mcp")], SETTINGS) as gateway:
            app = http_app(gateway.server, gateway.pool, lean=True)
            secured = GatewaySecurityMiddleware(app, token=None, listen_host="127.0.0.1", listen_port=0)
            async for base in serve_in_process(secured):
                for mode in ("legacy", "auto"):
                    downstream = httpx2.AsyncClient(headers={"authorization": "Bearer downstream-secret"})
                    async with (
                        downstream,
                        Client(streamable_http_client(f"{base}/mcp", http_client=downstream), mode=mode) as client,
                    ):
                        assert text_of(await client.call_tool("web__echo", {"text": "x"})) == "x"
            assert lean_of(app).served >= 2
        assert "tools/call" in recorder.methods or None in recorder.methods
        assert recorder.seen
        assert all(header is None for header in recorder.seen)


def test_accept_parsing_matches_the_sdk() -> None:
    assert accepts("application/json, text/event-stream") == (True, True)
    assert accepts("*/*") == (True, True)
    assert accepts("application/*;q=0.5, text/*") == (True, True)
    assert accepts("application/json") == (True, False)
    assert accepts("") == (False, False)


@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_silent_call_is_kept_alive_with_sse_comments_then_answered(
    sides: tuple[Side, Side], era: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both SDK transports send `: ping` comments on a silent response; a 2026 reply that was
    going to be plain JSON commits to SSE at the first one and ends with the reply event."""
    monkeypatch.setattr("bastion.gateway.lean.SSE_PING_INTERVAL", 0.2)
    lean, _ = sides
    if era == "legacy":
        await lean.open_legacy()
        reply = await lean.legacy(call("one__hang", {}, 21))
    else:
        reply = await lean.modern("tools/call", {"name": "one__hang", "arguments": {}}, request_id=21)
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "text/event-stream"
    body = reply.content
    assert body.startswith(b": ping\r\n\r\n")
    assert body.count(b": ping") >= 3  # the call takes request_timeout (3 s); at least a few pings
    last = json.loads(body.rsplit(b"data: ", 1)[1])
    assert last["id"] == 21
    assert "did not answer tools/call within 3s" in last["error"]["message"]


@pytest.mark.parametrize("front", ["asgi", "lane"])
async def test_client_leaving_cancels_the_upstream_call(front: str) -> None:
    """The upstream request of a call whose client hung up is abandoned (on the 2026 wire, by
    closing its connection), not left running until the request timeout."""
    recorder = RecordAuthorization(build("web").streamable_http_app())
    patient = GatewaySettings(connect_timeout=10, request_timeout=30, restart_max=0)
    async for upstream_base in serve_in_process(recorder):
        async with Gateway([remote_entry("web", f"{upstream_base}/mcp")], patient) as gateway:
            wire = gateway.pool.upstreams["web"]._wire
            assert wire is not None
            app = http_app(gateway.server, gateway.pool, lean=True)
            async for base in serve_in_process(*front_of(app, front)):
                impatient = Side(base, app)
                impatient.http.timeout = httpx2.Timeout(1.0)
                with pytest.raises(httpx2.ReadTimeout):
                    await impatient.modern("tools/call", {"name": "web__hang", "arguments": {}})
                await impatient.http.aclose()  # the client gave up and left
                with anyio.fail_after(10):  # far less than the 30 s request timeout
                    while wire._pool._all:
                        await anyio.sleep(0.01)
                assert lean_of(app).served == 1


async def test_mcp_param_headers_are_checked_where_the_schema_declares_them(sides: tuple[Side, Side]) -> None:
    """2026-07-28 `x-mcp-header`: the lean path serves a call whose `Mcp-Param-*` headers agree
    with its arguments, leaves a disagreeing one to the SDK (same reply either way), and skips the
    check for tools that declare no such parameter."""
    lean, generic = sides
    arguments = {"region": "eu", "text": "x"}
    cases = [
        ("one__region", {"mcp-param-region": "eu"}, 200, True),
        ("one__region", {"mcp-param-region": "us"}, 400, False),
        ("one__region", {}, 400, False),
        ("one__echo", {"mcp-param-region": "anything"}, 200, True),
    ]
    for name, headers, status, lean_serves in cases:
        before = lean.served
        params = {"name": name, "arguments": arguments if name == "one__region" else {"text": "x"}}
        mine = await lean.modern("tools/call", params, **headers)
        theirs = await generic.modern("tools/call", params, **headers)
        assert comparable(mine) == comparable(theirs), name
        assert mine.status_code == status, (name, headers, mine.content)
        assert lean.served == before + lean_serves, (name, headers)
    assert (
        b"eu:x"
        in (
            await lean.modern(
                "tools/call", {"name": "one__region", "arguments": arguments}, **{"mcp-param-region": "eu"}
            )
        ).content
    )
