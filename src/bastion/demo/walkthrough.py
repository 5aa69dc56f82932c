"""`bastion demo`: the enable → authorize → call → refresh → revoke → disable flow, narrated.

Everything runs in this process on 127.0.0.1: the demo authorization server and MCP server
(`bastion.demo.servers`), the gateway (`Runtime` + `run_gateway`) and an MCP client. Each step
prints the `bastion` command it stands for, then what happened. No token, code, verifier or
client secret is ever printed: only states, scopes, counts and server answers.
"""

from __future__ import annotations

import functools
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import click
import httpx2
import mcp_types as types
import yaml
from mcp import Client
from mcp.client.session import IncomingMessage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from bastion.config.catalog import load_catalog
from bastion.config.paths import ensure_home
from bastion.config.registry import load_enabled
from bastion.config.settings import load_settings
from bastion.demo.servers import HOST, DemoServers, demo_servers, token_digest
from bastion.demo.useragent import DemoBrowserUserAgent, HeadlessUserAgent, browser_available
from bastion.errors import BastionError
from bastion.gateway.runtime import run_gateway
from bastion.gateway.security import current_token
from bastion.gateway.upstream import UpstreamState
from bastion.oauth.tokens import TokenManager
from bastion.oauth.useragent import UserAgent
from bastion.serve import Runtime
from bastion.service import Bastion, ProviderRow
from bastion.store.file import FileStore

SERVER = "demo"
ACCESS_TOKEN_TTL = 20
WAIT = 10.0  # seconds any one expected reaction may take


class DemoError(BastionError):
    """A step of the demo did not go as shown."""


class Narrator:
    """Numbered steps on stdout; colour only on a terminal (click strips it otherwise)."""

    def __init__(self) -> None:
        self.step = 0
        self.started = time.monotonic()

    def title(self, text: str) -> None:
        click.secho(text, bold=True)

    def begin(self, text: str, command: str | None = None) -> None:
        self.step += 1
        click.echo()
        click.secho(f"[{self.step}] {text}", bold=True)
        if command:
            click.secho(f"    $ {command}", fg="cyan")

    def say(self, text: str) -> None:
        click.echo(f"    {text}")

    def ok(self, text: str) -> None:
        click.echo("    " + click.style("✓ ", fg="green") + text)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def _row(row: ProviderRow) -> str:
    expires = "-"
    if row.expires_at is not None:
        expires = f"in {max(0, int(row.expires_at - time.time()))} s"
    scopes = " ".join(row.scopes) or "-"
    return f"{row.server:<8} {row.state.value:<20} {row.issuer or '-':<24} {scopes:<12} {expires}"


def _text(result: types.CallToolResult) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class ListChanges:
    """Counts the `notifications/tools/list_changed` the gateway sends this client."""

    def __init__(self) -> None:
        self.count = 0
        self._event = anyio.Event()

    async def handler(self, message: IncomingMessage) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self.count += 1
            self._event.set()
            self._event = anyio.Event()

    async def wait_beyond(self, seen: int, what: str) -> None:
        with anyio.move_on_after(WAIT):
            while self.count <= seen:
                await self._event.wait()
        if self.count <= seen:
            raise DemoError(f"the gateway sent no tools/list_changed after {what} within {WAIT:.0f} s")


def _open_app(home: Path, isolated: bool) -> Bastion:
    """A `Bastion` on `home`. A temporary home always uses the file store, whatever
    BASTION_STORE says, so the demo never touches a real store."""
    if not isolated:
        return Bastion.open(home)
    ensure_home(home)
    return Bastion(home, load_settings(home), load_catalog(home), FileStore(home / "store"))


async def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    with anyio.move_on_after(WAIT):
        while not predicate():
            await anyio.sleep(0.05)
    if not predicate():
        raise DemoError(f"{what} did not happen within {WAIT:.0f} s")


@asynccontextmanager
async def _gateway(runtime: Runtime, home: Path) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """`run_gateway` on streamable HTTP at a free loopback port, in this process; its URL and the
    headers a client sends (the gateway token, from `home`'s token file as a client would)."""
    port = _free_port()
    url = f"http://{HOST}:{port}/mcp"
    headers = {"Authorization": f"Bearer {current_token(home)}"}
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(run_gateway, runtime.gateway, "streamable-http", HOST, port, home=home))
        try:
            ready = False
            async with httpx2.AsyncClient(timeout=2.0, headers=headers, trust_env=False) as http:
                with anyio.move_on_after(WAIT):
                    while not ready:
                        try:
                            ready = (await http.get(f"http://{HOST}:{port}/health")).status_code == 200
                        except httpx2.TransportError:
                            await anyio.sleep(0.05)
            if not ready:
                raise DemoError(f"the gateway did not answer on {url} within {WAIT:.0f} s")
            yield url, headers
        finally:
            tg.cancel_scope.cancel()


