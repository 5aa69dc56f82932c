"""The `bastion` command: a thin shell over `bastion.service`.

Imports of heavy modules (the mcp SDK, httpx2, the store) happen inside the commands, so
`bastion --help` stays fast.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import click

from bastion.text import TerminalFormatter, terminal_text

if TYPE_CHECKING:
    from bastion.gateway.runtime import TLSFiles
    from bastion.service import Bastion

T = TypeVar("T")


def _fail(message: str, code: int = 1) -> None:
    click.echo(terminal_text(f"bastion: {message}"), err=True)
    sys.exit(code)


def one_line_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn Bastion's errors into one line on stderr and exit 1 (130 on Ctrl-C)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        from bastion.errors import BastionError  # lazy: keeps `bastion --help` fast

        try:
            return fn(*args, **kwargs)
        except BastionError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        raise AssertionError("unreachable")

    return wrapper


def run_async(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async command body under `one_line_errors`."""

    @functools.wraps(fn)
    @one_line_errors
    def wrapper(*args: Any, **kwargs: Any) -> T:
        import anyio  # lazy: keeps `bastion --help` fast

        return anyio.run(functools.partial(fn, *args, **kwargs))

    return wrapper


def open_app() -> Bastion:
    from bastion.service import Bastion

    return Bastion.open()


def _configure_logging(verbose: int) -> None:
    level = os.environ.get("BASTION_LOG_LEVEL", "").upper() or (
        "DEBUG" if verbose >= 2 else "INFO" if verbose == 1 else "WARNING"
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TerminalFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    if level != "DEBUG":
        logging.getLogger("httpx2").setLevel(logging.WARNING)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.version_option(package_name="bastion")
def cli(verbose: int) -> None:
    """Bastion: one MCP server in front of many, with OAuth built in."""
    _configure_logging(verbose)


# --------------------------------------------------------------------------- server


@cli.group()
def server() -> None:
    """Catalog servers: list, enable, disable, inspect."""


@server.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@run_async
async def server_ls(as_json: bool) -> None:
    """List catalog servers and whether they are enabled."""
    async with open_app() as app:
        enabled = set(app.enabled())
        rows = []
        for name, entry in app.catalog.entries.items():
            rows.append(
                {
                    "name": name,
                    "enabled": name in enabled,
                    "type": entry.type,
                    "transport": entry.remote.transport_type if entry.is_remote and entry.remote else "stdio",
                    "oauth": entry.uses_oauth,
                    "title": entry.title or "",
                    "source": entry.source,
                }
            )
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        for row in rows:
            mark = "●" if row["enabled"] else "○"
            oauth = " oauth" if row["oauth"] else ""
            click.echo(terminal_text(f"{mark} {row['name']:<24} {row['transport']:<16}{oauth:<6} {row['title']}"))


@server.command("enable")
@click.argument("names", nargs=-1, required=True)
@run_async
async def server_enable(names: tuple[str, ...]) -> None:
    """Enable servers from the catalog (no network is touched)."""
    async with open_app() as app:
        for entry in await app.enable(names):
            click.echo(f"enabled {entry.name}")
            if entry.uses_oauth:
                click.echo(f"  {entry.name} uses OAuth: run `bastion oauth authorize {entry.name}`")


@server.command("disable")
@click.argument("names", nargs=-1, required=True)
@run_async
async def server_disable(names: tuple[str, ...]) -> None:
    """Disable servers; their tokens are revoked and removed, their client registration removed."""
    async with open_app() as app:
        problems = await app.disable(names)
        for name in names:
            click.echo(f"disabled {name}")
            for problem in problems.get(name, []):
                click.echo(terminal_text(f"  warning: revocation: {problem} (tokens removed locally anyway)"), err=True)


@server.command("inspect")
@click.argument("name")
@run_async
async def server_inspect(name: str) -> None:
    """Show a catalog entry and its OAuth state."""
    from bastion.service import provider_row

    async with open_app() as app:
        entry = app.entry(name)
        doc: dict[str, Any] = entry.model_dump(mode="json", exclude_defaults=True)
        doc["enabled"] = name in app.enabled()
        record = await app.store.get(name)
        if record is not None:
            doc["oauth_state"] = provider_row(record).as_json()
        click.echo(json.dumps(doc, indent=2))


# --------------------------------------------------------------------------- feature


@cli.group()
def feature() -> None:
    """Feature flags."""


@feature.command("ls")
@run_async
async def feature_ls() -> None:
    """List feature flags."""
    from bastion.config.settings import FEATURES

    async with open_app() as app:
        for name, (_, description) in sorted(FEATURES.items()):
            state = "enabled" if app.settings.feature(name) else "disabled"
            click.echo(f"{name:<12} {state:<9} {description}")


@feature.command("enable")
@click.argument("name")
@run_async
async def feature_enable(name: str) -> None:
    """Turn a feature on."""
    async with open_app() as app:
        app.set_feature(name, True)
        click.echo(f"{name} enabled")


@feature.command("disable")
@click.argument("name")
@run_async
async def feature_disable(name: str) -> None:
    """Turn a feature off."""
    async with open_app() as app:
        app.set_feature(name, False)
        click.echo(f"{name} disabled")


# --------------------------------------------------------------------------- oauth


@cli.group()
def oauth() -> None:
    """OAuth providers: list, authorize, revoke, pre-registered clients."""


def _format_expiry(expires_at: float | None) -> str:
    import time

    if expires_at is None:
        return "-"
    left = int(expires_at - time.time())
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(expires_at))
    return f"{stamp} ({'in ' + str(left) + 's' if left >= 0 else 'expired'})"


