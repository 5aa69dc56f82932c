"""The hot path's HTTP/1.1 client (gateway/rawhttp.py) against scripted loopback servers (RFC 9112).

Each test runs an `asyncio` server on 127.0.0.1 that writes exactly the bytes a case needs —
the framings, interim responses and connection closes a real MCP server rarely produces on cue.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import threading
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from bastion.gateway import rawhttp
from bastion.gateway.rawhttp import LimitExceeded, OriginPool, RawHTTPError, encode_request

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Scripted:
    """A loopback server: `handler` runs once per connection; requests are recorded."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Scripted:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/mcp"

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return body


def ok(body: bytes, *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), b"".join(e + b"\r\n" for e in extra)) + body


async def serve_forever(server: Scripted, answer: Callable[[bytes], bytes]) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            body = await server.read_request(reader)
            writer.write(answer(body))
            await writer.drain()

    return handler


@pytest.fixture
async def echo() -> AsyncIterator[Scripted]:
    server = Scripted(lambda r, w: asyncio.sleep(0))
    server.handler = await serve_forever(server, lambda body: ok(body, b"Content-Type: application/json"))
    async with server:
        yield server


async def test_request_is_one_write_with_host_length_and_the_given_headers(echo: Scripted) -> None:
    pool = OriginPool(echo.url)
    response = await pool.request("POST", [("content-type", "application/json")], b'{"a":1}')
    assert (response.status, await response.read()) == (200, b'{"a":1}')
    assert response.headers["content-type"] == "application/json"
    response.release()
    head = echo.requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"POST /mcp HTTP/1.1"
    assert set(head[1:]) == {
        f"Host: {echo.url.split('/')[2]}".encode(),
        b"content-type: application/json",
        b"Content-Length: 7",
    }
    pool.close()


async def test_keep_alive_connection_is_reused_for_the_next_request(echo: Scripted) -> None:
    pool = OriginPool(echo.url)
    for index in range(5):
        response = await pool.request("POST", [], str(index).encode())
        assert await response.read() == str(index).encode()
        response.release()
    assert (echo.connections, pool.connections_opened) == (1, 1)
    pool.close()


async def test_trailer_fields_never_reach_the_next_responses_head() -> None:
    """A chunked reply's trailers (RFC 9112 §7.1.2) are not a head: before, they were kept and
    merged into the next reply on the same connection (here a stale `Content-Encoding: gzip`
    made a plain JSON body undecodable)."""
    replies = iter(
        [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n"
            b"Content-Encoding: gzip\r\nX-Stale: yes\r\n\r\n",
            ok(b"[]", b"Content-Type: application/json"),
        ]
    )
    server = Scripted(lambda r, w: asyncio.sleep(0))
    server.handler = await serve_forever(server, lambda body: next(replies))
    async with server:
        pool = OriginPool(server.url)
        first = await pool.request("POST", [], b"1")
        assert await first.read() == b"{}"
        first.release()
        second = await pool.request("POST", [], b"2")
        assert await second.read() == b"[]"
        assert "x-stale" not in second.headers and "content-encoding" not in second.headers
        second.release()
        assert pool.connections_opened == 1
        pool.close()


async def test_concurrent_requests_each_get_a_connection_and_all_return_to_the_pool(echo: Scripted) -> None:
    pool = OriginPool(echo.url)

    async def one(index: int) -> bytes:
        response = await pool.request("POST", [], b"%d" % index)
        try:
            return await response.read()
        finally:
            response.release()

    first = await asyncio.gather(*(one(i) for i in range(8)))
    second = await asyncio.gather(*(one(i) for i in range(8)))
    assert first == second == [b"%d" % i for i in range(8)]
    assert pool.connections_opened == echo.connections <= 8
    pool.close()


