"""A byte forwarder that knows nothing of MCP: the floor a gateway's added latency is read against.

    python raw_forwarder.py --port P --upstream http://127.0.0.1:N/mcp [--client httpx2|rawhttp] [--front asyncio]

Every request to 127.0.0.1:P (any path) is sent to the upstream URL with the same method, headers
(minus hop-by-hop ones) and body; the upstream's status, headers and body come back. Same
listener stack as `bastion gateway run` (uvicorn with httptools); the upstream client is httpx2
(what a typical Python proxy uses) or Bastion's own `rawhttp` pool (what Bastion's hot path uses),
so "Bastion − this" is what understanding MCP costs on top of moving the bytes.

`--front asyncio` replaces uvicorn by the least a Python forwarder can be: an asyncio protocol
with the httptools parser, one task per request, the reply buffered and written at once
(rawhttp client only). It is the floor of one extra Python process on the path, on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import Any

import httptools
import httpx2
import uvicorn

from bastion.gateway.rawhttp import OriginPool

HOP_BY_HOP = {b"host", b"content-length", b"connection", b"transfer-encoding", b"keep-alive"}


def build(upstream: str, client_kind: str) -> Any:
    http = httpx2.AsyncClient(timeout=60.0, trust_env=False)
    pool = OriginPool(upstream)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
        if client_kind == "rawhttp":
            response = await pool.request(
                scope["method"], [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers], body
            )
            try:
                out = [
                    (k.encode("latin-1"), v.encode("latin-1"))
                    for k, v in response.headers.items()
                    if k.encode("latin-1") not in HOP_BY_HOP or k == "content-length"
                ]
                await send({"type": "http.response.start", "status": response.status, "headers": out})
                async for chunk in response.chunks():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                response.release()
            return
        request = http.build_request(scope["method"], upstream, headers=headers, content=body)
        upstream_response = await http.send(request, stream=True)
        try:
            out = [
                (k, v)
                for k, v in upstream_response.headers.raw
                if k.lower() not in HOP_BY_HOP or k.lower() == b"content-length"
            ]
            await send({"type": "http.response.start", "status": upstream_response.status_code, "headers": out})
            async for chunk in upstream_response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await upstream_response.aclose()

    return app


class _Bare(asyncio.Protocol):
    """One client connection of the bare asyncio front."""

    def __init__(self, pool: OriginPool) -> None:
        self.pool = pool
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.headers, self.body = [], []

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() not in HOP_BY_HOP:
            self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        task = asyncio.get_running_loop().create_task(self.forward(method, self.headers, b"".join(self.body)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def forward(self, method: str, headers: list[tuple[str, str]], body: bytes) -> None:
        response = await self.pool.request(method, headers, body)
        try:
            data = await response.read()
        finally:
            response.release()
        out = [b"HTTP/1.1 %d OK\r\n" % response.status]
        out += [f"{k}: {v}\r\n".encode("latin-1") for k, v in response.headers.items() if k.encode() not in HOP_BY_HOP]
        out.append(b"content-length: %d\r\n\r\n" % len(data))
        out.append(data)
        assert self.transport is not None
        self.transport.write(b"".join(out))


async def _serve_bare(sock: socket.socket, upstream: str) -> None:
    pool = OriginPool(upstream)
    server = await asyncio.get_running_loop().create_server(lambda: _Bare(pool), sock=sock)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--client", choices=["httpx2", "rawhttp"], default="httpx2")
    parser.add_argument("--front", choices=["uvicorn", "asyncio"], default="uvicorn")
    args = parser.parse_args()
    if args.front == "asyncio" and args.client != "rawhttp":
        parser.error("--front asyncio goes with --client rawhttp")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY, as Bastion
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(128)
    sock.setblocking(False)
    if args.front == "asyncio":
        asyncio.run(_serve_bare(sock, args.upstream))
        return
    config = uvicorn.Config(build(args.upstream, args.client), log_level="warning", lifespan="on", http="httptools")
    asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))


if __name__ == "__main__":
    main()
