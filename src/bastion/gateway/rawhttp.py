"""A small HTTP/1.1 client for the hot path: keep-alive connections to one origin (RFC 9112).

https://www.rfc-editor.org/rfc/rfc9112

`OriginPool.request()` writes a whole request in one `write` (one syscall, no Nagle wait) on an
idle keep-alive connection or a new one, and parses the response with `httptools` (llhttp, the
parser uvicorn uses). It exists because the general-purpose client (httpx2/httpcore2 over h11)
costs about as much CPU per request as the echo server it talks to (docs/benchmarks.md); the
hot path of a gateway posts small JSON bodies to one origin over and over.

What it does: `Content-Length` and chunked bodies, bodies that end with the connection, `gzip` /
`deflate` content codings, TLS with the context it is given, streaming of a body as it arrives
(for SSE responses). What a response may cost is bounded: its head (`MAX_HEAD`, `MAX_HEADERS`,
interim responses and trailers included), its body as sent and once decoded (`MAX_BODY`, decoded
in pieces so that other requests are served in between), and the time a released response may
keep its connection (`DRAIN_TIMEOUT`); a response past a limit fails with `LimitExceeded` and its
connection is closed. A request is written at most once: an idle connection is checked before it is
reused (one that the server closed, or that has bytes nobody asked for, is discarded), and a
connection that fails once the request went out is an error for that request, never a resend —
a server that read a `tools/call` and then hung up may have run it (RFC 9112 §9.3.1 leaves the
retry of a non-idempotent request to the user). What it does not do: proxies, HTTP/2, redirects,
`Expect: 100-continue`, request bodies that are not one `bytes` — callers that need any of those
use httpx2.
"""

from __future__ import annotations

import asyncio
import collections
import select
import ssl
import zlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Final, cast
from urllib.parse import urlsplit

import httptools

MAX_IDLE: Final = 32
"""Idle keep-alive connections kept per origin; more are closed when released."""
MAX_DRAIN: Final = 1 << 20
"""Bytes a released-but-unfinished response may still deliver before its connection is closed."""
DRAIN_TIMEOUT: Final = 5.0
"""Seconds a released-but-unfinished response may take to end before its connection is closed."""
MAX_BODY: Final = 256 << 20
"""A response body larger than this, as sent or once decoded, fails the exchange instead of filling
memory. Generous on purpose: the SDK's transport reads a JSON reply with no limit at all, and a
`resources/read` of a file is legitimately large; this bounds what one call can hold (a gzip bomb
of 1 MiB → 1 GiB stops here), not what a healthy server sends."""
DECODE_PIECE: Final = 1 << 20
"""Decoded bytes produced per step: a body that inflates a lot is decoded a piece at a time, with
the event loop serving other requests in between (httpx2 decodes in the same 1 MiB steps)."""
MAX_HEAD: Final = 64 << 10
"""Bytes of a response's head (status line, header fields, interim responses) and of its trailers;
the parser holds an unfinished field in memory, so an endless one must stop somewhere. The SDK's
transport (h11 via httpcore2) stops at 100 KiB."""
MAX_HEADERS: Final = 100
"""Header and trailer fields per response (a healthy MCP reply has about ten)."""


class RawHTTPError(Exception):
    """The exchange failed below HTTP: connect, reset, a malformed or oversized response.

    `request_unread` is True only when the server provably never read the request (the connection
    could not be opened), so sending it again cannot run it twice.
    """

    def __init__(self, message: str, *, request_unread: bool = False) -> None:
        super().__init__(message)
        self.request_unread = request_unread


class LimitExceeded(RawHTTPError):
    """The response broke one of the limits above (or the event-stream limit of wire.py); the
    message says which, as a phrase that follows the server's name ("sent ... larger than ...")."""


def amount(size: int) -> str:
    """A byte count as people read it in an error message: `1 MiB`, `64 KiB`, `1000 bytes`."""
    if size >= 1 << 20 and size % (1 << 20) == 0:
        return f"{size >> 20} MiB"
    if size >= 1 << 10 and size % (1 << 10) == 0:
        return f"{size >> 10} KiB"
    return f"{size} bytes"


