"""The OAuth page in-process: what it shows, who may use it, how its POSTs are protected against
cross-site requests, and that no secret of the store ever reaches a response.

Served as `bastion ui` serves it (`standalone_app`) through httpx2's ASGI transport; the event
stream through a small ASGI harness (`read_events`). Authorization runs against the in-process
fake authorization server of the flow tests (`World`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.types import ASGIApp

from bastion.config.registry import save_enabled
from bastion.gateway.security import GatewaySecurityMiddleware
from bastion.service import Bastion
from bastion.store.models import ProviderState
from bastion.web import GatewayRow, create_ui_app
from bastion.web.security import host_allowed, same_origin, session_value
from bastion.web.serve import standalone_app
from tests.unit.flow.world import World
from tests.web.harness import CLIENT_ID, ISSUER, MCP_URL, SECRETS, authorized_record, read_events

pytestmark = pytest.mark.anyio

BASE = "http://127.0.0.1:8812"
ORIGIN = {"origin": BASE}
LOOPBACK_CLIENT = ("127.0.0.1", 50000)
REMOTE_CLIENT = ("203.0.113.7", 50000)
CSRF = re.compile(r"name='csrf' value='([^']+)'")


def served(bastion: Bastion, **options: Any) -> tuple[Starlette, ASGIApp]:
    ui = create_ui_app(bastion, **options)
    return ui, standalone_app(ui)


def client(app: ASGIApp, *, peer: tuple[str, int] = LOOPBACK_CLIENT, base: str = BASE) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app, client=peer), base_url=base)


async def csrf_of(http: httpx2.AsyncClient) -> str:
    page = await http.get("/ui/")
    assert page.status_code == 200
    match = CSRF.search(page.text)
    assert match is not None
    return match.group(1)


def row(html: str, server: str) -> str:
    match = re.search(rf"<tr id='server-{server}'.*?</tr>", html)
    assert match is not None, f"no row for {server}"
    return match.group(0)


def assert_no_secret(*bodies: str) -> None:
    for body in bodies:
        for name, value in SECRETS.items():
            assert value not in body, f"{name} leaked"


# -- what the page shows --------------------------------------------------------------------------


async def test_page_lists_enabled_servers_with_transport_connection_and_oauth_state(bastion: Bastion) -> None:
    await bastion.store.put(authorized_record(scopes=("mcp:read", "mcp:write")))
    _, app = served(bastion)
    async with client(app) as http:
        page = await http.get("/ui/")
    assert page.status_code == 200
    protected = row(page.text, "protected")
    assert "data-oauth-state='authorized'" in protected
    assert "streamable-http" in protected and "not running" in protected
    assert "<code>mcp:read</code> <code>mcp:write</code>" in protected
    assert "expires " in protected and "refreshable" in protected
    assert CLIENT_ID in protected and ISSUER in protected
    assert ">Revoke<" in protected and ">Re-authorize<" in protected
    local = row(page.text, "local")
    assert "stdio" in local and "no OAuth" in local and ">Authorize<" not in local
    assert "id='available-spare'" in page.text and ">Enable<" in page.text


async def test_unregistered_server_offers_authorize_but_not_revoke(bastion: Bastion) -> None:
    _, app = served(bastion)
    async with client(app) as http:
        protected = row((await http.get("/ui/fragment")).text, "protected")
    assert "data-oauth-state='unregistered'" in protected
    assert ">Authorize<" in protected and ">Revoke<" not in protected
    assert "target='_blank'" in protected


async def test_needs_authorization_shows_the_scopes_asked_for(bastion: Bastion) -> None:
    record = authorized_record().model_copy(update={"needs_authorization": True, "requested_scopes": ["mcp:write"]})
    await bastion.store.put(record)
    _, app = served(bastion)
    async with client(app) as http:
        protected = row((await http.get("/ui/fragment")).text, "protected")
    assert "data-oauth-state='needs-authorization'" in protected
    assert "asks for: <code>mcp:write</code>" in protected


async def test_expired_token_without_refresh_token_is_expired(bastion: Bastion) -> None:
    record = authorized_record(expires_in=-60)
    record = record.model_copy(update={"tokens": record.tokens.model_copy(update={"refresh_token": None})})  # type: ignore[union-attr]
    await bastion.store.put(record)
    _, app = served(bastion)
    async with client(app) as http:
        protected = row((await http.get("/ui/fragment")).text, "protected")
    assert "data-oauth-state='expired'" in protected and "expired " in protected


async def test_gateway_status_rows_give_connection_tools_and_last_error(bastion: Bastion) -> None:
    rows: Sequence[GatewayRow] = [
        GatewayRow(name="protected", state="needs-authorization", transport="streamable-http", tools=0),
        GatewayRow(name="local", state="ready", transport="stdio", tools=3, last_error="exited once <b>"),
    ]
    _, app = served(bastion, gateway_status=lambda: rows)
    async with client(app) as http:
        html = (await http.get("/ui/fragment")).text
    local = row(html, "local")
    assert "data-connection='ready'" in local and "<td class='tools'>3</td>" in local
    assert "exited once &lt;b&gt;" in local  # escaped
    assert "data-connection='needs-authorization'" in row(html, "protected")


async def test_servers_json_lists_the_rows(bastion: Bastion) -> None:
    await bastion.store.put(authorized_record())
    _, app = served(bastion)
    async with client(app) as http:
        servers = (await http.get("/ui/servers.json")).json()["servers"]
    protected = next(s for s in servers if s["name"] == "protected")
    assert protected["oauth"]["state"] == "authorized" and protected["oauth"]["client_id"] == CLIENT_ID


# -- no secret in any response --------------------------------------------------------------------


async def test_no_secret_in_page_fragment_json_or_events(bastion: Bastion) -> None:
    await bastion.store.put(authorized_record())
    _, app = served(bastion)
    async with client(app) as http:
        bodies = [(await http.get(path)).text for path in ("/ui/", "/ui/fragment", "/ui/servers.json")]

    async def change() -> None:
        await bastion.store.put(authorized_record(expires_in=7200))

    events = await read_events(app, change, until=lambda text: "event: change" in text)
    assert CLIENT_ID in bodies[0]
    assert_no_secret(*bodies, events)


# -- who may use the page -------------------------------------------------------------------------


async def test_non_loopback_client_is_refused_without_a_token_configured(bastion: Bastion) -> None:
    _, app = served(bastion)
    async with client(app, peer=REMOTE_CLIENT) as http:
        for path in ("/ui/", "/ui/fragment", "/ui/servers.json", "/ui/events"):
            assert (await http.get(path)).status_code == 403


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8812", "192.168.1.10:8812", ""])
async def test_rebound_or_foreign_host_header_is_refused(bastion: Bastion, host: str) -> None:
    _, app = served(bastion)
    async with client(app) as http:
        response = await http.get("/ui/", headers={"host": host})
    assert response.status_code == 403


async def test_configured_host_is_accepted(bastion: Bastion) -> None:
    _, app = served(bastion, token="t0ken", allowed_hosts=["bastion.lan"])
    async with client(app, peer=REMOTE_CLIENT, base="http://bastion.lan:8812") as http:
        response = await http.get("/ui/", headers={"authorization": "Bearer t0ken"})
    assert response.status_code == 200


async def test_with_a_token_every_client_must_present_it(bastion: Bastion) -> None:
    _, app = served(bastion, token="the-gateway-token")
    session = session_value("the-gateway-token")
    for peer in (REMOTE_CLIENT, LOOPBACK_CLIENT):
        async with client(app, peer=peer) as http:
            assert (await http.get("/ui/fragment")).status_code == 401
            assert (await http.get("/ui/", headers={"authorization": "Bearer wrong"})).status_code == 401
            assert (await http.get("/ui/fragment", headers={"cookie": "bastion_session=wrong"})).status_code == 401
            assert (await http.get("/ui/", headers={"authorization": "Bearer the-gateway-token"})).status_code == 200
            assert (await http.get("/ui/", headers={"cookie": f"bastion_session={session}"})).status_code == 200


async def test_an_unsigned_browser_is_sent_to_the_sign_in_form(bastion: Bastion) -> None:
    _, app = served(bastion, token="the-gateway-token")
    async with client(app) as http:
        page = await http.get("/ui/")
        form = await http.get("/ui/login")
    assert page.status_code == 303 and page.headers["location"] == "/ui/login"
    assert form.status_code == 200 and "method='post'" in form.text and "name='token'" in form.text


async def test_signing_in_is_a_post_that_sets_a_derived_strict_httponly_cookie(bastion: Bastion) -> None:
    """Point 13: the cookie is not the token (an HMAC of it), HttpOnly, SameSite=Strict; over
    plain http it cannot be `__Host-`/Secure (browsers drop those from http pages)."""
    _, app = served(bastion, token="the-gateway-token")
    async with client(app, peer=REMOTE_CLIENT) as http:
        wrong = await http.post("/ui/login", data={"token": "nope"}, headers=ORIGIN)
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        right = await http.post("/ui/login", data={"token": "the-gateway-token"}, headers=ORIGIN)
        assert right.status_code == 303 and right.headers["location"] == "/ui/"
        cookie = right.headers["set-cookie"]
        assert cookie.startswith(f"bastion_session={session_value('the-gateway-token')};")
        assert "the-gateway-token" not in cookie
        lowered = cookie.lower()
        assert "httponly" in lowered and "samesite=strict" in lowered and "path=/ui/" in lowered
        assert "secure" not in lowered
        page = await http.get("/ui/")  # the client kept the cookie
    assert page.status_code == 200
    assert "the-gateway-token" not in page.text


async def test_over_https_the_cookie_is_host_prefixed_and_secure(bastion: Bastion) -> None:
    _, app = served(bastion, token="the-gateway-token")
    async with client(app, base="https://127.0.0.1:8812") as http:
        right = await http.post(
            "/ui/login", data={"token": "the-gateway-token"}, headers={"origin": "https://127.0.0.1:8812"}
        )
        cookie = right.headers["set-cookie"]
        assert cookie.startswith("__Host-bastion_session=")
        assert "; secure" in cookie.lower() and "path=/;" in cookie.lower() and "domain" not in cookie.lower()
        assert (await http.get("/ui/")).status_code == 200
        # The plain-http name is not accepted over https.
        plain = {"cookie": f"bastion_session={session_value('the-gateway-token')}"}
    async with client(app, base="https://127.0.0.1:8812") as fresh:
        assert (await fresh.get("/ui/fragment", headers=plain)).status_code == 401


async def test_a_token_in_the_url_signs_nobody_in(bastion: Bastion) -> None:
    _, app = served(bastion, token="the-gateway-token")
    async with client(app) as http:
        response = await http.get("/ui/login", params={"token": "the-gateway-token"})
        assert "set-cookie" not in response.headers
        assert (await http.get("/ui/fragment")).status_code == 401


@pytest.mark.parametrize(
    "path", ["/ui/oauth/callbackx", "/ui/oauth/callback/a/b", "/ui/oauth/callback/", "/ui/fragment"]
)
async def test_only_the_sign_in_and_the_callback_paths_skip_the_token(bastion: Bastion, path: str) -> None:
    """The callback is exempt on its own path and one issuer key below it, nowhere else."""
    _, app = served(bastion, token="the-gateway-token")
    async with client(app) as http:
        assert (await http.get(path)).status_code == 401
        stranger = await http.get("/ui/oauth/callback/0123456789abcdef", params={"state": "forged", "code": "x"})
        assert stranger.status_code == 400 and "Unknown or expired" in stranger.text


async def test_the_token_itself_is_no_session_cookie_and_the_cookie_no_bearer_token(bastion: Bastion) -> None:
    """A stolen cookie cannot be replayed as the gateway token at /mcp, and the old cookie is gone."""
    _, app = served(bastion, token="the-gateway-token")
    async with client(app) as http:
        assert (await http.get("/ui/", headers={"cookie": "bastion_session=the-gateway-token"})).status_code == 303
        assert (await http.get("/ui/", headers={"cookie": "bastion_token=the-gateway-token"})).status_code == 303
    gateway = GatewaySecurityMiddleware(app, token="the-gateway-token", listen_host="127.0.0.1", listen_port=8812)
    screened, _ = gateway.screen([(b"authorization", f"Bearer {session_value('the-gateway-token')}".encode())])
    assert screened is not None and screened[0] == 401


async def test_a_sign_in_from_another_site_is_refused(bastion: Bastion) -> None:
    _, app = served(bastion, token="the-gateway-token")
    async with client(app) as http:
        response = await http.post(
            "/ui/login", data={"token": "the-gateway-token"}, headers={"origin": "https://evil.example"}
        )
    assert response.status_code == 403 and "set-cookie" not in response.headers


async def test_every_response_carries_the_security_headers(bastion: Bastion) -> None:
    _, app = served(bastion)
    async with client(app) as http:
        response = await http.get("/ui/")
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "same-origin"
    assert response.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert "script-src 'self'" in response.headers["content-security-policy"]


# -- cross-site requests --------------------------------------------------------------------------


async def test_post_with_the_csrf_token_and_own_origin_is_accepted(bastion: Bastion) -> None:
    await bastion.store.put(authorized_record())
    _, app = served(bastion)
    async with client(app) as http:
        token = await csrf_of(http)
        response = await http.post(
            "/ui/revoke",
            data={"csrf": token, "server": "protected"},
            headers={**ORIGIN, "sec-fetch-site": "same-origin"},
        )
    assert response.status_code == 303 and response.headers["location"] == "/ui/"
    record = await bastion.store.get("protected")
    assert record is not None and record.tokens is None and record.state() is ProviderState.REGISTERED


@pytest.mark.parametrize("csrf", [None, "", "wrong-token"])
async def test_post_without_the_right_csrf_token_is_refused(bastion: Bastion, csrf: str | None) -> None:
    await bastion.store.put(authorized_record())
    _, app = served(bastion)
    form = {"server": "protected"} | ({"csrf": csrf} if csrf is not None else {})
    async with client(app) as http:
        response = await http.post("/ui/revoke", data=form, headers=ORIGIN)
    assert response.status_code == 403
    record = await bastion.store.get("protected")
    assert record is not None and record.tokens is not None


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://attacker.example"},
        {"origin": "http://localhost:3000"},  # another loopback origin is another origin
        {"origin": "http://127.0.0.1:9999"},
        {"origin": "null"},
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},  # e.g. a page on another port of localhost
    ],
)
async def test_cross_site_post_is_refused_even_with_the_csrf_token(bastion: Bastion, headers: dict[str, str]) -> None:
    await bastion.store.put(authorized_record())
    _, app = served(bastion)
    async with client(app) as http:
        token = await csrf_of(http)
        response = await http.post("/ui/revoke", data={"csrf": token, "server": "protected"}, headers=headers)
    assert response.status_code == 403
    record = await bastion.store.get("protected")
    assert record is not None and record.tokens is not None


async def test_foreign_origin_cannot_read_the_page_or_open_the_event_stream(bastion: Bastion) -> None:
    _, app = served(bastion)
    async with client(app) as http:
        for path in ("/ui/", "/ui/fragment", "/ui/servers.json", "/ui/events"):
            response = await http.get(path, headers={"origin": "http://attacker.example"})
            assert response.status_code == 403, path


async def test_post_must_be_a_urlencoded_form(bastion: Bastion) -> None:
    _, app = served(bastion)
    async with client(app) as http:
        token = await csrf_of(http)
        response = await http.post("/ui/enable", json={"csrf": token, "server": "spare"}, headers=ORIGIN)
    assert response.status_code == 415
    assert "spare" not in bastion.enabled()


def test_same_origin_normalises_default_ports() -> None:
    assert same_origin("http://127.0.0.1", "127.0.0.1:80", "http")
    assert same_origin("http://[::1]:8812", "[::1]:8812", "http")
    assert not same_origin("http://127.0.0.1:8812/path", "127.0.0.1:8812", "http")


@pytest.mark.parametrize("host", ["127.0.0.1:8812", "localhost:8812", "[::1]:8812", "127.0.0.1"])
def test_loopback_host_headers_are_allowed(host: str) -> None:
    assert host_allowed(host, ())


# -- the actions ----------------------------------------------------------------------------------


async def test_enable_and_disable_change_the_registry(bastion: Bastion) -> None:
    _, app = served(bastion)
    async with client(app) as http:
        token = await csrf_of(http)
        enabled = await http.post("/ui/enable", data={"csrf": token, "server": "spare"}, headers=ORIGIN)
        assert enabled.status_code == 303 and "spare" in bastion.enabled()
        disabled = await http.post("/ui/disable", data={"csrf": token, "server": "local"}, headers=ORIGIN)
        assert disabled.status_code == 303 and "local" not in bastion.enabled()
        page = (await http.get("/ui/")).text
    assert "spare: enabled" in page and "local: disabled" in page


async def test_authorize_redirects_to_the_authorization_server_and_the_callback_stores_tokens(
    bastion: Bastion,
) -> None:
    """The whole flow through the page's own routes, against the in-process fake: Authorize →
    303 to the authorization endpoint with redirect_uri = the page's callback → callback →
    tokens stored, row authorized. A replayed callback is refused (single-use state)."""
    world = World(server_url=MCP_URL)
    bastion._http = world.client()  # the fake authorization server and MCP server
    _, app = served(bastion)
    async with client(app) as http:
        token = await csrf_of(http)
        started = await http.post("/ui/authorize", data={"csrf": token, "server": "protected"}, headers=ORIGIN)
        assert started.status_code == 303
        location = started.headers["location"]
        assert location.startswith(f"{ISSUER}/authorize?")
        assert "redirect_uri=http%3A%2F%2F127.0.0.1%3A8812%2Fui%2Foauth%2Fcallback" in location
        callback = world.approve(location)
        done = await http.get(callback)
        assert done.status_code == 200 and "You can close this tab" in done.text
        replay = await http.get(callback)
        assert replay.status_code == 400
        protected = row((await http.get("/ui/fragment")).text, "protected")
    assert "data-oauth-state='authorized'" in protected
    record = await bastion.store.get("protected")
    assert record is not None and record.state() is ProviderState.AUTHORIZED
    assert_no_secret(done.text, protected)
    assert record.tokens is not None and record.tokens.access_token not in done.text + protected


async def test_signed_in_the_callback_needs_no_cookie_its_state_is_the_proof(bastion: Bastion) -> None:
    """The authorization server's cross-site redirect carries no SameSite=Strict cookie: the
    callback is authenticated by its single-use state instead; a stranger's state changes nothing."""
    world = World(server_url=MCP_URL)
    bastion._http = world.client()
    _, app = served(bastion, token="the-gateway-token")
    async with client(app) as http:
        signed = await http.post("/ui/login", data={"token": "the-gateway-token"}, headers=ORIGIN)
        assert signed.status_code == 303
        token = await csrf_of(http)
        started = await http.post("/ui/authorize", data={"csrf": token, "server": "protected"}, headers=ORIGIN)
        callback = world.approve(started.headers["location"])
    async with client(app) as cookieless:
        stranger = await cookieless.get("/ui/oauth/callback", params={"state": "forged", "code": "x"})
        assert stranger.status_code == 400 and "Unknown or expired" in stranger.text
        done = await cookieless.get(callback)
        assert done.status_code == 200 and "You can close this tab" in done.text
        assert (await cookieless.get("/ui/fragment")).status_code == 401  # nothing else without signing in
    record = await bastion.store.get("protected")
    assert record is not None and record.state() is ProviderState.AUTHORIZED


