"""Caps on what a reply to an upstream's httpx2 client (the SDK's path) may cost in memory."""

from __future__ import annotations

import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Final

import anyio.lowlevel
import httpx2

from bastion.gateway import rawhttp

ACCEPT_ENCODING: Final = "gzip, deflate"
"""The only codings asked for, whatever httpx2 could decode (br, zstd): the ones decoded here."""
_DECODABLE: Final = frozenset({"gzip", "x-gzip", "deflate"})
_EVENT_STREAM: Final = "text/event-stream"
_DROPPED: Final = "the reply was dropped"


class BodyRefused(httpx2.StreamError):
    """A reply that is not an event stream broke a cap, or came in a coding not asked for.

    A `StreamError`, because the SDK's streamable-HTTP transport turns one raised while it reads a
    JSON reply into an error for that request only (`Failed to parse JSON response: <this
    message>`); a `TransportError` there would end the whole session, every call in flight with it.
    """


class EventStreamRefused(httpx2.SSEError):
    """An event stream in a coding not asked for, or one that does not decode. An `SSEError`: the
    SDK fails the request a POST's stream answers with this message, and gives up a GET stream
    after its reconnection attempts."""


def cap_responses(client: httpx2.AsyncClient, server: str) -> httpx2.AsyncClient:
    """Install the caps on `client` (an upstream's), naming `server` in their errors; returns it.

    Every reply is checked as it arrives (a response hook, so redirects and an auth flow's own
    requests are covered, and httpx2's proxy routing stays as it is): a `gzip` / `deflate` body is
    decoded here, in pieces of `rawhttp.DECODE_PIECE` with the event loop free in between, and its
    `Content-Encoding` / `Content-Length` headers removed; any other coding is refused. A body that
    is not an event stream may not exceed `rawhttp.MAX_BODY`, as sent or once decoded, as on the raw
    channel. An event stream (`text/event-stream`) has no total: a GET stream lives for days and
    may carry any amount, and what it holds at once is one piece plus the one event the SDK's
    parser buffers (1 MiB at most); an uncoded event stream is left untouched.
    """
    client.headers["Accept-Encoding"] = ACCEPT_ENCODING
    client.event_hooks["response"].append(_ResponseCap(server))
    return client


class _ResponseCap:
    """The response hook of `cap_responses`."""

    def __init__(self, server: str) -> None:
        self._server = server

    async def __call__(self, response: httpx2.Response) -> None:
        headers = response.headers
        codings = [
            coding
            for value in headers.get_list("content-encoding", split_commas=True)
            if (coding := value.strip().lower()) not in ("", "identity")
        ]
        event_stream = headers.get("content-type", "").strip().lower().startswith(_EVENT_STREAM)
        if not codings and event_stream:
            return
        stream = response.stream
        assert isinstance(stream, httpx2.AsyncByteStream)  # an AsyncClient's
        refusal: str | None = None
        if len(codings) > 1 or (codings and codings[0] not in _DECODABLE):
            refusal = (
                f"server {self._server!r} sent a reply in the content coding {', '.join(codings)!r}, which the "
                f"gateway did not ask for (it asks for {ACCEPT_ENCODING} only): {_DROPPED}; that server should "
                f"honour Accept-Encoding"
            )
        elif not event_stream and _declared_length(headers) > rawhttp.MAX_BODY:
            refusal = self.too_large(once_decoded=False)
        response.stream = _CappedStream(
            self,
            stream,
            coding=codings[0] if codings else None,
            event_stream=event_stream,
            refusal=refusal,
        )
        if codings:
            del headers["content-encoding"]  # decoded here: what httpx2 gets is as it was before coding
            headers.pop("content-length", None)

    def too_large(self, *, once_decoded: bool) -> str:
        return (
            f"server {self._server!r} sent a response body larger than {rawhttp.amount(rawhttp.MAX_BODY)}"
            f"{' once decoded' if once_decoded else ''}, more than the gateway accepts: {_DROPPED} — "
            f"check that server, or ask it for less"
        )

    def error(self, message: str, event_stream: bool) -> httpx2.StreamError | httpx2.SSEError:
        return EventStreamRefused(message) if event_stream else BodyRefused(message)

    def undecodable(self, coding: str) -> str:
        return f"server {self._server!r} sent a {coding} body that does not decode: {_DROPPED}"


def _declared_length(headers: httpx2.Headers) -> int:
    value = headers.get("content-length", "").strip()
    return int(value) if value.isdigit() else 0


class _CappedStream(httpx2.AsyncByteStream):
    """A response body, decoded (for a coding) and counted (unless an event stream) as it arrives."""

    def __init__(
        self,
        cap: _ResponseCap,
        inner: httpx2.AsyncByteStream,
        *,
        coding: str | None,
        event_stream: bool,
        refusal: str | None,
    ) -> None:
        self._cap = cap
        self._inner = inner
        self._coding = coding
        self._event_stream = event_stream
        self._refusal = refusal

    @property
    def elapsed(self) -> object:
        # httpx2's Response.elapsed reads it off the stream it bound (BoundAsyncStream).
        return getattr(self._inner, "elapsed", None)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        cap, event_stream = self._cap, self._event_stream
        if self._refusal is not None:
            raise cap.error(self._refusal, event_stream)
        inflater = _Inflater(self._coding) if self._coding is not None else None
        limit = None if event_stream else rawhttp.MAX_BODY
        sent = decoded = 0
        chunks = self._inner.__aiter__()
        try:
            async for chunk in chunks:
                sent += len(chunk)
                if limit is not None and sent > limit:
                    raise cap.error(cap.too_large(once_decoded=False), event_stream)
                if inflater is None:
                    yield chunk
                    continue
                try:
                    for piece in inflater.pieces(chunk):
                        decoded += len(piece)
                        if limit is not None and decoded > limit:
                            raise cap.error(cap.too_large(once_decoded=True), event_stream)
                        yield piece
                        if len(piece) >= rawhttp.DECODE_PIECE:  # more may follow: let others run first
                            await anyio.lowlevel.checkpoint()
                except zlib.error:
                    raise cap.error(cap.undecodable(inflater.coding), event_stream) from None
            if inflater is not None:
                try:
                    rest = inflater.flush()
                except zlib.error:
                    raise cap.error(cap.undecodable(inflater.coding), event_stream) from None
                if limit is not None and decoded + len(rest) > limit:
                    raise cap.error(cap.too_large(once_decoded=True), event_stream)
                if rest:
                    yield rest
        finally:
            if isinstance(chunks, AsyncGenerator):
                await chunks.aclose()

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Inflater:
    """`gzip` or `deflate` (zlib-wrapped, or raw as some servers send it, like httpx2 accepts),
    decoded at most `rawhttp.DECODE_PIECE` bytes per step."""

    def __init__(self, coding: str) -> None:
        self.coding = "deflate" if coding == "deflate" else "gzip"
        self._first = self.coding == "deflate"
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS if self._first else 16 + zlib.MAX_WBITS)

    def pieces(self, data: bytes) -> Iterator[bytes]:
        try:
            piece = self._zlib.decompress(data, rawhttp.DECODE_PIECE)
        except zlib.error:
            if not self._first:
                raise
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, without the zlib wrapper
            piece = self._zlib.decompress(data, rawhttp.DECODE_PIECE)
        self._first = False
        while True:
            if piece:
                yield piece
            tail = self._zlib.unconsumed_tail
            if not tail:
                return
            piece = self._zlib.decompress(tail, rawhttp.DECODE_PIECE)

    def flush(self) -> bytes:
        return self._zlib.flush()