@oauth.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects.")
@run_async
async def oauth_ls(as_json: bool) -> None:
    """One row per OAuth provider: server, state, issuer, client id, scopes, expiry.

    When the store is unreachable (Redis down), says so on stderr, prints no rows (`--json`: an
    empty list) and exits 1: gateways go on serving the tokens they hold meanwhile."""
    from bastion.errors import StoreUnavailable

    async with open_app() as app:
        try:
            rows = await app.providers()
        except StoreUnavailable as exc:
            click.echo(terminal_text(f"bastion: warning: the credential store is degraded: {exc}"), err=True)
            if as_json:
                click.echo("[]")
            sys.exit(1)
        if as_json:
            click.echo(json.dumps([r.as_json() for r in rows], indent=2))
            return
        if not rows:
            click.echo("no OAuth providers (enable a remote server with `bastion server enable NAME`)")
            return
        click.echo(f"{'SERVER':<20} {'STATE':<20} {'ISSUER':<36} {'CLIENT ID':<24} {'SCOPES':<24} EXPIRES")
        for r in rows:
            click.echo(
                terminal_text(
                    f"{r.server:<20} {r.state.value:<20} {r.issuer or '-':<36} {(r.client_id or '-')[:24]:<24} "
                    f"{' '.join(r.scopes) or '-':<24} {_format_expiry(r.expires_at)}"
                )
            )


@oauth.command("authorize")
@click.argument("name")
@click.option("--scopes", default=None, help='Space-separated scopes, e.g. "read write" (overrides discovery).')
@click.option("--no-browser", is_flag=True, help="Print the URL instead of opening a browser.")
@click.option("--callback-port", type=int, default=None, help="Loopback callback port (default from config, 5175).")
@click.option("--timeout", type=float, default=None, help="Seconds to wait for the browser (default 300).")
@run_async
async def oauth_authorize(
    name: str, scopes: str | None, no_browser: bool, callback_port: int | None, timeout: float | None
) -> None:
    """Run the whole authorization: discovery, registration, browser, callback, tokens."""
    from bastion.oauth.useragent import BrowserUserAgent, PrintUserAgent

    agent = PrintUserAgent() if no_browser else BrowserUserAgent()

    def progress(message: str) -> None:
        click.echo(terminal_text(f"· {message}"), err=True)

    async with open_app() as app:
        record = await app.authorize(
            name,
            agent,
            scopes=scopes.split() if scopes is not None else None,
            callback_port=callback_port,
            timeout=timeout,
            progress=progress,
        )
        tokens = record.tokens
        granted = " ".join(tokens.scopes) if tokens is not None and tokens.scopes else "(none)"
        click.echo(terminal_text(f"authorized {name} (scopes: {granted})"))


@oauth.command("revoke")
@click.argument("name")
@run_async
async def oauth_revoke(name: str) -> None:
    """Revoke the tokens at the authorization server, then delete them locally."""
    async with open_app() as app:
        problems = await app.revoke(name)
        for problem in problems:
            click.echo(terminal_text(f"warning: revocation: {problem} (tokens removed locally anyway)"), err=True)
        click.echo(f"revoked {name}")


@oauth.group("client")
def oauth_client() -> None:
    """Pre-registered OAuth clients."""


