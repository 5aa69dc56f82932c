"""Smoke tests of the real test peers: each one starts, answers, and behaves as documented in
tests/fixtures/README.md. They use no Bastion code: a Bastion bug cannot make them fail."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import webbrowser
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
import jwt
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.fixtures import headless_browser as hb
from tests.fixtures import oauth_client as oc
from tests.fixtures import peers
from tests.integration.conftest import ProtectedMcpFactory

pytestmark = pytest.mark.anyio


def _text(result: object) -> str:
    content = getattr(result, "content", [])
    return "".join(getattr(block, "text", "") for block in content)


@asynccontextmanager
async def _mcp_over_bearer(url: str, token: str) -> AsyncIterator[Client]:
    """An MCP client whose every HTTP request carries the bearer token (the SDK does not close a
    client it was given, so this does)."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=15.0, trust_env=False) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            yield client


# --- the authorization server ------------------------------------------------------------------


@pytest.mark.parametrize("oidc", [{"issuer_path": "/t1"}], indirect=True)
def test_discovery_at_both_well_knowns_with_exact_issuer(oidc: peers.OidcHandle) -> None:
    assert oidc.issuer == f"http://127.0.0.1:{oidc.port}/t1"
    for suffix in ("oauth-authorization-server", "openid-configuration"):
        response = httpx2.get(f"{oidc.issuer}/.well-known/{suffix}", trust_env=False)
        assert response.status_code == 200, suffix
        metadata = response.json()
        assert metadata["issuer"] == oidc.issuer
        assert metadata["code_challenge_methods_supported"] == ["S256"]
        assert metadata["authorization_response_iss_parameter_supported"] is True
        assert metadata["registration_endpoint"] == f"{oidc.issuer}/reg"
        assert metadata["revocation_endpoint"] == f"{oidc.issuer}/token/revocation"
        assert "none" in metadata["token_endpoint_auth_methods_supported"]
        assert {"openid", "offline_access", "mcp:read", "mcp:write"} <= set(metadata["scopes_supported"])
    # oidc-provider does not serve the RFC 8414 path-insertion form for a path issuer
    insertion = httpx2.get(f"{oidc.base_url}/.well-known/oauth-authorization-server/t1", trust_env=False)
    assert insertion.status_code == 404


@pytest.mark.parametrize("oidc", [{"issuer_path": "/t1", "path_insertion_well_knowns": True}], indirect=True)
def test_path_insertion_knob(oidc: peers.OidcHandle) -> None:
    for suffix in ("oauth-authorization-server", "openid-configuration"):
        response = httpx2.get(f"{oidc.base_url}/.well-known/{suffix}/t1", trust_env=False)
        assert response.status_code == 200
        assert response.json()["issuer"] == oidc.issuer


