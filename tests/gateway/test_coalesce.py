"""The gateway's HTTP listener: coalesced writes (gateway/coalesce.py) and its socket (`bind_listener`)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from bastion.errors import GatewayError
from bastion.gateway.coalesce import CoalescingHttpToolsProtocol, CoalescingTransport
from bastion.gateway.runtime import bind_listener

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


async def test_writes_of_one_step_leave_as_one_write_at_the_next_step() -> None:
    real = RecordingTransport()
    wrapped = CoalescingTransport(real, asyncio.get_running_loop())
    wrapped.write(b"HTTP/1.1 200 OK\r\n\r\n")
    wrapped.write(b"")
    wrapped.write(memoryview(b"body"))
    assert real.writes == []
    assert wrapped.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\nbody")
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    wrapped.write(b"event")
    await asyncio.sleep(0)
    assert real.writes[-1] == b"event"  # a later step: its own write, not held back


async def test_close_sends_what_was_written_first_and_abort_drops_it() -> None:
    loop = asyncio.get_running_loop()
    real = RecordingTransport()
    wrapped = CoalescingTransport(real, loop)
    wrapped.writelines([b"a", b"b"])
    wrapped.close()
    assert (real.writes, real.closed) == ([b"ab"], True)
    other = RecordingTransport()
    dropped = CoalescingTransport(other, loop)
    dropped.write(b"never")
    dropped.abort()
    await asyncio.sleep(0)
    assert (other.writes, other.aborted) == ([], True)


async def test_everything_else_is_the_real_transports() -> None:
    real = RecordingTransport()
    wrapped = CoalescingTransport(real, asyncio.get_running_loop())
    assert wrapped.get_extra_info("peername") == ("127.0.0.1", 1)


async def test_uvicorn_with_the_protocol_answers_json_and_streams_events_as_they_come() -> None:
    release = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/json":
            body = b'{"ok":true}'
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: one\n\n", "more_body": True})
        await release.wait()
        await send({"type": "http.response.body", "body": b"data: two\n\n"})

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", http=CoalescingHttpToolsProtocol)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert await reader.readexactly(11) == b'{"ok":true}'
        writer.write(b"GET /events HTTP/1.1\r\nHost: t\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        async with asyncio.timeout(5):
            first = b""
            while b"data: one" not in first:
                first += await reader.read(100)  # arrives while the stream is still open
        release.set()
        rest = b""
        async with asyncio.timeout(5):
            while b"0\r\n\r\n" not in rest:
                rest += await reader.read(100)
        assert b"data: two" in rest
        writer.close()
    finally:
        server.should_exit = True
        await task
        sock.close()


def test_listener_on_a_busy_port_is_a_clear_error_and_sets_tcp_nodelay_for_its_connections() -> None:
    """`bind_listener` (gateway, OAuth page, demo): proto IPPROTO_TCP, so asyncio turns Nagle off."""
    first = bind_listener("127.0.0.1", 0)
    try:
        assert first.proto == socket.IPPROTO_TCP
        port = first.getsockname()[1]
        with pytest.raises(GatewayError, match=rf"cannot listen on 127\.0\.0\.1:{port}: .*choose another --port"):
            bind_listener("127.0.0.1", port)
    finally:
        first.close()
