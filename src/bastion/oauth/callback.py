"""The RFC 8252 §7.3 loopback redirect: a one-shot HTTP listener on 127.0.0.1.

It listens on its base path (`/callback`) and every path below it (`/callback/<issuer key>`, the
per-issuer redirect URIs of `rfc9207.issuer_redirect_uri`). The first request there that carries
the `state` of the authorization in progress (`expect`) gets a page telling the user to return to
the terminal, and its path and query parameters go to the flow, which checks the rest. A request
with another `state`, or none, gets a 400 page and does not count: any local process or web page
can send a request to a loopback port, and must not be able to end the authorization
(RFC 6749 §10.12). Other paths (a browser's `/favicon.ico`) get a 404 and do not count either.
"""

from __future__ import annotations

import asyncio
import html
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

import anyio

from bastion.errors import AuthorizationError, CallbackTimeout
from bastion.oauth.rfc8252 import loopback_redirect_uri

logger = logging.getLogger(__name__)

_PAGE = (
    "<!doctype html><html><head><meta charset='utf-8'><title>Bastion</title></head>"
    "<body style='font-family:sans-serif;margin:3em'><h1>{title}</h1><p>{body}</p></body></html>"
)


@dataclass(frozen=True)
class AuthorizationResponse:
    """What arrived at the redirect URI: the path it arrived on and its query parameters."""

    path: str
    params: dict[str, str] = field(repr=False)


class LoopbackCallback:
    """`async with LoopbackCallback(port) as cb: base = cb.redirect_uri; ...; cb.expect(state);
    response = await cb.wait(timeout)`."""

    def __init__(self, port: int, *, path: str = "/callback", host: str = "127.0.0.1") -> None:
        self._port = port
        self._path = path
        self._host = host
        self._server: asyncio.Server | None = None
        self._result: asyncio.Future[AuthorizationResponse] | None = None
        self._state: str | None = None

    @property
    def redirect_uri(self) -> str:
        """The base redirect URI; the listener also answers every path below it."""
        return loopback_redirect_uri(self.port, self._path, self._host)

    def expect(self, state: str) -> None:
        """Only a request carrying this `state` ends `wait`; until this is called, none does."""
        self._state = state

    def _listens_on(self, path: str) -> bool:
        return path == self._path or path.startswith(self._path.rstrip("/") + "/")

    def _expected(self, params: Mapping[str, str]) -> bool:
        received = params.get("state")
        return (
            self._state is not None
            and received is not None
            and secrets.compare_digest(received.encode(), self._state.encode())
        )

    @property
    def port(self) -> int:
        if self._server is None:
            return self._port
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    async def __aenter__(self) -> LoopbackCallback:
        self._result = asyncio.get_running_loop().create_future()
        try:
            self._server = await asyncio.start_server(self._handle, self._host, self._port)
        except OSError as exc:
            raise AuthorizationError(
                f"cannot listen for the OAuth callback on {self._host}:{self._port}: {exc.strerror}",
                hint="another authorization may be running; pass --callback-port N to use another port",
            ) from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def wait(self, timeout: float) -> AuthorizationResponse:
        assert self._result is not None, "use as an async context manager"
        try:
            with anyio.fail_after(timeout):
                return await asyncio.shield(self._result)
        except TimeoutError:
            raise CallbackTimeout(
                f"no authorization callback within {timeout:.0f} seconds",
                hint="finish the login in the browser sooner, or run the command again",
            ) from None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 10)
            # Drain headers (bounded).
            for _ in range(100):
                line = await asyncio.wait_for(reader.readline(), 10)
                if line in (b"\r\n", b"\n", b""):
                    break
            parts = request_line.decode("latin-1").split()
            target = parts[1] if len(parts) >= 2 else "/"
            url = urlsplit(target)
            if len(parts) < 2 or parts[0] != "GET" or not self._listens_on(url.path):
                await self._respond(writer, 404, "Not found", "This is Bastion's OAuth callback.")
                return
            params = dict(parse_qsl(url.query, keep_blank_values=True))
            if self._result is not None and not self._result.done() and not self._expected(params):
                logger.warning("ignored a request to the OAuth callback that does not carry the expected state")
                await self._respond(
                    writer,
                    400,
                    "Not this authorization",
                    "This response does not belong to the authorization Bastion is waiting for; it was ignored. "
                    "If you are signing in, finish the login in the tab Bastion opened.",
                )
                return
            if self._result is not None and not self._result.done():
                self._result.set_result(AuthorizationResponse(url.path, params))
                if "error" in params:
                    await self._respond(writer, 200, "Authorization failed", _describe_error(params))
                else:
                    await self._respond(
                        writer, 200, "Authorization received", "You can close this tab and return to the terminal."
                    )
            else:
                await self._respond(writer, 409, "Already done", "This authorization has already completed.")
        except (TimeoutError, ConnectionError, UnicodeDecodeError) as exc:
            logger.debug("callback connection dropped: %s", type(exc).__name__)
        finally:
            writer.close()

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, status: int, title: str, body: str) -> None:
        page = _PAGE.format(title=html.escape(title), body=html.escape(body)).encode()
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 409: "Conflict"}.get(status, "OK")
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n"
            f"Content-Length: {len(page)}\r\nConnection: close\r\nCache-Control: no-store\r\n"
            "Referrer-Policy: no-referrer\r\n\r\n".encode()
            + page
        )
        await writer.drain()


def _describe_error(params: Mapping[str, str]) -> str:
    text = params.get("error", "error")
    if params.get("error_description"):
        text += f": {params['error_description']}"
    return text
