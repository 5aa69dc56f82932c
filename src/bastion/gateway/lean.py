"""The lean path: `tools/call`, `tools/list` and `resources/read` on streamable HTTP without the
SDK's per-message machinery (DESIGN.md, "The hot path").

`LeanPath` is an ASGI layer in front of the SDK's streamable-HTTP app (`gateway run` reaches its
`serve` first from the fast lane, front.py, without the ASGI stack). For a POST it reads the
body once and serves the request itself only when it can answer exactly as the SDK would:

- 2026-07-28 (an `MCP-Protocol-Version` header outside the handshake versions): the SDK's own
  checks run first — Content-Type, Accept, one JSON-RPC request object, no duplicated routing
  header, `classify_inbound_request` (the `_meta` envelope against `MCP-Protocol-Version`,
  `Mcp-Method`, `Mcp-Name`), the `Mcp-Param-*` headers against the tool's input schema — and any
  request that fails one goes to the SDK, which rejects it in its own words and status.
- 2025 handshake sessions: the `Mcp-Session-Id` must be a live session of the SDK's manager whose
  `initialize` passed through here (so its negotiated version is known); the reply is the single
  `event: message` SSE stream the SDK sends, with the same headers.

Either way the params are validated by the SDK's per-version surface, the request is forwarded
with `Upstream.send_raw` over the upstream's held session, and the result is sieved and stamped
by the same functions the SDK's `ServerRunner` uses. `tools/list` is served from result bytes
cached per routing snapshot and protocol version, so 5,000 tools cost a copy.

Everything else — initialize, notifications, GET streams, DELETE, batches, requests asking for
progress, unknown sessions, cursors, unusual params, other methods — goes to the SDK unchanged
(the body is replayed). `BASTION_LEAN_PATH=0` turns the layer off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, cast

import anyio
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.dispatcher import coerce_request_id
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    X_MCP_HEADER_KEY,
    InboundLadderRejection,
    classify_inbound_request,
    find_duplicated_routing_header,
    validate_mcp_param_headers,
)
from mcp_types import (
    CORE_RESULT_TYPES,
    INTERNAL_ERROR,
    SERVER_INFO_META_KEY,
    ErrorData,
)
from mcp_types import methods as _methods
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION, MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bastion.gateway.pool import LIST_ENVELOPE, Pool, Routes
from bastion.gateway.switches import switched_on

logger = logging.getLogger(__name__)

LEAN_ENV: Final = "BASTION_LEAN_PATH"
LEAN_METHODS: Final = frozenset({"tools/call", "tools/list", "resources/read"})
REQUEST_CANCELLED: Final = -32800
"""What the SDK's 2025 transport answers a cancelled request with (`streamable_http.REQUEST_CANCELLED`)."""
SSE_PING_INTERVAL: Final = 15.0
"""Both SDK transports keep a silent response alive with an SSE comment this often."""
GUARD_AFTER: Final = 0.1
"""A lean call still running after this long gets its guard task (client-left watch, pings)."""

_ALLOWED_KEYS: Final[Mapping[str, frozenset[str]]] = {
    "tools/call": frozenset({"name", "arguments", "_meta"}),
    "tools/list": frozenset({"_meta"}),
    "resources/read": frozenset({"uri", "_meta"}),
}
"""Params served lean; anything else (cursor, task, input responses, request state) goes to the SDK."""
_ENVELOPE_KEYS: Final = frozenset({"jsonrpc", "id", "method", "params"})
_LEGACY_SSE_HEADERS: Final = [
    (b"cache-control", b"no-cache, no-transform"),
    (b"connection", b"keep-alive"),
    (b"content-type", b"text/event-stream"),
]
_MODERN_SSE_HEADERS: Final = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
]
_JSON_HEADER: Final = (b"content-type", b"application/json")


def lean_enabled() -> bool:
    """The switch: on unless `BASTION_LEAN_PATH=0` (benchmarks compare both in one run)."""
    return switched_on(LEAN_ENV)