async def test_denied_authorization_shows_the_error_and_stores_no_token(bastion: Bastion) -> None:
    world = World(server_url=MCP_URL)
    bastion._http = world.client()
    _, app = served(bastion)
    async with client(app) as http:
        token = await csrf_of(http)
        started = await http.post("/ui/authorize", data={"csrf": token, "server": "protected"}, headers=ORIGIN)
        denied = await http.get(world.approve(started.headers["location"], error="access_denied"))
        protected = row((await http.get("/ui/fragment")).text, "protected")
    assert denied.status_code == 400 and "access_denied" in denied.text
    assert "access_denied" in protected  # the row's last error
    record = await bastion.store.get("protected")
    assert record is not None and record.tokens is None


async def test_callback_with_an_unknown_state_changes_nothing(bastion: Bastion) -> None:
    _, app = served(bastion)
    async with client(app) as http:
        response = await http.get("/ui/oauth/callback", params={"state": "forged", "code": "stolen"})
    assert response.status_code == 400
    record = await bastion.store.get("protected")
    assert record is not None and record.tokens is None


async def test_authorize_refuses_a_server_that_is_not_enabled(bastion: Bastion) -> None:
    _, app = served(bastion)
    async with client(app) as http:
        token = await csrf_of(http)
        response = await http.post("/ui/authorize", data={"csrf": token, "server": "spare"}, headers=ORIGIN)
    assert response.status_code == 409