@oauth_client.command("set")
@click.argument("name")
@click.option("--client-id", required=True)
@click.option("--client-secret", default=None, help="Prefer BASTION_CLIENT_SECRET in the environment.")
@click.option("--issuer", default=None, help="The authorization server this client belongs to.")
@click.option(
    "--auth-method",
    type=click.Choice(["none", "client_secret_basic", "client_secret_post"]),
    default=None,
    help="Token endpoint authentication (default: basic with a secret, none without).",
)
@run_async
async def oauth_client_set(
    name: str, client_id: str, client_secret: str | None, issuer: str | None, auth_method: str | None
) -> None:
    """Use a client registered by hand instead of dynamic registration."""
    secret = client_secret or os.environ.get("BASTION_CLIENT_SECRET") or None
    async with open_app() as app:
        await app.set_client(name, client_id, secret, issuer, auth_method)
        click.echo(terminal_text(f"client set for {name}: {client_id}" + (" (with secret)" if secret else "")))


@oauth_client.command("rm")
@click.argument("name")
@run_async
async def oauth_client_rm(name: str) -> None:
    """Forget the client registration of NAME (and its tokens)."""
    async with open_app() as app:
        removed = await app.remove_client(name)
        click.echo(f"client removed for {name}" if removed else f"{name} had no client registration")


# --------------------------------------------------------------------------- secret


@cli.group()
def secret() -> None:
    """Secrets that catalog entries ask for (kept in the store, never printed back).

    Each secret is handed only to the servers it was set for."""


@secret.command("set")
@click.argument("name")
@click.option("--value", default=None, help="The value (default: all of stdin, e.g. a PEM key, or a prompt).")
@click.option(
    "--server",
    "servers",
    multiple=True,
    help="A server that may use it (repeatable). Default: the servers it is already set for, else the server "
    "its name points to (`github` for `github.personal_access_token`) or the one entry that asks for it.",
)
@run_async
async def secret_set(name: str, value: str | None, servers: tuple[str, ...]) -> None:
    """Set secret NAME (`oauth:NAME` when an entry's client credentials name it)."""
    async with open_app() as app:
        name = app.secret_name(name)
        targets = await app.secret_targets(name, servers)
        if value is None:
            value = sys.stdin.read().rstrip("\r\n") if not sys.stdin.isatty() else click.prompt(name, hide_input=True)
        await app.set_secret(name, value, targets)
    click.echo(terminal_text(f"secret {name} set for {', '.join(targets)}"))


@secret.command("allow")
@click.argument("name")
@click.argument("server")
@run_async
async def secret_allow(name: str, server: str) -> None:
    """Hand secret NAME to SERVER too."""
    async with open_app() as app:
        name = app.secret_name(name)
        servers = await app.allow_secret(name, server)
    click.echo(terminal_text(f"secret {name} is for {', '.join(servers)}"))


@secret.command("disallow")
@click.argument("name")
@click.argument("server")
@run_async
async def secret_disallow(name: str, server: str) -> None:
    """Stop handing secret NAME to SERVER."""
    async with open_app() as app:
        name = app.secret_name(name)
        servers = await app.disallow_secret(name, server)
    click.echo(terminal_text(f"secret {name} is for {', '.join(servers) or 'no server'}"))


@secret.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@run_async
async def secret_ls(as_json: bool) -> None:
    """List secret names and the servers each is for."""
    async with open_app() as app:
        rows = await app.list_secrets()
    if as_json:
        click.echo(json.dumps([{"name": row.name, "servers": row.servers} for row in rows], indent=2))
        return
    for row in rows:
        click.echo(terminal_text(f"{row.name}  (for: {', '.join(row.servers) or 'no server'})"))


@secret.command("rm")
@click.argument("name")
@run_async
async def secret_rm(name: str) -> None:
    """Remove secret NAME."""
    async with open_app() as app:
        name = app.secret_name(name)
        removed = await app.delete_secret(name)
    click.echo(terminal_text(f"secret {name} removed" if removed else f"no secret named {name}"))


# --------------------------------------------------------------------------- gateway & tools


@cli.group()
def gateway() -> None:
    """Run the gateway."""


