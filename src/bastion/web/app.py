"""The OAuth page as a Starlette app: `create_ui_app(bastion, ...)`, meant to be served under
`/ui` (see `mount_ui`). A thin shell over `bastion.service.Bastion` and `bastion.oauth.flow`.

Routes (relative to the mount point):

    GET  /                  the page (complete without JavaScript)
    GET  /fragment          the live part of the page, re-fetched by ui.js on each change event
    GET  /events            Server-Sent Events: `change` whenever anything shown may have changed
    GET  /servers.json      the same rows as JSON (no secret)
    POST /authorize         flow.begin with the callback /oauth/callback; 303 to the
                            authorization server (the form opens it in a new tab)
    GET  /oauth/callback    flow.complete; "done, you can close this tab" (also
         /oauth/callback/K  K: the issuer's own redirect path, see oauth/rfc9207.py)
    POST /revoke            revoke at the authorization server, delete the tokens
    POST /enable            put a catalog server in the registry
    POST /disable           remove it (revoking its tokens)
    GET  /login             the sign-in form (with a gateway token)
    POST /login             field `token`: set the session cookie, 303 to the page
    GET  /static/ui.js, /static/ui.css

Who may call them is `UISecurityMiddleware`'s job; every POST also checks the CSRF field.
"""

from __future__ import annotations

import html
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from bastion.errors import BastionError
from bastion.oauth import flow
from bastion.service import Bastion
from bastion.web import render
from bastion.web.feed import EventStream, Pokes
from bastion.web.security import (
    CSRF_FIELD,
    LOGIN_PATH,
    UISecurityMiddleware,
    check_csrf,
    session_cookie_name,
    session_value,
    token_matches,
)
from bastion.web.status import GatewayStatus, Snapshot, UpstreamStatusRow, gateway_signature, snapshot

logger = logging.getLogger(__name__)

MAX_FORM_BYTES = 16 * 1024
MAX_PENDING = 32
MAX_NOTICES = 8
DEFAULT_PENDING_TTL = 600.0


class PendingFlows:
    """Authorizations begun on this page and not completed yet, keyed by their `state`.
    In memory only (they hold the PKCE verifier); single use; forgotten after `ttl` seconds."""

    def __init__(self, ttl: float = DEFAULT_PENDING_TTL, limit: int = MAX_PENDING) -> None:
        self.ttl = ttl
        self.limit = limit
        self._pending: dict[str, flow.PendingAuthorization] = {}

    def add(self, pending: flow.PendingAuthorization) -> None:
        self._expire(time.time())
        while len(self._pending) >= self.limit:
            del self._pending[next(iter(self._pending))]
        self._pending[pending.state] = pending

    def take(self, state: str | None) -> flow.PendingAuthorization | None:
        self._expire(time.time())
        return self._pending.pop(state, None) if state else None

    def _expire(self, now: float) -> None:
        for state in [s for s, p in self._pending.items() if now - p.created_at > self.ttl]:
            del self._pending[state]

    def __len__(self) -> int:
        return len(self._pending)


@dataclass
class UIState:
    """Everything the page keeps in memory (per process)."""

    bastion: Bastion
    gateway_status: GatewayStatus | None
    token: str | None = field(repr=False)
    csrf: str = field(repr=False)
    flows: PendingFlows
    pokes: Pokes
    notices: deque[render.Notice]
    flow_errors: dict[str, str]

    def notify(self, level: str, text: str) -> None:
        self.notices.append(render.Notice(at=time.time(), level=level, text=text))
        self.pokes.poke()

    def gateway_rows(self) -> Sequence[UpstreamStatusRow] | None:
        if self.gateway_status is None:
            return None
        return self.gateway_status()

    async def snapshot(self) -> Snapshot:
        app = self.bastion
        records = {record.server: record for record in await app.store.list()}
        return snapshot(app.enabled(), app.catalog.entries, records, self.gateway_rows(), self.flow_errors, time.time())