def test_full_flow_refresh_rotation_and_revocation(
    oidc: peers.OidcHandle, protected_mcp: peers.ProtectedMcpHandle
) -> None:
    metadata = oc.discover(oidc.issuer)
    resource = protected_mcp.url
    with oc.CallbackListener() as listener:
        registration = oc.register(metadata, listener.redirect_uri)
        assert registration.status_code == 201, registration.text
        client_id = registration.json()["client_id"]
        assert registration.json()["token_endpoint_auth_method"] == "none"
        verifier, challenge = oc.pkce_pair()
        state = secrets.token_urlsafe(16)
        url = oc.authorization_url(
            metadata,
            client_id=client_id,
            redirect_uri=listener.redirect_uri,
            code_challenge=challenge,
            state=state,
            resource=resource,
        )
        status, report = hb.run(url, timeout=20, login="test-user")
        assert (status, report) == (0, "callback: HTTP 200")
        callback = listener.wait(10)
    assert callback["state"] == state
    assert callback["iss"] == oidc.issuer  # RFC 9207: always sent

    exchanged = oc.exchange_code(
        metadata,
        client_id=client_id,
        code=callback["code"],
        code_verifier=verifier,
        redirect_uri=listener.redirect_uri,
        resource=resource,
    )
    assert exchanged.status_code == 200, exchanged.text
    tokens = exchanged.json()
    assert tokens["token_type"].lower() == "bearer"
    jwks = jwt.PyJWKClient(metadata["jwks_uri"])
    key = jwks.get_signing_key_from_jwt(tokens["access_token"])
    claims = jwt.decode(tokens["access_token"], key, algorithms=["RS256"], audience=resource, issuer=oidc.issuer)
    assert claims["sub"] == "test-user"
    assert set(claims["scope"].split()) == {"mcp:read", "mcp:write"}
    assert claims["client_id"] == client_id

    # refresh: a public client's refresh token rotates
    oidc.clear_events()
    first_refresh = tokens["refresh_token"]
    refreshed = oc.refresh(metadata, client_id=client_id, refresh_token=first_refresh, resource=resource)
    assert refreshed.status_code == 200, refreshed.text
    second = refreshed.json()
    assert second["refresh_token"] != first_refresh
    assert jwt.decode(second["access_token"], options={"verify_signature": False})["aud"] == resource
    assert len(oidc.events("refresh_token.consumed")) == 1
    [success] = oidc.events("grant.success")
    assert success["grant_type"] == "refresh_token" and success["refresh_token_rotated"] is True

    # revocation of the current refresh token revokes the grant
    oidc.clear_events()
    revoked = oc.revoke(metadata, client_id=client_id, token=second["refresh_token"])
    assert revoked.status_code == 200
    assert len(oidc.events("revocation.success")) == 1
    assert len(oidc.events("grant.revoked")) == 1
    after = oc.refresh(metadata, client_id=client_id, refresh_token=second["refresh_token"], resource=resource)
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant"


def test_refresh_token_reuse_revokes_the_grant(oidc: peers.OidcHandle) -> None:
    resource = "http://127.0.0.1:9/mcp"  # any loopback resource is accepted; nothing needs to listen
    tokens = oc.obtain_tokens(oidc.issuer, resource)
    assert tokens.refresh_token
    spent = tokens.refresh_token
    first = oc.refresh(tokens.metadata, client_id=tokens.client_id, refresh_token=spent, resource=resource)
    assert first.status_code == 200
    newest = first.json()["refresh_token"]
    oidc.clear_events()
    reuse = oc.refresh(tokens.metadata, client_id=tokens.client_id, refresh_token=spent, resource=resource)
    assert reuse.status_code == 400
    assert reuse.json() == {"error": "invalid_grant", "error_description": "grant request is invalid"}
    assert [e["event"] for e in oidc.events() if e["event"] in ("grant.revoked", "grant.error")] == [
        "grant.revoked",
        "grant.error",
    ]
    # the whole grant is gone: the newest refresh token is dead too
    dead = oc.refresh(tokens.metadata, client_id=tokens.client_id, refresh_token=newest, resource=resource)
    assert dead.status_code == 400


def test_no_refresh_token_without_refresh_grant_type(oidc: peers.OidcHandle) -> None:
    tokens = oc.obtain_tokens(oidc.issuer, "http://127.0.0.1:9/mcp", grant_types=("authorization_code",))
    assert tokens.refresh_token is None


def test_registration_error_knob(oidc: peers.OidcHandle) -> None:
    metadata = oc.discover(oidc.issuer)
    oidc.set_knobs(registration_error=True)
    refused = oc.register(metadata, "http://127.0.0.1:9/callback")
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_client_metadata"
    oidc.set_knobs(registration_error=None)
    assert oc.register(metadata, "http://127.0.0.1:9/callback").status_code == 201
    # a scope outside the server's list is refused by oidc-provider itself
    unknown = oc.register(metadata, "http://127.0.0.1:9/callback", scope="openid admin:all")
    assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_client_metadata"


def test_deny_knob_sends_access_denied_to_the_callback(oidc: peers.OidcHandle) -> None:
    oidc.set_knobs(interactions="deny")
    with pytest.raises(RuntimeError, match="access_denied"):
        oc.obtain_tokens(oidc.issuer, "http://127.0.0.1:9/mcp")


@pytest.mark.parametrize("oidc", [{"interactions": "forms"}], indirect=True)
def test_forms_mode_serves_html_and_the_headless_agent_fills_it(oidc: peers.OidcHandle) -> None:
    tokens = oc.obtain_tokens(oidc.issuer, "http://127.0.0.1:9/mcp")
    assert tokens.access_token
    assert [e["prompt"] for e in oidc.events("interaction.started")] == ["login", "consent"]


