"""The authorization flow end to end against the in-process fake, with the real loopback
callback listener: PKCE, state, resource, iss, registration, and every refusal leaving
nothing stored half-way."""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import pytest
from tests.unit.flow.world import ISSUER, MCP, World

from bastion.errors import (
    AuthorizationError,
    CallbackTimeout,
    IssuerResponseError,
    RegistrationError,
)
from bastion.oauth import flow
from bastion.store.file import FileStore
from bastion.store.models import ClientRegistration, ProviderRecord, ProviderState

pytestmark = pytest.mark.anyio

OPTIONS = flow.FlowOptions(server_name="demo", server_url=MCP)


class FakeBrowser:
    """A user agent that 'logs in' at the fake and follows the redirect to the loopback callback
    on a thread, as a real browser would (UserAgent.open must not block)."""

    def __init__(self, world: World, rewrite: Callable[[str], str] | None = None, **approve: str) -> None:
        self.world = world
        self.rewrite = rewrite
        self.approve = approve
        self.urls: list[str] = []

    def open(self, url: str) -> None:
        self.urls.append(url)
        redirect = self.world.approve(url, **self.approve)
        if self.rewrite is not None:
            redirect = self.rewrite(redirect)
        threading.Thread(target=lambda: httpx2.get(redirect, trust_env=False), daemon=True).start()


class SilentBrowser:
    def open(self, url: str) -> None:
        pass


async def run(
    world: World, store: FileStore, agent: object, *, timeout: float = 10.0, options: flow.FlowOptions = OPTIONS
) -> ProviderRecord:
    async with world.client() as http:
        return await flow.authorize(http, store, options, agent, callback_port=0, timeout=timeout)  # type: ignore[arg-type]


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def test_full_flow_stores_tokens_and_sends_pkce_state_and_resource(world: World, store: FileStore) -> None:
    browser = FakeBrowser(world)
    record = await run(world, store, browser)
    assert record.state() is ProviderState.AUTHORIZED
    assert record.tokens is not None and record.tokens.issuer == ISSUER
    assert record.tokens.token_endpoint == f"{ISSUER}/token"
    assert record.tokens.resource == MCP
    assert record.tokens.expires_at is not None

    auth = query_of(browser.urls[0])
    assert auth["response_type"] == "code"
    assert auth["code_challenge_method"] == "S256"
    assert auth["resource"] == MCP
    assert auth["scope"] == "mcp:read offline_access"
    assert auth["redirect_uri"].startswith("http://127.0.0.1:")
    assert len(auth["state"]) >= 32

    form = world.token_forms[0]
    assert form["grant_type"] == "authorization_code"
    assert form["resource"] == MCP
    digest = hashlib.sha256(form["code_verifier"].encode()).digest()
    assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == auth["code_challenge"]

    registration = world.registrations[0]
    assert registration["token_endpoint_auth_method"] == "none"
    assert registration["application_type"] == "native"
    assert set(registration["grant_types"]) == {"authorization_code", "refresh_token"}
    assert registration["response_types"] == ["code"]
    assert registration["redirect_uris"] == [auth["redirect_uri"]]
    assert "demo" in registration["client_name"] and "Bastion" in registration["client_name"]

    stored = await store.get("demo")
    assert stored is not None and stored.tokens == record.tokens


async def test_second_authorization_reuses_the_registration(world: World, store: FileStore) -> None:
    await run(world, store, FakeBrowser(world))
    options = flow.FlowOptions(server_name="demo", server_url=MCP)
    # Same redirect URI is needed for reuse: pin the port the first run used.
    record = await store.get("demo")
    assert record is not None and record.client is not None
    port = urlsplit(record.client.redirect_uris[0]).port
    async with world.client() as http:
        await flow.authorize(http, store, options, FakeBrowser(world), callback_port=port or 0, timeout=10)
    assert len(world.registrations) == 1


async def test_wrong_state_is_ignored_and_nothing_is_stored(world: World, store: FileStore) -> None:
    """The listener answers a forged `state` with a 400 and keeps waiting (it does not end the
    flow); with no right response the flow times out having sent nothing."""
    with pytest.raises(CallbackTimeout):
        await run(world, store, FakeBrowser(world, state="forged"), timeout=1.0)
    record = await store.get("demo")
    assert record is None or record.tokens is None
    assert world.token_forms == []


async def test_access_denied_shows_the_servers_words(world: World, store: FileStore) -> None:
    with pytest.raises(AuthorizationError, match="access_denied: The user said no") as info:
        await run(world, store, FakeBrowser(world, error="access_denied"))
    assert info.value.error == "access_denied"
    record = await store.get("demo")
    assert record is None or record.tokens is None


async def test_wrong_iss_in_the_callback_is_refused(world: World, store: FileStore) -> None:
    def forge_iss(url: str) -> str:
        return url.replace("iss=http", "iss=https")

    with pytest.raises(IssuerResponseError):
        await run(world, store, FakeBrowser(world, rewrite=forge_iss))
    assert world.token_forms == []


async def test_missing_iss_when_advertised_is_refused(world: World, store: FileStore) -> None:
    world.send_iss = False
    with pytest.raises(IssuerResponseError):
        await run(world, store, FakeBrowser(world))