def _links(request: Request) -> render.Links:
    return render.Links(base=request.scope.get("root_path", "").rstrip("/"))


def _static(name: str) -> bytes:
    return resources.files("bastion.web").joinpath("static", name).read_bytes()


class _FormError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _checked_form(request: Request, csrf: str) -> Mapping[str, str]:
    """The urlencoded form of a POST, after its CSRF field matched (constant time)."""
    fields = await _form(request)
    if not check_csrf(fields.get(CSRF_FIELD), csrf):
        raise _FormError(403, "the form's CSRF token is missing or wrong; reload the page and try again")
    return fields


async def _form(request: Request) -> Mapping[str, str]:
    """The urlencoded form of a POST, at most `MAX_FORM_BYTES`."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise _FormError(415, "expected a form (application/x-www-form-urlencoded)")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise _FormError(413, "form too large")
    try:
        fields = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False))
    except UnicodeDecodeError:
        raise _FormError(400, "the form is not UTF-8") from None
    return fields


def _login_page(links: render.Links, *, wrong: bool = False) -> str:
    """The sign-in form: the token goes in a POST body, never in a URL (where it would be kept in
    the history, logs and Referer headers)."""
    problem = "<p class='failed'>That is not the gateway token.</p>" if wrong else ""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Bastion: sign in</title></head><body>"
        f"<main><h1>Sign in to Bastion</h1>{problem}"
        "<p>Enter the gateway token: <code>$BASTION_GATEWAY_TOKEN</code>, or the content of "
        "<code>gateway-token</code> in Bastion's home directory.</p>"
        f"<form method='post' action='{html.escape(links.to(LOGIN_PATH))}'>"
        "<label>Gateway token <input type='password' name='token' autocomplete='current-password' required>"
        "</label> <button type='submit'>Sign in</button></form></main></body></html>"
    )


def create_ui_app(
    app: Bastion,
    *,
    gateway_status: GatewayStatus | None = None,
    token: str | None = None,
    allowed_hosts: Iterable[str] = (),
    pending_ttl: float | None = None,
) -> Starlette:
    """The OAuth page for `app`, to mount at `/ui` (`mount_ui(gateway_app, ui)` or a Starlette
    `Mount("/ui", app=ui)`).

    - `gateway_status`: when the page runs inside a gateway, its status rows (see
      `UpstreamStatusRow`; `Gateway.status` fits); None = standalone ("not running").
    - `token`: the gateway token. None = loopback clients only; else every client must present
      it (bearer header), or the session cookie that signing in (POST /login) sets.
    - `allowed_hosts`: host names, besides loopback ones, the `Host` header may carry.
    - `pending_ttl`: how long a begun authorization can be completed (default: the configured
      callback timeout).
    """
    state = UIState(
        bastion=app,
        gateway_status=gateway_status,
        token=token,
        csrf=secrets.token_urlsafe(32),
        flows=PendingFlows(ttl=pending_ttl if pending_ttl is not None else app.settings.oauth.callback_timeout),
        pokes=Pokes(),
        notices=deque(maxlen=MAX_NOTICES),
        flow_errors={},
    )
    script, style = _static("ui.js"), _static("ui.css")

    async def fragment_html(request: Request) -> str:
        return render.fragment(await state.snapshot(), list(state.notices), _links(request), state.csrf, time.time())

    async def index(request: Request) -> Response:
        return HTMLResponse(render.page(await fragment_html(request), _links(request)))

    async def fragment(request: Request) -> Response:
        return HTMLResponse(await fragment_html(request))

    async def servers_json(request: Request) -> Response:
        snap = await state.snapshot()
        return JSONResponse({"servers": [_json(asdict(v)) for v in snap.servers]})

    def static(body: bytes, media_type: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return Response(body, media_type=media_type, headers={"cache-control": "no-cache"})

        return endpoint

    def back(request: Request) -> Response:
        return RedirectResponse(_links(request).to("/"), status_code=303)

    def failure_page(request: Request, status: int, title: str, text: str) -> Response:
        return HTMLResponse(render.message_page(title, text, ok=False, links=_links(request)), status_code=status)

    async def action(request: Request, name: str) -> Mapping[str, str] | Response:
        """The checked form of a POST, or the page refusing it."""
        try:
            fields = await _checked_form(request, state.csrf)
        except _FormError as exc:
            return failure_page(request, exc.status, f"Cannot {name}", str(exc))
        if not fields.get("server"):
            return failure_page(request, 400, f"Cannot {name}", "the form names no server")
        return fields

    async def authorize(request: Request) -> Response:
        fields = await action(request, "authorize")
        if isinstance(fields, Response):
            return fields
        server = fields["server"]
        title = f"Cannot authorize {server}"
        if server not in app.enabled():
            return failure_page(request, 409, title, f"{server} is not enabled; enable it on the page first.")
        try:
            entry = app.entry(server)
            if not entry.uses_oauth:
                return failure_page(request, 409, title, f"{server} does not use OAuth.")
            # The page's own origin (its Host header) + the mount prefix; a registered client's flows
            # come back below it, on their issuer's own path (`/oauth/callback/<issuer key>`).
            callback = f"{request.url.scheme}://{request.url.netloc}{_links(request).to('/oauth/callback')}"
            pending = await flow.begin(app.http, app.store, app.flow_options(server), callback=callback)
        except BastionError as exc:
            state.flow_errors[server] = f"authorization failed: {exc}"
            state.notify("error", f"{server}: authorization could not start: {exc}")
            return failure_page(request, 502, title, str(exc))
        state.flows.add(pending)
        state.notify("info", f"{server}: authorization started at {pending.discovery.issuer}")
        return RedirectResponse(pending.url, status_code=303)

    async def oauth_callback(request: Request) -> Response:
        params = dict(request.query_params)
        pending = state.flows.take(params.get("state"))
        if pending is None:
            return failure_page(
                request,
                400,
                "Unknown or expired authorization",
                "This authorization response does not belong to an authorization this page started, or it was "
                "already used or has expired. Start again with Authorize on the Bastion page.",
            )
        server = pending.options.server_name
        try:
            record = await flow.complete(app.http, app.store, pending, params, path=request.url.path)
        except BastionError as exc:
            state.flow_errors[server] = f"authorization failed: {exc}"
            state.notify("error", f"{server}: authorization failed: {exc}")
            return failure_page(request, 400, f"{server} was not authorized", str(exc))
        state.flow_errors.pop(server, None)
        scopes = " ".join(record.tokens.scopes) if record.tokens is not None and record.tokens.scopes else "(none)"
        state.notify("info", f"{server}: authorized (scopes: {scopes})")
        return HTMLResponse(
            render.message_page(
                f"Done: {server} is authorized",
                f"Granted scopes: {scopes}. You can close this tab.",
                ok=True,
                links=_links(request),
            )
        )

    async def revoke(request: Request) -> Response:
        fields = await action(request, "revoke")
        if isinstance(fields, Response):
            return fields
        server = fields["server"]
        try:
            problems = await app.revoke(server)
        except BastionError as exc:
            state.notify("error", f"{server}: revoke failed: {exc}")
            return back(request)
        for problem in problems:
            state.notify("error", f"{server}: revocation: {problem} (tokens removed locally anyway)")
        state.flow_errors.pop(server, None)
        state.notify("info", f"{server}: revoked")
        return back(request)

    async def enable(request: Request) -> Response:
        fields = await action(request, "enable")
        if isinstance(fields, Response):
            return fields
        server = fields["server"]
        try:
            await app.enable([server])
        except BastionError as exc:
            state.notify("error", f"{server}: enable failed: {exc}")
            return back(request)
        state.notify("info", f"{server}: enabled")
        return back(request)

    async def disable(request: Request) -> Response:
        fields = await action(request, "disable")
        if isinstance(fields, Response):
            return fields
        server = fields["server"]
        try:
            problems = await app.disable([server])
        except BastionError as exc:
            state.notify("error", f"{server}: disable failed: {exc}")
            return back(request)
        for problem in problems.get(server, []):
            state.notify("error", f"{server}: revocation: {problem} (tokens removed locally anyway)")
        state.flow_errors.pop(server, None)
        state.notify("info", f"{server}: disabled")
        return back(request)

    async def login_form(request: Request) -> Response:
        if state.token is None:
            return back(request)
        return HTMLResponse(_login_page(_links(request)))  # a `?token=` in the URL is ignored

    async def login(request: Request) -> Response:
        if state.token is None:
            return back(request)
        try:
            fields = await _form(request)
        except _FormError as exc:
            return failure_page(request, exc.status, "Cannot sign in", str(exc))
        if not token_matches(fields.get("token", "").strip(), state.token):
            return HTMLResponse(_login_page(_links(request), wrong=True), status_code=401)
        https = request.url.scheme == "https"
        response = back(request)
        response.set_cookie(
            session_cookie_name(request.url.scheme),
            session_value(state.token),
            # `__Host-` (https) demands Path=/; over http the cookie stays with the page's mount.
            path="/" if https else _links(request).to("/"),
            httponly=True,
            samesite="strict",
            secure=https,
        )
        return response

    events = EventStream(app.store, app.home, state.pokes, lambda: gateway_signature(state.gateway_rows()))
    routes = [
        Route("/", index, methods=["GET"]),
        Route("/fragment", fragment, methods=["GET"]),
        Route("/events", events, methods=["GET"]),
        Route("/servers.json", servers_json, methods=["GET"]),
        Route("/authorize", authorize, methods=["POST"]),
        Route("/oauth/callback", oauth_callback, methods=["GET"]),
        Route("/oauth/callback/{issuer_key}", oauth_callback, methods=["GET"]),
        Route("/revoke", revoke, methods=["POST"]),
        Route("/enable", enable, methods=["POST"]),
        Route("/disable", disable, methods=["POST"]),
        Route(LOGIN_PATH, login_form, methods=["GET"]),
        Route(LOGIN_PATH, login, methods=["POST"]),
        Route("/static/ui.js", static(script, "text/javascript"), methods=["GET"]),
        Route("/static/ui.css", static(style, "text/css"), methods=["GET"]),
    ]
    ui = Starlette(
        routes=routes,
        middleware=[Middleware(UISecurityMiddleware, token=token, allowed_hosts=tuple(allowed_hosts))],
    )
    ui.state.ui = state
    return ui


def _json(value: Any) -> Any:
    """`asdict` output made JSON-friendly (enums to their values, tuples to lists)."""
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


def close_ui(ui: Starlette) -> None:
    """End the page's open event streams (call before stopping the server, so it need not wait
    for them); a browser that reconnects later gets a stream that ends at once."""
    state: UIState = ui.state.ui
    state.pokes.close()


def mount_ui(app: ASGIApp, ui: ASGIApp, prefix: str = "/ui") -> ASGIApp:
    """Serve `ui` under `prefix` in front of `app` (everything else, lifespan included, goes to
    `app`). `prefix` itself redirects to `prefix/`. Put it outside the gateway's own security
    middleware: the page checks Host, Origin and the token itself, and accepts the token as a
    cookie, which a browser can send and the gateway's bearer-only check would refuse."""

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            root = scope.get("root_path", "")
            path: str = scope["path"]
            local = path[len(root) :] if root and path.startswith(root) else path
            if local == prefix and scope["type"] == "http":
                query = scope.get("query_string", b"").decode("latin-1")
                location = f"{root}{prefix}/" + (f"?{query}" if query else "")
                await RedirectResponse(location, status_code=307)(scope, receive, send)
                return
            if local.startswith(prefix + "/"):
                await ui({**scope, "root_path": root + prefix}, receive, send)
                return
        await app(scope, receive, send)

    return dispatch