def test_headless_browser_as_browser_env_does_not_block_webbrowser(
    oidc: peers.OidcHandle, headless_browser: Path
) -> None:
    metadata = oc.discover(oidc.issuer)
    with oc.CallbackListener() as listener:
        client_id = oc.register(metadata, listener.redirect_uri).json()["client_id"]
        verifier, challenge = oc.pkce_pair()
        url = oc.authorization_url(
            metadata,
            client_id=client_id,
            redirect_uri=listener.redirect_uri,
            code_challenge=challenge,
            state="s1",
            resource="http://127.0.0.1:9/mcp",
        )
        started = time.monotonic()
        assert webbrowser.open(url) is True
        # webbrowser waits for the command; the agent detaches, so this returns at once
        assert time.monotonic() - started < 5
        callback = listener.wait(20)
    assert callback["state"] == "s1" and "code" in callback
    # The agent opens its log (creating it) and then writes its line: wait for a whole line, not
    # only for the file (a fresh-clone CI run read it empty in between).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (
        headless_browser.exists() and headless_browser.read_text().endswith("\n")
    ):
        time.sleep(0.05)
    assert headless_browser.read_text().strip() == "callback: HTTP 200"
    assert callback["code"] not in headless_browser.read_text()


def test_headless_browser_command_line_foreground(oidc: peers.OidcHandle) -> None:
    metadata = oc.discover(oidc.issuer)
    with oc.CallbackListener() as listener:
        client_id = oc.register(metadata, listener.redirect_uri).json()["client_id"]
        _, challenge = oc.pkce_pair()
        url = oc.authorization_url(
            metadata, client_id=client_id, redirect_uri=listener.redirect_uri, code_challenge=challenge, state="s2"
        )
        done = subprocess.run(peers.headless_browser_argv(url), capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert done.stdout == ""
        assert done.stderr.strip() == "headless-browser: callback: HTTP 200"
        assert listener.wait(5)["state"] == "s2"


# --- the protected MCP server ------------------------------------------------------------------


async def test_protected_mcp_metadata_401_calls_and_step_up(
    oidc: peers.OidcHandle, protected_mcp: peers.ProtectedMcpHandle
) -> None:
    async with httpx2.AsyncClient(timeout=10.0, trust_env=False) as http:
        prm = (await http.get(protected_mcp.resource_metadata_url)).json()
        assert prm["resource"] == protected_mcp.url
        assert prm["authorization_servers"] == [oidc.issuer]  # exact: no trailing slash
        unauthorized = await http.post(protected_mcp.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert unauthorized.status_code == 401
        challenge = unauthorized.headers["www-authenticate"]
        assert f'resource_metadata="{protected_mcp.resource_metadata_url}"' in challenge

    tokens = oc.obtain_tokens(oidc.issuer, protected_mcp.url)
    async with _mcp_over_bearer(protected_mcp.url, tokens.access_token) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert names == {"echo", "whoami", "add", "admin_action"}
        assert _text(await client.call_tool("echo", {"text": "hi"})) == "hi"
        assert _text(await client.call_tool("add", {"a": 2, "b": 3})) == "5"
        who = json.loads(_text(await client.call_tool("whoami", {})))
        assert who["sub"] == "test-user" and who["client_id"] == tokens.client_id
        assert set(who["scopes"]) == {"mcp:read", "mcp:write"}
        assert _text(await client.call_tool("admin_action", {})) == "admin action done"

    # a token narrowed to mcp:read (refresh with scope) gets the step-up 403 for admin_action only
    narrowed = oc.refresh(
        tokens.metadata,
        client_id=tokens.client_id,
        refresh_token=str(tokens.refresh_token),
        resource=protected_mcp.url,
        scope="mcp:read",
    ).json()["access_token"]
    async with _mcp_over_bearer(protected_mcp.url, narrowed) as client:
        assert _text(await client.call_tool("echo", {"text": "still"})) == "still"
    async with httpx2.AsyncClient(timeout=10.0, trust_env=False) as http:
        forbidden = await http.post(
            protected_mcp.url,
            json={"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "admin_action"}},
            headers={"Authorization": f"Bearer {narrowed}", "Accept": "application/json, text/event-stream"},
        )
        assert forbidden.status_code == 403
        challenge = forbidden.headers["www-authenticate"]
        assert challenge.startswith("Bearer ")
        assert 'error="insufficient_scope"' in challenge and 'scope="mcp:read mcp:write"' in challenge
        assert f'resource_metadata="{protected_mcp.resource_metadata_url}"' in challenge
        # a token for another resource is refused
        other = oc.obtain_tokens(oidc.issuer, "http://127.0.0.1:9/mcp").access_token
        wrong_audience = await http.post(
            protected_mcp.url,
            json={"jsonrpc": "2.0", "id": 8, "method": "tools/list"},
            headers={"Authorization": f"Bearer {other}"},
        )
        assert wrong_audience.status_code == 401
    statuses = {r["status"] for r in protected_mcp.requests()}
    assert {200, 401, 403} <= statuses
    assert all(r["token_digest"] != tokens.access_token for r in protected_mcp.requests())


# --- MCP servers without auth ------------------------------------------------------------------


async def test_everything_over_stdio(everything_stdio: StdioServerParameters) -> None:
    async with Client(everything_stdio) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"echo", "get-sum"} <= names
        assert "hello" in _text(await client.call_tool("echo", {"message": "hello"}))


async def test_everything_over_streamable_http(everything_http: peers.EverythingHandle) -> None:
    assert everything_http.url == f"http://127.0.0.1:{everything_http.port}/mcp"
    async with Client(everything_http.url) as client:
        assert "hello" in _text(await client.call_tool("echo", {"message": "hello"}))
        assert "5" in _text(await client.call_tool("get-sum", {"a": 2, "b": 3}))


async def test_time_over_stdio(time_stdio: StdioServerParameters) -> None:
    async with Client(time_stdio) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"get_current_time", "convert_time"} <= names
        result = await client.call_tool("get_current_time", {"timezone": "UTC"})
        assert json.loads(_text(result))["timezone"] == "UTC"


def test_peers_bind_loopback_only_and_stop_without_orphans(node_deps: None) -> None:
    handle = peers.start_everything_http()
    pid = handle.peer.pid
    listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, timeout=10).stdout
    lines = [line for line in listening.splitlines() if f"pid={pid}," in line]
    assert lines and all(f"127.0.0.1:{handle.port}" in line for line in lines)
    handle.stop()
    assert handle.peer.process is not None and handle.peer.process.poll() is not None
    leftovers = subprocess.run(["ps", "-o", "pid=", "-g", str(pid)], capture_output=True, text=True, timeout=10)
    assert leftovers.stdout.strip() == ""