async def test_chunked_body_is_streamed_as_it_arrives() -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n")
        writer.write(b"5\r\nfirst\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()  # keep the connection until the client is done

    server = Scripted(handler)
    async with server:
        pool = OriginPool(server.url)
        response = await pool.request("POST", [], b"{}")
        pieces = response.chunks()
        assert await anext(pieces) == b"first"  # before the rest was even written
        release.set()
        assert [chunk async for chunk in pieces] == [b"second"]
        response.release()
        pool.close()


async def test_body_delimited_by_close_is_read_whole_and_the_connection_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"done":')
        await writer.drain()
        writer.write(b"true}")
        await writer.drain()

    server = Scripted(handler)
    async with server:
        pool = OriginPool(server.url)
        for _ in range(2):
            response = await pool.request("POST", [], b"{}")
            assert await response.read() == b'{"done":true}'
            response.release()
        assert pool.connections_opened == server.connections == 2
        pool.close()


async def test_gzip_body_is_decoded() -> None:
    packed = gzip.compress(b'{"jsonrpc":"2.0"}' * 100)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(ok(packed, b"Content-Encoding: gzip"))
        await reader.read()

    server = Scripted(handler)
    async with server:
        pool = OriginPool(server.url)
        response = await pool.request("POST", [], b"{}")
        assert await response.read() == b'{"jsonrpc":"2.0"}' * 100
        response.release()
        pool.close()


async def test_unknown_content_coding_fails_the_exchange() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(ok(b"xx", b"Content-Encoding: br"))
        await reader.read()

    server = Scripted(handler)
    async with server:
        pool = OriginPool(server.url)
        with pytest.raises(RawHTTPError, match="unsupported content coding 'br'"):
            await pool.request("POST", [], b"{}")
        pool.close()


async def test_interim_100_continue_is_skipped_for_the_final_response() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final"))
        await reader.read()

    server = Scripted(handler)
    async with server:
        pool = OriginPool(server.url)
        response = await pool.request("POST", [], b"{}")
        assert (response.status, await response.read()) == (200, b"final")
        response.release()
        pool.close()


async def test_request_read_then_hung_up_on_is_an_error_never_sent_again() -> None:
    """RFC 9112 §9.3.1: a reused connection that closes after the request went out may have run it
    (a `tools/call` that read its request and died); the client must not send it a second time."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(ok(b"one"))
        await writer.drain()
        await server.read_request(reader)  # read (and, for all we know, run) the second, then hang up
        writer.transport.abort()

    server = Scripted(handler)
    async with server:
        pool = OriginPool(server.url)
        response = await pool.request("POST", [], b"{}")
        assert await response.read() == b"one"
        response.release()
        with pytest.raises(RawHTTPError, match="closed the connection") as caught:
            await pool.request("POST", [], b"{}")
        assert not caught.value.request_unread
        await asyncio.sleep(0.1)  # a resend, if there were one, would have arrived by now
        assert (len(server.requests), server.connections, pool.connections_opened) == (2, 1, 1)
        pool.close()


class ThreadedServer:
    """A blocking loopback server in a thread, so it can act while the test holds the event loop:
    answers one request per connection with a keep-alive reply, then closes that connection."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(5)
        self.requests = 0
        self.hung_up = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/mcp"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    piece = conn.recv(65536)
                    if not piece:
                        break
                    data += piece
                if not data:
                    continue
                self.requests += 1
                conn.sendall(ok(b"%d" % self.requests))
            self.hung_up.set()

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        socket.create_connection(self.listener.getsockname(), timeout=5).close()  # wakes accept()
        self.thread.join(5)
        self.listener.close()


async def test_idle_connection_the_server_closed_is_discarded_before_the_request_is_written() -> None:
    """The close can sit in the kernel before the event loop has read it; the pool must look first,
    since it no longer resends a request that went out on a dead connection."""
    with ThreadedServer() as server:
        pool = OriginPool(server.url)
        response = await pool.request("POST", [], b"{}")
        assert await response.read() == b"1"
        response.release()
        assert server.hung_up.wait(5)  # blocks the loop on purpose: it must not see the close
        time.sleep(0.05)  # loopback delivers the FIN at once; a margin all the same
        assert len(pool._idle) == 1 and not pool._idle[0].closed  # the loop has not noticed
        second = await pool.request("POST", [], b"{}")
        assert await second.read() == b"2"
        second.release()
        assert (server.requests, pool.connections_opened) == (2, 2)
        pool.close()


async def test_fresh_connection_closed_before_the_reply_is_an_error_not_a_retry() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)

    server = Scripted(handler)
    async with server:
        pool = OriginPool(server.url)
        with pytest.raises(RawHTTPError, match="closed the connection") as caught:
            await pool.request("POST", [], b"{}")
        assert not caught.value.request_unread
        assert server.connections == 1
        pool.close()


async def test_connection_closed_mid_body_fails_the_read() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()

    server = Scripted(handler)
    async with server:
        pool = OriginPool(server.url)
        response = await pool.request("POST", [], b"{}")
        with pytest.raises(RawHTTPError, match="mid-response"):
            await response.read()
        response.release()
        pool.close()


async def test_malformed_response_is_an_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 abc nonsense\r\n\r\n")
        await reader.read()

    server = Scripted(handler)
    async with server:
        pool = OriginPool(server.url)
        with pytest.raises(RawHTTPError, match="malformed HTTP response"):
            await pool.request("POST", [], b"{}")
        pool.close()


async def test_refused_connection_says_the_request_was_not_read() -> None:
    async with Scripted(lambda r, w: asyncio.sleep(0)) as server:
        url = server.url
    pool = OriginPool(url)
    with pytest.raises(RawHTTPError, match="cannot connect to 127.0.0.1") as caught:
        await pool.request("POST", [], b"{}")
    assert caught.value.request_unread
    pool.close()