# -- live updates ---------------------------------------------------------------------------------


async def test_event_stream_reports_a_store_change(bastion: Bastion) -> None:
    _, app = served(bastion)

    async def change() -> None:
        await bastion.store.put(authorized_record())

    text = await read_events(app, change, until=lambda t: "event: change" in t)
    assert "data: store" in text


async def test_event_stream_reports_a_registry_change_made_elsewhere(bastion: Bastion, home: Path) -> None:
    _, app = served(bastion)

    async def change() -> None:
        save_enabled(home, ["local"])  # what `bastion server disable protected` in another process writes

    text = await read_events(app, change, until=lambda t: "event: change" in t)
    assert "config" in text


async def test_event_stream_reports_a_gateway_status_change(bastion: Bastion) -> None:
    rows = [GatewayRow(name="local", state="connecting", transport="stdio")]
    _, app = served(bastion, gateway_status=lambda: rows)

    async def change() -> None:
        rows[0] = GatewayRow(name="local", state="ready", transport="stdio", tools=2)

    text = await read_events(app, change, until=lambda t: "event: change" in t)
    assert "gateway" in text


async def test_redirects_to_the_page(bastion: Bastion) -> None:
    _, app = served(bastion)
    async with client(app) as http:
        root = await http.get("/")
        bare = await http.get("/ui")
    assert root.headers["location"] == "/ui/" and bare.headers["location"] == "/ui/"


async def test_the_pages_state_keeps_the_token_and_csrf_out_of_its_repr(bastion: Bastion) -> None:
    ui, _ = served(bastion, token="the-gateway-token")
    state = ui.state.ui
    shown = repr(state)
    assert "the-gateway-token" not in shown and state.csrf not in shown