def accepts(accept: str) -> tuple[bool, bool]:
    """(json, sse) for an Accept value, parsed as `mcp.server.streamable_http.check_accept_headers` does."""
    types_ = [media.strip().split(";")[0].strip().lower() for media in accept.split(",")]
    wildcard = "*/*" in types_
    has_json = wildcard or any(t in ("application/json", "application/*") for t in types_)
    has_sse = wildcard or any(t in ("text/event-stream", "text/*") for t in types_)
    return has_json, has_sse


def _json_content_type(value: str) -> bool:
    """Both SDK checks: the transport-security prefix test and the transport's own part test."""
    if not value.lower().startswith("application/json"):
        return False
    return any(part.strip() == "application/json" for part in value.split(";")[0].split(","))


def _header_dict(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Header names to values, repeated headers joined with commas (as the SDK reads them)."""
    headers: dict[str, str] = {}
    for key, value in raw:
        name = key.decode("latin-1")
        if name in headers:
            headers[name] += "," + value.decode("latin-1")
        else:
            headers[name] = value.decode("latin-1")
    return headers


def _valid_id(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


class _Fallback(Exception):
    """This request is the SDK's to answer."""


class LeanPath:
    """ASGI layer serving the hottest requests directly; everything else reaches `app` unchanged."""

    def __init__(
        self,
        app: ASGIApp,
        manager: StreamableHTTPSessionManager,
        server: Server[Any],
        pool: Pool,
        *,
        enabled: bool | None = None,
    ) -> None:
        self.app = app
        self.enabled = lean_enabled() if enabled is None else enabled
        self._manager = manager
        self._server = server
        self._pool = pool
        self._max_body = manager.max_request_body_size
        self._versions: dict[str, str] = {}
        """Session id -> the version its `initialize` negotiated (as `ServerRunner` negotiates it)."""
        self._inflight: dict[tuple[str, Any], anyio.CancelScope] = {}
        """(session id, request id) -> the scope of a lean request, for `notifications/cancelled`."""
        self._cache_routes: Routes | None = None
        self._list_bytes: dict[str, bytes] = {}
        self._schemas: dict[str, Any] | None = None
        self._stamp: dict[str, Any] | None = None
        self.served = 0
        """Requests answered here (tests and the bench read it)."""

    # -- entry ------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled or scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = _header_dict(scope["headers"])
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self._max_body):
            await self.app(scope, receive, send)
            return
        body, replay = await self._read_body(receive)
        # Here an `initialize` may pass through to the SDK, to learn the version its session negotiates.
        if body is None or not await self._serve(scope, headers, body, replay, send, handshake=True):
            await self.app(scope, replay, send)

    @property
    def max_body(self) -> int:
        """The SDK's request-body limit: a larger body is the SDK's to refuse."""
        return self._max_body

    async def serve(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> bool:
        """Answer a POST whose whole `body` has been read, if it is one served here; False when
        nothing was sent and the request is the SDK's (the caller passes it on, body and all).
        The fast lane (front.py) calls this; an `initialize` is left to the ASGI path, where it
        reaches this layer again."""
        if not self.enabled:
            return False
        return await self._serve(scope, _header_dict(scope["headers"]), body, receive, send, handshake=False)

    async def _serve(
        self, scope: Scope, headers: dict[str, str], body: bytes, receive: Receive, send: Send, *, handshake: bool
    ) -> bool:
        try:
            return await self._dispatch(scope, headers, body, receive, send, handshake)
        except _Fallback:
            return False

    async def _read_body(self, receive: Receive) -> tuple[bytes | None, Receive]:
        """The whole body (None when it exceeds the SDK's limit or the client left) and a `receive`
        that replays what was read, then continues with the client's."""
        chunks: list[bytes] = []
        size = 0
        complete = False
        extra: list[Message] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                extra.append(message)  # the client left mid-body
                break
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if not message.get("more_body", False):
                complete = True
                break
            if size > self._max_body:
                break
        body = b"".join(chunks)
        pending: list[Message] = [{"type": "http.request", "body": body, "more_body": not complete}, *extra]

        async def replay() -> Message:
            if pending:
                return pending.pop(0)
            return await receive()

        return (body if complete else None), replay

    async def _dispatch(
        self, scope: Scope, headers: dict[str, str], body: bytes, receive: Receive, send: Send, handshake: bool
    ) -> bool:
        if not _json_content_type(headers.get("content-type", "")):
            return False
        has_json, has_sse = accepts(headers.get("accept", ""))
        if not (has_json and has_sse):
            return False  # the SDK answers 406 in both eras (it is configured for SSE replies)
        try:
            decoded = json.loads(body)
        except (ValueError, RecursionError):
            return False
        if not isinstance(decoded, dict) or not decoded.keys() <= _ENVELOPE_KEYS or decoded.get("jsonrpc") != "2.0":
            return False
        message = cast(dict[str, Any], decoded)
        method = message.get("method")
        version_header = headers.get("mcp-protocol-version")
        if version_header is not None and version_header not in HANDSHAKE_PROTOCOL_VERSIONS:
            if "id" not in message or method not in LEAN_METHODS:
                return False
            return await self._modern(scope, headers, message, receive, send)
        session_id = headers.get(MCP_SESSION_ID_HEADER)
        if session_id is None:
            if handshake and method == "initialize" and "id" in message:
                await self.app(scope, receive, self._recording_session(message, send))
                return True
            return False
        if "id" not in message:
            if method == "notifications/cancelled":
                self._cancel(session_id, message.get("params"))
            return False
        if method not in LEAN_METHODS:
            return False
        return await self._legacy(scope, session_id, message, receive, send)

    # -- 2025 handshake sessions --------------------------------------------------------------

    def _recording_session(self, message: dict[str, Any], send: Send) -> Send:
        """Pass an `initialize` through, remembering the version its session negotiates."""
        params = message.get("params")
        requested = params.get("protocolVersion") if isinstance(params, dict) else None
        negotiated = requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
        assert isinstance(negotiated, str)

        async def recording_send(out: Message) -> None:
            if out["type"] == "http.response.start" and out["status"] < 400:
                for key, value in out.get("headers", ()):
                    if key.lower() == b"mcp-session-id":
                        self._remember(value.decode("latin-1"), negotiated)
            await send(out)

        return recording_send

    def _remember(self, session_id: str, version: str) -> None:
        known = self._manager._server_instances
        if len(self._versions) > 2 * len(known) + 64:
            self._versions = {sid: v for sid, v in self._versions.items() if sid in known}
        self._versions[session_id] = version

    def _cancel(self, session_id: str, params: object) -> None:
        request_id = params.get("requestId") if isinstance(params, dict) else None
        if _valid_id(request_id):
            scope = self._inflight.get((session_id, coerce_request_id(request_id)))  # type: ignore[arg-type]
            if scope is not None:
                scope.cancel()

    async def _legacy(
        self, scope: Scope, session_id: str, message: dict[str, Any], receive: Receive, send: Send
    ) -> bool:
        manager = self._manager
        transport = manager._server_instances.get(session_id)
        version = self._versions.get(session_id)
        if transport is None:
            self._versions.pop(session_id, None)
            return False
        if version is None or transport.is_terminated or scope.get("user") is not None:
            return False
        if session_id in manager._session_owners:
            return False
        idle = transport.idle_scope
        if idle is not None and idle.cancel_called:
            return False
        request_id = message.get("id")
        if not _valid_id(request_id):
            return False
        method = cast(str, message["method"])
        params = self._lean_params(method, version, message.get("params"))
        call = self._prepare(method, version, params)

        key = (session_id, coerce_request_id(cast(str | int, request_id)))
        if key in self._inflight:
            return False
        headers = [*_LEGACY_SSE_HEADERS, (b"mcp-session-id", session_id.encode()), (b"x-accel-buffering", b"no")]
        self.served += 1
        with _InFlight(transport):
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            outcome = await self._run(call, receive, key, ping=b": ping\r\n\r\n", send=send, sse_committed=True)
            if outcome is None:
                # Cancelled by `notifications/cancelled`: the 2025 wire still ends the stream with a reply.
                outcome = ErrorData(code=REQUEST_CANCELLED, message="Request cancelled")
            data, _ = _encode(request_id, outcome, legacy=True)
            await _send_quietly(send, {"type": "http.response.body", "body": _sse_event(data), "more_body": False})
        return True

    # -- 2026-07-28 single exchanges ------------------------------------------------------------

    async def _modern(
        self, scope: Scope, headers: dict[str, str], message: dict[str, Any], receive: Receive, send: Send
    ) -> bool:
        request_id = message.get("id")
        if not _valid_id(request_id):
            return False
        if find_duplicated_routing_header(
            (key.decode("latin-1"), value.decode("latin-1")) for key, value in scope["headers"]
        ):
            return False
        verdict = classify_inbound_request(message, headers=headers)
        if isinstance(verdict, InboundLadderRejection):
            return False  # the SDK rejects it with exactly this ladder, in its own words
        version = verdict.protocol_version
        method = cast(str, message["method"])
        params = self._lean_params(method, version, message.get("params"))
        if method == "tools/call":
            self._check_param_headers(scope, headers, params)
        call = self._prepare(method, version, params)
        self.served += 1
        outcome = await self._run(call, receive, None, ping=b": ping\r\n\r\n", send=send, sse_committed=False)
        if outcome is None:  # the client left; nothing to answer
            return True
        payload, code = _encode(request_id, outcome, legacy=False)
        if isinstance(outcome, _Committed):
            await _send_quietly(send, {"type": "http.response.body", "body": _sse_event(payload), "more_body": False})
            return True
        status = 200 if code is None else ERROR_CODE_HTTP_STATUS.get(code, 200)
        start = {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(payload)).encode()), _JSON_HEADER],
        }
        await _send_quietly(send, start)
        await _send_quietly(send, {"type": "http.response.body", "body": payload, "more_body": False})
        return True

    def _check_param_headers(self, scope: Scope, headers: dict[str, str], params: dict[str, Any]) -> None:
        """`Mcp-Param-*` headers against the called tool's input schema, as the SDK checks them."""
        arguments = params.get("arguments") or {}
        if not arguments and not any(name.startswith("mcp-param-") for name in headers):
            return
        schema = self._input_schemas().get(params["name"])
        if schema is None:
            return
        if validate_mcp_param_headers(schema, arguments, Headers(raw=scope["headers"])) is not None:
            raise _Fallback

    # -- shared --------------------------------------------------------------------------------

    def _lean_params(self, method: str, version: str, raw: object) -> dict[str, Any]:
        """The params if this request is one the lean path serves exactly as the SDK would."""
        if self._server.cache_hints.get(method) is not None:
            raise _Fallback
        params: dict[str, Any] = {} if raw is None else raw if isinstance(raw, dict) else {"": None}
        if not params.keys() <= _ALLOWED_KEYS[method]:
            raise _Fallback
        meta = params.get("_meta")
        if meta is not None and (not isinstance(meta, dict) or "progressToken" in meta or "progress_token" in meta):
            raise _Fallback  # progress is relayed by the generic path
        try:
            _methods.validate_client_request(method, version, params)
        except (KeyError, ValueError):  # ValidationError is a ValueError
            raise _Fallback from None
        return params

    def _prepare(
        self, method: str, version: str, params: dict[str, Any]
    ) -> Callable[[], Awaitable[bytes | dict[str, Any]]]:
        if method == "tools/list":
            if not self._pool.startup.open:
                raise _Fallback  # the SDK path's handler waits for the upstreams still starting
            listing = self._tools_list(version)
            if listing is None:
                raise _Fallback

            async def cached() -> bytes:
                return listing

            return cached
        pool = self._pool
        if method == "tools/call":
            name = cast(str, params["name"])
            arguments = params.get("arguments")

            async def forward() -> bytes | dict[str, Any]:
                return self._shape(method, version, await pool.call_tool_raw(name, arguments))

            return forward
        uri = cast(str, params["uri"])

        async def read() -> bytes | dict[str, Any]:
            return self._shape(method, version, await pool.read_resource_raw(uri))

        return read

    def _shape(self, method: str, version: str, result: dict[str, Any]) -> dict[str, Any]:
        """`ServerRunner._serialize` for a handler's dict result: sieve by the version's surface,
        `resultType` on the 2026 wire, the gateway's `serverInfo` stamp."""
        result_type = result.get("resultType")
        modern = version in MODERN_PROTOCOL_VERSIONS
        if not modern or not isinstance(result_type, str) or result_type in CORE_RESULT_TYPES:
            try:
                result = _methods.serialize_server_result(method, version, result)
            except ValidationError:
                logger.exception("handler for %r returned an invalid result", method)
                raise MCPError(code=INTERNAL_ERROR, message="Handler returned an invalid result") from None
        if modern:
            if result.get("resultType") is None:
                result["resultType"] = "complete"
            meta = result.get("_meta")
            if meta is None:
                result["_meta"] = {SERVER_INFO_META_KEY: self._server_info()}
            elif isinstance(meta, dict) and meta.get(SERVER_INFO_META_KEY) is None:
                result["_meta"] = {**meta, SERVER_INFO_META_KEY: self._server_info()}
        return result

    def _server_info(self) -> dict[str, Any]:
        """The `serverInfo` stamp, dumped once: `Server.server_info_stamp` deep-copies it on every
        access so that callers may mutate it; the result here is serialized at once and never
        mutated, so one copy serves every reply."""
        if self._stamp is None:
            self._stamp = self._server.server_info_stamp
        return self._stamp

    def _snapshot(self) -> None:
        routes = self._pool.routes
        if routes is not self._cache_routes:
            self._cache_routes = routes
            self._list_bytes = {}
            self._schemas = None

    def _tools_list(self, version: str) -> bytes | None:
        """The `tools/list` result as JSON bytes, built once per routing snapshot and version."""
        self._snapshot()
        cached = self._list_bytes.get(version)
        if cached is None:
            assert self._cache_routes is not None
            result = {**LIST_ENVELOPE, "tools": list(self._cache_routes.tools_wire)}
            try:
                shaped = self._shape("tools/list", version, result)
            except MCPError:
                return None
            cached = self._list_bytes[version] = json.dumps(
                shaped, separators=(",", ":"), ensure_ascii=version in MODERN_PROTOCOL_VERSIONS
            ).encode()
        return cached

    def _input_schemas(self) -> dict[str, Any]:
        self._snapshot()
        if self._schemas is None:
            assert self._cache_routes is not None
            # Only schemas that annotate a parameter with `x-mcp-header` can fail the check; the
            # rest are left out so their calls skip it (the SDK walks every schema on every call).
            self._schemas = {
                tool["name"]: schema
                for tool in self._cache_routes.tools_wire
                if X_MCP_HEADER_KEY in json.dumps(schema := tool.get("inputSchema"))
            }
        return self._schemas

    async def _run(
        self,
        call: Callable[[], Awaitable[bytes | dict[str, Any]]],
        receive: Receive,
        key: tuple[str, Any] | None,
        *,
        ping: bytes,
        send: Send,
        sse_committed: bool,
    ) -> _Outcome | _Committed | None:
        """Run `call` until it finishes, the client leaves (None) or, for a 2025 session,
        `notifications/cancelled` names it (None). A silent call past `SSE_PING_INTERVAL` gets SSE
        comments; on the 2026 wire that first commits `text/event-stream` as the SDK does.

        The call runs in this task, in a cancel scope. A guard task that watches for the client
        leaving and sends the pings is started only when the call is still running after
        `GUARD_AFTER` — most calls finish sooner, and a task per request was the largest single
        cost of this layer (docs/benchmarks.md). A client that leaves is noticed within that delay.
        """
        state = _Stream(sse_committed)
        outcome: _Outcome | None = None
        finished = False
        scope = anyio.CancelScope()
        loop = asyncio.get_running_loop()
        guard: list[asyncio.Task[None]] = []

        def start_guard() -> None:
            guard.append(loop.create_task(_guard(receive, send, ping, state, scope, SSE_PING_INTERVAL - GUARD_AFTER)))

        timer = loop.call_later(GUARD_AFTER, start_guard)
        if key is not None:
            self._inflight[key] = scope
        try:
            with scope:
                try:
                    outcome = await call()
                except MCPError as exc:
                    outcome = exc.error
                except Exception as exc:  # the boundary the SDK's dispatchers draw around a handler
                    logger.exception("lean request handler raised")
                    outcome = exc
                finished = True
        finally:
            timer.cancel()
            for task in guard:
                task.cancel()  # it cannot send again: it is resumed with CancelledError, if at all
            if key is not None:
                self._inflight.pop(key, None)
        if not finished or outcome is None:
            return None
        if state.committed and not sse_committed:
            return _Committed(outcome)
        return outcome


