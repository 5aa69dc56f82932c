"""The fast lane: the lean path's POSTs answered from uvicorn's protocol, without the ASGI stack.

A `tools/call` through the gateway used to cross, on its way in and out, uvicorn's
`RequestResponseCycle` (its `send` re-checks every header and formats an access-log line that
nobody sees), the proxy-headers middleware, the OAuth page's mount, the security middleware,
Starlette's error, exception and routing layers, and the lean path's own body reader — each an
`async` wrapper around `receive` and `send`: in an in-process measurement of the front alone, a
fifth of its time per request (docs/benchmarks.md, "Third round").

`FastLaneProtocol` is uvicorn's httptools protocol (with coalesced writes) that takes a POST to
the MCP endpoint aside before the ASGI app would start: it screens the headers with the security
middleware's own checks, then waits for the body (at most `BODY_TIMEOUT` seconds, else 408) in
the request's own cycle, and offers the request to `LeanPath.serve`, whose reply is written
straight to the connection by `DirectResponse` (the bytes uvicorn would write). Anything the
lean path does not serve — a refused Origin/Host/token (refused with its body unread),
`initialize`, notifications, batches, other methods, an oversize body, a client gone before the
body arrived — runs through the whole ASGI app in the same cycle, with the body replayed by
uvicorn's own `receive`, so it is answered exactly as before. `BASTION_FAST_LANE=0` turns the lane
off (so does `BASTION_COALESCE=0`, which gives uvicorn's own protocol back).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar, Final, cast

from starlette.types import Message, Receive, Scope
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

from bastion.gateway.coalesce import CoalescingHttpToolsProtocol, CoalescingTransport
from bastion.gateway.lean import LeanPath
from bastion.gateway.security import BODY_TIMEOUT, BODY_TIMEOUT_MESSAGE, GatewaySecurityMiddleware
from bastion.gateway.switches import switched_on

logger = logging.getLogger(__name__)

FAST_LANE_ENV: Final = "BASTION_FAST_LANE"
MCP_PATH: Final = "/mcp"


def fast_lane_enabled() -> bool:
    """On unless `BASTION_FAST_LANE=0` (to measure it with `python -m bench.ab`)."""
    return switched_on(FAST_LANE_ENV)


class FastLane:
    """What the protocol needs to serve a lean POST: the listener's security checks, the body
    deadline, and the lean path."""

    def __init__(
        self,
        security: GatewaySecurityMiddleware,
        lean: LeanPath,
        path: str = MCP_PATH,
        body_timeout: float = BODY_TIMEOUT,
    ) -> None:
        self.security = security
        self.lean = lean
        self.path = path
        self.body_timeout = body_timeout
        self.served = 0
        """Requests answered in the lane (tests read it)."""

    def admit(self, cycle: RequestResponseCycle) -> Scope | None:
        """The request's scope without its `Authorization` header, if its headers pass the
        middleware's own checks (Host, Origin, token); None for a request it would refuse. Called
        before any byte of the body is read."""
        refusal, kept = self.security.screen(cycle.scope["headers"])
        if refusal is not None:
            return None  # the middleware refuses it, in its own words, on the ASGI path
        scope = cast(Scope, cycle.scope)
        return scope if kept is None else {**scope, "headers": kept}

    async def serve(self, scope: Scope, cycle: RequestResponseCycle, body: bytes, response: DirectResponse) -> bool:
        if not await self.lean.serve(scope, body, cast(Receive, cycle.receive), response.send):
            return False
        self.served += 1
        return True


def fast_lane_protocol(lane: FastLane) -> type[FastLaneProtocol]:
    """The protocol class for `uvicorn.Config(http=...)`, bound to `lane`."""
    return type("BoundFastLaneProtocol", (FastLaneProtocol,), {"lane": lane})


class FastLaneProtocol(CoalescingHttpToolsProtocol):
    """uvicorn's httptools protocol with coalesced writes; POSTs to the lane's path go through
    `lane` first (see the module docstring)."""

    lane: ClassVar[FastLane | None] = None

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # uvicorn calls this when a request's headers are complete (or a pipelined request's turn
        # comes): the one place to take a request aside before its ASGI task starts. `app` is not
        # ours when uvicorn answers 503 itself (over `limit_concurrency`): that answer stands.
        lane = self.lane
        scope = cycle.scope
        if (
            lane is None
            or app is not self.app
            or scope["method"] != "POST"
            or scope["path"] != lane.path
            or cycle.waiting_for_100_continue
        ):
            super()._start_asgi_task(cycle, app)
            return
        task = self.loop.create_task(self._serve(lane, cycle, app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _serve(self, lane: FastLane, cycle: RequestResponseCycle, app: Any) -> None:
        # The headers first: a request the security checks refuse goes to the ASGI app, which
        # refuses it without reading its body.
        scope = lane.admit(cycle)
        if scope is not None:
            body = await _whole_body(cycle, lane.lean.max_body, lane.body_timeout)
            # The protocol's transport is the coalescing wrapper (`connection_made`).
            response = DirectResponse(cycle, cast(CoalescingTransport, self.transport))
            if body is _TIMED_OUT:
                response.reject(408, BODY_TIMEOUT_MESSAGE)
                return
            if isinstance(body, bytes):
                try:
                    if await lane.serve(scope, cycle, body, response):
                        response.check_complete()
                        return
                except Exception:
                    logger.exception("fast lane: request handler raised")
                    response.fail()
                    return
                assert not response.started, "LeanPath.serve sends nothing when it declines"
        # Not the lane's: the whole ASGI app runs in this cycle. uvicorn's `receive` hands it the
        # body read so far (still in `cycle.body`) once the event is set.
        cycle.message_event.set()
        await cycle.run_asgi(app)


class _TimedOut:
    """The body did not arrive in time."""


_TIMED_OUT: Final = _TimedOut()


async def _whole_body(cycle: RequestResponseCycle, limit: int, timeout: float) -> bytes | _TimedOut | None:
    """The request body once complete, as uvicorn's `receive` would deliver it, left in
    `cycle.body` for a fallback; None if the client left first or it exceeds `limit`;
    `_TIMED_OUT` if it is not complete `timeout` seconds from now. (A body that came with its
    headers, the usual case, arms no timer.)"""
    if cycle.more_body and not cycle.disconnected:
        try:
            async with asyncio.timeout(timeout):
                while cycle.more_body and not cycle.disconnected:
                    if len(cycle.body) > limit:
                        return None
                    cycle.flow.resume_reading()
                    await cycle.message_event.wait()
                    cycle.message_event.clear()
        except TimeoutError:
            return _TIMED_OUT
    if cycle.disconnected or len(cycle.body) > limit:
        return None
    return bytes(cycle.body)


class DirectResponse:
    """An ASGI `send` for the lean path's replies that writes the bytes uvicorn's
    `RequestResponseCycle.send` would write, without its per-message checks (the headers are the
    lean path's own constants): the status line, the server's default headers (date, server), the
    reply's headers, `connection: close` when the client asked for it, and chunked framing when
    there is no Content-Length. The
    head waits for the first body message, so a reply is one write; the last message completes
    the cycle as uvicorn does (keep-alive timer, next pipelined request)."""

    def __init__(self, cycle: RequestResponseCycle, transport: CoalescingTransport) -> None:
        self._cycle = cycle
        self._transport = transport
        self._head: bytes | None = None
        self._chunked = False
        self._length: int | None = None

    @property
    def started(self) -> bool:
        return self._cycle.response_started

    async def send(self, message: Message) -> None:
        cycle = self._cycle
        if cycle.flow.write_paused and not cycle.disconnected:
            await cycle.flow.drain()
        if cycle.disconnected:
            return
        if message["type"] == "http.response.start":
            if cycle.response_started:
                raise RuntimeError("the response has already started")
            cycle.response_started = True
            cycle.waiting_for_100_continue = False
            self._head = self._format_head(message["status"], message.get("headers", ()))
            return
        if message["type"] != "http.response.body" or not cycle.response_started or cycle.response_complete:
            raise RuntimeError(f"unexpected ASGI message {message['type']!r}")
        body: bytes = message.get("body", b"")
        more_body: bool = message.get("more_body", False)
        out: list[bytes] = []
        if self._head is not None:
            out.append(self._head)
            self._head = None
        if self._chunked:
            if body:
                out += [b"%x\r\n" % len(body), body, b"\r\n"]
            if not more_body:
                out.append(b"0\r\n\r\n")
        else:
            out.append(body)
            assert self._length is not None
            self._length -= len(body)
            if self._length < 0 or (not more_body and self._length):
                raise RuntimeError("response body does not match its Content-Length")
        self._write(b"".join(out))
        if not more_body:
            cycle.response_complete = True
            cycle.message_event.set()
            if not cycle.keep_alive:
                self._transport.close()
            cycle.on_response()

    def _format_head(self, status: int, headers: Any) -> bytes:
        cycle = self._cycle
        content = [STATUS_LINE[status]]
        for name, value in cycle.default_headers:
            content += [name, b": ", value, b"\r\n"]
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"content-length":
                self._length = int(value)
            content += [lowered, b": ", value, b"\r\n"]
        # The lean path's replies never ask to close the connection themselves; the client may.
        if not cycle.keep_alive:
            content.append(b"connection: close\r\n")
        if self._length is None:
            self._chunked = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        return b"".join(content)

    def _write(self, data: bytes) -> None:
        self._transport.write_now(data)  # one write per reply already: no need to wait a loop step

    def check_complete(self) -> None:
        """After the lean path returned: a reply it left unfinished (it never should) closes the
        connection, as uvicorn does for an app that returns mid-response."""
        cycle = self._cycle
        if not cycle.response_complete and not cycle.disconnected:
            logger.error("fast lane: the handler returned without completing its response")
            self._transport.close()

    def reject(self, status: int, body: bytes) -> None:
        """Answer `status` with a JSON `body` before anything was sent, and close the connection
        (the rest of the request is not going to be read)."""
        cycle = self._cycle
        if cycle.disconnected:
            return
        cycle.keep_alive = False
        self._write(
            STATUS_LINE[status]
            + b"".join(name + b": " + value + b"\r\n" for name, value in cycle.default_headers)
            + b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            + body
        )
        cycle.response_started = cycle.response_complete = True
        cycle.message_event.set()
        self._transport.close()

    def fail(self) -> None:
        """The handler raised: a 500 if nothing was sent yet (as uvicorn answers), else close."""
        cycle = self._cycle
        if cycle.disconnected:
            return
        if cycle.response_started and self._head is None:
            self._transport.close()
            return
        cycle.keep_alive = False
        self._write(
            STATUS_LINE[500]
            + b"".join(name + b": " + value + b"\r\n" for name, value in cycle.default_headers)
            + b"content-type: text/plain; charset=utf-8\r\ncontent-length: 21\r\nconnection: close\r\n\r\n"
            + b"Internal Server Error"
        )
        cycle.response_started = cycle.response_complete = True
        cycle.message_event.set()
        self._transport.close()
