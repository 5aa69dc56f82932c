"""The raw upstream channel (gateway/wire.py): the event-stream parser, how each kind of reply is
handled against a scripted ASGI upstream, and the channel inside `Upstream` against the SDK's
own streamable-HTTP server (both protocol eras, log relay, 401 → refresh through the SDK path)."""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2._utils as httpx2_utils
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_REQUEST, PARSE_ERROR
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from bastion.config.settings import GatewaySettings
from bastion.gateway import upstream as upstream_module
from bastion.gateway.rawhttp import LimitExceeded, RawHTTPError
from bastion.gateway.runtime import Gateway
from bastion.gateway.upstream import Upstream, UpstreamState
from bastion.gateway.wire import Event, Resend, SSEDecoder, WireChannel

from .conftest import remote_entry, serve_in_process
from .servers.echo_server import build
from .test_gateway import RecordAuthorization, Tokens

pytestmark = pytest.mark.anyio

FAST = GatewaySettings(connect_timeout=10, request_timeout=5, restart_max=0)


# -- the event-stream parser (WHATWG HTML §9.2.6) ---------------------------------------------------

STREAM = (
    "\ufeff: a comment\r\n"
    "id: 7\r\n"
    "\r\n"  # a priming event: an id, no data — nothing is dispatched
    "data: first\r\n"
    "data:second\r\n\r\n"
    "event: other\r"
    "data: é ünïcode ✓\r\r"
    "retry: 10\n"
    "data\n\n"
    "data: trailing, never ended"
)
EXPECTED = [Event("message", "first\nsecond", "7"), Event("other", "é ünïcode ✓", "7"), Event("message", "", "7")]


def test_event_stream_fields_line_endings_and_bom() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(STREAM.encode()) == EXPECTED


@pytest.mark.parametrize("pieces", [[b"data: a\r", b"\ndata: b\r\n\r\n"], [b"data: a\r", b"", b"\ndata: b\r\n\r\n"]])
def test_crlf_split_across_chunks_is_one_line_ending(pieces: list[bytes]) -> None:
    decoder = SSEDecoder()
    assert [event for piece in pieces for event in decoder.feed(piece)] == [Event("message", "a\nb", None)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM.encode())), max_size=12))
def test_any_split_of_the_bytes_gives_the_same_events(cuts: list[int]) -> None:
    """Chunks may end inside a CRLF or inside a multi-byte character."""
    data = STREAM.encode()
    points = sorted(set(cuts))
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    decoder = SSEDecoder()
    events = [event for piece in pieces for event in decoder.feed(piece)]
    assert events == EXPECTED


def test_event_just_under_the_limit_is_dispatched_whole() -> None:
    decoder = SSEDecoder(max_size=1000)
    # field lines count whole ("data: " included), as the SDK's parser counts them
    events = decoder.feed(b"data: " + b"a" * 494 + b"\ndata: " + b"b" * 494 + b"\n\n")
    assert events == [Event("message", "a" * 494 + "\n" + "b" * 494, None)]


@pytest.mark.parametrize(
    "stream",
    [
        [b"data: " + b"x" * 1024 + b"\n"] * 1100,  # many lines, no blank line to end the event
        [b"data: "] + [b"x" * 1024] * 1100,  # one line that never ends
        [b": a comment that never ends "] + [b"x" * 1024] * 1100,
    ],
    ids=["endless-event", "endless-line", "endless-comment"],
)
def test_event_past_one_mib_fails_as_soon_as_it_is_past(stream: list[bytes]) -> None:
    """The SDK's transport stops an event at 1 MiB (DEFAULT_MAX_SSE_EVENT_SIZE); so does the raw channel."""
    decoder = SSEDecoder()
    fed = 0
    with pytest.raises(LimitExceeded, match="server-sent event larger than 1 MiB"):
        for piece in stream:
            fed += len(piece)
            decoder.feed(piece)
    assert 1 << 20 < fed <= (1 << 20) + 2048


def test_limit_counts_each_event_on_its_own() -> None:
    decoder = SSEDecoder(max_size=1000)
    for index in range(50):
        assert decoder.feed(b"data: " + b"x" * 900 + b"\n\n") == [Event("message", "x" * 900, None)], index


