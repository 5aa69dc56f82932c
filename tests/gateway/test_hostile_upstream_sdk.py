"""A hostile upstream against the SDK's path (httpx2), over real sockets (issue 12, point 7; httpcap.py).

Replies that do not take the raw channel — `initialize`, the listings, and every request when the
raw channel is off (`BASTION_WIRE=0`, or behind a proxy) — go through the httpx2 client the gateway
builds for the upstream. The upstream is the test MCP server behind uvicorn on 127.0.0.1, with a
wrapper that replaces some replies: a gzip bomb (about 1 KiB on the wire per MiB decoded) for
`tools/list` or the `bomb` tool, a reply in a coding never asked for (`br`) for `brotli`, every
reply gzip-compressed, or a GET event stream that goes on delivering change notifications.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bastion.config.settings import GatewaySettings
from bastion.gateway import rawhttp
from bastion.gateway.runtime import Gateway
from bastion.gateway.server import http_app
from bastion.gateway.upstream import WIRE_ENV, UpstreamState

from .conftest import front_of, remote_entry, serve_in_process
from .servers.echo_server import build
from .test_gateway import text_of
from .test_hostile_upstream import EMPTY_DEFLATE_BLOCK, hostile_server

pytestmark = pytest.mark.anyio

SETTINGS = GatewaySettings(connect_timeout=30, request_timeout=20, restart_max=0)
"""A connect deadline well past the bomb's pause, on a busy machine too."""
MiB = 1 << 20
CAP = 16 * MiB
"""`rawhttp.MAX_BODY` in these tests (256 MiB by default): the bomb need not reach that."""
BOMB = 128 * MiB
"""What the bomb decodes to: 8 times the cap, and small enough that code without the cap survives it."""
PIECE_PACE = 0.02
"""Seconds between the bomb's pieces (1 MiB decoded each): the whole bomb takes ~2.5 s to send."""
WIRE_BYTES_PER_MIB = 1040
"""About what one MiB of the bomb costs on the wire."""
BOMB_WIRE_BYTES = (BOMB // MiB) * WIRE_BYTES_PER_MIB


def gzip_bomb() -> Iterator[bytes]:
    """`BOMB` bytes of zeros as gzip, one MiB (about 1 KiB of gzip) at a time."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    yield packer.compress(bytes(MiB)) + packer.flush(zlib.Z_SYNC_FLUSH)
    again = packer.compress(bytes(MiB)) + packer.flush(zlib.Z_SYNC_FLUSH)  # the same bytes for every further MiB
    for _ in range(BOMB // MiB - 1):
        yield again


WBITS = {"gzip": 31, "deflate": 15, "raw-deflate": -15}
"""zlib window bits per way of coding a reply; "raw-deflate" is `deflate` without its zlib wrapper."""


class Hostile:
    """ASGI wrapper around the test MCP server. `bomb_listing`: `tools/list` gets the gzip bomb;
    `tools/call` of `bomb` always does, of `brotli` a reply in `br`. `coding`: every other reply
    compressed that way. `event_stream`: the server speaks the handshake era (no `server/discover`),
    and the session's GET stream is one that delivers a
    `tools/list_changed` after `padding` bytes of comments (gzip), each time the gateway has listed
    again, `rounds` times, and then stays open. A bomb pauses at `pause_after` bytes on the wire,
    trickling empty blocks, until `proceed`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.bomb_listing = False
        self.coding: str | None = None
        self.event_stream = False
        self.padding = 0
        self.rounds = 3
        self.pause_after = 1 << 62
        self.streaming = anyio.Event()
        self.proceed = anyio.Event()
        self.hung_up = anyio.Event()
        self.sent = 0
        self.listings = 0
        self.compressed = 0
        self.accept_encodings: set[str] = set()
        self.get_open = anyio.Event()
        self.get_closed = anyio.Event()
        self.stream_decoded = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        self.accept_encodings.add(request.headers.get("accept-encoding", ""))
        if scope["method"] == "GET" and self.event_stream:
            await self._event_stream(receive, send)
            return
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = await request.body()
        message = json.loads(body) if body else None
        method = message.get("method") if isinstance(message, dict) else None
        name = message.get("params", {}).get("name") if isinstance(message, dict) else None
        if method == "tools/list":
            self.listings += 1
        if method == "server/discover" and self.event_stream:  # a legacy server: a GET stream after initialize
            reply = {"jsonrpc": "2.0", "id": message["id"], "error": {"code": -32601, "message": "Method not found"}}
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": json.dumps(reply).encode()})
            return
        if (method == "tools/list" and self.bomb_listing) or (method == "tools/call" and name == "bomb"):
            await self._bomb(receive, send)
            return
        if method == "tools/call" and name == "brotli":
            headers = [(b"content-type", b"application/json"), (b"content-encoding", b"br")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"\x8b\x02\x80not really brotli\x03"})
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send if self.coding is None else self._compressing(send, self.coding))

    def _compressing(self, send: Send, coding: str) -> Send:
        packer = zlib.compressobj(6, zlib.DEFLATED, WBITS[coding])

        async def compressed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-length"]
                headers.append((b"content-encoding", b"gzip" if coding == "gzip" else b"deflate"))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                more = message.get("more_body", False)
                data = packer.compress(message.get("body", b"")) + packer.flush(
                    zlib.Z_SYNC_FLUSH if more else zlib.Z_FINISH
                )
                message = {**message, "body": data}
                self.compressed += 1
            await send(message)

        return compressed

    async def _bomb(self, receive: Receive, send: Send) -> None:
        self.sent = 0
        self.hung_up = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                self.hung_up.set()
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            headers = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for piece in gzip_bomb():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
                self.sent += len(piece)
                if self.sent >= self.pause_after and not self.streaming.is_set():
                    self.streaming.set()
                    with anyio.move_on_after(10):
                        while not self.proceed.is_set():
                            await send({"type": "http.response.body", "body": EMPTY_DEFLATE_BLOCK, "more_body": True})
                            await anyio.sleep(0.01)
                # Paced: the gateway must hang up long before the end. Unpaced, a loaded machine
                # let the writer fill the kernel's socket buffers ahead of the reader (~130 KiB is
                # the whole bomb on the wire), so how much was *sent* said little of what was read.
                await anyio.sleep(PIECE_PACE)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            tg.cancel_scope.cancel()

    async def _event_stream(self, receive: Receive, send: Send) -> None:
        packer = zlib.compressobj(6, zlib.DEFLATED, 31)
        comment = b": " + b"p" * 1022 + b"\n"
        changed = b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/tools/list_changed"}\n\n'

        async def emit(data: bytes) -> None:
            self.stream_decoded += len(data)
            body = packer.compress(data) + packer.flush(zlib.Z_SYNC_FLUSH)
            await send({"type": "http.response.body", "body": body, "more_body": True})

        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                self.get_closed.set()
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            headers = [(b"content-type", b"text/event-stream"), (b"content-encoding", b"gzip")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            self.get_open.set()
            for round_ in range(self.rounds):
                for _ in range(self.padding // len(comment)):
                    await emit(comment)
                await emit(changed)
                with anyio.move_on_after(10):
                    while self.listings < round_ + 2:  # the first listing came with the connect
                        await anyio.sleep(0.01)
            await anyio.sleep_forever()


async def hostile_stack(hostile: Hostile) -> AsyncIterator[tuple[str, Gateway]]:
    """The hostile and a healthy upstream behind the gateway, served as `gateway run` serves it."""
    async for evil_base in serve_in_process(hostile):
        async for good_base in serve_in_process(build("good").streamable_http_app()):
            entries = [remote_entry("evil", f"{evil_base}/mcp"), remote_entry("good", f"{good_base}/mcp")]
            async with Gateway(entries, SETTINGS) as gateway:
                assert all(status.state is UpstreamState.READY for status in gateway.status())
                app = http_app(gateway.server, gateway.pool, lean=True)
                async for base in serve_in_process(*front_of(app, "lane")):
                    yield base, gateway


@pytest.fixture
def hostile() -> Hostile:
    server = hostile_server()

    @server.tool()
    def brotli() -> str:
        """Replaced by a reply in `br`."""
        return "unreachable"

    return Hostile(server.streamable_http_app())


@pytest.fixture
def capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rawhttp, "MAX_BODY", CAP)


@pytest.fixture
def wire_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WIRE_ENV, "0")


