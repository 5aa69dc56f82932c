"""Who may use the OAuth page, and how a state-changing request proves it came from the page.

A plain ASGI middleware (`UISecurityMiddleware`) in front of every route, plus `check_csrf`
for the POST handlers:

1. DNS rebinding: the `Host` header must name a loopback host, or one of `allowed_hosts`.
   A rebound name (attacker.example resolving to 127.0.0.1) is refused before anything runs.
2. Who: with a gateway token (the default, loopback included), every client presents it as
   `Authorization: Bearer <token>`, or presents the session cookie that signing in sets: a form
   POSTed to `/login` with the token (never a token in a URL). The cookie is not the token but
   `session_value(token)`, an HMAC of it under a fixed label, so a stolen cookie is no bearer token
   for /mcp; HttpOnly, SameSite=Strict; over https it is `__Host-bastion_session` (Secure, Path=/),
   over plain http (loopback, or `--insecure-http`) `bastion_session` without Secure, since
   browsers drop a `__Host-` or Secure cookie set by an http page. Compared in constant time.
   Two routes check no token: `/login` itself, and `/oauth/callback[/<issuer key>]`, which the authorization
   server's cross-site redirect reaches without a SameSite=Strict cookie; it is authenticated by
   its single-use `state` instead (unknown states change nothing). Without a token (the explicit
   opt-out) only loopback clients are served.
3. Cross-site requests: an `Origin` header, when sent, must be the page's own origin (its
   `Host`), on every request, so another site can neither post forms nor open the event
   stream. For POSTs, `Sec-Fetch-Site` must be absent, `same-origin` or `none` (a page on
   another port of localhost is `same-site`: refused), and the form must carry the
   per-process CSRF token (`check_csrf`, constant time).
4. Every response gets `Cache-Control: no-store`, `X-Frame-Options: DENY`, a CSP allowing only
   the page's own script, style and event stream, `nosniff`, and `Referrer-Policy: same-origin`
   (not `no-referrer`: under it browsers send `Origin: null` on the page's own POSTs).
"""

from __future__ import annotations

import hashlib
import hmac
import html
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bastion.oauth.rfc8252 import is_loopback_host

SESSION_COOKIE = "bastion_session"
"""The session cookie's name over plain http."""
SECURE_SESSION_COOKIE = "__Host-bastion_session"
"""Its name over https: the prefix makes browsers insist on Secure, Path=/ and no Domain."""
SESSION_LABEL = b"bastion /ui session v1"
CSRF_FIELD = "csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ALLOWED_FETCH_SITES = frozenset({"same-origin", "none"})
LOGIN_PATH = "/login"
CALLBACK_PATH = "/oauth/callback"
"""The callback, and below it one path per issuer (`/oauth/callback/<issuer key>`, rfc9207.py)."""


def _exempt(path: str) -> bool:
    """The routes that check no token: the sign-in form, and the OAuth callback on any issuer's path
    (one segment below `CALLBACK_PATH`), which a SameSite=Strict cookie does not reach."""
    if path in (LOGIN_PATH, CALLBACK_PATH):
        return True
    parent, _, key = path.rpartition("/")
    return parent == CALLBACK_PATH and bool(key)


CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"cache-control", b"no-store"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
)


def split_host(value: str) -> tuple[str, int | None]:
    """(host, port) of a `Host` header or an origin's netloc: `h`, `h:port`, `[v6]:port`."""
    try:
        parts = urlsplit(f"//{value}")
        return (parts.hostname or "", parts.port)
    except ValueError:
        return ("", None)


def host_allowed(host_header: str | None, allowed_hosts: Iterable[str]) -> bool:
    """Is the request's `Host` a loopback name/address or one of `allowed_hosts` (names, no port)?"""
    if not host_header:
        return False
    host, _ = split_host(host_header)
    if not host:
        return False
    return is_loopback_host(host) or host.lower() in {h.lower().strip("[]") for h in allowed_hosts}