def listener_tls_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`--tls-cert/--tls-key/--insecure-http`, for the commands that listen on HTTP."""
    fn = click.option(
        "--insecure-http", is_flag=True, help="Serve plain http off loopback (e.g. TLS ends at a proxy)."
    )(fn)
    fn = click.option(
        "--tls-key", type=click.Path(dir_okay=False, path_type=str), default=None, help="PEM private key."
    )(fn)
    return click.option(
        "--tls-cert", type=click.Path(dir_okay=False, path_type=str), default=None, help="PEM certificate."
    )(fn)


def tls_files(tls_cert: str | None, tls_key: str | None) -> TLSFiles | None:
    """The `--tls-cert/--tls-key` pair (both or neither)."""
    from pathlib import Path

    from bastion.errors import ConfigError
    from bastion.gateway.runtime import TLSFiles  # lazy: keeps `bastion --help` fast

    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together", hint="give both, or neither")
    return TLSFiles(Path(tls_cert), Path(tls_key)) if tls_cert is not None and tls_key is not None else None


@gateway.command("run")
@click.option("--transport", type=click.Choice(["stdio", "streamable-http", "sse"]), default="stdio", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Listen address (HTTP transports).")
@click.option("--port", type=int, default=8811, show_default=True, help="Listen port (0 picks a free one).")
@click.option("--servers", default=None, help="Comma-separated enabled servers to serve (default: all enabled).")
@click.option(
    "--no-token",
    is_flag=True,
    help="Let clients in without the gateway token (any local process can then use the gateway; warned).",
)
@listener_tls_options
@run_async
async def gateway_run(
    transport: str,
    host: str,
    port: int,
    servers: str | None,
    no_token: bool,
    tls_cert: str | None,
    tls_key: str | None,
    insecure_http: bool,
) -> None:
    """Serve every enabled server as one MCP server, until SIGTERM/SIGINT (or end of stdin).

    On the HTTP transports every client sends `Authorization: Bearer <gateway token>` (the token
    in $BASTION_HOME/gateway-token, or $BASTION_GATEWAY_TOKEN); off loopback they need TLS."""
    from bastion.gateway.runtime import run_gateway
    from bastion.serve import Runtime

    tls = tls_files(tls_cert, tls_key)
    only = [s.strip() for s in servers.split(",") if s.strip()] if servers else None
    async with open_app() as app, Runtime(app, only=only, wait=False) as runtime:

        def with_ui(inner: Any, token: str | None) -> Any:
            # The OAuth page at /ui, in front of the gateway's own middleware (it checks Host,
            # Origin, CSRF and the same token itself, and also accepts its session cookie).
            from bastion.web.app import create_ui_app, mount_ui

            ui = create_ui_app(app, gateway_status=runtime.gateway.status, token=token, allowed_hosts=[host])
            return mount_ui(inner, ui)

        await run_gateway(
            runtime.gateway,
            transport,  # type: ignore[arg-type]
            host,
            port,
            wrap=with_ui,
            home=app.home,
            require_token=False if no_token else None,
            tls=tls,
            insecure_http=insecure_http,
        )


@cli.group()
def tools() -> None:
    """List and call tools through the gateway (in-process, one request)."""


@tools.command("ls")
@click.option("--server", default=None, help="Only this server's tools.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@run_async
async def tools_ls(server: str | None, as_json: bool) -> None:
    """List the tools of the enabled servers."""
    from bastion.serve import Runtime

    async with open_app() as app, Runtime(app, only=[server] if server else None, watch=False) as runtime:
        listed = await runtime.gateway.list_tools()
        problems = [s for s in runtime.gateway.status() if s.state.value != "ready"]
        collisions = runtime.gateway.pool.routes.collisions
    if as_json:
        click.echo(json.dumps([t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in listed], indent=2))
    else:
        for tool in listed:
            summary = (tool.description or "").strip().splitlines()[0] if tool.description else ""
            click.echo(terminal_text(f"{tool.name:<40} {summary[:80]}"))
    for status in problems:
        click.echo(
            terminal_text(f"warning: {status.name} is {status.state.value}: {status.last_error or ''}".rstrip()),
            err=True,
        )
    for collision in collisions:
        click.echo(terminal_text(f"note: {collision}"), err=True)


def _parse_arguments(pairs: tuple[str, ...], json_args: str | None) -> dict[str, Any]:
    arguments: dict[str, Any] = {}
    if json_args:
        try:
            loaded = json.loads(json_args)
        except json.JSONDecodeError as exc:
            _fail(f"--json-args is not valid JSON: {exc.msg}")
        if not isinstance(loaded, dict):
            _fail("--json-args must be a JSON object")
        arguments.update(loaded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            _fail(f"argument {pair!r} is not key=value")
        try:
            arguments[key] = json.loads(raw)
        except json.JSONDecodeError:
            arguments[key] = raw
    return arguments


@tools.command("call")
@click.option("--server", default=None, help="Only start this server.")
@click.option("--json-args", default=None, help="Arguments as a JSON object.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw result as JSON.")
@click.argument("tool")
@click.argument("args", nargs=-1)
@run_async
async def tools_call(
    server: str | None, json_args: str | None, as_json: bool, tool: str, args: tuple[str, ...]
) -> None:
    """Call TOOL with key=value arguments (values are JSON when they parse as JSON)."""
    from bastion.serve import Runtime

    arguments = _parse_arguments(args, json_args)
    async with open_app() as app, Runtime(app, only=[server] if server else None, watch=False) as runtime:
        result = await runtime.gateway.call_tool(tool, arguments)
    if as_json:
        click.echo(json.dumps(result.model_dump(mode="json", by_alias=True, exclude_none=True), indent=2))
    else:
        for block in result.content:
            text = getattr(block, "text", None)
            shown = text if text is not None else json.dumps(block.model_dump(mode="json", exclude_none=True))
            click.echo(terminal_text(shown, keep_newlines=True))
    if result.is_error:
        sys.exit(1)


# --------------------------------------------------------------------------- client


@cli.group("client")
def client_group() -> None:
    """Desktop MCP clients (Claude Desktop, Cursor, VS Code, Claude Code)."""


@client_group.command("ls")
def client_ls() -> None:
    """Which clients are connected to Bastion."""
    from bastion.clients import CLIENTS, is_connected

    for client in CLIENTS.values():
        state = "connected" if is_connected(client) else "-"
        click.echo(f"{client.name:<12} {client.title:<15} {state:<10} {client.config_path()}")


@client_group.command("connect")
@click.argument("name")
@click.option(
    "--url",
    default=None,
    help="Connect to a running `gateway run --transport streamable-http` at this URL (e.g. "
    "http://127.0.0.1:8811/mcp) instead of starting the gateway over stdio; the gateway token is written "
    "into the client's configuration.",
)
@one_line_errors
def client_connect(name: str, url: str | None) -> None:
    """Add Bastion to the client's MCP configuration: a `bastion gateway run` stdio entry, or
    with --url an HTTP entry that sends the gateway token."""
    from bastion.clients import connect, get_client
    from bastion.config.paths import bastion_home
    from bastion.gateway.security import current_token

    client = get_client(name)
    home = bastion_home() if os.environ.get("BASTION_HOME") else None
    token = current_token(bastion_home()) if url is not None else None
    path = connect(client, home, url=url, token=token)
    click.echo(f"connected {client.title}: {path} (restart {client.title} to pick it up)")


@client_group.command("disconnect")
@click.argument("name")
@one_line_errors
def client_disconnect(name: str) -> None:
    """Remove Bastion's entry from the client's MCP configuration."""
    from bastion.clients import disconnect, get_client

    client = get_client(name)
    removed = disconnect(client)
    click.echo(f"disconnected {client.title}" if removed else f"{client.title} was not connected")


# --------------------------------------------------------------------------- ui (the OAuth page, bastion.web)


@cli.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True, help="Listen address (others need the gateway token).")
@click.option("--port", type=int, default=8812, show_default=True, help="Port (0 picks a free one).")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the browser.")
@listener_tls_options
@run_async
async def ui(
    host: str, port: int, open_browser: bool, tls_cert: str | None, tls_key: str | None, insecure_http: bool
) -> None:
    """Serve the OAuth page: enabled servers, their OAuth state, Authorize / Revoke / Enable / Disable.

    Off loopback the sign-in and the session cookie cross a network: TLS, as for `gateway run`."""
    from bastion.gateway.runtime import check_listener
    from bastion.web.serve import serve_ui  # lazy: keeps `bastion --help` fast

    tls = tls_files(tls_cert, tls_key)
    check_listener(host, tls, insecure_http)
    async with open_app() as app:
        await serve_ui(app, host=host, port=port, open_browser=open_browser, tls=tls)


# --------------------------------------------------------------------------- demo (bastion.demo)


@cli.command("demo")
@click.option("--headless", is_flag=True, help="Authorize with a headless browser even when a real one is available.")
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Use this BASTION_HOME (default: a temporary one, deleted afterwards).",
)
@run_async
async def demo(headless: bool, home: str | None) -> None:
    """Walk the whole flow on loopback: a demo OAuth-protected MCP server, enable, authorize, call a
    tool through the gateway, refresh, revoke, disable; then stop everything."""
    from pathlib import Path

    from bastion.demo import run_demo  # lazy: keeps `bastion --help` fast

    seconds = await run_demo(home=Path(home) if home else None, headless=headless)
    click.echo(f"\nDemo complete in {seconds:.1f} s.")


def main() -> None:
    cli(prog_name="bastion")


if __name__ == "__main__":
    main()