def test_events_before_an_oversized_one_in_the_same_chunk_come_first() -> None:
    decoder = SSEDecoder(max_size=100)
    events = decoder.feed(b"data: reply\n\ndata: " + b"x" * 200)
    assert events == [Event("message", "reply", None)]
    with pytest.raises(LimitExceeded):
        decoder.feed(b"more\n\n")


# -- the channel against a scripted upstream ---------------------------------------------------------

Reply = Callable[[dict[str, Any], dict[str, str]], tuple[int, list[tuple[str, str]], list[bytes]]]


class Scripted:
    """An ASGI upstream: `reply(message, headers)` gives status, headers and body chunks; every
    request (headers, parsed body) and client disconnect is recorded."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.disconnected = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await Request(scope, receive).body()
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        parsed = json.loads(body)
        self.requests.append((headers, parsed))
        status, out_headers, chunks = self.reply(parsed, headers)
        raw = [(k.encode(), v.encode()) for k, v in out_headers]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await anyio.sleep(0)
        if chunks and chunks[-1] == b"<hold>":
            while (await receive())["type"] != "http.disconnect":
                pass
            self.disconnected.set()
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def json_reply(result: Any, **extra: Any) -> Reply:
    def reply(message: dict[str, Any], headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], list[bytes]]:
        outcome = {"result": result} if result is not None else {}
        body = {"jsonrpc": "2.0", "id": message.get("id"), **outcome, **extra}
        return 200, [("content-type", "application/json")], [json.dumps(body).encode()]

    return reply


def sse(*messages: dict[str, Any] | str) -> list[bytes]:
    return [(m if isinstance(m, str) else f"event: message\ndata: {json.dumps(m)}\n\n").encode() for m in messages]


async def channel_for(
    app: Scripted, *, bearer: str | None = None, headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[WireChannel, list[dict[str, Any]]]]:
    notes: list[dict[str, Any]] = []

    async def token() -> str | None:
        return bearer

    async for base in serve_in_process(app):
        wire = WireChannel(
            f"{base}/mcp",
            headers or {"user-agent": "test-agent", "accept": "*/*"},
            bearer=token if bearer is not None else None,
            on_notification=notes.append,
        )
        try:
            yield wire, notes
        finally:
            wire.close()


async def test_json_reply_gives_the_result_and_the_request_carries_the_transport_headers() -> None:
    app = Scripted(json_reply({"content": [], "isError": False}))
    async for wire, _ in channel_for(app, bearer="tok-1"):
        wire.session_id = "s-1"
        result = await wire.request("tools/call", {"name": "echo"}, {"MCP-Protocol-Version": "2025-11-25"})
        assert result == {"content": [], "isError": False}
        headers, body = app.requests[0]
        assert body == {"jsonrpc": "2.0", "id": body["id"], "method": "tools/call", "params": {"name": "echo"}}
        assert headers["accept"] == "application/json, text/event-stream"  # not the client default */*
        assert headers["content-type"] == "application/json"
        assert headers["user-agent"] == "test-agent"
        assert headers["mcp-session-id"] == "s-1"
        assert headers["mcp-protocol-version"] == "2025-11-25"
        assert headers["authorization"] == "Bearer tok-1"
        assert wire.sent == 1


async def test_configured_framing_headers_are_not_sent_twice() -> None:
    app = Scripted(json_reply({}))
    configured = {"Host": "elsewhere.test", "Content-Length": "999", "Transfer-Encoding": "chunked", "x-api": "1"}
    async for wire, _ in channel_for(app, headers=configured):
        assert await wire.request("tools/call", {"name": "echo"}, {}) == {}
    headers, _ = app.requests[0]
    assert headers["host"].startswith("127.0.0.1:")
    assert headers["content-length"] != "999" and "transfer-encoding" not in headers
    assert headers["x-api"] == "1"


async def test_static_authorization_header_is_kept_without_oauth_and_replaced_with_it() -> None:
    app = Scripted(json_reply({}))
    static = {"authorization": "Bearer api-key"}
    async for wire, _ in channel_for(app, headers=static):
        await wire.request("tools/call", {"name": "echo"}, {})
    async for wire, _ in channel_for(app, headers=static, bearer="oauth-token"):
        await wire.request("tools/call", {"name": "echo"}, {})
    assert [h["authorization"] for h, _ in app.requests] == ["Bearer api-key", "Bearer oauth-token"]


@pytest.mark.parametrize("status", [401, 403, 404, 307])
async def test_replies_that_mean_not_run_hand_the_request_back(status: int) -> None:
    app = Scripted(lambda m, h: (status, [("www-authenticate", "Bearer")], [b""]))
    async for wire, _ in channel_for(app):
        with pytest.raises(Resend):
            await wire.request("tools/call", {"name": "echo"}, {})
        assert wire.sent == 0


async def test_unreachable_upstream_hands_the_request_back() -> None:
    wire = WireChannel("http://127.0.0.1:9/mcp", {}, bearer=None, on_notification=lambda m: None)
    with pytest.raises(Resend):
        await wire.request("tools/call", {"name": "echo"}, {})
    wire.close()


@pytest.mark.parametrize(
    ("reply", "code", "message"),
    [
        (lambda m, h: (202, [], [b""]), INVALID_REQUEST, "202 Accepted"),
        (lambda m, h: (500, [("content-type", "text/html")], [b"<h1>oops</h1>"]), INTERNAL_ERROR, "error response"),
        (
            lambda m, h: (
                400,
                [("content-type", "application/json")],
                [b'{"jsonrpc":"2.0","id":null,"error":{"code":-32602,"message":"bad name"}}'],
            ),
            -32602,
            "bad name",
        ),
        (lambda m, h: (200, [("content-type", "text/plain")], [b"hi"]), INVALID_REQUEST, "Unexpected content type"),
        (
            lambda m, h: (200, [("content-type", "application/json")], [b'{"jsonrpc":"2.0","id":"other","result":{}}']),
            PARSE_ERROR,
            "not this request's reply",
        ),
        (lambda m, h: (200, [("content-type", "application/json")], [b"{not json"]), PARSE_ERROR, "Failed to parse"),
        (json_reply(None, error={"code": -32001, "message": "tool said no"}), -32001, "tool said no"),
        (json_reply([1, 2]), PARSE_ERROR, "not an object"),
    ],
)
async def test_other_replies_fail_as_the_sdk_transport_words_them(reply: Reply, code: int, message: str) -> None:
    async for wire, _ in channel_for(Scripted(reply)):
        with pytest.raises(MCPError, match=message) as caught:
            await wire.request("tools/call", {"name": "echo"}, {})
        assert caught.value.error.code == code


async def test_event_stream_reply_relays_notifications_and_answers_server_requests() -> None:
    def reply(message: dict[str, Any], headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], list[bytes]]:
        if "method" not in message:  # our answers to the server's requests
            return 202, [], [b""]
        log = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "hi"}}
        return (
            200,
            [("content-type", "text/event-stream")],
            sse(
                "id: prime\ndata:\n\n",
                log,
                {"jsonrpc": "2.0", "id": 90, "method": "ping"},
                {"jsonrpc": "2.0", "id": 91, "method": "sampling/createMessage", "params": {}},
                {"jsonrpc": "2.0", "id": 92, "method": "vendor/thing"},
                "event: unknown\ndata: {}\n\n",
                {"jsonrpc": "2.0", "id": "whatever", "result": {"content": [{"type": "text", "text": "ok"}]}},
            ),
        )

    app = Scripted(reply)
    async for wire, notes in channel_for(app):
        result = await wire.request("tools/call", {"name": "echo"}, {})
        assert result == {"content": [{"type": "text", "text": "ok"}]}
        assert [n["method"] for n in notes] == ["notifications/message"]
        answers = {body["id"]: body for _, body in app.requests[1:]}
        assert answers[90]["result"] == {}
        assert answers[91]["error"] == {"code": INVALID_REQUEST, "message": "Sampling not supported"}
        assert answers[92]["error"]["code"] == -32601


async def test_event_stream_that_ends_without_a_reply_is_a_broken_connection() -> None:
    app = Scripted(lambda m, h: (200, [("content-type", "text/event-stream")], sse("id: 1\ndata:\n\n")))
    async for wire, _ in channel_for(app):
        with pytest.raises(RawHTTPError, match="ended without a reply"):
            await wire.request("tools/call", {"name": "echo"}, {})


async def test_abandoned_2025_request_is_cancelled_with_a_notification() -> None:
    def reply(message: dict[str, Any], headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], list[bytes]]:
        if message.get("method") == "notifications/cancelled":
            return 202, [], [b""]
        return 200, [("content-type", "text/event-stream")], [b": working\n\n", b"<hold>"]

    app = Scripted(reply)
    async for wire, _ in channel_for(app):
        wire.session_id = "s-9"
        with anyio.move_on_after(0.5):
            await wire.request("tools/call", {"name": "hang"}, {"mcp-protocol-version": "2025-11-25"})
        with anyio.fail_after(5):
            await app.disconnected.wait()
            while len(app.requests) < 2:
                await anyio.sleep(0.01)
        (_, call), (headers, cancel) = app.requests
        assert cancel["method"] == "notifications/cancelled"
        assert cancel["params"]["requestId"] == call["id"]
        assert headers["mcp-session-id"] == "s-9"
        assert headers["mcp-protocol-version"] == "2025-11-25"


async def test_abandoned_2026_request_is_cancelled_by_closing_its_stream() -> None:
    app = Scripted(lambda m, h: (200, [("content-type", "text/event-stream")], [b": working\n\n", b"<hold>"]))
    async for wire, _ in channel_for(app):
        with anyio.move_on_after(0.5):
            await wire.request("tools/call", {"name": "hang"}, {"mcp-protocol-version": "2026-07-28"})
        with anyio.fail_after(5):
            await app.disconnected.wait()
        assert len(app.requests) == 1  # no notification on the 2026 wire


# -- inside Upstream, against the SDK's streamable-HTTP server ---------------------------------------


@pytest.fixture
async def web() -> AsyncIterator[tuple[str, RecordAuthorization]]:
    recorder = RecordAuthorization(build("web").streamable_http_app())
    async for base in serve_in_process(recorder):
        yield f"{base}/mcp", recorder


@asynccontextmanager
async def running_upstream(upstream: Upstream) -> AsyncIterator[Upstream]:
    async with anyio.create_task_group() as tg:
        tg.start_soon(upstream.run)
        with anyio.fail_after(10):
            while upstream.state is not UpstreamState.READY:
                await anyio.sleep(0.02)
        try:
            yield upstream
        finally:
            tg.cancel_scope.cancel()


async def _no_secret(name: str) -> str | None:
    return None


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_calls_ride_the_raw_channel_on_one_connection(web: tuple[str, RecordAuthorization], mode: str) -> None:
    url, _ = web
    entry = remote_entry("web", url)
    upstream = Upstream(entry, FAST, token_provider=None, secret_lookup=_no_secret, on_change=lambda u: None, mode=mode)
    async with running_upstream(upstream) as running:
        wire = running._wire
        assert wire is not None
        assert (wire.session_id is not None) == (mode == "legacy")
        for index in range(20):
            result = await running.send_raw("tools/call", {"name": "echo", "arguments": {"text": str(index)}})
            assert result["content"][0]["text"] == str(index)
        resource = await running.send_raw("resources/read", {"uri": "web://hello"})
        assert resource["contents"][0]["text"] == "hello from web"
        assert wire.sent == 21
        # An SSE reply is used as soon as its event arrives; the end of its chunked body can come a
        # moment later, so a call right after it may open a second connection. Never one per call.
        assert wire.connections_opened <= 2


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")  # the server's `ctx.warning`
async def test_log_messages_on_a_raw_reply_are_relayed(web: tuple[str, RecordAuthorization]) -> None:
    url, _ = web
    logs: list[tuple[str, Any]] = []
    upstream = Upstream(
        remote_entry("web", url),
        FAST,
        token_provider=None,
        secret_lookup=_no_secret,
        on_change=lambda u: None,
        on_log=lambda server, params: logs.append((server, params.data)),
        mode="legacy",
    )
    async with running_upstream(upstream) as running:
        result = await running.send_raw("tools/call", {"name": "log", "arguments": {"text": "careful"}})
        assert result["content"][0]["text"] == "logged"
        assert running._wire is not None and running._wire.sent == 1
        assert logs == [("web", "careful")]


async def test_401_on_the_raw_channel_is_refreshed_through_the_sdk_path_once() -> None:
    recorder = RecordAuthorization(build("web").streamable_http_app(), require="first")
    async for base in serve_in_process(recorder):
        tokens = Tokens("first", renewed="second", url=f"{base}/mcp")
        entry = remote_entry("web", f"{base}/mcp", oauth={"providers": [{"provider": "web"}]})
        async with Gateway([entry], FAST, token_provider=tokens) as gateway:
            upstream = gateway.pool.upstreams["web"]
            wire = upstream._wire
            assert wire is not None
            recorder.require = "second"  # the server revoked "first"
            for text in ("a", "b", "c"):
                result = await gateway.pool.call_tool_raw("web__echo", {"text": text})
                assert result["content"][0]["text"] == text
            assert tokens.refreshes == 1
            assert wire.sent == 2  # the first call went through the SDK path, the next two raw
            assert upstream.state is UpstreamState.READY


async def test_channel_is_off_with_bastion_wire_0(
    web: tuple[str, RecordAuthorization], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = web
    monkeypatch.setenv("BASTION_WIRE", "0")
    async with Gateway([remote_entry("web", url)], FAST) as gateway:
        assert gateway.pool.upstreams["web"]._wire is None
        result = await gateway.pool.call_tool_raw("web__echo", {"text": "still works"})
        assert result["content"][0]["text"] == "still works"


class ForwardProxy:
    """An HTTP forward proxy on 127.0.0.1 for `http://` targets: counts each request it forwards
    (heads and `Content-Length` bodies, which is what httpx2 sends), pipes the replies back."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> ForwardProxy:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        pipe: asyncio.Task[None] | None = None
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = urlsplit(head.split(b" ", 2)[1].decode())
                assert target.scheme == "http" and target.hostname == "127.0.0.1"  # absolute form: a proxy request
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append(head.split(b"\r\n", 1)[0])
                if upstream is None:
                    up_reader, upstream = await asyncio.open_connection(target.hostname, target.port)
                    pipe = asyncio.create_task(self._pipe(up_reader, writer))
                upstream.write(head + body)
                await upstream.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if pipe is not None:
                pipe.cancel()
            if upstream is not None:
                upstream.close()
            writer.close()

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while piece := await source.read(65536):
            sink.write(piece)
            await sink.drain()
        sink.close()


