"""A hostile upstream against the whole gateway, over real sockets (issue 12, point 7).

The upstream is the test MCP server behind uvicorn on 127.0.0.1, with two tools whose replies a
wrapper replaces: `bomb` answers with a gzip bomb (about 1 KiB on the wire per MiB decoded, 1 GiB
in all), `flood` with one server-sent event that never ends. The gateway is served as `gateway run`
serves it, and real MCP clients call it: while a hostile reply is streaming (the wrapper pauses it
half-way), another client on another connection still gets answers from a second upstream and from
the hostile one; then the hostile call fails with an error naming the server and the limit, the
gateway closes that connection, and the hostile server keeps working for the next call.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bastion.config.settings import GatewaySettings
from bastion.gateway import rawhttp
from bastion.gateway.runtime import Gateway
from bastion.gateway.server import http_app
from bastion.gateway.upstream import UpstreamState

from .conftest import front_of, remote_entry, serve_in_process
from .servers.echo_server import build
from .test_gateway import text_of

pytestmark = pytest.mark.anyio

SETTINGS = GatewaySettings(connect_timeout=10, request_timeout=20, restart_max=0)
MiB = 1 << 20


def gzip_bomb() -> Iterator[bytes]:
    """1 GiB of zeros as gzip, one MiB (about 1 KiB of gzip) at a time."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    yield packer.compress(bytes(MiB)) + packer.flush(zlib.Z_SYNC_FLUSH)
    again = packer.compress(bytes(MiB)) + packer.flush(zlib.Z_SYNC_FLUSH)  # the same bytes for every further MiB
    for _ in range(1023):
        yield again


def endless_drip() -> Iterator[bytes]:
    """An event stream that stays well inside every limit and never answers (stops after 10 s)."""
    for _ in range(200):
        yield b": still thinking\n\n"


def endless_event() -> Iterator[bytes]:
    """One server-sent event whose data line never ends (stops at 64 MiB)."""
    yield b"event: message\ndata: "
    for _ in range(1024):
        yield b"x" * (64 << 10)


EMPTY_DEFLATE_BLOCK = b"\x00\x00\x00\xff\xff"
"""A stored block of no bytes: valid between sync-flushed pieces of the bomb, decodes to nothing."""


