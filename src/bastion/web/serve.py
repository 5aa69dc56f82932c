"""`bastion ui`: the OAuth page on its own uvicorn listener (loopback by default).

Every browser signs in with the gateway token (`BASTION_GATEWAY_TOKEN`, or the one in
`$BASTION_HOME/gateway-token`), exactly like the gateway's own listener; loopback included,
unless `gateway: {require_token: false}`.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
from typing import Any, TextIO

import anyio
import uvicorn
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from bastion.gateway.runtime import TLSFiles, bind_listener
from bastion.gateway.security import gateway_token
from bastion.oauth.rfc8252 import is_loopback_host
from bastion.oauth.useragent import BrowserUserAgent
from bastion.service import Bastion
from bastion.web.app import close_ui, create_ui_app, mount_ui

DEFAULT_PORT = 8812
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: `serve_ui` stops it on SIGINT/SIGTERM."""

    def capture_signals(self) -> Any:
        return contextlib.nullcontext()


async def _outside_ui(scope: Scope, receive: Receive, send: Send) -> None:
    """Everything but /ui: `/` goes to the page, the rest is 404."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/":
        await RedirectResponse("/ui/", status_code=307)(scope, receive, send)
    else:
        await PlainTextResponse("not found", status_code=404)(scope, receive, send)


def standalone_app(ui: ASGIApp) -> ASGIApp:
    """`ui` at /ui, `/` redirecting to it, 404 elsewhere: what `bastion ui` serves."""
    return mount_ui(_outside_ui, ui)


def page_url(host: str, port: int, *, https: bool = False) -> str:
    shown = "127.0.0.1" if host in WILDCARD_HOSTS else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"{'https' if https else 'http'}://{shown}:{port}/ui/"


def allowed_hosts_for(host: str) -> list[str]:
    """The Host names a browser may use besides loopback: the listen address, or for a wildcard
    listener this machine's names."""
    if is_loopback_host(host):
        return []
    if host in WILDCARD_HOSTS:
        return sorted({socket.gethostname(), socket.getfqdn()})
    return [host]


async def serve_ui(
    app: Bastion,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    open_browser: bool = False,
    out: TextIO | None = None,
    tls: TLSFiles | None = None,
) -> None:
    """Serve the page until SIGINT/SIGTERM (over https with `tls`). Prints `Bastion UI: <url>`
    once listening. The caller decides whether plain http may leave loopback (`check_listener`)."""
    out = out or sys.stdout
    sock = bind_listener(host, port)
    try:
        token = gateway_token(app.home, required=app.settings.gateway.require_token)
        ui = create_ui_app(app, token=token, allowed_hosts=allowed_hosts_for(host))
        config = uvicorn.Config(
            standalone_app(ui),
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
            ssl_certfile=str(tls.cert) if tls is not None else None,
            ssl_keyfile=str(tls.key) if tls is not None else None,
        )
        server = _Uvicorn(config)
        url = page_url(host, sock.getsockname()[1], https=tls is not None)
        print(f"Bastion UI: {url}", file=out, flush=True)
        if token is not None:
            print(f"  sign in once per browser at {url}login with the gateway token", file=out, flush=True)
        if open_browser:
            BrowserUserAgent(out=sys.stderr).open(url)
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        close_ui(ui)
                        server.should_exit = True
                        return

            tg.start_soon(stop_on_signal)
            await server.serve(sockets=[sock])
            tg.cancel_scope.cancel()
    finally:
        sock.close()
