from __future__ import annotations

import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp

from bastion.config.catalog import CatalogEntry
from bastion.gateway.front import FastLane, fast_lane_protocol
from bastion.gateway.security import GatewaySecurityMiddleware

SERVERS = Path(__file__).parent / "servers"
ECHO = str(SERVERS / "echo_server.py")
SILENT = str(SERVERS / "silent_server.py")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def stdio_entry(name: str, *extra: str, **fields: Any) -> CatalogEntry:
    """A catalog entry running the echo test server over stdio."""
    return CatalogEntry(name=name, command=[sys.executable, ECHO, "--name", name, *extra], **fields)


def remote_entry(name: str, url: str, **fields: Any) -> CatalogEntry:
    return CatalogEntry(name=name, type="remote", remote={"url": url}, **fields)


class _QuietUvicorn(uvicorn.Server):
    def capture_signals(self) -> Any:  # the test process keeps its own signal handling
        return _Null()


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


async def serve_in_process(app: ASGIApp, http: Any = "auto") -> AsyncIterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 (free port) inside the test's event loop; yields the
    base URL. `http` is uvicorn's protocol (e.g. the fast lane's, see `front_of`)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1, http=http)
    server = _QuietUvicorn(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        while not server.started:
            await anyio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
    sock.close()


def front_of(app: Starlette, front: str) -> tuple[ASGIApp, Any]:
    """What `gateway run` serves for an `http_app`: "asgi" = the app as is (the lean path as an
    ASGI layer); "lane" = behind the security middleware with the fast lane's protocol (front.py),
    as the runtime serves it. Returns (app, uvicorn protocol) for `serve_in_process`."""
    if front == "asgi":
        return app, "auto"
    security = GatewaySecurityMiddleware(app, token=None, listen_host="127.0.0.1", listen_port=0)
    return security, fast_lane_protocol(FastLane(security, app.state.lean_path))
