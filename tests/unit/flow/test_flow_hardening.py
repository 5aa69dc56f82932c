"""Issue 12 hardening of the authorization flow, with the real loopback listener: a forged
`state` cannot end an authorization (RFC 6749 §10.12), each authorization server has its own
redirect path (RFC 9700 §4.4.2 mix-up defence), and a pre-registered client is pinned to the
issuer of its first successful authorization."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx2
import pytest
from tests.unit.flow.world import ISSUER, MCP, World

from bastion.errors import IssuerResponseError, RegistrationError, StateMismatchError
from bastion.oauth import flow, rfc9207
from bastion.store.file import FileStore
from bastion.store.models import ClientRegistration, ProviderRecord, ProviderState

pytestmark = pytest.mark.anyio

OPTIONS = flow.FlowOptions(server_name="demo", server_url=MCP)
OTHER_ISSUER = "http://127.0.0.2:9/auth"


class QuietWorld(World):
    """An authorization server that neither sends nor advertises `iss` (RFC 9207 not supported)."""

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "authorization_response_iss_parameter_supported": False}


class Browser:
    """Logs in at `world`, then sends the browser's requests to the loopback listener on a thread:
    first each of `before(redirect)` (a forged request, say), then `rewrite(redirect)`."""

    def __init__(
        self,
        world: World,
        rewrite: Callable[[str], str] = lambda url: url,
        before: Callable[[str], list[str]] = lambda url: [],
    ) -> None:
        self.world = world
        self.rewrite = rewrite
        self.before = before
        self.urls: list[str] = []
        self.statuses: list[int] = []

    def open(self, url: str) -> None:
        self.urls.append(url)
        redirect = self.world.approve(url)
        requests = [*self.before(redirect), self.rewrite(redirect)]

        def visit() -> None:
            for request in requests:
                self.statuses.append(httpx2.get(request, trust_env=False, timeout=5).status_code)

        threading.Thread(target=visit, daemon=True).start()


async def run(world: World, store: FileStore, agent: object, *, options: flow.FlowOptions = OPTIONS) -> ProviderRecord:
    async with world.client() as http:
        return await flow.authorize(http, store, options, agent, callback_port=0, timeout=10)  # type: ignore[arg-type]


def with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def with_state(url: str, state: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query["state"] = state
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


# -- point 15: the loopback listener ignores a forged state ------------------------------------


async def test_a_callback_with_another_state_is_ignored_and_the_right_one_completes(
    world: World, store: FileStore
) -> None:
    """Any local process or web page can send a request to the loopback port: a wrong `state`
    (or none) gets a 400 and the flow goes on waiting for the real response."""

    def forged(redirect: str) -> list[str]:
        return [with_state(redirect, "forged"), redirect.split("?")[0] + "?error=access_denied"]

    browser = Browser(world, before=forged)
    record = await run(world, store, browser)
    assert record.state() is ProviderState.AUTHORIZED
    assert browser.statuses == [400, 400, 200]
    assert len(world.token_forms) == 1


async def test_check_callback_still_refuses_a_wrong_state(world: World, store: FileStore) -> None:
    """The web page's route hands every response to `complete`: the state check stays there."""
    async with world.client() as http:
        pending = await flow.begin(http, store, OPTIONS, callback="http://127.0.0.1:5000/callback")
    path = urlsplit(pending.redirect_uri).path
    with pytest.raises(StateMismatchError):
        flow.check_callback(pending, {"state": "forged", "code": "c"}, path)


# -- point 3: each authorization server has its own redirect path -------------------------------


async def test_a_registered_client_gets_its_issuers_own_redirect_path(world: World, store: FileStore) -> None:
    browser = Browser(world)
    await run(world, store, browser)
    [registration] = world.registrations
    [redirect_uri] = registration["redirect_uris"]
    assert urlsplit(redirect_uri).path == f"/callback/{rfc9207.issuer_key(ISSUER)}"
    assert parse_qs(urlsplit(browser.urls[0]).query)["redirect_uri"] == [redirect_uri]
    assert world.token_forms[0]["redirect_uri"] == redirect_uri