@pytest.fixture
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy settings from the machine running the tests."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


@pytest.mark.parametrize("source", ["environment", "system"])
async def test_upstream_behind_a_proxy_is_reached_only_through_it(
    web: tuple[str, RecordAuthorization], clean_proxy_env: pytest.MonkeyPatch, source: str
) -> None:
    """The raw channel speaks no proxy protocol: where httpx2 would use a proxy, it is off, and every
    request, calls included, takes the SDK's path through the proxy. "system" stands for the
    settings `urllib.request.getproxies()` reads on macOS and Windows besides the environment."""
    url, recorder = web
    async with ForwardProxy() as proxy:
        if source == "environment":
            clean_proxy_env.setenv("HTTP_PROXY", proxy.url)
        else:
            system = {"http": proxy.url}
            clean_proxy_env.setattr(urllib.request, "getproxies", lambda: dict(system))
            clean_proxy_env.setattr(httpx2_utils, "getproxies", lambda: dict(system))  # httpx2's own import of it
        async with Gateway([remote_entry("web", url)], FAST) as gateway:
            assert gateway.pool.upstreams["web"]._wire is None
            for text in ("a", "b"):
                result = await gateway.pool.call_tool_raw("web__echo", {"text": text})
                assert result["content"][0]["text"] == text
        assert len(proxy.requests) == len(recorder.methods) >= 3  # every request the server saw came through it
        assert recorder.methods.count("tools/call") == 2


