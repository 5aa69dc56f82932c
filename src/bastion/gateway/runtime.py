"""The gateway as a library: `Gateway` (upstreams + routing + downstream server) and `run_gateway`.

    async with Gateway(entries, settings, token_provider, secret_lookup) as gateway:
        print(await gateway.list_tools())
        result = await gateway.call_tool("github__search", {"q": "bastion"})

    await run_gateway(Gateway(...), "streamable-http", "127.0.0.1", 8811)   # until SIGTERM

`add`, `remove`, `reconnect` and `apply` may be called from other tasks while traffic flows:
they are serialized among themselves, and request handlers only ever read the immutable
routing snapshot, so a request sees the old or the new set of upstreams, never half of one.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import stat
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import anyio.abc
import mcp_types as types
import uvicorn
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS
from starlette.types import ASGIApp

from bastion.config.catalog import CatalogEntry
from bastion.config.paths import bastion_home
from bastion.config.settings import GatewaySettings
from bastion.errors import GatewayError, NeedsAuthorizationError, UpstreamError
from bastion.gateway.coalesce import (
    HEAD_TIMEOUT,
    CoalescingHttpToolsProtocol,
    HeadDeadlineProtocol,
    coalesce_enabled,
    with_head_timeout,
)
from bastion.gateway.front import FastLane, fast_lane_enabled, fast_lane_protocol
from bastion.gateway.naming import SEPARATOR
from bastion.gateway.pool import Pool
from bastion.gateway.security import (
    BODY_TIMEOUT,
    BodyDeadlineMiddleware,
    GatewaySecurityMiddleware,
    gateway_token,
    is_loopback_host,
)
from bastion.gateway.server import ChangeNotifier, GatewayServer, StoreStatus, build_server, http_app
from bastion.gateway.upstream import SecretLookup, Upstream, UpstreamHandle, UpstreamState, UpstreamStatus
from bastion.oauth.api import TokenProvider

logger = logging.getLogger(__name__)

Transport = Literal["stdio", "streamable-http", "sse"]


async def _no_secrets(server: str, name: str) -> str | None:
    return None


class Gateway:
    """Runs the enabled upstreams and serves them as one MCP server."""

    def __init__(
        self,
        entries: Iterable[CatalogEntry],
        settings: GatewaySettings,
        token_provider: TokenProvider | None = None,
        secret_lookup: SecretLookup | None = None,
        store_status: StoreStatus | None = None,
    ) -> None:
        self.settings = settings
        self.store_status = store_status
        """Reported by /health (the store's backend and whether it is degraded)."""
        self._initial = list(entries)
        self._token_provider = token_provider
        self._secret_lookup = secret_lookup or _no_secrets
        self.notifier = ChangeNotifier()
        self.pool = Pool(self.notifier.publish, naming=settings.naming)
        self.server: GatewayServer = build_server(self.pool, self.notifier)
        self._handles: dict[str, UpstreamHandle] = {}
        self._lock = anyio.Lock()
        self._settled: dict[str, anyio.Event] = {}
        self._stack: AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._tg is not None

    async def start(self, *, wait: bool = True) -> None:
        """Start every upstream concurrently. With `wait`, return once each has finished its first
        attempt (ready, needs-authorization, failed or backing off), at most `connect_timeout` later."""
        if self._tg is not None:
            raise RuntimeError("the gateway is already started")
        stack = AsyncExitStack()
        self._tg = await stack.enter_async_context(anyio.create_task_group())
        self._stack = stack
        self._tg.start_soon(self.notifier.run)
        startup_wait = self.settings.startup_wait
        self.pool.startup.begin(
            (entry.name for entry in self._initial),
            self.settings.connect_timeout if startup_wait is None else startup_wait,
        )
        self._tg.start_soon(self.pool.startup.expire)
        for entry in self._initial:
            self._start_upstream(entry)
        if wait:
            await self.wait_settled()

    async def wait_settled(self, timeout: float | None = None) -> None:
        """Wait until every upstream has finished its current first connection attempt."""
        limit = self.settings.connect_timeout + 1.0 if timeout is None else timeout
        with anyio.move_on_after(limit):
            for event in list(self._settled.values()):
                await event.wait()

    async def aclose(self) -> None:
        """Stop every upstream (stdio children are terminated with their process groups)."""
        stack, self._stack = self._stack, None
        if stack is None:
            self.notifier.close()  # never started: nothing runs, but its queue is open
            return
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        self.notifier.close()
        try:
            await stack.aclose()
        finally:
            self._tg = None
            self._handles.clear()
            self.pool.upstreams.clear()
            self.pool.rebuild()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- upstream management (safe alongside traffic) ----------------------------------------------

    def _start_upstream(self, entry: CatalogEntry) -> None:
        assert self._tg is not None
        settled = anyio.Event()
        self._settled[entry.name] = settled

        def on_change(upstream: Upstream) -> None:
            if upstream.state is not UpstreamState.CONNECTING:
                settled.set()
                self.pool.startup.settle(upstream.name)
            if self.pool.upstreams.get(upstream.name) is upstream:
                self.pool.rebuild()

        upstream = Upstream(
            entry,
            self.settings,
            token_provider=self._token_provider,
            secret_lookup=self._secret_lookup,
            on_change=on_change,
            on_log=self.notifier.publish_log,
            log_listeners=lambda: self.notifier.legacy_sessions > 0,
        )
        handle = UpstreamHandle(upstream)
        self._handles[entry.name] = handle
        self.pool.upstreams[entry.name] = upstream
        self._tg.start_soon(self._supervise, handle)

    async def _supervise(self, handle: UpstreamHandle) -> None:
        try:
            with handle.scope:
                await handle.upstream.run()
        except Exception:  # task boundary: a supervisor bug must not take the other upstreams down
            logger.exception("supervisor of upstream %r crashed", handle.upstream.name)
        finally:
            handle.done.set()

    async def _stop_upstream(self, name: str) -> bool:
        handle = self._handles.pop(name, None)
        if handle is None:
            return False
        self.pool.upstreams.pop(name, None)
        self._settled.pop(name, None)
        self.pool.startup.settle(name)
        self.pool.rebuild()
        handle.scope.cancel()
        with anyio.CancelScope(shield=True):
            await handle.done.wait()
        return True

    def _require_started(self) -> None:
        if self._tg is None:
            raise GatewayError("the gateway is not started")

    async def add(self, entry: CatalogEntry) -> None:
        """Start serving `entry` (replacing a running upstream of the same name)."""
        self._require_started()
        async with self._lock:
            await self._stop_upstream(entry.name)
            self._start_upstream(entry)

    async def remove(self, server: str) -> bool:
        """Stop serving `server`; False if it was not running."""
        self._require_started()
        async with self._lock:
            return await self._stop_upstream(server)

    async def reconnect(self, server: str) -> None:
        """Reconnect `server` now (e.g. after its token changed): new session, fresh listing."""
        handle = self._handles.get(server)
        if handle is None:
            raise UpstreamError(f"server {server!r} is not running in this gateway")
        handle.upstream.reconnect()

    async def apply(self, entries: Iterable[CatalogEntry]) -> None:
        """Make the running set equal `entries`: add new servers, remove gone ones, restart changed ones."""
        self._require_started()
        wanted = {entry.name: entry for entry in entries}
        async with self._lock:
            for name in [name for name in self._handles if name not in wanted]:
                await self._stop_upstream(name)
            for name, entry in wanted.items():
                handle = self._handles.get(name)
                if handle is not None and handle.upstream.entry == entry:
                    continue
                await self._stop_upstream(name)
                self._start_upstream(entry)

    def status(self) -> list[UpstreamStatus]:
        return [self._handles[name].upstream.status() for name in sorted(self._handles)]

    async def announce_ready(self, emit: Callable[[str], None]) -> None:
        """Once the startup gate opens, `emit` one line: how long it took and where each server is."""
        gate = self.pool.startup
        await gate.wait()
        emit(ready_line(self.status(), gate.pending_at_open, (gate.opened_at or 0.0) - (gate.started_at or 0.0)))

    # -- in-process use (`bastion tools ls/call`) ---------------------------------------------------

    async def list_tools(self) -> list[types.Tool]:
        return [types.Tool.model_validate(tool) for tool in self.pool.routes.tools_wire]

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> types.CallToolResult:
        """Call an exposed tool. Raises `NeedsAuthorizationError` / `UpstreamError` with what to do."""
        params = types.CallToolRequestParams(name=name, arguments=arguments)
        try:
            raw = await self.pool.call_tool(params)
        except MCPError as exc:
            raise self._as_bastion_error(name, exc) from None
        return types.CallToolResult.model_validate(raw)

    def _as_bastion_error(self, tool: str, exc: MCPError) -> UpstreamError | NeedsAuthorizationError:
        if exc.code == INVALID_PARAMS and exc.error.message.startswith("unknown tool"):
            return UpstreamError(exc.error.message, hint="`bastion tools ls` lists the tools")
        route = self.pool.routes.tools.get(tool)
        server = route.server if route is not None else tool.partition(SEPARATOR)[0]
        upstream = self.pool.upstreams.get(server)
        if upstream is not None and upstream.state is UpstreamState.NEEDS_AUTHORIZATION:
            return NeedsAuthorizationError(exc.error.message)
        return UpstreamError(exc.error.message)


def ready_line(statuses: Iterable[UpstreamStatus], still_starting: Iterable[str], took: float) -> str:
    """`ready in 2.1s: 3 servers ready, 1 failed (x), 1 waiting for authorization (notion-remote)`."""
    groups: dict[str, list[str]] = {}
    starting = set(still_starting)
    for status in statuses:
        if status.name in starting:
            label = "still starting"
        elif status.state is UpstreamState.READY:
            label = "ready"
        elif status.state is UpstreamState.NEEDS_AUTHORIZATION:
            label = "waiting for authorization"
        elif status.state is UpstreamState.FAILED:
            label = "failed"
        else:
            label = "retrying"  # disconnected after a failed first attempt, backing off
        groups.setdefault(label, []).append(status.name)
    parts = []
    for label in ("ready", "waiting for authorization", "failed", "retrying", "still starting"):
        names = groups.get(label)
        if not names:
            continue
        count = f"{len(names)} server{'s' if len(names) != 1 else ''} {label}"
        parts.append(count if label == "ready" else f"{count} ({', '.join(names)})")
    summary = ", ".join(parts) if parts else "no servers enabled"
    if starting:
        summary += "; their tools arrive with list_changed"
    return f"ready in {took:.1f}s: {summary}"


# -- serving ----------------------------------------------------------------------------------------


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: `run_gateway` owns SIGTERM/SIGINT so that the
    upstream children are stopped before the process exits."""

    def capture_signals(self) -> Any:
        return _NullContext()


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@dataclass(frozen=True)
class ListenerLimits:
    """Bounds on what clients of the HTTP listener can hold (slowloris, connection floods)."""

    head_timeout: float = HEAD_TIMEOUT
    """Seconds from a connection's opening (or a request's first byte) to the end of its headers;
    then 408 and close (uvicorn itself times only the idle gap between keep-alive requests)."""
    body_timeout: float = BODY_TIMEOUT
    """Seconds from a request's headers to the last byte of its body; then 408 and close."""
    max_connections: int = 256
    """uvicorn's `limit_concurrency`: with this many connections open (or requests running) new
    requests get 503 at once. A desktop client holds one or two connections (its POSTs and an
    event stream), httpx's default pool at most 100; 256 leaves room for a few such clients and
    keeps a flood of idle sockets far below the usual 1024 file descriptors per process."""
    keep_alive: int = 5
    """Seconds an idle keep-alive connection stays open (uvicorn's default): long enough for a
    client's next call to reuse it, short enough that idle sockets do not pile up."""
    backlog: int = 128
    """Connections the kernel queues before they are accepted."""