@pytest.mark.parametrize(
    ("name", "value"),
    [("x-a", "one\r\nInjected: yes"), ("x-a", "nul\0"), ("bad name", "v"), ("x:y", "v"), ("", "v")],
)
def test_headers_that_could_split_the_request_are_refused(name: str, value: str) -> None:
    origin = rawhttp.Origin.from_url("http://127.0.0.1:1/mcp")
    with pytest.raises(ValueError):
        encode_request("POST", origin, [(name, value)], b"")


@pytest.mark.parametrize(
    "url", ["ftp://h/x?key=s3cret", "http:///x?key=s3cret", "http://user:s3cret@h/x", "http://h/a b?key=s3cret"]
)
def test_urls_the_client_does_not_handle_are_refused_without_echoing_them(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        rawhttp.Origin.from_url(url)
    assert "s3cret" not in str(caught.value)  # the message reaches a log line


def test_origin_keeps_query_and_ipv6_authority() -> None:
    origin = rawhttp.Origin.from_url("https://[::1]:8443/mcp?x=1")
    assert (origin.host, origin.port, origin.authority, origin.target) == ("::1", 8443, "[::1]:8443", "/mcp?x=1")
    assert rawhttp.Origin.from_url("http://example.test").target == "/"


async def test_released_early_response_drains_then_its_connection_is_reused() -> None:
    more = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
        await writer.drain()
        await more.wait()
        writer.write(b"67890")
        await writer.drain()
        await server.read_request(reader)
        writer.write(ok(b"again"))
        await reader.read()

    server = Scripted(handler)
    async with server:
        pool = OriginPool(server.url)
        response = await pool.request("POST", [], b"{}")
        assert await anext(response.chunks()) == b"12345"
        response.release()
        more.set()
        for _ in range(50):
            if pool._idle:
                break
            await asyncio.sleep(0.01)
        second = await pool.request("POST", [], b"{}")
        assert await second.read() == b"again"
        second.release()
        assert (pool.connections_opened, server.connections) == (1, 1)
        pool.close()


async def test_aborted_response_closes_its_connection(echo: Scripted) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        assert await reader.read() == b""  # the client hung up: that is the abort

    server = Scripted(handler)
    async with server:
        pool = OriginPool(server.url)
        response = await pool.request("POST", [], b"{}")
        assert await anext(response.chunks()) == b"abc"
        response.abort()
        for _ in range(100):
            if not pool._all:
                break
            await asyncio.sleep(0.01)
        assert not pool._all
        pool.close()


async def test_cancelled_exchange_closes_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        assert await reader.read() == b""

    server = Scripted(handler)
    async with server:
        pool = OriginPool(server.url)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await pool.request("POST", [], b"{}")
        assert not pool._all and not pool._idle
        pool.close()


async def test_oversized_body_fails_instead_of_filling_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rawhttp, "MAX_BODY", 1000)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(ok(b"x" * 5000))
        await reader.read()

    server = Scripted(handler)
    async with server:
        pool = OriginPool(server.url)
        response = await pool.request("POST", [], b"{}")
        with pytest.raises(RawHTTPError, match="larger than 1000 bytes"):
            await response.read()
        response.release()
        pool.close()


@pytest.mark.parametrize("later", [False, True], ids=["with-the-reply", "while-idle"])
async def test_bytes_nobody_asked_for_retire_the_connection(later: bool) -> None:
    extra = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(ok(b"one") + (b"" if later else extra))
        await writer.drain()
        if later:
            await asyncio.sleep(0.1)
            writer.write(extra)
            await writer.drain()
        await reader.read()

    server = Scripted(handler)
    async with server:
        pool = OriginPool(server.url)
        response = await pool.request("POST", [], b"{}")
        assert await response.read() == b"one"
        response.release()
        if later:
            assert pool._idle  # idle and reusable until the stray bytes come
        for _ in range(100):
            if not pool._all:
                break
            await asyncio.sleep(0.01)
        assert not pool._idle and not pool._all
        pool.close()


async def test_closed_pool_refuses_new_connections(echo: Scripted) -> None:
    pool = OriginPool(echo.url)
    pool.close()
    with pytest.raises(RawHTTPError, match="closed") as caught:
        await pool.request("POST", [], b"{}")
    assert caught.value.request_unread


# -- what a hostile server can make a response cost (issue 12, point 7) ------------------------------