def status_of(gateway: Gateway, name: str) -> Any:
    return next(status for status in gateway.status() if status.name == name)


@pytest.mark.usefixtures("capped")
async def test_gzip_bomb_listing_fails_the_connect_naming_the_limit_while_others_are_served(hostile: Hostile) -> None:
    async for base, gateway in hostile_stack(hostile):
        hostile.bomb_listing = True
        hostile.pause_after = 8 * WIRE_BYTES_PER_MIB  # about half the cap
        gateway.pool.upstreams["evil"].reconnect()
        with anyio.fail_after(10):
            await hostile.streaming.wait()
        # The bomb is half-way and still streaming: another client and upstream are served meanwhile.
        with anyio.fail_after(8):
            async with Client(f"{base}/mcp") as other:
                assert text_of(await other.call_tool("good__echo", {"text": "still here"})) == "still here"
        assert not hostile.hung_up.is_set()
        hostile.proceed.set()
        with anyio.fail_after(10):
            await hostile.hung_up.wait()  # the gateway stopped reading and closed the connection
            while status_of(gateway, "evil").last_error is None:
                await anyio.sleep(0.01)
        assert hostile.sent < BOMB_WIRE_BYTES // 2  # the gateway hung up far from the end of the bomb
        async with httpx2.AsyncClient() as client:
            health = (await client.get(f"{base}/health")).json()
        evil = next(upstream for upstream in health["upstreams"] if upstream["name"] == "evil")
        assert evil["state"] != "ready", evil
        assert "server 'evil' sent a response body larger than 16 MiB once decoded" in evil["last_error"], evil
        hostile.bomb_listing = False  # and once it behaves, it is back
        with anyio.fail_after(10):
            while status_of(gateway, "evil").state is not UpstreamState.READY:
                await anyio.sleep(0.02)


