"""The upstream half of the lean path: one JSON-RPC request over streamable HTTP, as bytes.

MCP streamable HTTP transport: https://modelcontextprotocol.io/specification/2025-11-25/basic/transports
Server-sent events: https://html.spec.whatwg.org/multipage/server-sent-events.html

`WireChannel` posts `tools/call` and `resources/read` for an upstream whose session the SDK's
`ClientSession` negotiated, on `rawhttp.OriginPool`: the body is one `json.dumps`, the headers are
the ones the session stamped (protocol version, method, name, `Mcp-Param-*`), the session id the
SDK's transport received, the catalog's static headers and the bearer token from memory; the reply
is one `json.loads` (a JSON body, or the SSE stream read until the response event). No pydantic,
no memory-stream hops, no per-request task.

It only handles what a healthy upstream answers. Whatever means "this request was not run"
— 401 (the token needs refreshing), 403 (step-up), 404 (the session is gone), a redirect, a
connection that could not be opened — raises `Resend`, and the caller sends the same request
through the SDK session, whose transport and `UpstreamBearerAuth` deal with it exactly as
before (refresh once, step up, report needs-authorization, drop the session). Other failures are
worded as the SDK's transport words them. A reply past a limit (rawhttp's for heads and bodies,
`MAX_EVENT_SIZE` for one event) raises `LimitExceeded` and its connection is closed.

Server-to-client traffic on a response stream: notifications go to `on_notification` (log
messages are relayed, list changes trigger a re-list); requests are answered as the SDK client
answers them with no callbacks configured (`ping` → empty result; sampling, elicitation and roots
→ "... not supported"; anything else → method not found).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import anyio
import httpx2
from mcp.client.streamable_http import DEFAULT_MAX_SSE_EVENT_SIZE
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR, ErrorData

from bastion.gateway.rawhttp import LimitExceeded, OriginPool, RawHTTPError, Response, amount

logger = logging.getLogger(__name__)

SESSION_HEADER: Final = "mcp-session-id"
MAX_EVENT_SIZE: Final = DEFAULT_MAX_SSE_EVENT_SIZE
"""Bytes of one server-sent event (1 MiB), the limit the SDK's transport has for the same stream."""
CANCEL_GRACE: Final = 2.0
"""How long a 2025 `notifications/cancelled` for an abandoned request may take to post."""
_UNSUPPORTED: Final[Mapping[str, str]] = {
    "sampling/createMessage": "Sampling not supported",
    "elicitation/create": "Elicitation not supported",
    "roots/list": "List roots not supported",
}
"""The SDK client's default answers (mcp.client.session `_default_*_callback`)."""


_FRAMING: Final = frozenset({"host", "content-length", "transfer-encoding", "connection", "expect"})
"""Headers the HTTP client writes itself (or must not send); configured values are left out."""


class Resend(Exception):
    """The upstream did not run this request; send it through the SDK session instead."""


@dataclass(frozen=True)
class Event:
    """One dispatched server-sent event."""

    event: str
    data: str
    id: str | None


class SSEDecoder:
    """Incremental event-stream parser (WHATWG HTML §9.2.6): feed bytes, get dispatched events.

    Lines are split on the bytes as they come (CR and LF never occur inside a UTF-8 sequence), so
    each byte is looked at a fixed number of times however the stream is chunked; a line's text is
    decoded when its event is dispatched. An event larger than `max_size` — its field lines plus a
    line not yet ended, as the SDK's parser counts — raises `LimitExceeded`.
    """

    def __init__(self, max_size: int = MAX_EVENT_SIZE) -> None:
        self._max_size = max_size
        self._start: bytes | None = b""
        """The stream's first bytes while they may still be the start of a byte order mark."""
        self._line: list[bytes] = []
        """The pieces of a line not ended yet (joined once, when it ends)."""
        self._line_size = 0
        self._after_cr = False
        self._size = 0
        self._data: list[bytes] = []
        self._event = b""
        self._last_id: str | None = None
        self._error: LimitExceeded | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        if self._error is not None:
            raise self._error
        if self._start is not None:
            chunk = self._start + chunk
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._start = chunk
                return []
            self._start = None
            chunk = chunk.removeprefix(_BOM)
        if not chunk:
            return []
        if self._after_cr:
            self._after_cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]  # the LF of a CRLF split across chunks
        if b"\r" in chunk:
            self._after_cr = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = chunk.split(b"\n")
        rest = lines.pop()
        events: list[Event] = []
        if lines:
            if self._line:
                self._line.append(lines[0])
                lines[0] = b"".join(self._line)
                self._line = []
                self._line_size = 0
            try:
                for line in lines:
                    event = self._field(line)
                    if event is not None:
                        events.append(event)
            except LimitExceeded as exc:
                if not events:
                    raise
                self._error = exc  # the events before it are delivered first, as they came
                return events
        if rest:
            self._line.append(rest)
            self._line_size += len(rest)
            if self._size + self._line_size > self._max_size:
                self._error = self._too_large()
                if not events:
                    raise self._error
        return events

    def _field(self, line: bytes) -> Event | None:
        if not line:
            self._size = 0
            data, self._data = self._data, []
            event, self._event = self._event, b""
            if not data:
                return None
            return Event(_text(event) or "message", _text(b"\n".join(data)), self._last_id)
        if line.startswith(b":"):
            return None
        self._size += len(line)
        if self._size > self._max_size:
            raise self._too_large()
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value
        elif name == b"id" and b"\0" not in value:
            self._last_id = _text(value)
        return None

    def _too_large(self) -> LimitExceeded:
        return LimitExceeded(f"sent a server-sent event larger than {amount(self._max_size)}")


