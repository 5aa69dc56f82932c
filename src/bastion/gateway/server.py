"""The downstream side: one low-level MCP `Server` over the pool, and its transports.

Handlers forward over the upstream's long-lived session (no new session, no re-listing, no
store read per call) and hand back the upstream's result dict as is.

List changes reach downstream clients two ways, one per protocol era:

- 2025 handshake sessions (stdio, streamable HTTP with a session id, legacy SSE): the
  `notifications/initialized` handler of each session stays running for the session's life
  (it runs in the connection's own task group, so it ends with the connection) and sends
  `notifications/{tools,prompts,resources}/list_changed` on the session's standalone channel.
- 2026-07-28 clients: change notifications travel only on `subscriptions/listen` streams; the
  SDK's `ListenHandler` serves them from an `InMemorySubscriptionBus` the notifier publishes to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourcesListChanged,
    ServerEvent,
    ToolsListChanged,
)
from mcp.shared.dispatcher import ProgressFnT
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from bastion.gateway.lean import LeanPath
from bastion.gateway.pool import LIST_ENVELOPE, Changes, Pool
from bastion.gateway.upstream import UpstreamState

logger = logging.getLogger(__name__)

SERVER_NAME = "bastion"
_ALL_CHANGES = NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True)
_SESSION_BACKLOG = 16


@dataclass(frozen=True)
class LogEntry:
    """An upstream's `notifications/message`, to be relayed to handshake-era downstream sessions.

    2026-07-28 deprecates logging (SEP-2577) and makes it a per-request opt-in; those clients get
    no relayed upstream logs."""

    server: str
    params: types.LoggingMessageNotificationParams


_LEVELS: tuple[types.LoggingLevel, ...] = (
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
)


def session_key(session: object) -> int:
    """One downstream connection's identity: the SDK hands each request its own `ServerSession`
    view over one shared connection object (SDK 2.3.0 internals; falls back to the session)."""
    return id(getattr(session, "_connection", session))


class ChangeNotifier:
    """Fans `Changes` out to every connected downstream client, whatever its protocol era, and
    upstream log messages to handshake-era sessions (at or above the level each one set)."""

    def __init__(self) -> None:
        self.bus = InMemorySubscriptionBus()
        self._sessions: dict[object, MemoryObjectSendStream[Changes | LogEntry]] = {}
        self._send, self._receive = anyio.create_memory_object_stream[Changes | LogEntry](256)
        self.log_levels: dict[int, types.LoggingLevel] = {}
        """`logging/setLevel` per downstream connection (see `session_key`)."""

    def publish_log(self, server: str, params: types.LoggingMessageNotificationParams) -> None:
        """Queue an upstream log message for the handshake-era sessions. Non-blocking; dropped
        (not queued without bound) when delivery is backing up."""
        self.publish(LogEntry(server, params))

    def publish(self, changes: Changes | LogEntry) -> None:
        """Queue `changes` for delivery. Synchronous and non-blocking (called from state changes)."""
        try:
            self._send.send_nowait(changes)
        except anyio.WouldBlock:
            logger.warning("change notifications are backing up; dropped one")
        except anyio.ClosedResourceError:
            pass

    async def run(self) -> None:
        """Deliver queued changes until cancelled (runs in the gateway's task group)."""
        async with self._receive:
            async for changes in self._receive:
                for stream in list(self._sessions.values()):
                    try:
                        stream.send_nowait(changes)
                    except anyio.WouldBlock:
                        pass  # that session already has notifications queued; they are level triggers
                    except anyio.ClosedResourceError:
                        pass
                if isinstance(changes, LogEntry):
                    continue
                events: list[ServerEvent] = []
                if changes.tools:
                    events.append(ToolsListChanged())
                if changes.prompts:
                    events.append(PromptsListChanged())
                if changes.resources:
                    events.append(ResourcesListChanged())
                for event in events:
                    await self.bus.publish(event)

    def close(self) -> None:
        self._send.close()
        self._receive.close()  # `run` may never have started (a gateway that was never started)

    @property
    def legacy_sessions(self) -> int:
        return len(self._sessions)

    async def serve_session(self, ctx: ServerRequestContext[Any, Any], params: types.NotificationParams) -> None:
        """The `notifications/initialized` handler: push list changes to this session while it lives."""
        send, receive = anyio.create_memory_object_stream[Changes | LogEntry](_SESSION_BACKLOG)
        key = object()
        self._sessions[key] = send
        try:
            await _push_changes(ctx, receive, self.log_levels)
        finally:
            self._sessions.pop(key, None)
            self.log_levels.pop(session_key(ctx.session), None)
            send.close()
            receive.close()


async def _push_changes(
    ctx: ServerRequestContext[Any, Any],
    receive: MemoryObjectReceiveStream[Changes | LogEntry],
    log_levels: dict[int, types.LoggingLevel],
) -> None:
    session = ctx.session
    async for changes in receive:
        try:
            if isinstance(changes, LogEntry):
                wanted = log_levels.get(session_key(session))
                level = changes.params.level
                if wanted is None or _LEVELS.index(level) >= _LEVELS.index(wanted):
                    name = changes.params.logger
                    # send_notification, not the deprecated send_log_message: this relays what an
                    # upstream said to a handshake-era session, the one era that has logging.
                    await session.send_notification(
                        types.LoggingMessageNotification(
                            params=types.LoggingMessageNotificationParams(
                                level=level,
                                data=changes.params.data,
                                logger=f"{changes.server}/{name}" if name else changes.server,
                            )
                        )
                    )
                continue
            if changes.tools:
                await session.send_tool_list_changed()
            if changes.prompts:
                await session.send_prompt_list_changed()
            if changes.resources:
                await session.send_resource_list_changed()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return


class GatewayServer(Server[Any]):
    """The low-level `Server`, advertising `listChanged` on every transport's handshake."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or _ALL_CHANGES, experimental_capabilities, extensions
        )


def _progress(ctx: ServerRequestContext[Any, Any]) -> ProgressFnT | None:
    """Relay upstream progress only when the downstream asked for it."""
    meta = ctx.meta
    if meta is None or meta.get("progressToken", meta.get("progress_token")) is None:
        return None
    return ctx.session.report_progress


def build_server(pool: Pool, notifier: ChangeNotifier) -> GatewayServer:
    """The downstream MCP server: every handler reads `pool.routes` and forwards."""

    async def list_tools(ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams) -> dict[str, Any]:
        return {**LIST_ENVELOPE, "tools": list((await pool.settled_routes()).tools_wire)}

    async def call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> dict[str, Any]:
        return await pool.call_tool(params, _progress(ctx))

    async def list_prompts(ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams) -> dict[str, Any]:
        return {**LIST_ENVELOPE, "prompts": list((await pool.settled_routes()).prompts_wire)}

    async def get_prompt(ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams) -> dict[str, Any]:
        return await pool.get_prompt(params, _progress(ctx))

    async def list_resources(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams
    ) -> dict[str, Any]:
        return {**LIST_ENVELOPE, "resources": list((await pool.settled_routes()).resources_wire)}

    async def list_resource_templates(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams
    ) -> dict[str, Any]:
        return {**LIST_ENVELOPE, "resourceTemplates": list((await pool.settled_routes()).templates_wire)}

    async def read_resource(
        ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> dict[str, Any]:
        return await pool.read_resource(params, _progress(ctx))

    async def complete(ctx: ServerRequestContext[Any, Any], params: types.CompleteRequestParams) -> dict[str, Any]:
        return await pool.complete(params)

    async def set_level(ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams) -> dict[str, Any]:
        # Handshake-era clients only (logging is deprecated as of 2026-07-28): the minimum level of
        # the upstream log messages relayed to this session.
        notifier.log_levels[session_key(ctx.session)] = params.level
        return {}

    server = GatewayServer(
        SERVER_NAME,
        version="0.1.0",
        instructions=(
            "Bastion gateway: tools are named <server>__<tool>."
            if pool.naming == "prefixed"
            else "Bastion gateway: tools keep their servers' own names; a name two servers share is <server>__<tool>."
        ),
        on_subscriptions_listen=ListenHandler(notifier.bus),
    )
    # Per-message OpenTelemetry spans cost CPU on the hot path and nothing is exported here.
    server.middleware = []
    server.add_request_handler("tools/list", types.PaginatedRequestParams, list_tools)
    server.add_request_handler("tools/call", types.CallToolRequestParams, call_tool)
    server.add_request_handler("prompts/list", types.PaginatedRequestParams, list_prompts)
    server.add_request_handler("prompts/get", types.GetPromptRequestParams, get_prompt)
    server.add_request_handler("resources/list", types.PaginatedRequestParams, list_resources)
    server.add_request_handler("resources/templates/list", types.PaginatedRequestParams, list_resource_templates)
    server.add_request_handler("resources/read", types.ReadResourceRequestParams, read_resource)
    server.add_request_handler("completion/complete", types.CompleteRequestParams, complete)
    server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)
    server.add_notification_handler("notifications/initialized", types.NotificationParams, notifier.serve_session)
    return server


StoreStatus = Callable[[], dict[str, Any]]
"""The credential store's state for /health, e.g. `{"backend": "redis", "degraded": False}`."""


def health_payload(pool: Pool, store_status: StoreStatus | None = None) -> dict[str, Any]:
    statuses = [pool.upstreams[name].status() for name in sorted(pool.upstreams)]
    ready = sum(1 for status in statuses if status.state is UpstreamState.READY)
    payload = {
        "status": "ok",
        "upstreams_ready": ready,
        "upstreams_total": len(statuses),
        "tools": len(pool.routes.tools),
        "collisions": list(pool.routes.collisions),
        "upstreams": [status.to_json() for status in statuses],
    }
    if store_status is not None:
        # A degraded store does not make the gateway unhealthy: it serves the tokens it holds.
        payload["store"] = store_status()
    return payload


class _SseEndpoint:
    """GET /sse: one legacy SSE connection served by the MCP server until the client leaves."""

    def __init__(self, server: GatewayServer, transport: SseServerTransport) -> None:
        self._server = server
        self._transport = transport

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with self._transport.connect_sse(scope, receive, send) as (read_stream, write_stream):
            await self._server.run(read_stream, write_stream, self._server.create_initialization_options())


def http_app(
    server: GatewayServer, pool: Pool, store_status: StoreStatus | None = None, *, lean: bool | None = None
) -> Starlette:
    """Streamable HTTP at /mcp, legacy SSE at /sse (+ /messages/), and GET /health.

    Origin/Host/token checks are `GatewaySecurityMiddleware`'s job, wrapped around this app.
    `/mcp` goes through `LeanPath` (lean.py), on unless `lean=False` or `BASTION_LEAN_PATH=0`.
    """
    manager = StreamableHTTPSessionManager(app=server)
    sse = SseServerTransport("/messages/")

    async def health(request: Request) -> Response:
        return JSONResponse(health_payload(pool, store_status))

    lean_path = LeanPath(StreamableHTTPASGIApp(manager), manager, server, pool, enabled=lean)
    routes = [
        Route("/mcp", endpoint=lean_path),
        Route("/sse", endpoint=_SseEndpoint(server, sse), methods=["GET"]),
        Mount("/messages/", app=sse.handle_post_message),
        Route("/health", endpoint=health, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lambda app: manager.run())
    app.state.lean_path = lean_path  # the fast lane (front.py) serves POST /mcp with it
    return app