@pytest.mark.usefixtures("capped", "wire_off")
async def test_gzip_bomb_reply_without_the_raw_channel_fails_that_call_only(hostile: Hostile) -> None:
    async for base, gateway in hostile_stack(hostile):
        evil = gateway.pool.upstreams["evil"]
        assert evil._wire is None  # the SDK's path is what is tested
        session = evil._session
        async with Client(f"{base}/mcp") as client:
            with anyio.fail_after(10), pytest.raises(MCPError) as failure:
                await client.call_tool("evil__bomb", {})
            assert "server 'evil' sent a response body larger than 16 MiB once decoded" in str(failure.value)
            with anyio.fail_after(5):
                await hostile.hung_up.wait()
            assert hostile.sent < BOMB_WIRE_BYTES // 2
            assert text_of(await client.call_tool("evil__echo", {"text": "after"})) == "after"
            assert text_of(await client.call_tool("good__echo", {"text": "fine"})) == "fine"
        assert evil._session is session and evil.restarts == 0  # the session lived on


@pytest.mark.usefixtures("wire_off")
async def test_reply_in_a_coding_never_asked_for_is_refused(hostile: Hostile) -> None:
    async for base, _gateway in hostile_stack(hostile):
        async with Client(f"{base}/mcp") as client:
            with anyio.fail_after(10), pytest.raises(MCPError) as failure:
                await client.call_tool("evil__brotli", {})
            text = str(failure.value)
            assert "server 'evil' sent a reply in the content coding 'br'" in text
            assert "did not ask for" in text
            assert text_of(await client.call_tool("evil__echo", {"text": "after"})) == "after"
        assert hostile.accept_encodings == {"gzip, deflate"}


@pytest.mark.usefixtures("capped", "wire_off")
@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw-deflate"])
async def test_compressed_replies_within_the_cap_arrive_as_sent(hostile: Hostile, coding: str) -> None:
    hostile.coding = coding  # initialize and the listings too
    text = "".join(f"line {n}: {n * n:x}\n" for n in range(40_000))  # about 700 KiB
    async for base, gateway in hostile_stack(hostile):
        assert status_of(gateway, "evil").tools == status_of(gateway, "good").tools + 4  # bomb, flood, drip, brotli
        async with Client(f"{base}/mcp") as client:
            zipped = await client.call_tool("evil__echo", {"text": text})
            plain = await client.call_tool("good__echo", {"text": text})
        assert text_of(zipped) == text
        assert zipped.model_dump() == plain.model_dump()
        assert hostile.compressed > 0


@pytest.mark.usefixtures("capped")
async def test_event_stream_keeps_delivering_past_the_body_cap(
    hostile: Hostile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No total on a GET event stream (it lives for days); each event arrives as it is sent."""
    monkeypatch.setattr(rawhttp, "MAX_BODY", MiB)
    hostile.event_stream = True
    hostile.padding = 2 * MiB  # per round: the stream decodes to 6 MiB in all, six times the cap
    async for _base, _gateway in hostile_stack(hostile):
        with anyio.fail_after(10):
            await hostile.get_open.wait()
            while hostile.listings < 1 + hostile.rounds:  # each change notification made it relist
                await anyio.sleep(0.02)
        assert hostile.stream_decoded > 5 * MiB
        assert not hostile.get_closed.is_set()  # still open: the events were not waiting for its end