@pytest.mark.parametrize(
    "settings",
    [
        {"HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1"},
        {"HTTP_PROXY": "http://127.0.0.1:9", "no_proxy": "example.test, 127.0.0.0/8"},
        {"HTTPS_PROXY": "http://127.0.0.1:9"},  # a proxy for https:// URLs only
    ],
    ids=["no_proxy-host", "no_proxy-network", "other-scheme"],
)
async def test_upstream_no_proxy_applies_to_keeps_the_raw_channel(
    web: tuple[str, RecordAuthorization], clean_proxy_env: pytest.MonkeyPatch, settings: dict[str, str]
) -> None:
    """Same rule as httpx2: a proxy configured for other URLs does not take the fast path away."""
    url, _ = web
    for name, value in settings.items():
        clean_proxy_env.setenv(name, value)
    async with Gateway([remote_entry("web", url)], FAST) as gateway:
        wire = gateway.pool.upstreams["web"]._wire
        assert wire is not None
        result = await gateway.pool.call_tool_raw("web__echo", {"text": "direct"})
        assert result["content"][0]["text"] == "direct"
        assert wire.sent == 1


async def test_upstream_clients_share_one_tls_context(
    web: tuple[str, RecordAuthorization], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building a TLS context costs ~25 ms; one per upstream was half the start-up of 100."""
    built: list[object] = []
    real = ssl.create_default_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        context = real(*args, **kwargs)
        built.append(context)
        return context

    monkeypatch.setattr(ssl, "create_default_context", counting)
    upstream_module._tls_context.cache_clear()
    url, _ = web
    entries = [remote_entry(f"web{index}", url) for index in range(4)]
    async with Gateway(entries, FAST) as gateway:
        assert all(status.state is UpstreamState.READY for status in gateway.status())
    assert len(built) == 1


class RecordBodies:
    """ASGI wrapper keeping each request body's `params._meta`."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.metas: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = await Request(scope, receive).body()
        decoded = json.loads(body)
        if isinstance(decoded, dict) and decoded.get("method") == "tools/call":
            self.metas.append(decoded["params"].get("_meta", {}))
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def test_2026_log_opt_in_is_sent_only_while_someone_downstream_can_receive_logs() -> None:
    recorder = RecordBodies(build("web").streamable_http_app())
    listening = [False]
    async for base in serve_in_process(recorder):
        upstream = Upstream(
            remote_entry("web", f"{base}/mcp"),
            FAST,
            token_provider=None,
            secret_lookup=_no_secret,
            on_change=lambda u: None,
            log_listeners=lambda: listening[0],
        )
        async with running_upstream(upstream) as running:
            assert running.protocol_version == "2026-07-28"
            await running.send_raw("tools/call", {"name": "echo", "arguments": {"text": "a"}})
            listening[0] = True
            await running.send_raw("tools/call", {"name": "echo", "arguments": {"text": "b"}})
        quiet, wanted = recorder.metas
        assert "io.modelcontextprotocol/logLevel" not in quiet
        assert wanted["io.modelcontextprotocol/logLevel"] == "info"
        assert quiet["io.modelcontextprotocol/protocolVersion"] == "2026-07-28"  # the rest of the envelope stays


def test_without_httpx2s_routing_any_proxy_turns_the_channel_off(clean_proxy_env: pytest.MonkeyPatch) -> None:
    """Should a later httpx2 lose the private lookup, the rule errs on the side of the proxy."""
    clean_proxy_env.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    clean_proxy_env.setenv("NO_PROXY", "127.0.0.1")
    client_without_routing: Any = object()
    assert upstream_module._proxied("http://127.0.0.1:1/mcp", client_without_routing)
    clean_proxy_env.delenv("HTTP_PROXY")
    assert not upstream_module._proxied("http://127.0.0.1:1/mcp", client_without_routing)