async def test_no_callback_before_the_timeout(world: World, store: FileStore) -> None:
    with anyio.fail_after(10):
        with pytest.raises(CallbackTimeout, match="no authorization callback"):
            await run(world, store, SilentBrowser(), timeout=0.5)
    record = await store.get("demo")
    assert record is None or record.tokens is None


async def test_registration_refused_with_rfc7591_error(world: World, store: FileStore) -> None:
    world.registration_status = 400
    world.registration_error = {"error": "invalid_redirect_uri", "error_description": "loopback not allowed"}
    with pytest.raises(RegistrationError, match="invalid_redirect_uri") as info:
        await run(world, store, FakeBrowser(world))
    assert info.value.error == "invalid_redirect_uri"
    assert await store.get("demo") is None


async def test_without_dcr_a_server_needs_a_preregistered_client(world: World, store: FileStore) -> None:
    options = flow.FlowOptions(server_name="demo", server_url=MCP, dcr_enabled=False)
    with pytest.raises(RegistrationError, match="bastion oauth client set demo"):
        await run(world, store, FakeBrowser(world), options=options)
    assert world.registrations == []


async def test_preregistered_client_is_used_without_registration(world: World, store: FileStore) -> None:
    client = ClientRegistration(
        client_id="hand-made",
        client_secret="s3cret",
        token_endpoint_auth_method="client_secret_basic",
        source="preregistered",
    )
    await store.put(ProviderRecord(server="demo", resource_url=MCP, client=client))
    options = flow.FlowOptions(server_name="demo", server_url=MCP, dcr_enabled=False)
    record = await run(world, store, FakeBrowser(world), options=options)
    assert record.state() is ProviderState.AUTHORIZED
    assert world.registrations == []
    token_request = [r for r in world.requests if r.url.path == "/auth/token"][0]
    assert token_request.headers["authorization"].startswith("Basic ")


async def test_token_endpoint_refusal_stores_no_tokens(world: World, store: FileStore) -> None:
    world.token_error = {"error": "invalid_request", "error_description": "bad code"}
    with pytest.raises(Exception, match="invalid_request"):
        await run(world, store, FakeBrowser(world))
    record = await store.get("demo")
    assert record is None or record.tokens is None


async def test_invalid_client_registers_again_once(world: World, store: FileStore) -> None:
    class ForgetfulWorld(World):
        pass

    calls = {"n": 0}
    original = world._token

    def token_once_invalid_client(request: httpx2.Request) -> httpx2.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return httpx2.Response(401, json={"error": "invalid_client"})
        return original(request)

    world._token = token_once_invalid_client  # type: ignore[method-assign]
    record = await run(world, store, FakeBrowser(world))
    assert record.state() is ProviderState.AUTHORIZED
    assert len(world.registrations) == 2


async def test_debug_logs_never_contain_secrets(
    world: World, store: FileStore, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tokens, the PKCE verifier and the client secret never reach a log line, even at DEBUG."""
    import logging

    client = ClientRegistration(
        client_id="cid",
        client_secret="CLIENT-SECRET-VALUE",
        token_endpoint_auth_method="client_secret_post",
        source="preregistered",
    )
    await store.put(ProviderRecord(server="demo", resource_url=MCP, client=client))
    caplog.set_level(logging.DEBUG)
    record = await run(world, store, FakeBrowser(world))
    assert record.tokens is not None
    verifier = world.token_forms[0]["code_verifier"]
    secrets = [verifier, "CLIENT-SECRET-VALUE", record.tokens.access_token, record.tokens.refresh_token or "x"]
    captured = capsys.readouterr()
    text = caplog.text + captured.out + captured.err + repr(record) + repr(client)
    assert caplog.records  # debug logging was on and produced lines
    for secret in secrets:
        assert secret not in text


async def test_a_new_redirect_uri_registers_once_keeping_the_old_one(world: World, store: FileStore) -> None:
    """CLI (loopback port A) then another callback (port B): the second registration lists both,
    so going back to A reuses it instead of registering a third time."""
    await run(world, store, FakeBrowser(world))
    first = await store.get("demo")
    assert first is not None and first.client is not None
    old_uri = first.client.redirect_uris[0]
    await run(world, store, FakeBrowser(world))  # port 0 again: a new free port, a new redirect URI
    second = await store.get("demo")
    assert second is not None and second.client is not None
    assert len(world.registrations) == 2
    assert old_uri in second.client.redirect_uris and len(second.client.redirect_uris) == 2
    old_port = urlsplit(old_uri).port
    async with world.client() as http:
        await flow.authorize(http, store, OPTIONS, FakeBrowser(world), callback_port=old_port or 0, timeout=10)
    assert len(world.registrations) == 2


async def test_waiting_for_the_browser_reminds_how_long_is_left(
    world: World, store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flow, "REMINDER_EVERY", 0.2)
    said: list[str] = []
    with pytest.raises(CallbackTimeout):
        async with world.client() as http:
            await flow.authorize(
                http, store, OPTIONS, SilentBrowser(), callback_port=0, timeout=1.0, progress=said.append
            )
    assert any("Still waiting for the browser" in line for line in said)