def gzip_of_zeros(mib: int) -> bytes:
    """`mib` MiB of zeros as gzip, about 1 KiB per MiB (a gzip bomb). Deflate repeats itself on
    zeros: after the first MiB, each further MiB with a sync flush is the same 1036 bytes."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = packer.compress(bytes(1 << 20)) + packer.flush(zlib.Z_SYNC_FLUSH)
    again = packer.compress(bytes(1 << 20)) + packer.flush(zlib.Z_SYNC_FLUSH)
    return first + again * (mib - 1)


async def test_gzip_bomb_fails_at_the_decoded_size_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rawhttp, "MAX_BODY", 4 << 20)
    bomb = gzip_of_zeros(64)  # 64 KiB on the wire, 64 MiB decoded
    assert len(bomb) < rawhttp.MAX_BODY

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(ok(bomb, b"Content-Encoding: gzip"))
        await reader.read()

    server = Scripted(handler)
    async with server:
        pool = OriginPool(server.url)
        response = await pool.request("POST", [], b"{}")
        decoded = 0
        with pytest.raises(LimitExceeded, match="larger than 4 MiB once decoded"):
            async for piece in response.chunks():
                decoded += len(piece)
        assert decoded <= 4 << 20
        assert not pool._all  # the connection is closed, not kept for another request
        response.release()
        pool.close()


async def test_body_that_inflates_is_decoded_a_piece_at_a_time_with_the_loop_serving_others() -> None:
    bomb = gzip_of_zeros(8)
    ticks: list[int] = []

    async def ticker() -> None:
        while True:
            ticks.append(len(ticks))
            await asyncio.sleep(0)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb))
        writer.write(bomb)  # no gzip trailer: the stream is cut after 8 MiB, which decodes fine
        await reader.read()

    server = Scripted(handler)
    async with server:
        pool = OriginPool(server.url)
        response = await pool.request("POST", [], b"{}")
        other = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        sizes, seen = [], []
        async for piece in response.chunks():
            sizes.append(len(piece))
            seen.append(len(ticks))
        other.cancel()
        assert sum(sizes) == 8 << 20
        assert max(sizes) <= rawhttp.DECODE_PIECE
        assert len(set(seen)) >= 8  # the other task ran between the pieces
        response.release()
        pool.close()


def head_with(*fields: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n{}"


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (head_with(*[b"X-A: 1"] * 101), "more than 100 header fields"),
        (head_with(*[b"Set-Cookie: " + b"c" * 1024] * 70), "header fields larger than 64 KiB"),
    ],
    ids=["too-many-fields", "repeated-field-too-large"],
)
async def test_response_head_past_its_limits_fails_the_exchange(reply: bytes, match: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(reply)
        await reader.read()

    server = Scripted(handler)
    async with server:
        pool = OriginPool(server.url)
        with pytest.raises(LimitExceeded, match=match):
            await pool.request("POST", [], b"{}")
        assert not pool._all
        pool.close()


@pytest.mark.parametrize(
    ("opening", "filler"),
    [
        (b"HTTP/1.1 200 OK\r\nX-Endless: ", b"a" * 4096),
        (b"", b"HTTP/1.1 100 Continue\r\n\r\n" * 100),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: ", b"t" * 4096),
    ],
    ids=["endless-field", "endless-interim-responses", "endless-trailer"],
)
async def test_endless_head_fails_once_past_the_limit_and_the_connection_is_closed(
    opening: bytes, filler: bytes
) -> None:
    """The parser keeps an unfinished field in memory: it must stop growing at `MAX_HEAD`, not
    wait for a line end that never comes (the server would stop at 16 MiB)."""
    sent = [0]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(opening)
        while sent[0] < 16 << 20:
            writer.write(filler)
            sent[0] += len(filler)
            await writer.drain()

    server = Scripted(handler)
    async with server:
        pool = OriginPool(server.url)
        with pytest.raises(LimitExceeded, match="larger than 64 KiB"):
            async with asyncio.timeout(5):
                response = await pool.request("POST", [], b"{}")
                await response.read()
        assert sent[0] < 16 << 20
        pool.close()


async def test_released_response_that_never_ends_loses_its_connection_after_the_drain_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An SSE reply whose stream goes on after the reply event: the caller is done with it, and the
    server must not hold a connection (and a file descriptor) per call for ever."""
    monkeypatch.setattr(rawhttp, "DRAIN_TIMEOUT", 0.2)
    hung_up = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nreply\r\n")
        for _ in range(100):  # a trickle, well below MAX_DRAIN, for at most 5 s
            if reader.at_eof():
                break
            writer.write(b"1\r\n.\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
        hung_up.set()

    server = Scripted(handler)
    async with server:
        pool = OriginPool(server.url)
        response = await pool.request("POST", [], b"{}")
        assert await anext(response.chunks()) == b"reply"
        response.release()
        async with asyncio.timeout(3):
            await hung_up.wait()
        assert not pool._all and not pool._idle
        pool.close()
