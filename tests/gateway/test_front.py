"""The fast lane (gateway/front.py): lean POSTs answered from the protocol with the bytes uvicorn
would write; everything else still answered by the whole ASGI app, in the same connection."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from mcp import Client

from bastion.gateway.front import FastLane, fast_lane_protocol
from bastion.gateway.lean import LeanPath
from bastion.gateway.runtime import Gateway
from bastion.gateway.security import GatewaySecurityMiddleware
from bastion.gateway.server import http_app

from .conftest import serve_in_process, stdio_entry
from .test_gateway import text_of
from .test_lean import ENVELOPE, MODERN, SETTINGS

pytestmark = pytest.mark.anyio


class Front:
    """One gateway served twice: through the fast lane, and as the plain ASGI app (uvicorn's own
    protocol), so the two can be compared byte for byte."""

    def __init__(self, lane: FastLane, lane_port: int, asgi_port: int) -> None:
        self.lane = lane
        self.lean: LeanPath = lane.lean
        self.lane_port = lane_port
        self.asgi_port = asgi_port


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    async with Gateway([stdio_entry("one")], SETTINGS) as running:
        yield running


async def _front(gateway: Gateway, token: str | None = None) -> AsyncIterator[Front]:
    def secured() -> GatewaySecurityMiddleware:
        app = http_app(gateway.server, gateway.pool, lean=True)  # one per listener: each runs its lifespan
        return GatewaySecurityMiddleware(app, token=token, listen_host="127.0.0.1", listen_port=0)

    security = secured()
    lane = FastLane(security, security.app.state.lean_path)  # type: ignore[attr-defined]
    async for lane_base in serve_in_process(security, fast_lane_protocol(lane)):
        async for asgi_base in serve_in_process(secured()):
            yield Front(lane, int(lane_base.rsplit(":", 1)[1]), int(asgi_base.rsplit(":", 1)[1]))


@pytest.fixture
async def front(gateway: Gateway) -> AsyncIterator[Front]:
    async for served in _front(gateway):
        yield served


def modern_request(
    name: str = "one__echo", arguments: dict[str, Any] | None = None, request_id: Any = 1, *, extra: str = ""
) -> bytes:
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": name, "arguments": arguments or {"text": "hi"}, "_meta": ENVELOPE},
        }
    ).encode()
    head = (
        "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: application/json, text/event-stream\r\n"
        f"content-type: application/json\r\nmcp-protocol-version: {MODERN}\r\nmcp-method: tools/call\r\n"
        f"mcp-name: {name}\r\n{extra}content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Conn:
    """A raw HTTP/1.1 connection: exact bytes out, whole responses in."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def _fill(self) -> None:
        chunk = await self.stream.receive()
        self.buffer += chunk

    async def response(self) -> bytes:
        """One whole response (Content-Length or chunked framing), as bytes."""
        with anyio.fail_after(15):
            while b"\r\n\r\n" not in self.buffer:
                await self._fill()
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            if length is not None:
                size = int(length.group(1))
                while len(rest) < size:
                    await self._fill()
                    rest = self.buffer.partition(b"\r\n\r\n")[2]
                body, self.buffer = rest[:size], rest[size:]
                return head + b"\r\n\r\n" + body
            assert re.search(rb"(?im)^transfer-encoding: *chunked", head), head
            while b"\r\n0\r\n\r\n" not in rest and not rest.startswith(b"0\r\n\r\n"):
                await self._fill()
                rest = self.buffer.partition(b"\r\n\r\n")[2]
            end = rest.index(b"0\r\n\r\n") + 5 if rest.startswith(b"0\r\n\r\n") else rest.index(b"\r\n0\r\n\r\n") + 7
            body, self.buffer = rest[:end], rest[end:]
            return head + b"\r\n\r\n" + body

    async def closed(self) -> bool:
        with anyio.move_on_after(5):
            try:
                while True:
                    if not await self.stream.receive():
                        return True  # pragma: no cover - anyio raises instead
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return True
        return False


async def connect(port: int) -> Conn:
    return Conn(await anyio.connect_tcp("127.0.0.1", port))


def without_date(response: bytes) -> bytes:
    return re.sub(rb"(?im)^date: [^\r\n]*\r\n", b"", response)


def body_of(response: bytes) -> Any:
    return json.loads(response.partition(b"\r\n\r\n")[2])