async def run_demo(*, home: Path | None = None, headless: bool = False) -> float:
    """Run the demo; returns its duration in seconds. Raises DemoError (or another
    BastionError) naming the step that failed. Everything started is stopped, and a temporary
    home is deleted, on every way out."""
    out = Narrator()
    isolated = home is None
    home_path = Path(tempfile.mkdtemp(prefix="bastion-demo-")) if home is None else home.expanduser()
    try:
        async with demo_servers(access_token_ttl=ACCESS_TOKEN_TTL) as peers:
            await _walk(out, peers, home_path, isolated, headless)
        out.ok("demo MCP server and authorization server stopped")
    except Exception as exc:  # one clear line, whatever broke; everything is stopped by now
        leaf = _first_leaf(exc)
        detail = str(leaf) if isinstance(leaf, BastionError) else f"{type(leaf).__name__}: {leaf}"
        raise DemoError(f"demo failed at step {out.step}: {detail}") from exc
    finally:
        if isolated:
            shutil.rmtree(home_path, ignore_errors=True)
    if isolated:
        out.ok(f"temporary BASTION_HOME {home_path} deleted")
    return out.elapsed()


async def _walk(out: Narrator, peers: DemoServers, home: Path, isolated: bool, headless: bool) -> None:
    out.title("Bastion demo: an OAuth-protected MCP server behind the gateway, all on 127.0.0.1")

    # 1 -- the peers ---------------------------------------------------------------------------
    out.begin("A demo MCP server protected by OAuth, and its authorization server (both built with the mcp SDK)")
    out.say(f"authorization server  {peers.issuer}")
    out.say(f"                      DCR, PKCE S256, {ACCESS_TOKEN_TTL} s access tokens, refresh rotation, revocation;")
    out.say("                      it approves at once: the demo's only user is 'demo'")
    out.say(f"MCP server            {peers.mcp_url}   tools: hello(name), add(a, b)")
    async with httpx2.AsyncClient(timeout=5.0, trust_env=False) as http:
        answer = await http.post(
            peers.mcp_url,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Accept": "application/json, text/event-stream"},
        )
    challenge = answer.headers.get("www-authenticate", "")
    if answer.status_code != 401 or "resource_metadata=" not in challenge:
        raise DemoError(
            f"the demo MCP server answered {answer.status_code} without a token, not 401 + resource_metadata"
        )
    out.say(f"without a token it answers {answer.status_code}: WWW-Authenticate: {challenge}")

    # 2 -- catalog -----------------------------------------------------------------------------
    entry: dict[str, Any] = {
        "type": "remote",
        "title": "Bastion demo server",
        "remote": {"url": peers.mcp_url, "transport_type": "streamable-http"},
        "oauth": {"providers": [{"provider": SERVER}]},
    }
    out.begin("A catalog entry for it", f"$EDITOR {home / 'catalog.yaml'}")
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    catalog_path = home / "catalog.yaml"
    original = catalog_path.read_text() if catalog_path.exists() else None
    document: dict[str, Any] = (yaml.safe_load(original) if original else None) or {}
    if not isolated:
        if SERVER in document.get("registry", {}) or SERVER in load_enabled(home):
            raise DemoError(f"{home} already has a server named {SERVER!r}; the demo leaves it alone")
        out.say("(--home: added to its catalog.yaml for the demo, removed at the end)")
    document.setdefault("registry", {})[SERVER] = entry
    catalog_path.write_text(yaml.safe_dump(document, sort_keys=False))
    for line in yaml.safe_dump({"registry": {SERVER: entry}}, sort_keys=False).splitlines():
        out.say(line)
    try:
        await _use(out, peers, home, isolated, headless)
    finally:
        if not isolated:
            if original is None:
                catalog_path.unlink(missing_ok=True)
            else:
                catalog_path.write_text(original)


