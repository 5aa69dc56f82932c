"""Issue 3 against real peers: server-everything (stdio and streamable HTTP), mcp-server-time
(stdio) and the OAuth-protected mcp server behind oidc-provider, aggregated behind one
`bastion gateway run`, driven by the mcp SDK client over stdio and streamable HTTP."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.fixtures import peers
from tests.fixtures.procfs import cmdline
from tests.integration.harness import GatewayProcess, Home, alive, descendants, http_client

pytestmark = pytest.mark.anyio

SILENT = str(Path(__file__).parents[1] / "gateway" / "servers" / "silent_server.py")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def refreshes(oidc: peers.OidcHandle) -> int:
    """Refresh-token grants the authorization server handled (successful or not)."""
    return sum(
        1
        for e in oidc.events()
        if e["event"] in ("grant.success", "grant.error") and e.get("grant_type") == "refresh_token"
    )


def protected_entry(url: str) -> dict[str, Any]:
    return {
        "type": "remote",
        "remote": {"url": url, "transport_type": "streamable-http"},
        "oauth": {"providers": [{"provider": "protected"}]},
    }


@pytest.fixture
def home(tmp_path: Path, headless_browser: Path) -> Iterator[Home]:
    yield Home(tmp_path / "home")


def tool_names(listed: Any) -> set[str]:
    return {t.name for t in listed.tools}


def text_of(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def test_everything_aggregated_over_stdio_and_http(
    home: Home,
    oidc: peers.OidcHandle,
    protected_mcp: peers.ProtectedMcpHandle,
    everything_http: peers.EverythingHandle,
) -> None:
    home.write_catalog(
        {
            "everything": {"type": "server", "command": peers.everything_stdio_argv()},
            "everything-http": {"type": "remote", "remote": {"url": everything_http.url}},
            "time": {"type": "server", "command": peers.time_stdio_argv()},
            "protected": protected_entry(protected_mcp.url),
        }
    )
    home.run("server", "enable", "everything", "everything-http", "time", "protected")
    home.run("oauth", "authorize", "protected", "--callback-port", "0", "--timeout", "60")
    expected = {"everything__echo", "everything-http__echo", "time__get_current_time", "protected__whoami"}

    async def exercise(client: Client) -> None:
        names = tool_names(await client.list_tools())
        assert expected <= names, names
        assert text_of(await client.call_tool("everything__echo", {"message": "a"})) == "Echo: a"
        assert text_of(await client.call_tool("everything-http__echo", {"message": "b"})) == "Echo: b"
        assert "UTC" in text_of(await client.call_tool("time__get_current_time", {"timezone": "UTC"}))
        whoami = await client.call_tool("protected__whoami", {})
        assert not whoami.is_error, text_of(whoami)

    # Downstream stdio, both protocol eras.
    for mode in ("legacy", "auto"):
        async with Client(home.stdio_params(), mode=mode) as client:
            await exercise(client)

    # Downstream streamable HTTP, both protocol eras; the downstream Authorization header (the
    # gateway token, which the client must send) is not forwarded.
    with GatewayProcess(home) as gateway:
        for mode in ("legacy", "auto"):
            async with http_client(gateway.url, mode=mode, headers=gateway.auth) as client:
                await exercise(client)
        health = gateway.health()
        states = {u["name"]: u["state"] for u in health["upstreams"]}
        assert states == dict.fromkeys(["everything", "everything-http", "time", "protected"], "ready")
        assert gateway.token not in str(health) and gateway.token not in gateway.log()
    seen = {r.get("token_digest") for r in protected_mcp.requests()}
    import hashlib

    assert hashlib.sha256(gateway.token.encode()).hexdigest()[:12] not in seen


async def test_seed_flow_enable_authorize_call_expire_revoke_disable(
    home: Home, oidc_factory: Any, protected_mcp_factory: Any
) -> None:
    """The seed's manual verification, automated."""
    oidc = oidc_factory(access_token_ttl=4)
    protected = protected_mcp_factory(oidc.issuer)
    home.write_catalog({"protected": protected_entry(protected.url)})
    home.write_config({"gateway": {"refresh_margin": 1}})
    home.run("server", "enable", "protected")
    home.run("oauth", "authorize", "protected", "--callback-port", "0", "--timeout", "60")

    with GatewayProcess(home) as gateway:
        async with http_client(gateway.url, mode="legacy") as client:
            assert not (await client.call_tool("protected__whoami", {})).is_error
            before = refreshes(oidc)
            await anyio.sleep(4.5)  # the access token expires; no user action
            result = await client.call_tool("protected__echo", {"text": "after expiry"})
            assert not result.is_error, text_of(result)
            assert refreshes(oidc) == before + 1

            # Revoke in another process: the gateway drops the tools within a few seconds.
            home.run("oauth", "revoke", "protected")
            with anyio.fail_after(10):
                while "protected__whoami" in tool_names(await client.list_tools()):
                    await anyio.sleep(0.2)
            with pytest.raises(MCPError, match="bastion oauth authorize protected"):
                await client.call_tool("protected__whoami", {})

            # Authorize again in another process: the tools come back by themselves.
            home.run("oauth", "authorize", "protected", "--callback-port", "0", "--timeout", "60")
            with anyio.fail_after(10):
                while "protected__whoami" not in tool_names(await client.list_tools()):
                    await anyio.sleep(0.2)

        home.run("server", "disable", "protected")
        assert home.json("oauth", "ls", "--json") == []
        gateway.wait_health(lambda h: all(u["name"] != "protected" for u in h["upstreams"]))