@pytest.mark.parametrize("arrives_at", ["/callback", f"/callback/{rfc9207.issuer_key(OTHER_ISSUER)}"])
async def test_a_response_on_another_issuers_redirect_path_is_refused_without_iss(
    store: FileStore, arrives_at: str
) -> None:
    """Mix-up (RFC 9700 §4.4): the flow was started with this (attacker's) authorization server,
    which does not do RFC 9207; it sent the browser to an honest server, whose response (with the
    forwarded state) comes back on the redirect URI registered there. Its code must not reach this
    server's token endpoint."""
    world = QuietWorld(send_iss=False)
    with pytest.raises(IssuerResponseError, match="redirect URI that does not belong"):
        await run(world, store, Browser(world, rewrite=lambda url: with_path(url, arrives_at)))
    assert world.token_forms == []
    record = await store.get("demo")
    assert record is None or record.tokens is None


async def test_without_iss_a_response_on_the_issuers_own_path_completes(store: FileStore) -> None:
    world = QuietWorld(send_iss=False)
    record = await run(world, store, Browser(world))
    assert record.state() is ProviderState.AUTHORIZED


async def test_a_preregistered_client_keeps_the_base_callback_path(world: World, store: FileStore) -> None:
    client = ClientRegistration(client_id="hand-made", source="preregistered")
    await store.put(ProviderRecord(server="demo", resource_url=MCP, client=client))
    browser = Browser(world)
    await run(world, store, browser, options=flow.FlowOptions(server_name="demo", server_url=MCP, dcr_enabled=False))
    redirect_uri = parse_qs(urlsplit(browser.urls[0]).query)["redirect_uri"][0]
    assert urlsplit(redirect_uri).path == "/callback"


# -- point 2: a pre-registered client is pinned to its first issuer -----------------------------


async def test_a_preregistered_client_is_pinned_and_never_sent_to_another_issuer(
    world: World, store: FileStore
) -> None:
    client = ClientRegistration(
        client_id="hand-made",
        client_secret="hand-made-secret",
        token_endpoint_auth_method="client_secret_basic",
        source="preregistered",
    )
    await store.put(ProviderRecord(server="demo", resource_url=MCP, client=client))
    options = flow.FlowOptions(server_name="demo", server_url=MCP, dcr_enabled=False)
    record = await run(world, store, Browser(world), options=options)
    assert record.client is not None and record.client.issuer == ISSUER

    # The server (or a catalog edit pointing the name elsewhere) now names another issuer.
    other = World(issuer=OTHER_ISSUER)
    with pytest.raises(RegistrationError, match=f"belongs to {ISSUER}"):
        await run(other, store, Browser(other), options=options)
    assert other.token_forms == [] and other.token_headers == []


async def test_a_preregistered_client_with_tokens_from_before_pinning_belongs_to_their_issuer(
    store: FileStore,
) -> None:
    """Records stored before Bastion pinned: the issuer of the tokens it holds is the one it was used with."""
    world = World()
    client = ClientRegistration(client_id="hand-made", client_secret="x", source="preregistered")
    async with world.client() as http:
        await store.put(ProviderRecord(server="demo", resource_url=MCP, client=client))
        options = flow.FlowOptions(server_name="demo", server_url=MCP, dcr_enabled=False)
        await flow.authorize(http, store, options, Browser(world), callback_port=0, timeout=10)  # type: ignore[arg-type]
    record = await store.get("demo")
    assert record is not None and record.client is not None and record.tokens is not None
    legacy = record.model_copy(update={"client": record.client.model_copy(update={"issuer": None})})
    await store.put(legacy)
    other = World(issuer=OTHER_ISSUER)
    with pytest.raises(RegistrationError, match=f"belongs to {ISSUER}"):
        await run(other, store, Browser(other), options=options)
    assert other.token_forms == []