async def _use(out: Narrator, peers: DemoServers, home: Path, isolated: bool, headless: bool) -> None:
    async with AsyncExitStack() as stack:
        app = _open_app(home, isolated)
        await stack.enter_async_context(app)

        # 3 -- enable ----------------------------------------------------------------------------
        out.begin("Enable it (no network is touched)", f"bastion server enable {SERVER}")
        await app.enable([SERVER])
        rows = {r.server: r for r in await app.providers()}
        if SERVER not in rows:
            raise DemoError("enable created no OAuth provider for the demo server")
        out.ok(f"enabled {SERVER}; its OAuth provider is {rows[SERVER].state.value}")

        # 4 -- authorize ---------------------------------------------------------------------------
        use_browser = not headless and browser_available()
        how = "your browser" if use_browser else f"a headless browser ({'--headless' if headless else 'no display'})"
        out.begin(f"Authorize it: discovery, registration, PKCE, {how}", f"bastion oauth authorize {SERVER}")
        callback_port = _free_port()  # one redirect URI for both authorizations: one registration
        await _authorize(out, app, use_browser, callback_port)

        # 5 -- oauth ls -----------------------------------------------------------------------------
        out.begin("The providers", "bastion oauth ls")
        out.say(f"{'SERVER':<8} {'STATE':<20} {'ISSUER':<24} {'SCOPES':<12} EXPIRES")
        for row in await app.providers():
            out.say(_row(row))

        # 6 -- gateway --------------------------------------------------------------------------------
        out.begin("Start the gateway (in this process)", "bastion gateway run --transport streamable-http")
        runtime = Runtime(app)
        await stack.enter_async_context(runtime)
        url, headers = await stack.enter_async_context(_gateway(runtime, home))
        status = {s.name: s for s in runtime.gateway.status()}[SERVER]
        if status.state is not UpstreamState.READY:
            raise DemoError(f"the gateway's upstream {SERVER} is {status.state}: {status.last_error}")
        out.ok(f"listening on {url}; upstream {SERVER}: {status.state}, {status.tools} tools")

        # 7 -- a client calls tools -------------------------------------------------------------------
        out.begin("An MCP client lists and calls tools through the gateway (Bastion adds the Bearer token)")
        changes = ListChanges()
        http = await stack.enter_async_context(httpx2.AsyncClient(headers=headers, timeout=30.0, trust_env=False))
        client = await stack.enter_async_context(
            Client(streamable_http_client(url, http_client=http), mode="legacy", message_handler=changes.handler)
        )
        names = sorted(t.name for t in (await client.list_tools()).tools)
        out.say(f"tools/list → {', '.join(names)}")
        if f"{SERVER}__hello" not in names:
            raise DemoError(f"the gateway does not list {SERVER}__hello")
        hello = await client.call_tool(f"{SERVER}__hello", {"name": "world"})
        if hello.is_error:
            raise DemoError(f"{SERVER}__hello failed: {_text(hello)}")
        out.ok(f'tools/call {SERVER}__hello {{"name": "world"}} → {_text(hello)}')
        total = await client.call_tool(f"{SERVER}__add", {"a": 2, "b": 3})
        out.ok(f'tools/call {SERVER}__add {{"a": 2, "b": 3}} → {_text(total)}')
        await anyio.sleep(0.3)  # the client's notification stream opens after the handshake

        # 8 -- refresh elsewhere, the gateway follows -----------------------------------------------------
        out.begin("Another Bastion process refreshes the token; the running gateway follows")
        seen = changes.count
        refreshes = peers.provider.counters.refreshes
        other = _open_app(home, isolated)
        async with other:
            manager = TokenManager(other.store, other.http)
            current = await other.store.get(SERVER)
            stale = current.tokens.access_token if current is not None and current.tokens is not None else None
            if stale is None:
                raise DemoError("the store holds no token to refresh")
            fresh = await manager.refresh_after_401(SERVER, stale)
            if fresh is None or fresh == stale:
                raise DemoError("the refresh failed")
        if peers.provider.counters.refreshes != refreshes + 1:
            raise DemoError("the authorization server saw no refresh")
        out.ok("refreshed: the authorization server issued a new access token and rotated the refresh token")
        await _wait_for(lambda: runtime.tokens.cached_token(SERVER) == fresh, "the gateway picking up the new token")
        await _wait_for(lambda: _state(runtime) is UpstreamState.READY, f"{SERVER} ready")
        if changes.count > seen:
            out.ok(f"the gateway saw the store change and reconnected {SERVER} (tools/list_changed sent)")
        else:
            out.ok(f"the gateway saw the store change and adopted the new token; the session to {SERVER} goes on")
        again = await client.call_tool(f"{SERVER}__add", {"a": 40, "b": 2})
        if again.is_error:
            raise DemoError(f"the call after the refresh failed: {_text(again)}")
        if peers.verifier.last_digest != token_digest(fresh):
            raise DemoError("the gateway did not use the refreshed access token")
        out.ok(f'tools/call {SERVER}__add {{"a": 40, "b": 2}} → {_text(again)}, with the new access token')

        # 9 -- revoke ---------------------------------------------------------------------------------------
        out.begin("Revoke the tokens", f"bastion oauth revoke {SERVER}")
        seen = changes.count
        revocations = peers.provider.counters.revocations
        problems = await app.revoke(SERVER)
        if problems or peers.provider.counters.revocations <= revocations:
            raise DemoError(f"revocation at the authorization server failed: {'; '.join(problems) or 'not seen'}")
        out.ok("revoked at the authorization server (RFC 7009) and deleted from the store")
        await changes.wait_beyond(seen, "the revocation")
        await _wait_for(lambda: _state(runtime) is UpstreamState.NEEDS_AUTHORIZATION, f"{SERVER} needs-authorization")
        names = sorted(t.name for t in (await client.list_tools()).tools)
        out.ok(
            f"the gateway reconnected {SERVER} without a token: {_state(runtime)}; "
            f"tools/list_changed, tools/list → {', '.join(names) or '(none)'}"
        )
        try:
            refused = await client.call_tool(f"{SERVER}__hello", {"name": "world"})
            message = _text(refused) if refused.is_error else ""
        except MCPError as exc:
            message = exc.error.message
        if not message:
            raise DemoError(f"{SERVER}__hello still answers after the revocation")
        out.ok(f"tools/call {SERVER}__hello → error: {message}")

        # 10 -- authorize again: the gateway reconnects by itself ------------------------------------------------
        out.begin("Authorize again; the running gateway reconnects by itself", f"bastion oauth authorize {SERVER}")
        seen = changes.count
        await _authorize(out, app, use_browser, callback_port)
        await changes.wait_beyond(seen, "the new authorization")
        await _wait_for(lambda: _state(runtime) is UpstreamState.READY, f"{SERVER} ready again")
        names = sorted(t.name for t in (await client.list_tools()).tools)
        out.ok(f"the gateway reconnected {SERVER}: tools/list_changed, tools/list → {', '.join(names)}")
        hello = await client.call_tool(f"{SERVER}__hello", {"name": "again"})
        if hello.is_error:
            raise DemoError(f"{SERVER}__hello failed after authorizing again: {_text(hello)}")
        out.ok(f'tools/call {SERVER}__hello {{"name": "again"}} → {_text(hello)}')

        # 11 -- disable --------------------------------------------------------------------------------------
        out.begin("Disable it", f"bastion server disable {SERVER}")
        problems = (await app.disable([SERVER])).get(SERVER, [])
        for problem in problems:
            out.say(f"revocation: {problem}")
        await _wait_for(
            lambda: all(s.name != SERVER for s in runtime.gateway.status()), f"{SERVER} leaving the gateway"
        )
        left = [r for r in await app.providers() if r.server == SERVER]
        if left or SERVER in app.enabled():
            raise DemoError(f"{SERVER} is still enabled or still has an OAuth provider")
        out.ok(f"disabled {SERVER}: registry and store no longer have it; the gateway dropped it by itself")
        out.begin("Clean up")
    # Leaving the stack stopped the client, the gateway and its runtime; run_demo stops the peers.
    out.ok("MCP client and gateway stopped")


async def _authorize(out: Narrator, app: Bastion, use_browser: bool, callback_port: int) -> None:
    agent: UserAgent = DemoBrowserUserAgent(out.say) if use_browser else HeadlessUserAgent(out.say)
    record = await app.authorize(
        SERVER,
        agent,
        callback_port=callback_port,
        timeout=120.0 if use_browser else WAIT * 2,
        progress=out.say,
    )
    tokens = record.tokens
    if tokens is None:
        raise DemoError("authorize returned without tokens")
    out.ok(
        f"authorized {SERVER}: scopes {' '.join(tokens.scopes) or '-'}, access token for {ACCESS_TOKEN_TTL} s, "
        f"refresh token {'kept' if tokens.refresh_token else 'not issued'} (all in the store, never shown)"
    )


def _first_leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups, e.g. from a task group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _state(runtime: Runtime) -> UpstreamState | None:
    for status in runtime.gateway.status():
        if status.name == SERVER:
            return status.state
    return None
