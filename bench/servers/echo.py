"""The benchmark's upstream: an `mcp` 2.3.0 `MCPServer` with one `echo` tool (as in the anchors).

    python bench/servers/echo.py                          # stdio
    python bench/servers/echo.py --http                   # streamable HTTP at /mcp on a free port
    python bench/servers/echo.py --http --servers 100 --tools 50
        # one uvicorn app mounting 100 MCPServer apps at /s0/mcp .. /s99/mcp, each with
        # `echo` plus tools t1..t49

HTTP mode prints one JSON line `{"ready": true, "port": N, "pid": P}` once it accepts connections.
Plain uvicorn (h11, asyncio loop), like the anchors' upstream. Exits when stdin reaches EOF (the
launcher holds a pipe), so it never outlives the bench.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.routing import Mount


def build(name: str = "echo", tools: int = 1) -> MCPServer:
    server = MCPServer(name)

    @server.tool()
    def echo(text: str) -> str:
        """Return the text."""
        return text

    for index in range(1, tools):
        server.tool(name=f"t{index}", description=f"Filler tool number {index}.")(_filler(index))
    return server


def _filler(index: int) -> Any:
    def extra(text: str) -> str:
        return f"{index}:{text}"

    return extra


def multi_app(servers: int, tools: int) -> Starlette:
    apps = [build(f"echo{i}", tools).streamable_http_app(streamable_http_path="/mcp") for i in range(servers)]

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for app in apps:
                await stack.enter_async_context(app.router.lifespan_context(app))
            yield

    return Starlette(routes=[Mount(f"/s{i}", app=app) for i, app in enumerate(apps)], lifespan=lifespan)


def _exit_on_stdin_eof(server: uvicorn.Server) -> None:
    def watch() -> None:
        with contextlib.suppress(OSError, ValueError):
            while sys.stdin.buffer.read(4096):
                pass
        server.should_exit = True
        time.sleep(3)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def serve_http(servers: int, tools: int) -> None:
    # proto=IPPROTO_TCP: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto says TCP, and
    # accepted sockets inherit it; with proto 0 every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app: Any = multi_app(servers, tools) if servers > 1 else build("echo", tools).streamable_http_app()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", loop="asyncio", http="h11"))
    if not sys.stdin.isatty():
        _exit_on_stdin_eof(server)

    async def main() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                await task
                raise SystemExit("echo server failed to start")
            await asyncio.sleep(0.01)
        print(json.dumps({"ready": True, "port": port, "pid": os.getpid()}), flush=True)
        await task

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", action="store_true")
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--tools", type=int, default=1)
    args = parser.parse_args()
    if args.http:
        serve_http(args.servers, args.tools)
    else:
        build("echo", args.tools).run()


if __name__ == "__main__":
    main()