def same_origin(origin: str, host_header: str, scheme: str) -> bool:
    """Is `origin` (an `Origin` header) the page's own origin, `scheme://<Host header>`?
    Default ports are made explicit on both sides; `null` is never the page's origin."""
    try:
        parts = urlsplit(origin)
        origin_port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        return False
    default = {"http": 80, "https": 443}
    host, port = split_host(host_header)
    return (parts.hostname.lower(), origin_port or default[parts.scheme]) == (
        host.lower(),
        port or default.get(scheme, 80),
    )


def token_matches(presented: str | None, token: str) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), token.encode())


def bearer_token(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, credentials = authorization.partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


def session_value(token: str) -> str:
    """The session cookie's value for `token`: HMAC-SHA256 of a fixed label under the token."""
    return hmac.new(token.encode(), SESSION_LABEL, hashlib.sha256).hexdigest()


def session_cookie_name(scheme: str) -> str:
    return SECURE_SESSION_COOKIE if scheme == "https" else SESSION_COOKIE


def session_cookie(cookie_header: str | None, scheme: str) -> str | None:
    """The session cookie a request carries, under the name its scheme uses."""
    if not cookie_header:
        return None
    return cookie_parser(cookie_header).get(session_cookie_name(scheme))


def check_csrf(presented: str | None, expected: str) -> bool:
    """The form's CSRF field against the per-process token, in constant time."""
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class UISecurityMiddleware:
    """Refuses rebound hosts, foreign origins, cross-site POSTs and unauthenticated clients."""

    def __init__(self, app: ASGIApp, *, token: str | None, allowed_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.token = token
        self.session = session_value(token) if token is not None else None
        self.allowed_hosts = tuple(allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is not None:
            status, message = refusal
            browser = not any(key == b"authorization" for key, _ in scope["headers"])
            if status == 401 and browser and scope["method"] == "GET" and _route_path(scope) == "/":
                # A browser that has not signed in yet: to the sign-in form.
                location = scope.get("root_path", "").rstrip("/") + LOGIN_PATH
                await send(
                    {
                        "type": "http.response.start",
                        "status": 303,
                        "headers": [(b"location", location.encode()), (b"content-length", b"0"), *SECURITY_HEADERS],
                    }
                )
                await send({"type": "http.response.body", "body": b""})
                return
            await _refuse(send, status, message, challenge=status == 401)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {key.lower() for key, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(status, message) when the request must be refused, else None."""
        headers = Headers(scope=scope)
        host = headers.get("host")
        if not host_allowed(host, self.allowed_hosts):
            return 403, "This page answers only to a loopback host name (or the configured host)."
        assert host is not None
        origin = headers.get("origin")
        if origin is not None and not same_origin(origin, host, scope.get("scheme", "http")):
            return 403, "Cross-origin requests are refused."
        if scope["method"] not in SAFE_METHODS:
            site = headers.get("sec-fetch-site")
            if site is not None and site.lower() not in ALLOWED_FETCH_SITES:
                return 403, "Cross-site requests are refused."
        if self.token is None or self.session is None:
            client = scope.get("client")
            if client is None or not is_loopback_host(str(client[0])):
                return 403, "This page is reachable from this machine only (no gateway token is configured)."
            return None
        if _exempt(_route_path(scope)):
            return None  # the sign-in checks the token itself; the callback its single-use state
        bearer = bearer_token(headers.get("authorization"))
        if bearer is not None:
            if token_matches(bearer, self.token):
                return None
        elif token_matches(session_cookie(headers.get("cookie"), scope.get("scheme", "http")), self.session):
            return None
        return 401, "Sign in first: open the page's /login in this browser and enter the gateway token."


async def _refuse(send: Send, status: int, message: str, *, challenge: bool) -> None:
    body = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Bastion</title></head>"
        f"<body><h1>{status}</h1><p>{html.escape(message)}</p></body></html>"
    ).encode()
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *SECURITY_HEADERS,
    ]
    if challenge:
        headers.append((b"www-authenticate", b'Bearer realm="bastion"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
