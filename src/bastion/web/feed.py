"""The page's change feed: a Server-Sent Events stream (`text/event-stream`, WHATWG HTML §9.2)
that says "something changed, re-fetch" whenever

- the store reports a change (`Store.watch()`: any process — the CLI, a gateway refreshing a
  token, another replica on a shared store);
- `registry.yaml`, `catalog.yaml` or `config.yaml` under `$BASTION_HOME` changed (polled by
  file signature: cheap, and blind to how the file was replaced);
- the gateway's status rows changed (when the page runs inside a gateway);
- the page itself did something (`Pokes`).

The events carry only the names of the sources, never a value. Bursts are coalesced.
Each connection runs its own sources and stops them when the client goes away.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Hashable
from pathlib import Path

import anyio
from starlette.types import Message, Receive, Scope, Send

from bastion.errors import StoreError
from bastion.store.base import Store
from bastion.store.models import StoreEvent

logger = logging.getLogger(__name__)

WATCHED_FILES = ("registry.yaml", "catalog.yaml", "config.yaml")
POLL_INTERVAL = 0.5
COALESCE_DELAY = 0.05
KEEPALIVE_INTERVAL = 15.0
STORE_RETRY_DELAY = 2.0
RETRY_MS = 2000
"""How long a browser waits before reconnecting (the `retry:` field)."""


class Pokes:
    """In-process changes (a notice, a flow started) that every open stream should hear about,
    and the page's shutdown (`close`: every stream ends, so the server can stop at once).
    Safe to create outside an event loop."""

    def __init__(self) -> None:
        self._event: anyio.Event | None = None
        self.closed = False

    def poke(self) -> None:
        event, self._event = self._event, None
        if event is not None:
            event.set()

    def close(self) -> None:
        self.closed = True
        self.poke()

    async def wait(self) -> None:
        if self.closed:
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()


def file_signature(home: Path) -> tuple[tuple[str, int, int, int] | None, ...]:
    """(inode, size, mtime) of each watched file, None when absent."""
    signature: list[tuple[str, int, int, int] | None] = []
    for name in WATCHED_FILES:
        try:
            st = os.stat(home / name)
        except OSError:
            signature.append(None)
            continue
        signature.append((name, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(signature)


class _Changes:
    """Sources record what changed; the writer sends one event per burst."""

    def __init__(self) -> None:
        self.sources: set[str] = set()
        self._event = anyio.Event()

    def add(self, source: str) -> None:
        self.sources.add(source)
        self._event.set()

    async def take(self) -> list[str]:
        await self._event.wait()
        await anyio.sleep(COALESCE_DELAY)
        self._event = anyio.Event()
        taken, self.sources = sorted(self.sources), set()
        return taken


def sse_message(event: str | None = None, data: str = "", *, comment: str | None = None) -> bytes:
    """One event-stream message. `data` must not contain a newline (ours never do)."""
    if comment is not None:
        return f": {comment}\n\n".encode()
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data}\n\n".encode()


class EventStream:
    """ASGI endpoint for GET `/events`. A raw ASGI app rather than a streaming response, so the
    sources run in a task group that ends when the client disconnects."""

    def __init__(self, store: Store, home: Path, pokes: Pokes, gateway_signature: Callable[[], Hashable]) -> None:
        self.store = store
        self.home = home
        self.pokes = pokes
        self.gateway_signature = gateway_signature
        self._gateway_broken = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        changes = _Changes()
        if self.pokes.closed:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        # Start watching before `hello` goes out: a change made once the client saw `hello` is reported.
        watch = self.store.watch()
        files, gateway = file_signature(self.home), self._gateway()
        async with anyio.create_task_group() as tg:

            async def until_disconnect() -> None:
                while True:
                    message: Message = await receive()
                    if message["type"] == "http.disconnect":
                        tg.cancel_scope.cancel()
                        return

            async def write(body: bytes) -> None:
                try:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                except OSError:  # the connection is gone
                    tg.cancel_scope.cancel()

            async def writer() -> None:
                await write(f"retry: {RETRY_MS}\n".encode() + sse_message("hello", "ready"))
                while True:
                    with anyio.move_on_after(KEEPALIVE_INTERVAL):
                        sources = await changes.take()
                        await write(sse_message("change", " ".join(sources)))
                        continue
                    await write(sse_message(comment="keepalive"))

            tg.start_soon(until_disconnect)
            tg.start_soon(writer)
            tg.start_soon(self._store_source, changes, watch)
            tg.start_soon(self._poll_source, changes, files, gateway)
            tg.start_soon(self._poke_source, changes, tg.cancel_scope)
        if self.pokes.closed:  # the page is shutting down: end the response cleanly
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _store_source(self, changes: _Changes, watch: AsyncIterator[StoreEvent]) -> None:
        while True:
            try:
                async for _ in watch:
                    changes.add("store")
                return  # the store was closed (shutting down)
            except StoreError as exc:
                logger.warning("the page cannot watch the store (%s); retrying", exc)
            finally:
                await _close(watch)
            await anyio.sleep(STORE_RETRY_DELAY)
            watch = self.store.watch()
            changes.add("store")  # whatever changed meanwhile

    async def _poll_source(self, changes: _Changes, files: Hashable, gateway: Hashable) -> None:
        while True:
            await anyio.sleep(POLL_INTERVAL)
            now_files = file_signature(self.home)  # three stat calls: not worth a thread
            if now_files != files:
                files = now_files
                changes.add("config")
            now_gateway = self._gateway()
            if now_gateway != gateway:
                gateway = now_gateway
                changes.add("gateway")

    def _gateway(self) -> Hashable:
        """The gateway's status signature; a failing status callable is logged once and ignored
        (the stream goes on with the other sources)."""
        if self._gateway_broken:
            return None
        try:
            return self.gateway_signature()
        except Exception:  # task boundary: a broken status callable must not end every stream
            logger.exception("gateway_status() failed; the page stops following the gateway's status")
            self._gateway_broken = True
            return None

    async def _poke_source(self, changes: _Changes, stop: anyio.CancelScope) -> None:
        while True:
            await self.pokes.wait()
            if self.pokes.closed:
                stop.cancel()
                return
            changes.add("page")


async def _close(watch: AsyncIterator[StoreEvent]) -> None:
    """The backends' watch() are async generators: close them here, not in the garbage collector."""
    aclose = getattr(watch, "aclose", None)
    if aclose is not None:
        with anyio.CancelScope(shield=True):
            await aclose()