@dataclass(frozen=True)
class TLSFiles:
    """A PEM certificate (chain) and its private key, for uvicorn's ssl options."""

    cert: Path
    key: Path


def bind_listener(host: str, port: int, backlog: int = 128) -> socket.socket:
    """Bind the HTTP listener now, so a busy port is a clear error rather than uvicorn exiting."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio disables Nagle (TCP_NODELAY) only on sockets whose `proto`
    # says TCP, and accepted connections inherit it. With 0, a response written in two pieces
    # (headers, body) waits for the client's delayed ACK: ~40 ms per call (docs/benchmarks.md).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise GatewayError(f"cannot listen on {host}:{port}: {exc.strerror}", hint="choose another --port") from None
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def check_listener(host: str, tls: TLSFiles | None, insecure_http: bool) -> None:
    """Off loopback the gateway token and every reply cross a network: TLS, unless the person
    said explicitly that plain http is what they want (e.g. TLS ends at a proxy in front).
    The certificate and key are loaded here once, so a bad file is an error before anything
    starts (uvicorn loads them again for its own context)."""
    if tls is not None:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tls.cert, tls.key)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise GatewayError(
                f"cannot use --tls-cert/--tls-key: {reason}", hint="give a PEM certificate and its private key"
            ) from None
        return
    if insecure_http or is_loopback_host(host):
        return
    raise GatewayError(
        f"refusing to listen on {host} over plain http: the gateway token and every reply would cross the "
        "network unencrypted",
        hint="add --tls-cert FILE --tls-key FILE, or --insecure-http if TLS ends in front of the gateway",
    )


AppWrapper = Callable[[ASGIApp, str | None], ASGIApp]
"""Wraps the gateway's HTTP app (given the listener's token, None when turned off) — e.g. to
mount the OAuth page at /ui in front of it. It must leave POST /mcp to the app it wraps: the fast
lane (front.py) serves those before the ASGI app is called."""


@dataclass(frozen=True)
class _Listener:
    """How `_serve_http` serves: the token (None: turned off), TLS, and the limits."""

    token: str | None = field(repr=False)
    tls: TLSFiles | None
    limits: ListenerLimits


async def _serve_http(
    gateway: Gateway,
    transport: Transport,
    sock: socket.socket,
    stop: anyio.Event,
    wrap: AppWrapper | None,
    listener: _Listener,
) -> None:
    host, port = sock.getsockname()[:2]
    token, limits = listener.token, listener.limits
    inner = http_app(gateway.server, gateway.pool, gateway.store_status)
    security = GatewaySecurityMiddleware(inner, token=token, listen_host=host, listen_port=port)
    # The deadline is outermost, so /ui's forms get it too; Host/Origin/token are screened from
    # the headers before anything reads a body (GatewaySecurityMiddleware never reads it).
    app: ASGIApp = BodyDeadlineMiddleware(security if wrap is None else wrap(security, token), limits.body_timeout)
    protocol: type[HeadDeadlineProtocol] = HeadDeadlineProtocol
    if coalesce_enabled():
        protocol = CoalescingHttpToolsProtocol
        if fast_lane_enabled():
            protocol = fast_lane_protocol(FastLane(security, inner.state.lean_path, body_timeout=limits.body_timeout))
    protocol = with_head_timeout(protocol, limits.head_timeout)
    tls = listener.tls
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,  # uvicorn formats a line per response for a logger we keep at WARNING
        lifespan="on",
        timeout_graceful_shutdown=2,
        http=protocol,
        limit_concurrency=limits.max_connections,
        timeout_keep_alive=limits.keep_alive,
        ssl_certfile=str(tls.cert) if tls is not None else None,
        ssl_keyfile=str(tls.key) if tls is not None else None,
    )
    server = _Uvicorn(config)
    endpoint = "/sse" if transport == "sse" else "/mcp"
    scheme = "https" if tls is not None else "http"
    shown = f"[{host}]" if ":" in host else host
    print(f"bastion: gateway listening on {scheme}://{shown}:{port}{endpoint}", file=sys.stderr, flush=True)
    async with anyio.create_task_group() as tg:

        async def serve() -> None:
            # Shielded: uvicorn is stopped by `should_exit`, so it can close its connections cleanly.
            with anyio.CancelScope(shield=True):
                await server.serve(sockets=[sock])

        tg.start_soon(serve)
        try:
            await stop.wait()
        finally:
            server.should_exit = True


async def run_gateway(
    gateway: Gateway,
    transport: Transport,
    host: str = "127.0.0.1",
    port: int = 8811,
    *,
    wrap: AppWrapper | None = None,
    home: Path | None = None,
    require_token: bool | None = None,
    tls: TLSFiles | None = None,
    insecure_http: bool = False,
    limits: ListenerLimits | None = None,
) -> None:
    """Serve `gateway` on `transport` until cancelled, SIGTERM/SIGINT, or (stdio) end of input.

    The HTTP transports require the gateway token (see `gateway.security`): BASTION_GATEWAY_TOKEN,
    else the one in `home` (default: BASTION_HOME); `require_token` (default: the gateway's
    `require_token` setting) False turns that off, with a warning. Off loopback they need `tls`
    unless `insecure_http`.

    Starts the gateway if it is not started yet, and then always stops it on the way out, so
    no upstream child process outlives this call.
    """
    listener: _Listener | None = None
    sock = None
    if transport != "stdio":
        check_listener(host, tls, insecure_http)
        required = gateway.settings.require_token if require_token is None else require_token
        token = gateway_token(home or bastion_home(), required=required)
        listener = _Listener(token, tls, limits or ListenerLimits())
        sock = bind_listener(host, port, listener.limits.backlog)
    try:
        if gateway.started:
            await _serve(gateway, transport, sock, wrap, listener)
        else:
            await gateway.start(wait=False)
            try:
                await _serve(gateway, transport, sock, wrap, listener)
            finally:
                await gateway.aclose()
    finally:
        if sock is not None:
            sock.close()


async def _serve(
    gateway: Gateway,
    transport: Transport,
    sock: socket.socket | None,
    wrap: AppWrapper | None = None,
    listener: _Listener | None = None,
) -> None:
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    logger.info("received %s; stopping", signal.Signals(signum).name)
                    stop.set()
                    return

        tg.start_soon(watch_signals)
        tg.start_soon(gateway.announce_ready, _say)
        if sock is None or listener is None:
            tg.start_soon(_serve_stdio, gateway, stop)
        else:
            tg.start_soon(_serve_http, gateway, transport, sock, stop, wrap, listener)
        await stop.wait()
        tg.cancel_scope.cancel()


def _say(line: str) -> None:
    print(f"bastion: {line}", file=sys.stderr, flush=True)


class _StdinLines:
    """Lines of a pipe on fd 0, read through the event loop rather than a worker thread, so a
    signal stops the gateway at once instead of waiting for the client's next line."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        os.set_blocking(self._fd, False)
        pending = b""
        while True:
            await anyio.wait_readable(self._fd)
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                yield line.decode("utf-8", "replace") + "\n"
        if pending:
            yield pending.decode("utf-8", "replace")


def _stdin() -> Any:
    """A pipe or socket on stdin is read via the event loop; anything else (a file, a console on
    Windows) goes through the SDK's default thread-backed reader."""
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return None
    if sys.platform != "win32" and (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return _StdinLines(0)
    return None


async def _serve_stdio(gateway: Gateway, stop: anyio.Event) -> None:
    try:
        async with stdio_server(stdin=_stdin()) as (read_stream, write_stream):
            await gateway.server.run(read_stream, write_stream, gateway.server.create_initialization_options())
    finally:
        stop.set()