class Hostile:
    """ASGI wrapper: `tools/call` of `bomb` or `flood` gets the hostile reply, anything else goes to
    the MCP server. Once `pause_after` bytes of a hostile reply are out, it slows to a trickle that
    adds (almost) nothing, until `proceed`: the reply keeps streaming without reaching a limit."""

    REPLIES = {
        "bomb": (
            [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")],
            gzip_bomb,
            EMPTY_DEFLATE_BLOCK,
        ),
        "flood": ([(b"content-type", b"text/event-stream")], endless_event, b"x"),
        "drip": ([(b"content-type", b"text/event-stream")], endless_drip, b""),
    }

    def __init__(self, app: ASGIApp, pause_after: int) -> None:
        self.app = app
        self.pause_after = pause_after
        self.streaming = anyio.Event()
        self.proceed = anyio.Event()
        self.sent = 0
        self.hung_up = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = await Request(scope, receive).body()
        message = json.loads(body) if body else None
        name = message.get("params", {}).get("name") if isinstance(message, dict) else None
        if isinstance(message, dict) and message.get("method") == "tools/call" and name in self.REPLIES:
            await self._hostile(name, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _hostile(self, name: str, receive: Receive, send: Send) -> None:
        headers, pieces, trickle = self.REPLIES[name]
        self.sent = 0
        self.hung_up = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                self.hung_up.set()
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for piece in pieces():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
                self.sent += len(piece)
                if self.sent >= self.pause_after and not self.streaming.is_set():
                    self.streaming.set()
                    with anyio.move_on_after(10):
                        while not self.proceed.is_set():
                            await send({"type": "http.response.body", "body": trickle, "more_body": True})
                            self.sent += len(trickle)
                            await anyio.sleep(0.01)
                await anyio.sleep(0.05 if name == "drip" else 0)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            tg.cancel_scope.cancel()


def hostile_server() -> MCPServer:
    server = build("evil")

    @server.tool()
    def bomb() -> str:
        """Replaced by a gzip bomb."""
        return "unreachable"

    @server.tool()
    def flood() -> str:
        """Replaced by an endless server-sent event."""
        return "unreachable"

    @server.tool()
    def drip() -> str:
        """Replaced by an event stream that never answers."""
        return "unreachable"

    return server


async def hostile_stack(settings: GatewaySettings) -> AsyncIterator[tuple[str, Hostile]]:
    """A hostile and a healthy upstream behind the gateway, served as `gateway run` serves it."""
    hostile = Hostile(hostile_server().streamable_http_app(), pause_after=1 << 62)
    async for evil_base in serve_in_process(hostile):
        async for good_base in serve_in_process(build("good").streamable_http_app()):
            entries = [remote_entry("evil", f"{evil_base}/mcp"), remote_entry("good", f"{good_base}/mcp")]
            async with Gateway(entries, settings) as gateway:
                assert all(status.state is UpstreamState.READY for status in gateway.status())
                assert gateway.pool.upstreams["evil"]._wire is not None  # the raw channel is what is tested
                app = http_app(gateway.server, gateway.pool, lean=True)
                async for base in serve_in_process(*front_of(app, "lane")):
                    yield f"{base}/mcp", hostile


@pytest.fixture
async def stack() -> AsyncIterator[tuple[str, Hostile]]:
    async for served in hostile_stack(SETTINGS):
        yield served


@pytest.mark.parametrize(
    ("tool", "pause_after", "limit", "message"),
    [
        ("bomb", 8 * 1040, 16 * MiB, "sent a response body larger than 16 MiB once decoded"),
        ("flood", 512 << 10, None, "sent a server-sent event larger than 1 MiB"),
    ],
    ids=["gzip-bomb", "endless-sse-event"],
)
async def test_hostile_reply_fails_its_call_while_other_clients_are_served(
    stack: tuple[str, Hostile],
    monkeypatch: pytest.MonkeyPatch,
    tool: str,
    pause_after: int,
    limit: int | None,
    message: str,
) -> None:
    url, hostile = stack
    hostile.pause_after = pause_after
    if limit is not None:
        monkeypatch.setattr(rawhttp, "MAX_BODY", limit)  # 256 MiB by default; the test need not fill that
    failure: list[BaseException] = []

    async def hostile_call() -> None:
        async with Client(url) as victim:
            try:
                await victim.call_tool(f"evil__{tool}", {})
            except MCPError as exc:
                failure.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(hostile_call)
        with anyio.fail_after(10):
            await hostile.streaming.wait()
        # The hostile reply is half-way and still streaming: others are served meanwhile.
        sent_before = hostile.sent
        with anyio.fail_after(5):
            async with Client(url) as other:
                assert text_of(await other.call_tool("good__echo", {"text": "still here"})) == "still here"
                assert text_of(await other.call_tool("evil__echo", {"text": "me too"})) == "me too"
        assert hostile.sent > sent_before and not hostile.hung_up.is_set() and not failure
        hostile.proceed.set()
        with anyio.fail_after(10):
            await hostile.hung_up.wait()  # the gateway closed the hostile connection
    assert len(failure) == 1
    assert isinstance(failure[0], MCPError)
    text = str(failure[0])
    assert "server 'evil'" in text and message in text
    assert hostile.sent < (256 * 1040 if tool == "bomb" else 16 * MiB)  # it stopped reading early
    with anyio.fail_after(5):
        async with Client(url) as later:
            assert text_of(await later.call_tool("evil__echo", {"text": "after"})) == "after"


async def test_reply_that_streams_within_every_limit_but_never_answers_ends_at_the_request_timeout() -> None:
    """Limits bound the bytes; `request_timeout` bounds the time, on the raw channel as on the SDK's."""
    async for url, hostile in hostile_stack(GatewaySettings(connect_timeout=10, request_timeout=1, restart_max=0)):
        async with Client(url) as client:
            with (
                anyio.fail_after(5),
                pytest.raises(MCPError, match="server 'evil' did not answer tools/call within 1s"),
            ):
                await client.call_tool("evil__drip", {})
            with anyio.fail_after(5):
                await hostile.hung_up.wait()  # the gateway closed the stream, it did not leave it open
            assert text_of(await client.call_tool("evil__echo", {"text": "after"})) == "after"