@dataclass(frozen=True)
class Origin:
    """Where requests go: scheme, host, port, the `Host` header and the request target."""

    scheme: str
    host: str
    port: int
    authority: str
    target: str

    @classmethod
    def from_url(cls, url: str) -> Origin:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL (scheme {scheme!r})")  # the URL itself may carry a key
        if parts.username is not None or parts.password is not None:
            raise ValueError("URLs with user info are not supported here")
        port = parts.port or (443 if scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        authority = parts.netloc
        _check_header_value(authority)
        if any(c.isspace() or c == "\0" for c in target):
            raise ValueError("the URL's path or query contains whitespace")
        return cls(scheme, parts.hostname, port, authority, target)


def _check_header_value(value: str) -> None:
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError("header values must not contain CR, LF or NUL")


def encode_request(method: str, origin: Origin, headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    """The request head and body as one byte string. Raises ValueError for a header that could
    split the request (CR/LF/NUL in a name or value, a colon or space in a name)."""
    lines = [f"{method} {origin.target} HTTP/1.1", f"Host: {origin.authority}"]
    for name, value in headers:
        if not name or any(c in name for c in ": \t\r\n\0"):
            raise ValueError(f"invalid header name {name!r}")
        _check_header_value(value)
        lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("latin-1") + body


class Response:
    """One response: status and headers at once, the body as it arrives.

    Read it with `read()` (the whole body) or `chunks()` (pieces as they come); `release()` when
    done. A released response whose body is still arriving keeps its connection until the body
    ends (then the connection is reused), or `MAX_DRAIN` bytes or `DRAIN_TIMEOUT` seconds pass
    (then it is closed).
    """

    def __init__(self, connection: _Connection, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers
        """Lower-cased names; repeated fields joined with ", " (RFC 9110 §5.3)."""
        self._connection = connection
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._decoded = 0
        self._complete = False
        self._error: RawHTTPError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False
        coding = headers.get("content-encoding", "").strip().lower()
        self._decoder = None if coding in ("", "identity") else _decoder(coding)

    # -- fed by the connection ------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._size += len(data)
        if self._released:
            if self._size > MAX_DRAIN:
                self._connection.close()
            return
        if self._size > MAX_BODY:
            self._fail(LimitExceeded(f"sent a response body larger than {amount(MAX_BODY)}"))
            self._connection.close()
            return
        if data:
            self._chunks.append(data)  # as sent: `chunks()` decodes, a piece at a time
            self._wake()

    def _finish(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, error: RawHTTPError) -> None:
        if not self._complete and self._error is None:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- read by the caller ---------------------------------------------------------------------

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's pieces as they arrive (decoded); ends with the body, raises `RawHTTPError` if
        it breaks or `LimitExceeded` once it decodes to more than `MAX_BODY`."""
        decoder = self._decoder
        while True:
            while self._chunks:
                data = self._chunks.popleft()
                if decoder is None:
                    yield data
                    continue
                piece = self._decode(decoder, data)
                while True:
                    if piece:
                        yield piece
                    if not decoder.unconsumed_tail:
                        break
                    await asyncio.sleep(0)  # it inflates: let the loop serve the others between pieces
                    piece = self._decode(decoder, decoder.unconsumed_tail)
            if self._error is not None:
                raise self._error
            if self._complete:
                if decoder is not None:
                    tail = self._decode(decoder, b"", flush=True)
                    if tail:
                        yield tail
                return
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _decode(self, decoder: zlib._Decompress, data: bytes, *, flush: bool = False) -> bytes:
        try:
            piece = decoder.flush() if flush else decoder.decompress(data, DECODE_PIECE)
        except zlib.error as exc:
            raise self._broke(RawHTTPError(f"undecodable response body: {exc}")) from None
        self._decoded += len(piece)
        if self._decoded > MAX_BODY:
            raise self._broke(LimitExceeded(f"sent a response body larger than {amount(MAX_BODY)} once decoded"))
        return piece

    def _broke(self, error: RawHTTPError) -> RawHTTPError:
        """The reader found the body unusable: the rest is not read, the connection not reused."""
        self._error = error
        self._chunks.clear()
        self._connection.close()
        return error

    async def read(self) -> bytes:
        """The whole body."""
        parts = [chunk async for chunk in self.chunks()]
        return b"".join(parts)

    def abort(self) -> None:
        """Give up on this response now: its connection is closed unless the body already ended
        (on the 2026 wire, closing a request's response stream is how it is cancelled)."""
        if not self._complete:
            self._connection.close()
        self.release()

    def release(self) -> None:
        """Done with this response (idempotent): the connection goes back to the pool once the
        body has ended, or is closed if it never does."""
        if self._released:
            return
        self._released = True
        self._chunks.clear()
        self._connection.released(self)


def _decoder(coding: str) -> zlib._Decompress:
    if coding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if coding == "deflate":
        return zlib.decompressobj()
    raise RawHTTPError(f"unsupported content coding {coding!r}")


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one exchange at a time (no pipelining)."""

    def __init__(self, pool: OriginPool) -> None:
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._headers: dict[str, str] = {}
        self._fields = 0
        """Header and trailer fields of this exchange's response(s) so far, and their bytes."""
        self._field_bytes = 0
        self._stalled = 0
        """Bytes fed since the parser last gave a final head or body bytes: a head or trailer
        section (or interim responses) it is accumulating."""
        self._head: asyncio.Future[Response] | None = None
        self._response: Response | None = None
        self._body_until_close = False
        self._finished_unreleased: Response | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._poll: select.poll | None = None
        self.closed = False

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass asyncio.Transport
        sock = transport.get_extra_info("socket")
        if sock is not None and hasattr(select, "poll"):
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN)

    def data_received(self, data: bytes) -> None:
        if self._head is None and self._response is None:
            self.close()  # bytes nobody asked for: the connection is not safe to reuse
            return
        self._stalled += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # what a callback raised (httptools chains it)
            self._broken(cause if isinstance(cause, LimitExceeded) else RawHTTPError(f"malformed HTTP response: {exc}"))
            return
        if self._stalled > MAX_HEAD and (self._head is not None or self._response is not None):
            self._broken(LimitExceeded(f"sent a response head or trailer section larger than {amount(MAX_HEAD)}"))

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_drain_timer()
        self.closed = True
        self._pool.forget(self)
        response = self._response
        if response is not None and self._body_until_close and not response._complete:
            response._finish()  # a body delimited by the connection closing (RFC 9112 §6.3 item 8)
            return
        if self._head is not None and not self._head.done():
            self._head.set_exception(RawHTTPError("the server closed the connection before it answered"))
        if response is not None:
            response._fail(RawHTTPError("the server closed the connection mid-response"))

    # -- httptools callbacks --------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        self._field_bytes += len(name) + len(value)
        if self._fields > MAX_HEADERS:
            raise LimitExceeded(f"sent a response with more than {MAX_HEADERS} header fields")
        if self._field_bytes > MAX_HEAD:
            raise LimitExceeded(f"sent response header fields larger than {amount(MAX_HEAD)}")
        if self._response is not None:
            return  # a trailer field (RFC 9112 §7.1.2): counted, never merged into any response's head
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        self._headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        headers, self._headers = self._headers, {}
        if 100 <= status < 200:
            return  # interim response (RFC 9110 §15.2); the final one follows
        self._stalled = 0
        head = self._head
        self._head = None
        if head is None or head.done():
            self._broken(RawHTTPError("a response nobody asked for"))
            return
        try:
            response = Response(self, status, headers)
        except RawHTTPError as exc:
            self._broken(exc, head)
            return
        self._response = response
        self._body_until_close = (
            "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "").lower()
        )
        head.set_result(response)

    def on_body(self, body: bytes) -> None:
        self._stalled = 0
        if self._response is not None:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        response = self._response
        if response is None:
            return
        keep = self._parser.should_keep_alive() and not self._body_until_close
        response._finish()
        self._response = None
        if not keep:
            self.close()
        elif response._released:
            self._stop_drain_timer()
            self._pool.give_back(self)
        else:
            self._finished_unreleased = response

    # -- used by the pool and the response ------------------------------------------------------

    def reusable(self) -> bool:
        """Whether this idle connection can carry a request: open, and nothing to read on its socket
        (a close from the server or stray bytes may be in the kernel before the loop has seen them)."""
        if self.closed or self._transport is None or self._transport.is_closing():
            return False
        return self._poll is None or not self._poll.poll(0)

    async def exchange(self, payload: bytes) -> Response:
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        self._head = head = loop.create_future()
        self._parser = httptools.HttpResponseParser(self)
        self._fields = self._field_bytes = self._stalled = 0
        self._headers = {}
        self._transport.write(payload)
        try:
            response: Response = await head
            return response
        except BaseException:
            if self._head is head:
                self._head = None
            if not head.done() or head.cancelled():
                self.close()  # abandoned mid-exchange: the connection's state is unknown
            raise

    def released(self, response: Response) -> None:
        if self._finished_unreleased is response:
            self._finished_unreleased = None
            self._pool.give_back(self)
        elif response._complete:
            pass  # the connection was closed after the body
        elif not self.closed:  # still arriving: `on_message_complete` gives the connection back, in time
            loop = asyncio.get_running_loop()
            self._drain_timer = loop.call_later(DRAIN_TIMEOUT, self.close)

    def _stop_drain_timer(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None

    def _broken(self, error: RawHTTPError, head: asyncio.Future[Response] | None = None) -> None:
        head = head if head is not None else self._head
        self._head = None
        if head is not None and not head.done():
            head.set_exception(error)
        if self._response is not None:
            self._response._fail(error)
        self.close()

    def close(self) -> None:
        self._stop_drain_timer()
        if not self.closed:
            self.closed = True
            self._pool.forget(self)
            if self._transport is not None:
                self._transport.close()


class OriginPool:
    """Keep-alive connections to one origin. Not thread-safe; one event loop."""

    def __init__(self, url: str, *, ssl_context: ssl.SSLContext | None = None, connect_timeout: float = 10.0) -> None:
        self.origin = Origin.from_url(url)
        if self.origin.scheme == "https" and ssl_context is None:
            ssl_context = ssl.create_default_context()
        self._ssl = ssl_context if self.origin.scheme == "https" else None
        self._connect_timeout = connect_timeout
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._closed = False
        self.connections_opened = 0
        """How many connections this pool opened (tests and the bench read it)."""

    async def request(self, method: str, headers: Iterable[tuple[str, str]], body: bytes) -> Response:
        """Send one request; the response once its head arrived. Raises `RawHTTPError` (and
        ValueError for headers that could split the request, before anything is sent)."""
        payload = encode_request(method, self.origin, headers, body)
        connection = self._take_idle() or await self._connect()
        return await connection.exchange(payload)

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable():
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        if self._closed:
            raise RawHTTPError("the connection pool is closed", request_unread=True)
        loop = asyncio.get_running_loop()
        origin = self.origin
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self),
                    origin.host,
                    origin.port,
                    ssl=self._ssl,
                    server_hostname=origin.host if self._ssl is not None else None,
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            raise RawHTTPError(f"cannot connect to {origin.authority}: {reason}", request_unread=True) from None
        self.connections_opened += 1
        self._all.add(protocol)
        return protocol

    def give_back(self, connection: _Connection) -> None:
        if self._closed or connection.closed or len(self._idle) >= MAX_IDLE:
            connection.close()
            return
        self._idle.append(connection)

    def forget(self, connection: _Connection) -> None:
        self._all.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)

    def close(self) -> None:
        """Close every connection (idle or busy); later requests fail."""
        self._closed = True
        for connection in list(self._all):
            connection.close()
        self._idle.clear()
