"""A byte forwarder that knows nothing of MCP: the floor a gateway's added latency is read against.

    python raw_forwarder.py --port P --upstream http://127.0.0.1:N/mcp [--client httpx2|rawhttp]

Every request to 127.0.0.1:P (any path) is sent to the upstream URL with the same method, headers
(minus hop-by-hop ones) and body; the upstream's status, headers and body stream back. Same
listener stack as `bastion gateway run` (uvicorn with httptools); the upstream client is httpx2
(what a typical Python proxy uses) or Bastion's own `rawhttp` pool (what Bastion's hot path uses),
so "Bastion − this" is what understanding MCP costs on top of moving the bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import Any

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--client", choices=["httpx2", "rawhttp"], default="httpx2")
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY, as Bastion
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(128)
    sock.setblocking(False)
    config = uvicorn.Config(build(args.upstream, args.client), log_level="warning", lifespan="on", http="httptools")
    asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))


if __name__ == "__main__":
    main()
