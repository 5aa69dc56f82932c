"""The downstream side: both protocol eras, every transport, list_changed, health, no header leaks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import IncomingMessage
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPDeprecationWarning

from bastion.config.settings import GatewaySettings
from bastion.gateway.runtime import Gateway
from bastion.gateway.security import GatewaySecurityMiddleware
from bastion.gateway.server import http_app
from bastion.gateway.upstream import UpstreamState

from .conftest import remote_entry, serve_in_process, stdio_entry
from .servers.echo_server import build
from .test_gateway import RecordAuthorization, text_of, wait_for_state

pytestmark = pytest.mark.anyio

SETTINGS = GatewaySettings(connect_timeout=10, request_timeout=10, restart_max=3)


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    async with Gateway([stdio_entry("one"), stdio_entry("two")], SETTINGS) as running:
        yield running


@pytest.fixture
async def gateway_url(gateway: Gateway) -> AsyncIterator[str]:
    app = GatewaySecurityMiddleware(
        http_app(gateway.server, gateway.pool), token=None, listen_host="127.0.0.1", listen_port=0
    )
    async for base in serve_in_process(app):
        yield base


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_in_process_clients_of_both_eras_list_and_call(gateway: Gateway, mode: str) -> None:
    async with Client(gateway.server, mode=mode) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"one__echo", "two__echo"} <= names
        result = await client.call_tool("two__echo", {"text": "hi"})
        assert text_of(result) == "hi"
        assert not result.is_error


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_streamable_http_clients_of_both_eras(gateway_url: str, mode: str) -> None:
    async with Client(f"{gateway_url}/mcp", mode=mode) as client:
        expected = "2025-11-25" if mode == "legacy" else "2026-07-28"
        assert client.protocol_version == expected
        assert text_of(await client.call_tool("one__echo", {"text": mode})) == mode
        prompt = await client.get_prompt("one__greet", {"who": "Ada"})
        assert "Ada" in str(prompt.messages[0].content)
        resource = await client.read_resource("two://hello")
        assert "hello from two" in str(resource.contents[0])


async def test_legacy_sse_transport(gateway_url: str) -> None:
    async with Client(sse_client(f"{gateway_url}/sse"), mode="legacy") as client:
        assert text_of(await client.call_tool("one__echo", {"text": "sse"})) == "sse"


async def test_2025_06_18_handshake_is_served(gateway_url: str) -> None:
    """A 2025-06-18 client gets its own version back and can call tools on that session."""
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    async with httpx2.AsyncClient(base_url=gateway_url, headers=headers) as http:
        init = await http.post(
            "/mcp",
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "old-client", "version": "1"},
                },
            },
        )
        assert init.status_code == 200
        assert '"protocolVersion":"2025-06-18"' in init.text.replace(" ", "")
        assert '"listChanged":true' in init.text.replace(" ", "")
        session = {"mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
        await http.post("/mcp", headers=session, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        call = await http.post(
            "/mcp",
            headers=session,
            json={
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "one__echo", "arguments": {"text": "old"}},
            },
        )
        assert '"text":"old"' in call.text.replace(" ", "")


async def test_legacy_client_is_told_tools_changed_after_reconnect(gateway: Gateway) -> None:
    changed = anyio.Event()

    async def on_message(message: IncomingMessage) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with Client(gateway.server, mode="legacy", message_handler=on_message) as client:
        await client.list_tools()
        assert client.server_capabilities.tools is not None
        assert client.server_capabilities.tools.list_changed
        await gateway.reconnect("one")
        with anyio.fail_after(10):
            await changed.wait()
        await wait_for_state(gateway, "one", UpstreamState.READY)


async def test_modern_http_client_is_told_tools_changed_after_reconnect(gateway: Gateway, gateway_url: str) -> None:
    async with Client(f"{gateway_url}/mcp") as client:
        assert client.protocol_version == "2026-07-28"
        async with client.listen(tools_list_changed=True) as subscription:
            await gateway.reconnect("two")
            with anyio.fail_after(10):
                async for _event in subscription:
                    break
        await wait_for_state(gateway, "two", UpstreamState.READY)
        names = {tool.name for tool in (await client.list_tools(cache_mode="bypass")).tools}
        assert "two__echo" in names


async def test_legacy_http_client_is_told_tools_changed(gateway: Gateway, gateway_url: str) -> None:
    changed = anyio.Event()

    async def on_message(message: IncomingMessage) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with Client(f"{gateway_url}/mcp", mode="legacy", message_handler=on_message) as client:
        await client.list_tools()
        await anyio.sleep(0.2)  # the standalone GET stream opens after `initialized`
        await gateway.reconnect("one")
        with anyio.fail_after(10):
            await changed.wait()


async def test_progress_is_relayed(gateway: Gateway) -> None:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with Client(gateway.server, mode="legacy") as client:
        result = await client.call_tool("one__slow_progress", {"steps": 3}, progress_callback=on_progress)
        assert text_of(result) == "done"
    assert seen == [1, 2, 3]


async def test_unknown_and_unavailable_tools_are_clear_errors(gateway: Gateway) -> None:
    async with Client(gateway.server, mode="legacy") as client:
        with pytest.raises(Exception, match="unknown tool 'nope__x'"):
            await client.call_tool("nope__x", {})


async def test_health_reports_states_and_counts(gateway: Gateway, gateway_url: str) -> None:
    async with httpx2.AsyncClient() as http:
        health = (await http.get(f"{gateway_url}/health")).json()
    assert health["status"] == "ok"
    assert health["upstreams_ready"] == 2
    by_name: dict[str, Any] = {entry["name"]: entry for entry in health["upstreams"]}
    assert by_name["one"]["state"] == "ready"
    assert by_name["one"]["tools"] == 8
    assert by_name["one"]["last_error"] is None


async def test_downstream_authorization_is_not_forwarded_upstream() -> None:
    recorder = RecordAuthorization(build("web").streamable_http_app())
    async for upstream_base in serve_in_process(recorder):
        entry = remote_entry("web", f"{upstream_base}/mcp", headers={"X-Api-Key": "${BASTION_TEST_API_KEY}"})
        entry = entry.model_copy(update={"remote": entry.remote.model_copy(update={"headers": {}})})  # type: ignore[union-attr]
        async with Gateway([entry], SETTINGS) as gateway:
            app = GatewaySecurityMiddleware(
                http_app(gateway.server, gateway.pool), token=None, listen_host="127.0.0.1", listen_port=0
            )
            async for base in serve_in_process(app):
                downstream = httpx2.AsyncClient(headers={"authorization": "Bearer downstream-secret"})
                async with downstream, Client(streamable_http_client(f"{base}/mcp", http_client=downstream)) as client:
                    assert text_of(await client.call_tool("web__echo", {"text": "x"})) == "x"
        assert recorder.seen
        assert all(header is None for header in recorder.seen)


async def test_upstream_log_messages_reach_handshake_era_clients(gateway: Gateway) -> None:
    """An upstream's notifications/message is relayed, named after its server, at or above the
    level the downstream session asked for."""
    received: list[types.LoggingMessageNotificationParams] = []
    got = anyio.Event()

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        received.append(params)
        got.set()

    async with Client(gateway.server, mode="legacy", logging_callback=on_log) as client:
        assert client.server_capabilities.logging is not None
        with pytest.warns(MCPDeprecationWarning):  # the client's own warning: logging is handshake-era
            await client.set_logging_level("error")
        await client.call_tool("one__log", {"text": "below the level"})
        with pytest.warns(MCPDeprecationWarning):
            await client.set_logging_level("warning")
        await client.call_tool("one__log", {"text": "careful"})
        with anyio.fail_after(10):
            await got.wait()
    assert [(p.level, p.data, p.logger) for p in received] == [("warning", "careful", "one")]