async def test_concurrent_calls_across_expiry_refresh_once(
    home: Home, oidc_factory: Any, protected_mcp_factory: Any
) -> None:
    # 8 s tokens: the 200 calls (1–3 s under load) all fall within one token's lifetime, so
    # exactly one refresh is right; a longer burst would legitimately need a second one.
    oidc = oidc_factory(access_token_ttl=8)
    protected = protected_mcp_factory(oidc.issuer)
    home.write_catalog({"protected": protected_entry(protected.url)})
    home.write_config({"gateway": {"refresh_margin": 1}})
    home.run("server", "enable", "protected")
    home.run("oauth", "authorize", "protected", "--callback-port", "0", "--timeout", "60")
    with GatewayProcess(home) as gateway:
        async with http_client(gateway.url) as client:
            assert not (await client.call_tool("protected__echo", {"text": "warm"})).is_error
            await anyio.sleep(8.2)
            before = refreshes(oidc)
            results: list[Any] = []

            async def call(i: int) -> None:
                results.append(await client.call_tool("protected__echo", {"text": str(i)}))

            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    for i in range(200):
                        tg.start_soon(call, i)
    assert len(results) == 200
    assert [text_of(r) for r in results if r.is_error] == []
    assert refreshes(oidc) - before == 1


async def test_faults_do_not_spread(home: Home, node_deps: None) -> None:
    home.write_catalog(
        {
            "everything": {"type": "server", "command": peers.everything_stdio_argv()},
            "time": {"type": "server", "command": peers.time_stdio_argv()},
            "down": {"type": "remote", "remote": {"url": "http://127.0.0.1:9/mcp"}},
            "silent": {"type": "server", "command": [sys.executable, SILENT]},
        }
    )
    # connect_timeout leaves node room to start on a loaded machine; the silent server still
    # times out on its first request.
    home.write_config({"gateway": {"connect_timeout": 10, "request_timeout": 3}})
    home.run("server", "enable", "everything", "time", "down", "silent")
    with GatewayProcess(home) as gateway:
        health = gateway.wait_health(lambda h: {u["name"]: u["state"] for u in h["upstreams"]}.get("time") == "ready")
        states = {u["name"]: u["state"] for u in health["upstreams"]}
        assert states["everything"] == "ready" and states["down"] != "ready" and states["silent"] != "ready"
        async with http_client(gateway.url, mode="legacy") as client:
            assert not (await client.call_tool("time__get_current_time", {"timezone": "UTC"})).is_error
            with pytest.raises(MCPError, match="down"):
                await client.call_tool("down__anything", {})

            # Kill the stdio upstream mid-call: that call errors, the others keep working, it comes back.
            node = [p for p in descendants(gateway.proc.pid) if "server-everything" in cmdline(p)]
            assert node, "server-everything child not found"
            results: list[Any] = []

            async def long_call() -> None:
                try:
                    results.append(
                        await client.call_tool(
                            "everything__trigger-long-running-operation", {"duration": 5, "steps": 5}
                        )
                    )
                except MCPError as exc:
                    results.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(long_call)
                await anyio.sleep(1.0)
                for pid in node:
                    os.kill(pid, signal.SIGKILL)
            assert isinstance(results[0], MCPError) and "everything" in str(results[0])
            assert not (await client.call_tool("time__get_current_time", {"timezone": "UTC"})).is_error
            with anyio.fail_after(30):
                while True:
                    try:
                        echo = await client.call_tool("everything__echo", {"message": "back"})
                    except MCPError:
                        await anyio.sleep(0.5)
                        continue
                    assert text_of(echo) == "Echo: back"
                    break

        # SIGTERM: the gateway exits and leaves no child behind.
        children = descendants(gateway.proc.pid)
        assert children
        assert gateway.terminate() == 0 or gateway.proc.returncode in (0, -signal.SIGTERM)
        deadline = time.monotonic() + 5
        while any(alive(p) for p in children) and time.monotonic() < deadline:
            await anyio.sleep(0.1)
        assert [p for p in children if alive(p)] == []


