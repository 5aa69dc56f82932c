"""One `send` per response instead of two: uvicorn's httptools protocol with coalesced writes.

uvicorn writes a response's status line and headers as soon as the app sends
`http.response.start`, and the body separately. On loopback each `send` costs a syscall plus the
kernel's receive path for the peer, and a client that reads as data arrives wakes up twice
(docs/benchmarks.md, "socket sends"). Here the connection's transport is wrapped so that every
write made during one event-loop step is joined and sent once, at the start of the next step
(`loop.call_soon`): the head and body of a JSON reply leave together; a stream's events still
leave as they are produced, one step later at most.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Final, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bastion.gateway.switches import switched_on

COALESCE_ENV: Final = "BASTION_COALESCE"
HEAD_TIMEOUT: Final = 10.0
"""Seconds from a connection's first byte (or its opening) to the end of a request's headers."""
HEAD_TIMEOUT_MESSAGE: Final = b"request headers did not arrive in time\n"
_HEAD_TIMEOUT_REPLY: Final = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n" % len(HEAD_TIMEOUT_MESSAGE)
) + HEAD_TIMEOUT_MESSAGE


def coalesce_enabled() -> bool:
    """On unless `BASTION_COALESCE=0` (for measuring it against uvicorn's own protocol)."""
    return switched_on(COALESCE_ENV)


class CoalescingTransport:
    """Delegates to the real transport; `write`s of one loop step become one `write`."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def write_now(self, data: bytes) -> None:
        """Write `data` at once, after anything still pending (a reply known to be whole needs
        no wait for the rest of the loop step)."""
        self._pending.append(data)
        self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(chunk) for chunk in self._pending)

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()  # what was written before close() still goes out, as with the real transport
        self._transport.close()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._flush()  # an upgrade (websocket) takes over the connection after what was written
        self._transport.set_protocol(protocol)

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HeadDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on request headers (slowloris).

    uvicorn times only the idle gap between keep-alive requests: a client that opens a connection
    and sends its headers a byte at a time holds it (and a slot of `limit_concurrency`) forever.
    Here a timer runs from the connection's opening, and from the first byte of each later
    request, to the end of that request's headers; past `head_timeout` the client gets 408 and
    the connection is closed. Body deadlines are the app's and the fast lane's (security.py)."""

    head_timeout: ClassVar[float] = HEAD_TIMEOUT
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_head_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        self.transport.write(_HEAD_TIMEOUT_REPLY)
        self.transport.close()


def with_head_timeout(protocol: type[HeadDeadlineProtocol], seconds: float) -> type[HeadDeadlineProtocol]:
    """`protocol` with its own header deadline (for `uvicorn.Config(http=...)`)."""
    return type(protocol.__name__, (protocol,), {"head_timeout": seconds})


class CoalescingHttpToolsProtocol(HeadDeadlineProtocol):
    """uvicorn's httptools protocol on a `CoalescingTransport` (pass as `uvicorn.Config(http=...)`),
    with the header deadline of `HeadDeadlineProtocol`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: uvloop's transports do not subclass asyncio.Transport.
        wrapped = CoalescingTransport(cast(asyncio.Transport, transport), self.loop)
        super().connection_made(cast(asyncio.BaseTransport, wrapped))