async def test_lean_replies_are_uvicorns_bytes(front: Front) -> None:
    requests = [
        modern_request(request_id=1),
        modern_request(request_id="x", arguments={"text": "h\u00e9"}),
        modern_request("nope__x", request_id=3),  # an error reply, with its HTTP status
    ]
    for request in requests:
        before = front.lane.served
        lane, asgi = await connect(front.lane_port), await connect(front.asgi_port)
        async with lane.stream, asgi.stream:
            await lane.send(request)
            await asgi.send(request)
            mine, theirs = await lane.response(), await asgi.response()
        assert front.lane.served == before + 1
        assert without_date(mine) == without_date(theirs)
        assert mine.startswith(b"HTTP/1.1 200 OK\r\n") or b"nope__x" in request
    assert body_of(mine)["error"]["message"]


async def test_legacy_session_replies_are_uvicorns_chunked_sse(front: Front) -> None:
    """Handshake-era replies have no Content-Length: chunked framing, as uvicorn writes it."""
    sessions: dict[int, str] = {}
    for port in (front.lane_port, front.asgi_port):
        conn = await connect(port)
        async with conn.stream:
            init = json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 0,
                    "method": "initialize",
                    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t"}},
                }
            ).encode()
            head = (
                "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: application/json, text/event-stream\r\n"
                f"content-type: application/json\r\ncontent-length: {len(init)}\r\n\r\n"
            ).encode()
            await conn.send(head + init)
            reply = await conn.response()
            found = re.search(rb"(?im)^mcp-session-id: *([^\r\n]+)", reply)
            assert found is not None
            sessions[port] = found.group(1).decode()
    bodies = {}
    for port, session in sessions.items():
        before = front.lane.served
        body = json.dumps({"jsonrpc": "2.0", "id": 5, "method": "tools/list"}).encode()
        head = (
            "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: application/json, text/event-stream\r\n"
            f"content-type: application/json\r\nmcp-session-id: {session}\r\nmcp-protocol-version: 2025-11-25\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode()
        conn = await connect(port)
        async with conn.stream:
            await conn.send(head + body)
            bodies[port] = without_date(await conn.response()).replace(session.encode(), b"<session>")
        assert front.lane.served == before + (1 if port == front.lane_port else 0)
    assert bodies[front.lane_port] == bodies[front.asgi_port]
    assert b"transfer-encoding: chunked\r\n" in bodies[front.lane_port]
    assert b"event: message" in bodies[front.lane_port]


async def test_pipelined_requests_are_answered_in_order(front: Front) -> None:
    conn = await connect(front.lane_port)
    async with conn.stream:
        health = b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
        await conn.send(modern_request(request_id=1) + health + modern_request(request_id=2))
        first, second, third = await conn.response(), await conn.response(), await conn.response()
    assert body_of(first)["id"] == 1
    assert body_of(second)["status"] == "ok"  # the ASGI app's turn, between two lane requests
    assert body_of(third)["id"] == 2
    assert front.lane.served == 2


async def test_connection_close_is_honoured(front: Front) -> None:
    conn = await connect(front.lane_port)
    async with conn.stream:
        await conn.send(modern_request(extra="connection: close\r\n"))
        reply = await conn.response()
        assert b"\r\nconnection: close\r\n" in reply
        assert body_of(reply)["result"]["content"][0]["text"] == "hi"
        assert await conn.closed()
    assert front.lane.served == 1


async def test_what_the_lane_declines_gets_the_asgi_apps_answer(front: Front) -> None:
    # A foreign Origin: the security middleware's refusal, not the lane's.
    conn = await connect(front.lane_port)
    async with conn.stream:
        await conn.send(modern_request(extra="origin: http://evil.example\r\n"))
        refused = await conn.response()
        assert refused.startswith(b"HTTP/1.1 403 ")
        assert body_of(refused) == {"error": "forbidden origin"}
        # The same connection goes on serving.
        await conn.send(modern_request(request_id=7))
        assert body_of(await conn.response())["id"] == 7
    assert front.lane.served == 1


async def test_an_oversize_body_is_passed_on_whole(front: Front, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the lane's limit the request goes to the ASGI app with the body read so far replayed;
    here the SDK (whose own limit is larger) then answers the call in full."""
    monkeypatch.setattr(front.lean, "_max_body", 64)
    conn = await connect(front.lane_port)
    async with conn.stream:
        await conn.send(modern_request(arguments={"text": "x" * 500}))
        reply = await conn.response()
    assert body_of(reply)["result"]["content"][0]["text"] == "x" * 500
    assert front.lane.served == 0


@pytest.mark.parametrize("served", [True, False])
async def test_a_body_in_pieces_is_waited_for(front: Front, served: bool) -> None:
    """Chunked, in two writes: the lane waits for the whole body; a request it then declines (here
    an Mcp-Name that does not match the body) still reaches the SDK with the body replayed."""
    request = modern_request(request_id=9, extra="" if served else "mcp-name: two__echo\r\n")
    head, _, body = request.partition(b"\r\n\r\n")
    head = re.sub(rb"content-length: \d+", b"transfer-encoding: chunked", head)
    conn = await connect(front.lane_port)
    async with conn.stream:
        await conn.send(head + b"\r\n\r\n" + b"%x\r\n" % 10 + body[:10] + b"\r\n")
        await anyio.sleep(0.2)
        rest = body[10:]
        await conn.send(b"%x\r\n" % len(rest) + rest + b"\r\n0\r\n\r\n")
        reply = await conn.response()
    if served:
        assert body_of(reply)["id"] == 9
    else:
        assert reply.startswith(b"HTTP/1.1 400 ")
        assert "mcp-name" in body_of(reply)["error"]["message"].lower()
    assert front.lane.served == (1 if served else 0)


async def test_a_client_leaving_mid_body_costs_nothing(front: Front) -> None:
    request = modern_request()
    conn = await connect(front.lane_port)
    await conn.send(request[:-20])
    await conn.stream.aclose()
    await anyio.sleep(0.2)
    other = await connect(front.lane_port)
    async with other.stream:
        await other.send(modern_request(request_id=4))
        assert body_of(await other.response())["id"] == 4
    assert front.lane.served == 1


async def test_expect_100_continue_is_left_to_uvicorn(front: Front) -> None:
    conn = await connect(front.lane_port)
    async with conn.stream:
        request = modern_request(extra="expect: 100-continue\r\n")
        head, _, body = request.partition(b"\r\n\r\n")
        await conn.send(head + b"\r\n\r\n")
        with anyio.fail_after(5):
            while b"\r\n\r\n" not in conn.buffer:
                await conn._fill()
        assert conn.buffer.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        conn.buffer = conn.buffer[len(b"HTTP/1.1 100 Continue\r\n\r\n") :]
        await conn.send(body)
        assert body_of(await conn.response())["result"]["content"][0]["text"] == "hi"
    assert front.lane.served == 0


async def test_a_handler_that_raises_gets_a_500_and_a_closed_connection(
    front: Front, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("boom")

    monkeypatch.setattr(front.lean, "serve", broken)
    conn = await connect(front.lane_port)
    async with conn.stream:
        await conn.send(modern_request())
        reply = await conn.response()
        assert reply.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
        assert reply.endswith(b"\r\n\r\nInternal Server Error")
        assert await conn.closed()


@pytest.fixture
async def guarded(gateway: Gateway) -> AsyncIterator[Front]:
    async for served in _front(gateway, token="s3cret-token"):
        yield served


async def test_the_gateway_token_is_checked_and_kept_from_the_lean_path(guarded: Front) -> None:
    seen: list[list[tuple[bytes, bytes]]] = []
    serve = guarded.lean.serve

    async def spy(scope: Any, *args: Any, **kwargs: Any) -> bool:
        seen.append(list(scope["headers"]))
        return await serve(scope, *args, **kwargs)

    guarded.lean.serve = spy  # type: ignore[method-assign]
    conn = await connect(guarded.lane_port)
    async with conn.stream:
        await conn.send(modern_request())
        missing = await conn.response()
        assert missing.startswith(b"HTTP/1.1 401 ")
        assert b'www-authenticate: Bearer realm="bastion"' in missing
        await conn.send(modern_request(request_id=2, extra="authorization: Bearer s3cret-token\r\n"))
        assert body_of(await conn.response())["id"] == 2
    assert guarded.lane.served == 1
    assert seen and all(key != b"authorization" for headers in seen for key, _ in headers)


async def test_real_clients_of_both_eras_are_served_in_the_lane(front: Front) -> None:
    for mode in ("legacy", "auto"):
        before_lane, before_lean = front.lane.served, front.lean.served
        async with Client(f"http://127.0.0.1:{front.lane_port}/mcp", mode=mode) as client:
            assert text_of(await client.call_tool("one__echo", {"text": mode})) == mode
            assert "one__echo" in {tool.name for tool in (await client.list_tools()).tools}
        # Every request the lean path answered came through the lane.
        assert front.lane.served - before_lane == front.lean.served - before_lean >= 2
