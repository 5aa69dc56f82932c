"""Who may talk to the gateway's HTTP listener: plain ASGI middlewares.

- Every client sends `Authorization: Bearer <gateway token>`, on loopback too: any local process
  (another user, a container on the host network) could otherwise use the gateway and every token
  behind it. The token is BASTION_GATEWAY_TOKEN when set, else the one in `$BASTION_HOME/
  gateway-token` (0600, generated on first use, never printed: `bastion client connect` writes it
  into a client's configuration). Compared in constant time. `gateway run --no-token` (or
  `gateway: {require_token: false}`) turns the check off, with a warning at each start.
- DNS rebinding: a browser page on another origin must not reach the gateway. `Origin` must be
  absent, a loopback origin, or the listener's own; on a loopback listener `Host` must name a
  loopback host too.
- These checks read the headers only, before any byte of the body is read
  (`GatewaySecurityMiddleware.screen`, which the fast lane calls too); a body must then arrive
  within `BODY_TIMEOUT` seconds (`BodyDeadlineMiddleware`, and the fast lane's own reader), or
  the request is answered 408 and its connection closed (slowloris).
- The downstream `Authorization` header is removed before the request reaches the MCP layer, so
  it can never be forwarded upstream; upstream tokens live only in `UpstreamBearerAuth`.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
import os
import secrets
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Final, TextIO
from urllib.parse import urlsplit

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bastion.config.files import FILE_MODE, check_private
from bastion.config.paths import ensure_home
from bastion.errors import GatewayError

TOKEN_ENV: Final = "BASTION_GATEWAY_TOKEN"
TOKEN_FILE: Final = "gateway-token"
BODY_TIMEOUT: Final = 10.0
"""Seconds from a request's headers to the last byte of its body. MCP bodies are small (a tool
call's arguments); 10 s is ample on any link a gateway is used over, and bounds how long a
client trickling its body holds a connection and a task."""
BODY_TIMEOUT_MESSAGE: Final = b'{"error": "the request body did not arrive in time"}'
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})
Refusal = tuple[int, str, bool]
"""(status, message, whether to send a Bearer challenge)."""


@functools.lru_cache(maxsize=256)
def is_loopback_host(host: str) -> bool:
    """True for `localhost`, 127.0.0.0/8 and ::1 (brackets allowed). Cached: every request's
    `Host` is checked, and a client sends the same one each time."""
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- the gateway token -------------------------------------------------------------------------------


def token_path(home: Path) -> Path:
    return home / TOKEN_FILE


def home_token(home: Path) -> str:
    """The token in `home`'s token file; on first use a new random one (256 bits) is written
    there, 0600. Two processes creating it at once agree: the file is linked into place only if
    absent, and the loser reads the winner's."""
    ensure_home(home)
    path = token_path(home)
    token = _read_token(path)
    if token is not None:
        return token
    fd, tmp = tempfile.mkstemp(dir=home, prefix=f".{TOKEN_FILE}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    token = _read_token(path)
    if token is None:
        raise GatewayError(f"{path} vanished while it was created", hint="start the gateway again")
    return token


def _read_token(path: Path) -> str | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    check_private(path, st, error=GatewayError, tighten_files=True)
    try:
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        raise GatewayError(
            f"cannot read the gateway token in {path}", hint="delete it; bastion makes a new one"
        ) from None
    if not token:
        raise GatewayError(f"{path} is empty", hint="delete it; bastion makes a new one")
    return token


def current_token(home: Path) -> str:
    """The token a gateway on `home` requires: BASTION_GATEWAY_TOKEN, else the home's token file."""
    return os.environ.get(TOKEN_ENV) or home_token(home)


def gateway_token(home: Path, *, required: bool = True, out: TextIO | None = None) -> str | None:
    """The bearer token the HTTP listener requires (None: turned off), and a line on `out`
    (stderr) saying where it is, or warning that there is none. The value itself is never
    printed."""
    out = out or sys.stderr
    if not required:
        print(
            "bastion: warning: the gateway token is off (--no-token / gateway.require_token: false): any process "
            "that can reach this port, including other users' and containers', can use the gateway and every "
            "token behind it",
            file=out,
            flush=True,
        )
        return None
    token = current_token(home)
    where = f"${TOKEN_ENV}" if os.environ.get(TOKEN_ENV) else f"the token in {token_path(home)}"
    print(
        f"bastion: clients must send `Authorization: Bearer <{where}>` "
        "(`bastion client connect NAME --url URL` writes it into a client's configuration)",
        file=out,
        flush=True,
    )
    return token


def _split_host(value: str) -> str:
    """The host part of a `Host` header value (`h`, `h:port`, `[v6]:port`)."""
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class GatewaySecurityMiddleware:
    """Refuses foreign origins and requests without the gateway token (unless `token` is None:
    the explicit opt-out)."""

    def __init__(self, app: ASGIApp, *, token: str | None, listen_host: str, listen_port: int) -> None:
        self.app = app
        self._token = token.encode() if token is not None else None
        self._header = b"Bearer " + self._token if self._token is not None else b""
        self._loopback_listener = is_loopback_host(listen_host)
        self._own_origins = frozenset(f"{scheme}://{listen_host}:{listen_port}".lower() for scheme in ("http", "https"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal, kept = self.screen(scope["headers"])
        if refusal is not None:
            status, message, challenge = refusal
            await _reject(send, status, message, challenge=challenge)
            return
        if kept is not None:
            scope = {**scope, "headers": kept}
        await self.app(scope, receive, send)

    def screen(self, headers: Iterable[tuple[bytes, bytes]]) -> tuple[Refusal | None, list[tuple[bytes, bytes]] | None]:
        """The checks on a request's raw headers: (refusal, None) for a request to refuse, else
        (None, the headers without `Authorization`) or (None, None) when there was none to
        remove. The fast lane (front.py) screens with this too, so both paths admit the same."""
        origin: bytes | None = None
        host: bytes | None = None
        authorization: bytes | None = None
        kept: list[tuple[bytes, bytes]] = []
        for key, value in headers:
            if key == b"origin":
                origin = value
            elif key == b"host":
                host = value
            if key == b"authorization":
                authorization = value
            else:
                kept.append((key, value))
        if origin is not None and not self._origin_allowed(origin.decode("latin-1")):
            return (403, "forbidden origin", False), None
        if self._loopback_listener and host is not None and not is_loopback_host(_split_host(host.decode("latin-1"))):
            return (403, "forbidden host", False), None
        if self._token is not None and not self._authorized(authorization):
            return (401, "missing or invalid gateway token", True), None
        return None, (kept if authorization is not None else None)

    def _origin_allowed(self, origin: str) -> bool:
        if origin.lower() in self._own_origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.hostname is not None and is_loopback_host(parts.hostname)

    def _authorized(self, header: bytes | None) -> bool:
        if header is None or self._token is None:
            return False
        # The form every client sends, in one constant-time compare of the whole value and no
        # allocation; other spellings (`bearer`, extra spaces) are parsed.
        if hmac.compare_digest(header, self._header):
            return True
        scheme, _, credentials = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self._token)


async def _reject(
    send: Send, status: int, message: str | bytes, *, challenge: bool = False, close: bool = False
) -> None:
    body = message if isinstance(message, bytes) else json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if challenge:
        headers.append((b"www-authenticate", b'Bearer realm="bastion"'))
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyDeadlineMiddleware:
    """Answers 408 (and closes the connection) when a request's body has not arrived `timeout`
    seconds after the request reached the app: a client trickling its body (slowloris) holds a
    connection and a task that long at most. Outermost, so it covers every route (/ui's forms
    too); the fast lane applies the same deadline to the POSTs it reads itself."""

    def __init__(self, app: ASGIApp, timeout: float = BODY_TIMEOUT) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = anyio.current_time() + self.timeout
        body_done = timed_out = started = False

        async def timed_receive() -> Message:
            nonlocal body_done, timed_out
            if timed_out:
                return {"type": "http.disconnect"}
            if body_done:
                return await receive()  # e.g. an event stream waiting for the client to leave
            with anyio.move_on_after(deadline - anyio.current_time()):
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    body_done = True
                return message
            timed_out = True
            if not started:
                await _reject(send, 408, BODY_TIMEOUT_MESSAGE, close=True)
            return {"type": "http.disconnect"}

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if timed_out:
                return  # the 408 was the answer; the app is only reacting to the body it lost
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except Exception:  # request boundary: after a 408, the app's reaction to a lost body is noise
            if not timed_out:
                raise