_BOM: Final = b"\xef\xbb\xbf"


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


BearerFn = Callable[[], Awaitable[str | None]]
NotificationFn = Callable[[dict[str, Any]], None]


class WireChannel:
    """Raw JSON-RPC requests to one streamable-HTTP upstream session."""

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str],
        *,
        bearer: BearerFn | None,
        on_notification: NotificationFn,
        ssl_context: Any = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self._pool = OriginPool(url, ssl_context=ssl_context, connect_timeout=connect_timeout)
        # The client's defaults first, then the transport's own (they win, as in the SDK's transport).
        base = {key.lower(): value for key, value in headers.items() if key.lower() not in _FRAMING}
        base.update({"content-type": "application/json", "accept": "application/json, text/event-stream"})
        if bearer is not None:
            base.pop("authorization", None)  # the token replaces it, as UpstreamBearerAuth's does on the SDK path
        self._headers = list(base.items())
        self._bearer = bearer
        self._on_notification = on_notification
        self._ids = itertools.count(1)
        self.session_id: str | None = None
        """The `Mcp-Session-Id` the SDK's transport got at `initialize` (2025 sessions only)."""
        self.sent = 0
        """Requests answered over this channel (tests and the bench read it)."""

    @property
    def connections_opened(self) -> int:
        return self._pool.connections_opened

    async def observe(self, response: httpx2.Response) -> None:
        """An httpx2 response hook on the SDK session's client: learn the session id it uses."""
        session_id = response.headers.get(SESSION_HEADER)
        if session_id and response.status_code < 400:
            self.session_id = session_id

    def close(self) -> None:
        self._pool.close()

    async def request(self, method: str, params: dict[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
        """POST one request; its result dict. Raises `MCPError` (the upstream's error, or a
        reply the SDK's transport would have refused, in its words), `Resend`, or `RawHTTPError`
        when the connection broke after the request was sent (it may or may not have run)."""
        request_id = f"bastion-{next(self._ids)}"
        body = json.dumps(
            {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}, separators=(",", ":")
        ).encode()
        session_id = self.session_id
        wire_headers = await self._headers_for(headers, session_id)
        try:
            response = await self._pool.request("POST", wire_headers, body)
        except ValueError:
            raise Resend from None  # a header this client will not write; httpx2 decides
        except RawHTTPError as exc:
            if exc.request_unread:
                raise Resend from None
            raise
        except anyio.get_cancelled_exc_class():
            await self._cancel_upstream(request_id, session_id, headers)
            raise
        try:
            result = await self._reply(response, request_id)
        except RawHTTPError:
            response.abort()  # a broken or oversized reply: the rest of it is not waited for
            raise
        except anyio.get_cancelled_exc_class():
            response.abort()
            await self._cancel_upstream(request_id, session_id, headers)
            raise
        finally:
            response.release()
        self.sent += 1
        return result

    async def _reply(self, response: Response, request_id: str) -> dict[str, Any]:
        status = response.status
        if status in (401, 403, 404) or 300 <= status < 400:
            raise Resend  # not run: the SDK's transport and auth flow answer these
        if status == 202:
            raise MCPError(code=INVALID_REQUEST, message="server answered a request with 202 Accepted")
        content_type = response.headers.get("content-type", "").lower()
        if status >= 400:
            if content_type.startswith("application/json"):
                message = _json_object(await response.read())
                if message is not None and isinstance(message.get("error"), dict):
                    raise MCPError.from_error_data(_error_data(message["error"]))
            raise MCPError(code=INTERNAL_ERROR, message="Server returned an error response")
        if content_type.startswith("application/json"):
            raw = await response.read()
            message = _json_object(raw)
            if message is None or message.get("id") != request_id:
                raise MCPError(code=PARSE_ERROR, message="Failed to parse JSON response: not this request's reply")
            return _outcome(message)
        if content_type.startswith("text/event-stream"):
            return await self._event_stream(response)
        raise MCPError(code=INVALID_REQUEST, message=f"Unexpected content type: {content_type}")

    async def _event_stream(self, response: Response) -> dict[str, Any]:
        decoder = SSEDecoder()
        try:
            async for chunk in response.chunks():
                for event in decoder.feed(chunk):
                    if event.event != "message" or not event.data:
                        continue  # priming events (id, no data) and unknown event types
                    message = _json_object(event.data)
                    if message is None:
                        raise MCPError(code=PARSE_ERROR, message="Failed to parse SSE message: not a JSON-RPC object")
                    if "result" in message or "error" in message:
                        return _outcome(message)  # the SDK takes any response on this stream as the reply
                    if "method" in message and "id" in message:
                        await self._answer(message)
                    elif "method" in message:
                        self._on_notification(message)
        except LimitExceeded:
            raise
        except RawHTTPError as exc:
            raise RawHTTPError(f"the response stream broke: {exc}") from None
        raise RawHTTPError("the response stream ended without a reply")

    async def _answer(self, message: dict[str, Any]) -> None:
        """Reply to a server-to-client request as the SDK client does with no callbacks set."""
        method = message.get("method")
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"]}
        if method == "ping":
            reply["result"] = {}
        elif isinstance(method, str) and method in _UNSUPPORTED:
            reply["error"] = {"code": INVALID_REQUEST, "message": _UNSUPPORTED[method]}
        else:
            reply["error"] = {"code": METHOD_NOT_FOUND, "message": "Method not found"}
        await self._post_quietly(reply, {})

    async def _cancel_upstream(self, request_id: str, session_id: str | None, headers: Mapping[str, str]) -> None:
        """An abandoned request: on the 2026 wire, closing its response stream (done by the pool)
        is the cancellation; a 2025 session is told with `notifications/cancelled`."""
        if session_id is None:
            return
        version = {k.lower(): v for k, v in headers.items()}.get("mcp-protocol-version")
        notice = {
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": request_id, "reason": "the gateway's client cancelled the request"},
        }
        with anyio.CancelScope(shield=True), anyio.move_on_after(CANCEL_GRACE):
            await self._post_quietly(notice, {"mcp-protocol-version": version} if version else {})

    async def _headers_for(self, headers: Mapping[str, str], session_id: str | None) -> list[tuple[str, str]]:
        """The client's and transport's headers, the request's own, the session id, the token."""
        wire_headers = [*self._headers, *((key.lower(), value) for key, value in headers.items())]
        if session_id is not None:
            wire_headers.append((SESSION_HEADER, session_id))
        if self._bearer is not None:
            token = await self._bearer()
            if token is not None:
                wire_headers.append(("authorization", f"Bearer {token}"))
        return wire_headers

    async def _post_quietly(self, message: dict[str, Any], headers: Mapping[str, str]) -> None:
        wire_headers = await self._headers_for(headers, self.session_id)
        body = json.dumps(message, separators=(",", ":")).encode()
        try:
            response = await self._pool.request("POST", wire_headers, body)
        except (RawHTTPError, ValueError) as exc:
            logger.debug("could not post %s upstream: %s", message.get("method", "a reply"), exc)
            return
        response.release()


def _json_object(raw: bytes | str) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) and value.get("jsonrpc") == "2.0" else None


def _outcome(message: dict[str, Any]) -> dict[str, Any]:
    error = message.get("error")
    if error is not None:
        if not isinstance(error, dict):
            raise MCPError(code=PARSE_ERROR, message="Failed to parse JSON response: malformed error")
        raise MCPError.from_error_data(_error_data(error))
    result = message.get("result")
    if not isinstance(result, dict):
        raise MCPError(code=PARSE_ERROR, message="Failed to parse JSON response: the result is not an object")
    return result


def _error_data(error: dict[str, Any]) -> ErrorData:
    try:
        return ErrorData.model_validate(error)
    except ValueError:
        return ErrorData(code=INTERNAL_ERROR, message="the upstream sent a malformed JSON-RPC error")