class _Stream:
    """Whether the response has committed to SSE (the guard's pings can commit a 2026 reply)."""

    def __init__(self, committed: bool) -> None:
        self.committed = committed


async def _guard(
    receive: Receive, send: Send, ping: bytes, state: _Stream, scope: anyio.CancelScope, first_ping: float
) -> None:
    """Cancel `scope` when the client leaves; keep a silent response alive with SSE comments."""
    wait = first_ping
    while True:
        with anyio.move_on_after(wait):
            while (await receive())["type"] != "http.disconnect":
                pass
            scope.cancel()
            return
        wait = SSE_PING_INTERVAL
        if not state.committed:
            await send({"type": "http.response.start", "status": 200, "headers": _MODERN_SSE_HEADERS})
            state.committed = True
        await send({"type": "http.response.body", "body": ping, "more_body": True})


_Outcome = bytes | dict[str, Any] | ErrorData | Exception


class _Committed:
    """A 2026 outcome whose response already committed to SSE."""

    def __init__(self, value: _Outcome) -> None:
        self.value = value


def _encode(request_id: Any, outcome: _Outcome | _Committed, *, legacy: bool) -> tuple[bytes, int | None]:
    """The JSON-RPC reply as bytes, and its error code if it is an error. A cached `tools/list`
    result (bytes) is spliced in as is."""
    if isinstance(outcome, _Committed):
        outcome = outcome.value
    ident = json.dumps(request_id, ensure_ascii=not legacy)
    if isinstance(outcome, bytes):
        return b'{"jsonrpc":"2.0","id":' + ident.encode() + b',"result":' + outcome + b"}", None
    if isinstance(outcome, dict):
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "result": outcome}
        return json.dumps(reply, separators=(",", ":"), ensure_ascii=not legacy).encode(), None
    if isinstance(outcome, ErrorData):
        error = outcome.model_dump(by_alias=True, mode="json", exclude_none=True)
    elif legacy:
        error = {"code": 0, "message": str(outcome)}  # JSONRPCDispatcher's catch-all
    else:
        error = {"code": INTERNAL_ERROR, "message": "Internal server error"}  # the modern entry's
    reply = {"jsonrpc": "2.0", "id": request_id, "error": error}
    return json.dumps(reply, separators=(",", ":"), ensure_ascii=not legacy).encode(), cast(int, error["code"])


def _sse_event(data: bytes) -> bytes:
    return b"event: message\r\ndata: " + data + b"\r\n\r\n"


class _InFlight:
    """What the SDK's transport does around every request it serves: a request in flight holds
    the session open against its idle timeout, and the countdown restarts when the last one ends."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def __enter__(self) -> None:
        transport = self._transport
        if transport.idle_scope is not None and transport._idle_timeout is not None:
            transport._requests_in_flight += 1
            transport.idle_scope.deadline = math.inf

    def __exit__(self, *exc: object) -> None:
        transport = self._transport
        if transport.idle_scope is not None and transport._idle_timeout is not None:
            transport._requests_in_flight -= 1
            if not transport._requests_in_flight:
                transport.idle_scope.deadline = anyio.current_time() + transport._idle_timeout


async def _send_quietly(send: Send, message: Message) -> None:
    try:
        await send(message)
    except OSError:
        logger.debug("client left before the reply was written")
