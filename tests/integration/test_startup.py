"""Issue 19: a client's first listing waits for the servers that are still starting.

A real `bastion gateway run` (stdio, and streamable HTTP) in front of the echo test server started
with `--start-delay` (it answers `initialize` that many seconds late, like a server that `npx` is
still installing), driven by real clients: the mcp SDK and the MCP Inspector CLI (Node 22).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.session import IncomingMessage

from tests.fixtures import peers
from tests.integration.harness import GatewayProcess, Home, http_client

pytestmark = pytest.mark.anyio

ECHO = str(Path(__file__).parents[1] / "gateway" / "servers" / "echo_server.py")
SILENT = str(Path(__file__).parents[1] / "gateway" / "servers" / "silent_server.py")
SLOW_START = 2.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    yield Home(tmp_path / "home")


def echo(name: str, start_delay: float = 0.0) -> dict[str, Any]:
    return {"type": "server", "command": [sys.executable, ECHO, "--name", name, "--start-delay", str(start_delay)]}


def tool_names(listed: types.ListToolsResult) -> set[str]:
    return {tool.name for tool in listed.tools}


def text_of(result: types.CallToolResult) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_first_listing_over_stdio_has_the_tools_of_a_server_still_starting(home: Home, mode: str) -> None:
    home.write_catalog({"slow": echo("slow", SLOW_START), "fast": echo("fast")})
    home.run("server", "enable", "slow", "fast")
    async with Client(home.stdio_params(), mode=mode) as client:
        names = tool_names(await client.list_tools())
        assert {"slow__echo", "fast__echo"} <= names
        assert {prompt.name for prompt in (await client.list_prompts()).prompts} >= {"slow__greet"}
        assert {str(r.uri) for r in (await client.list_resources()).resources} >= {"slow://hello"}


async def test_first_call_by_name_before_any_listing_waits_and_succeeds(home: Home) -> None:
    """One-shot clients (`mcp-inspector --cli --method tools/call`) call without listing first."""
    home.write_catalog({"slow": echo("slow", SLOW_START)})
    home.run("server", "enable", "slow")
    for mode in ("legacy", "auto"):
        async with Client(home.stdio_params(), mode=mode) as client:
            result = await client.call_tool("slow__echo", {"text": "hi"})
            assert not result.is_error, text_of(result)
            assert text_of(result) == "hi"


async def test_the_bound_returns_the_first_listing_without_the_slow_server_then_list_changed(home: Home) -> None:
    """`gateway: {startup_wait}` below the delay: the listing comes back at the bound with what is
    ready, and the slow server's tools follow with `notifications/tools/list_changed`."""
    home.write_config({"gateway": {"startup_wait": 0.5}})
    home.write_catalog({"slow": echo("slow", 4 * SLOW_START), "fast": echo("fast")})
    home.run("server", "enable", "slow", "fast")
    changed = anyio.Event()

    async def on_message(message: IncomingMessage) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with Client(home.stdio_params(), mode="legacy", message_handler=on_message) as client:
        first = tool_names(await client.list_tools())
        assert "slow__echo" not in first
        with anyio.fail_after(30):
            while "slow__echo" not in tool_names(await client.list_tools()):
                await changed.wait()
                changed = anyio.Event()
        assert text_of(await client.call_tool("slow__echo", {"text": "late"})) == "late"


async def test_http_gateway_listens_at_once_and_its_first_listing_waits(home: Home) -> None:
    """Streamable HTTP too (the lean path hands a listing to the waiting SDK handler while the gate
    is closed), and `gateway run` logs when it is ready, with the time it took and each state."""
    home.write_catalog(
        {
            "slow": echo("slow", SLOW_START),
            "broken": {"type": "server", "command": ["/nonexistent/bastion-test-binary"]},
            "secretive": {**echo("secretive"), "secrets": [{"name": "secretive.key", "env": "KEY"}]},
        }
    )
    home.run("server", "enable", "slow", "broken", "secretive")
    with GatewayProcess(home) as gateway:
        # The listener is up before the slow server answers `initialize`.
        assert gateway.health()["upstreams_ready"] == 0
        for mode in ("auto", "legacy"):
            async with http_client(gateway.url, mode=mode) as client:
                assert "slow__echo" in tool_names(await client.list_tools())
        with anyio.fail_after(10):
            while "ready in" not in gateway.log():
                await anyio.sleep(0.05)
        line = next(line for line in gateway.log().splitlines() if "ready in" in line)
        assert "1 server ready" in line, line
        assert "failed (secretive)" in line, line
        assert "retrying (broken)" in line, line


async def test_a_never_answering_server_holds_the_first_listing_only_until_the_bound(home: Home) -> None:
    # The bound is far below the silent server's connect_timeout but leaves the fast server time
    # to start on a loaded machine (at 1 s, a CI run once listed before either was up).
    home.write_config({"gateway": {"startup_wait": 8, "connect_timeout": 60}})
    home.write_catalog({"silent": {"type": "server", "command": [sys.executable, SILENT]}, "fast": echo("fast")})
    home.run("server", "enable", "silent", "fast")
    async with Client(home.stdio_params(), mode="legacy") as client:
        with anyio.fail_after(30):  # on main, initialize itself waited for connect_timeout (60 s)
            names = tool_names(await client.list_tools())
        assert "fast__echo" in names
        assert text_of(await client.call_tool("fast__echo", {"text": "x"})) == "x"


def _inspector(home: Home, *args: str) -> Any:
    argv, env = peers.inspector_cli()
    env = {**env, "MCP_CATALOG_PATH": str(home.path / "inspector-catalog.json")}
    done = subprocess.run(
        [
            *argv,
            "-e",
            f"BASTION_HOME={home.path}",
            sys.executable,
            "-m",
            "bastion",
            "gateway",
            "run",
            "--transport",
            "stdio",
            *args,
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def test_inspector_cli_lists_and_calls_at_once(home: Home) -> None:
    """The issue's commands, with server-everything (13 tools) over stdio behind the stdio gateway."""
    home.write_catalog({"everything": {"type": "server", "command": peers.everything_stdio_argv()}})
    home.run("server", "enable", "everything")
    listed = _inspector(home, "--method", "tools/list")
    names = {tool["name"] for tool in listed["tools"]}
    assert len(names) == 13, names
    assert "everything__echo" in names
    called = _inspector(home, "--method", "tools/call", "--tool-name", "everything__echo", "--tool-arg", "message=hi")
    assert called["content"][0]["text"] == "Echo: hi", called