async def test_foreign_origin_is_refused(home: Home) -> None:
    home.write_catalog({"time": {"type": "server", "command": peers.time_stdio_argv()}})
    home.run("server", "enable", "time")
    with GatewayProcess(home) as gateway:
        async with httpx2.AsyncClient(timeout=10, trust_env=False) as http:
            response = await http.post(
                gateway.url,
                json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                headers={"Origin": "http://evil.example", "Accept": "application/json, text/event-stream"},
            )
    assert response.status_code == 403


async def test_a_client_without_the_gateway_token_is_refused_on_loopback(home: Home) -> None:
    """Point 12: another local process cannot use the gateway; `--no-token` is the warned opt-out."""
    home.write_catalog({"time": {"type": "server", "command": peers.time_stdio_argv()}})
    home.run("server", "enable", "time")
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    accept = {"Accept": "application/json, text/event-stream"}
    with GatewayProcess(home) as gateway:
        async with httpx2.AsyncClient(timeout=10, trust_env=False) as http:
            assert (await http.post(gateway.url, json=ping, headers=accept)).status_code == 401
            assert (await http.get(f"{gateway.base_url}/health")).status_code == 401
            assert (await http.get(f"{gateway.base_url}/health", headers=gateway.auth)).status_code == 200
        assert str(home.path / "gateway-token") in gateway.log() and gateway.token not in gateway.log()
    with GatewayProcess(home, "--no-token") as open_gateway:
        async with httpx2.AsyncClient(timeout=10, trust_env=False) as http:
            assert (await http.get(f"{open_gateway.base_url}/health")).status_code == 200
        assert "warning: the gateway token is off" in open_gateway.log()


async def test_servers_enabled_and_disabled_while_the_gateway_runs(
    home: Home, everything_sse: peers.EverythingHandle
) -> None:
    """registry.yaml edits (by the CLI in another process) reach a running gateway: tools appear
    and disappear, and a legacy SSE upstream (remote.transport_type: sse) works."""
    home.write_catalog(
        {
            "time": {"type": "server", "command": peers.time_stdio_argv()},
            "legacy-sse": {"type": "remote", "remote": {"url": everything_sse.url, "transport_type": "sse"}},
        }
    )
    home.run("server", "enable", "time")
    with GatewayProcess(home) as gateway:
        async with http_client(gateway.url, mode="legacy") as client:
            assert "time__get_current_time" in tool_names(await client.list_tools())
            home.run("server", "enable", "legacy-sse")
            with anyio.fail_after(20):
                while "legacy-sse__echo" not in tool_names(await client.list_tools()):
                    await anyio.sleep(0.2)
            assert text_of(await client.call_tool("legacy-sse__echo", {"message": "sse"})) == "Echo: sse"
            home.run("server", "disable", "time")
            with anyio.fail_after(20):
                while "time__get_current_time" in tool_names(await client.list_tools()):
                    await anyio.sleep(0.2)
        assert [u["name"] for u in gateway.health()["upstreams"]] == ["legacy-sse"]


async def test_missing_secret_is_named_with_the_command_to_set_it(home: Home, tmp_path: Path) -> None:
    script = tmp_path / "needs_secret.py"
    script.write_text(
        "import os, sys\n"
        "from mcp.server.mcpserver import MCPServer\n"
        "server = MCPServer('secretive')\n"
        "@server.tool()\n"
        "def key_length() -> int:\n"
        "    return len(os.environ['API_KEY'])\n"
        "server.run('stdio')\n"
    )
    home.write_catalog(
        {
            "secretive": {
                "type": "server",
                "command": [sys.executable, str(script)],
                "secrets": [{"name": "secretive.key", "env": "API_KEY"}],
            }
        }
    )
    home.run("server", "enable", "secretive")
    listed = home.run("tools", "ls", check=False)
    assert "bastion secret set secretive.key" in listed.stderr
    home.run("secret", "set", "secretive.key", "--value", "twelve-chars")
    called = home.run("tools", "call", "secretive__key_length")
    assert called.stdout.strip() == "12"
    assert "twelve-chars" not in "".join(home.outputs)
