"""The startup gate (gateway/startup.py): first listings and first calls by name wait for the
upstreams still on their first attempt, up to `startup_wait`; then nothing waits."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from bastion.config.catalog import CatalogEntry
from bastion.config.settings import GatewaySettings
from bastion.gateway.runtime import Gateway, ready_line
from bastion.gateway.server import http_app
from bastion.gateway.startup import StartupGate
from bastion.gateway.upstream import UpstreamState, UpstreamStatus

from .conftest import SILENT, front_of, serve_in_process, stdio_entry
from .test_gateway import text_of

pytestmark = pytest.mark.anyio

SETTINGS = GatewaySettings(connect_timeout=20, request_timeout=10, restart_max=3)
DELAY = "1.5"
MODERN = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "mcp-protocol-version": "2026-07-28",
    "mcp-method": "tools/list",
}
ENVELOPE = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


def slow(name: str = "slow") -> CatalogEntry:
    return stdio_entry(name, "--start-delay", DELAY)


# -- the gate itself -----------------------------------------------------------------------------


async def test_gate_opens_when_the_last_pending_upstream_settles() -> None:
    gate = StartupGate()
    assert gate.open
    gate.begin(["a", "b"], bound=30)
    assert not gate.open
    gate.settle("a")
    assert not gate.open
    gate.settle("unknown")  # an upstream added later does not count
    assert not gate.open
    gate.settle("b")
    assert gate.open
    assert gate.pending_at_open == frozenset()
    with anyio.fail_after(1):
        await gate.wait()


async def test_gate_opens_at_the_bound_and_remembers_who_was_still_starting() -> None:
    gate = StartupGate()
    gate.begin(["a"], bound=0.2)
    with anyio.fail_after(5):
        await gate.wait()
    assert gate.open
    assert gate.pending_at_open == {"a"}
    gate.settle("a")  # settling after the bound changes nothing
    assert gate.open


async def test_expire_opens_the_gate_without_a_waiter() -> None:
    gate = StartupGate()
    gate.begin(["a"], bound=0.1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(gate.expire)
    assert gate.open


async def test_a_gate_with_nothing_to_wait_for_is_open() -> None:
    gate = StartupGate()
    gate.begin([], bound=10)
    assert gate.open


def _status(name: str, state: UpstreamState) -> UpstreamStatus:
    return UpstreamStatus(name, state, "stdio", 0, 0, 0, 0, None, 0, None)


def test_ready_line_names_each_state() -> None:
    statuses = [
        _status("a", UpstreamState.READY),
        _status("b", UpstreamState.READY),
        _status("c", UpstreamState.FAILED),
        _status("notion", UpstreamState.NEEDS_AUTHORIZATION),
        _status("d", UpstreamState.CONNECTING),
        _status("e", UpstreamState.DISCONNECTED),
    ]
    line = ready_line(statuses, ["d"], 2.04)
    assert line == (
        "ready in 2.0s: 2 servers ready, 1 server waiting for authorization (notion), "
        "1 server failed (c), 1 server retrying (e), 1 server still starting (d); "
        "their tools arrive with list_changed"
    )
    assert ready_line([], [], 0.0) == "ready in 0.0s: no servers enabled"


# -- through the gateway ---------------------------------------------------------------------------


@pytest.fixture
async def starting() -> AsyncIterator[Gateway]:
    """A gateway that serves at once (`gateway run`), with one slow and one fast upstream."""
    gateway = Gateway([slow(), stdio_entry("fast")], SETTINGS)
    await gateway.start(wait=False)
    try:
        yield gateway
    finally:
        await gateway.aclose()


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_first_listing_waits_for_the_server_still_starting(starting: Gateway, mode: str) -> None:
    assert not starting.pool.startup.open
    async with Client(starting.server, mode=mode) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert {"slow__echo", "fast__echo"} <= tools
        assert {p.name for p in (await client.list_prompts()).prompts} >= {"slow__greet", "fast__greet"}
        assert {str(r.uri) for r in (await client.list_resources()).resources} >= {"slow://hello"}
    assert starting.pool.startup.open


async def test_first_call_by_name_waits_for_the_server_still_starting(starting: Gateway) -> None:
    async with Client(starting.server, mode="legacy") as client:
        assert text_of(await client.call_tool("slow__echo", {"text": "hi"})) == "hi"
        assert "hello from slow" in str((await client.read_resource("slow://hello")).contents[0])


async def test_an_unknown_name_still_fails_once_the_gate_is_open(starting: Gateway) -> None:
    async with Client(starting.server, mode="legacy") as client:
        with pytest.raises(MCPError, match="unknown tool 'nope__echo'"):
            await client.call_tool("nope__echo", {"text": "x"})
        assert starting.pool.startup.open


@pytest.mark.parametrize("front", ["asgi", "lane"])
async def test_lean_path_listing_waits_too(starting: Gateway, front: str) -> None:
    """The lean path serves `tools/list` from cached bytes; while the gate is closed it hands the
    request to the SDK handler, which waits."""
    app, protocol = front_of(http_app(starting.server, starting.pool), front)
    async for base in serve_in_process(app, protocol):
        assert not starting.pool.startup.open
        async with httpx2.AsyncClient(trust_env=False, timeout=30) as http:
            reply = await http.post(
                f"{base}/mcp",
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": ENVELOPE}},
                headers=MODERN,
            )
        assert reply.status_code == 200, reply.text
        assert "slow__echo" in reply.text


@pytest.mark.parametrize("front", ["asgi", "lane"])
async def test_lean_path_call_by_name_waits_too(starting: Gateway, front: str) -> None:
    app, protocol = front_of(http_app(starting.server, starting.pool), front)
    async for base in serve_in_process(app, protocol):
        assert not starting.pool.startup.open
        async with httpx2.AsyncClient(trust_env=False, timeout=30) as http:
            reply = await http.post(
                f"{base}/mcp",
                json={
                    "jsonrpc": "2.0",
                    "id": 2,
                    "method": "tools/call",
                    "params": {"name": "slow__echo", "arguments": {"text": "lean"}, "_meta": ENVELOPE},
                },
                headers={**MODERN, "mcp-method": "tools/call", "mcp-name": "slow__echo"},
            )
        assert reply.status_code == 200, reply.text
        assert '"text":"lean"' in reply.text.replace(" ", "")


async def test_the_bound_answers_without_the_slow_server_and_later_listings_do_not_wait() -> None:
    settings = SETTINGS.model_copy(update={"startup_wait": 0.3})
    gateway = Gateway([CatalogEntry(name="silent", command=[sys.executable, SILENT]), stdio_entry("fast")], settings)
    await gateway.start(wait=False)
    try:
        async with Client(gateway.server, mode="legacy") as client:
            with anyio.fail_after(10):  # the silent server would hold it for connect_timeout (20 s)
                await client.list_tools()
            assert gateway.pool.startup.open
            assert gateway.pool.startup.pending_at_open >= {"silent"}
            states = {status.name: status.state for status in gateway.status()}
            assert states["silent"] is UpstreamState.CONNECTING
    finally:
        await gateway.aclose()


async def test_a_server_added_later_does_not_close_the_gate() -> None:
    async with Gateway([stdio_entry("one")], SETTINGS) as gateway:
        assert gateway.pool.startup.open
        await gateway.add(slow("added"))
        assert gateway.pool.startup.open
        async with Client(gateway.server, mode="legacy") as client:
            with anyio.fail_after(1):  # the listing does not wait for the added server
                tools = {tool.name for tool in (await client.list_tools()).tools}
        assert "one__echo" in tools
        assert "added__echo" not in tools