def test_python_is_this_venv() -> None:
    assert peers.time_stdio_argv()[0] == sys.executable


def test_protected_mcp_can_mimic_a_trailing_slash_issuer(
    oidc: peers.OidcHandle, protected_mcp_factory: ProtectedMcpFactory
) -> None:
    server = protected_mcp_factory(oidc.issuer, advertised_issuer=oidc.issuer + "/")
    prm = httpx2.get(server.resource_metadata_url, trust_env=False).json()
    assert prm["authorization_servers"] == [oidc.issuer + "/"]


def test_peers_exit_when_their_launcher_is_killed(node_deps: None) -> None:
    script = (
        "import json, time\n"
        "from tests.fixtures import peers\n"
        "h = peers.start_oidc()\n"
        "print(json.dumps({'pid': h.peer.pid}), flush=True)\n"
        "time.sleep(60)\n"
    )
    root = Path(__file__).resolve().parents[2]
    launcher = subprocess.Popen(
        [sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert launcher.stdout is not None
        peer_pid = json.loads(launcher.stdout.readline())["pid"]
        launcher.kill()
        launcher.wait(5)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{peer_pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{peer_pid}").exists()
    finally:
        launcher.kill()
        launcher.wait(5)
        if launcher.stdout is not None:
            launcher.stdout.close()
