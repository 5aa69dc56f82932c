"""Who may talk to the gateway's HTTP listener: a plain ASGI middleware.

- The listener binds 127.0.0.1 by default. Bound anywhere else it requires
  `Authorization: Bearer <gateway token>` (BASTION_GATEWAY_TOKEN, or a random one printed
  once to stderr), compared in constant time.
- DNS rebinding: a browser page on another origin must not reach the gateway. `Origin` must be
  absent, a loopback origin, or the listener's own; on a loopback listener `Host` must name a
  loopback host too.
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
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_ENV = "BASTION_GATEWAY_TOKEN"
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


def gateway_token(host: str) -> str | None:
    """The bearer token a listener on `host` requires: None on loopback; else from the
    environment, or generated and printed once to stderr (never logged)."""
    if is_loopback_host(host):
        return None
    token = os.environ.get(TOKEN_ENV)
    if token:
        return token
    token = secrets.token_urlsafe(32)
    print(
        f"bastion: the gateway listens on {host}; clients must send `Authorization: Bearer {token}` "
        f"(set {TOKEN_ENV} to choose the token)",
        file=sys.stderr,
        flush=True,
    )
    return token


def _split_host(value: str) -> str:
    """The host part of a `Host` header value (`h`, `h:port`, `[v6]:port`)."""
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class GatewaySecurityMiddleware:
    """Refuses foreign origins and, when configured, requests without the gateway token."""

    def __init__(self, app: ASGIApp, *, token: str | None, listen_host: str, listen_port: int) -> None:
        self.app = app
        self._token = token.encode() if token is not None else None
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
        scheme, _, credentials = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(credentials.strip(), self._token)


async def _reject(send: Send, status: int, message: str, *, challenge: bool = False) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if challenge:
        headers.append((b"www-authenticate", b'Bearer realm="bastion"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
